"""HardNet (Mishchuk et al., NeurIPS 2017), HardNet8 (Pultar, 2020) and SOSNet (Tian et al., CVPR 2019).

All use the L2-Net layout: six 3x3 convolutions with BatchNorm (no affine) and ReLU, dropout,
an 8x8 convolution and BatchNorm, then L2 normalisation. They differ in input normalisation
(HardNet, HardNet8: per-patch standardisation with unbiased std + 1e-7; SOSNet: InstanceNorm,
eps 1e-5) and in module names, which follow each release so published state dicts load
unchanged. HardNet8 adds a seventh 3x3 convolution (128 -> 256), a 512-d 8x8 head and a PCA
projection to ``dim`` dimensions (the buffers ``mean`` and ``components`` of kornia's release).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from descbal.models.layers import orthogonal_, patch_standardise
from descbal.models.registry import register_model

_WIDTHS = ((1, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1))


def _l2net_body(eps: float) -> list[nn.Module]:
    mods: list[nn.Module] = []
    for cin, cout, stride in _WIDTHS:
        mods += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                 nn.BatchNorm2d(cout, affine=False, eps=eps), nn.ReLU()]
    return mods


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            orthogonal_(m.weight, 0.6)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.01)


@register_model("hardnet")
class HardNet(nn.Module):
    """HardNet: ``features.0`` .. ``features.20`` as in the HardNet release.

    Shape: (B, 1, 32, 32) -> (B, dim), unit L2 norm.
    """

    input_scale = 1.0 / 255.0

    def __init__(self, dim: int = 128, dropout: float = 0.3) -> None:
        super().__init__()
        self.config = {"dim": dim, "dropout": dropout}
        self.features = nn.Sequential(
            *_l2net_body(1e-5), nn.Dropout(dropout), nn.Conv2d(128, dim, 8, bias=False), nn.BatchNorm2d(dim, affine=False)
        )
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(patch_standardise(x)).flatten(1), dim=1)


@register_model("sosnet")
class SOSNet(nn.Module):
    """SOSNet: ``layers.0`` (InstanceNorm) .. ``layers.21`` as in the SOSNet release.

    Shape: (B, 1, 32, 32) -> (B, dim), unit L2 norm.
    """

    input_scale = 1.0 / 255.0

    def __init__(self, dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = {"dim": dim, "dropout": dropout}
        self.layers = nn.Sequential(
            nn.InstanceNorm2d(1, affine=False, eps=1e-5), *_l2net_body(1e-5), nn.Dropout(dropout),
            nn.Conv2d(128, dim, 8, bias=False), nn.BatchNorm2d(dim, affine=False, eps=1e-5),
        )
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(x).flatten(1), dim=1, eps=1e-10)


@register_model("hardnet8")
class HardNet8(nn.Module):
    """HardNet8: ``features.0`` .. ``features.23``, ``mean`` and ``components`` as in kornia's
    ``hardnet8v2.pt``.

    The 512-d head output is L2-normalised, centred by ``mean`` (512,), projected by
    ``components`` (512, dim) and L2-normalised again. A fresh model's projection keeps the first
    ``dim`` coordinates (kornia initialises ``components`` to ones, which makes every descriptor
    the same); published weights replace both buffers.

    Shape: (B, 1, 32, 32) -> (B, dim), unit L2 norm.
    """

    input_scale = 1.0 / 255.0
    head_dim = 512

    def __init__(self, dim: int = 128, dropout: float = 0.3) -> None:
        super().__init__()
        self.config = {"dim": dim, "dropout": dropout}
        self.features = nn.Sequential(
            *_l2net_body(1e-5),
            nn.Conv2d(128, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256, affine=False), nn.ReLU(),
            nn.Dropout(dropout), nn.Conv2d(256, self.head_dim, 8, bias=False), nn.BatchNorm2d(self.head_dim, affine=False),
        )
        _init(self)
        self.register_buffer("components", torch.eye(self.head_dim, dim))
        self.register_buffer("mean", torch.zeros(self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = F.normalize(self.features(patch_standardise(x)).flatten(1), dim=1)
        return F.normalize((head - self.mean) @ self.components, dim=1)
