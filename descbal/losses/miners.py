"""Hardest-in-batch mining per class (self-tnet.md §2.2), the default miner of the triplet-like losses.

With unit descriptors x and the no-gradient distance matrix ``D = unit_distance(x x^T)``
(``descbal.losses.distances``):

* every patch's hardest positive ``p(j) = argmax_{k: y_k = y_j} D_jk`` (k = j included);
* its hardest negative ``n(j) = argmin_{k: y_k != y_j, D_jk > 0.008} D_jk`` (near-duplicates
  closer than 0.008 are skipped as probable false negatives);
* per class c, ``i+_c = argmax_{j in c} D_{j,p(j)}`` (the member holding the farthest
  positive) and ``i-_c = argmin_{j in c} D_{j,n(j)}`` (the member holding the closest
  negative).

The loss then recomputes ``a_c = ||x_{i+} - x_{p(i+)}||`` and ``b_c = ||x_{i-} - x_{n(i-)}||``
with gradient. With two patches per class, ``b_c`` is HardNet's "hardest in both directions"
negative over all other patches of the batch.

A miner is called as ``miner(embeddings, labels, reference, batch)`` under ``no_grad`` and
returns :class:`~descbal.losses.tuples.ClassTuples` or
:class:`~descbal.losses.tuples.PairTuples`; ``reference`` is None (mine the batch) or a
:class:`~descbal.losses.tuples.Reference`; ``batch`` is the whole
:class:`~descbal.losses.pipeline.Embedded` batch for miners that need more (most ignore it).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from descbal.losses.distances import distance_matrix
from descbal.losses.registry import register_miner
from descbal.losses.tuples import ClassTuples, Reference, Tuples

NEAR_DUPLICATE = 0.008


class Miner(Protocol):
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, reference: Reference | None = None,
                 batch: Any = None) -> Tuples: ...


@torch.no_grad()
def hardest_per_class(x: torch.Tensor, labels: torch.Tensor, near_duplicate: float = NEAR_DUPLICATE,
                      rows: slice | None = None, classes: torch.Tensor | None = None) -> ClassTuples:
    """Mine one positive and one negative pair per class (see the module docstring).

    Args:
        x: (N, D) unit descriptors (gradient is ignored).
        labels: (N,) class ids; every class must have at least one patch.
        rows: mine only the classes of these rows (whole classes: a distributed rank's
            anchors, ``descbal.losses.sharding``), against all N candidates.
        classes: (C,) the class ids of ``labels`` in ascending order, when known (the trainer
            knows them; without ``rows`` only): found with ``torch.unique`` otherwise.

    Returns:
        :class:`ClassTuples` (indices into the N rows), one entry per class (of ``rows``) in
        ascending class-id order.
    """
    start = 0 if rows is None else int(rows.start or 0)
    anchors = x.detach() if rows is None else x.detach()[rows]
    d = distance_matrix(anchors, None if rows is None else x.detach())  # (R, N)
    own = labels if rows is None else labels[rows]
    same = own[:, None] == labels[None, :]
    big = torch.finfo(d.dtype).max
    dpos = torch.where(same, d, torch.full_like(d, -1.0))
    pmax, pidx = dpos.max(dim=1)
    dneg = torch.where(~same & (d > near_duplicate), d, torch.full_like(d, big))
    nmin, nidx = dneg.min(dim=1)
    if classes is None or rows is not None:
        classes, cls_of = torch.unique(own, return_inverse=True)
    else:  # the same inverse without a data-dependent output size
        cls_of = torch.searchsorted(classes, own)
    c = classes.shape[0]
    ip = arg_per_class(pmax, cls_of, c, largest=True)
    ineg = arg_per_class(nmin, cls_of, c, largest=False)
    valid = nmin[ineg] < big
    return ClassTuples(ip + start, pidx[ip], ineg + start, nidx[ineg], valid)


def arg_per_class(v: torch.Tensor, cls_of: torch.Tensor, c: int, largest: bool) -> torch.Tensor:
    """Per class, the lowest index whose value is the class maximum (or minimum). Shape: (N,) -> (C,)."""
    n = v.shape[0]
    fill = -float("inf") if largest else float("inf")
    best = torch.full((c,), fill, dtype=v.dtype, device=v.device).scatter_reduce(
        0, cls_of, v, reduce="amax" if largest else "amin")
    idx = torch.arange(n, device=v.device)
    cand = torch.where(v == best[cls_of], idx, torch.full_like(idx, n))
    return torch.full((c,), n, dtype=torch.long, device=v.device).scatter_reduce(0, cls_of, cand, reduce="amin")


@register_miner("hardest")
class HardestPerClassMiner:
    """:func:`hardest_per_class` as a registered miner (batch only; in a distributed step, the
    classes of this rank's anchors against the global batch).

    Args:
        near_duplicate: negatives closer than this are skipped (0.008).
    """

    shards_anchors = True
    fullgraph = True

    def __init__(self, near_duplicate: float = NEAR_DUPLICATE) -> None:
        self.near_duplicate = float(near_duplicate)

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, reference: Reference | None = None,
                 batch: Any = None) -> ClassTuples:
        if reference is not None:
            raise ValueError("the 'hardest' miner mines the batch only (no reference set)")
        anchors = getattr(batch, "anchors", None)
        return hardest_per_class(embeddings, labels, self.near_duplicate, None if anchors is None else anchors.rows,
                                 getattr(batch, "classes", None))
