"""Describing uint8 patches with a model: resizing to 32x32 as the reference pipelines do.

* 64x64 -> 32x32 (Brown): ``cv2.resize`` INTER_LINEAR on uint8 equals ``(2x2 block sum + 2)
  >> 2`` exactly (protocols.md §2.10).
* 65x65 -> 32x32 (HPatches, HardNet's extraction): a bit-exact vectorised replica of OpenCV's
  fixed-point INTER_LINEAR path (11-bit coefficients, the horizontal pass in int32, the
  vertical pass with its two 16-bit shifts and the final ``(v + 2) >> 2``).
* other sizes: ``cv2.resize`` per patch.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from descbal.models.inference import inference_copy, prepare_input

_BITS = 11


def _linear_taps(src: int, dst: int) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """OpenCV's INTER_LINEAR source indices and 11-bit weights along one axis."""
    scale = src / dst
    j = np.arange(dst)
    f = ((j + 0.5) * scale - 0.5).astype(np.float32)
    x0 = np.floor(f).astype(np.int64)
    fx = (f - x0).astype(np.float32)
    low = x0 < 0
    x0[low], fx[low] = 0, 0
    high = x0 >= src - 1
    x0[high], fx[high] = src - 1, 0
    x1 = np.minimum(x0 + 1, src - 1)
    a0 = np.rint((1 - fx) * (1 << _BITS)).astype(np.int64)
    a1 = np.rint(fx * (1 << _BITS)).astype(np.int64)
    return x0, x1, a0, a1


def resize_linear_u8(patches: NDArray[np.uint8], size: int = 32) -> NDArray[np.uint8]:
    """``cv2.resize(p, (size, size))`` (INTER_LINEAR, uint8) for a stack of square patches.

    Shape: (N, S, S) -> (N, size, size) uint8, bit-identical to OpenCV for S = 2 * size and
    S = 65, size = 32 (and computed by OpenCV itself otherwise).
    """
    p = np.asarray(patches, dtype=np.uint8)
    n, h, w = p.shape
    if h == w == 2 * size:
        s = p.reshape(n, size, 2, size, 2).astype(np.uint16).sum(axis=(2, 4))
        return ((s + 2) >> 2).astype(np.uint8)
    if h == w == 65 and size == 32:
        x0, x1, a0, a1 = _linear_taps(w, size)
        hz = p[:, :, x0].astype(np.int64) * a0 + p[:, :, x1].astype(np.int64) * a1  # (N, H, size)
        y0, y1, b0, b1 = _linear_taps(h, size)
        v = ((b0[:, None] * (hz[:, y0, :] >> 4)) >> 16) + ((b1[:, None] * (hz[:, y1, :] >> 4)) >> 16)
        return ((v + 2) >> 2).clip(0, 255).astype(np.uint8)
    return np.stack([cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR) for x in p])


def patch_tensor(small: NDArray[np.uint8], scale: float, device: str | torch.device = "cpu") -> torch.Tensor:
    """The network input of 32x32 uint8 patches: float32 grey levels times ``scale`` (a model's
    ``input_scale``). Shape: (N, 32, 32) uint8 -> (N, 1, 32, 32) float32."""
    return torch.from_numpy(np.ascontiguousarray(small, np.uint8)).to(device).float().unsqueeze(1) * scale


@torch.inference_mode()
def describe(model: nn.Module, patches: NDArray[np.uint8], batch_size: int = 2048,
             device: str | torch.device | None = None) -> NDArray[np.float32]:
    """Descriptors of uint8 grey patches with the model in eval mode.

    Patches are resized to 32x32 with :func:`resize_linear_u8` (uint8, like the reference
    extraction scripts), multiplied by ``model.input_scale`` and fed in batches to an
    :func:`~descbal.models.inference.inference_copy` of the model (pass one to skip the copy
    when describing many times). The model itself is not modified.

    ``device``: where the model runs (default: where its parameters are).

    Shape: (N, H, W) uint8 -> (N, D) float32.
    """
    net = inference_copy(model, device)
    dev = next(net.parameters()).device
    small = resize_linear_u8(patches) if patches.shape[1:] != (32, 32) else np.asarray(patches, np.uint8)
    scale = float(getattr(net, "input_scale", 1.0))
    out = []
    for s in range(0, len(small), batch_size):
        x = patch_tensor(small[s : s + batch_size], scale, dev)
        out.append(net(prepare_input(x)).float().cpu())
    if not out:  # the descriptor width, from one blank patch
        dim = net(torch.zeros(1, 1, 32, 32, device=dev)).shape[1]
        return np.zeros((0, dim), np.float32)
    return torch.cat(out).numpy()
