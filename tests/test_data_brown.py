"""Brown raw folders -> PatchSet -> HDF5 cache, on generated folders with known contents."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from descbal import __version__
from descbal.data import brown, patchset
from descbal.data.brown import cache_brown, decode_tile, read_brown_folder, read_pairs_file
from descbal.data.patchset import PatchSet, load_patchset, write_patchset
from descbal.errors import BadInputError, DataMissingError

# Pairs: (id1, point-id string 1, id2, point-id string 2). "007" vs "7" is a non-match because the
# protocol compares the strings.
PAIR_ROWS = [(0, "0", 1, "0"), (2, "0", 5, "1"), (600, "200", 611, "203"), (3, "1", 4, "1"), (6, "007", 7, "7")]


def make_brown(folder: Path, n: int, n_tiles: int | None = None, seed: int = 0, pairs: bool = True) -> np.ndarray:
    """Write a raw Brown folder with ``n`` patches; returns the expected (n, 64, 64) patches.

    Tiles are built patch by patch (row-major: patch r*16+c at rows 64r.., columns 64c..) and
    written in shuffled order, so the reader must sort them by name. The padding of the last
    tile is random too.
    """
    rng = np.random.default_rng(seed)
    n_tiles = n_tiles or -(-n // 256)
    patches = rng.integers(0, 256, size=(n_tiles * 256, 64, 64), dtype=np.uint8)
    patches[:, 0, 0] = np.arange(n_tiles * 256) // 256  # readable tile number
    patches[:, 0, 1] = np.arange(n_tiles * 256) % 256  # readable index in the tile
    folder.mkdir(parents=True, exist_ok=True)
    for t in rng.permutation(n_tiles):
        tile = np.zeros((1024, 1024), np.uint8)
        for k in range(256):
            r, c = divmod(k, 16)
            tile[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64] = patches[t * 256 + k]
        assert cv2.imwrite(str(folder / f"patches{t:04d}.bmp"), tile)
    (folder / "info.txt").write_text("".join(f"{i // 3} 0\n" for i in range(n)))
    (folder / "interest.txt").write_text("".join(f"0 {i % 97}.5 {i % 89}.25 0.1 1.5\n" for i in range(n)))
    (folder / "readme.txt").write_text("not a tile\n")
    if pairs:
        (folder / brown.PAIRS_FILE).write_text(
            "".join(f"{a} {la} 0 {b} {lb} 0 0\n" for a, la, b, lb in PAIR_ROWS))
    return patches[:n]


@pytest.fixture()
def raw(tmp_path: Path) -> tuple[Path, np.ndarray]:
    folder = tmp_path / "brown" / "liberty"
    return folder, make_brown(folder, 2 * 256 + 100)


def test_read_brown_folder_order_labels_pairs(raw: tuple[Path, np.ndarray]) -> None:
    folder, expected = raw
    ps = read_brown_folder(folder)
    assert ps.name == "liberty"
    assert ps.patches.shape == (612, 64, 64) and ps.patches.dtype == np.uint8
    np.testing.assert_array_equal(ps.patches, expected)
    assert ps.patches[300, 0, 0] == 1 and ps.patches[300, 0, 1] == 44
    np.testing.assert_array_equal(ps.labels, np.arange(612) // 3)
    assert ps.labels.dtype == np.int64
    want = [[a, b, int(la == lb)] for a, la, b, lb in PAIR_ROWS]
    np.testing.assert_array_equal(ps.pairs, want)
    assert ps.pairs[-1, 2] == 0  # "007" != "7"


def test_single_thread_equals_pool(raw: tuple[Path, np.ndarray]) -> None:
    folder, expected = raw
    np.testing.assert_array_equal(read_brown_folder(folder, workers=1).patches, expected)


def test_trimming_extra_tiles_and_exact_multiple(tmp_path: Path) -> None:
    exp = make_brown(tmp_path / "a", 256, n_tiles=3, pairs=False)  # two unused tiles
    ps = read_brown_folder(tmp_path / "a")
    np.testing.assert_array_equal(ps.patches, exp)
    assert ps.pairs is None
    exp = make_brown(tmp_path / "b", 1, pairs=False)
    np.testing.assert_array_equal(read_brown_folder(tmp_path / "b").patches, exp)


def test_progress_reports_tiles(raw: tuple[Path, np.ndarray]) -> None:
    seen = []
    read_brown_folder(raw[0], progress=lambda task, done, total: seen.append((task, done, total)))
    assert seen[0] == ("read tiles", 0, 3) and seen[-1] == ("read tiles", 3, 3)


# --------------------------------------------------------------------------------------------
# BMP decoding
# --------------------------------------------------------------------------------------------


def test_fast_bmp_path_matches_opencv(raw: tuple[Path, np.ndarray]) -> None:
    path = raw[0] / "patches0001.bmp"
    assert brown._bmp_gray8(path.read_bytes()) is not None  # the fast path is taken
    np.testing.assert_array_equal(decode_tile(path), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))


def test_coloured_palette_falls_back_to_opencv(raw: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    data = bytearray((raw[0] / "patches0000.bmp").read_bytes())
    hdr = struct.unpack_from("<I", data, 14)[0]
    pal = 14 + hdr
    for i in range(256):  # a colour palette: blue = i, green = 255 - i, red = i // 2
        data[pal + 4 * i : pal + 4 * i + 3] = bytes([i, 255 - i, i // 2])
    path = tmp_path / "colour.bmp"
    path.write_bytes(bytes(data))
    assert brown._bmp_gray8(bytes(data)) is None
    np.testing.assert_array_equal(decode_tile(path), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))


def test_top_down_bmp(tmp_path: Path) -> None:
    img = np.random.default_rng(3).integers(0, 256, (1024, 1024), dtype=np.uint8)
    ok, buf = cv2.imencode(".bmp", img)
    data = bytearray(buf.tobytes())
    offset = struct.unpack_from("<I", data, 10)[0]
    struct.pack_into("<i", data, 22, -1024)  # negative height: rows stored top-down
    data[offset:] = img.tobytes()
    path = tmp_path / "td.bmp"
    path.write_bytes(bytes(data))
    np.testing.assert_array_equal(decode_tile(path), img)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError):
        read_brown_folder(tmp_path / "nope")
    with pytest.raises(DataMissingError, match="download"):
        cache_brown("liberty", tmp_path)


def test_missing_info(raw: tuple[Path, np.ndarray]) -> None:
    (raw[0] / "info.txt").unlink()
    with pytest.raises(BadInputError, match="info.txt"):
        read_brown_folder(raw[0])


def test_bad_info_line(raw: tuple[Path, np.ndarray]) -> None:
    lines = (raw[0] / "info.txt").read_text().splitlines()
    lines[4] = "x 0"
    (raw[0] / "info.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=r"info.txt: line 5"):
        read_brown_folder(raw[0])


def test_no_tiles(tmp_path: Path) -> None:
    (tmp_path / "info.txt").write_text("0 0\n")
    with pytest.raises(BadInputError, match="no .bmp tiles"):
        read_brown_folder(tmp_path)


def test_wrong_tile_size(raw: tuple[Path, np.ndarray]) -> None:
    cv2.imwrite(str(raw[0] / "patches0001.bmp"), np.zeros((512, 512), np.uint8))
    with pytest.raises(BadInputError, match=r"patches0001.bmp: tile is 512x512 pixels, expected 1024x1024"):
        read_brown_folder(raw[0])


def test_unreadable_tile(raw: tuple[Path, np.ndarray]) -> None:
    (raw[0] / "patches0002.bmp").write_bytes(b"BM not really")
    with pytest.raises(BadInputError, match="patches0002.bmp: cannot decode"):
        read_brown_folder(raw[0])


def test_too_few_patches(raw: tuple[Path, np.ndarray]) -> None:
    (raw[0] / "info.txt").write_text("".join("1 0\n" for _ in range(3 * 256 + 1)))
    with pytest.raises(BadInputError, match=r"3 tiles hold at most 768 patches, but info.txt has 769 rows"):
        read_brown_folder(raw[0])


@pytest.mark.parametrize(("line", "message"), [
    ("1 2 0 3 4 0", "line 2 has 6 fields, expected 7"),
    ("1 2 0 x 4 0 0", "line 2: patch id is not an integer"),
    ("1 2 0 612 4 0 0", "pair 1 refers to patch \\[1, 612\\], outside 0..611"),
])
def test_malformed_pairs(raw: tuple[Path, np.ndarray], line: str, message: str) -> None:
    path = raw[0] / brown.PAIRS_FILE
    path.write_text(f"0 0 0 1 0 0 0\n{line}\n")
    with pytest.raises(BadInputError, match=f"{brown.PAIRS_FILE}: {message}"):
        read_brown_folder(raw[0])


def test_read_pairs_string_comparison(tmp_path: Path) -> None:
    p = tmp_path / "m.txt"
    p.write_text("55990 19870 0 55991 19870 0 0\n1 12 0 2 012 0 0\n\n")
    np.testing.assert_array_equal(read_pairs_file(p), [[55990, 55991, 1], [1, 2, 0]])


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".h5", ".tmp")))


def test_cache_round_trip_and_attrs(raw: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder, expected = raw
    summary = cache_brown("liberty", tmp_path)
    out = tmp_path / "brown" / "liberty.h5"
    assert summary.path == str(out) and not summary.skipped
    assert summary.num_patches == 612 and summary.num_pairs == len(PAIR_ROWS)
    ps = load_patchset(out)
    np.testing.assert_array_equal(ps.patches, expected)
    np.testing.assert_array_equal(ps.labels, np.arange(612) // 3)
    np.testing.assert_array_equal(ps.pairs, read_brown_folder(folder).pairs)
    assert ps.name == "liberty"
    with h5py.File(out, "r") as h5:
        assert h5["patches"].chunks == (612, 64, 64) and h5["patches"].compression is None
        assert h5["labels"].dtype == np.int64 and h5["pairs"].dtype == np.int64
        assert h5.attrs["num_patches"] == 612 and h5.attrs["descbal_version"] == __version__
        assert h5.attrs["source_sha256"] == summary.source_sha256
    assert _leftovers(out.parent) == ["liberty.h5"]


def test_cache_is_idempotent(raw: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    out = tmp_path / "c" / "x.h5"
    first = cache_brown("liberty", tmp_path, raw=raw[0], out=out)
    mtime = out.stat().st_mtime_ns
    second = cache_brown("liberty", tmp_path, raw=raw[0], out=out)
    assert second.skipped and second.num_patches == 612 and second.num_pairs == first.num_pairs
    assert out.stat().st_mtime_ns == mtime
    third = cache_brown("liberty", tmp_path, raw=raw[0], out=out, overwrite=True)
    assert not third.skipped and out.stat().st_mtime_ns != mtime
    # A changed input file (size/mtime) makes the cache stale.
    (raw[0] / "info.txt").write_text("".join(f"{i} 0\n" for i in range(700)))
    fourth = cache_brown("liberty", tmp_path, raw=raw[0], out=out)
    assert not fourth.skipped and fourth.num_patches == 700
    np.testing.assert_array_equal(load_patchset(out).labels, np.arange(700))
    assert fourth.source_sha256 != first.source_sha256


def test_cache_rebuilds_other_version(raw: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    cache_brown("liberty", tmp_path, raw=raw[0], out=out)
    with h5py.File(out, "a") as h5:
        h5.attrs["descbal_version"] = "0.0.0"
    assert not cache_brown("liberty", tmp_path, raw=raw[0], out=out).skipped
    out.write_bytes(b"garbage")  # an unreadable cache is rebuilt, not an error
    assert not cache_brown("liberty", tmp_path, raw=raw[0], out=out).skipped


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_write_leaves_nothing(raw: tuple[Path, np.ndarray], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, exc: type[BaseException]) -> None:
    monkeypatch.setattr(patchset, "WRITE_SLICE", 100)
    out_dir = tmp_path / "out"

    def progress(task: str, done: int, total: int) -> None:
        if task == "write" and done >= 300:
            assert any(p.name.endswith(".tmp") for p in out_dir.iterdir())  # really midway
            raise exc

    with pytest.raises(exc):
        cache_brown("liberty", tmp_path, raw=raw[0], out=out_dir / "liberty.h5", progress=progress)
    assert _leftovers(out_dir) == []


def test_interrupted_rebuild_keeps_old_cache(raw: tuple[Path, np.ndarray], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out" / "liberty.h5"
    cache_brown("liberty", tmp_path, raw=raw[0], out=out)
    calls = []
    original = brown.decode_tile

    def failing_decode(path: Path) -> np.ndarray:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(path)

    monkeypatch.setattr(brown, "decode_tile", failing_decode)
    with pytest.raises(KeyboardInterrupt):
        cache_brown("liberty", tmp_path, raw=raw[0], out=out, overwrite=True)
    assert _leftovers(out.parent) == ["liberty.h5"]
    np.testing.assert_array_equal(load_patchset(out).patches, raw[1])


# --------------------------------------------------------------------------------------------
# PatchSet and its files
# --------------------------------------------------------------------------------------------


def test_patchset_validation() -> None:
    p = np.zeros((4, 8, 8), np.uint8)
    with pytest.raises(BadInputError, match="uint8"):
        PatchSet(p.astype(np.float32), np.zeros(4, np.int64))
    with pytest.raises(BadInputError, match=r"labels must have shape \(4,\)"):
        PatchSet(p, np.zeros(3, np.int64))
    with pytest.raises(BadInputError, match="outside 0..3"):
        PatchSet(p, np.zeros(4, np.int64), np.array([[0, 4, 1]]))
    with pytest.raises(BadInputError, match="0 or 1"):
        PatchSet(p, np.zeros(4, np.int64), np.array([[0, 1, 2]]))
    with pytest.raises(BadInputError, match=r"\(M, 3\)"):
        PatchSet(p, np.zeros(4, np.int64), np.array([[0, 1]]))
    ps = PatchSet(p, np.arange(4, dtype=np.int32))
    assert ps.labels.dtype == np.int64 and len(ps) == 4 and ps.num_pairs == 0


def test_write_load_round_trip_without_pairs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ps = PatchSet(rng.integers(0, 256, (2500, 32, 32), dtype=np.uint8), rng.integers(0, 50, 2500), None, "x")
    write_patchset(tmp_path / "p.h5", ps, {"note": "hello"})
    back = load_patchset(tmp_path / "p.h5")
    np.testing.assert_array_equal(back.patches, ps.patches)
    np.testing.assert_array_equal(back.labels, ps.labels)
    assert back.pairs is None and back.name == "x"
    with h5py.File(tmp_path / "p.h5", "r") as h5:
        assert h5.attrs["note"] == "hello" and h5["patches"].chunks == (1024, 32, 32)
    empty = PatchSet(np.zeros((0, 64, 64), np.uint8), np.zeros(0, np.int64), np.zeros((0, 3), np.int64), "e")
    write_patchset(tmp_path / "e.h5", empty)
    back = load_patchset(tmp_path / "e.h5")
    assert back.patches.shape == (0, 64, 64) and back.pairs.shape == (0, 3)


def test_load_patchset_errors(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError):
        load_patchset(tmp_path / "none.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(BadInputError, match="not a readable HDF5"):
        load_patchset(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "nolabels.h5", "w") as h5:
        h5["patches"] = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(BadInputError, match="no 'labels' dataset"):
        load_patchset(tmp_path / "nolabels.h5")
    with h5py.File(tmp_path / "shape.h5", "w") as h5:
        h5["patches"] = np.zeros((2, 16), np.uint8)
        h5["labels"] = np.zeros(2, np.int64)
    with pytest.raises(BadInputError, match=r"'patches' must be uint8 \(N, H, W\)"):
        load_patchset(tmp_path / "shape.h5")
    with h5py.File(tmp_path / "labels.h5", "w") as h5:
        h5["patches"] = np.zeros((2, 4, 4), np.uint8)
        h5["labels"] = np.zeros(3, np.int64)
    with pytest.raises(BadInputError, match=r"'labels' must have shape \(2,\)"):
        load_patchset(tmp_path / "labels.h5")
    with h5py.File(tmp_path / "pairs.h5", "w") as h5:
        h5["patches"] = np.zeros((2, 4, 4), np.uint8)
        h5["labels"] = np.zeros(2, np.int64)
        h5["pairs"] = np.array([[0, 5, 1]])
    with pytest.raises(BadInputError, match="pairs.h5: pair 0 refers to patch"):
        load_patchset(tmp_path / "pairs.h5")
