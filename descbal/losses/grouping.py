"""Index helpers over a batch's anchors and classes (no distances here: ``descbal.losses.distances``)."""

from __future__ import annotations

import torch


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
