"""HyNet (Tian et al., NeurIPS 2020), the architecture Self-TNet trains.

L2-Net layout with FRN + TLU, a dropout before the final 8x8 convolution, BatchNorm without
affine parameters and L2 normalisation (self-tnet.md §5.1). Module names follow the HyNet
release (``layer1`` .. ``layer7``) so its weights load unchanged. About 1.34 M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from descbal.models.layers import FRN, TLU, orthogonal_
from descbal.models.registry import register_model


def _block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=True), FRN(cout), TLU(cout)]


@register_model("hynet")
class HyNet(nn.Module):
    """HyNet descriptor network.

    Args:
        dim: descriptor dimension.
        dropout: dropout rate before the last convolution (0.3 in Self-TNet, 0.2 in HyNet).
        init_gain: orthogonal initialisation gain of the convolutions (Self-TNet: 0.6).
        init_bias: initial convolution bias (Self-TNet: 0.01).

    Shape: (B, 1, 32, 32) -> (B, dim), unit L2 norm.
    """

    input_scale = 1.0 / 255.0

    def __init__(self, dim: int = 128, dropout: float = 0.3, init_gain: float = 0.6, init_bias: float = 0.01) -> None:
        super().__init__()
        self.config = {"dim": dim, "dropout": dropout, "init_gain": init_gain, "init_bias": init_bias}
        self.layer1 = nn.Sequential(FRN(1), TLU(1), *_block(1, 32))
        self.layer2 = nn.Sequential(*_block(32, 32))
        self.layer3 = nn.Sequential(*_block(32, 64, stride=2))
        self.layer4 = nn.Sequential(*_block(64, 64))
        self.layer5 = nn.Sequential(*_block(64, 128, stride=2))
        self.layer6 = nn.Sequential(*_block(128, 128))
        self.layer7 = nn.Sequential(
            nn.Dropout(dropout), nn.Conv2d(128, dim, kernel_size=8, bias=False), nn.BatchNorm2d(dim, affine=False)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                orthogonal_(m.weight, init_gain)
                if m.bias is not None:
                    nn.init.constant_(m.bias, init_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4, self.layer5, self.layer6, self.layer7):
            x = layer(x)
        return F.normalize(x.flatten(1), dim=1, eps=1e-10)
