"""Feature files: hloc HDF5 (default), one ``.npz`` per image, COLMAP text keypoints.

Every writer stores, per image, the arrays of :class:`Features` under the image's POSIX path
relative to the image folder (its *name*), knows which names it already holds (resume), and
records the extraction's provenance (model, weights SHA-256, geometry, detector). Resuming into
an output written with a different provenance is refused: features of two extractions must not
mix silently; an output holding no image yet is simply started afresh, and a run that stores no
image leaves nothing behind.

* ``hloc``: one HDF5 file; group ``name`` (nested folders are nested groups, as h5py makes
  them from ``a/b.jpg``) with ``keypoints (N, 2) float32`` (pixel centres at integers),
  ``descriptors (D, N)`` (transposed; float32 or float16), ``scores (N,) float32``,
  ``image_size (2,) = (W, H)``, ``scales (N,) float32`` (keypoint diameters in pixels) and
  ``oris (N,) float32`` (OpenCV angles in degrees); provenance in the file's attributes. The
  file is only ever changed through a temporary copy renamed into place
  (:class:`AtomicH5`): at the end, on Ctrl-C or an error, and after every
  :data:`COMMIT_EVERY_IMAGES` images or :data:`COMMIT_EVERY_S` seconds, whichever comes first
  (``ExtractConfig.commit_every`` / ``commit_every_s``). A killed run leaves the last committed
  file, losing at most that much work; its temporary copy is removed by the next run
  (:func:`descbal.fileio.remove_stale_temps`).
* ``npz``: a folder mirroring the image tree, ``<out>/<name>.npz`` with the same arrays (also
  ``descriptors`` as (D, N)), each written atomically; provenance in
  ``<out>/descbal_features.json``, written with the first image.
* ``colmap``: ``<out>/<name>.txt`` in COLMAP's keypoint text format, for inspection: a line
  ``N D`` then per keypoint ``x y scale orientation`` and D integers 0..255. **Lossy**:
  coordinates are shifted to COLMAP's convention (pixel corners at integers, +0.5), ``scale``
  is the diameter / 2, ``orientation`` in radians, and descriptors are L2-normalised and
  quantised (non-negative ones as COLMAP does, ``min(255, round(512 d))``; signed ones as
  ``clip(round(128 + 512 d), 0, 255)``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
from numpy.typing import NDArray

from descbal.errors import BadInputError
from descbal.fileio import atomic_path, keep_mode, sweep_stale_temps, temp_sibling, write_text_atomic

PROVENANCE_FILE = "descbal_features.json"
#: An hloc output is committed (made to hold everything so far) after this many new images ...
COMMIT_EVERY_IMAGES = 50
#: ... or this many seconds since the last commit, whichever comes first.
COMMIT_EVERY_S = 60.0
#: A commit copies the file, so commits are also spaced to take at most this share of the run's
#: time (a large file extracted quickly commits less often than every COMMIT_EVERY_IMAGES).
COMMIT_MAX_SHARE = 0.1
#: Provenance keys that must agree for a resumed run to append to an existing output. Not
#: ``geometry_source``: the features depend on the geometry's values, not on whether a --mag or
#: the model's checkpoint gave them (and files written before it existed lack it).
MATCHING_KEYS = ("model", "weights_sha256", "geometry", "detector", "patch_size", "descriptors_dtype", "compute_dtype",
                 "max_size")
#: Values of provenance keys that files written before the key existed implicitly had.
_IMPLICIT = {"compute_dtype": "float32", "max_size": None}


@dataclass
class Features:
    """Local features of one image.

    Attributes:
        keypoints: (N, 2) float32, x right, y down, pixel centres at integers.
        descriptors: (N, D) float32 (files store them transposed, (D, N)).
        scores: (N,) float32 detector responses.
        scales: (N,) float32 keypoint diameters in pixels.
        oris: (N,) float32 orientations, OpenCV degrees (0 when upright).
        image_size: (2,) int64 (W, H).
    """

    keypoints: NDArray[np.float32]
    descriptors: NDArray[np.float32]
    scores: NDArray[np.float32]
    scales: NDArray[np.float32]
    oris: NDArray[np.float32]
    image_size: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.keypoints)


def _jsonable(prov: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(prov, default=str))


def provenance_conflicts(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names of the :data:`MATCHING_KEYS` whose values differ (a network's path may differ when
    its weights' SHA-256 is the same)."""
    old, new = _jsonable(old), _jsonable(new)
    keys = list(MATCHING_KEYS)
    if old.get("kind") == new.get("kind") == "network" and old.get("weights_sha256") == new.get("weights_sha256"):
        keys.remove("model")
    return [k for k in keys if old.get(k, _IMPLICIT.get(k)) != new.get(k, _IMPLICIT.get(k))]


