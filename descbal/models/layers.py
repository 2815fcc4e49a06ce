"""Building blocks shared by the descriptor networks."""

from __future__ import annotations

import torch
from torch import nn


class FRN(nn.Module):
    """Filter Response Normalisation (Singh & Krishnan, 2020) without the TLU.

    ``y = gamma * x / sqrt(mean_HW(x^2) + |eps|) + beta``; eps is a fixed buffer.
    Parameter names and shapes (``weight``, ``bias``: (1, C, 1, 1); ``eps``: (1,)) follow the
    HyNet release so its state dicts load unchanged.

    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_features: int, eps: float = 1e-6, bias: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1, 1)) if bias else None
        self.register_buffer("eps", torch.tensor([eps]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nu2 = x.pow(2).mean(dim=(2, 3), keepdim=True)
        x = x * torch.rsqrt(nu2 + self.eps.abs())
        x = self.weight * x
        return x + self.bias if self.bias is not None else x

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"


class TLU(nn.Module):
    """Thresholded linear unit ``max(x, tau)`` with a learnable per-channel tau (init -1).

    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.tau = nn.Parameter(torch.full((1, num_features, 1, 1), -1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, self.tau)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"


def patch_standardise(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """HardNet's per-patch input normalisation ``(x - mean) / (std + eps)``, unbiased std.

    Shape: (B, 1, H, W) -> (B, 1, H, W).
    """
    flat = x.flatten(1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1) + eps
    return (x - mean[:, None, None, None]) / std[:, None, None, None]
