"""Patch sets in memory and their HDF5 files (the "Brown schema"), plus shared cache helpers.

File layout (one HDF5 file per set)::

    patches  uint8  (N, H, W)  chunked (1024, H, W), uncompressed
    labels   int64  (N,)       class of each patch (Brown: the 3D point id)
    pairs    int64  (M, 3)     optional: (patch_id_1, patch_id_2, is_match), is_match in {0, 1}
    holdout  uint8  (N,)       optional: 1 for patches reserved for evaluation (never trained on)
    near     int64  (K, 2)     optional: pairs of labels that must not be negatives of each other
                               (distinct 3D points whose sightings nearly coincide: false negatives)
    ...      optional builder-specific datasets (e.g. ``cache sfm``'s per-patch ``image_id``),
             ignored by :func:`load_patchset`, read by :func:`read_datasets`
    attrs    name, num_patches, format, ``geometry`` (optional: JSON of the
             :class:`~descbal.geometry.PatchGeometry` the patches were cut with; absent for sets of
             unknown geometry such as Brown's) and whatever the writer adds (source_sha256, ...)

Caches built by :mod:`descbal.data` are idempotent: each stores the SHA-256 of its raw input's
fingerprint and the descbal version, and a rebuild is skipped while both are unchanged
(:func:`cache_is_current`).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np
from numpy.typing import NDArray

from descbal import __version__
from descbal.errors import BadInputError, DataMissingError
from descbal.fileio import atomic_path, sha256_hex
from descbal.geometry import PatchGeometry
from descbal.progress import Progress, or_no_progress

T = TypeVar("T")
R = TypeVar("R")

#: Version of the cache file layouts written by :mod:`descbal.data`; bump on any change.
CACHE_FORMAT = 1
#: Patches per HDF5 chunk (4 MiB for 64x64 patches).
CHUNK_PATCHES = 1024
#: Patches written per slice (progress and interruption granularity).
WRITE_SLICE = 65536
#: The datasets of the schema (see the module docstring).
SCHEMA_DATASETS: tuple[str, ...] = ("patches", "labels", "pairs", "holdout", "near")


@dataclass
class PatchSet:
    """Grayscale patches with class labels and optional verification pairs.

    Attributes:
        patches: (N, H, W) uint8.
        labels: (N,) int64; patches with equal labels show the same physical point.
        pairs: (M, 3) int64 rows ``(patch_id_1, patch_id_2, is_match)`` with 0-based patch ids
            and ``is_match`` in {0, 1}, or None.
        name: a short name such as ``"liberty"``.
        holdout: optional (N,) bool, True for patches reserved for evaluation pairs; training
            never samples them.
        near: optional (K, 2) int64 pairs of labels that are distinct classes but too close to
            be drawn as negatives of each other (the batch sampler keeps them apart).
        geometry: the keypoint-to-patch geometry the patches were cut with (None: unknown).

    Raises:
        BadInputError: wrong dtypes, shapes, pair ids out of range or match flags not 0/1.
    """

    patches: NDArray[np.uint8]
    labels: NDArray[np.int64]
    pairs: NDArray[np.int64] | None = None
    name: str = ""
    holdout: NDArray[np.bool_] | None = None
    near: NDArray[np.int64] | None = None
    geometry: PatchGeometry | None = None

    def __post_init__(self) -> None:
        p = self.patches
        if not isinstance(p, np.ndarray) or p.dtype != np.uint8 or p.ndim != 3:
            raise BadInputError(f"patches must be a uint8 (N, H, W) array, got {_describe(p)}")
        n = p.shape[0]
        self.labels = _int64(self.labels, "labels")
        if self.labels.shape != (n,):
            raise BadInputError(f"labels must have shape ({n},), got {self.labels.shape}")
        if self.pairs is not None:
            self.pairs = _int64(self.pairs, "pairs")
            check_pairs(self.pairs, n)
        if self.holdout is not None:
            self.holdout = np.asarray(self.holdout).astype(bool)
            if self.holdout.shape != (n,):
                raise BadInputError(f"holdout must have shape ({n},), got {self.holdout.shape}")
        if self.near is not None:
            self.near = _int64(self.near, "near").reshape(-1, 2)

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    @property
    def num_pairs(self) -> int:
        """Number of verification pairs (0 when there are none)."""
        return 0 if self.pairs is None else int(self.pairs.shape[0])


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _int64(a: object, what: str, path: Path | None = None) -> NDArray[np.int64]:
    """``a`` as int64 if it is an integer array (copied only when needed)."""
    arr = np.asarray(a)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise BadInputError(f"{what} must be integers, got {arr.dtype}", path)
    return arr.astype(np.int64, copy=False)


def check_pairs(pairs: NDArray[np.int64], num_patches: int, path: Path | None = None) -> None:
    """Check a (M, 3) pairs array against N patches.

    Raises:
        BadInputError: wrong shape, a patch id outside [0, N) or a match flag not in {0, 1}.
    """
    if pairs.ndim != 2 or pairs.shape[1] != 3:
        raise BadInputError(f"pairs must have shape (M, 3), got {pairs.shape}", path)
    if len(pairs) == 0:
        return
    ids = pairs[:, :2]
    bad = np.flatnonzero(((ids < 0) | (ids >= num_patches)).any(axis=1))
    if len(bad):
        i = int(bad[0])
        raise BadInputError(
            f"pair {i} refers to patch {pairs[i, :2].tolist()}, outside 0..{num_patches - 1} "
            f"({len(bad)} such pairs)", path)
    flags = pairs[:, 2]
    if ((flags != 0) & (flags != 1)).any():
        raise BadInputError("pair match flags (column 3) must be 0 or 1", path)


# --------------------------------------------------------------------------------------------
# HDF5 files
# --------------------------------------------------------------------------------------------


def _read_dataset(h5: h5py.File, key: str, path: Path) -> np.ndarray:
    """Read a whole dataset into a new array with one ``read_direct`` call."""
    ds = h5.get(key)
    if not isinstance(ds, h5py.Dataset):
        raise BadInputError(f"no {key!r} dataset (has: {', '.join(sorted(h5)) or 'nothing'})", path)
    out = np.empty(ds.shape, dtype=ds.dtype)
    if out.size:
        ds.read_direct(out)
    return out


def load_patchset(path: str | Path) -> PatchSet:
    """Read a patch-set HDF5 file fully into memory.

    Shape: ``patches`` (N, H, W) uint8, ``labels`` (N,) int64, ``pairs`` (M, 3) int64 or None.
    About 0.3 s for 450k 64x64 patches from the page cache.

    Raises:
        DataMissingError: the file does not exist.
        BadInputError: not HDF5, a missing dataset, or wrong dtypes/shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataMissingError("patch set file not found", path)
    try:
        with h5py.File(path, "r", locking=False) as h5:
            patches = _read_dataset(h5, "patches", path)
            labels = _read_dataset(h5, "labels", path)
            pairs = _read_dataset(h5, "pairs", path) if "pairs" in h5 else None
            holdout = _read_dataset(h5, "holdout", path) if "holdout" in h5 else None
            near = _read_dataset(h5, "near", path) if "near" in h5 else None
            name = h5.attrs.get("name", path.stem)
            geometry = _read_geometry(h5.attrs.get("geometry"), path)
    except OSError as e:
        raise BadInputError(f"not a readable HDF5 file ({e})", path) from None
    if patches.dtype != np.uint8 or patches.ndim != 3:
        raise BadInputError(f"'patches' must be uint8 (N, H, W), got {_describe(patches)}", path)
    if labels.shape != (len(patches),):
        raise BadInputError(f"'labels' must have shape ({len(patches)},), got {labels.shape}", path)
    labels = _int64(labels, "'labels'", path)
    if pairs is not None:
        pairs = _int64(pairs, "'pairs'", path)
        check_pairs(pairs, len(patches), path)
    if holdout is not None and holdout.shape != (len(patches),):
        raise BadInputError(f"'holdout' must have shape ({len(patches)},), got {holdout.shape}", path)
    if near is not None and (near.ndim != 2 or near.shape[1] != 2):
        raise BadInputError(f"'near' must have shape (K, 2), got {near.shape}", path)
    return PatchSet(patches, labels, pairs, str(name), None if holdout is None else holdout.astype(bool),
                    None if near is None else _int64(near, "'near'", path), geometry)


