"""descbal.images (listing, grey reading, 16-bit, EXIF orientation) and the one SHA-256 helper."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from descbal.errors import BadInputError, DataMissingError
from descbal.fileio import sha256_file, sha256_hex
from descbal.images import UnreadableImageError, list_images, read_gray, read_image, to_gray

PACKAGE = Path(__file__).resolve().parents[1] / "descbal"


def test_list_images_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    for name in ("z.png", "b/a.JPG", "b/c/d.ppm", "notes.txt", "b/x.h5"):
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["b/a.JPG", "b/c/d.ppm", "z.png"]
    with pytest.raises(DataMissingError, match="image folder not found"):
        list_images(tmp_path / "nope")


def test_16_bit_is_shifted_to_8_bit_in_read_gray_and_refused_by_read_image(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 511, 32767, 32768, 65280, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), values)
    assert read_gray(tmp_path / "deep.png").tolist() == [[0, 0, 1, 1, 127, 128, 255, 255]]  # v >> 8
    with pytest.raises(BadInputError, match="uint16, expected 8-bit"):
        read_image(tmp_path / "deep.png")


def _jpeg_with_orientation(img: np.ndarray, orientation: int) -> bytes:
    """A JPEG with an EXIF APP1 segment holding only the Orientation tag (0x0112)."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    data = buf.tobytes()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def test_exif_orientation_applied_by_read_gray_not_by_read_image(tmp_path: Path) -> None:
    img = np.zeros((20, 40), np.uint8)
    img[:, :10] = 255  # a bright band on the left
    (tmp_path / "rot.jpg").write_bytes(_jpeg_with_orientation(img, 6))  # 6: show turned 90 deg clockwise
    shown = read_gray(tmp_path / "rot.jpg")
    assert shown.shape == (40, 20)
    assert shown[:10].mean() > 200 and shown[12:].mean() < 30  # the left band is now on top
    stored = read_image(tmp_path / "rot.jpg")
    assert to_gray(stored).shape == (20, 40) and stored[:, :8].mean() > 200


def test_read_gray_downscale_and_errors(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "big.png"), np.full((100, 200), 77, np.uint8))
    small = read_gray(tmp_path / "big.png", max_side=50)
    assert small.shape == (25, 50) and (small == 77).all()
    assert read_gray(tmp_path / "big.png", max_side=500).shape == (100, 200)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"junk")
    for name, reason in (("empty.png", "empty file"), ("junk.png", "unreadable (not an image OpenCV decodes)"),
                         ("absent.png", "cannot read image")):
        with pytest.raises(UnreadableImageError) as e:
            read_gray(tmp_path / name)
        assert e.value.reason.startswith(reason) and str(e.value).startswith(str(tmp_path / name))


def test_colour_to_grey_as_stored(tmp_path: Path) -> None:
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 2] = 200  # red
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = read_image(tmp_path / "red.png")
    assert rgb[0, 0].tolist() == [200, 0, 0]
    assert to_gray(rgb)[0, 0] == 60  # 0.299 * 200 = 59.8, rounded


def test_sha256_helper(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # over one read block
    (tmp_path / "f.bin").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "f.bin") == want == sha256_hex(data) == sha256_hex([data[:7], data[7:]])
    assert sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_one_sha256_implementation() -> None:
    """hashlib only in the helper and in the downloader's running md5 + sha256 of a stream."""
    users = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                   if re.search(r"^\s*import hashlib|^\s*from hashlib", p.read_text(), re.M))
    assert users == ["data/download.py", "fileio.py"]
