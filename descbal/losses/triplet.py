"""HardNet's triplet margin loss on hardest-in-batch tuples: the baseline.

Per class c: ``max(0, margin + a_c - b_c)`` with a_c the hardest positive distance and b_c the
hardest negative distance (``descbal.losses.miners``); classes without a usable negative get
weight 0; the ``mean`` reducer averages over classes.
"""

from __future__ import annotations

import torch

from descbal.losses.distances import pair_distances
from descbal.losses.pipeline import Embedded, Loss
from descbal.losses.reducers import ClassTerms
from descbal.losses.registry import register_loss
from descbal.losses.sharding import AnchorShard, global_means
from descbal.losses.tuples import ClassTuples, Reference


def class_distances(x: torch.Tensor, t: ClassTuples) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardest positive and negative distances ``(a, b)`` per class, with gradient. Shape: (C,), (C,)."""
    return pair_distances(x, t.pos_a, t.pos_b), pair_distances(x, t.neg_a, t.neg_b)


def shard_of(batch: Embedded | None) -> AnchorShard | None:
    """The batch's :class:`~descbal.losses.sharding.AnchorShard` (a distributed rank's anchors), or None."""
    return None if batch is None else batch.anchors


@register_loss("triplet")
class TripletMargin(Loss):
    """HardNet triplet margin loss (margin 1 by default) on class tuples (distributed: this
    rank's classes against the global batch)."""

    tuples = ClassTuples
    shards_anchors = True
    fullgraph = True

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = float(margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, tuples: ClassTuples, reference: Reference | None,
                batch: Embedded | None = None) -> ClassTerms:
        a, b = class_distances(embeddings, tuples)
        values = torch.clamp(self.margin + a - b, min=0.0)
        anchors = shard_of(batch)
        return ClassTerms(values, tuples.valid.to(values.dtype), global_means({"pos_dist": a, "neg_dist": b}, anchors),
                          count=None if anchors is None else anchors.num_classes)
