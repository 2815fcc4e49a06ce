"""Training on several processes (torch.distributed): the process group, the batch shards and
the collectives a step needs.

How a step runs on W ranks (``descbal.train.step.loss_step``, ``Trainer.step``):

* every rank draws the *global* batch (the single-process sampler, same seed) and its
  augmentation parameters, and takes a contiguous shard of its classes: rank r the r-th W-th
  (:func:`shard_bounds`), so the shards in rank order are exactly the single-process batch;
* each rank embeds its own rows; HyNet's BatchNorm takes its statistics over the global batch
  and dropout draws the global batch's mask and keeps its rows
  (``descbal.train.global_layers``), so each row's embedding is the single-process one;
* the embeddings are gathered in rank order with gradient (:func:`gather_rows`), so the loss
  sees the whole global batch: the hardest negatives are mined over all ranks' patches;
* the triplet-like losses (``triplet``, ``balance``, ``anneal`` with the ``hardest`` miner and
  the ``mean`` reducer: ``LossPipeline.shards_anchors``) score only this rank's anchors (its
  own classes) against all candidates and divide by the global class count; what they take
  over the whole batch (the balance loss's medians, the logged means) is reduced over the
  ranks (``descbal.losses.sharding``). The ranks' losses add up to the single-process loss,
  and the gathered tensor's backward sums the ranks' gradients;
* any other pipeline (DDTAS, memory, OSM) runs whole on every rank on the gathered batch, so
  its statistics (DDTAS's thresholds, the memory bank's enqueue) are the single process's,
  identical on all ranks by construction; the gathered tensor's backward then keeps the
  rank's own rows (no communication);
* the model's gradients are *summed* over the ranks in one all-reduce
  (:meth:`DistContext.reduce_gradients`): the single process's gradient. (DDP would average;
  a sum needs no rescaling of the loss.)

The network's forward and backward, the cost of a step, are split W ways; the pipelines that
do not shard repeat their (small) loss on every rank: ``benchmarks/distributed.py`` prints
the time in the loss.

Process start and rendezvous are torch's: ``torchrun`` (or ``descbal train --nproc N``, which
runs torch's elastic launcher) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``; :func:`init_from_env` reads them. NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import NDArray

from descbal.errors import BadInputError, DescbalError

#: The environment variables of torch's launchers that make a process one rank of a run.
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistContext:
    """This process's place in the run and the time its collectives took.

    ``timings``: seconds spent in the gathers (``gather``), the BatchNorm statistics
    (``batchnorm``), the gradient all-reduce (``gradients``) and the loss pipeline's forward
    (``loss``, which every rank computes) since the start (with ``synchronize`` set, CUDA work
    is waited for around each, so the times are real).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("gather", "batchnorm", "gradients",
                                                                               "loss"), 0.0))
    synchronize: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that writes checkpoints, logs, metrics and runs validation."""
        return self.rank == 0

    def _sync(self) -> None:
        if self.synchronize and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, key: str) -> _Timer:
        return _Timer(self, key)

    def check_same(self, what: str, fingerprint: str) -> None:
        """BadInputError on every rank unless all ranks hold the same ``fingerprint`` (a hex digest).

        ``what`` names it in the message (e.g. "configuration and training data"); the first 60
        bits of the digest are compared.
        """
        mine = torch.tensor([int(fingerprint[:15], 16)], dtype=torch.int64, device=self.device)
        every = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine)
        values = [int(t.item()) for t in every]
        bad = [r for r, v in enumerate(values) if v != values[0]]
        if bad:
            raise BadInputError(f"the ranks were started with different {what}: rank {bad[0]}'s differs from "
                                "rank 0's; start every rank with the same command and files")

    def reduce_gradients(self, params: Iterable[torch.nn.Parameter], stop: bool,
                         replicated: Iterable[torch.nn.Parameter] = ()) -> bool:
        """Sum the gradients of ``params`` (the network's: each rank holds its rows' share) over
        the ranks, average those of ``replicated`` (a loss head's: every rank computed the whole
        gradient; averaging keeps the copies equal where GPU kernels round differently), in one
        all-reduce, and agree on stopping: returns True when any rank asked to stop (Ctrl-C),
        so all ranks stop after the same step."""
        grads = [p.grad for p in params if p.grad is not None]
        rep = [p.grad for p in replicated if p.grad is not None]
        dtype = grads[0].dtype if grads else torch.float32
        flat = torch.cat([g.reshape(-1).to(dtype) for g in grads + rep]
                         + [torch.tensor([float(stop)], dtype=dtype, device=self.device)])
        with self.timed("gradients"):
            dist.all_reduce(flat)
        o, summed = 0, sum(g.numel() for g in grads)
        for g in grads + rep:
            part = flat[o:o + g.numel()].view_as(g)
            g.copy_(part if o < summed else part / self.world_size)
            o += g.numel()
        return bool(flat[-1].item() > 0)


class _Timer:
    def __init__(self, ctx: DistContext, key: str) -> None:
        self.ctx, self.key = ctx, key

    def __enter__(self) -> None:
        self.ctx._sync()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.ctx._sync()
        self.ctx.timings[self.key] = self.ctx.timings.get(self.key, 0.0) + time.perf_counter() - self.t0


_CONTEXT: DistContext | None = None


def current() -> DistContext | None:
    """The process's :class:`DistContext` once :func:`init_from_env` ran, else None."""
    return _CONTEXT


