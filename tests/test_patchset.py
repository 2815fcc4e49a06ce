"""The patch-set schema's optional parts: ``near`` label pairs, the ``geometry`` attribute and the
held-out verification pairs that avoid near classes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from descbal.data.patchset import PatchSet, holdout_pairs, load_patchset, read_datasets, write_patchset
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
