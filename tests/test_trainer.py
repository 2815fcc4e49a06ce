"""The training loop on a tiny synthetic set: exact resume, Ctrl-C, run-folder contents, learning."""

from __future__ import annotations

import json
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import make_patchset, one_torch_thread, tiny_config, write_sets  # noqa: F401

import descbal
from descbal.config import load_config
from descbal.data.patchset import PatchSet, load_patchset, write_patchset
from descbal.errors import BadInputError, DataMissingError
from descbal.models import load
from descbal.models.checkpoint import read_checkpoint
from descbal.train.config import ModelConfig, RunConfig
from descbal.train.trainer import Trainer, geometry_line, resume_run, start_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """60 classes x 3 patches for training; 20 classes x 2 with 40 pairs for validation."""
    return write_sets(tmp_path_factory.mktemp("data"), seed=0, num_classes=60, per_class=3)


@pytest.fixture(scope="module")
def cfg(sets: tuple[Path, Path]) -> RunConfig:
    return tiny_config(*sets, epochs=2, iters=3, classes=8)


@pytest.fixture(scope="module")
def reference(cfg: RunConfig, tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, dict, Path]:
    """The uninterrupted run: 2 epochs x 3 steps."""
    run = tmp_path_factory.mktemp("ref") / "run"
    trainer = start_run(cfg, run)
    summary = trainer.fit()
    return trainer, summary, run


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def step_records(run: Path) -> list[dict]:
    """The metrics.jsonl records (steps and validations) without the timing field."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "patches_per_s"} for r in lines]


# ---------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_interrupted_and_resumed_run_is_identical(k: int, cfg: RunConfig, reference, tmp_path: Path) -> None:
    """Stopped after k steps (mid epoch 0; at its end, before validation; in epoch 1; after the
    last step, before the last validation) and resumed."""
    ref, ref_summary, ref_run = reference
    run = tmp_path / "run"
    first = start_run(cfg, run)
    out = first.fit(stop_after=k)
    assert out.to_json() == {"stopped": True, "steps": k} and out.stopped and out.model is None
    assert (run / "checkpoints" / "last.pt").is_file() and not (run / "model.pt").exists()
    doc = read_checkpoint(run / "checkpoints" / "last.pt")
    assert (doc["epoch"], doc["iteration"]) == {2: (0, 2), 3: (0, 3), 4: (1, 1), 6: (1, 3)}[k]
    second = resume_run(run)
    assert (second.epoch, second.iteration) == (doc["epoch"], doc["iteration"])
    summary = second.fit()
    assert summary.stopped is False and summary.steps == 6
    assert summary.validation and summary.validation[-1] == ref_summary.validation[-1]
    assert_same_weights(second.model, ref.model)
    assert second.optimizer.state_dict()["state"].keys() == ref.optimizer.state_dict()["state"].keys()
    for key, st in ref.optimizer.state_dict()["state"].items():
        for name, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(second.optimizer.state_dict()["state"][key][name]))
    assert step_records(run) == step_records(ref_run)  # the same log, every line once


def test_resumed_twice(cfg: RunConfig, reference, tmp_path: Path) -> None:
    run = tmp_path / "run"
    start_run(cfg, run).fit(stop_after=1)
    resume_run(run).fit(stop_after=3)  # crosses the epoch boundary (validation, epoch checkpoint)
    last = resume_run(run)
    last.fit()
    assert_same_weights(last.model, reference[0].model)
    assert step_records(run) == step_records(reference[2])


def test_ctrl_c_saves_and_resumes_identically(cfg: RunConfig, reference, tmp_path: Path) -> None:
    """A Ctrl-C (here: the flag its handler sets) finishes the step, writes last.pt, raises."""
    run = tmp_path / "run"
    trainer = start_run(cfg, run)
    seen: list[int] = []

    def progress(task: str, step: int, total: int, stats: dict) -> None:
        assert task == "train"
        seen.append(step)
        assert total == 6 and np.isfinite(stats["loss"])
        if step == 4:
            trainer._stop = True

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(progress=progress)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
    assert seen == [1, 2, 3, 4]
    doc = read_checkpoint(run / "checkpoints" / "last.pt")
    assert (doc["epoch"], doc["iteration"]) == (1, 1)
    again = resume_run(run)
    again.fit()
    assert_same_weights(again.model, reference[0].model)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_real_sigint_is_caught_between_steps(cfg: RunConfig, reference, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = start_run(cfg, run)

    def progress(task: str, step: int, total: int, stats: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(progress=progress)
    doc = read_checkpoint(run / "checkpoints" / "last.pt")
    assert doc["epoch"] * 3 + doc["iteration"] >= 2
    again = resume_run(run)
    again.fit()
    assert_same_weights(again.model, reference[0].model)


# ---------------------------------------------------------------------------- the run folder


def test_run_folder_contents(cfg: RunConfig, reference) -> None:
    trainer, summary, run = reference
    assert {p.name for p in run.iterdir()} >= {"config.toml", "environment.json", "metrics.jsonl", "checkpoints",
                                               "model.pt"}
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]  # atomic writes leave nothing behind
    # config.toml is the resolved configuration and re-loads to the same RunConfig
    assert load_config(RunConfig, run / "config.toml") == cfg
    env = json.loads((run / "environment.json").read_text())
    assert env["descbal"] == descbal.__version__ and env["torch"] == torch.__version__
    assert env["numpy"] == np.__version__ and env["python"].count(".") == 2
    assert env["device"] == "cpu" and "git_commit" in env
    # metrics: one line per step (log_every=1) and one validation line per epoch
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    vals = [r for r in recs if "val_fpr95" in r]
    assert len(steps) + len(vals) == len(recs)
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in steps] == [0, 0, 0, 1, 1, 1]
    for r in steps:
        assert np.isfinite(r["loss"]) and r["lr"] > 0 and r["patches"] == 24
    assert [r["epoch"] for r in vals] == [1, 2]
    assert all(0.0 <= r["val_fpr95"] <= 1.0 for r in vals)
    assert list(summary.validation) == vals
    assert summary.stopped is False and summary.steps == 6 and summary.model == str(run / "model.pt")
    doc = summary.to_json()
    assert list(doc) == ["stopped", "steps", "seconds", "validation", "model"] and doc["validation"] == vals
    assert json.loads(json.dumps(doc)) == doc
    # checkpoints
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    per_epoch = [n for n in names if n != "last.pt"]
    assert "last.pt" in names and len(per_epoch) == 2, names
    assert per_epoch[0].endswith("epoch_001.pt") and per_epoch[1].endswith("epoch_002.pt")
    e1 = read_checkpoint(run / "checkpoints" / per_epoch[0])
    assert (e1["epoch"], e1["iteration"]) == (1, 0) and "optimizer" in e1
    for name in ("model.pt", "checkpoints/last.pt", f"checkpoints/{per_epoch[1]}"):
        m = load(run / name)
        assert m.arch == "hynet" and m.input_scale == pytest.approx(1 / 255)
        assert_same_weights(m, trainer.model)
    assert_same_weights(load(run), trainer.model)  # the folder itself
    # model.pt carries the run configuration
    doc = read_checkpoint(run / "model.pt")
    assert load_config(RunConfig, doc["run_config"]) == cfg


def test_log_lines_per_phase_and_validation(cfg: RunConfig, reference, tmp_path: Path) -> None:
    lines: list[str] = []
    trainer = start_run(cfg, tmp_path / "run")
    trainer.fit(log=lines.append)
    fprs = [r["val_fpr95"] for r in reference[1].validation]
    assert lines == [
        f"validation: FPR95 each epoch on {cfg.data.val} (40 pairs)",
        geometry_line(None),  # the synthetic sets record no geometry
        "phase main: 6 steps (2 x 3) of 8 classes x 3 patches; loss triplet, miner hardest, reducer mean, lr_max 0.003",
        f"phase main epoch 1: validation FPR95 {100 * fprs[0]:.2f} %",
        f"phase main epoch 2: validation FPR95 {100 * fprs[1]:.2f} %",
    ]


def test_validation_pairs_limit(cfg: RunConfig, sets: tuple[Path, Path], tmp_path: Path) -> None:
    c = replace(cfg, data=replace(cfg.data, val_pairs=10))
    trainer = start_run(c, tmp_path / "run")
    fpr = trainer.validate()
    assert fpr is not None and 0 <= fpr <= 1
    assert start_run(replace(cfg, data=replace(cfg.data, val="")), tmp_path / "noval").validate() is None


def pool_with_holdout() -> PatchSet:
    """A pool like ``cache images`` writes: 50 trainable classes x 3 patches, then 20 held-out
    classes x 2 patches (``holdout``) carrying all 40 ``pairs``."""
    train = make_patchset(0, 50, 3, name="pool")
    held = make_patchset(1000, 20, 2, num_pairs=40)
    n = len(train.labels)
    return PatchSet(np.concatenate([train.patches, held.patches]), np.concatenate([train.labels, held.labels + 1000]),
                    held.pairs + [n, n, 0], "pool", np.r_[np.zeros(n, bool), np.ones(len(held.labels), bool)])


def test_validates_on_the_pools_held_out_pairs_by_default(cfg: RunConfig, tmp_path: Path) -> None:
    pool = pool_with_holdout()
    write_patchset(tmp_path / "pool.h5", pool)
    c = replace(cfg, data=replace(cfg.data, train=str(tmp_path / "pool.h5"), val=""))
    trainer = start_run(c, tmp_path / "run")
    assert trainer.val_set is not None and trainer.val_set.name == "pool"
    # nothing trains on held-out patches: no batch of the run draws one
    held = trainer.train_set.holdout
    assert held is not None and held.sum() == 40
    for e in range(c.loop.epochs):
        for i in range(c.loop.iters_per_epoch):
            assert not held[trainer.sampler.batch(e, i).indices].any()
    lines: list[str] = []
    summary = trainer.fit(log=lines.append)
    assert lines[0] == ("validation: FPR95 each epoch on the training set's 40 held-out pairs (40 held-out patches, "
                        "never trained on); --no-val to skip")
    fprs = [r["val_fpr95"] for r in summary.validation]
    assert len(fprs) == 2 and all(0.0 <= f <= 1.0 for f in fprs)
    # the same number as evaluating the final model on the pool's pairs
    from descbal.eval.model_eval import evaluate_brown_model

    assert fprs[-1] == evaluate_brown_model(trainer.model, load_patchset(tmp_path / "pool.h5")).fpr95
    # resumed runs validate the same way
    assert resume_run(tmp_path / "run").val_set is not None


def test_no_val_and_sets_without_held_out_pairs(cfg: RunConfig, sets: tuple[Path, Path], tmp_path: Path) -> None:
    write_patchset(tmp_path / "pool.h5", pool_with_holdout())
    off = replace(cfg, data=replace(cfg.data, train=str(tmp_path / "pool.h5"), val="none"))
    trainer = start_run(off, tmp_path / "off")
    lines: list[str] = []
    summary = trainer.fit(log=lines.append)
    assert trainer.val_set is None and trainer.validate() is None
    assert lines[0] == 'validation: off (--no-val / data.val = "none")'
    assert [r["val_fpr95"] for r in summary.validation] == [None, None]
    # pairs among training patches (a Brown set) are not held out: no default validation
    brown = make_patchset(0, 30, 3, name="brown", num_pairs=20)
    write_patchset(tmp_path / "brown.h5", brown)
    t = start_run(replace(cfg, data=replace(cfg.data, train=str(tmp_path / "brown.h5"), val="")), tmp_path / "b")
    assert t.val_set is None
    assert t.val_note == "validation: none (the training set has no held-out pairs; give --val SET.h5)"
    # the config key is the same through the resolver, and --val contradicts --no-val
    from descbal.run_config import resolve_run_config

    assert resolve_run_config(no_val=True).data.val == "none"
    with pytest.raises(BadInputError, match="--no-val"):
        resolve_run_config(val=sets[1], no_val=True)


def test_start_run_refuses_an_existing_run(cfg: RunConfig, reference, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="already holds a run") as e:
        start_run(cfg, reference[2])
    assert e.value.exit_code == 2
    # an interrupted run counts too
    run = tmp_path / "run"
    start_run(cfg, run).fit(stop_after=1)
    with pytest.raises(BadInputError, match="resume"):
        start_run(cfg, run)


def test_bad_runs(cfg: RunConfig, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no training data"):
        start_run(replace(cfg, data=replace(cfg.data, train="")), tmp_path / "a")
    with pytest.raises(DataMissingError, match="run folder not found"):
        resume_run(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataMissingError, match="no checkpoints/last.pt"):
        resume_run(tmp_path / "empty")
    with pytest.raises(BadInputError, match="config"):
        start_run(replace(cfg, model=ModelConfig(name="no-such-net")), tmp_path / "b")
    with pytest.raises((ValueError, BadInputError), match="only 60"):
        start_run(replace(cfg, loop=replace(cfg.loop, classes_per_batch=61)), tmp_path / "c")


# ---------------------------------------------------------------------------- learning


def test_loss_goes_down(sets: tuple[Path, Path], tmp_path: Path) -> None:
    """20 one-cycle steps of 12 classes x 3 patches (no augmentation, so the signal is clear):
    the triplet loss drops. Fixed seed and a tolerant threshold: over seeds 0-7 the drop was
    0.14-0.30, while an untrained network stays about 1.2."""
    c = tiny_config(sets[0], None, epochs=1, iters=20, classes=12, seed=0, augment=False)
    losses: list[float] = []
    trainer = start_run(c, tmp_path / "run")
    trainer.fit(progress=lambda task, step, total, stats: losses.append(stats["loss"]))
    assert len(losses) == 20 and all(np.isfinite(losses))
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    assert last < first - 0.08, (first, last, losses)


def test_lone_patches_without_augmentation_keep_weights_finite(tmp_path: Path) -> None:
    write_patchset(tmp_path / "t.h5", make_patchset(3, 8, [1, 2, 3, 3, 3, 3, 3, 3]))
    c = tiny_config(tmp_path / "t.h5", None, epochs=1, iters=1, classes=8, augment=False)
    c = replace(c, model=ModelConfig(name="hynet", params={"dropout": 0.0}))
    trainer = start_run(c, tmp_path / "run")
    stats = trainer.step(0, 0)
    assert np.isfinite(stats["loss"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_sigterm_saves_like_ctrl_c(cfg: RunConfig, reference, tmp_path: Path) -> None:
    """SIGTERM (a scheduler's pre-emption) also finishes the step and writes last.pt; the run
    then resumes to the uninterrupted weights."""
    import os

    run = tmp_path / "run"
    trainer = start_run(cfg, run)

    def progress(task: str, step: int, total: int, stats: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(progress=progress)
    assert signal.getsignal(signal.SIGTERM) is before
    doc = read_checkpoint(run / "checkpoints" / "last.pt")
    assert (doc["epoch"], doc["iteration"]) == (0, 2)
    again = resume_run(run)
    again.fit()
    assert_same_weights(again.model, reference[0].model)
