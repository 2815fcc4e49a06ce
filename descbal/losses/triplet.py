"""HardNet's triplet margin loss on hardest-in-batch tuples: the baseline.

Per class c: ``max(0, margin + a_c - b_c)`` with a_c the hardest positive distance and b_c the
hardest negative distance (``descbal.losses.mining``); the reducer averages over classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from descbal.losses.mining import hardest_per_class, pair_distances
from descbal.losses.registry import register_loss


def mean_reduce(per_class: torch.Tensor) -> torch.Tensor:
    """Mean over classes; an exact 0 (not NaN) for an empty batch."""
    if per_class.numel() == 0:
        return per_class.sum() * 0.0
    return per_class.mean()


@dataclass
class StepOutput:
    """What an objective returns for one batch: the scalar loss and float statistics."""

    loss: torch.Tensor
    stats: dict[str, float]


@register_loss("triplet")
class TripletMargin:
    """HardNet triplet margin loss (margin 1 by default).

    ``__call__(model, x, labels)`` runs the model, mines on the detached descriptors and
    returns a :class:`StepOutput`. Distances are computed in float32 even under autocast.
    """

    def __init__(self, margin: float = 1.0) -> None:
        self.margin = margin

    def per_class(self, desc: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(C,) losses and statistics for unit descriptors ``desc`` (N, D)."""
        t = hardest_per_class(desc, labels)
        a = pair_distances(desc, t.pos_a, t.pos_b)
        b = pair_distances(desc, t.neg_a, t.neg_b)
        loss = torch.clamp(self.margin + a - b, min=0.0) * t.valid
        return loss, {"pos_dist": float(a.detach().mean()), "neg_dist": float(b.detach().mean())}

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        desc = model(x).float()
        per, stats = self.per_class(desc, labels)
        return StepOutput(mean_reduce(per), stats)
