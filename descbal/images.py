"""Reading image files: the one place photos and sequence images are listed, decoded and made grey.

Two readers, because two kinds of input need different pixels:

* :func:`read_gray` for photos (``descbal extract``, ``descbal cache images``, the quickstart,
  benchmarks): OpenCV ``IMREAD_GRAYSCALE``, as hloc reads images. **EXIF orientation is
  applied** (OpenCV does unless ``IMREAD_IGNORE_ORIENTATION``), so keypoints refer to the image
  as a viewer shows it. Colour is converted by the decoder (for JPEG, libjpeg's own luma, which
  may differ by a grey level from :func:`to_gray` of the decoded colour image).
* :func:`read_image` for sequences with homographies (``descbal eval sequences``,
  ``make-benchmark``, ``cache sequences``): the pixel array **as stored** (``IMREAD_UNCHANGED``:
  **EXIF orientation is not applied**), because ``H_1_k`` maps stored pixel coordinates; colour
  is returned as RGB (alpha dropped), grey stays 2-D; :func:`to_gray` makes it grey.

**16-bit images**: :func:`read_gray` scales them to 8 bits as OpenCV's ``IMREAD_GRAYSCALE``
does, ``v >> 8`` (``floor(v / 256)``: 65535 -> 255, 32768 -> 128, 255 -> 0). :func:`read_image`
refuses them with a one-line error (sequence caches and benchmarks store 8-bit pixels; convert
the files first), as it refuses every depth other than 8 bits.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from descbal.errors import BadInputError, DataMissingError

#: Suffixes (lower case) :func:`list_images` picks up.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


class UnreadableImageError(BadInputError):
    """An image file that cannot be read or decoded; ``reason`` is the message without the path."""

    def __init__(self, reason: str, path: str | Path) -> None:
        self.reason = reason
        super().__init__(reason, path)


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, by :data:`IMAGE_SUFFIXES`), sorted by relative
    POSIX path.

    Raises:
        DataMissingError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataMissingError("image folder not found", folder)
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: p.relative_to(folder).as_posix())


def _read_bytes(path: Path) -> NDArray[np.uint8]:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UnreadableImageError(f"cannot read image: {e.strerror}", path) from None


def read_gray(path: str | Path, max_side: int | None = None) -> NDArray[np.uint8]:
    """A photo as grey uint8, EXIF orientation applied (see the module docstring).

    Args:
        max_side: when the longer side exceeds it, the image is downscaled (``INTER_AREA``) so
            that the longer side is ``max_side``, each side rounded to the nearest pixel.

    Shape: -> (H, W) uint8.

    Raises:
        UnreadableImageError: missing, empty or undecodable file (``reason`` says which).
    """
    path = Path(path)
    data = _read_bytes(path)
    if data.size == 0:
        raise UnreadableImageError("empty file", path)
    img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)  # OpenCV scales 16-bit by >> 8 itself
    if img is None:
        raise UnreadableImageError("unreadable (not an image OpenCV decodes)", path)
    if img.size == 0:
        raise UnreadableImageError("empty image", path)
    return fit_max_side(img, max_side)


def fit_max_side(img: NDArray[np.uint8], max_side: int | None) -> NDArray[np.uint8]:
    """``img`` downscaled (``INTER_AREA``) so that its longer side is ``max_side`` when it is
    longer, each side rounded to the nearest pixel; else ``img`` itself.

    Shape: (H, W) -> (h, w), max(h, w) <= max_side.
    """
    if max_side is not None and max(img.shape[:2]) > max_side:
        f = max_side / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
    return img


def read_image(path: str | Path) -> NDArray[np.uint8]:
    """An image as stored: (H, W, 3) RGB for colour (alpha dropped), (H, W) for grey; 8-bit only;
    EXIF orientation not applied (see the module docstring).

    Raises:
        UnreadableImageError: unreadable file, undecodable data, not 8-bit, or an unsupported layout.
    """
    path = Path(path)
    data = _read_bytes(path)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None  # UNCHANGED: no EXIF rotation
    if img is None:
        reason = "empty file" if data.size == 0 else "not a format OpenCV reads"
        raise UnreadableImageError(f"cannot decode image ({reason})", path)
    if img.dtype != np.uint8:
        raise UnreadableImageError(f"image is {img.dtype}, expected 8-bit", path)
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 1:
        return img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise UnreadableImageError(f"unsupported image layout {img.shape}", path)


def to_gray(img: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Grey from :func:`read_image`'s output: RGB by OpenCV's ``COLOR_RGB2GRAY`` (0.299 R +
    0.587 G + 0.114 B, rounded), grey as it is. Shape: (H, W, 3) or (H, W) -> (H, W)."""
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
