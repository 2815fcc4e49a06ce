"""Image sequences with homographies: real HPatches sequences, generated folders, the cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from descbal.data.sequences import (
    Sequence,
    cache_sequences,
    list_sequence_folders,
    load_sequences,
    read_homography,
    read_sequence,
)
from descbal.errors import BadInputError, DataMissingError

REAL = {"v_churchill": (768, 1024), "v_dogman": (788, 522), "v_wormhole": (986, 653)}  # width x height
H = np.array([[1.1, 0.02, -5.5], [0.01, 0.95, 3.25], [1e-4, -2e-5, 1.0]])


def write_h(path: Path, h: np.ndarray = H) -> None:
    path.write_text("\n".join(" ".join(f"{v:.10g}" for v in row) for row in h) + "\n")


def make_sequence(folder: Path, seed: int = 0) -> list[np.ndarray]:
    """Colour images 1 (ppm and a decoy png), 2 (png), 3 (gray png), 4 (jpg); H_1_2 and H_1_4.
    Returns the expected arrays (RGB / gray) for images 1..3."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rgb1 = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    rgb2 = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    gray3 = rng.integers(0, 256, (25, 35), dtype=np.uint8)
    cv2.imwrite(str(folder / "1.ppm"), rgb1[:, :, ::-1])
    cv2.imwrite(str(folder / "1.png"), np.zeros((5, 5, 3), np.uint8))  # ppm is preferred
    cv2.imwrite(str(folder / "2.png"), rgb2[:, :, ::-1])
    cv2.imwrite(str(folder / "3.png"), gray3)
    cv2.imwrite(str(folder / "4.jpg"), np.full((16, 16, 3), 128, np.uint8))
    write_h(folder / "H_1_2")
    write_h(folder / "H_1_4", np.eye(3) * 2)
    (folder / "notes.txt").write_text("ignored\n")
    return [rgb1, rgb2, gray3]


def test_real_sequences(shared_data: Path) -> None:
    root = shared_data / "hpatches-sequences"
    for name, (w, h) in REAL.items():
        seq = read_sequence(root / name)
        assert seq.name == name and seq.image_ids == [1, 2, 3, 4, 5, 6]
        assert sorted(seq.homographies) == [2, 3, 4, 5, 6]
        for k in range(1, 7):
            file = cv2.imread(str(root / name / f"{k}.png"))
            assert seq.image(k).shape == file.shape and seq.image(k).dtype == np.uint8
            np.testing.assert_array_equal(seq.image(k), file[:, :, ::-1])  # RGB
        assert seq.images[0].shape == (h, w, 3)
        for k, hm in seq.homographies.items():
            assert hm.dtype == np.float64
            np.testing.assert_array_equal(hm, np.loadtxt(root / name / f"H_1_{k}"))
    churchill = read_sequence(root / "v_churchill")
    np.testing.assert_allclose(churchill.homographies[2][0], [2.3594, 0.0026252, -116.05])
    folders = list_sequence_folders(str(root))  # a str is accepted like a Path
    assert [f.name for f in folders] == sorted(REAL) and folders == list_sequence_folders(root)


