"""Layers whose training-mode forward depends on the whole batch, made to see the global batch
on each rank of a distributed run (``descbal.train.distributed``).

* :class:`GlobalBatchNorm1d` / :class:`GlobalBatchNorm2d`: BatchNorm whose batch mean and
  variance are those of the global batch (two differentiable all-reduces of per-channel sums,
  the mean first, then the squared deviations from it), on any backend (gloo too, where torch's
  SyncBatchNorm does not run). Running statistics get the same update on every rank.
* :class:`ShardedDropout`: dropout that draws the global batch's mask, as a single process
  would for the same seed, and keeps this rank's rows, so a row's mask does not depend on the
  number of ranks (one global-batch-sized temporary per call).

Both are subclasses of the torch layers they replace (same state-dict keys; eval mode and
runs without a process group are the torch layer's forward). :func:`distribute_layers` swaps
them into a model; :func:`sharded_rows` tells dropout where this rank's rows lie.
FRN (HyNet's other normalisation) is per sample and needs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from descbal.train import distributed

#: ``(offset, total)``: this rank's first row and the global batch's rows, during a student pass.
_ROWS: ContextVar[tuple[int, int] | None] = ContextVar("descbal_sharded_rows", default=None)


@contextmanager
def sharded_rows(offset: int, total: int) -> Iterator[None]:
    """Within the block, train-mode dropout treats its input as rows ``offset ..`` of a
    ``total``-row global batch."""
    token = _ROWS.set((int(offset), int(total)))
    try:
        yield
    finally:
        _ROWS.reset(token)


class _GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = distributed.current()
        if not self.training or ctx is None:
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.ndim)]
        view = (1, c) + (1,) * (x.ndim - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in float32 at least
        local = torch.tensor([x.numel() // c], dtype=xf.dtype, device=x.device)
        sums = distributed.all_reduce_sum(torch.cat([xf.sum(dim=dims), local]), ctx)
        n = float(sums[-1].item())
        mean = sums[:c] / n
        dev = xf - mean.view(view)
        var = distributed.all_reduce_sum((dev * dev).sum(dim=dims), ctx) / n
        y = dev * torch.rsqrt(var + self.eps).view(view)
        if self.affine:
            y = y * self.weight.to(xf.dtype).view(view) + self.bias.to(xf.dtype).view(view)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1.0 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_var.mul_(1.0 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(x.dtype)


class GlobalBatchNorm1d(_GlobalBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with global-batch statistics in a distributed run. Shape: (B, C[, L])."""


class GlobalBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with global-batch statistics in a distributed run. Shape: (B, C, H, W)."""


class ShardedDropout(nn.Dropout):
    """``nn.Dropout`` drawing the global batch's mask inside :func:`sharded_rows`. Shape: any -> same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _ROWS.get()
        if not self.training or rows is None or self.p == 0.0:
            return super().forward(x)
        offset, total = rows
        if offset == 0 and total == x.shape[0]:
            return super().forward(x)
        # the single process's op on a global-sized input: its mask (a function of the seed and
        # the element's position) and scaling are exactly those of the global batch
        full = x.new_zeros((total,) + tuple(x.shape[1:]))
        if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            full = full.contiguous(memory_format=torch.channels_last)  # CUDA draws the mask in memory order
        full = full.index_copy(0, torch.arange(offset, offset + x.shape[0], device=x.device), x)
        return nn.functional.dropout(full, self.p, True)[offset:offset + x.shape[0]]


_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d, nn.Dropout: ShardedDropout,
}


def distribute_layers(model: nn.Module) -> nn.Module:
    """Swap the model's BatchNorm1d/2d and Dropout layers for their global-batch versions, in
    place (parameters, buffers and state-dict keys unchanged); returns the model."""
    for module in model.modules():
        swap = _SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
    return model
