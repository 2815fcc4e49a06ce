"""Distributed-training helpers for the tests: functions the ranks run (importable by name, as
torch's launcher needs) and the single-process references they are compared with.

A *case* is a registered loss with parameters; :func:`loss_case_step` runs ``steps`` training
steps' forward and backward of a small HyNet on fixed global batches (no optimiser step: the
memory of a loss still carries over), on one process (``shard=False``) or as one rank of a
distributed run, and returns the last step's loss, statistics and model gradients, and the
loss pipeline's state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from descbal.losses import build_pipeline
from descbal.models import build_model
from descbal.train import distributed
from descbal.train.distributed import BatchShard, DistContext
from descbal.train.global_layers import distribute_layers
from descbal.train.step import loss_step

CLASSES, NPOS = 8, 3

#: Every registered loss, with parameters that make its special paths run on a batch of 8 x 3.
LOSS_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "triplet": ("triplet", {}),
    "balance": ("balance", {}),
    "anneal": ("anneal", {"threshold": -0.1}),
    "ddtas": ("ddtas", {}),  # AT-ASMS + the meta step on held-out classes
    "ddtas_threshold": ("ddtas", {"meta": "threshold"}),
    "memory_contrastive": ("memory_contrastive", {"start_iter": 1, "memory_batches": 3}),
    "memory_ema_encoder": ("memory_contrastive", {"start_iter": 1, "memory_batches": 3, "update": "ema_encoder"}),
    "osm_caa": ("osm_caa", {}),
    "osm_caa_classifier": ("osm_caa", {"attention": "classifier", "num_classes": 40}),
}


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Inputs (24, 1, 32, 32) in HyNet's units, labels (24,) in [0, 40) and the class position
    of each row, for batch ``step`` (classes contiguous, like the sampler's)."""
    g = torch.Generator().manual_seed(100 + step)
    base = torch.rand(CLASSES, 1, 32, 32, generator=g)
    x = base.repeat_interleave(NPOS, 0) + 2.0 * torch.rand(CLASSES * NPOS, 1, 32, 32, generator=g)
    classes = torch.randperm(40, generator=g)[:CLASSES]
    return x, classes.repeat_interleave(NPOS), np.repeat(np.arange(CLASSES), NPOS)


def loss_case_step(name: str, ctx: DistContext | None, steps: int = 2, dtype: torch.dtype = torch.float32
                   ) -> dict[str, Any]:
    """The last of ``steps`` steps of case ``name`` (module docstring), as numpy arrays; on one
    process (``ctx`` None) or as this rank of ``ctx``; the network in ``dtype`` (the losses
    compute in float32 whatever it is)."""
    torch.manual_seed(0)
    model = build_model("hynet", dropout=0.3).to(dtype)
    if ctx is not None:
        distribute_layers(model)
    loss, params = LOSS_CASES[name]
    pipe = build_pipeline(loss, params)
    model.train()
    for s in range(steps):
        x, labels, class_pos = global_batch(s)
        x = x.to(dtype)
        model.zero_grad(set_to_none=True)
        pipe.zero_grad(set_to_none=True)
        torch.manual_seed(1000 + s)  # the dropout masks
        if ctx is None:
            out = loss_step(model, pipe, x, labels)
        else:
            bounds = distributed.shard_bounds(class_pos, CLASSES, ctx.world_size)
            sh = BatchShard(labels, tuple(int(b) for b in bounds), ctx)
            out = loss_step(model, pipe, x[sh.start:sh.stop], labels[sh.start:sh.stop], shard=sh)
        out.loss.backward()
        if ctx is not None:
            ctx.reduce_gradients(model.parameters(), False)
    return {
        "loss": out.value, "stats": out.floats(), "sharded": pipe.shards_anchors,
        "grads": {k: p.grad.numpy().copy() for k, p in model.named_parameters() if p.grad is not None},
        "head": {k: p.grad.numpy().copy() for k, p in pipe.named_parameters() if p.grad is not None},
        "state": {k: v.numpy().copy() for k, v in pipe.state_dict().items()},
        "running": {k: v.numpy().copy() for k, v in model.state_dict().items() if "running" in k},
    }


