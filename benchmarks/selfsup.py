"""Self-supervised training on real photos, evaluated on real sequences (issue evidence).

Trains HyNet on a pool built by ``descbal cache images`` from ``../shared/data/train-pool`` (80
real photos) and evaluates, next to SIFT, the published TFeat (liberty) weights and the
**untrained** network, on the real viewpoint sequences of ``../shared/data/hpatches-sequences``
(v_churchill, v_wormhole, v_dogman):

* mean matching accuracy at 1..10 px with DoG keypoints and mutual nearest neighbours
  (``descbal eval sequences``; the D2-Net protocol), reported at 3 px (MMA@3);
* the HPatches protocol on the HPatches-format benchmark ``descbal make-benchmark`` builds from
  the same sequences.

Besides the untrained network as built, a second untrained row has only its BatchNorm running
statistics measured on the pool (:func:`with_pool_statistics`): what any training does to them.

One run trains one model per ``--pool`` x ``--loss`` pair (Self-TNet small schedule stretched
to ``--steps``; annealing off). Pool presets (:data:`POOLS`) change how the photos become
patches. Several runs (say one per pool, in parallel on one GPU) each write ``--json``;
``--merge A.json B.json ...`` prints their rows as one table.

Usage::

    python benchmarks/selfsup.py [--steps 400] [--classes 64] [--device cpu]
                                 [--pool default] [--loss balance --loss triplet] [--no-baselines]
                                 [--mag 5 --mag 6.5]
    python benchmarks/selfsup.py --merge run1.json run2.json

Target: mean MMA@3 >= 0.62 for a trained model.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from descbal.data.make_benchmark import BenchmarkConfig, make_benchmark
from descbal.data.patchset import PatchSet, load_patchset
from descbal.data.selfsup import PoolConfig, cache_images
from descbal.devices import resolve_device
from descbal.eval.hpatches import evaluate_hpatches
from descbal.eval.model_eval import hpatches_descriptors
from descbal.eval.sequences import evaluate_sequences
from descbal.geometry import PatchGeometry
from descbal.models import build_model, resolve_model, save_checkpoint
from descbal.run_config import resolve_run_config
from descbal.train.augment import network_input
from descbal.train.trainer import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: How photos become patches, by name (``PoolConfig`` fields that differ from the defaults).
POOLS: dict[str, PoolConfig] = {
    "default": PoolConfig(),
    # one more view per keypoint and a third more keypoints per photo: the CPU runs of GPU-NOTES
    "views5": PoolConfig(views=5, max_keypoints=400),
    # stronger viewpoint changes and detector noise, one more view per keypoint
    "hard": PoolConfig(views=5, max_keypoints=400, rotation=35.0, zoom=(0.6, 1.6), perspective=0.14,
                       pos_noise=0.06, angle_noise=10.0),
    # the detector's geometry nearly exact: positives differ only by the view and photometry
    "lownoise": PoolConfig(views=5, max_keypoints=400, pos_noise=0.0, scale_noise=0.03, angle_noise=2.0),
    # as many keypoints per photo as the evaluation detects per image
    "dense": PoolConfig(views=4, max_keypoints=1000),
}

LOSSES: dict[str, list[str]] = {
    "balance": [],
    "triplet": ['loss.name="triplet"', "loss.params={margin = 1.0}"],
}


def with_pool_statistics(model: torch.nn.Module, pool: PatchSet, n: int = 20000, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are measured on ``n`` training
    patches of ``pool`` (as training feeds them: :func:`~descbal.train.augment.network_input`
    without augmentation), weights unchanged.

    An untrained network's BatchNorm has never seen data, so its descriptors are not centred or
    scaled per dimension; after any training they are. This row separates what training the
    weights changes from what those statistics change.
    """
    m = copy.deepcopy(model)
    train_ids = np.flatnonzero(~pool.holdout) if pool.holdout is not None else np.arange(len(pool.labels))
    ids = np.sort(np.random.default_rng(seed).choice(train_ids, min(n, len(train_ids)), replace=False))
    m.train()
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # a plain average over all batches
        elif isinstance(mod, torch.nn.Dropout):
            mod.eval()
    with torch.no_grad():
        for s in range(0, len(ids), 1000):
            m(network_input(torch.from_numpy(np.asarray(pool.patches[ids[s : s + 1000]])), None, m.input_scale))
    return m.eval()


