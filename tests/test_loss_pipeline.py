"""The loss pipeline: registries, miner x loss compatibility, reducers by hand, phases from recipes,
and a new miner added in this file (one class + one decorator) trained through ``--set loss.miner``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import embedded
from train_fixtures import one_torch_thread, write_sets  # noqa: F401
from typer.testing import CliRunner

from descbal.cli import app
from descbal.config import load_config
from descbal.errors import BadInputError
from descbal.losses import LOSSES, MINERS, REDUCERS, ClassTuples, Reference, build_pipeline, register_miner
from descbal.losses.reducers import AnchorReducer, ClassTerms, MeanReducer, PairTerms, SumReducer
from descbal.recipes import recipe_text
from descbal.train.config import RunConfig
from descbal.train.phases import build_phases

runner = CliRunner()


@register_miner("test_first_negative")
class FirstNegativeMiner:
    """A toy miner: per class, its first two members as the positive pair and the first patch of
    the next class (cyclically) as the negative: easy, deterministic tuples."""

    calls = 0

    @torch.no_grad()
    def __call__(self, embeddings, labels, reference=None, batch=None) -> ClassTuples:
        FirstNegativeMiner.calls += 1
        classes, inv = torch.unique(labels, return_inverse=True)
        idx = torch.arange(labels.numel())
        first = torch.stack([idx[inv == c][0] for c in range(len(classes))])
        second = torch.stack([idx[inv == c][min(1, int((inv == c).sum()) - 1)] for c in range(len(classes))])
        nxt = first.roll(-1)
        return ClassTuples(first, second, first, nxt, torch.ones(len(classes), dtype=torch.bool), {"toy": 1.0})


def test_everything_is_registered_after_import() -> None:
    assert {"triplet", "balance", "anneal", "ddtas", "memory_contrastive", "osm_caa"} <= set(LOSSES)
    assert {"hardest", "asms", "xbm", "osm"} <= set(MINERS)
    assert {"mean", "sum", "anchor"} <= set(REDUCERS)


def test_toy_miner_in_the_pipeline_by_hand() -> None:
    x = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]]), dim=1).requires_grad_()
    labels = torch.tensor([3, 3, 7, 7])
    out = embedded(build_pipeline("triplet", {"margin": 1.0}, miner="test_first_negative"), x, labels)
    # class 3: a = |x0 - x1|, b = |x0 - x2|; class 7: a = |x2 - x3|, b = |x2 - x0|
    a3, b3 = math.dist((1, 0), (0.8, 0.6)), math.dist((1, 0), (0, 1))
    a7, b7 = math.dist((0, 1), (0.6, 0.8)), b3
    want = (max(0.0, 1 + a3 - b3) + max(0.0, 1 + a7 - b7)) / 2
    assert float(out.loss.detach()) == pytest.approx(want, abs=1e-6)
    assert out.stats["toy"] == 1.0


def test_pair_losses_take_class_tuples_and_class_losses_refuse_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    labels = torch.arange(4).repeat_interleave(2)
    out = embedded(build_pipeline("osm_caa", {"attention": "none"}, miner="hardest"), x, labels)
    assert out.stats["pos_pairs"] == 4 and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="ClassTuples"):
        embedded(build_pipeline("triplet", miner="osm"), x, labels)
    with pytest.raises(ValueError, match="unknown miner 'nope'; choose from .*hardest"):
        build_pipeline("triplet", miner="nope")


def test_miner_settings_of_the_loss_and_miner_params() -> None:
    assert build_pipeline("ddtas", {"pos_tol": 0.3}).miner.pos_tol == 0.3  # the loss's default miner
    assert build_pipeline("ddtas", {"pos_tol": 0.3}, miner="asms").miner.pos_tol == 0.3  # the same, named
    assert build_pipeline("ddtas", {"pos_tol": 0.3}, miner="asms", miner_params={"pos_tol": 0.2}).miner.pos_tol == 0.2
    assert build_pipeline("memory_contrastive", {"neg_threshold": 0.4}, miner="xbm").miner.neg_threshold == 0.4
    assert build_pipeline("triplet", miner_params={"near_duplicate": 0.1}).miner.near_duplicate == 0.1
    assert build_pipeline("osm_caa", {"caffe_scale": True}, reducer="sum").reducer.pair_scale is True


def test_a_reference_set_is_refused_by_losses_that_ignore_it() -> None:
    x = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    labels = torch.arange(3).repeat_interleave(2)
    ref = Reference(x, labels, torch.arange(6), torch.arange(6))
    for name in ("triplet", "memory_contrastive"):
        with pytest.raises(ValueError, match="reference set"):
            embedded(name, x, labels, reference=ref)


def test_reducers_by_hand() -> None:
    v = torch.tensor([1.0, 2.0, 4.0])
    w = torch.tensor([1.0, 0.0, 0.5])
    assert float(MeanReducer()(ClassTerms(v, w))) == pytest.approx((1 + 0 + 2) / 3)
    assert float(SumReducer()(ClassTerms(v, w))) == 3.0
    empty = MeanReducer()(ClassTerms(torch.zeros(0, requires_grad=True)))
    assert float(empty.detach()) == 0.0 and not torch.isnan(empty.detach())
    # pairs over 3 anchors: anchor 0 has positives 1, 3 and negative 5; anchor 1 only a positive 2
    t = PairTerms(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([5.0]), torch.tensor([0, 0, 1]), torch.tensor([0]), 3)
    assert float(AnchorReducer(pair_mean=True, require_both=True)(t)) == pytest.approx((2 + 5) / 3)
    assert float(AnchorReducer(pair_mean=True, require_both=True, over="active")(t)) == pytest.approx(7.0)
    assert float(AnchorReducer(pair_mean=False, require_both=False)(t)) == pytest.approx((4 + 5 + 2) / 3)
    assert float(SumReducer()(t)) == 11.0
    assert float(SumReducer(pair_scale=True)(t)) == pytest.approx(11.0 / 6)


def test_self_tnet_phases_come_from_the_recipe() -> None:
    cfg = load_config(RunConfig, [recipe_text("self-tnet")], ['data.train="x.h5"'])
    phases = build_phases(cfg)
    assert [p.name for p in phases] == ["main"] + [f"anneal{k:02d}" for k in range(15)]
    main, first, last = phases[0], phases[1], phases[-1]
    assert (main.classes_per_batch, main.npos, main.steps) == (2560, 3, 25 * 1582)
    assert type(main.pipeline.loss).name == "balance" and main.pipeline.teacher is not None
    assert (first.classes_per_batch, first.npos, first.steps) == (2816, 2, 1400)
    assert (last.classes_per_batch, last.pipeline.loss.threshold) == (1024, pytest.approx(-0.10 + 0.05 * 14))
    assert first.schedule.kind == "flat_cos" and first.schedule.lr_max == 1.5e-6
    assert last.schedule.lr_max == pytest.approx(1.5e-6 * 0.75**14)
    assert first.pipeline.teacher is None and first.pipeline.loss.B == 4.25
    off = build_phases(load_config(RunConfig, [recipe_text("self-tnet")], ["phases.anneal.enabled=false"]))
    assert [p.name for p in off] == ["main"]
    short = build_phases(load_config(RunConfig, [recipe_text("self-tnet")], ["loop.epochs=0", "phases.anneal.cycles.iters=7"]))
    assert short[0].name == "anneal00" and short[0].steps == 7 and len(short) == 15


def test_old_anneal_table_is_refused_with_the_new_form() -> None:
    with pytest.raises(BadInputError, match=r"'anneal'.*phases.anneal.enabled=false"):
        load_config(RunConfig, ["[anneal]\nenabled = false\n"])
    res = runner.invoke(app, ["train", "--recipe", "self-tnet", "--out", "/nonexistent/run", "--set", "anneal.enabled=false"])
    assert res.exit_code == 2 and "the [anneal] table became a phase: [phases.anneal]" in res.output  # not eaten as markup
    with pytest.raises(BadInputError, match="epochs must be >= 0"):
        build_phases(load_config(RunConfig, None, ["loop.epochs=-1"]))


@pytest.mark.usefixtures("one_torch_thread")
def test_toy_miner_trains_through_the_cli(tmp_path: Path) -> None:
    train, _ = write_sets(tmp_path / "data", num_classes=20)
    FirstNegativeMiner.calls = 0
    res = runner.invoke(app, ["train", "--recipe", "triplet", "--data", str(train), "--out", str(tmp_path / "run"),
                              "--set", "loss.miner=test_first_negative", "--set", "loop.epochs=1",
                              "--set", "loop.iters_per_epoch=3", "--set", "loop.classes_per_batch=8",
                              "--set", "loop.device=cpu", "--set", "model.name=tfeat", "--set", "model.params={}",
                              "--set", "loop.log_every=1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert FirstNegativeMiner.calls == 3
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert len(steps) == 3 and all(r["toy"] == 1.0 for r in steps)
    assert 'miner = "test_first_negative"' in (tmp_path / "run" / "config.toml").read_text()
    bad = runner.invoke(app, ["train", "--recipe", "triplet", "--data", str(train), "--out", str(tmp_path / "bad"),
                              "--set", "loss.miner=no_such_miner", "--quiet"])
    assert bad.exit_code == 2 and "unknown miner 'no_such_miner'" in bad.output
