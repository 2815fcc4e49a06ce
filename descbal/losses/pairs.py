"""Pair tuples and float32 similarity helpers shared by the seed losses (DDTAS, memory, OSM).

A **pair tuple** follows pytorch-metric-learning: ``(a1, p, a2, n)``, where ``a1``/``a2`` index the
anchors (rows of the batch) and ``p``/``n`` index the *reference* set: the batch itself, or a
memory of past descriptors. Miners build them under ``no_grad``; losses gather the similarities at
those indices with gradient.

All similarities here are computed in float32 with autocast disabled, whatever the surrounding
autocast context: tolerances like 0.005 are below bfloat16's resolution near 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: ``d = sqrt(max(2 - 2 S, EPS_D2))``: keeps the gradient of ``d`` finite at S -> 1.
EPS_D2 = 1e-6


@dataclass(frozen=True)
class PairTuples:
    """Positive pairs ``(a1[k], p[k])`` and negative pairs ``(a2[k], n[k])``, each index (K,) int64.

    ``a1``/``a2`` index the anchors; ``p``/``n`` index the reference set (the batch when there
    is no separate reference).
    """

    a1: torch.Tensor
    p: torch.Tensor
    a2: torch.Tensor
    n: torch.Tensor

    @property
    def num_pos(self) -> int:
        return int(self.a1.numel())

    @property
    def num_neg(self) -> int:
        return int(self.a2.numel())

    def __len__(self) -> int:
        return self.num_pos + self.num_neg

    @staticmethod
    def from_masks(pos: torch.Tensor, neg: torch.Tensor) -> PairTuples:
        """Pairs at the True entries of two (N, M) bool masks, in row-major order."""
        a1, p = pos.nonzero(as_tuple=True)
        a2, n = neg.nonzero(as_tuple=True)
        return PairTuples(a1, p, a2, n)

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> PairTuples:
        z = torch.zeros(0, dtype=torch.long, device=device)
        return PairTuples(z, z, z, z)


def similarity_matrix(x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarities ``x ref^T`` of unit rows in float32 (autocast off).

    Shape: (N, D), (M, D) -> (N, M); ``ref=None`` means ``x`` itself.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.float()
        rf = xf if ref is None else ref.float()
        return xf @ rf.T


def pair_similarities(x: torch.Tensor, ref: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Similarities ``x[a] . ref[b]`` with gradient, in float32. Shape: (K,).

    Gathers rows when the pairs are few; indexes the dense (N, M) matrix when they are many
    (its gradient is one dense matrix instead of 2 K D gathered values).
    """
    r = x if ref is None else ref
    with torch.autocast(device_type=x.device.type, enabled=False):
        if a.numel() * x.shape[1] > x.shape[0] * r.shape[0]:
            return similarity_matrix(x, ref)[a, b]
        return (x[a].float() * r[b].float()).sum(dim=1)


def unit_distance(sim: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of unit vectors from their similarity, ``sqrt(max(2 - 2 S, 1e-6))``."""
    return torch.sqrt(torch.clamp(2.0 - 2.0 * sim, min=EPS_D2))


def zero_loss(x: torch.Tensor) -> torch.Tensor:
    """An exact float32 zero attached to ``x``'s graph (so ``backward()`` works and gives 0)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return x.float().sum() * 0.0


def per_anchor_sum(values: torch.Tensor, anchors: torch.Tensor, n: int) -> torch.Tensor:
    """Sum of ``values`` (K,) per anchor index (K,) into (n,) float32 (zeros where none)."""
    out = torch.zeros(n, dtype=torch.float32, device=values.device)
    return out.index_add(0, anchors, values.float())


def per_anchor_count(anchors: torch.Tensor, n: int) -> torch.Tensor:
    """Number of pairs per anchor. Shape: (K,) -> (n,) float32."""
    return torch.bincount(anchors, minlength=n).to(torch.float32)


def class_ranks(labels: torch.Tensor) -> torch.Tensor:
    """Rank of each sample among the samples of its label, in batch order. Shape: (N,) -> (N,).

    ``[7, 7, 3, 7, 3] -> [0, 1, 0, 2, 1]``.
    """
    n = labels.shape[0]
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    pos = torch.arange(n, device=labels.device)
    start = torch.ones(n, dtype=torch.bool, device=labels.device)
    start[1:] = sorted_labels[1:] != sorted_labels[:-1]
    first = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), dim=0).values
    ranks = torch.empty_like(pos)
    ranks[order] = pos - first
    return ranks


def class_split(labels: torch.Tensor, fraction: float, minimum: int = 2) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Split a batch by class: the last ``fraction`` of its classes (in order of first appearance).

    Returns ``(keep, held)`` index tensors, or None when either side would have fewer than
    ``minimum`` classes. Patches of one class are never split.
    """
    uniq, inv = torch.unique(labels, return_inverse=True)
    c = uniq.numel()
    held_c = max(minimum, int(round(fraction * c)))
    if c - held_c < minimum:
        return None
    idx = torch.arange(labels.numel(), device=labels.device)
    first = torch.full((c,), labels.numel(), dtype=torch.long, device=labels.device).scatter_reduce(
        0, inv, idx, reduce="amin")
    order = torch.argsort(first)
    held_cls = torch.zeros(c, dtype=torch.bool, device=labels.device)
    held_cls[order[c - held_c:]] = True
    held = held_cls[inv]
    return idx[~held], idx[held]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The eager module behind a ``torch.compile`` wrapper (functional calls need its names)."""
    return getattr(model, "_orig_mod", model)