def _read_geometry(raw: object, path: Path) -> PatchGeometry | None:
    """The ``geometry`` attribute (JSON of a PatchGeometry), None when absent."""
    if raw is None:
        return None
    try:
        return PatchGeometry.from_dict(json.loads(str(raw)))
    except (ValueError, TypeError) as e:
        raise BadInputError(f"unreadable 'geometry' attribute ({e})", path) from None


def write_patchset(path: str | Path, ps: PatchSet, attrs: Mapping[str, Any] | None = None,
                   progress: Progress | None = None, extra: Mapping[str, np.ndarray] | None = None) -> None:
    """Write ``ps`` to ``path`` atomically (temporary sibling, renamed when complete).

    ``patches`` is chunked by :data:`CHUNK_PATCHES` patches, uncompressed; it is written in
    slices of :data:`WRITE_SLICE` patches, reporting ``progress("write", done, N)``. ``attrs``
    are stored as file attributes next to ``name``, ``num_patches`` and ``format``. ``extra``
    datasets (a builder's per-patch provenance, e.g. ``image_id`` (N,)) go into the same file,
    in the same atomic write; :func:`load_patchset` ignores them and :func:`read_datasets` reads
    them. An exception or Ctrl-C midway leaves neither ``path`` nor the temporary file.

    Raises:
        ValueError: an ``extra`` name that is one of the schema's datasets.
    """
    clash = sorted(set(extra or {}) & set(SCHEMA_DATASETS))
    if clash:
        raise ValueError(f"extra datasets may not replace the schema's: {', '.join(clash)}")
    progress = or_no_progress(progress)
    n, h, w = ps.patches.shape
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w", locking=False) as h5:
        h5.attrs["name"] = ps.name
        h5.attrs["num_patches"] = n
        h5.attrs["format"] = CACHE_FORMAT
        if ps.geometry is not None:
            h5.attrs["geometry"] = json.dumps(ps.geometry.to_dict(), sort_keys=True)
        for k, v in (attrs or {}).items():
            h5.attrs[k] = v
        chunks = (min(CHUNK_PATCHES, n), h, w) if n and h and w else None  # HDF5 has no empty chunks
        ds = h5.create_dataset("patches", shape=(n, h, w), dtype=np.uint8, chunks=chunks)
        progress("write", 0, n)
        for start in range(0, n, WRITE_SLICE):
            stop = min(n, start + WRITE_SLICE)
            ds.write_direct(ps.patches, np.s_[start:stop], np.s_[start:stop])
            progress("write", stop, n)
        h5.create_dataset("labels", data=ps.labels)
        if ps.pairs is not None:
            h5.create_dataset("pairs", data=ps.pairs)
        if ps.holdout is not None:
            h5.create_dataset("holdout", data=ps.holdout.astype(np.uint8))
        if ps.near is not None:
            h5.create_dataset("near", data=ps.near.reshape(-1, 2))
        for k, v in (extra or {}).items():
            h5.create_dataset(k, data=np.asarray(v))


