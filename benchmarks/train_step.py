"""Throughput of a whole training step: descbal's trainer (eager, compiled, bf16, prefetch)
against a plain fp32 eager loop with per-patch CPU augmentation, in one run.

A step = class-balanced sampling + augmentation + forward (the balance loss's teacher and
student passes) + mining + loss + backward + optimiser step. Rows, on the same device, data and
batch shape (HyNet, ``--loss``, ``--classes`` x 3 patches):

* ``plain loop``: the reference pipeline's structure -- every patch augmented on the CPU one by
  one (PIL affine + random resized crop as torchvision does it, or OpenCV if Pillow is absent),
  stacked, copied to the device, fp32 eager forward/backward;
* ``descbal eager``: :meth:`descbal.train.trainer.Trainer.step` as a run takes it (on-device
  batched augmentation; on CUDA bf16 autocast and channels_last, ``loop.precision = "auto"``);
* ``descbal compiled``: the same with ``loop.compile`` (the whole step forward in one
  ``torch.compile`` graph, its backward compiled with it; ``descbal.train.compiled``);
* ``+ prefetch``: ``loop.prefetch`` (the next batch sampled and augmented in a thread);
* ``compiled + bf16`` (CPU): ``loop.precision = "bf16"`` (on CUDA it is the default already).

Each row is timed in ``--rounds`` rounds of ``--steps`` steps (the plain loop:
``--baseline-steps``; bf16 on the CPU: one step), the rows interleaved (a busy machine slows
them alike); the median round counts. Compilation happens in warm-up
steps and is printed apart. Targets: on the CPU, compiled >= 1.5x descbal eager (64 x 3 and
256 x 3); on one H100/H200 at 2,560 x 3, >= 300,000 patches/s end to end and >= 7x the plain
loop. On CUDA the projected time of the full ``self-tnet`` recipe is printed.

On the CPU the eager and compiled rows are then measured again in a process apart whose heap
keeps freed memory for reuse (``loop.keep_memory``, :func:`descbal.heap.keep_freed_memory`;
process-wide, hence the second process), and the two heaps are printed side by side.

Usage: ``python benchmarks/train_step.py [--device cuda] [--classes 64 256] [--steps 5]
[--rounds 3] [--loss balance] [--rows eager compiled] [--heap default|keep] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from descbal.data.patchset import PatchSet
from descbal.heap import keep_freed_memory
from descbal.losses import build_pipeline
from descbal.models import build_model
from descbal.train.augment import AugmentConfig
from descbal.train.config import LoopConfig, LossConfig, RunConfig
from descbal.train.optim import OptimConfig, make_optimizer
from descbal.train.sampler import ClassBatchSampler
from descbal.train.step import loss_step
from descbal.train.trainer import Trainer


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def make_data(n_classes: int, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random 64x64 uint8 patches, ``per_class`` per class."""
    rng = np.random.default_rng(seed)
    n = n_classes * per_class
    return rng.integers(0, 256, (n, 64, 64), dtype=np.uint8), np.repeat(np.arange(n_classes), per_class)


