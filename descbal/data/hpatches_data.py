"""HPatches patch release (``hpatches-release/``) to one HDF5 cache, and back.

Release layout: one folder per sequence holding 16 grayscale PNGs ``ref, e1..e5, h1..h5,
t1..t5``, each 65 pixels wide with N patches of 65x65 stacked vertically (row block i is patch
i), read like the official loader does (``cv2.imread(path, 0)``, split every 65 rows).

Cache layout::

    /<sequence>/<type>   uint8 (N, 65, 65) for the 16 types, N equal within a sequence
    attrs                name="hpatches", num_sequences, num_patches (sum of N), types,
                         source_sha256, descbal_version, format

The benchmark's task files (``splits/splits.json`` and the CSVs) are copied beside the cache
as ``<cache folder>/tasks/`` so that one folder holds everything an evaluation reads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
from numpy.typing import NDArray

from descbal.data.hpatches_layout import TYPES
from descbal.data.patchset import (
    cache_attrs,
    cache_is_current,
    fingerprint_files,
    prefetch,
    read_attrs,
    read_groups,
)
from descbal.errors import BadInputError, DataMissingError
from descbal.fileio import atomic_path
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult

PATCH = 65
MAX_WORKERS = 4

def read_patch_column(path: Path) -> NDArray[np.uint8]:
    """One release PNG split into patches. Shape: (65 N, 65) image -> (N, 65, 65) uint8.

    Raises:
        BadInputError: missing or unreadable file, width not 65, height not a positive multiple
            of 65.
    """
    if not path.is_file():
        raise BadInputError("missing patch image", path)
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise BadInputError("cannot read image (not a PNG OpenCV reads)", path)
    h, w = img.shape
    if w != PATCH:
        raise BadInputError(f"image is {w} pixels wide, expected {PATCH} (patches stacked vertically)", path)
    if h == 0 or h % PATCH:
        raise BadInputError(f"image height {h} is not a positive multiple of {PATCH}", path)
    return img.reshape(h // PATCH, PATCH, PATCH)


def read_hpatches_sequence(folder: str | Path) -> dict[str, NDArray[np.uint8]]:
    """The 16 patch images of one release sequence, in :data:`TYPES` order.

    Returns:
        type -> (N, 65, 65) uint8, the same N for all 16 types.

    Raises:
        DataMissingError: the folder does not exist.
        BadInputError: a missing/unreadable image, a wrong size, or an N that differs from
            ``ref.png``'s (naming the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataMissingError("HPatches sequence folder not found", folder)
    out: dict[str, NDArray[np.uint8]] = {}
    for t in TYPES:
        path = folder / f"{t}.png"
        out[t] = read_patch_column(path)
        n_ref = len(out[TYPES[0]])
        if len(out[t]) != n_ref:
            raise BadInputError(f"{len(out[t])} patches, but {TYPES[0]}.png of {folder.name} has {n_ref}", path)
    return out


def list_release_sequences(release: Path) -> list[str]:
    """Names of the sequence folders of a release (sub-folders holding ``ref.png``), sorted."""
    return sorted(p.name for p in release.iterdir() if p.is_dir() and (p / "ref.png").is_file())


def _copy_tasks(src: Path, dst: Path) -> int:
    """Copy the files under ``src`` to ``dst`` (same relative paths), each atomically, skipping
    files whose copy already has the same size and modification time. Returns files copied."""
    copied = 0
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dst / f.relative_to(src)
        st = f.stat()
        if target.is_file():
            tt = target.stat()
            if tt.st_size == st.st_size and tt.st_mtime_ns == st.st_mtime_ns:
                continue
        with atomic_path(target) as tmp:
            shutil.copy2(f, tmp)
        copied += 1
    return copied


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


@dataclass
class HPatchesCacheResult(JsonResult):
    """The HPatches cache: file, sequences, patches per image type, the task folder beside it
    (None without one) and task files copied there, wall time (s), whether it was already up to
    date (``skipped``) and the fingerprint of the release."""

    name: str
    path: str
    num_sequences: int
    num_patches: int
    tasks: str | None
    tasks_copied: int
    seconds: float
    skipped: bool
    source_sha256: str