def train_one(pool: PatchSet, pool_path: Path, loss: str, run: Path, args: argparse.Namespace) -> Path:
    epochs = 4
    overrides = [f"data.train={json.dumps(str(pool_path))}", f"loop.device={json.dumps(args.device)}",
                 f"loop.epochs={epochs}", f"loop.iters_per_epoch={max(1, args.steps // epochs)}",
                 f"loop.classes_per_batch={args.classes}", "phases.anneal.enabled=false", *LOSSES[loss]]
    cfg = resolve_run_config("self-tnet-small", overrides=overrides)
    if not (run / "model.pt").is_file():
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        Trainer(cfg, run, pool, None).fit()
        print(f"trained {run.name}: {cfg.loop.epochs * cfg.loop.iters_per_epoch} steps x {args.classes} classes "
              f"in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return run / "model.pt"


def print_table(rows: list[dict]) -> None:
    """One line per descriptor; MMA@1/3/5 at the first ``--mag``, then MMA@3 at each further one."""
    extra = [m for m in rows[0].get("mma3_by_mag", {})][1:] if rows else []
    print(f"{'descriptor':<44}{'MMA@1':>7}{'MMA@3':>7}{'MMA@5':>7}{'H@3px':>7}{'matches':>8}"
          f"{'verif':>7}{'match':>7}{'retr':>7}" + "".join(f"{'@3 m' + m:>9}" for m in extra))
    for r in rows:
        print(f"{r['label']:<44}{r['mma'][0]:>7.3f}{r['mma'][2]:>7.3f}{r['mma'][4]:>7.3f}{r['h3']:>7.2f}"
              f"{r['matches']:>8.0f}{r['verification']:>7.3f}{r['matching']:>7.3f}{r['retrieval']:>7.3f}"
              + "".join(f"{r.get('mma3_by_mag', {}).get(m, float('nan')):>9.3f}" for m in extra))
    trained = [r for r in rows if r.get("trained")]
    for m in [None, *extra]:
        vals = [r["mma"][2] if m is None else r.get("mma3_by_mag", {}).get(m, 0.0) for r in trained]
        if vals:
            where = "" if m is None else f" at mag {m}"
            print(f"target mean MMA@3 >= 0.62 for a trained model{where}: "
                  f"{'met' if max(vals) >= 0.62 else 'NOT met'} (best {max(vals):.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/descbal-selfsup"))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--classes", type=int, default=64, help="classes per batch")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--pool", action="append", choices=sorted(POOLS), help="pool preset(s) (default: default)")
    ap.add_argument("--loss", action="append", choices=sorted(LOSSES), help="loss(es) (default: balance, triplet)")
    ap.add_argument("--no-baselines", action="store_true", help="skip SIFT, TFeat and the untrained network")
    ap.add_argument("--max-keypoints", type=int, default=1000, help="DoG keypoints per image for MMA")
    ap.add_argument("--mag", type=float, action="append", default=None,
                    help="measurement region = mag x keypoint diameter for MMA (repeatable; default 5, "
                         "descbal's extraction default, and 8); one MMA@3 column per value")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, help="print the rows of these --json files")
    args = ap.parse_args()
    if args.merge:
        missing = [str(f) for f in args.merge if not f.is_file()]
        if missing:
            sys.exit(f"selfsup: no such result file(s): {', '.join(missing)}")
        rows = [r for f in args.merge for r in json.loads(f.read_text())["rows"]]
        print_table(rows)
        return
    dev = resolve_device(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    bench = args.work / "benchmark"
    if not (bench / "tasks" / "splits" / "splits.json").is_file():
        make_benchmark(DATA / "hpatches-sequences", bench, BenchmarkConfig(max_keypoints=500))

    models: dict[str, object] = {}
    if not args.no_baselines:
        models["SIFT (OpenCV)"] = "sift"
        models["TFeat (published, liberty)"] = DATA / "weights/tfeat/tfeat-liberty.params"
        torch.manual_seed(211)
        untrained = args.work / "untrained.pt"
        save_checkpoint(untrained, build_model("hynet", dropout=0.3))
        models["HyNet untrained"] = untrained
    pools_used = {}
    pool_names = args.pool or ["default"]
    for pool_name in pool_names:
        pool_cfg = POOLS[pool_name]
        pool_path = args.work / f"pool-{pool_name}.h5"
        t0 = time.perf_counter()
        summary = cache_images(DATA / "train-pool", pool_path, pool_cfg)
        pools_used[pool_name] = {"config": asdict(pool_cfg), "patches": summary.num_patches,
                                 "seconds": time.perf_counter() - t0}
        pool = load_patchset(pool_path)  # once for every loss trained on it
        if not args.no_baselines and pool_name == pool_names[0]:
            fitted = args.work / "untrained-pool-statistics.pt"
            save_checkpoint(fitted, with_pool_statistics(resolve_model(untrained).network, pool))
            models[f"HyNet untrained, pool BN statistics ({pool_name})"] = fitted
        for loss in args.loss or ["balance", "triplet"]:
            label = f"HyNet {loss}, pool {pool_name}, {args.steps} steps x {args.classes}"
            # the run folder names the schedule, so a rerun never reuses a model trained for another
            run = args.work / f"run-{pool_name}-{loss}-{args.steps}x{args.classes}"
            models[label] = train_one(pool, pool_path, loss, run, args)

    mags = args.mag or [PatchGeometry().mag, 8.0]
    seqs = evaluate_sequences(DATA / "hpatches-sequences", list(models.values()), names=list(models),
                              max_keypoints=args.max_keypoints, device=dev, geometry=PatchGeometry(mag=mags[0]))
    mma3 = {m["name"]: {str(mags[0]): m["mma"]["overall"][2]} for m in seqs.models}
    networks = {k: v for k, v in models.items() if v != "sift"}  # OpenCV's descriptor has its own region
    for mag in mags[1:]:
        res = evaluate_sequences(DATA / "hpatches-sequences", list(networks.values()), names=list(networks),
                                 max_keypoints=args.max_keypoints, device=dev, geometry=PatchGeometry(mag=mag))
        for m in res.models:
            mma3[m["name"]][str(mag)] = m["mma"]["overall"][2]
    for label in models.keys() - networks.keys():
        mma3[label] |= {str(mag): mma3[label][str(mags[0])] for mag in mags[1:]}
    rows = []
    split_names = sorted(p.name for p in (bench / "patches").iterdir() if p.is_dir())
    for (label, m), res in zip(models.items(), seqs.models, strict=True):
        desc = hpatches_descriptors(m, bench / "patches", split_names, device=dev)
        head = evaluate_hpatches(desc, bench / "tasks", "full").headline
        rows.append({"label": label, "trained": label.startswith("HyNet ") and "untrained" not in label,
                     "mma": res["mma"]["overall"], "h3": res["homography_accuracy"]["overall"]["3"],
                     "matches": res["num_matches"]["overall"], **head,
                     "mma3_by_mag": mma3[label]})
    print(f"\nSelf-supervised training on {DATA / 'train-pool'}; evaluation on {', '.join(seqs.sequences)} "
          f"({dev})")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"device": str(dev), "pools": pools_used, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
