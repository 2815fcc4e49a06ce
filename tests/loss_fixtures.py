"""Calling the loss pipeline from tests the way the trainer does."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from descbal.losses import Embedded, LossPipeline, StepOutput, build_pipeline
from descbal.losses.miners import hardest_per_class
from descbal.losses.pipeline import Loss
from descbal.train.step import loss_step


def objective(loss: str | Loss | LossPipeline, model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
              **params: Any) -> StepOutput:
    """One training step's loss of ``model`` on ``x``: the trainer's forward, then the pipeline."""
    pipe = loss if isinstance(loss, LossPipeline) else (
        LossPipeline(loss) if isinstance(loss, Loss) else build_pipeline(loss, params))
    return loss_step(model, pipe, x, labels)


def embedded(loss: str | Loss | LossPipeline, desc: torch.Tensor, labels: torch.Tensor, **batch: Any) -> StepOutput:
    """The pipeline's loss of given embeddings (no network)."""
    pipe = loss if isinstance(loss, LossPipeline) else (LossPipeline(loss) if isinstance(loss, Loss) else build_pipeline(loss))
    return pipe(Embedded(desc.float(), labels, **batch))


def per_class(loss: Loss, desc: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted per-class values ``w v`` (C,) of a class-tuple loss on hardest-in-batch tuples, and its statistics."""
    t = hardest_per_class(desc, labels)
    terms = loss(desc.float(), labels, t, None, Embedded(desc.float(), labels, teacher=teacher))
    w = terms.weights
    return (terms.values if w is None else w * terms.values), terms.stats


def mine(miner: Any, desc: torch.Tensor, labels: torch.Tensor) -> tuple[Any, dict[str, float]]:
    """A miner's tuples and their statistics."""
    t = miner(desc, labels)
    return t, t.stats
