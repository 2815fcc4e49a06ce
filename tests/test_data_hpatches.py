"""HPatches patch release -> HDF5 cache: real ref.png, generated releases, errors, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from descbal import __version__
from descbal.data.hpatches_data import (
    cache_hpatches,
    load_hpatches_cache,
    read_hpatches_sequence,
    read_patch_column,
    write_patch_release,
)
from descbal.data.hpatches_layout import TYPES
from descbal.errors import BadInputError, DataMissingError

LENGTHS = {"i_ajuntament": 5, "v_boat": 7, "v_churchill": 3}


def make_release(root: Path, lengths: dict[str, int] = LENGTHS, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``root/<seq>/<type>.png`` with random patches; returns seq -> (16, N, 65, 65)."""
    rng = np.random.default_rng(seed)
    data = {s: rng.integers(0, 256, (16, n, 65, 65), dtype=np.uint8) for s, n in lengths.items()}
    write_patch_release(root, data)
    return data


def make_tasks(folder: Path) -> None:
    (folder / "splits").mkdir(parents=True)
    (folder / "splits" / "splits.json").write_text(json.dumps({"a": {"name": "a", "test": list(LENGTHS)}}))
    (folder / "retr_queries_split-a.csv").write_text("s,idx\nv_boat,1\n")


def test_real_ref_png(shared_data: Path) -> None:
    path = shared_data / "hpatches-patches" / "ref.png"
    patches = read_patch_column(path)
    img = cv2.imread(str(path), 0)
    assert patches.shape == (1123, 65, 65) and patches.dtype == np.uint8
    np.testing.assert_array_equal(patches[0], img[0:65])
    np.testing.assert_array_equal(patches[-1], img[-65:])
    np.testing.assert_array_equal(patches, np.stack(np.split(img, img.shape[0] / 65)))  # the official loader


def test_read_sequence_in_type_order(tmp_path: Path) -> None:
    data = make_release(tmp_path)
    seq = read_hpatches_sequence(tmp_path / "v_boat")
    assert list(seq) == list(TYPES)
    for i, t in enumerate(TYPES):
        np.testing.assert_array_equal(seq[t], data["v_boat"][i])


def test_cache_round_trip_tasks_and_idempotence(tmp_path: Path) -> None:
    root = tmp_path / "root"
    data = make_release(root / "hpatches" / "hpatches-release")
    (root / "hpatches" / "hpatches-release" / "not_a_sequence").mkdir()
    make_tasks(root / "hpatches" / "tasks")
    out = tmp_path / "elsewhere" / "hp.h5"
    seen = []
    summary = cache_hpatches(root, out=out, progress=lambda *a: seen.append(a))
    assert not summary.skipped and summary.num_sequences == 3 and summary.num_patches == 15
    assert seen[-1] == ("sequences", 3, 3)
    assert summary.tasks == str(out.parent / "tasks") and summary.tasks_copied == 2
    assert json.loads((out.parent / "tasks" / "splits" / "splits.json").read_text())["a"]["test"] == list(LENGTHS)
    loaded = load_hpatches_cache(out)
    assert list(loaded) == sorted(LENGTHS)
    for s, arr in data.items():
        assert loaded[s].shape == (16, LENGTHS[s], 65, 65) and loaded[s].dtype == np.uint8
        np.testing.assert_array_equal(loaded[s], arr)
    with h5py.File(out, "r") as h5:
        assert h5.attrs["num_sequences"] == 3 and h5.attrs["descbal_version"] == __version__
        assert list(h5.attrs["types"]) == list(TYPES)
        assert h5["v_boat/h3"].shape == (7, 65, 65)
    again = cache_hpatches(root, out=out)
    assert again.skipped and again.tasks_copied == 0 and again.num_patches == 15
    assert not cache_hpatches(root, out=out, overwrite=True).skipped
    sub = load_hpatches_cache(out, ["v_churchill", "i_ajuntament"])
    assert list(sub) == ["v_churchill", "i_ajuntament"]
    with pytest.raises(BadInputError, match="not in the cache: v_nope"):
        load_hpatches_cache(out, ["v_nope"])


def test_default_paths_do_not_copy_tasks_onto_themselves(tmp_path: Path) -> None:
    make_release(tmp_path / "hpatches" / "hpatches-release")
    make_tasks(tmp_path / "hpatches" / "tasks")
    summary = cache_hpatches(tmp_path)
    assert summary.path == str(tmp_path / "hpatches" / "hpatches.h5")
    assert summary.tasks == str(tmp_path / "hpatches" / "tasks") and summary.tasks_copied == 0