def cpu_augment_one(p: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One patch augmented on the CPU the reference way (pad, affine, resized crop)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - OpenCV fallback
        Image = None
    import cv2

    padded = np.pad(p, cfg.pad, mode="edge")
    s = padded.shape[0]
    ang = rng.uniform(-cfg.degrees, cfg.degrees)
    zoom = rng.uniform(*cfg.scale)
    shear = rng.uniform(-cfg.shear, cfg.shear)
    area = s * s * rng.uniform(*cfg.crop_scale)
    r = math.exp(rng.uniform(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])))
    w = min(s, round(math.sqrt(area * r)))
    h = min(s, round(math.sqrt(area / r)))
    top, left = rng.integers(0, s - h + 1), rng.integers(0, s - w + 1)
    if Image is not None:
        im = Image.fromarray(padded)
        c = (s - 1) / 2
        a = math.radians(ang)
        t = math.tan(math.radians(shear))
        m = np.array([[math.cos(a), math.cos(a) * t - math.sin(a)], [math.sin(a), math.sin(a) * t + math.cos(a)]]) * zoom
        mi = np.linalg.inv(m)
        off = np.array([c, c]) - mi @ np.array([c, c])
        im = im.transform((s, s), Image.AFFINE, (mi[0, 0], mi[0, 1], off[0], mi[1, 0], mi[1, 1], off[1]),
                          resample=Image.BICUBIC)
        im = im.crop((left, top, left + w, top + h)).resize((32, 32), Image.BILINEAR)
        out = np.asarray(im)
    else:
        m = cv2.getRotationMatrix2D(((s - 1) / 2, (s - 1) / 2), ang, zoom)
        warped = cv2.warpAffine(padded, m, (s, s), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        out = cv2.resize(warped[top : top + h, left : left + w], (32, 32), interpolation=cv2.INTER_AREA)
    return out.astype(np.float32) / 255.0


class PlainLoop:
    """The reference loop: per-patch CPU augmentation, fp32 eager step (``step(i)`` runs batch i)."""

    def __init__(self, device: torch.device, classes: int, npos: int, loss_name: str, patches: np.ndarray,
                 labels: np.ndarray) -> None:
        torch.manual_seed(0)
        self.device, self.patches = device, patches
        self.model = build_model("hynet").to(device)
        self.pipeline = build_pipeline(loss_name).to(device)
        self.opt = make_optimizer(self.model, OptimConfig(), 1e-3)
        self.sampler = ClassBatchSampler(labels, classes, npos, seed=0)
        self.cfg = AugmentConfig()
        self.labels = torch.from_numpy(labels).to(device)
        self.rng = np.random.default_rng(1)

    def step(self, i: int) -> None:
        b = self.sampler.batch(0, i)
        x = torch.from_numpy(np.stack([cpu_augment_one(self.patches[j], self.rng, self.cfg) for j in b.indices]))
        x = x[:, None].to(self.device)
        y = self.labels.index_select(0, torch.from_numpy(b.indices).to(self.device))
        out = loss_step(self.model, self.pipeline, x, y)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()


PLAIN = "plain loop (per-patch CPU aug, fp32)"


ROWS: dict[str, dict[str, Any]] = {
    "descbal eager": {},
    "descbal eager + prefetch": {"prefetch": True},
    "descbal compiled": {"compile": True},
    "descbal compiled + prefetch": {"compile": True, "prefetch": True},
    "descbal compiled + bf16": {"compile": True, "precision": "bf16"},
}


def make_trainer(device: torch.device, classes: int, npos: int, loss_name: str, data: PatchSet, run_dir: Path,
                 **loop: Any) -> Trainer:
    """A trainer on ``data`` as ``descbal train`` builds it, with ``loop`` options."""
    cfg = RunConfig(loss=LossConfig(name=loss_name),
                    loop=replace(LoopConfig(), device=str(device), classes_per_batch=classes, npos=npos, epochs=1,
                                 iters_per_epoch=10_000, **loop))
    return Trainer(cfg, run_dir, data)


def time_rows(device: torch.device, classes: int, npos: int, steps: int, rounds: int, warmup: int, loss_name: str,
              data: PatchSet, rows: dict[str, dict[str, Any]],
              plain_steps: int) -> tuple[dict[str, dict[str, float]], float, float]:
    """Seconds per step of each row (with its compile time) and of the plain loop
    (``plain_steps`` per round), medians over interleaved rounds, and the seconds of sampling +
    augmentation alone."""
    plain = PlainLoop(device, classes, npos, loss_name, data.patches, data.labels)
    plain.step(0)
    plain_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: make_trainer(device, classes, npos, loss_name, data, Path(tmp) / str(i), **opts)
                    for i, (name, opts) in enumerate(rows.items())}
        pos = dict.fromkeys(rows, 0)
        compile_s = {}
        for name, t in trainers.items():
            t0 = time.perf_counter()
            for _ in range(warmup):
                t.step(0, pos[name])
                pos[name] += 1
            _sync(device)
            compile_s[name] = t.compiler.compile_s if t.compiler is not None else 0.0
            if t.compile_path.requested and not t.compile_path.compiled:
                print(f"{name}: {t.compile_path.reason}")
            print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s ({compile_s[name]:.1f} s compiling)", flush=True)
        times: dict[str, list[float]] = {name: [] for name in rows}
        for r in range(rounds):
            _sync(device)
            t0 = time.perf_counter()
            for i in range(plain_steps):
                plain.step(1 + r * plain_steps + i)
            _sync(device)
            plain_times.append((time.perf_counter() - t0) / plain_steps)
            for name, t in trainers.items():
                # bf16 on a CPU without AVX512-BF16 is emulated, ~10x slower: one step per round
                n = 1 if (device.type == "cpu" and t.bf16) else steps
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(n):
                    t.step(0, pos[name])
                    pos[name] += 1
                if t._pending is not None:  # the batch prefetched for the next round is this row's work
                    t._pending[1].result()
                _sync(device)
                times[name].append((time.perf_counter() - t0) / n)
        # sampling + augmentation alone (what prefetch could hide), on the eager trainer
        t = trainers[next(iter(rows))]
        _sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            t._batch_inputs(t.phase, 0, pos[next(iter(rows))] + i)
        _sync(device)
        sample_s = (time.perf_counter() - t0) / steps
        for name, t in trainers.items():
            t.close()
            if t.compiler is not None and t.compiler.compile_s != compile_s[name]:
                print(f"  note: {name} compiled again during the timed rounds ({t.compiler.compiles} graphs in all)")
    out = {name: {"step_s": statistics.median(v), "compile_s": compile_s[name]} for name, v in times.items()}
    return out, statistics.median(plain_times), sample_s


