"""Brown FPR95 evaluation: pairs parsing, HardNet distances, both FPR95 definitions, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from descbal.cli import app
from descbal.eval.brown import evaluate_brown, pair_distances, read_pairs

runner = CliRunner()

# 20 matching pairs at distances 0.01..0.20 and 20 non-matching pairs, four of them close.
POS = [0.01 * k for k in range(1, 21)]
NEG = [0.055, 0.105, 0.185, 0.195] + [0.5 + 0.01 * k for k in range(16)]


def write_case(tmp: Path) -> tuple[Path, Path]:
    """Patches 2k and 2k+1 are 2-d descriptors (0, 0) and (d_k, 0); pair k joins them."""
    dists = POS + NEG
    desc = np.zeros((2 * len(dists), 2), dtype=np.float32)
    desc[1::2, 0] = dists
    lines = []
    for k, _ in enumerate(dists):
        matching = k < len(POS)
        p1, p2 = 1000 + k, (1000 + k) if matching else (5000 + k)
        lines.append(f"{2 * k} {p1} 0 {2 * k + 1} {p2} 0 0")
    order = np.random.default_rng(0).permutation(len(lines))
    pairs = tmp / "m50_40_40_0.txt"
    pairs.write_text("\n".join(lines[i] for i in order) + "\n")
    npy = tmp / "desc.npy"
    np.save(npy, desc)
    return pairs, npy


def test_read_pairs_labels_from_point_ids(tmp_path: Path) -> None:
    pairs, _ = write_case(tmp_path)
    id1, id2, lab = read_pairs(pairs)
    assert len(id1) == 40 and lab.sum() == 20
    assert np.all(id2 == id1 + 1)
    assert np.all(lab == (id1 < 40).astype(int))


def test_hand_computed_fpr95(tmp_path: Path) -> None:
    pairs, npy = write_case(tmp_path)
    id1, id2, lab = read_pairs(pairs)
    desc = np.load(npy)
    # HardNet: ceil(0.95 * 20) = 19th positive at 0.19; negatives strictly before it:
    # 0.055, 0.105, 0.185 -> 3 / 20.
    assert evaluate_brown(desc, id1, id2, lab).fpr95 == pytest.approx(3 / 20, abs=0)
    # HyNet: thr = sorted(d_pos)[19] = 0.20; negatives <= 0.20: 4 / 20.
    assert evaluate_brown(desc, id1, id2, lab, "hynet").fpr95 == pytest.approx(4 / 20, abs=0)


def test_pair_distances_float32() -> None:
    desc = np.array([[0, 0, 0], [1, 2, 2], [3, 4, 0]], dtype=np.float32)
    d = pair_distances(desc, np.array([0, 0, 1]), np.array([1, 2, 2]))
    assert d.dtype == np.float32
    np.testing.assert_array_equal(d, np.float32([3.0, 5.0, np.sqrt(4 + 4 + 4)]))


def test_cli_json_and_h5_inputs(tmp_path: Path) -> None:
    pairs, npy = write_case(tmp_path)
    h5 = tmp_path / "desc.h5"
    with h5py.File(h5, "w") as f:
        f["descriptors"] = np.load(npy)
    id1, id2, lab = read_pairs(pairs)
    cache = tmp_path / "set.h5"
    with h5py.File(cache, "w") as f:
        f["pairs"] = np.stack([id1, id2, lab], axis=1)
    for p, d in ((pairs, npy), (cache, h5)):
        res = runner.invoke(app, ["eval", "brown", "-p", str(p), "-d", str(d), "-q", "--json", "-"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert doc == {"pairs": 40, "matches": 20, "non_matches": 20, "definition": "hardnet", "fpr95": 0.15}


def test_cli_errors(tmp_path: Path) -> None:
    pairs, npy = write_case(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n")
    res = runner.invoke(app, ["eval", "brown", "-p", str(bad), "-d", str(npy)])
    assert res.exit_code == 2 and "bad.txt" in res.output and "7" in res.output
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((10, 2), np.float32))
    res = runner.invoke(app, ["eval", "brown", "-p", str(pairs), "-d", str(small)])
    assert res.exit_code == 2 and "10 descriptors" in res.output
    res = runner.invoke(app, ["eval", "brown", "-p", str(tmp_path / "none.txt"), "-d", str(npy)])
    assert res.exit_code == 3
    nan = tmp_path / "nan.npy"
    arr = np.load(npy)
    arr[3, 1] = np.nan
    np.save(nan, arr)
    res = runner.invoke(app, ["eval", "brown", "-p", str(pairs), "-d", str(nan)])
    assert res.exit_code == 2 and "NaN" in res.output
    assert all("Traceback" not in r for r in [res.output])