def launched() -> bool:
    """True when torch's launcher started this process as one rank of a run (its variables are set)."""
    return all(k in os.environ for k in LAUNCH_ENV)


def init_from_env(device: str, timeout_s: float) -> DistContext:
    """Join the run that torchrun / the elastic launcher started (module docstring).

    ``device``: ``loop.device``; on CUDA each rank takes ``cuda:LOCAL_RANK`` and NCCL, on the
    CPU gloo. ``timeout_s``: how long a collective waits for the other ranks before failing (a
    rank that died makes the others stop with an error instead of hanging). Idempotent.
    """
    global _CONTEXT
    from descbal.devices import resolve_device

    if _CONTEXT is not None:
        return _CONTEXT
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise BadInputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    dev = resolve_device(device)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise BadInputError(f"local rank {local} needs GPU {local}, but this machine has "
                                f"{torch.cuda.device_count()}; start at most that many processes per machine")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise BadInputError(f"distributed training runs on cuda or cpu, not {dev.type}")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise DescbalError(f"rank {rank} of {world}: could not join the run's process group "
                               f"({os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): {first}") from None
    _CONTEXT = DistContext(rank, world, local, dev, backend)
    return _CONTEXT


def shutdown() -> None:
    """Leave the process group (end of the run)."""
    global _CONTEXT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


@contextmanager
def collective_errors(ctx: DistContext | None) -> Iterator[None]:
    """In a distributed run, turn a failed collective (another rank died or timed out) into one
    :class:`~descbal.errors.DescbalError` line naming this rank (exit 1); no-op otherwise."""
    if ctx is None:
        yield
        return
    try:
        yield
    except RuntimeError as e:
        if isinstance(e, DescbalError):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        if isinstance(e, dist.DistError) or "gloo" in str(e).lower() or "nccl" in str(e).lower():
            raise DescbalError(f"rank {ctx.rank} of {ctx.world_size}: lost contact with the other ranks ({first}); "
                               "the run stopped") from None
        raise DescbalError(f"rank {ctx.rank} of {ctx.world_size} failed: {type(e).__name__}: {first}") from None


def check_divisible(phases: Sequence[Any], world_size: int) -> None:
    """BadInputError naming the first phase whose classes per batch do not split over the ranks.

    ``phases``: objects with ``name`` and ``classes_per_batch``.
    """
    for ph in phases:
        if ph.classes_per_batch % world_size:
            raise BadInputError(f"phase {ph.name}: a global batch of {ph.classes_per_batch} classes does not divide "
                                f"over {world_size} processes; choose classes_per_batch (and annealing batch sizes) "
                                f"divisible by {world_size}")


def shard_bounds(class_pos: NDArray[np.int64], num_classes: int, world_size: int) -> NDArray[np.int64]:
    """Row boundaries (W + 1,) of the ranks' shards of a batch whose classes are contiguous:
    rank r holds the classes ``r C / W .. (r + 1) C / W - 1`` (C divisible by W), i.e. rows
    ``bounds[r] .. bounds[r + 1] - 1``. ``class_pos`` (B,): each row's class position."""
    per = num_classes // world_size
    starts = np.arange(world_size + 1) * per
    return np.searchsorted(class_pos, starts, side="left").astype(np.int64)