def _check_resume(path: Path, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    if old is None:
        raise BadInputError("exists but has no descbal provenance; use --overwrite or another --out", path)
    bad = provenance_conflicts(old, new)
    if bad:
        detail = "; ".join(f"{k}: {json.dumps(old.get(k), default=str)} != {json.dumps(new.get(k), default=str)}"
                           for k in bad)
        raise BadInputError(f"holds features of a different extraction ({detail}); use --overwrite or another --out", path)


# ------------------------------------------------------------------------------ HDF5


def h5_feature_names(h5: h5py.File | h5py.Group) -> list[str]:
    """Names (group paths without the leading '/') of every group holding a dataset, sorted:
    what hloc's ``list_h5_names`` returns."""
    names: set[str] = set()

    def visit(_: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            names.add(obj.parent.name.strip("/"))

    h5.visititems(visit)
    return sorted(names)


class AtomicH5:
    """An HDF5 file changed only through a temporary copy that is renamed into place.

    ``open()`` copies the existing file (unless ``fresh``) to a temporary sibling
    (:func:`descbal.fileio.temp_sibling`, which also removes the stale copies of dead runs) and
    opens it for appending; :meth:`commit` closes it, renames it over the final path and, when
    asked to continue, starts a new copy. The final path is therefore always a complete, valid
    file. Writers report work with :meth:`did_work`, which commits after ``commit_every`` units
    or ``commit_every_s`` seconds, whichever comes first, unless the last commit took more
    than ``max_share`` of the time since the one before (see :data:`COMMIT_MAX_SHARE`).
    """

    def __init__(self, path: str | Path, fresh: bool = False, commit_every: int = COMMIT_EVERY_IMAGES,
                 commit_every_s: float = COMMIT_EVERY_S, max_share: float = COMMIT_MAX_SHARE) -> None:
        if commit_every < 1 or not commit_every_s > 0 or not 0 < max_share <= 1:
            raise ValueError("commit_every must be >= 1, commit_every_s > 0 and max_share in (0, 1]")
        self.path = Path(path)
        self.fresh = fresh
        self.commit_every = commit_every
        self.commit_every_s = commit_every_s
        self.max_share = max_share
        self.h5: h5py.File | None = None
        self._tmp: Path | None = None
        self._last_commit = time.monotonic()
        self._commit_cost = 0.0  # seconds the last commit (close, rename, copy) took
        self.pending = 0  # units of work since the last commit
        self.dirty = False

    def open(self) -> h5py.File:
        t0 = time.monotonic()
        self._tmp = temp_sibling(self.path, ".h5")
        try:
            if self.path.is_file() and not self.fresh:
                shutil.copyfile(self.path, self._tmp)
                self.h5 = h5py.File(self._tmp, "a", locking=False)
            else:
                self.h5 = h5py.File(self._tmp, "w", locking=False)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        self.fresh = False
        self._last_commit = time.monotonic()
        self._commit_cost = self._last_commit - t0
        return self.h5

    def commit(self, reopen: bool = False) -> None:
        """Make the final path hold everything written so far."""
        assert self.h5 is not None and self._tmp is not None
        t0 = time.monotonic()
        self.h5.close()
        self.h5 = None
        keep_mode(self._tmp, self.path)
        os.replace(self._tmp, self.path)
        self._tmp = None
        self.dirty = False
        self.pending = 0
        if reopen:
            self.open()
            self._commit_cost = time.monotonic() - t0

    def did_work(self, units: int = 1) -> None:
        """Count ``units`` of work written (an image, a pair) and commit (and continue) when
        :meth:`commit_due`."""
        self.dirty = True
        self.pending += units
        if self.commit_due():
            self.commit(reopen=True)

    def commit_due(self) -> bool:
        """Whether ``commit_every`` units or ``commit_every_s`` seconds have passed since the last
        commit, and committing again keeps the time spent committing (the last commit's cost)
        within ``max_share`` (:data:`COMMIT_MAX_SHARE`) of the time."""
        since = time.monotonic() - self._last_commit
        if not self.dirty or self.pending == 0 or self._commit_cost > self.max_share * (since + self._commit_cost):
            return False
        return self.pending >= self.commit_every or since >= self.commit_every_s

    def discard(self) -> None:
        """Drop the temporary copy; the final path keeps its last committed state."""
        if self.h5 is not None:
            with contextlib.suppress(Exception):
                self.h5.close()
            self.h5 = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def read_h5_provenance(path: Path) -> dict[str, Any] | None:
    """The provenance stored in an HDF5 features/matches file's attributes, or None."""
    with h5py.File(path, "r", locking=False) as h5:
        raw = h5.attrs.get("descbal_provenance")
    return None if raw is None else json.loads(raw)


def _h5_attrs(prov: dict[str, Any]) -> dict[str, str]:
    prov = _jsonable(prov)
    out = {"descbal_provenance": json.dumps(prov, sort_keys=True)}
    for k in ("model", "weights_sha256", "geometry", "detector", "descbal_version"):
        v = prov.get(k)
        out[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return out


class FeatureWriter(Protocol):
    """Where features go. Use as a context manager: leaving it commits what was written."""

    def existing(self) -> set[str]:
        """Names already stored (skipped unless overwriting)."""
        ...

    def write(self, name: str, feats: Features) -> None: ...

    def __enter__(self) -> FeatureWriter: ...

    def __exit__(self, *exc: Any) -> None: ...


class HlocWriter:
    """The hloc features file (see the module docstring)."""

    def __init__(self, path: str | Path, provenance: dict[str, Any], overwrite: bool = False, half: bool = False,
                 commit_every: int = COMMIT_EVERY_IMAGES, commit_every_s: float = COMMIT_EVERY_S) -> None:
        self.path = Path(path)
        self.provenance = provenance
        self.half = half
        self._names: set[str] = set()
        exists = self.path.is_file() and not overwrite
        if exists:
            try:
                old = read_h5_provenance(self.path)
                with h5py.File(self.path, "r", locking=False) as h5:
                    self._names = set(h5_feature_names(h5))
            except OSError as e:
                raise BadInputError(f"not a readable HDF5 file ({e}); use --overwrite or another --out", self.path) from None
            if self._names:
                _check_resume(self.path, old, provenance)
            exists = bool(self._names)  # a file holding no image blocks nothing: start it afresh
        elif self.path.exists() and not self.path.is_file():
            raise BadInputError("--out exists and is not a file", self.path)
        self.tx = AtomicH5(self.path, fresh=not exists, commit_every=commit_every, commit_every_s=commit_every_s)
        self._current: str | None = None
        self._wrote = False  # an image written by this writer (else a resume that found everything done)

    def existing(self) -> set[str]:
        return set(self._names)

    def __enter__(self) -> HlocWriter:
        h5 = self.tx.open()
        for k, v in _h5_attrs(self.provenance).items():
            h5.attrs[k] = v
        self.tx.dirty = True
        return self

    def write(self, name: str, feats: Features) -> None:
        h5 = self.tx.h5
        assert h5 is not None
        self._current = name
        if name in h5:
            del h5[name]
        g = h5.create_group(name)
        g.create_dataset("keypoints", data=np.asarray(feats.keypoints, np.float32))
        g.create_dataset("descriptors", data=np.ascontiguousarray(
            np.asarray(feats.descriptors).T.astype(np.float16 if self.half else np.float32)))
        g.create_dataset("scores", data=np.asarray(feats.scores, np.float32))
        g.create_dataset("image_size", data=np.asarray(feats.image_size, np.int64))
        g.create_dataset("scales", data=np.asarray(feats.scales, np.float32))
        g.create_dataset("oris", data=np.asarray(feats.oris, np.float32))
        self._current = None
        self._names.add(name)
        self._wrote = True
        self.tx.did_work()

    def __exit__(self, *exc: Any) -> None:
        if self.tx.h5 is None:
            return
        if self._current is not None and self._current in self.tx.h5:  # interrupted mid-image
            del self.tx.h5[self._current]
            self._names.discard(self._current)
        if not self._names:  # nothing stored: leave nothing (an empty file would only block the next run)
            self.tx.discard()
            return
        if not self._wrote and self.path.is_file():  # a resume that added nothing leaves the file as it was
            self.tx.discard()  # (its modification time too: caches fingerprinted on it stay current)
            return
        try:
            self.tx.commit()
        except BaseException:
            self.tx.discard()
            raise


# ------------------------------------------------------------------------------ folders


class _FolderWriter:
    """Shared logic of the one-file-per-image writers (each file is its own commit)."""

    suffix = ""
    kind = ""

    def __init__(self, path: str | Path, provenance: dict[str, Any], overwrite: bool = False, half: bool = False,
                 commit_every: int = COMMIT_EVERY_IMAGES, commit_every_s: float = COMMIT_EVERY_S) -> None:
        self.path = Path(path)
        self.provenance = provenance
        self.half = half
        if self.path.exists() and not self.path.is_dir():
            raise BadInputError(f"--out must be a folder for the {self.kind} format", self.path)
        prov_file = self.path / PROVENANCE_FILE
        self._names: set[str] = set()
        self._started = False  # provenance written (with the first image)
        if overwrite and self.path.is_dir():
            for f in self._files():
                f.unlink()
        elif self.path.is_dir():
            names = folder_feature_names(self.path, self.suffix)
            if names:  # a folder holding no image blocks nothing
                old = json.loads(prov_file.read_text(encoding="utf-8")) if prov_file.is_file() else None
                _check_resume(self.path, old, provenance)
            self._names = set(names)

    def _files(self) -> Iterator[Path]:
        return (p for p in self.path.rglob(f"*{self.suffix}") if p.is_file())

    def existing(self) -> set[str]:
        return set(self._names)

    def __enter__(self) -> _FolderWriter:
        sweep_stale_temps(self.path)  # once here; each file's own write then skips the search
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def target(self, name: str) -> Path:
        """Where image ``name`` goes; the provenance file is written before the first one."""
        if not self._started:
            write_text_atomic(self.path / PROVENANCE_FILE,
                              json.dumps(_jsonable(self.provenance), indent=2, sort_keys=True) + "\n")
            self._started = True
        return self.path / (name + self.suffix)


class NpzWriter(_FolderWriter):
    """``<out>/<name>.npz`` per image (see the module docstring)."""

    suffix = ".npz"
    kind = "npz"

    def write(self, name: str, feats: Features) -> None:
        with atomic_path(self.target(name), suffix=".npz", clean=False) as tmp, open(tmp, "wb") as f:
            np.savez(f, keypoints=np.asarray(feats.keypoints, np.float32),
                     descriptors=np.asarray(feats.descriptors).T.astype(np.float16 if self.half else np.float32),
                     scores=np.asarray(feats.scores, np.float32), image_size=np.asarray(feats.image_size, np.int64),
                     scales=np.asarray(feats.scales, np.float32), oris=np.asarray(feats.oris, np.float32))
        self._names.add(name)


def quantise_descriptors(desc: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Descriptors as 0..255 integers after L2 normalisation (lossy; see the module docstring).
    Shape: (N, D) -> (N, D) uint8."""
    d = np.asarray(desc, np.float64)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    if d.size and d.min() < 0:
        q = np.rint(128.0 + 512.0 * d)
    else:
        q = np.rint(512.0 * d)
    return np.clip(q, 0, 255).astype(np.uint8)


class ColmapWriter(_FolderWriter):
    """``<out>/<name>.txt`` in COLMAP's keypoint text format (lossy; see the module docstring)."""

    suffix = ".txt"
    kind = "colmap"

    def write(self, name: str, feats: Features) -> None:
        n = len(feats)
        q = quantise_descriptors(feats.descriptors) if n else np.zeros((0, 128), np.uint8)
        dim = q.shape[1] if n else int(np.asarray(feats.descriptors).shape[-1] or 128)
        lines = [f"{n} {dim}"]
        for i in range(n):
            x, y = feats.keypoints[i] + 0.5
            head = f"{x:.4f} {y:.4f} {feats.scales[i] / 2.0:.4f} {np.deg2rad(feats.oris[i]):.6f}"
            lines.append(head + " " + " ".join(map(str, q[i].tolist())))
        write_text_atomic(self.target(name), "\n".join(lines) + "\n", clean=False)
        self._names.add(name)


def folder_feature_names(path: Path, suffix: str) -> list[str]:
    """Image names stored in a one-file-per-image output folder, sorted."""
    return sorted(p.relative_to(path).as_posix()[: -len(suffix)] for p in path.rglob(f"*{suffix}") if p.is_file())


WRITERS: dict[str, Callable[..., FeatureWriter]] = {"hloc": HlocWriter, "npz": NpzWriter, "colmap": ColmapWriter}


def open_writer(fmt: str, path: str | Path, provenance: dict[str, Any], overwrite: bool = False,
                half: bool = False, commit_every: int = COMMIT_EVERY_IMAGES,
                commit_every_s: float = COMMIT_EVERY_S) -> FeatureWriter:
    """The writer of a format; BadInputError listing the formats otherwise. ``commit_every`` /
    ``commit_every_s``: how often an hloc file commits (images / seconds, whichever first)."""
    try:
        cls = WRITERS[fmt]
    except KeyError:
        raise BadInputError(f"unknown format {fmt!r}; choose from {', '.join(WRITERS)}") from None
    return cls(path, provenance, overwrite=overwrite, half=half, commit_every=commit_every,
               commit_every_s=commit_every_s)


def list_features(path: str | Path) -> list[str]:
    """The exact stored image names of a features output: an hloc HDF5 file, or an ``npz`` /
    ``colmap`` folder.

    Raises:
        DataMissingError: nothing at ``path``.
        BadInputError: not a features file or folder.
    """
    from descbal.errors import DataMissingError

    path = Path(path)
    if path.is_dir():
        npz = folder_feature_names(path, ".npz")
        return npz if npz else folder_feature_names(path, ".txt")
    if not path.is_file():
        raise DataMissingError("features file not found", path)
    try:
        with h5py.File(path, "r", locking=False) as h5:
            return h5_feature_names(h5)
    except OSError as e:
        raise BadInputError(f"not a readable HDF5 file ({e})", path) from None
