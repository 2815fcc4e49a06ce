"""Schedules and optimiser (self-tnet.md §5.5): fastai's one-cycle / flat-cos and AdamW groups."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from train_fixtures import one_torch_thread  # noqa: F401

from descbal.models import build_model
from descbal.train.optim import OptimConfig, ScheduleConfig, make_optimizer, schedule_at, set_lr_beta1

ONE = ScheduleConfig()  # Self-TNet stage 1: lr_max 3.3e-3, div 25, div_final 1e5, pct 0.25
TOTAL = 1000

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def series(cfg: ScheduleConfig, total: int = TOTAL) -> tuple[np.ndarray, np.ndarray]:
    lr, b1 = zip(*(schedule_at(cfg, s, total) for s in range(total)), strict=True)
    return np.array(lr), np.array(b1)


def test_one_cycle_key_points() -> None:
    assert ONE.kind == "one_cycle" and ONE.lr_max == 3.3e-3
    lr0, b0 = schedule_at(ONE, 0, TOTAL)
    assert lr0 == pytest.approx(3.3e-3 / 25) and lr0 == pytest.approx(1.32e-4)
    assert b0 == pytest.approx(0.95)
    lrp, bp = schedule_at(ONE, 250, TOTAL)  # pct_start
    assert lrp == pytest.approx(3.3e-3) and bp == pytest.approx(0.85)
    lrm, bm = schedule_at(ONE, 125, TOTAL)  # half-way up: the cosine mid-point
    assert lrm == pytest.approx((3.3e-3 / 25 + 3.3e-3) / 2) and bm == pytest.approx(0.90)
    lrd, bd = schedule_at(ONE, 625, TOTAL)  # half-way down
    assert lrd == pytest.approx((3.3e-3 + 3.3e-8) / 2) and bd == pytest.approx(0.90)
    lrf, bf = schedule_at(ONE, TOTAL - 1, TOTAL)
    assert 3.3e-8 < lrf < 3.3e-8 + 3.3e-3 * 1e-4  # the last step is within a hair of lr_max / div_final
    assert bf == pytest.approx(0.95, abs=1e-5)
    assert schedule_at(ONE, TOTAL, TOTAL)[0] == pytest.approx(3.3e-8)  # the end point itself


def test_one_cycle_shape() -> None:
    lr, b1 = series(ONE)
    peak = int(np.argmax(lr))
    assert peak == 250
    assert np.all(np.diff(lr[: peak + 1]) > 0) and np.all(np.diff(lr[peak:]) < 0)
    assert np.all(np.diff(b1[: peak + 1]) < 0) and np.all(np.diff(b1[peak:]) > 0)
    assert lr.max() == pytest.approx(3.3e-3) and b1.min() == pytest.approx(0.85)
    # lr and beta1 move in opposite directions, in lock-step
    np.testing.assert_allclose((lr[:peak] - lr[0]) / (lr[peak] - lr[0]), (0.95 - b1[:peak]) / 0.10, atol=1e-9)


def test_one_cycle_is_fastai_cosine() -> None:
    """fastai's sched_cos: start + (1 + cos(pi (1 - pos))) (end - start) / 2, pos = step / total."""
    cfg = replace(ONE, lr_max=1.0, div=10.0, div_final=100.0, pct_start=0.3)
    for step in (0, 7, 29, 30, 31, 64, 99):
        pos = step / 100
        if pos < 0.3:
            p = pos / 0.3
            want = 0.1 + (1 + math.cos(math.pi * (1 - p))) * (1.0 - 0.1) / 2
        else:
            p = (pos - 0.3) / 0.7
            want = 1.0 + (1 + math.cos(math.pi * (1 - p))) * (0.01 - 1.0) / 2
        assert schedule_at(cfg, step, 100)[0] == pytest.approx(want)


def test_flat_cos() -> None:
    cfg = ScheduleConfig(kind="flat_cos", lr_max=1.5e-6, pct_start=0.6, div_final=1e5, beta1=0.9)
    lr, b1 = series(cfg)
    assert np.all(lr[:600] == 1.5e-6)
    assert np.all(np.diff(lr[600:]) < 0)
    assert lr[800] == pytest.approx((1.5e-6 + 1.5e-11) / 2)
    assert 1.5e-11 < lr[-1] < 1.5e-6 * 1e-4
    assert schedule_at(cfg, TOTAL, TOTAL)[0] == pytest.approx(1.5e-11)
    assert np.all(b1 == 0.9)  # fit_flat_cos has no momentum schedule


