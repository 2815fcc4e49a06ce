"""descbal match: mutual nearest neighbours on a hand-built case, the ratio test, hloc's pair
naming and matches schema, missing names, resume."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from descbal.cli import app
from descbal.errors import BadInputError
from descbal.match import match_features, mutual_nn, names_to_pair, read_pairs

runner = CliRunner()

# Image 0 has 4 descriptors, image 1 has 3 (2-D, unnormalised on purpose: matching normalises).
D0 = np.array([[1.0, 0.0], [0.0, 2.0], [0.6, 0.8], [-1.0, 0.05]])
D1 = np.array([[0.8, 0.6], [3.0, 0.0], [0.0, 1.0]])


def brute_force(d0: np.ndarray, d1: np.ndarray, ratio: float | None) -> list[int]:
    """Reference written out: nearest neighbours both ways by L2 distance of unit vectors."""
    a = d0 / np.linalg.norm(d0, axis=1, keepdims=True)
    b = d1 / np.linalg.norm(d1, axis=1, keepdims=True)
    dist = np.linalg.norm(a[:, None] - b[None], axis=2)
    out = []
    for i in range(len(a)):
        j = int(np.argmin(dist[i]))
        ok = int(np.argmin(dist[:, j])) == i
        if ratio is not None:
            d_sorted = np.sort(dist[i])
            ok = ok and d_sorted[0] <= ratio * d_sorted[1]
        out.append(j if ok else -1)
    return out


def test_mutual_nn_hand_built() -> None:
    m, s = mutual_nn(D0, D1)
    # 0 <-> 1 (same direction), 1 <-> 2, 2 <-> 0 (cosine 0.96); 3 points left: its nearest is 2,
    # whose nearest is 1, so it stays unmatched.
    assert m.tolist() == [1, 2, 0, -1] == brute_force(D0, D1, None)
    assert m.dtype == np.int32 and s.dtype == np.float32
    np.testing.assert_allclose(s, [1.0, 1.0, 0.96, 0.0], atol=1e-6)


def test_ratio_test() -> None:
    # match 2 -> 0: distances sqrt(2 - 2 cos) = 0.283 (nearest) and 0.632 (second): ratio 0.447
    assert mutual_nn(D0, D1, ratio=0.5)[0].tolist() == [1, 2, 0, -1]
    assert mutual_nn(D0, D1, ratio=0.4)[0].tolist() == [1, 2, -1, -1]
    for r in (0.4, 0.5, 0.8, 1.0):
        assert mutual_nn(D0, D1, ratio=r)[0].tolist() == brute_force(D0, D1, r)


def test_random_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 16)), rng.normal(size=(45, 16))
    b[:30] = a[:30] + 0.1 * rng.normal(size=(30, 16))
    for r in (None, 0.8):
        assert mutual_nn(a, b, ratio=r)[0].tolist() == brute_force(a, b, r)


def test_empty_sides() -> None:
    m, s = mutual_nn(np.zeros((3, 8)), np.zeros((0, 8)))
    assert m.tolist() == [-1, -1, -1] and s.tolist() == [0, 0, 0]
    assert mutual_nn(np.zeros((0, 8)), np.ones((2, 8)))[0].shape == (0,)


def test_names_to_pair_is_hlocs() -> None:
    assert names_to_pair("a/b.jpg", "c.png") == "a-b.jpg/c.png"
    assert names_to_pair("x.jpg", "y/z.jpg", separator="_") == "x.jpg_y-z.jpg"


def write_features(path: Path, descs: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "w") as h5:
        for name, d in descs.items():
            g = h5.create_group(name)
            g.create_dataset("keypoints", data=np.zeros((len(d), 2), np.float32))
            g.create_dataset("descriptors", data=np.ascontiguousarray(d.T.astype(np.float32)))


@pytest.fixture()
def feats(tmp_path: Path) -> Path:
    p = tmp_path / "feats.h5"
    write_features(p, {"seq/a.jpg": D0, "b.jpg": D1, "seq/c.jpg": D1[::-1].copy()})
    return p


def test_cli_match_schema(feats: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("# comment\nseq/a.jpg b.jpg\n\nseq/a.jpg seq/c.jpg\nb.jpg seq/a.jpg\n")
    out = tmp_path / "matches.h5"
    r = runner.invoke(app, ["match", str(feats), "--pairs", str(pairs), "--out", str(out), "--device", "cpu",
                            "--json", "-", "-q"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["matched"] == 2 and doc["skipped_existing"] == 1  # (b, a) is (a, b) reversed, like hloc
    with h5py.File(out, "r") as h5:
        g = h5["seq-a.jpg"]["b.jpg"]  # names_to_pair: a group per pair, nested by the '/' separator
        assert g["matches0"].dtype == np.int32 and g["matches0"].shape == (4,)
        assert g["matches0"][...].tolist() == [1, 2, 0, -1]
        assert g["matching_scores0"].shape == (4,) and g["matching_scores0"][3] == 0
        assert h5["seq-a.jpg"]["seq-c.jpg"]["matches0"][...].tolist() == [1, 0, 2, -1]
    # hloc's get_matches reading
    with h5py.File(out, "r") as h5:
        matches = h5[names_to_pair("seq/a.jpg", "b.jpg")]["matches0"].__array__()
    idx = np.where(matches != -1)[0]
    assert np.stack([idx, matches[idx]], -1).tolist() == [[0, 1], [1, 2], [2, 0]]
    # resume: nothing new to do; --ratio with --overwrite recomputes
    assert match_features(feats, pairs, out).matched == 0
    res = match_features(feats, pairs, out, ratio=0.4, overwrite=True)
    assert res.matched == 2
    with h5py.File(out, "r") as h5:
        assert h5["seq-a.jpg"]["b.jpg"]["matches0"][...].tolist() == [1, 2, -1, -1]


def test_missing_names_fail_early_with_the_list(feats: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("seq/a.jpg b.jpg\na.jpg b.jpg\nseq/a.jpg nope/d.jpg\n")
    out = tmp_path / "m.h5"
    r = runner.invoke(app, ["match", str(feats), "--pairs", str(pairs), "--out", str(out)])
    assert r.exit_code == 2
    assert "2 image name(s)" in r.output and "a.jpg" in r.output and "nope/d.jpg" in r.output
    assert not out.exists()
    with pytest.raises(BadInputError):
        match_features(feats, [("seq/a.jpg", "zzz")], out)


def test_bad_pairs_file(tmp_path: Path, feats: Path) -> None:
    (tmp_path / "p.txt").write_text("only-one-name\n")
    with pytest.raises(BadInputError, match="line 1"):
        read_pairs(tmp_path / "p.txt")
    r = runner.invoke(app, ["match", str(feats), "--pairs", str(tmp_path / "none.txt"), "--out", str(tmp_path / "m.h5")])
    assert r.exit_code == 3


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_pairs_file_is_bad_input_and_writes_nothing(text: str, tmp_path: Path, feats: Path) -> None:
    """Issue 21: an empty pairs file silently wrote an empty matches file."""
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(text)
    out = tmp_path / "m.h5"
    r = runner.invoke(app, ["match", str(feats), "--pairs", str(pairs), "--out", str(out)])
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: {pairs}: no image pairs (the file is empty or holds only blank lines and # comments)"
    assert not out.exists()
    with pytest.raises(BadInputError, match="no image pairs"):
        match_features(feats, [], out)