def read_datasets(path: str | Path, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Named datasets of a patch-set file (e.g. the ``extra`` ones of :func:`write_patchset`),
    each read whole.

    Raises:
        DataMissingError: the file does not exist.
        BadInputError: not HDF5, or a named dataset is absent.
    """
    path = Path(path)
    if not path.is_file():
        raise DataMissingError("patch set file not found", path)
    try:
        with h5py.File(path, "r", locking=False) as h5:
            return {n: _read_dataset(h5, n, path) for n in names}
    except OSError as e:
        raise BadInputError(f"not a readable HDF5 file ({e})", path) from None


def holdout_pairs(labels: NDArray[np.int64], holdout: NDArray[np.bool_], n_pairs: int, rng: np.random.Generator,
                  near: NDArray[np.int64] | None = None) -> NDArray[np.int64]:
    """Verification pairs among held-out patches, half matching and half not, shuffled.

    Matches: a random class with two or more held-out patches, two distinct patches of it.
    Non-matches: two distinct classes, a random patch of each; with ``near`` (K, 2) label
    pairs, a non-match whose classes are near each other is drawn again (they would be false
    negatives). ``n_pairs // 2`` matches when some class has two patches, else none.

    Shape: labels (N,), holdout (N,) -> (M, 3) int64 rows ``(patch_1, patch_2, is_match)``.
    """
    idx = np.flatnonzero(holdout)
    if len(idx) == 0:
        return np.zeros((0, 3), np.int64)
    lab = labels[idx]
    order = np.argsort(lab, kind="stable")
    idx, lab = idx[order], lab[order]
    uniq, start, count = np.unique(lab, return_index=True, return_counts=True)
    multi = np.flatnonzero(count >= 2)
    half = n_pairs // 2
    rows = []
    if len(multi):
        cls = rng.choice(multi, half)
        a = rng.integers(0, count[cls])
        b = (a + rng.integers(1, count[cls])) % count[cls]
        rows.append(np.stack([idx[start[cls] + a], idx[start[cls] + b], np.ones(half, np.int64)], 1))
    if len(uniq) >= 2:
        c1 = rng.integers(0, len(uniq), n_pairs - half)
        c2 = (c1 + rng.integers(1, len(uniq), n_pairs - half)) % len(uniq)
        if near is not None and len(near):
            c1, c2 = _redraw_near(uniq, c1, c2, near, rng)
        p1 = idx[start[c1] + rng.integers(0, count[c1])]
        p2 = idx[start[c2] + rng.integers(0, count[c2])]
        rows.append(np.stack([p1, p2, np.zeros(n_pairs - half, np.int64)], 1))
    out = np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)
    return out[rng.permutation(len(out))]


def _redraw_near(uniq: NDArray[np.int64], c1: NDArray[np.int64], c2: NDArray[np.int64], near: NDArray[np.int64],
                 rng: np.random.Generator, rounds: int = 20) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Non-match class pairs (indices into ``uniq``) with the ones listed in ``near`` drawn again
    (at most ``rounds`` times; the few left after that are dropped)."""
    pairs = {(int(a), int(b)) for a, b in near} | {(int(b), int(a)) for a, b in near}
    for _ in range(rounds):
        bad = np.array([(int(uniq[a]), int(uniq[b])) in pairs for a, b in zip(c1, c2, strict=True)], bool)
        if not bad.any():
            return c1, c2
        k = int(bad.sum())
        c1[bad] = rng.integers(0, len(uniq), k)
        c2[bad] = (c1[bad] + rng.integers(1, len(uniq), k)) % len(uniq)
    bad = np.array([(int(uniq[a]), int(uniq[b])) in pairs for a, b in zip(c1, c2, strict=True)], bool)
    return c1[~bad], c2[~bad]


@dataclass(frozen=True)
class CommonGeometry:
    """The patch geometry several sets share (:func:`common_geometry`).

    Attributes:
        geometry: the geometry of the sets that record one (the first set's when ``mixed``);
            None when none records one.
        mixed: the sets record different geometries (allowed with ``allow_mixed``).
        notes: log lines: sets of unknown geometry next to known ones, a mix allowed.
    """

    geometry: PatchGeometry | None
    mixed: bool = False
    notes: tuple[str, ...] = ()


def common_geometry(geometries: Sequence[PatchGeometry | None], names: Sequence[str], *,
                    allow_mixed: bool = False) -> CommonGeometry:
    """The geometry of sets combined (one run trains on all of them): the one every set that
    records a geometry records. Sets of unknown geometry (Brown's) join any; sets of different
    recorded geometries are refused unless ``allow_mixed`` (then the first one's is kept).

    Args:
        geometries: each set's :attr:`PatchSet.geometry`.
        names: each set's name in messages (its file).

    Raises:
        BadInputError: two sets record different geometries (naming both and the fields that
            differ) and ``allow_mixed`` is False.
    """
    known = [(n, g) for n, g in zip(names, geometries, strict=True) if g is not None]
    if not known:
        return CommonGeometry(None)
    first_name, first = known[0]
    notes: list[str] = []
    mixed = False
    for name, g in known[1:]:
        if g == first:
            continue
        a, b = first.to_dict(), g.to_dict()
        diff = ", ".join(f"{k} {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k])
        if not allow_mixed:
            raise BadInputError(f"training sets of different patch geometries: {first_name} and {name} ({diff}); "
                                "combine sets cut alike, or set data.mixed_geometry = true")
        mixed = True
        notes.append(f"{name} records another patch geometry than {first_name} ({diff}); mixed as "
                     f"data.mixed_geometry allows, the run records {first_name}'s")
    for name, g in zip(names, geometries, strict=True):
        if g is None:
            notes.append(f"{name} records no patch geometry; the run's geometry is {first_name}'s")
    return CommonGeometry(first, mixed, tuple(notes))


def concat_patchsets(sets: Sequence[PatchSet], names: Sequence[str] | None = None, *,
                     allow_mixed_geometry: bool = False) -> PatchSet:
    """One set holding ``sets`` in order (one set: returned as it is).

    Patch ids and labels of set ``i`` are shifted so that they stay disjoint: patch ids by the
    patches before it, labels by ``max(labels so far) + 1 - min(its labels)`` (its lowest label
    follows the highest before it). ``pairs`` (patch ids) and ``near`` (labels) move with them;
    ``holdout`` is concatenated with False for sets without one; each of ``pairs``, ``holdout``
    and ``near`` is None when no set has it. The geometry is :func:`common_geometry`'s.

    Args:
        names: each set's name in messages (default: its ``name``).

    Shape: N_i x (H, W) patches -> (sum N_i, H, W).

    Raises:
        BadInputError: no sets, patch sizes that differ (naming the file), or geometries that
            differ (see :func:`common_geometry`).
    """
    if not sets:
        raise BadInputError("no patch sets to combine")
    names = [s.name for s in sets] if names is None else list(names)
    geometry = common_geometry([s.geometry for s in sets], names, allow_mixed=allow_mixed_geometry).geometry
    if len(sets) == 1:
        return sets[0]
    hw = sets[0].patches.shape[1:]
    for name, s in zip(names, sets, strict=True):
        if s.patches.shape[1:] != hw:
            raise BadInputError(f"patches of {s.patches.shape[1]}x{s.patches.shape[2]} pixels, the first set "
                                f"({names[0]}) has {hw[0]}x{hw[1]}; combined sets need one patch size", name)
    labels, pairs, near, holdout = [], [], [], []
    n_before, top = 0, None
    for s in sets:
        shift = 0 if top is None or not len(s.labels) else top + 1 - int(s.labels.min())
        labels.append(s.labels + shift)
        if len(s.labels):
            top = int(labels[-1].max()) if top is None else max(top, int(labels[-1].max()))
        if s.pairs is not None:
            pairs.append(s.pairs + np.array([n_before, n_before, 0], np.int64))
        if s.near is not None:
            near.append(s.near + shift)
        holdout.append(s.holdout if s.holdout is not None else np.zeros(len(s), bool))
        n_before += len(s)
    any_holdout = any(s.holdout is not None for s in sets)
    return PatchSet(np.concatenate([s.patches for s in sets]), np.concatenate(labels),
                    np.concatenate(pairs) if pairs else None, "+".join(s.name for s in sets),
                    np.concatenate(holdout) if any_holdout else None, np.concatenate(near) if near else None, geometry)


# --------------------------------------------------------------------------------------------
# Cache helpers shared by the Brown, HPatches and sequence caches
# --------------------------------------------------------------------------------------------


def fingerprint_files(files: Iterable[Path], root: Path) -> str:
    """SHA-256 (hex) identifying raw input files by metadata, not content.

    Hashes, for each file in the given order: its POSIX path relative to ``root``, its size in
    bytes and its modification time in ns. Cheap (no file is read), so checking whether a cache
    is current costs milliseconds; re-extracting an archive without preserving modification
    times makes the cache rebuild once.
    """

    def lines() -> Iterator[bytes]:
        for f in files:
            st = f.stat()
            yield f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()

    return sha256_hex(lines())


def config_hash(cfg: Any) -> str:
    """A short hash of a builder's configuration dataclass (part of its cache's identity)."""
    return sha256_hex(json.dumps(asdict(cfg), sort_keys=True))[:16]


def cache_attrs(name: str, source_sha256: str, **extra: Any) -> dict[str, Any]:
    """The attributes every descbal cache file carries, plus ``extra``."""
    return {"name": name, "source_sha256": source_sha256, "descbal_version": __version__,
            "format": CACHE_FORMAT, **extra}


def cache_is_current(path: Path, source_sha256: str) -> bool:
    """True when ``path`` is a readable cache built from the same input by this descbal version
    and cache format; a missing or unreadable file is simply not current."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r", locking=False) as h5:
            a = h5.attrs
            return (str(a.get("source_sha256", "")) == source_sha256
                    and str(a.get("descbal_version", "")) == __version__
                    and int(a.get("format", -1)) == CACHE_FORMAT)
    except (OSError, ValueError, TypeError):
        return False


def skipped_when_built(path: Path) -> list[dict[str, str]] | None:
    """The inputs a cache was built without (its ``skipped`` attribute, JSON), None when none:
    an up-to-date cache still reports them, so ``--strict`` fails again."""
    return json.loads(str(read_attrs(path).get("skipped", "[]"))) or None


def read_attrs(path: Path) -> dict[str, Any]:
    """The file attributes of an HDF5 file as plain Python values."""
    with h5py.File(path, "r", locking=False) as h5:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in h5.attrs.items()}


def prefetch(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` in order, computed on ``workers`` threads with at most ``2 * workers``
    results held in memory."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="descbal-read")
    window: deque[Future[R]] = deque()
    it = iter(items)
    try:
        for item in it:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def read_groups(path: str | Path, names: Iterable[str] | None, read: Callable[[h5py.Group, Path], R],
                what: str) -> dict[str, R]:
    """Read named top-level groups of an HDF5 cache (all, sorted, when ``names`` is None).

    Raises:
        DataMissingError: the file does not exist.
        BadInputError: not HDF5, or a requested group is absent.
    """
    path = Path(path)
    if not path.is_file():
        raise DataMissingError(f"{what} cache not found", path)
    try:
        with h5py.File(path, "r", locking=False) as h5:
            wanted = list(names) if names is not None else sorted(h5)
            absent = [n for n in wanted if not isinstance(h5.get(n), h5py.Group)]
            if absent:
                raise BadInputError(f"sequence(s) not in the cache: {', '.join(absent[:10])}"
                                    + (" ..." if len(absent) > 10 else ""), path)
            return {n: read(h5[n], path) for n in wanted}
    except OSError as e:
        raise BadInputError(f"not a readable HDF5 file ({e})", path) from None
