"""Batched on-device augmentation with the distribution of Self-TNet's (self-tnet.md §5.3).

The authors augment each patch on the CPU with PIL: edge-pad 3 px; ``RandomAffine(degrees=5,
scale=(1, 1.14), shear=5)`` (bicubic); ``RandomResizedCrop(32, scale=(0.9, 1), ratio=(0.9,
1.1))``; then, shared by all patches of a class, a transpose and a horizontal flip, each with
p = 0.5. Here the affine map and the crop are composed into one sampling grid per patch and
applied to the whole batch by one ``grid_sample`` (bicubic, border padding = edge padding) at
twice the output resolution followed by a 2x2 box filter, which stands in for the antialiased
resize of the crop. Parameters are drawn with numpy from ``(seed, epoch, batch, "aug")``, so
the same seed gives the same batch on any device.

Pixel convention: pixel centres at integer coordinates; patch (H, W) spans [-0.5, W - 0.5].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation knobs (defaults: Self-TNet's)."""

    pad: int = 3  # edge padding before the affine map, px
    degrees: float = 5.0  # rotation uniform in [-degrees, degrees]
    scale: tuple[float, float] = (1.0, 1.14)  # zoom factor range
    shear: float = 5.0  # x-shear angle uniform in [-shear, shear], degrees
    crop_scale: tuple[float, float] = (0.9, 1.0)  # crop area / padded area
    crop_ratio: tuple[float, float] = (0.9, 1.1)  # crop aspect ratio w / h (log-uniform)
    flip_p: float = 0.5  # horizontal flip, shared by a class
    transpose_p: float = 0.5  # transpose, shared by a class
    out_size: int = 32


@dataclass(frozen=True)
class AugmentParams:
    """Per-patch source-from-output affine maps and per-patch flips.

    ``theta`` (B, 2, 3): maps output pixel coordinates at twice the output resolution,
    ``(u, v, 1)``, to source pixel coordinates ``(x, y)`` in the un-padded input patch.
    ``flip``, ``transpose`` (B,) bool.
    """

    theta: NDArray[np.float64]
    flip: NDArray[np.bool_]
    transpose: NDArray[np.bool_]


def identity_params(n: int, in_size: int = 64, out_size: int = 32) -> AugmentParams:
    """Parameters that reproduce a plain resize of the whole patch (no augmentation)."""
    s = in_size / (2 * out_size)
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0] = theta[:, 1, 1] = s
    theta[:, :, 2] = 0.5 * s - 0.5
    return AugmentParams(theta, np.zeros(n, bool), np.zeros(n, bool))


