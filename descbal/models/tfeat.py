"""TFeat (Balntas et al., BMVC 2016): a shallow triplet network.

Layout of the official release (``features`` with InstanceNorm, 7x7 conv, tanh, max-pool, 6x6
conv, tanh; ``descr`` = linear 4096 -> 128 and tanh); outputs are *not* unit-normalised unless
``normalize=True``. Inputs are raw 0-255 intensities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from descbal.models.registry import register_model


@register_model("tfeat")
class TFeat(nn.Module):
    """TFeat descriptor network.

    Args:
        normalize: L2-normalise the output (the release does not).

    Shape: (B, 1, 32, 32) -> (B, 128).
    """

    input_scale = 1.0

    def __init__(self, normalize: bool = False) -> None:
        super().__init__()
        self.config = {"normalize": normalize}
        self.normalize = normalize
        self.features = nn.Sequential(
            nn.InstanceNorm2d(1, affine=False), nn.Conv2d(1, 32, 7), nn.Tanh(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 6), nn.Tanh(),
        )
        self.descr = nn.Sequential(nn.Linear(64 * 8 * 8, 128), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.descr(self.features(x).flatten(1))
        return F.normalize(d, dim=1) if self.normalize else d
