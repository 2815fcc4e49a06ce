"""Self-supervised training on real photos, evaluated on real sequences (issue evidence).

Trains HyNet on a pool built by ``descbal cache images`` from ``../shared/data/train-pool`` (80
real photos) -- with the balance loss (Self-TNet small schedule) and with the triplet baseline --
and evaluates, next to SIFT, the published TFeat (liberty) weights and the **untrained**
network, on the real viewpoint sequences of ``../shared/data/hpatches-sequences`` (v_churchill,
v_wormhole, v_dogman):

* mean matching accuracy at 1..10 px with DoG keypoints and mutual nearest neighbours
  (``descbal eval sequences``; the D2-Net protocol), reported at 3 px (MMA@3);
* the HPatches protocol on the HPatches-format benchmark ``descbal make-benchmark`` builds from
  the same sequences.

Usage: ``python benchmarks/selfsup.py [--steps 600] [--classes 64]``. Target: mean MMA@3 >= 0.62.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from descbal.config import load_config
from descbal.data.make_benchmark import BenchmarkConfig, make_benchmark
from descbal.data.patchset import load_patchset
from descbal.data.selfsup import PoolConfig, cache_images
from descbal.eval.hpatches import evaluate_hpatches
from descbal.eval.model_eval import hpatches_descriptors
from descbal.eval.sequences import evaluate_sequences
from descbal.models import build_model, load, save_checkpoint
from descbal.recipes import recipe_text
from descbal.train.config import RunConfig
from descbal.train.trainer import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/descbal-selfsup"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--classes", type=int, default=64)
    ap.add_argument("--max-keypoints", type=int, default=1000, help="DoG keypoints per image for MMA")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    pool_path = args.work / "pool.h5"
    cache_images(DATA / "train-pool", pool_path, PoolConfig())
    pool = load_patchset(pool_path)
    bench = args.work / "benchmark"
    if not (bench / "tasks" / "splits" / "splits.json").is_file():
        make_benchmark(DATA / "hpatches-sequences", bench, BenchmarkConfig(max_keypoints=500))

    models: dict[str, object] = {"SIFT (OpenCV)": "sift",
                                 "TFeat (published, liberty)": DATA / "weights/tfeat/tfeat-liberty.params"}
    torch.manual_seed(211)
    untrained = args.work / "untrained.pt"
    save_checkpoint(untrained, build_model("hynet", dropout=0.3))
    models["HyNet untrained"] = untrained
    iters = max(1, args.steps // 4)
    for label, extra in (("HyNet balance (Self-TNet small)", []),
                         ("HyNet triplet (HardNet loss)", ['loss.name="triplet"', "loss.params={margin = 1.0}"])):
        overrides = [f"data.train={json.dumps(str(pool_path))}", "loop.device=cpu", "loop.epochs=4",
                     f"loop.iters_per_epoch={iters}", f"loop.classes_per_batch={args.classes}", "anneal.enabled=false",
                     *extra]
        cfg = load_config(RunConfig, [recipe_text("self-tnet-small")], overrides)
        run = args.work / ("run-" + label.split()[1])
        if not (run / "model.pt").is_file():
            import shutil

            shutil.rmtree(run, ignore_errors=True)
            t0 = time.perf_counter()
            Trainer(cfg, run, pool, None).fit()
            print(f"trained {label}: {cfg.loop.epochs * iters} steps in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        models[label] = run / "model.pt"

    seqs = evaluate_sequences(DATA / "hpatches-sequences", list(models.values()), names=list(models),
                              max_keypoints=args.max_keypoints, device="cpu")
    rows = []
    split_names = sorted(p.name for p in (bench / "patches").iterdir() if p.is_dir())
    for (label, m), res in zip(models.items(), seqs["models"], strict=True):
        mma = res["mma"]["overall"]
        desc = hpatches_descriptors(m if m == "sift" else load(m), bench / "patches", split_names, device="cpu")
        head = evaluate_hpatches(desc, bench / "tasks", "full")["headline"]
        rows.append((label, mma[0], mma[2], mma[4], res["homography_accuracy"]["overall"]["3"], head))
    print(f"\nSelf-supervised training on {DATA / 'train-pool'} ({len(pool)} patches); evaluation on "
          f"{', '.join(seqs['sequences'])}")
    print(f"{'descriptor':<34}{'MMA@1':>7}{'MMA@3':>7}{'MMA@5':>7}{'H@3px':>7}{'verif':>7}{'match':>7}{'retr':>7}")
    for label, m1, m3, m5, h3, head in rows:
        print(f"{label:<34}{m1:>7.3f}{m3:>7.3f}{m5:>7.3f}{h3:>7.2f}{head['verification']:>7.3f}"
              f"{head['matching']:>7.3f}{head['retrieval']:>7.3f}")
    best = max(r[2] for r in rows if "balance" in r[0] or "triplet" in r[0])
    print(f"target mean MMA@3 >= 0.62 for a trained model: {'met' if best >= 0.62 else 'NOT met'} (best {best:.3f})")
    (args.work / "selfsup.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
