"""Optimiser and learning-rate schedules mirroring the fastai defaults Self-TNet ran with.

(self-tnet.md §5.5.) Adam with decoupled weight decay (AdamW), betas (0.9, 0.99), eps 1e-5,
weight decay 0.1 on every parameter except biases (fastai's ``wd_bn_bias=False``; FRN betas are
named ``bias`` too). Schedules are fastai's cosine pieces, ``start + (1 + cos(pi (1 - pos)))
(end - start) / 2``:

* ``one_cycle``: lr from ``lr_max / div`` up to ``lr_max`` over the first ``pct_start`` of the
  steps, then down to ``lr_max / div_final``; beta1 from ``moms[0]`` down to ``moms[1]`` and
  back to ``moms[2]`` in the same two phases.
* ``flat_cos``: lr flat at ``lr_max`` for ``pct_start`` of the steps, then cosine to
  ``lr_max / div_final``; beta1 fixed.

A schedule is a pure function of the step, so resuming needs only the step counter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def cosine(start: float, end: float, pos: float) -> float:
    """fastai's ``sched_cos``: cosine interpolation from ``start`` (pos 0) to ``end`` (pos 1)."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate / momentum schedule (defaults: Self-TNet stage 1)."""

    kind: str = "one_cycle"  # "one_cycle" | "flat_cos" | "constant"
    lr_max: float = 3.3e-3
    pct_start: float = 0.25
    div: float = 25.0
    div_final: float = 1e5
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95)
    beta1: float = 0.9  # used when the schedule does not cycle momentum


def schedule_at(cfg: ScheduleConfig, step: int, total: int) -> tuple[float, float]:
    """``(lr, beta1)`` at ``step`` of ``total`` (0-based)."""
    pos = step / max(total, 1)
    if cfg.kind == "constant":
        return cfg.lr_max, cfg.beta1
    if cfg.kind == "flat_cos":
        if pos < cfg.pct_start:
            return cfg.lr_max, cfg.beta1
        p = (pos - cfg.pct_start) / (1 - cfg.pct_start)
        return cosine(cfg.lr_max, cfg.lr_max / cfg.div_final, p), cfg.beta1
    if cfg.kind == "one_cycle":
        if pos < cfg.pct_start:
            p = pos / cfg.pct_start
            return cosine(cfg.lr_max / cfg.div, cfg.lr_max, p), cosine(cfg.moms[0], cfg.moms[1], p)
        p = (pos - cfg.pct_start) / (1 - cfg.pct_start)
        return cosine(cfg.lr_max, cfg.lr_max / cfg.div_final, p), cosine(cfg.moms[1], cfg.moms[2], p)
    raise ValueError(f"unknown schedule {cfg.kind!r}; use one_cycle, flat_cos or constant")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW settings (defaults: fastai's Adam as Self-TNet used it)."""

    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-5
    weight_decay: float = 0.1


def make_optimizer(model: nn.Module, cfg: OptimConfig, lr: float,
                   extra: list[nn.Parameter] | None = None) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on all parameters except those named ``*.bias``.

    ``extra``: trainable parameters outside the model (e.g. a loss's classifier head), decayed.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith("bias") else decay).append(p)
    decay += list(extra or [])
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps)


def set_lr_beta1(opt: torch.optim.Optimizer, lr: float, beta1: float) -> None:
    """Apply one schedule step to every parameter group."""
    for g in opt.param_groups:
        g["lr"] = lr
        g["betas"] = (beta1, g["betas"][1])