@dataclass(frozen=True)
class BatchShard:
    """This rank's part of a global batch of B rows.

    ``labels`` (B,): the global batch's labels (every rank knows them: it drew the batch);
    ``bounds`` (W + 1,): row boundaries of the ranks' shards; ``ctx``: the run.
    """

    labels: torch.Tensor
    bounds: tuple[int, ...]
    ctx: DistContext

    @property
    def start(self) -> int:
        return self.bounds[self.ctx.rank]

    @property
    def stop(self) -> int:
        return self.bounds[self.ctx.rank + 1]

    def counts(self, rows: torch.Tensor | None = None) -> list[int]:
        """Rows per rank: of the whole batch, or of the global row indices ``rows`` (sorted)."""
        if rows is None:
            return [self.bounds[r + 1] - self.bounds[r] for r in range(self.ctx.world_size)]
        edges = torch.tensor(self.bounds, device=rows.device)
        return torch.bucketize(rows, edges, right=True).sub(1).bincount(minlength=self.ctx.world_size).tolist()


def gather_rows(x: torch.Tensor, counts: Sequence[int], ctx: DistContext, summed: bool = False) -> torch.Tensor:
    """All ranks' rows in rank order: ``cat([x_0, ..., x_{W-1}])``, rank r holding ``counts[r]``
    rows of the same trailing shape. Differentiable. The gradient of the result is taken as it
    is for this rank's rows (right when every rank computes the same function of the result: a
    pipeline run whole on every rank), or with ``summed`` first summed over the ranks (each
    rank computed its share of the loss: a sharded pipeline; module docstring).
    Shape: (counts[rank], ...) -> (sum(counts), ...)."""
    return _GatherRows.apply(x, tuple(int(c) for c in counts), ctx, summed)


def gather_any(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The ranks' ``x`` (each its own first dimension) concatenated in rank order, no gradient
    (two collectives: the sizes, then the rows)."""
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    with ctx.timed("gather"):
        dist.all_gather(sizes, n)
    with torch.no_grad():
        return gather_rows(x.detach(), [int(s.item()) for s in sizes], ctx)


def sum_over_ranks(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Elementwise sum of ``x`` over the ranks, no gradient. Shape: any -> same."""
    out = x.detach().clone().contiguous()
    if ctx.world_size > 1:
        with ctx.timed("gather"):
            dist.all_reduce(out)
    return out


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(fctx: Any, x: torch.Tensor, counts: tuple[int, ...], ctx: DistContext,  # type: ignore[override]
                summed: bool) -> torch.Tensor:
        fctx.ctx, fctx.summed = ctx, summed
        fctx.rank, fctx.offset, fctx.n = ctx.rank, sum(counts[: ctx.rank]), counts[ctx.rank]
        if ctx.world_size == 1:
            return x.clone()
        top = max(counts)
        pad = x.new_zeros((top,) + tuple(x.shape[1:]))
        pad[: x.shape[0]] = x
        parts = [torch.empty_like(pad) for _ in counts]
        with ctx.timed("gather"):
            dist.all_gather(parts, pad.contiguous())
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])

    @staticmethod
    def backward(fctx: Any, grad: torch.Tensor):  # type: ignore[override]
        if fctx.summed and fctx.ctx.world_size > 1:
            grad = grad.clone().contiguous()
            with fctx.ctx.timed("gather"):
                dist.all_reduce(grad)
        return grad[fctx.offset:fctx.offset + fctx.n], None, None, None


def all_reduce_sum(x: torch.Tensor, ctx: DistContext, key: str = "batchnorm") -> torch.Tensor:
    """The sum of ``x`` over the ranks, differentiable (the gradient is summed over the ranks
    too: each rank's graph holds only its own rows' share of it). Shape: any -> same."""
    return _AllReduceSum.apply(x, ctx, key)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(fctx: Any, x: torch.Tensor, ctx: DistContext, key: str) -> torch.Tensor:  # type: ignore[override]
        fctx.ctx, fctx.key = ctx, key
        out = x.clone().contiguous()
        if ctx.world_size > 1:
            with ctx.timed(key):
                dist.all_reduce(out)
        return out

    @staticmethod
    def backward(fctx: Any, grad: torch.Tensor):  # type: ignore[override]
        out = grad.clone().contiguous()
        if fctx.ctx.world_size > 1:
            with fctx.ctx.timed(fctx.key):
                dist.all_reduce(out)
        return out, None, None