def sample_params(
    cfg: AugmentConfig, class_pos: NDArray[np.int64], num_classes: int, rng: np.random.Generator, in_size: int = 64
) -> AugmentParams:
    """Draw augmentation parameters for a batch.

    Args:
        class_pos: (B,) position of each patch's class in the batch, 0..num_classes-1 (the
            flips and transposes are drawn per class and shared).
        rng: the batch's generator.
    """
    n = len(class_pos)
    padded = in_size + 2 * cfg.pad
    c = (padded - 1) / 2.0
    ang = np.deg2rad(rng.uniform(-cfg.degrees, cfg.degrees, n))
    shear = np.deg2rad(rng.uniform(-cfg.shear, cfg.shear, n))
    zoom = rng.uniform(cfg.scale[0], cfg.scale[1], n)
    # RandomResizedCrop: area and log-aspect uniform; torchvision retries up to 10 times, then
    # falls back to the whole image. With these ranges the first draw always fits.
    area = padded * padded * rng.uniform(cfg.crop_scale[0], cfg.crop_scale[1], n)
    logr = rng.uniform(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), n)
    w = np.minimum(np.rint(np.sqrt(area * np.exp(logr))), padded)
    h = np.minimum(np.rint(np.sqrt(area / np.exp(logr))), padded)
    top = np.floor(rng.random(n) * (padded - h + 1))
    left = np.floor(rng.random(n) * (padded - w + 1))
    flip = rng.random(num_classes) < cfg.flip_p
    transpose = rng.random(num_classes) < cfg.transpose_p
    # Output (at 2x resolution) -> crop in the affine output: x = left + (u + .5) w / (2 S) - .5
    s2 = 2 * cfg.out_size
    crop = np.zeros((n, 3, 3))
    crop[:, 0, 0] = w / s2
    crop[:, 1, 1] = h / s2
    crop[:, 0, 2] = left + 0.5 * w / s2 - 0.5
    crop[:, 1, 2] = top + 0.5 * h / s2 - 0.5
    crop[:, 2, 2] = 1
    # Affine output -> padded input: p_in = C + A^-1 (p_out - C), A = zoom * R(ang) * Shear_x.
    ca, sa, ts = np.cos(ang), np.sin(ang), np.tan(shear)
    a = np.zeros((n, 2, 2))
    a[:, 0, 0], a[:, 0, 1] = ca, ca * ts - sa
    a[:, 1, 0], a[:, 1, 1] = sa, sa * ts + ca
    a *= zoom[:, None, None]
    ainv = np.linalg.inv(a)
    aff = np.zeros((n, 3, 3))
    aff[:, :2, :2] = ainv
    aff[:, :2, 2] = c - ainv @ np.array([c, c])
    aff[:, 2, 2] = 1
    unpad = np.eye(3)
    unpad[:2, 2] = -cfg.pad
    theta = (unpad @ aff @ crop)[:, :2, :]
    return AugmentParams(theta, flip[class_pos], transpose[class_pos])


def apply_augment(patches: torch.Tensor, params: AugmentParams, out_size: int = 32) -> torch.Tensor:
    """Resample uint8 patches with per-patch maps, box-filter 2x, apply flips/transposes.

    Args:
        patches: (B, H, W) uint8 on any device.
        params: from :func:`sample_params` or :func:`identity_params`.

    Returns:
        (B, 1, out_size, out_size) float32 in [0, 1] on the patches' device.
    """
    b, hin, win = patches.shape
    dev = patches.device
    s2 = 2 * out_size
    theta = torch.as_tensor(params.theta, dtype=torch.float32, device=dev)
    # pixel -> normalised coordinates (align_corners=False): g = (2 x + 1) / W - 1
    to_norm_x = torch.tensor([[2.0 / win, 0, 1.0 / win - 1], [0, 2.0 / hin, 1.0 / hin - 1]], device=dev)
    u = torch.arange(s2, device=dev, dtype=torch.float32)
    gy, gx = torch.meshgrid(u, u, indexing="ij")
    ones = torch.ones_like(gx)
    pts = torch.stack([gx, gy, ones], dim=-1).reshape(-1, 3)  # (S2*S2, 3)
    src = torch.einsum("bij,pj->bpi", theta, pts)  # (B, P, 2) pixel coords
    norm = torch.einsum("ij,bpj->bpi", to_norm_x[:, :2], src) + to_norm_x[:, 2]
    grid = norm.reshape(b, s2, s2, 2)
    x = patches.to(torch.float32).unsqueeze(1) / 255.0
    out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
    out = F.avg_pool2d(out, 2).clamp_(0.0, 1.0)
    tr = torch.as_tensor(params.transpose, device=dev)[:, None, None, None]
    out = torch.where(tr, out.transpose(-1, -2), out)
    fl = torch.as_tensor(params.flip, device=dev)[:, None, None, None]
    return torch.where(fl, out.flip(-1), out)


def network_input(patches: torch.Tensor, params: AugmentParams | None, input_scale: float,
                  out_size: int = 32) -> torch.Tensor:
    """What training feeds the network: uint8 patches resampled by ``params`` (None: a plain
    resize, no augmentation) in the model's input units (``input_scale`` x grey levels 0..255).

    Shape: (B, H, W) uint8 -> (B, 1, out_size, out_size) float32, on the patches' device.
    """
    if params is None:
        params = identity_params(len(patches), patches.shape[-1], out_size)
    return apply_augment(patches, params, out_size) * float(input_scale * 255.0)
