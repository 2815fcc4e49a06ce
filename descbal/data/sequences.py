"""Image sequences with ground-truth homographies (the HPatches *sequences* release layout).

Folder layout: ``<seq>/1.ppm .. 6.ppm`` (``.png``, ``.jpg`` and ``.jpeg`` are accepted too; when
several exist for one image the preference is ppm, png, jpg, jpeg), image 1 being the
reference, and plain-text ``H_1_k`` files holding a 3x3 matrix (9 numbers separated by spaces,
commas or newlines) that maps pixel coordinates of image 1 to image k:
``[x_k, y_k, w]^T = H_1_k [x_1, y_1, 1]^T``, then divide by w (x right, y down, in pixels).
Sequences may lack images or homographies (partial sequences); only image 1 is required.

Images are read by :func:`descbal.images.read_image`: the pixel arrays as stored (no EXIF
rotation, since ``H_1_k`` maps stored pixels), colour converted to RGB (alpha dropped),
grayscale kept 2-D, 8-bit only.

Cache layout::

    /<sequence>/image_<k>   uint8 (H, W, 3) RGB or (H, W) gray, for each image k present
    /<sequence>/H_1_<k>     float64 (3, 3), for each homography present
    /<sequence> attrs       image_ids, homography_ids
    attrs                   name="sequences", num_sequences, num_images, source_sha256,
                            descbal_version, format
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import NDArray

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
from descbal.images import read_image
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult

#: Accepted image extensions, in order of preference.
IMAGE_EXTS: tuple[str, ...] = (".ppm", ".png", ".jpg", ".jpeg")
MAX_WORKERS = 4
_IMAGE_RE = re.compile(r"^(\d+)(\.[A-Za-z]+)$")
_H_RE = re.compile(r"^H_1_(\d+)$")


@dataclass
class Sequence:
    """One sequence of images of a planar scene.

    Attributes:
        name: the folder name, e.g. ``"v_churchill"``.
        images: uint8 arrays, (H, W, 3) RGB or (H, W) gray; ``images[i]`` is image
            ``image_ids[i]``.
        homographies: k -> (3, 3) float64 ``H_1_k`` mapping image-1 pixels to image k.
        image_ids: the 1-based image numbers of ``images``; default 1..len(images).
    """

    name: str
    images: list[NDArray[np.uint8]]
    homographies: dict[int, NDArray[np.float64]]
    image_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.image_ids:
            self.image_ids = list(range(1, len(self.images) + 1))
        if len(self.image_ids) != len(self.images):
            raise BadInputError(f"sequence {self.name}: {len(self.images)} images but {len(self.image_ids)} ids")

    def image(self, k: int) -> NDArray[np.uint8]:
        """Image number ``k`` (1-based, as in the file names)."""
        try:
            return self.images[self.image_ids.index(k)]
        except ValueError:
            raise KeyError(f"sequence {self.name} has no image {k} (has {self.image_ids})") from None


# --------------------------------------------------------------------------------------------
# Reading folders
# --------------------------------------------------------------------------------------------


def sequence_files(folder: Path) -> tuple[dict[int, Path], dict[int, Path]]:
    """The image files (number -> path, by extension preference) and homography files
    (k -> path of ``H_1_k``) of a sequence folder, each sorted by number."""
    images: dict[int, Path] = {}
    homs: dict[int, Path] = {}
    for p in folder.iterdir():
        if not p.is_file():
            continue
        m = _IMAGE_RE.match(p.name)
        if m and m.group(2).lower() in IMAGE_EXTS:
            k = int(m.group(1))
            old = images.get(k)
            if old is None or IMAGE_EXTS.index(p.suffix.lower()) < IMAGE_EXTS.index(old.suffix.lower()):
                images[k] = p
            continue
        m = _H_RE.match(p.name)
        if m:
            homs[int(m.group(1))] = p
    return dict(sorted(images.items())), dict(sorted(homs.items()))


def read_homography(path: Path) -> NDArray[np.float64]:
    """A 3x3 homography from a text file of 9 numbers. Shape: (3, 3) float64.

    Raises:
        BadInputError: unreadable, not exactly 9 numbers, a non-finite value, or singular.
    """
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"cannot read homography ({e})", path) from None
    tokens = text.replace(",", " ").split()
    if len(tokens) != 9:
        raise BadInputError(f"malformed homography: expected 9 numbers (3x3), found {len(tokens)} fields", path)
    try:
        h = np.array([float(t) for t in tokens], dtype=np.float64).reshape(3, 3)
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise BadInputError(f"malformed homography: {bad!r} is not a number", path) from None
    if not np.all(np.isfinite(h)):
        raise BadInputError("malformed homography: NaN or infinite value", path)
    if abs(np.linalg.det(h)) <= 1e-12 * max(1.0, float(np.abs(h).max()) ** 3):
        raise BadInputError("malformed homography: the matrix is singular", path)
    return h


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def read_sequence(folder: str | Path) -> Sequence:
    """Read a sequence folder: every image present and every ``H_1_k`` present.

    Raises:
        DataMissingError: the folder does not exist.
        BadInputError: no image 1, an unreadable image, or a malformed homography file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataMissingError("sequence folder not found", folder)
    images, homs = sequence_files(folder)
    if 1 not in images:
        raise BadInputError(f"no reference image 1 ({', '.join('1' + e for e in IMAGE_EXTS)})", folder)
    return Sequence(
        name=folder.name,
        images=[read_image(p) for p in images.values()],
        homographies={k: read_homography(p) for k, p in homs.items()},
        image_ids=list(images),
    )