def test_constant_and_unknown() -> None:
    cfg = ScheduleConfig(kind="constant", lr_max=0.01, beta1=0.8)
    assert {schedule_at(cfg, s, 10) for s in range(10)} == {(0.01, 0.8)}
    with pytest.raises(ValueError, match="linear"):
        schedule_at(ScheduleConfig(kind="linear"), 0, 10)


def test_schedule_is_a_pure_function_of_the_step() -> None:
    a = [schedule_at(ONE, s, 40) for s in (5, 17, 5)]
    assert a[0] == a[2]


def group_of(opt: torch.optim.Optimizer) -> dict[int, float]:
    """id(parameter) -> weight decay of its group."""
    return {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("name", ["hynet", "hardnet", "sosnet", "tfeat"])
def test_biases_are_not_decayed(name: str) -> None:
    m = build_model(name)
    opt = make_optimizer(m, OptimConfig(), lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    wd = group_of(opt)
    params = dict(m.named_parameters())
    assert set(wd) == {id(p) for p in params.values()}  # every parameter exactly once
    for n, p in params.items():
        assert wd[id(p)] == (0.0 if n.endswith(".bias") else 0.1), n
    for g in opt.param_groups:
        assert g["betas"] == (0.9, 0.99) and g["eps"] == 1e-5 and g["lr"] == 1e-3
        assert not g.get("amsgrad", False)


def test_hynet_groups_in_detail() -> None:
    """FRN betas are named ``bias`` and are not decayed; FRN gammas and TLU taus are."""
    m = build_model("hynet")
    wd = group_of(make_optimizer(m, OptimConfig(weight_decay=0.25), lr=1e-3))
    names = dict(m.named_parameters())
    no_decay = sorted(n for n, p in names.items() if wd[id(p)] == 0.0)
    assert "layer1.0.bias" in no_decay  # the input FRN's beta
    assert "layer1.2.bias" in no_decay  # a convolution's bias
    assert all(n.endswith("bias") for n in no_decay)
    assert len(no_decay) == 6 + 7  # 6 conv biases, 7 FRN betas
    for n in ("layer1.0.weight", "layer1.1.tau", "layer7.1.weight", "layer3.0.weight"):
        assert wd[id(names[n])] == 0.25, n


def test_frozen_parameters_are_left_out() -> None:
    m = nn.Linear(3, 2)
    m.weight.requires_grad_(False)
    opt = make_optimizer(m, OptimConfig(), lr=1e-3)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(m.bias)}


def test_adamw_step_by_hand() -> None:
    """One and two steps on a one-parameter model, computed with fastai's formulas (decoupled
    decay p <- p (1 - lr wd), bias-corrected moments)."""
    w0, lr, wd, b1, b2, eps = 0.7, 0.01, 0.1, 0.9, 0.99, 1e-5
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(w0)
    opt = make_optimizer(m, OptimConfig(betas=(b1, b2), eps=eps, weight_decay=wd), lr=lr)
    x = torch.tensor([[2.0]])
    w, mom, sq = w0, 0.0, 0.0
    for t in (1, 2):
        opt.zero_grad()
        (m(x) ** 2).sum().backward()
        g = 2 * (w * 2.0) * 2.0  # d/dw (2 w)^2
        w = w * (1 - lr * wd)
        mom = b1 * mom + (1 - b1) * g
        sq = b2 * sq + (1 - b2) * g * g
        w = w - lr * (mom / (1 - b1**t)) / (math.sqrt(sq / (1 - b2**t)) + eps)
        opt.step()
        assert m.weight.item() == pytest.approx(w, rel=1e-6)


def test_set_lr_beta1_applies_to_all_groups() -> None:
    m = build_model("tfeat")
    opt = make_optimizer(m, OptimConfig(), lr=1.0)
    set_lr_beta1(opt, 0.123, 0.85)
    for g in opt.param_groups:
        assert g["lr"] == 0.123 and g["betas"] == (0.85, 0.99)


def test_extra_parameters_are_decayed() -> None:
    """Trainable parameters outside the model (e.g. a loss's head) join the decayed group."""
    m = build_model("tfeat")
    head = nn.Linear(4, 2)
    opt = make_optimizer(m, OptimConfig(weight_decay=0.3), lr=1e-3, extra=list(head.parameters()))
    wd = group_of(opt)
    assert wd[id(head.weight)] == 0.3 and wd[id(head.bias)] == 0.3
    assert len(wd) == len(list(m.parameters())) + 2
