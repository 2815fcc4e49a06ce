"""Brown / UBC PhotoTour (liberty, notredame, yosemite): raw folders to a patch-set cache.

Raw layout (one extracted zip): ``patchesNNNN.bmp`` tiles of 1024x1024 pixels, each a 16x16
grid of 64x64 grayscale patches in row-major order; tiles sorted by file name; ``info.txt`` with
one row per patch whose first column is the 3D point id (the label); the last tile is padded, so
only the first N = (rows of ``info.txt``) patches are kept. ``m50_100000_100000_0.txt`` lists
the 100,000 test pairs, 7 columns ``patchID1 3DpointID1 unused patchID2 3DpointID2 unused
unused``; a pair matches when the two 3D point id *strings* are equal (as torchvision does).

Tiles are decoded once each, on a small thread pool, and cut into patches by one
reshape/transpose per tile. 8-bit uncompressed BMPs with a gray palette (what the datasets and
OpenCV's writer use) are read straight from the file bytes; anything else goes through
``cv2.imdecode(..., IMREAD_GRAYSCALE)``.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from descbal.data.patchset import (
    PatchSet,
    cache_attrs,
    cache_is_current,
    check_pairs,
    fingerprint_files,
    read_attrs,
    write_patchset,
)
from descbal.errors import BadInputError, DataMissingError
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult

PATCH = 64
TILE = 1024
GRID = TILE // PATCH
PER_TILE = GRID * GRID
INFO_FILE = "info.txt"
PAIRS_FILE = "m50_100000_100000_0.txt"
#: Tile-decoding threads (OpenCV and NumPy release the GIL while decoding and copying).
MAX_WORKERS = 4
_GRAY_PALETTE = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)


# --------------------------------------------------------------------------------------------
# Text files
# --------------------------------------------------------------------------------------------


def _read_lines(path: Path) -> list[bytes]:
    """Lines of a text file without trailing blank lines."""
    try:
        return path.read_bytes().rstrip().splitlines()
    except OSError as e:
        raise BadInputError(f"cannot read: {e.strerror}", path) from None


def read_info_labels(path: Path) -> NDArray[np.int64]:
    """3D point ids from ``info.txt`` (first column). Shape: (N,) int64, N = number of rows.

    Raises:
        BadInputError: missing or empty file, or a row whose first field is not an integer.
    """
    if not path.is_file():
        raise BadInputError("missing info.txt (one row per patch: 3D point id, unused)", path)
    lines = _read_lines(path)
    if not lines:
        raise BadInputError("empty info.txt", path)
    try:
        return np.array([int(ln.split(None, 1)[0]) for ln in lines], dtype=np.int64)
    except (ValueError, IndexError):
        for i, ln in enumerate(lines, start=1):
            f = ln.split(None, 1)
            if not f or not _is_int(f[0]):
                raise BadInputError(f"line {i}: first field is not an integer 3D point id", path) from None
        raise BadInputError("cannot parse the 3D point ids", path) from None


def read_pairs_file(path: Path) -> NDArray[np.int64]:
    """Pairs from an ``m50_*.txt`` file as rows ``(patch_id_1, patch_id_2, is_match)``.

    ``is_match`` is 1 when columns 2 and 5 (the 3D point ids) are equal as strings.
    Shape: (M, 3) int64.

    Raises:
        BadInputError: a line without exactly 7 fields or with a non-integer patch id.
    """
    lines = _read_lines(path)
    rows = [ln.split() for ln in lines]
    for i, r in enumerate(rows, start=1):
        if len(r) != 7:
            raise BadInputError(f"line {i} has {len(r)} fields, expected 7 "
                                "(patchID1 3DpointID1 unused patchID2 3DpointID2 unused unused)", path)
    out = np.empty((len(rows), 3), dtype=np.int64)
    try:
        out[:, 0] = [int(r[0]) for r in rows]
        out[:, 1] = [int(r[3]) for r in rows]
    except ValueError:
        i = next(i for i, r in enumerate(rows, start=1) if not (_is_int(r[0]) and _is_int(r[3])))
        raise BadInputError(f"line {i}: patch id is not an integer", path) from None
    out[:, 2] = [r[1] == r[4] for r in rows]
    return out


def _is_int(s: bytes) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------------


def list_tiles(folder: Path) -> list[Path]:
    """The ``.bmp`` tiles of a raw folder, sorted by file name."""
    return sorted((p for p in folder.iterdir() if p.name.lower().endswith(".bmp") and p.is_file()),
                  key=lambda p: p.name)


def _bmp_gray8(raw: bytes) -> NDArray[np.uint8] | None:
    """Pixels of an uncompressed 8-bit BMP whose palette is the gray ramp, as a (H, W) view of
    ``raw``; None for any other file (decoded by OpenCV instead)."""
    if len(raw) < 54 or raw[:2] != b"BM":
        return None
    offset, hdr = struct.unpack_from("<II", raw, 10)
    width, height, _planes, bpp, compression = struct.unpack_from("<iiHHI", raw, 18)
    if hdr < 40 or bpp != 8 or compression != 0 or width <= 0 or height == 0:
        return None
    colours = struct.unpack_from("<I", raw, 46)[0] or 256
    pal_end = 14 + hdr + 4 * colours
    if colours > 256 or pal_end > offset:
        return None
    palette = np.frombuffer(raw, np.uint8, 4 * colours, 14 + hdr).reshape(colours, 4)[:, :3]
    if not np.array_equal(palette, _GRAY_PALETTE[:colours]):
        return None
    stride = (width + 3) // 4 * 4
    rows = abs(height)
    if len(raw) < offset + stride * rows:
        return None
    px = np.frombuffer(raw, np.uint8, stride * rows, offset).reshape(rows, stride)[:, :width]
    if colours < 256 and px.max(initial=0) >= colours:
        return None
    return px[::-1] if height > 0 else px  # positive height: rows stored bottom-up


def decode_tile(path: Path) -> NDArray[np.uint8]:
    """One tile as a (1024, 1024) uint8 grayscale image (same pixels as
    ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``).

    Raises:
        BadInputError: unreadable file or a size other than 1024x1024.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BadInputError(f"cannot read tile: {e.strerror}", path) from None
    img = _bmp_gray8(raw)
    if img is None:
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise BadInputError("cannot decode tile (not an image OpenCV reads)", path)
    if img.shape != (TILE, TILE):
        raise BadInputError(f"tile is {img.shape[1]}x{img.shape[0]} pixels, expected {TILE}x{TILE} "
                            f"({GRID}x{GRID} patches of {PATCH}x{PATCH})", path)
    return img