def list_sequence_folders(src_dir: str | Path) -> list[Path]:
    """Sub-folders of ``src_dir`` that hold an image ``1.<ext>``, sorted by name."""
    return sorted((p for p in Path(src_dir).iterdir() if p.is_dir() and 1 in sequence_files(p)[0]),
                  key=lambda p: p.name)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


@dataclass
class SequencesCacheResult(JsonResult):
    """The sequences cache: file, sequences, images, wall time (s), whether it was already up to
    date (``skipped``) and the fingerprint of its source files."""

    name: str
    path: str
    num_sequences: int
    num_images: int
    seconds: float
    skipped: bool
    source_sha256: str


def cache_sequences(src_dir: str | Path, out: str | Path, *, overwrite: bool = False,
                    progress: Progress | None = None) -> SequencesCacheResult:
    """Build (or keep) the HDF5 cache of every sequence folder under ``src_dir``.

    A sequence is a sub-folder holding ``1.<ext>``. ``source_sha256`` fingerprints the image and
    homography files used, by relative path, size and modification time; when ``out`` holds the
    same fingerprint, version and format, nothing is done. ``out`` is written to a temporary
    sibling and renamed, so an error or Ctrl-C leaves no ``out``.
    ``progress("sequences", done, total)``.

    Returns:
        A :class:`SequencesCacheResult`.

    Raises:
        DataMissingError: ``src_dir`` does not exist.
        BadInputError: no sequence folder, or a malformed sequence (see :func:`read_sequence`).
    """
    t0 = time.perf_counter()
    src_dir, out = Path(src_dir), Path(out)
    if not src_dir.is_dir():
        raise DataMissingError("sequences folder not found", src_dir)
    folders = list_sequence_folders(src_dir)
    if not folders:
        raise BadInputError("no sequence folders (sub-folders with 1.ppm, 1.png or 1.jpg)", src_dir)
    files = []
    for f in folders:
        images, homs = sequence_files(f)
        files += [*images.values(), *homs.values()]
    sha = fingerprint_files(files, src_dir)
    skipped = not overwrite and cache_is_current(out, sha)
    if skipped:
        num_images = int(read_attrs(out)["num_images"])
    else:
        num_images = _write_sequences(out, folders, sha, or_no_progress(progress))
    return SequencesCacheResult(name="sequences", path=str(out), num_sequences=len(folders), num_images=num_images,
                                seconds=time.perf_counter() - t0, skipped=skipped, source_sha256=sha)


def _write_sequences(out: Path, folders: list[Path], sha: str, progress: Progress) -> int:
    """Read the sequences (a few threads, in order) and write the cache atomically.
    Returns the number of images written."""
    num_images = 0
    reader = prefetch(read_sequence, folders, min(MAX_WORKERS, os.cpu_count() or 1))
    with contextlib.closing(reader), atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w", locking=False) as h5:
        progress("sequences", 0, len(folders))
        for i, seq in enumerate(reader):
            g = h5.create_group(seq.name)
            for k, img in zip(seq.image_ids, seq.images, strict=True):
                g.create_dataset(f"image_{k}", data=img)
            for k, hm in seq.homographies.items():
                g.create_dataset(f"H_1_{k}", data=hm)
            g.attrs["image_ids"] = np.array(seq.image_ids, dtype=np.int64)
            g.attrs["homography_ids"] = np.array(sorted(seq.homographies), dtype=np.int64)
            num_images += len(seq.images)
            progress("sequences", i + 1, len(folders))
        for k, v in cache_attrs("sequences", sha, num_sequences=len(folders), num_images=num_images).items():
            h5.attrs[k] = v
    return num_images


def load_sequences(path: str | Path, names: list[str] | None = None) -> list[Sequence]:
    """Sequences from a cache written by :func:`cache_sequences`: all (sorted by name) or
    those named, in the order given.

    Raises:
        DataMissingError: the file does not exist.
        BadInputError: not HDF5, a requested sequence that is absent, or a malformed group.
    """
    return list(read_groups(path, names, _read_group, "sequences").values())


def _read_group(g: h5py.Group, path: Path) -> Sequence:
    """One cached sequence."""
    name = g.name.lstrip("/")
    image_ids = sorted(int(k[6:]) for k in g if k.startswith("image_") and k[6:].isdigit())
    hom_ids = sorted(int(k[4:]) for k in g if k.startswith("H_1_") and k[4:].isdigit())
    if 1 not in image_ids:
        raise BadInputError(f"sequence {name} has no image_1", path)
    images = [np.asarray(g[f"image_{k}"][...], dtype=np.uint8) for k in image_ids]
    homs = {k: np.asarray(g[f"H_1_{k}"][...], dtype=np.float64) for k in hom_ids}
    bad = [k for k, h in homs.items() if h.shape != (3, 3)]
    if bad:
        raise BadInputError(f"sequence {name}: H_1_{bad[0]} has shape {homs[bad[0]].shape}, expected (3, 3)", path)
    return Sequence(name, images, homs, image_ids)
