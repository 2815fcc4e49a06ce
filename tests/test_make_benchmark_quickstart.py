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


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted ``quickstart --quick`` and its JSON document."""
    out = tmp_path_factory.mktemp("qs") / "qs"
    res = runner.invoke(app, ["quickstart", "--quick", "--out", str(out), "-q", "--json", "-"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_quickstart_quick(quickstart: tuple[Path, dict]) -> None:
    out, doc = quickstart
    assert [r["descriptor"] for r in doc["rows"]] == ["Self-TNet small (trained)", "HyNet untrained", "SIFT"]
    assert Path(doc["model"]).is_file()
    for r in doc["rows"]:
        assert 0 < r["matching"] <= 1 and 0 < r["verification"] <= 1
        # the real-data row: the Motorcycle stereo pair, the same numbers as the stereo document
        assert 0 < r["stereo_mma3"] <= 1 and r["stereo_matches"] > 0
    st = doc["stereo"]
    assert st["pair"] == "motorcycle" and [m["name"] for m in st["models"]] == [r["descriptor"] for r in doc["rows"]]
    assert [m["mma"][2] for m in st["models"]] == [r["stereo_mma3"] for r in doc["rows"]]
    assert doc["stages"] == {"pool": "done", "training": "done", "benchmark": "done", "evaluation": "done"}
    # the stereo pair is held out: neither of its photos is trained on
    assert not [p for p in (out / "photos").iterdir() if p.name.startswith("motorcycle")]


def test_quickstart_run_folder_is_a_train_run(quickstart: tuple[Path, dict]) -> None:
    from descbal.config import load_config
    from descbal.train.config import RunConfig

    run = quickstart[0] / "run"
    assert {"config.toml", "environment.json", "metrics.jsonl", "checkpoints", "model.pt"} <= {p.name for p in
                                                                                             run.iterdir()}
    cfg = load_config(RunConfig, run / "config.toml")
    assert Path(cfg.data.train) == (quickstart[0] / "pool.h5").resolve()  # absolute: resumable from anywhere
    res = runner.invoke(app, ["train", "--resume", str(run), "-q", "--json", "-"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"] == str(run / "model.pt")
    # the pool's held-out pairs validated every epoch (main + 2 annealing cycles)
    vals = [json.loads(x)["val_fpr95"] for x in (run / "metrics.jsonl").read_text().splitlines() if "val_fpr95" in x]
    assert len(vals) == 3 and all(0 <= v <= 1 for v in vals)


def test_quickstart_rerun_skips_finished_stages(quickstart: tuple[Path, dict]) -> None:
    out, doc = quickstart
    before = (out / "run" / "model.pt").stat().st_mtime_ns, (out / "pool.h5").stat().st_mtime_ns
    res = runner.invoke(app, ["quickstart", "--quick", "--out", str(out), "--json", "-"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["stages"] == dict.fromkeys(("pool", "training", "benchmark", "evaluation"), "up to date")
    assert again["rows"] == doc["rows"] and again["stereo"] == doc["stereo"]
    assert ((out / "run" / "model.pt").stat().st_mtime_ns, (out / "pool.h5").stat().st_mtime_ns) == before
    assert "up to date" in res.stderr
    # other options on the same folder: refused before any work, naming what differs
    res = runner.invoke(app, ["quickstart", "--quick", "--seed", "1", "--out", str(out)])
    assert res.exit_code == 2 and "loop.seed" in res.stderr and "Traceback" not in res.output
    assert (out / "pool.h5").stat().st_mtime_ns == before[1]


def test_interrupted_quickstart_resumes_its_training(quickstart: tuple[Path, dict], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import torch

    from descbal.models.checkpoint import read_checkpoint
    from descbal.quickstart import run_quickstart
    from descbal.train.trainer import Trainer

    out = tmp_path / "qs"
    out.mkdir()
    # the same photos (modification times kept) and pool: that stage is up to date here
    shutil.copytree(quickstart[0] / "photos", out / "photos")
    shutil.copy2(quickstart[0] / "pool.h5", out / "pool.h5")
    fit = Trainer.fit

    def interrupted(self: Trainer, progress=None, stop_after=None, log=None):  # type: ignore[no-untyped-def]
        fit(self, progress, stop_after=3, log=log)  # writes checkpoints/last.pt, as Ctrl-C does
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_quickstart(out, quick=True)
    assert (out / "run" / "checkpoints" / "last.pt").is_file() and not (out / "run" / "model.pt").exists()
    monkeypatch.setattr(Trainer, "fit", fit)
    res = run_quickstart(out, quick=True)
    assert res.stages == {"pool": "up to date", "training": "resumed", "benchmark": "done", "evaluation": "done"}
    # resumed exactly: the same weights and numbers as the uninterrupted quickstart
    a = read_checkpoint(out / "run" / "model.pt")["state_dict"]
    b = read_checkpoint(quickstart[0] / "run" / "model.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.to_json()["rows"] == quickstart[1]["rows"]


def test_quickstart_default_folder_is_ignored_by_git() -> None:
    from descbal.quickstart import DEFAULT_OUT

    root = Path(__file__).resolve().parents[1]
    assert f"{DEFAULT_OUT}/" in (root / ".gitignore").read_text().splitlines()
    res = runner.invoke(app, ["quickstart", "--help"])
    assert f"[default: {DEFAULT_OUT}]" in res.output
