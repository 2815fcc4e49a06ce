"""The patch-set schema's optional parts: ``near`` label pairs, the ``geometry`` attribute and the
held-out verification pairs that avoid near classes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from descbal.data.patchset import (
    CommonGeometry,
    PatchSet,
    common_geometry,
    concat_patchsets,
    holdout_pairs,
    load_patchset,
    read_datasets,
    write_patchset,
)
from descbal.errors import BadInputError, DataMissingError
from descbal.geometry import PatchGeometry


def _set(**kw: object) -> PatchSet:
    patches = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)
    return PatchSet(patches, np.array([0, 0, 1, 1, 2, 2]), name="t", **kw)  # type: ignore[arg-type]


def test_near_and_geometry_round_trip(tmp_path: Path) -> None:
    g = PatchGeometry(mag=7.5, upright=True)
    write_patchset(tmp_path / "s.h5", _set(near=np.array([[0, 2]]), geometry=g))
    back = load_patchset(tmp_path / "s.h5")
    assert back.geometry == g
    np.testing.assert_array_equal(back.near, [[0, 2]])
    assert back.near is not None and back.near.dtype == np.int64


def test_sets_without_them_load_as_unknown(tmp_path: Path) -> None:
    write_patchset(tmp_path / "s.h5", _set())
    back = load_patchset(tmp_path / "s.h5")
    assert back.geometry is None and back.near is None
    with h5py.File(tmp_path / "s.h5", "r") as h5:
        assert "geometry" not in h5.attrs and "near" not in h5


def test_extra_datasets_written_with_the_set_and_read_back(tmp_path: Path) -> None:
    ids = np.array([7, 7, 9, 9, 4, 4], np.int64)
    write_patchset(tmp_path / "s.h5", _set(), extra={"image_id": ids})
    back = load_patchset(tmp_path / "s.h5")
    np.testing.assert_array_equal(back.labels, [0, 0, 1, 1, 2, 2])  # the schema as without them
    got = read_datasets(tmp_path / "s.h5", ["image_id", "labels"])
    np.testing.assert_array_equal(got["image_id"], ids)
    assert got["image_id"].dtype == np.int64
    with pytest.raises(BadInputError, match="no 'scene' dataset"):
        read_datasets(tmp_path / "s.h5", ["scene"])
    with pytest.raises(DataMissingError):
        read_datasets(tmp_path / "nope.h5", ["labels"])
    with pytest.raises(ValueError, match="labels"):
        write_patchset(tmp_path / "t.h5", _set(), extra={"labels": ids})
    assert not (tmp_path / "t.h5").exists()


def test_bad_geometry_attribute_names_the_file(tmp_path: Path) -> None:
    write_patchset(tmp_path / "s.h5", _set())
    with h5py.File(tmp_path / "s.h5", "a") as h5:
        h5.attrs["geometry"] = '{"mag": 5.0, "zoom": 2}'
    with pytest.raises(BadInputError, match=r"s\.h5.*unknown geometry field\(s\) zoom"):
        load_patchset(tmp_path / "s.h5")


def test_geometry_dict_round_trip() -> None:
    g = PatchGeometry(mag=8.0, size_kind="sigma", angle_unit="rad", angle_sign=-1.0, pixel_origin="corner")
    assert PatchGeometry.from_dict(g.to_dict()) == g
    assert g.to_dict() == {"mag": 8.0, "size_kind": "sigma", "angle_unit": "rad", "angle_sign": -1.0,
                           "pixel_origin": "corner", "upright": False}


def test_holdout_pairs_half_matching_and_never_near() -> None:
    # 4 classes x 2 held-out patches; classes 0 and 1 are near, as are 2 and 3: the only
    # allowed non-matches join {0, 1} with {2, 3}
    labels = np.repeat(np.arange(4), 2)
    held = np.ones(8, bool)
    near = np.array([[0, 1], [3, 2]])
    pairs = holdout_pairs(labels, held, 400, np.random.default_rng(0), near)
    assert pairs[:, 2].sum() == 200
    neg = pairs[pairs[:, 2] == 0]
    la, lb = labels[neg[:, 0]], labels[neg[:, 1]]
    assert len(neg) == 200 and np.all((la < 2) != (lb < 2))
    pos = pairs[pairs[:, 2] == 1]
    assert np.all(labels[pos[:, 0]] == labels[pos[:, 1]]) and np.all(pos[:, 0] != pos[:, 1])


def test_holdout_pairs_without_near_unchanged_by_an_empty_table() -> None:
    labels = np.repeat(np.arange(10), 3)
    held = np.arange(30) % 2 == 0
    a = holdout_pairs(labels, held, 100, np.random.default_rng(5))
    b = holdout_pairs(labels, held, 100, np.random.default_rng(5), np.zeros((0, 2), np.int64))
    np.testing.assert_array_equal(a, b)
    assert np.all(held[a[:, :2]])


# ------------------------------------------------------------------------------ several sets in one


def _small(labels: list[int], size: int = 4, **kw: object) -> PatchSet:
    n = len(labels)
    patches = np.full((n, size, size), len(labels), np.uint8)
    return PatchSet(patches, np.array(labels), **kw)  # type: ignore[arg-type]


def test_concat_offsets_labels_pairs_near_and_holdout() -> None:
    a = _small([5, 8, 5], pairs=np.array([[0, 2, 1], [1, 2, 0]]), near=np.array([[5, 8]]), name="a")
    b = _small([0, 2], holdout=np.array([True, False]), near=np.array([[0, 2]]), name="b")
    c = _small([-1, -1, 4], pairs=np.array([[0, 1, 1]]), name="c")
    got = concat_patchsets([a, b, c])
    # b's labels follow a's highest (8): shift 9; c's follow 11: shift 11 + 1 - (-1) = 13
    assert got.labels.tolist() == [5, 8, 5, 9, 11, 12, 12, 17]
    assert got.pairs is not None and got.pairs.tolist() == [[0, 2, 1], [1, 2, 0], [5, 6, 1]]  # c's ids + 5
    assert got.near is not None and got.near.tolist() == [[5, 8], [9, 11]]
    assert got.holdout is not None and got.holdout.tolist() == [False, False, False, True, False, False, False, False]
    assert got.name == "a+b+c" and got.patches.shape == (8, 4, 4)
    assert got.patches[:, 0, 0].tolist() == [3, 3, 3, 2, 2, 3, 3, 3]  # in order


def test_concat_leaves_out_what_no_set_has_and_keeps_one_set_as_is() -> None:
    got = concat_patchsets([_small([1, 1]), _small([1, 2])])
    assert got.pairs is None and got.near is None and got.holdout is None and got.geometry is None
    assert got.labels.tolist() == [1, 1, 2, 3]
    one = _small([3, 4])
    assert concat_patchsets([one]) is one


def test_concat_refuses_other_patch_sizes_naming_the_file() -> None:
    with pytest.raises(BadInputError, match="one patch size") as e:
        concat_patchsets([_small([0, 1]), _small([0, 1], size=6)], ["a.h5", "b.h5"])
    assert "b.h5" in str(e.value) and "6x6" in str(e.value) and "4x4" in str(e.value)


def test_common_geometry_rules() -> None:
    g5, g7 = PatchGeometry(), PatchGeometry(mag=7.0, upright=True)
    assert common_geometry([None, None], ["x.h5", "y.h5"]) == CommonGeometry(None)
    assert common_geometry([g7, g7], ["x.h5", "y.h5"]) == CommonGeometry(g7)
    known = common_geometry([None, g7], ["brown.h5", "pool.h5"])
    assert known == CommonGeometry(g7, False, ("brown.h5 records no patch geometry; the run's geometry is pool.h5's",))
    with pytest.raises(BadInputError) as e:
        common_geometry([g5, None, g7], ["a.h5", "b.h5", "c.h5"])
    msg = str(e.value)
    assert "a.h5 and c.h5" in msg and "mag 5.0 vs 7.0" in msg and "upright False vs True" in msg
    assert "size_kind" not in msg and "data.mixed_geometry" in msg
    mixed = common_geometry([g5, g7], ["a.h5", "c.h5"], allow_mixed=True)
    assert mixed.geometry == g5 and mixed.mixed and "mixed" in mixed.notes[0]
    assert concat_patchsets([_small([0], geometry=g5), _small([0], geometry=g7)], allow_mixed_geometry=True).geometry == g5
