"""HPatches-format benchmark builder, synthetic sequences and the quickstart pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from descbal.cli import app
from descbal.data.hpatches_data import read_hpatches_sequence
from descbal.data.make_benchmark import BenchmarkConfig, circle_iou, jitter_matrix, make_benchmark
from descbal.data.sequences import read_sequence
from descbal.data.synthetic import synthetic_sequence, write_sequence
from descbal.eval.hpatches_io import get_split

runner = CliRunner()


def _median_overlap(level: str, n: int = 300) -> float:
    """Median IoU of the unit disc and its jittered image, on a pixel grid."""
    rng = np.random.default_rng(0)
    g = np.linspace(-2.5, 2.5, 161)
    x, y = np.meshgrid(g, g)
    p = np.stack([x.ravel(), y.ravel()], 1)
    disc = (p**2).sum(1) <= 1
    ious = []
    for m in jitter_matrix(level, rng, n):
        q = (p - m[:, 2]) @ np.linalg.inv(m[:, :2]).T
        inside = (q**2).sum(1) <= 1
        ious.append((disc & inside).sum() / (disc | inside).sum())
    return float(np.median(ious))


@pytest.mark.parametrize(("level", "target"), [("e", 0.85), ("h", 0.72), ("t", 0.60)])
def test_jitter_levels_match_hpatches_overlaps(level: str, target: float) -> None:
    assert _median_overlap(level) == pytest.approx(target, abs=0.025)


def test_circle_iou() -> None:
    assert circle_iou(np.zeros(2), 1.0, np.zeros(2), 1.0) == pytest.approx(1.0)
    assert circle_iou(np.zeros(2), 1.0, np.array([5.0, 0]), 1.0) == 0.0
    assert circle_iou(np.zeros(2), 2.0, np.zeros(2), 1.0) == pytest.approx(0.25)


def test_make_benchmark_on_real_sequences(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = make_benchmark(shared_data / "hpatches-sequences", out, BenchmarkConfig(max_keypoints=60,
                                                                                  verification_pairs=500))
    assert set(res.sequences) == {"v_churchill", "v_dogman", "v_wormhole"}
    assert get_split(out / "tasks", "full")["test"] == sorted(res.sequences)
    seq = read_hpatches_sequence(out / "patches" / "v_churchill")
    assert len(seq) == 16 and all(v.shape == (60, 65, 65) for v in seq.values())
    # easy targets resemble the reference more than tough ones (normalised correlation)
    def corr(a: np.ndarray, b: np.ndarray) -> float:
        a = (a - a.mean((1, 2), keepdims=True)) / (a.std((1, 2), keepdims=True) + 1e-6)
        b = (b - b.mean((1, 2), keepdims=True)) / (b.std((1, 2), keepdims=True) + 1e-6)
        return float(np.mean(a * b))
    ref = seq["ref"].astype(float)
    ce = np.mean([corr(ref, seq[f"e{k}"].astype(float)) for k in range(1, 6)])
    ct = np.mean([corr(ref, seq[f"t{k}"].astype(float)) for k in range(1, 6)])
    assert ce > ct + 0.05 and ce > 0.4
    res = runner.invoke(app, ["eval", "hpatches", "--model", str(shared_data / "weights/tfeat/tfeat-liberty.params"),
                              "--patches", str(out / "patches"), "--tasks", str(out / "tasks"), "--split", "full",
                              "-q", "--json", "-"])
    assert res.exit_code == 0, res.output
    h = json.loads(res.stdout)["headline"]
    assert 0.1 < h["matching"] < 0.9


def test_synthetic_sequence_homographies_are_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (120, 160)).astype(np.float32), (0, 0), 2).astype(np.uint8)
    images, hs = synthetic_sequence(img, "v", rng)
    write_sequence(tmp_path / "v_x", images, hs)
    seq = read_sequence(tmp_path / "v_x")
    assert len(seq.images) == 6 and set(seq.homographies) == {2, 3, 4, 5, 6}
    np.testing.assert_allclose(seq.homographies[4], hs[4], rtol=1e-8, atol=1e-8)
    # warping image 1 by H_1_4 reproduces image 4 up to photometric change (high correlation)
    back = cv2.warpPerspective(img, hs[4], (160, 120)).astype(float)
    c = np.corrcoef(back[20:-20, 20:-20].ravel(), images[3][20:-20, 20:-20].astype(float).ravel())[0, 1]
    assert c > 0.9


def test_quickstart_quick(tmp_path: Path) -> None:
    res = runner.invoke(app, ["quickstart", "--quick", "--out", str(tmp_path / "qs"), "-q", "--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [r["descriptor"] for r in doc["rows"]] == ["Self-TNet small (trained)", "HyNet untrained", "SIFT"]
    assert Path(doc["model"]).is_file()
    for r in doc["rows"]:
        assert 0 < r["matching"] <= 1 and 0 < r["verification"] <= 1
