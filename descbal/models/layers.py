"""Building blocks shared by the descriptor networks."""

from __future__ import annotations

import torch
from torch import nn


def _frn_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: torch.Tensor,
                 dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, r)`` with r = 1 / RMS (B, C, 1, 1) in the parameters' dtype.

    Two passes over x instead of five: the squared norm is a reduction (no x-sized temporary),
    and gamma / RMS folds into one (B, C, 1, 1) factor applied by addcmul.
    """
    nu2 = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True).to(weight.dtype).square() / (x.shape[2] * x.shape[3])
    r = torch.rsqrt(nu2 + eps.abs())
    s = (weight * r).to(dt)
    y = x * s if bias is None else torch.addcmul(bias.to(dt), x, s)
    return y, r


class _FRNScale(torch.autograd.Function):
    """FRN with its gradient in closed form (eps is a constant).

    With n = H W, r = (mean_HW x^2 + eps)^-1/2 and G = sum_HW(g x) per (b, c):
    dx = g w r - x w r^3 G / n, dw = sum_b G r, db = sum_bHW g. Two x-sized passes for dx and
    one for G, where autograd's chain through the norm took about six.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                eps: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
        y, r = _frn_forward(x, weight, bias, eps, dt)
        ctx.save_for_backward(x, weight, r)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight, r = ctx.saved_tensors
        n = x.shape[2] * x.shape[3]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            g_dot_x = (grad * x).sum(dim=(2, 3), keepdim=True).to(r.dtype)  # (B, C, 1, 1)
        if ctx.needs_input_grad[0]:
            wr = weight * r
            grad_x = (grad * wr.to(grad.dtype)).addcmul_(x, (-wr * r.square() * g_dot_x / n).to(grad.dtype))
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (g_dot_x * r).sum(dim=0, keepdim=True)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3), keepdim=True).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None


class FRN(nn.Module):
    """Filter Response Normalisation (Singh & Krishnan, 2020) without the TLU.

    ``y = gamma * x / sqrt(mean_HW(x^2) + |eps|) + beta``; eps is a fixed buffer.
    Parameter names and shapes (``weight``, ``bias``: (1, C, 1, 1); ``eps``: (1,)) follow the
    HyNet release so its state dicts load unchanged.

    ``keep_dtype`` (not saved in state dicts): return x's dtype (bfloat16 under autocast) instead
    of promoting to the parameters' float32; :func:`descbal.models.inference.inference_copy`
    sets it so bfloat16 inference does not convert every activation twice.

    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_features: int, eps: float = 1e-6, bias: bool = True, keep_dtype: bool = False) -> None:
        super().__init__()
        self.num_features = num_features
        self.keep_dtype = keep_dtype
        self.weight = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1, 1)) if bias else None
        self.register_buffer("eps", torch.tensor([eps]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype if self.keep_dtype else torch.promote_types(x.dtype, self.weight.dtype)
        if torch.is_grad_enabled():
            return _FRNScale.apply(x, self.weight, self.bias, self.eps, dt)
        return _frn_forward(x, self.weight, self.bias, self.eps, dt)[0]

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"


class _TLUMax(torch.autograd.Function):
    """``max(x, tau)`` with a one-mask backward.

    Autograd's own backward of ``torch.maximum`` splits ties and builds several x-sized masks; it
    was a quarter of a HyNet training step on the CPU. Here the forward saves one boolean mask
    (``x > tau``, a byte per element instead of x's four) and the backward is one multiply and
    one reduction. Ties (x == tau) send the gradient to tau, a valid subgradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        above = x > tau
        ctx.save_for_backward(above)
        return torch.maximum(x, tau)  # (not where(): NaNs must propagate)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        (above,) = ctx.saved_tensors
        grad_x = grad * above
        grad_tau = (grad - grad_x).sum(dim=(0, 2, 3), keepdim=True)
        return grad_x, grad_tau


class TLU(nn.Module):
    """Thresholded linear unit ``max(x, tau)`` with a learnable per-channel tau (init -1).

    ``inplace`` (not saved in state dicts) overwrites the input when no gradient is being
    recorded; :func:`descbal.models.inference.inference_copy` sets it where the input is a
    temporary.

    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_features: int, inplace: bool = False) -> None:
        super().__init__()
        self.num_features = num_features
        self.inplace = inplace
        self.tau = nn.Parameter(torch.full((1, num_features, 1, 1), -1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tau = self.tau.to(x.dtype)
        if not torch.is_grad_enabled():
            return x.clamp_(min=tau) if self.inplace else torch.maximum(x, tau)
        return _TLUMax.apply(x, tau)

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


def orthogonal_(weight: torch.Tensor, gain: float) -> torch.Tensor:
    """``nn.init.orthogonal_`` on one CPU thread, so that a model's initial weights depend on the
    seed alone: its QR decomposition (LAPACK) gives different bits with different thread counts,
    and an untrained network or a run's start would differ between machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return nn.init.orthogonal_(weight, gain=gain)
    finally:
        torch.set_num_threads(before)
