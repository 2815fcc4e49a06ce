"""Inference copies of descriptor networks: the same function in fewer memory passes.

Describing patches is dominated by the network on a CPU (about 99% of ``descbal extract``'s
time after detection), and there most of a layer's time is not the convolution but the
element-wise passes around it. :func:`inference_copy` returns a copy of a model, in eval mode on
the device, that computes the same descriptors (up to float rounding, about 1e-6) with:

* every ``BatchNorm2d`` that follows a ``Conv2d`` in a ``Sequential`` folded into the
  convolution's weights and bias (eval-mode BatchNorm is an affine map per channel);
* ``ReLU`` and :class:`~descbal.models.layers.TLU` done in place where their input is a
  temporary (the output of a convolution, BatchNorm or FRN in the same ``Sequential``);
* FRN layers that keep their input's dtype (under bfloat16 autocast the activations stay
  bfloat16 between convolutions instead of being converted to float32 and back);
* on the CPU, channels-last weights (oneDNN's fast layout; inputs are converted by
  :func:`prepare_input`).

Measured on 2 AMD EPYC cores, 1,024 32x32 patches: HardNet 880 -> 330 ms (170 ms under
bfloat16 autocast); HyNet 1,200 -> 530 ms (290 ms in bfloat16), of which 1,200 -> 860 ms come
from computing the FRN in two passes (:mod:`descbal.models.layers`, which training uses too).
End to end see ``benchmarks/extract.py``. The original model is never modified.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from descbal.models.layers import FRN, TLU

#: Marks a model returned by :func:`inference_copy` (and the device it was made for).
_MARK = "_descbal_inference_device"


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution computing ``bn(conv(x))`` for an eval-mode BatchNorm with running stats.

    ``W' = W * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta`` per output
    channel (``g = 1``, ``beta = 0`` without affine parameters).
    """
    assert bn.running_mean is not None and bn.running_var is not None
    w = conv.weight.detach()
    k = torch.rsqrt(bn.running_var.detach().to(w.dtype) + bn.eps)
    if bn.weight is not None:
        k = k * bn.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(k)
    bias = (b - bn.running_mean.detach().to(w.dtype)) * k
    if bn.bias is not None:
        bias = bias + bn.bias.detach()
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                    conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                    device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w * k.reshape(-1, 1, 1, 1))
        out.bias.copy_(bias)  # type: ignore[union-attr]
    return out


def _foldable(bn: nn.Module) -> bool:
    return isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_mean is not None


def _optimise_sequential(seq: nn.Sequential) -> None:
    names = [name for name, _ in seq.named_children()]
    for name, nxt in zip(names, names[1:], strict=False):
        conv, bn = getattr(seq, name), getattr(seq, nxt)
        if isinstance(conv, nn.Conv2d) and _foldable(bn):
            setattr(seq, name, fold_batchnorm(conv, bn))
            setattr(seq, nxt, nn.Identity())
    producer = None  # the last non-Identity sibling
    for mod in seq.children():
        if isinstance(mod, nn.ReLU | TLU) and isinstance(producer, nn.Conv2d | nn.BatchNorm2d | FRN):
            mod.inplace = True
        if not isinstance(mod, nn.Identity):
            producer = mod


def inference_copy(model: nn.Module, device: str | torch.device | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` on ``device`` (default: where its parameters are),
    optimised as the module docstring says. A model that already is one for this device is
    returned as it is.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if getattr(model, _MARK, None) == dev:
        return model
    out = copy.deepcopy(model).eval().to(device=dev, dtype=torch.float32)  # float32 whatever it trained in
    for mod in out.modules():
        if isinstance(mod, nn.Sequential):
            _optimise_sequential(mod)
        if isinstance(mod, FRN):
            mod.keep_dtype = True
    if dev.type == "cpu":
        out = out.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    for p in out.parameters():
        p.requires_grad_(False)
    setattr(out, _MARK, dev)
    return out


def prepare_input(x: torch.Tensor) -> torch.Tensor:
    """The layout an :func:`inference_copy` is fastest with (channels-last on the CPU)."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" and x.ndim == 4 else x
