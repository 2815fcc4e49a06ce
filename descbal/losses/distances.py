"""Distances and similarities of unit descriptors, in float32 whatever the autocast context.

One unit-distance formula for the whole package: ``d = sqrt(max(2 - 2 S, EPS_D2))`` with ``S``
the cosine similarity; the floor keeps the gradient of ``d`` finite at ``S -> 1`` and maps
near-duplicates (and rounding below 0) to ``sqrt(EPS_D2) = 0.001``. Losses that need a
differentiable distance of two *given* rows use :func:`pair_distances` (the norm of the
difference, whose gradient is 0, not NaN, at a zero difference).

Autocast is disabled inside every function and inputs are taken to float32 at least
(:func:`at_least_fp32`: bfloat16 and float16 become float32, float64 stays, for exactness
checks): tolerances such as 0.005 are below bfloat16's resolution near 0.5.
"""

from __future__ import annotations

import torch

#: ``d = sqrt(max(2 - 2 S, EPS_D2))``.
EPS_D2 = 1e-6


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or in its own dtype when that is wider (float64). Shape: any -> same."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def similarity_matrix(x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarities ``x ref^T`` of unit rows in float32. Shape: (N, D), (M, D) -> (N, M);
    ``ref=None`` means ``x`` itself."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = at_least_fp32(x)
        rf = xf if ref is None else at_least_fp32(ref).to(xf.dtype)
        return xf @ rf.T


def unit_distance(sim: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of unit vectors from their similarity, ``sqrt(max(2 - 2 S, 1e-6))``.
    Shape: any -> same."""
    return torch.sqrt(torch.clamp(2.0 - 2.0 * sim, min=EPS_D2))


def distance_matrix(x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`unit_distance` of :func:`similarity_matrix`. Shape: (N, D), (M, D) -> (N, M)."""
    return unit_distance(similarity_matrix(x, ref))


def pair_similarities(x: torch.Tensor, ref: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Similarities ``x[a] . ref[b]`` with gradient, in float32 (at least). Shape: (K,).

    Gathers rows when the pairs are few; indexes the dense (N, M) matrix when they are many
    (its gradient is one dense matrix instead of 2 K D gathered values).
    """
    r = x if ref is None else ref
    with torch.autocast(device_type=x.device.type, enabled=False):
        if a.numel() * x.shape[1] > x.shape[0] * r.shape[0]:
            return similarity_matrix(x, ref)[a, b]
        return (at_least_fp32(x[a]) * at_least_fp32(r[b])).sum(dim=1)


def pair_distances(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plain L2 distances ``||x_a - x_b||`` with gradient, in float32. Shape: (N, D), (K,), (K,) -> (K,)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        # vector_norm's gradient is 0 (not NaN) at a zero difference, e.g. a lone patch taken twice
        return torch.linalg.vector_norm(at_least_fp32(x[a]) - at_least_fp32(x[b]), dim=1)


def zero_loss(x: torch.Tensor) -> torch.Tensor:
    """An exact float32 zero attached to ``x``'s graph (so ``backward()`` works and gives 0)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return at_least_fp32(x).sum() * 0.0