def cache_hpatches(
    root: str | Path,
    *,
    release: str | Path | None = None,
    tasks: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> HPatchesCacheResult:
    """Build (or keep) the HDF5 cache of an HPatches patch release.

    Args:
        root: data root (see :func:`descbal.data.paths.default_root`).
        release: the extracted release; default ``root/hpatches/hpatches-release``.
        tasks: task folder (``splits/splits.json`` and CSVs); default ``root/hpatches/tasks``,
            skipped when that default does not exist. Copied to ``<out folder>/tasks/`` when
            that is a different folder.
        out: the cache file; default ``root/hpatches/hpatches.h5``.
        overwrite: rebuild even when the cache is current.
        progress: ``progress("sequences", done, total)``.

    ``source_sha256`` fingerprints the 16 PNGs of every sequence by relative path, size and
    modification time. When ``out`` holds the same fingerprint, version and format, it is kept
    (the task files are still brought up to date). ``out`` is written to a temporary sibling and
    renamed, so an error or Ctrl-C leaves no ``out``.

    Returns:
        An :class:`HPatchesCacheResult`.

    Raises:
        DataMissingError: the release folder, or an explicitly given task folder, is missing.
        BadInputError: no sequence folders, or a malformed sequence (see
            :func:`read_hpatches_sequence`).
    """
    t0 = time.perf_counter()
    root = Path(root)
    release = Path(release) if release is not None else root / "hpatches" / "hpatches-release"
    out = Path(out) if out is not None else root / "hpatches" / "hpatches.h5"
    if not release.is_dir():
        raise DataMissingError("HPatches release folder not found (download it first)", release)
    tasks_src = Path(tasks) if tasks is not None else root / "hpatches" / "tasks"
    if tasks is not None and not tasks_src.is_dir():
        raise DataMissingError("HPatches task folder not found", tasks_src)
    seqs = list_release_sequences(release)
    if not seqs:
        raise BadInputError("no sequence folders (sub-folders with ref.png)", release)
    files = [release / s / f"{t}.png" for s in seqs for t in TYPES]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise BadInputError("missing patch image", missing[0])
    sha = fingerprint_files(files, release)
    tasks_dst, copied = None, 0
    if tasks_src.is_dir():
        tasks_dst = out.parent / "tasks"
        if not _same_folder(tasks_src, tasks_dst):
            copied = _copy_tasks(tasks_src, tasks_dst)
    skipped = not overwrite and cache_is_current(out, sha)
    if skipped:
        total = int(read_attrs(out)["num_patches"])
    else:
        total = _write_hpatches(out, release, seqs, sha, or_no_progress(progress))
    return HPatchesCacheResult(name="hpatches", path=str(out), num_sequences=len(seqs), num_patches=total,
                               tasks=None if tasks_dst is None else str(tasks_dst), tasks_copied=copied,
                               seconds=time.perf_counter() - t0, skipped=skipped, source_sha256=sha)


def _write_hpatches(out: Path, release: Path, seqs: Sequence[str], sha: str, progress: Progress) -> int:
    """Read every sequence (on a few threads, in order) and write the cache atomically.
    Returns the total number of patches per type."""
    workers = min(MAX_WORKERS, os.cpu_count() or 1)
    total = 0
    reader = prefetch(read_hpatches_sequence, [release / s for s in seqs], workers)
    with contextlib.closing(reader), atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w", locking=False) as h5:
        progress("sequences", 0, len(seqs))
        for i, (name, data) in enumerate(zip(seqs, reader, strict=True)):
            g = h5.create_group(name)
            for t in TYPES:
                g.create_dataset(t, data=data[t])
            g.attrs["num_patches"] = len(data[TYPES[0]])
            total += len(data[TYPES[0]])
            progress("sequences", i + 1, len(seqs))
        attrs = cache_attrs("hpatches", sha, num_sequences=len(seqs), num_patches=total, types=list(TYPES))
        for k, v in attrs.items():
            h5.attrs[k] = v
    return total


def load_hpatches_cache(path: str | Path, sequences: Sequence[str] | None = None) -> dict[str, NDArray[np.uint8]]:
    """Patches of an HPatches cache. Returns sequence -> (16, N, 65, 65) uint8, rows in
    :data:`TYPES` order; all sequences (sorted) or those named, in the order given.

    Raises:
        DataMissingError: the file does not exist.
        BadInputError: not HDF5, a requested sequence that is absent, or a sequence whose 16
            datasets are missing or of inconsistent shapes.
    """
    return read_groups(path, sequences, _read_group, "HPatches")


def _read_group(g: h5py.Group, path: Path) -> NDArray[np.uint8]:
    """The 16 datasets of one sequence group stacked. Shape: (16, N, 65, 65) uint8."""
    missing = [t for t in TYPES if not isinstance(g.get(t), h5py.Dataset)]
    if missing:
        raise BadInputError(f"sequence {g.name.lstrip('/')} lacks dataset(s) {', '.join(missing)}", path)
    shape = g[TYPES[0]].shape
    if len(shape) != 3 or shape[1:] != (PATCH, PATCH):
        raise BadInputError(f"{g.name}/ref has shape {shape}, expected (N, {PATCH}, {PATCH})", path)
    out = np.empty((len(TYPES), *shape), dtype=np.uint8)
    for i, t in enumerate(TYPES):
        ds = g[t]
        if ds.shape != shape or ds.dtype != np.uint8:
            raise BadInputError(f"{g.name}/{t} is {ds.dtype} {ds.shape}, expected uint8 {shape}", path)
        if out[i].size:
            ds.read_direct(out[i])
    return out


def write_patch_release(root: str | Path, sequences: dict[str, NDArray[np.uint8]]) -> None:
    """Write ``root/<seq>/<type>.png`` (65 px wide, patches stacked vertically)."""
    for name, data in sequences.items():
        for t, patches in zip(TYPES, data, strict=True):
            path = Path(root) / name / f"{t}.png"
            ok, buf = cv2.imencode(".png", patches.reshape(-1, patches.shape[-1]))
            if not ok:
                raise OSError(f"cannot encode {path}")
            with atomic_path(path) as tmp:
                tmp.write_bytes(buf.tobytes())