def test_without_tasks(tmp_path: Path) -> None:
    make_release(tmp_path / "rel")
    summary = cache_hpatches(tmp_path, release=tmp_path / "rel", out=tmp_path / "o" / "c.h5")
    assert summary.tasks is None
    with pytest.raises(DataMissingError, match="task folder"):
        cache_hpatches(tmp_path, release=tmp_path / "rel", tasks=tmp_path / "none", out=tmp_path / "o" / "c.h5")


def test_changed_input_rebuilds(tmp_path: Path) -> None:
    make_release(tmp_path / "rel")
    out = tmp_path / "c.h5"
    cache_hpatches(tmp_path, release=tmp_path / "rel", out=out)
    new = make_release(tmp_path / "rel", {"v_boat": 9}, seed=5)
    s = cache_hpatches(tmp_path, release=tmp_path / "rel", out=out)
    assert not s.skipped and s.num_patches == 5 + 9 + 3
    np.testing.assert_array_equal(load_hpatches_cache(out, ["v_boat"])["v_boat"], new["v_boat"])


def test_mismatched_n_across_types(tmp_path: Path) -> None:
    make_release(tmp_path / "rel")
    cv2.imwrite(str(tmp_path / "rel" / "v_boat" / "h3.png"), np.zeros((65 * 6, 65), np.uint8))
    with pytest.raises(BadInputError, match=r"v_boat/h3.png: 6 patches, but ref.png of v_boat has 7"):
        read_hpatches_sequence(tmp_path / "rel" / "v_boat")
    with pytest.raises(BadInputError, match=r"h3.png"):
        cache_hpatches(tmp_path, release=tmp_path / "rel", out=tmp_path / "c.h5")
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize(("shape", "message"), [
    ((130, 64), "64 pixels wide, expected 65"),
    ((100, 65), "height 100 is not a positive multiple of 65"),
])
def test_bad_image_sizes(tmp_path: Path, shape: tuple[int, int], message: str) -> None:
    make_release(tmp_path)
    cv2.imwrite(str(tmp_path / "v_boat" / "e2.png"), np.zeros(shape, np.uint8))
    with pytest.raises(BadInputError, match=f"e2.png: image .*{message}"):
        read_hpatches_sequence(tmp_path / "v_boat")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    make_release(tmp_path / "rel")
    (tmp_path / "rel" / "v_boat" / "t5.png").unlink()
    with pytest.raises(BadInputError, match="t5.png: missing patch image"):
        read_hpatches_sequence(tmp_path / "rel" / "v_boat")
    with pytest.raises(BadInputError, match="t5.png: missing patch image"):
        cache_hpatches(tmp_path, release=tmp_path / "rel", out=tmp_path / "c.h5")
    (tmp_path / "rel" / "v_boat" / "t5.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(BadInputError, match="t5.png: cannot read image"):
        read_hpatches_sequence(tmp_path / "rel" / "v_boat")
    with pytest.raises(DataMissingError):
        read_hpatches_sequence(tmp_path / "rel" / "v_none")
    with pytest.raises(DataMissingError, match="release folder"):
        cache_hpatches(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no sequence folders"):
        cache_hpatches(tmp_path, release=tmp_path / "empty")


def test_interrupted_cache_leaves_nothing(tmp_path: Path) -> None:
    make_release(tmp_path / "rel")
    out = tmp_path / "out" / "c.h5"

    def progress(task: str, done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache_hpatches(tmp_path, release=tmp_path / "rel", out=out, progress=progress)
    assert list(out.parent.iterdir()) == []


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError):
        load_hpatches_cache(tmp_path / "none.h5")
    with h5py.File(tmp_path / "bad.h5", "w") as h5:
        g = h5.create_group("v_x")
        for t in TYPES[:-1]:
            g[t] = np.zeros((2, 65, 65), np.uint8)
    with pytest.raises(BadInputError, match="v_x lacks dataset.*t5"):
        load_hpatches_cache(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "bad.h5", "a") as h5:
        h5["v_x/t5"] = np.zeros((3, 65, 65), np.uint8)
    with pytest.raises(BadInputError, match="t5 is uint8"):
        load_hpatches_cache(tmp_path / "bad.h5")
