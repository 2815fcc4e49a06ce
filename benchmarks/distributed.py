"""Distributed training throughput: patches/s at one global batch on 1, 2, ... processes.

Rows, all at the same global batch (``--classes`` x 3 patches, HyNet, the balance loss with its
self-teacher, on-device augmentation) and in one run:

* ``single``: the plain single-process trainer (the baseline);
* ``N proc``: ``descbal train``'s distributed path on N processes (torch's elastic launcher;
  gloo on the CPU, NCCL on CUDA with one GPU per process), N = 1 (the same code path as
  several: the gathers and all-reduces of one rank), 2, ... (``--nproc``; on CUDA by default
  every GPU the machine has).

Each prints patches/s (the global batch over the mean step time after ``--warmup`` steps),
the scaling efficiency against ``single`` (patches/s / (N x single's)), and per step the
seconds in the gathers, the BatchNorm all-reduces, the gradient all-reduce and the loss
pipeline's forward (computed on every rank). On a 2-core CPU two processes share the cores,
so the figure shows the overhead of gloo, not a speed-up; on GPUs the target is >= 90 %
efficiency from 1 to N GPUs at Self-TNet's batch (``--classes 2560``).

Usage: ``python benchmarks/distributed.py [--device cuda] [--classes 2560] [--steps 20]
[--nproc 1 2] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from descbal.data.patchset import PatchSet, write_patchset
from descbal.train.launch import run_local


def _overrides(classes: int, steps: int, device: str) -> list[str]:
    return [f"loop.classes_per_batch={classes}", f"loop.iters_per_epoch={steps}", "loop.epochs=1",
            f"loop.device={device}", "loop.log_every=1000000", "phases.anneal.enabled=false"]


def _time_steps(trainer: Any, steps: int, warmup: int) -> dict[str, float]:
    """Mean seconds per step after ``warmup`` steps, and the collectives' seconds per step."""
    dev = trainer.device
    for i in range(warmup):
        trainer.step(0, i)
    if trainer.dist is not None:
        trainer.dist.synchronize = True
        trainer.dist.timings.update(dict.fromkeys(trainer.dist.timings, 0.0))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        trainer.step(0, i)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    out = {"step_s": (time.perf_counter() - t0) / steps}
    if trainer.dist is not None:
        out.update({f"{k}_s": v / steps for k, v in trainer.dist.timings.items()})
    return out


def bench_rank(data: str, run: str, classes: int, steps: int, warmup: int, device: str) -> dict[str, float]:
    """What each process runs: a trainer on ``data``, ``steps`` timed steps (rank function)."""
    from descbal.train import distributed
    from descbal.train.trainer import open_run

    trainer = open_run(run, recipe="self-tnet-small", data=data, no_val=True,
                       overrides=_overrides(classes, steps + warmup, device))
    try:
        return _time_steps(trainer, steps, warmup)
    finally:
        distributed.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--classes", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--nproc", type=int, nargs="*", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    counts = args.nproc or ([1, 2] if args.device == "cpu" else list(range(1, torch.cuda.device_count() + 1)))
    patches_per_step = args.classes * 3
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        n_cls = max(4 * args.classes, 1000)
        data = f"{tmp}/train.h5"
        write_patchset(data, PatchSet(rng.integers(0, 256, (n_cls * 3, 64, 64), dtype=np.uint8),
                                      np.repeat(np.arange(n_cls), 3), None, "bench"))
        from descbal.train.trainer import open_run

        single = _time_steps(open_run(f"{tmp}/single", recipe="self-tnet-small", data=data, no_val=True,
                                      overrides=_overrides(args.classes, args.steps + args.warmup, args.device)),
                             args.steps, args.warmup)
        rows: list[dict[str, Any]] = [{"row": "single", "nproc": 1, **single}]
        for n in counts:
            res = run_local(n, bench_rank, data, f"{tmp}/run{n}", args.classes, args.steps, args.warmup, args.device)
            worst = max(res.values(), key=lambda r: r["step_s"])  # the step ends when the slowest rank's does
            rows.append({"row": f"{n} proc", "nproc": n, **worst})
    base = patches_per_step / single["step_s"]
    print(f"device {args.device}; global batch {args.classes} classes x 3 = {patches_per_step} patches; HyNet, "
          f"balance loss; {args.steps} timed steps after {args.warmup}")
    print(f"{'row':>8} {'patches/s':>10} {'efficiency':>10} {'step ms':>8} {'gather':>7} {'bn':>7} {'grads':>7} "
          f"{'loss':>7}   (ms per step)")
    for r in rows:
        ps = patches_per_step / r["step_s"]
        r["patches_per_s"], r["efficiency"] = ps, ps / (r["nproc"] * base)
        ms = [1000 * r.get(k, float("nan")) for k in ("gather_s", "batchnorm_s", "gradients_s", "loss_s")]
        print(f"{r['row']:>8} {ps:>10.0f} {100 * r['efficiency']:>9.1f}% {1000 * r['step_s']:>8.1f} "
              + " ".join(f"{m:>7.1f}" for m in ms))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "classes": args.classes, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
