"""Training on real multi-view correspondences against training on photo homographies, one table.

The Brown recipe on the shared scenes (``../shared/data/sfm``):

1. ``castle-P30`` reconstructed with SIFT (:func:`descbal.sfm.reconstruct`, ``--max-size`` 1600,
   8,192 keypoints, one shared camera);
2. a patch set built from it (:func:`descbal.sfm.cache_sfm`: every 3D point seen at least 3
   times, one 64x64 patch per sighting at the DoG keypoint's scale and orientation, 10 % of the
   points held out for FPR95), at each ``--mag`` (default 5, descbal's default region) and each
   further ``--region`` (default 8);
3. the photo pool of ``cache images`` on ``../shared/data/train-pool`` (80 photos; the preset
   ``views5`` of ``benchmarks/selfsup.py``: 5 views, 400 keypoints per photo);
4. HyNet trained with the balance loss for ``--steps`` x ``--classes`` x 3 patches on each
   (``self-tnet-small`` with that schedule, annealing off, CPU; the same for every set), and with
   ``--combined`` also on the castle set and the pool together.

Every model, with SIFT, the published TFeat liberty weights and the untrained HyNet (seed 0) as
rows, is then evaluated on data no model was trained on or chosen on:

* mean MMA@3 on ``../shared/data/hpatches-sequences`` (DoG, ``--max-keypoints`` 1000 per image,
  mutual nearest neighbours; also the matches and the correct ones at 3 px per image pair) at
  the region each model records (its checkpoint's geometry, else
  descbal's default 5; SIFT uses its own);
* FPR95 on the held-out points of castle (10,000 pairs, 50 % matching);
* ``eval sfm`` on ``fountain-P11`` (never trained on; 1,024 px, 4,096 keypoints, one camera):
  registered images, camera-centre error after the robust similarity alignment (mean and median,
  metres), relative-pose AUC@5;

and then every network again at each ``--region`` (FPR95 on the castle set cut at that region):
the evidence for the default region, taken on castle and fountain, not on the sequences.

Everything is kept in ``--work`` and reused by a rerun (a finished training, reconstruction or
set is not redone; they are deterministic from the seed).

Usage: ``python benchmarks/sfm_training.py [--steps 2000] [--mag 5] [--region 8] [--combined] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from descbal.data.patchset import load_patchset
from descbal.data.selfsup import PoolConfig, cache_images
from descbal.eval.model_eval import evaluate_brown_model
from descbal.eval.sequences import evaluate_sequences
from descbal.extract.pipeline import ExtractConfig
from descbal.geometry import GeometryOptions, PatchGeometry
from descbal.run_config import resolve_run_config
from descbal.sfm import CameraOptions, ReconstructConfig, SfmSetConfig, cache_sfm, reconstruct, sfm_inputs
from descbal.sfm.evaluate import evaluate_sfm
from descbal.train.trainer import start_run

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TFEAT = DATA / "weights" / "tfeat" / "tfeat-liberty.params"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def castle_reconstruction(work: Path) -> Path:
    """castle-P30 with SIFT; the model folder (reused when present)."""
    cfg = ReconstructConfig(extract=ExtractConfig(max_keypoints=8192, max_size=1600, device="cpu"),
                            camera=CameraOptions(single_camera=True))
    t = time.perf_counter()
    res = reconstruct(DATA / "sfm" / "castle-P30" / "images", work / "castle-sift", cfg)
    log(f"castle-P30 reconstruction: {res.registered}/{res.images} registered, {res.points3d} points "
        f"({time.perf_counter() - t:.0f} s)")
    assert res.model is not None
    return Path(res.model)


def castle_set(work: Path, model: Path, mag: float) -> Path:
    out = work / f"castle-mag{mag:g}.h5"
    res = cache_sfm(sfm_inputs([model.parent], images=DATA / "sfm" / "castle-P30" / "images"), out,
                    SfmSetConfig(geometry=PatchGeometry(mag=mag)))
    log(f"{out.name}: {'up to date' if res.skipped else f'{res.num_patches} patches of {res.num_classes} points'}")
    return out


def photo_pool(work: Path) -> Path:
    out = work / "pool-views5.h5"
    res = cache_images(DATA / "train-pool", out, PoolConfig(views=5, max_keypoints=400))
    log(f"{out.name}: {'up to date' if res.skipped else f'{res.num_patches} patches'}")
    return out


def train(sets: list[Path], run: Path, steps: int, classes: int) -> Path:
    """HyNet, balance loss, ``steps`` x ``classes`` classes x 3 patches, no annealing, on the CPU."""
    if (run / "model.pt").is_file():
        return run / "model.pt"
    epochs = 4
    overrides = [f"loop.epochs={epochs}", f"loop.iters_per_epoch={max(1, steps // epochs)}",
                 f"loop.classes_per_batch={classes}", "phases.anneal.enabled=false", "loop.device=\"cpu\""]
    cfg = resolve_run_config("self-tnet-small", overrides=overrides, data=[str(s) for s in sets], no_val=True)
    if run.exists():  # an unfinished run of this schedule: continue it (resumed = uninterrupted)
        from descbal.train.trainer import resume_run

        trainer = resume_run(run) if (run / "checkpoints" / "last.pt").is_file() else start_run(cfg, run)
    else:
        trainer = start_run(cfg, run)
    t = time.perf_counter()
    trainer.fit()
    log(f"trained {run.name}: {steps} steps x {classes} classes in {time.perf_counter() - t:.0f} s")
    return run / "model.pt"


def fpr95(model: str, patch_set: Path) -> float:
    return float(evaluate_brown_model(model, load_patchset(patch_set), device="cpu").fpr95)


def evaluate(models: dict[str, str], region: float | None, fpr_set: Path, work: Path, args: argparse.Namespace
             ) -> dict[str, dict[str, Any]]:
    """MMA@3 on the sequences, FPR95 on ``fpr_set``'s held-out pairs and (unless ``--skip-sfm``)
    eval sfm on fountain-P11, every model at ``region`` (None: the region each model records)."""
    specs = [f"{name}={spec}" for name, spec in models.items()]
    geo = GeometryOptions(mag=region)
    tag = "own region" if region is None else f"mag {region:g}"
    rows: dict[str, dict[str, Any]] = {name: {} for name in models}
    log(f"eval sequences ({tag})")
    seqs = evaluate_sequences(DATA / "hpatches-sequences", specs, max_keypoints=args.max_keypoints, device="cpu",
                              geometry=geo)
    for r in seqs.models:
        # correct matches at 3 px per image pair (mean over pairs), beside the matches they come from
        correct = sum(q["num_matches"] * q["mma"][2] for q in r["pairs"] if q["mma"] is not None) / max(len(r["pairs"]), 1)
        rows[r["name"]] |= {"mma3": r["mma"]["overall"][2], "matches": r["num_matches"]["overall"], "correct3": correct,
                            "mag": r["geometry"]["mag"], "source": r["geometry_source"]}
    log(f"FPR95 on castle's held-out points ({fpr_set.name})")
    for name, spec in models.items():
        rows[name]["fpr95"] = fpr95(spec, fpr_set)
    if not args.skip_sfm:
        log(f"eval sfm on fountain-P11 ({tag})")
        cfg = ReconstructConfig(extract=ExtractConfig(max_keypoints=4096, max_size=1024, device="cpu", geometry=geo),
                                camera=CameraOptions(single_camera=True))
        where = work / ("eval-sfm" if region is None else f"eval-sfm-mag{region:g}")
        res = evaluate_sfm([DATA / "sfm" / "fountain-P11"], specs, where, cfg, plot=False)
        for m in res.rows:
            rows[m.model] |= {"registered": f"{m.registered}/{m.images}", "c_mean": m.centre_error_mean,
                              "c_med": m.centre_error_median, "auc5": m.pose_auc.get("5")}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/descbal-sfm-training"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=64)
    ap.add_argument("--mag", type=float, action="append", default=None,
                    help="regions to cut the castle set at and train on (repeatable; default 5)")
    ap.add_argument("--region", type=float, action="append", default=None,
                    help="further regions to evaluate the networks at (repeatable; default 8): FPR95 on the castle "
                         "set cut there, MMA@3 and eval sfm")
    ap.add_argument("--combined", action="store_true", help="also train on the castle set and the photo pool together")
    ap.add_argument("--max-keypoints", type=int, default=1000, help="DoG keypoints per image for MMA")
    ap.add_argument("--skip-sfm", action="store_true", help="leave out eval sfm on fountain-P11")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    mags = args.mag or [PatchGeometry().mag]
    regions = args.region if args.region is not None else [8.0]
    sched = f"{args.steps}x{args.classes}"

    castle_model = castle_reconstruction(work)
    sets = {m: castle_set(work, castle_model, m) for m in sorted({*mags, *regions})}
    pool = photo_pool(work)

    models: dict[str, str] = {"SIFT (OpenCV)": "sift", "TFeat (published, liberty)": str(TFEAT),
                              "HyNet untrained": "hynet"}
    models[f"HyNet balance, photo pool, {sched}"] = str(train([pool], work / f"run-pool-{sched}", args.steps,
                                                              args.classes))
    for m in mags:
        run = work / f"run-castle-mag{m:g}-{sched}"
        models[f"HyNet balance, castle mag {m:g}, {sched}"] = str(train([sets[m]], run, args.steps, args.classes))
    if args.combined:
        run = work / f"run-castle+pool-{sched}"
        models[f"HyNet balance, castle + pool, {sched}"] = str(train([sets[mags[0]], pool], run, args.steps,
                                                                     args.classes))

    tables = {"own": evaluate(models, None, sets[mags[0]], work, args)}
    networks = {n: s for n, s in models.items() if s != "sift"}  # OpenCV's SIFT has its own region
    for r in regions:
        tables[f"{r:g}"] = evaluate(networks, r, sets[r], work, args)
    print_tables(tables, args)
    if args.json:
        args.json.write_text(json.dumps(tables, indent=1) + "\n")


def _f(v: Any, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{fmt}}"


def print_tables(tables: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    print(f"Training on castle-P30 correspondences vs a photo pool. MMA@3: {DATA / 'hpatches-sequences'} "
          f"({args.max_keypoints} DoG keypoints per image); FPR95: castle's held-out points (set cut at the region "
          "shown); eval sfm: fountain-P11 (1024 px, 4096 keypoints); cpu")
    w = max(len(n) for t in tables.values() for n in t) + 2
    print(f"{'descriptor':<{w}}{'region':>8}{'MMA@3':>7}{'match':>7}{'corr@3':>7}{'FPR95':>7}{'reg':>7}{'C mean':>8}"
          f"{'C med':>8}{'AUC@5':>7}")
    for rows in tables.values():
        for name, r in rows.items():
            region = "own" if name.startswith("SIFT") else f"{r.get('mag'):g}"
            print(f"{name:<{w}}{region:>8}{_f(r.get('mma3'), '.3f', 7)}{_f(r.get('matches'), '.0f', 7)}"
                  f"{_f(r.get('correct3'), '.0f', 7)}{_f(r.get('fpr95'), '.3f', 7)}{_f(r.get('registered'), '', 7)}"
                  f"{_f(r.get('c_mean'), '.4f', 8)}"
                  f"{_f(r.get('c_med'), '.4f', 8)}{_f(r.get('auc5'), '.3f', 7)}")
    rows = tables["own"]
    castle = {n: r for n, r in rows.items() if "castle" in n}
    pool = next((r for n, r in rows.items() if "photo pool" in n), {})
    sift = rows.get("SIFT (OpenCV)", {})
    for name, r in castle.items():
        mma = r["mma3"] > max(pool.get("mma3", 1.0), sift.get("mma3", 1.0))
        print(f"target {name}: mean MMA@3 above the photo-pool model ({pool.get('mma3', float('nan')):.3f}) and "
              f"SIFT ({sift.get('mma3', float('nan')):.3f}) at its region: {'met' if mma else 'NOT met'} "
              f"({r['mma3']:.3f})")
        if "c_mean" in r and r["c_mean"] is not None:
            better = [k for k, v in (("photo pool", pool), ("SIFT", sift))
                      if v.get("c_mean") is not None and r["c_mean"] < v["c_mean"]]
            print(f"target {name}: fountain centre error {r['c_mean']:.4f} (pool {pool.get('c_mean')}, SIFT "
                  f"{sift.get('c_mean')}), registered {r['registered']}: lower than {', '.join(better) or 'neither'}")


if __name__ == "__main__":
    main()
