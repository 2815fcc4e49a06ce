"""Ablation at equal budget: HardNet triplet baseline vs balance loss vs balance + annealing.

Every method trains the same HyNet from the same seed on the same self-supervised patch pool
(``descbal cache images`` of ``../shared/data/train-pool``, 80 real photos), for the same number
of steps; the balance + annealing row spends the last ``--anneal-frac`` of the budget in the
annealing cycles. Each model is scored with descbal's evaluation code on the pool's held-out
pairs (FPR95, HardNet definition, photos never trained on) and, when ``--benchmark`` names an
HPatches-format benchmark (``descbal make-benchmark``), with ``descbal eval hpatches``. The
untrained network is the first row: a random HyNet is a strong baseline.

Usage: ``python benchmarks/ablation.py [--steps 300] [--classes 64] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from descbal.data.make_benchmark import BenchmarkConfig, make_benchmark
from descbal.data.patchset import load_patchset
from descbal.data.selfsup import PoolConfig, cache_images
from descbal.eval.hpatches import evaluate_hpatches
from descbal.eval.model_eval import evaluate_brown_model, hpatches_descriptors
from descbal.models import build_model
from descbal.run_config import resolve_run_config
from descbal.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from seeds_rows import seed_method_overrides  # noqa: E402


def method_configs(steps: int, classes: int, anneal_frac: float, device: str) -> dict[str, list[str]]:
    """--set overrides per method (on top of the self-tnet-small recipe)."""
    main_iters = max(1, steps // 4)
    common = [f"loop.classes_per_batch={classes}", f"loop.device={device}", "loop.epochs=4",
              f"loop.iters_per_epoch={main_iters}", "phases.anneal.enabled=false"]
    cycles = 3
    per_cycle = max(1, int(steps * anneal_frac) // cycles)
    an_main = max(1, (steps - per_cycle * cycles) // 4)
    step = max(1, classes // 4)  # cycle batches: classes, classes - step, classes - 2 step
    return {
        "triplet (HardNet baseline)": common + ['loss.name="triplet"', "loss.params={margin = 1.0}"],
        "balance, no teacher weight": common + ['loss.params.teacher="none"'],
        "balance (Self-TNet stage 1)": common,
        **{k: common + v for k, v in seed_method_overrides(steps).items()},
        "balance + annealing": [f"loop.classes_per_batch={classes}", f"loop.device={device}", "loop.epochs=4",
                                f"loop.iters_per_epoch={an_main}", "phases.anneal.enabled=true",
                                f"phases.anneal.cycles.start_batch={classes + step}",
                                f"phases.anneal.cycles.min_batch={classes + step - cycles * step}",
                                f"phases.anneal.cycles.step={step}", f"phases.anneal.cycles.iters={per_cycle}"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "train-pool")
    ap.add_argument("--work", type=Path, default=Path("/tmp/descbal-ablation"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--classes", type=int, default=64)
    ap.add_argument("--anneal-frac", type=float, default=0.25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sequences", type=Path, default=ROOT.parent / "shared" / "data" / "hpatches-sequences",
                    help="sequences with homographies to build the HPatches-format benchmark from")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    pool_path = args.work / "pool.h5"
    info = cache_images(args.images, pool_path, PoolConfig())
    pool = load_patchset(pool_path)
    print(f"pool: {len(pool)} patches, {pool.num_pairs} held-out pairs ({'cached' if info.skipped else 'built'})",
          file=sys.stderr)
    bench = args.work / "benchmark"
    if not (bench / "tasks" / "splits" / "splits.json").is_file():
        make_benchmark(args.sequences, bench, BenchmarkConfig(max_keypoints=500))

    def score(model) -> tuple[float, dict[str, float]]:
        seqs = sorted(p.name for p in (bench / "patches").iterdir() if p.is_dir())
        desc = hpatches_descriptors(model, bench / "patches", seqs, device=args.device)
        return evaluate_brown_model(model, pool).fpr95, evaluate_hpatches(desc, bench / "tasks", "full").headline

    rows = []
    torch.manual_seed(211)
    fpr, head = score(build_model("hynet", dropout=0.3))
    rows.append(("untrained HyNet", 0, 0.0, fpr, head))
    for name, overrides in method_configs(args.steps, args.classes, args.anneal_frac, args.device).items():
        cfg = resolve_run_config("self-tnet-small", overrides=overrides, data=pool_path)
        slug = "".join(ch if ch.isalnum() else "-" for ch in name.split("(")[0].strip().lower())
        run_dir = args.work / "runs" / slug
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        trainer = Trainer(cfg, run_dir, pool, None)
        t0 = time.perf_counter()
        trainer.fit()
        secs = time.perf_counter() - t0
        fpr, head = score(trainer.model)
        rows.append((name, trainer.total_steps, secs, fpr, head))
        print(f"{name}: {trainer.total_steps} steps, {secs:.0f} s, FPR95 {100 * fpr:.2f} %, {head}", file=sys.stderr)
    print(f"\nAblation on {args.images.name} ({len(pool)} patches), HyNet, {args.classes} classes x 3 patches per batch,"
          f" device {args.device}")
    print(f"HPatches-protocol benchmark built from {args.sequences} (make-benchmark, split 'full')")
    print(f"{'method':<30}{'steps':>7}{'train s':>9}{'pool FPR95 %':>14}{'verif %':>9}{'match %':>9}{'retr %':>8}")
    for name, steps, secs, fpr, h in rows:
        print(f"{name:<30}{steps:>7}{secs:>9.0f}{100 * fpr:>14.2f}{100 * h['verification']:>9.2f}"
              f"{100 * h['matching']:>9.2f}{100 * h['retrieval']:>8.2f}")
    keys = ("method", "steps", "seconds", "fpr95", "headline")
    (args.work / "ablation.json").write_text(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=1))


if __name__ == "__main__":
    main()
