"""descbal eval sequences: the MMA / homography computations on hand-built cases, synthetic
sequences, the CLI (--json, --plot) and SIFT on the real HPatches sequences."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from descbal.cli import app
from descbal.errors import BadInputError, DataMissingError
from descbal.eval.sequences import (
    HOMOGRAPHY_EPS,
    THRESHOLDS,
    SequencesResult,
    corner_error,
    evaluate_sequences,
    render_mma,
    reprojection_errors,
    summarise,
)

runner = CliRunner()


def test_reprojection_errors_and_mma_by_hand() -> None:
    h = np.array([[1.0, 0, 10], [0, 1.0, -5], [0, 0, 1]])  # a shift by (10, -5)
    kp1 = np.array([[0.0, 0.0], [5.0, 5.0], [20.0, 20.0], [1.0, 1.0]])
    kpk = np.array([[10.0, -5.0], [15.0, 2.5], [30.0, 15.0 + 4.0]])
    m = np.array([0, 1, 2, -1], np.int32)
    err = reprojection_errors(kp1, kpk, m, h)
    np.testing.assert_allclose(err, [0.0, 2.5, 4.0])
    pairs = [{"split": "viewpoint", "errors": err, "num_matches": 3, "corner_error": 2.0},
             {"split": "viewpoint", "errors": np.zeros(0), "num_matches": 0, "corner_error": float("inf")},
             {"split": "illumination", "errors": np.array([0.5]), "num_matches": 1, "corner_error": 1.0}]
    s = summarise(pairs, [4, 3, 3, 1])
    v = s["mma"]["viewpoint"]
    # pair 1: 1/3 correct at 1 and 2 px, 2/3 at 3 px, all from 4 px; pair 2 has no match: 0
    np.testing.assert_allclose(v[:5], [1 / 6, 1 / 6, 1 / 3, 1 / 2, 1 / 2])
    assert s["mma"]["illumination"] == [1.0] * 10
    np.testing.assert_allclose(s["mma"]["overall"][0], (1 / 3 + 0 + 1) / 3)
    assert s["homography_accuracy"]["viewpoint"] == {"1": 0.0, "3": 0.5, "5": 0.5}
    assert s["homography_accuracy"]["illumination"] == {"1": 1.0, "3": 1.0, "5": 1.0}
    assert s["num_matches"]["viewpoint"] == 1.5 and s["num_features"] == 2.75 and s["num_pairs"]["overall"] == 3


def test_corner_error() -> None:
    h = np.eye(3)
    assert corner_error(h, h, 100, 50) == 0.0
    shifted = np.array([[1.0, 0, 3], [0, 1, 4], [0, 0, 1]])
    assert corner_error(shifted, h, 100, 50) == pytest.approx(5.0)
    assert corner_error(None, h, 100, 50) == float("inf")


def make_sequences(root: Path) -> None:
    """A viewpoint and an illumination sequence of a synthetic texture (3 images each)."""
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (30, 40), dtype=np.uint8), (320, 240), interpolation=cv2.INTER_CUBIC)
    base = cv2.GaussianBlur(base, (0, 0), 1.0)
    homs = {2: np.array([[0.95, 0.08, 8.0], [-0.06, 1.0, 4.0], [2e-5, 1e-5, 1.0]]),
            3: np.array([[1.05, -0.05, -6.0], [0.04, 0.92, 10.0], [-3e-5, 4e-5, 1.0]])}
    for name, kind in (("v_synth", "v"), ("i_synth", "i")):
        d = root / name
        d.mkdir(parents=True)
        cv2.imwrite(str(d / "1.png"), cv2.cvtColor(base, cv2.COLOR_GRAY2BGR))
        for k, h in homs.items():
            hk = h if kind == "v" else np.eye(3)
            img = cv2.warpPerspective(base, hk, (320, 240), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            if kind == "i":
                img = np.clip(img.astype(np.float64) * (0.6 + 0.3 * k / 3) + 10, 0, 255).astype(np.uint8)
            cv2.imwrite(str(d / f"{k}.png"), img)
            (d / f"H_1_{k}").write_text("\n".join(" ".join(f"{x:.10g}" for x in row) for row in hk) + "\n")


@pytest.fixture(scope="module")
def seq_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seqs")
    make_sequences(root)
    return root


def test_synthetic_sequences_are_matched_well(seq_root: Path) -> None:
    r = evaluate_sequences(seq_root, ["sift"], max_keypoints=300, device="cpu")
    assert r.sequences == ["i_synth", "v_synth"] and r.thresholds == list(THRESHOLDS)
    m = r.models[0]
    assert m["num_pairs"] == {"overall": 4, "illumination": 2, "viewpoint": 2}
    assert m["mma"]["illumination"][2] > 0.9 and m["mma"]["viewpoint"][2] > 0.8
    assert all(np.diff(m["mma"]["overall"]) >= 0)
    assert m["homography_accuracy"]["overall"]["5"] >= 0.75
    assert 0 < m["num_features"] <= 300 and m["num_matches"]["overall"] > 50
    assert len(m["pairs"]) == 4 and m["provenance"]["model"] == "sift"
    json.dumps(r.to_json(), allow_nan=False)  # the document is plain JSON


def test_errors(seq_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataMissingError):
        evaluate_sequences(tmp_path / "none", ["sift"])
    with pytest.raises(BadInputError, match="unknown sequence"):
        evaluate_sequences(seq_root, ["sift"], sequences=["v_nope"])
    with pytest.raises(BadInputError):
        evaluate_sequences(tmp_path, ["sift"])


def test_cli_json_and_plot(seq_root: Path, tmp_path: Path) -> None:
    plot = tmp_path / "mma.png"
    r = runner.invoke(app, ["eval", "sequences", str(seq_root), "--model", "sift", "--model", "rootsift",
                            "--sequence", "v_synth", "--max-keypoints", "150", "--device", "cpu", "--plot", str(plot),
                            "--json", "-"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [m["name"] for m in doc["models"]] == ["sift", "rootsift"] and doc["sequences"] == ["v_synth"]
    assert doc["models"][1]["mma"]["illumination"] is None
    img = cv2.imread(str(plot))
    # no illumination sequence: only the Overall and Viewpoint panels are drawn
    assert img is not None and img.shape[1] == 2 * 420 and img.shape[0] > 360
    # every model has its own colour in the viewpoint panel
    panel = img[:360, 420:]
    colours = {tuple(int(c) for c in px) for px in panel.reshape(-1, 3) if len(set(px.tolist())) > 1}
    assert (180, 119, 31) in colours and (14, 127, 255) in colours


def test_render_without_models() -> None:
    empty = SequencesResult(root="x", sequences=[], thresholds=list(THRESHOLDS), homography_eps=list(HOMOGRAPHY_EPS),
                            detector="sift", max_keypoints=10, geometry={}, ratio=None, models=[])
    img = render_mma(empty)
    assert img.dtype == np.uint8 and img.shape[2] == 3


def test_sift_on_real_hpatches_viewpoint_sequences(shared_data: Path) -> None:
    """OpenCV SIFT (DoG + SIFT, mutual NN, 1000 keypoints) on v_churchill, v_wormhole, v_dogman.

    Reference: D2-Net (Dusmanu et al., "D2-Net: A Trainable CNN for Joint Description and
    Detection of Local Features", CVPR 2019), Fig. 4, HPatches image pairs, *Viewpoint* panel,
    the SIFT-family baseline "Hes. Aff. + Root-SIFT" (curve produced by
    mihaidusmanu/d2-net:hpatches_sequences/HPatches-Sequences-Matching-Benchmark.ipynb, the
    protocol implemented here). The paper publishes these curves only as a plot, not as
    numbers; approximate readings of that viewpoint curve are about 0.2-0.3 at 1 px, 0.5-0.6
    at 3 px and 0.6-0.7 at 10 px (by eye, not verified against the cached results). DoG is not
    Hessian-Affine and these are 3 of the 56 viewpoint sequences, so the asserted ranges are
    deliberately wide around those readings. Measured here: about 0.34 / 0.51 / 0.64.
    """
    r = evaluate_sequences(shared_data / "hpatches-sequences", ["sift"], max_keypoints=1000, device="cpu")
    m = r.models[0]
    v = m["mma"]["viewpoint"]
    assert r.sequences == ["v_churchill", "v_dogman", "v_wormhole"] and m["num_pairs"]["viewpoint"] == 15
    assert m["mma"]["illumination"] is None
    assert 0.15 <= v[0] <= 0.50  # MMA@1
    assert 0.35 <= v[2] <= 0.75  # MMA@3
    assert 0.45 <= v[9] <= 0.85  # MMA@10
    assert all(np.diff(v) >= 0)
    assert 0.3 <= m["homography_accuracy"]["viewpoint"]["5"] <= 1.0
    assert 200 <= m["num_matches"]["viewpoint"] <= 1000 and m["num_features"] == pytest.approx(1000, abs=5)