def tile_patches(tile: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The 256 patches of a tile in row-major order, as a view. Shape: (1024, 1024) -> (256, 64, 64)
    given as (16, 16, 64, 64) = (grid row, grid column, y, x)."""
    return tile.reshape(GRID, PATCH, GRID, PATCH).transpose(0, 2, 1, 3)


def _fill_tile(out: NDArray[np.uint8], index: int, path: Path) -> None:
    """Decode tile ``index`` into its slice of ``out`` (N, 64, 64); the last tile may be partial."""
    start = index * PER_TILE
    count = min(PER_TILE, len(out) - start)
    grid = tile_patches(decode_tile(path))
    if count == PER_TILE:
        out[start : start + PER_TILE].reshape(GRID, GRID, PATCH, PATCH)[...] = grid
    else:
        out[start : start + count] = grid.reshape(PER_TILE, PATCH, PATCH)[:count]


def read_tiles(tiles: list[Path], num_patches: int, progress: Progress | None = None,
               workers: int | None = None) -> NDArray[np.uint8]:
    """The first ``num_patches`` patches of ``tiles`` (in list order). Shape: (N, 64, 64) uint8.

    Only the ceil(N / 256) tiles needed are decoded, on up to ``workers`` threads
    (default ``min(MAX_WORKERS, cpu_count)``), reporting ``progress("read tiles", done, total)``.
    """
    progress = or_no_progress(progress)
    needed = math.ceil(num_patches / PER_TILE)
    out = np.empty((num_patches, PATCH, PATCH), dtype=np.uint8)
    workers = workers or min(MAX_WORKERS, os.cpu_count() or 1)
    progress("read tiles", 0, needed)
    if workers <= 1:
        for i in range(needed):
            _fill_tile(out, i, tiles[i])
            progress("read tiles", i + 1, needed)
        return out
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="descbal-tiles")
    try:
        pending = {pool.submit(_fill_tile, out, i, tiles[i]) for i in range(needed)}
        done_count = 0
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            for f in done:
                f.result()  # re-raise a worker's error
            done_count += len(done)
            progress("read tiles", done_count, needed)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def read_brown_folder(folder: str | Path, progress: Progress | None = None,
                      workers: int | None = None) -> PatchSet:
    """Read an extracted Brown folder into memory.

    Returns a :class:`PatchSet` named after the folder: patches (N, 64, 64) uint8 with N = rows
    of ``info.txt``, labels (N,) int64 = 3D point ids, pairs (M, 3) from
    ``m50_100000_100000_0.txt`` when present, else None.

    Raises:
        DataMissingError: the folder does not exist.
        BadInputError: missing info.txt, no .bmp tiles, a tile that is not 1024x1024, fewer
            patches in the tiles than rows in info.txt, or a malformed pairs file (each naming
            the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataMissingError("Brown folder not found", folder)
    labels = read_info_labels(folder / INFO_FILE)
    tiles = list_tiles(folder)
    if not tiles:
        raise BadInputError("no .bmp tiles in the Brown folder", folder)
    n = len(labels)
    if len(tiles) * PER_TILE < n:
        raise BadInputError(f"{len(tiles)} tiles hold at most {len(tiles) * PER_TILE} patches, "
                            f"but info.txt has {n} rows", folder)
    pairs = None
    pairs_path = folder / PAIRS_FILE
    if pairs_path.is_file():
        pairs = read_pairs_file(pairs_path)
        check_pairs(pairs, n, pairs_path)
    patches = read_tiles(tiles, n, progress, workers)
    return PatchSet(patches, labels, pairs, folder.name)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


@dataclass
class BrownCacheResult(JsonResult):
    """One Brown cache: set name, file, patches, pairs, wall time (s), whether it was already up
    to date (``skipped``) and the fingerprint of its raw files."""

    name: str
    path: str
    num_patches: int
    num_pairs: int
    seconds: float
    skipped: bool
    source_sha256: str


def brown_input_files(folder: Path) -> list[Path]:
    """The raw files a Brown cache depends on: the tiles, info.txt and the pairs file."""
    extra = [folder / f for f in (INFO_FILE, PAIRS_FILE) if (folder / f).is_file()]
    return list_tiles(folder) + extra


def cache_brown(
    name: str,
    root: str | Path,
    *,
    raw: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> BrownCacheResult:
    """Build (or keep) the HDF5 patch-set cache of one Brown set.

    Args:
        name: set name stored in the file, e.g. ``"liberty"``.
        root: data root (see :func:`descbal.data.paths.default_root`).
        raw: the extracted folder; default ``root/brown/<name>``.
        out: the cache file; default ``root/brown/<name>.h5``.
        overwrite: rebuild even when the cache is current.
        progress: ``progress(task, done, total)`` for tasks ``"read tiles"`` and ``"write"``.

    The cache stores attributes ``name``, ``num_patches``, ``num_pairs``, ``descbal_version``,
    ``format`` and ``source_sha256`` = :func:`~descbal.data.patchset.fingerprint_files` of the
    tiles, info.txt and the pairs file (names, sizes and modification times, not contents). When
    the file exists with the same ``source_sha256``, version and format, nothing is done. The
    file is written to a temporary sibling and renamed, so an error or Ctrl-C leaves no ``out``.

    Returns:
        A :class:`BrownCacheResult`.

    Raises:
        DataMissingError: the raw folder does not exist.
        BadInputError: see :func:`read_brown_folder`.
    """
    t0 = time.perf_counter()
    root = Path(root)
    raw = Path(raw) if raw is not None else root / "brown" / name
    out = Path(out) if out is not None else root / "brown" / f"{name}.h5"
    if not raw.is_dir():
        raise DataMissingError(f"raw Brown folder for {name!r} not found (download it first)", raw)
    sha = fingerprint_files(brown_input_files(raw), raw)
    if not overwrite and cache_is_current(out, sha):
        attrs = read_attrs(out)
        return _summary(name, out, int(attrs["num_patches"]), int(attrs.get("num_pairs", 0)), t0, True, sha)
    ps = read_brown_folder(raw, progress)
    ps.name = name
    write_patchset(out, ps, cache_attrs(name, sha, num_pairs=ps.num_pairs), progress)
    return _summary(name, out, len(ps), ps.num_pairs, t0, False, sha)


def _summary(name: str, out: Path, n: int, m: int, t0: float, skipped: bool, sha: str) -> BrownCacheResult:
    return BrownCacheResult(name=name, path=str(out), num_patches=n, num_pairs=m, seconds=time.perf_counter() - t0,
                            skipped=skipped, source_sha256=sha)


def resolve_brown_names(names: Sequence[str], root: str | Path) -> list[str]:
    """The Brown sets that ``descbal cache brown NAMES`` caches.

    ``["all"]`` alone means every set already downloaded under ``root/brown/`` (in
    :data:`~descbal.data.sources.BROWN_NAMES` order); otherwise the names are checked and
    expanded as :func:`~descbal.data.sources.brown_files` does (``all`` among other names is
    every set, duplicates dropped, order kept).

    Raises:
        DataMissingError: ``["all"]`` and no set downloaded.
        BadInputError: an unknown name or no name.
    """
    from descbal.data.sources import BROWN_NAMES, brown_files

    root = Path(root)
    if list(names) == ["all"]:
        chosen = [n for n in BROWN_NAMES if (root / "brown" / n).is_dir()]
        if not chosen:
            raise DataMissingError("no downloaded Brown set under brown/; run 'descbal download brown' first", root)
        return chosen
    return [f.key.split("/", 1)[1] for f in brown_files(list(names))]


def cache_brown_sets(names: Sequence[str], root: str | Path, *, overwrite: bool = False,
                     progress: Progress | None = None) -> list[BrownCacheResult]:
    """:func:`cache_brown` for every set of :func:`resolve_brown_names` (``descbal cache brown``)."""
    return [cache_brown(name, root, overwrite=overwrite, progress=progress) for name in resolve_brown_names(names, root)]
