"""What a loss sees of a distributed step: the anchors this rank scores, and reductions over ranks.

In a distributed run (``descbal.train.distributed``) the pipeline gets the embeddings of the
whole global batch, gathered in rank order. A pipeline whose loss, miner and reducer all say
``shards_anchors = True`` (the triplet-like losses with the ``hardest`` miner and the ``mean``
reducer) then scores only this rank's anchors -- rows ``start .. stop - 1``, whole classes --
against every candidate of the global batch, and divides by the global count, so the ranks'
losses add up to the single-process loss; statistics that are taken over the whole batch (the
balance loss's medians, the logged means) are reduced over the ranks here. Other pipelines run
on the whole gathered batch on every rank. This module knows nothing of torch.distributed: the
trainer hands in the two reductions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AnchorShard:
    """This rank's anchors: rows ``start .. stop - 1`` of the gathered batch.

    ``num_classes``: the classes of the whole gathered batch (what per-class means divide by);
    ``sum``: a tensor's elementwise sum over the ranks (no gradient); ``gather``: the ranks'
    tensors (of any first dimension) concatenated in rank order (no gradient).
    """

    start: int
    stop: int
    num_classes: int
    sum: Callable[[torch.Tensor], torch.Tensor]
    gather: Callable[[torch.Tensor], torch.Tensor]

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)


def global_means(values: dict[str, torch.Tensor], anchors: AnchorShard | None) -> dict[str, torch.Tensor]:
    """The mean of each (K,) tensor as a detached 0-d tensor (``tensor.mean()``), or with
    ``anchors`` the mean over all ranks' elements (one reduction for all of them; 0 for no
    element). Tensors, not floats: a compiled step converts its statistics once, after it
    (:meth:`descbal.losses.pipeline.StepOutput.floats`)."""
    if anchors is None or not values:
        return {k: v.detach().mean() for k, v in values.items()}
    names = list(values)
    first = values[names[0]]
    sums = torch.stack([values[k].detach().sum().to(first.dtype) for k in names]
                       + [torch.tensor(float(first.numel()), dtype=first.dtype, device=first.device)])
    sums = anchors.sum(sums).to(torch.float64)  # divided in float64, as float(sum) / n was
    n = sums[-1]
    means = torch.where(n > 0, sums[:-1] / n.clamp(min=1), torch.zeros_like(sums[:-1]))
    return {k: means[i] for i, k in enumerate(names)}