def all_loss_cases(steps: int = 2) -> dict[str, dict[str, Any]]:
    """Rank function: :func:`loss_case_step` of every case in float32 and float64 (keys
    ``(name, "float32")``...), as this rank of the launched run."""
    torch.set_num_threads(1)
    ctx = distributed.init_from_env("cpu", 60.0)
    try:
        return {(name, str(dt).split(".")[-1]): loss_case_step(name, ctx, steps, dt)
                for name in LOSS_CASES for dt in (torch.float32, torch.float64)}
    finally:
        distributed.shutdown()


def tiny_run_args(data: str, *extra: str) -> list[str]:
    """``descbal train`` options of a 20-step ``self-tnet-small`` run on a small set: 10 balance
    steps of 8 classes x 3, then 2 annealing cycles of 5 steps (16 and 8 classes x 2)."""
    sets = ["loop.epochs=1", "loop.iters_per_epoch=10", "loop.classes_per_batch=8", "loop.device=cpu",
            "loop.log_every=1", "phases.anneal.cycles.start_batch=24", "phases.anneal.cycles.min_batch=8",
            "phases.anneal.cycles.step=8", "phases.anneal.cycles.iters=5", *extra]
    return ["--recipe", "self-tnet-small", "--data", data, "--no-val", *[a for s in sets for a in ("--set", s)]]


def run_kwargs(out: str | None, args: list[str], resume: str | None = None) -> dict[str, Any]:
    """``open_run`` keyword arguments of :func:`tiny_run_args`-style options (recipe, data, sets)."""
    if resume is not None:
        return {"resume": resume}
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    return {"out": out, "recipe": args[args.index("--recipe") + 1], "data": args[args.index("--data") + 1],
            "overrides": sets, "no_val": True}


def trainer_scenarios(root: str, data: str) -> dict[str, Any]:
    """Rank function: under ``root``, run ``A`` (20 float64 steps of :func:`tiny_run_args`),
    ``B`` (the same, stopped after 7 steps, a copy of the run then kept as ``B7``, resumed to
    the end), ``C`` (resumed to the end from the one-process checkpoint the caller wrote
    there, see :func:`one_process_start`), and 10 steps of a memory bank and of DDTAS's learned threshold (``memory``,
    ``ddtas``), returning this rank's loss-pipeline state of the last two."""
    import shutil

    import torch.distributed as dist

    from descbal.train.trainer import open_run

    torch.set_num_threads(1)
    f64 = tiny_run_args(data, "loop.dtype=float64")
    open_run(**run_kwargs(f"{root}/A", f64)).fit()
    open_run(**run_kwargs(f"{root}/B", f64)).fit(stop_after=7)
    ctx = distributed.current()
    assert ctx is not None
    if ctx.is_main:
        shutil.copytree(f"{root}/B", f"{root}/B7")
    dist.barrier()
    open_run(resume=f"{root}/B").fit()
    open_run(resume=f"{root}/C").fit()  # a one-process run's step-7 checkpoint, continued on this world size
    states = {}
    for name, loss in (("memory", "loss={name='memory_contrastive', params={start_iter=3, memory_batches=4}}"),
                       ("ddtas", "loss={name='ddtas', params={meta='threshold', meta_lr=1.0}}")):
        args = tiny_run_args(data, "phases.anneal.enabled=false", "loop.dtype=float64", f"phases.main.{loss}")
        t = open_run(**run_kwargs(f"{root}/{name}", args))
        t.fit()
        states[name] = {k: v.numpy().copy() for k, v in t.phases[0].pipeline.state_dict().items()}
    distributed.shutdown()
    return states


def one_process_start(root: str, data: str) -> None:
    """``root/C``: the first 7 float64 steps of :func:`tiny_run_args` on one process (for
    :func:`trainer_scenarios` to resume on another world size)."""
    from descbal.train.trainer import open_run

    open_run(**run_kwargs(f"{root}/C", tiny_run_args(data, "loop.dtype=float64"))).fit(stop_after=7)