def selftnet_patches() -> float:
    """Patches the full ``self-tnet`` recipe trains on: stage 1 and the 15 annealing cycles."""
    from descbal.run_config import resolve_run_config
    from descbal.train.phases import build_phases

    cfg = resolve_run_config("self-tnet", None, (), None, None, None, None, no_val=True)
    return float(sum(p.steps * p.classes_per_batch * p.npos for p in build_phases(cfg)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--classes", type=int, nargs="+", default=None,
                    help="classes per batch, one measurement each (default 2560 on CUDA, 64 256 on the CPU)")
    ap.add_argument("--npos", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiling happens here)")
    ap.add_argument("--loss", default="balance", help="a registered loss (descbal.losses.LOSSES)")
    ap.add_argument("--baseline-steps", type=int, default=None)
    ap.add_argument("--rows", nargs="+", default=None,
                    help="the descbal rows to run, without 'descbal ' (default: all; the plain loop always runs)")
    ap.add_argument("--heap", choices=("default", "keep"), default="default",
                    help="default: glibc's own heap, as a run by default; keep: freed memory kept (loop.keep_memory)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    if args.heap == "keep" and not keep_freed_memory():
        ap.error("--heap keep: not glibc on Linux, so freed memory cannot be kept (descbal.heap)")
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    steps = args.steps or (20 if cuda else 4)
    base_steps = args.baseline_steps or (3 if cuda else 2)
    unknown = [r for r in args.rows or () if f"descbal {r}" not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; use {[k.removeprefix('descbal ') for k in ROWS]} (quote names with spaces)")
    if args.rows is not None and "eager" not in args.rows:
        ap.error("--rows must include eager: the other rows are measured against it")
    rows = {k: v for k, v in ROWS.items() if not (cuda and "bf16" in k)  # bf16 is CUDA's default
            and (args.rows is None or k.removeprefix("descbal ") in args.rows)}
    name = torch.cuda.get_device_name(dev) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    out: list[dict[str, Any]] = []
    for classes in args.classes or ([2560] if cuda else [64, 256]):
        patches, labels = make_data(max(classes * 4, 20000 if cuda else 1000), 3)
        data = PatchSet(patches, labels.astype(np.int64))
        print(f"\n{classes} classes x {args.npos} patches: warming up", flush=True)
        res, plain, sample = time_rows(dev, classes, args.npos, steps, args.rounds, args.warmup, args.loss, data,
                                       rows, base_steps)
        n = classes * args.npos
        eager = res["descbal eager"]["step_s"]
        print(f"\nTraining step throughput on {name}: {classes} classes x {args.npos} patches, loss {args.loss}")
        print(f"{'pipeline':<36}{'patches/s':>12}{'step ms':>10}{'vs eager':>10}{'vs plain':>10}{'compile s':>11}")
        table = {PLAIN: {"step_s": plain, "compile_s": 0.0}, **res}
        for label, r in table.items():
            print(f"{label:<36}{n / r['step_s']:>12,.0f}{1000 * r['step_s']:>10.1f}{eager / r['step_s']:>9.2f}x"
                  f"{plain / r['step_s']:>9.2f}x{r['compile_s']:>11.1f}")
            out.append({"device": name, "classes": classes, "npos": args.npos, "loss": args.loss, "pipeline": label,
                        "heap": args.heap, "patches_per_s": n / r["step_s"], "step_s": r["step_s"],
                        "compile_s": r["compile_s"]})
        compiled_share = (f", {100 * sample / res['descbal compiled']['step_s']:.0f} % of a compiled one"
                          if "descbal compiled" in res else "")
        print(f"sampling + augmentation alone (descbal, on the device): {1000 * sample:.1f} ms per batch, "
              f"{100 * sample / eager:.0f} % of an eager step{compiled_share}")
        compiled = [v["step_s"] for k, v in res.items() if k.startswith("descbal compiled") and "bf16" not in k]
        if not compiled:
            continue
        best = min(compiled)
        ratio = eager / best
        if cuda:
            rate = n / best
            print(f"target >= 300,000 patches/s end to end: {rate:,.0f} ({'met' if rate >= 300_000 else 'NOT met'}); "
                  f">= 7x the plain loop: {plain / best:.1f}x ({'met' if plain / best >= 7 else 'NOT met'})")
            hours = selftnet_patches() / rate / 3600
            print(f"projected time of the full self-tnet recipe at this rate: {hours:.1f} h")
        else:
            print(f"target compiled >= 1.5x descbal eager: {ratio:.2f}x ({'met' if ratio >= 1.5 else 'NOT met'})")
    if args.json:  # written before the comparison, so a failed child loses nothing of this run
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if not cuda and args.heap == "default":
        out += compare_heaps(args, out)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def compare_heaps(args: argparse.Namespace, default: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plain loop and the eager and compiled rows again in a process whose heap keeps freed
    memory, each row's patches/s there printed against this process's (glibc's default heap).
    Returns the child's rows (``heap: keep``), none when it could not run."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--device", args.device, "--heap", "keep", "--rows", "eager", "compiled",
               "--npos", str(args.npos), "--rounds", str(args.rounds), "--warmup", str(args.warmup),
               "--loss", args.loss, "--json", str(Path(tmp) / "kept.json")]
        for opt, value in (("--classes", args.classes), ("--steps", args.steps),
                           ("--baseline-steps", args.baseline_steps)):
            if value is not None:
                cmd += [opt, *map(str, value if isinstance(value, list) else [value])]
        print("\nThe same with freed memory kept (a process apart, --heap keep, as loop.keep_memory):", flush=True)
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            print(f"no heap comparison: the kept-heap process exited with {rc}")
            return []
        kept = json.loads((Path(tmp) / "kept.json").read_text())
    print("\nFreed memory kept (loop.keep_memory) against glibc's default heap, patches/s:")
    print(f"{'batch':<12}{'pipeline':<36}{'default':>10}{'kept':>10}{'kept/default':>14}")
    rate = {(r["classes"], r["pipeline"]): r["patches_per_s"] for r in kept}
    for r in default:
        key = (r["classes"], r["pipeline"])
        if key in rate:
            print(f"{str(r['classes']) + ' x ' + str(r['npos']):<12}{r['pipeline']:<36}{r['patches_per_s']:>10,.0f}"
                  f"{rate[key]:>10,.0f}{rate[key] / r['patches_per_s']:>13.2f}x")
    return kept


if __name__ == "__main__":
    main()
