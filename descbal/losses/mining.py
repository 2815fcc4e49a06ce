"""Hardest-in-batch mining per class (self-tnet.md §2.2), shared by every loss.

With unit descriptors x and the no-gradient distance matrix
``D_jk = sqrt(|2 - 2 x_j . x_k| + 1e-6)``:

* every patch's hardest positive ``p(j) = argmax_{k: y_k = y_j} D_jk`` (k = j included);
* its hardest negative ``n(j) = argmin_{k: y_k != y_j, D_jk > 0.008} D_jk`` (near-duplicates
  closer than 0.008 are skipped as probable false negatives);
* per class c, ``i+_c = argmax_{j in c} D_{j,p(j)}`` (the member holding the farthest
  positive) and ``i-_c = argmin_{j in c} D_{j,n(j)}`` (the member holding the closest
  negative).

The loss then recomputes ``a_c = ||x_{i+} - x_{p(i+)}||`` and ``b_c = ||x_{i-} - x_{n(i-)}||``
with gradient. With two patches per class, ``b_c`` is HardNet's "hardest in both directions"
negative over all other patches of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEAR_DUPLICATE = 0.008


@dataclass(frozen=True)
class ClassTuples:
    """Per-class mined indices into the batch, each (C,) int64.

    ``pos_a``/``pos_b``: the hardest positive pair; ``neg_a``/``neg_b``: the hardest negative
    pair. ``valid`` (C,) bool: False where the class has no usable negative.
    """

    pos_a: torch.Tensor
    pos_b: torch.Tensor
    neg_a: torch.Tensor
    neg_b: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return int(self.pos_a.shape[0])


def distance_matrix(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(|2 - 2 x x^T| + 1e-6)`` in float32 for unit rows. Shape: (N, D) -> (N, N)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        return torch.sqrt((2.0 - 2.0 * (x @ x.T)).abs() + 1e-6)


@torch.no_grad()
def hardest_per_class(x: torch.Tensor, labels: torch.Tensor, near_duplicate: float = NEAR_DUPLICATE) -> ClassTuples:
    """Mine one positive and one negative pair per class (see the module docstring).

    Args:
        x: (N, D) unit descriptors (gradient is ignored).
        labels: (N,) class ids; every class must have at least one patch.

    Returns:
        :class:`ClassTuples`, one entry per class in ascending class-id order.
    """
    d = distance_matrix(x.detach())
    same = labels[:, None] == labels[None, :]
    big = torch.finfo(d.dtype).max
    dpos = torch.where(same, d, torch.full_like(d, -1.0))
    pmax, pidx = dpos.max(dim=1)
    dneg = torch.where(~same & (d > near_duplicate), d, torch.full_like(d, big))
    nmin, nidx = dneg.min(dim=1)
    classes, cls_of = torch.unique(labels, return_inverse=True)
    c = classes.shape[0]
    ip = _arg_per_class(pmax, cls_of, c, largest=True)
    ineg = _arg_per_class(nmin, cls_of, c, largest=False)
    valid = nmin[ineg] < big
    return ClassTuples(ip, pidx[ip], ineg, nidx[ineg], valid)


def _arg_per_class(v: torch.Tensor, cls_of: torch.Tensor, c: int, largest: bool) -> torch.Tensor:
    """Per class, the lowest index whose value is the class maximum (or minimum). Shape: (C,)."""
    n = v.shape[0]
    fill = -float("inf") if largest else float("inf")
    best = torch.full((c,), fill, dtype=v.dtype, device=v.device).scatter_reduce(
        0, cls_of, v, reduce="amax" if largest else "amin")
    idx = torch.arange(n, device=v.device)
    cand = torch.where(v == best[cls_of], idx, torch.full_like(idx, n))
    return torch.full((c,), n, dtype=torch.long, device=v.device).scatter_reduce(0, cls_of, cand, reduce="amin")


def pair_distances(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plain L2 distances ``||x_a - x_b||`` with gradient, in float32. Shape: (C,)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        # vector_norm's gradient is 0 (not NaN) at a zero difference, e.g. a lone patch taken twice
        return torch.linalg.vector_norm(x[a].float() - x[b].float(), dim=1)
