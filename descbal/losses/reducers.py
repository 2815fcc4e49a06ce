"""Reducers: per-element loss values (and weights) to the scalar loss.

A loss returns :class:`ClassTerms` (one value per class) or :class:`PairTerms` (one value per
positive and per negative pair, with the pairs' anchors); a registered reducer makes the
scalar. All return an exact float32 0 (not NaN) when there is nothing to reduce.

* ``mean``: ``mean_c(w_c v_c)`` over all classes (zero-weight ones included); for pair terms,
  ``sum(w v) / K`` over all pairs.
* ``sum``: ``sum_k w+_k v+_k + sum_k w-_k v-_k``, optionally divided by ``N (N - 1)`` (the
  ``1 / (2 N_pair)`` factor of Caffe's contrastive layers).
* ``anchor``: per anchor, the positive and negative terms (sums, or means with ``pair_mean``)
  added; anchors without a positive or a negative count as 0 with ``require_both``; then the
  sum over anchors divided by all anchors of the batch or by the active ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from descbal.losses.distances import zero_loss
from descbal.losses.grouping import per_anchor_count, per_anchor_sum
from descbal.losses.registry import register_reducer
from descbal.losses.tuples import Stat


@dataclass(frozen=True)
class ClassTerms:
    """Per-class values (C,) float32 with gradient and optional weights (C,) (no gradient)."""

    values: torch.Tensor
    weights: torch.Tensor | None = None
    stats: dict[str, Stat] = field(default_factory=dict)
    extra: torch.Tensor | None = None  # a scalar added after the reduction (e.g. an auxiliary head's loss)
    count: int | None = None  # classes a mean is over (a distributed rank's share: the global count); None: C


@dataclass(frozen=True)
class PairTerms:
    """Per-pair values of positives (Kp,) and negatives (Kn,), their anchors (row indices) and
    optional weights; ``num_anchors``: the batch's N."""

    pos: torch.Tensor
    neg: torch.Tensor
    pos_anchors: torch.Tensor
    neg_anchors: torch.Tensor
    num_anchors: int
    w_pos: torch.Tensor | None = None
    w_neg: torch.Tensor | None = None
    stats: dict[str, Stat] = field(default_factory=dict)
    extra: torch.Tensor | None = None


Terms = ClassTerms | PairTerms


class Reducer(Protocol):
    def __call__(self, terms: Terms) -> torch.Tensor: ...


def _weighted(v: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    return v if w is None else w * v


def mean_reduce(values: torch.Tensor) -> torch.Tensor:
    """Mean of (C,) values; an exact 0 (not NaN) when empty."""
    if values.numel() == 0:
        return zero_loss(values)
    return values.mean()


@register_reducer("mean")
class MeanReducer:
    """``mean(w v)`` over every element (see the module docstring); class terms with a
    ``count`` (a distributed rank's share) are summed and divided by it."""

    shards_anchors = True
    fullgraph = True

    def __call__(self, terms: Terms) -> torch.Tensor:
        if isinstance(terms, ClassTerms):
            if terms.count is not None:
                return _weighted(terms.values, terms.weights).sum() / max(terms.count, 1)
            return mean_reduce(_weighted(terms.values, terms.weights))
        both = torch.cat([_weighted(terms.pos, terms.w_pos), _weighted(terms.neg, terms.w_neg)])
        return mean_reduce(both)


@register_reducer("sum")
class SumReducer:
    """Weighted sum of the positive and of the negative terms; ``pair_scale``: divide by N (N - 1)."""

    def __init__(self, pair_scale: bool = False) -> None:
        self.pair_scale = bool(pair_scale)

    def __call__(self, terms: Terms) -> torch.Tensor:
        if isinstance(terms, ClassTerms):
            out = _weighted(terms.values, terms.weights).sum()
            n = int(terms.values.numel())
        else:
            out = _weighted(terms.pos, terms.w_pos).sum() + _weighted(terms.neg, terms.w_neg).sum()
            n = terms.num_anchors
        if self.pair_scale and n > 1:
            out = out / (n * (n - 1))  # 1 / (2 N_pair), N_pair = n (n - 1) / 2
        return out


@register_reducer("anchor")
class AnchorReducer:
    """Per-anchor reduction of pair terms (see the module docstring).

    Args:
        pair_mean: average each anchor's positive terms and its negative terms (else sum them).
        require_both: anchors lacking a positive or a negative pair contribute 0.
        over: ``"all"`` (divide by every anchor of the batch) or ``"active"`` (by the anchors
            with both a positive and a negative pair).
    """

    def __init__(self, pair_mean: bool = True, require_both: bool = True, over: str = "all") -> None:
        if over not in ("all", "active"):
            raise ValueError(f"over must be 'all' or 'active', got {over!r}")
        self.pair_mean, self.require_both, self.over = bool(pair_mean), bool(require_both), over

    def __call__(self, terms: Terms) -> torch.Tensor:
        if not isinstance(terms, PairTerms):
            raise ValueError("the 'anchor' reducer needs pair terms (a pair loss)")
        n = terms.num_anchors
        pos = per_anchor_sum(_weighted(terms.pos, terms.w_pos), terms.pos_anchors, n)
        neg = per_anchor_sum(_weighted(terms.neg, terms.w_neg), terms.neg_anchors, n)
        cp, cn = per_anchor_count(terms.pos_anchors, n), per_anchor_count(terms.neg_anchors, n)
        if self.pair_mean:
            pos, neg = pos / cp.clamp(min=1), neg / cn.clamp(min=1)
        per = pos + neg
        active = (cp > 0) & (cn > 0)
        if self.require_both:
            per = torch.where(active, per, torch.zeros_like(per))
        denom = n if self.over == "all" else int(active.sum())
        return per.sum() / max(denom, 1)