def test_real_sequences_cache(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "hpatches-sequences"
    out = tmp_path / "seq.h5"
    summary = cache_sequences(root, out)
    assert summary.num_sequences == 3 and summary.num_images == 18 and not summary.skipped
    loaded = {s.name: s for s in load_sequences(out)}
    assert list(loaded) == sorted(REAL)
    for name in REAL:
        direct = read_sequence(root / name)
        for a, b in zip(direct.images, loaded[name].images, strict=True):
            np.testing.assert_array_equal(a, b)
        assert sorted(loaded[name].homographies) == [2, 3, 4, 5, 6]
        for k in direct.homographies:
            np.testing.assert_array_equal(direct.homographies[k], loaded[name].homographies[k])
    assert cache_sequences(root, out).skipped


def test_generated_sequence(tmp_path: Path) -> None:
    expected = make_sequence(tmp_path / "v_gen")
    seq = read_sequence(tmp_path / "v_gen")
    assert seq.image_ids == [1, 2, 3, 4]
    for k in (1, 2, 3):
        np.testing.assert_array_equal(seq.image(k), expected[k - 1])
    assert seq.image(3).ndim == 2
    assert seq.image(4).shape == (16, 16, 3)
    assert sorted(seq.homographies) == [2, 4]
    np.testing.assert_array_equal(seq.homographies[2], H)
    with pytest.raises(KeyError, match="no image 5"):
        seq.image(5)


def test_partial_sequence_and_cache(tmp_path: Path) -> None:
    make_sequence(tmp_path / "src" / "v_a")
    part = tmp_path / "src" / "v_b"
    part.mkdir()
    cv2.imwrite(str(part / "1.png"), np.full((8, 9), 7, np.uint8))
    cv2.imwrite(str(part / "4.png"), np.full((8, 9, 3), 9, np.uint8))
    (tmp_path / "src" / "no_images").mkdir()
    out = tmp_path / "out" / "s.h5"
    s = cache_sequences(tmp_path / "src", out)
    assert s.num_sequences == 2 and s.num_images == 6
    a, b = load_sequences(out)
    assert (a.name, b.name) == ("v_a", "v_b")
    assert b.image_ids == [1, 4] and b.homographies == {}
    np.testing.assert_array_equal(b.image(1), np.full((8, 9), 7, np.uint8))
    ref = read_sequence(tmp_path / "src" / "v_a")
    for x, y in zip(ref.images, a.images, strict=True):
        np.testing.assert_array_equal(x, y)
    with h5py.File(out, "r") as h5:
        assert sorted(h5["v_a"]) == ["H_1_2", "H_1_4", "image_1", "image_2", "image_3", "image_4"]
        assert h5["v_a/H_1_2"].dtype == np.float64 and h5["v_a/image_1"].dtype == np.uint8
    assert [x.name for x in load_sequences(out, ["v_b"])] == ["v_b"]
    with pytest.raises(BadInputError, match="not in the cache"):
        load_sequences(out, ["v_z"])


def test_cache_idempotent_and_overwrite(tmp_path: Path) -> None:
    make_sequence(tmp_path / "src" / "v_a")
    out = tmp_path / "s.h5"
    first = cache_sequences(tmp_path / "src", out)
    assert cache_sequences(tmp_path / "src", out).skipped
    assert not cache_sequences(tmp_path / "src", out, overwrite=True).skipped
    write_h(tmp_path / "src" / "v_a" / "H_1_3", np.eye(3))
    again = cache_sequences(tmp_path / "src", out)
    assert not again.skipped and again.source_sha256 != first.source_sha256
    assert sorted(load_sequences(out)[0].homographies) == [2, 3, 4]


def test_interrupted_cache_leaves_nothing(tmp_path: Path) -> None:
    for k in range(3):
        make_sequence(tmp_path / "src" / f"v_{k}", seed=k)
    out = tmp_path / "out" / "s.h5"

    def progress(task: str, done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache_sequences(tmp_path / "src", out, progress=progress)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(("text", "message"), [
    ("1 0 0\n0 1 0\n0 0", "expected 9 numbers \\(3x3\\), found 8"),
    ("1 0 0\n0 1 0\n0 0 1 1", "found 10"),
    ("1 0 0\n0 abc 0\n0 0 1", "'abc' is not a number"),
    ("1 0 0\n0 nan 0\n0 0 1", "NaN or infinite"),
    ("1 2 3\n2 4 6\n0 0 1", "singular"),
    ("", "found 0"),
])
def test_malformed_homography(tmp_path: Path, text: str, message: str) -> None:
    make_sequence(tmp_path / "v_a")
    (tmp_path / "v_a" / "H_1_3").write_text(text)
    with pytest.raises(BadInputError, match=f"H_1_3: malformed homography: .*{message}"):
        read_sequence(tmp_path / "v_a")


def test_homography_with_commas(tmp_path: Path) -> None:
    p = tmp_path / "H"
    p.write_text("1,0,2\n0,1,3\n0,0,1\n")
    np.testing.assert_array_equal(read_homography(p), [[1, 0, 2], [0, 1, 3], [0, 0, 1]])


def test_bad_images(tmp_path: Path) -> None:
    make_sequence(tmp_path / "v_a")
    (tmp_path / "v_a" / "2.png").write_bytes(b"not a png")
    with pytest.raises(BadInputError, match="2.png: cannot decode image"):
        read_sequence(tmp_path / "v_a")
    (tmp_path / "v_a" / "2.png").write_bytes(b"")
    with pytest.raises(BadInputError, match="2.png: cannot decode image"):
        read_sequence(tmp_path / "v_a")
    cv2.imwrite(str(tmp_path / "v_a" / "2.png"), np.zeros((4, 4), np.uint16))
    with pytest.raises(BadInputError, match="2.png: image is uint16, expected 8-bit"):
        read_sequence(tmp_path / "v_a")


def test_missing(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError):
        read_sequence(tmp_path / "nope")
    with pytest.raises(DataMissingError):
        cache_sequences(tmp_path / "nope", tmp_path / "x.h5")
    with pytest.raises(DataMissingError):
        load_sequences(tmp_path / "x.h5")
    (tmp_path / "v_a").mkdir()
    cv2.imwrite(str(tmp_path / "v_a" / "2.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(BadInputError, match="no reference image 1"):
        read_sequence(tmp_path / "v_a")
    with pytest.raises(BadInputError, match="no sequence folders"):
        cache_sequences(tmp_path, tmp_path / "x.h5")


def test_sequence_ids_default_and_check() -> None:
    s = Sequence("x", [np.zeros((2, 2), np.uint8)] * 2, {})
    assert s.image_ids == [1, 2]
    with pytest.raises(BadInputError):
        Sequence("x", [np.zeros((2, 2), np.uint8)], {}, [1, 2])
