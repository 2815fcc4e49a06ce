"""``descbal quickstart``: the whole pipeline on photos shipped inside scikit-image's wheel.

No download: (1) a self-supervised patch pool from the training photos (``cache images``);
(2) a small HyNet trained with the Self-TNet small recipe; (3) an HPatches-format benchmark
built from held-out photos with synthetic homographies (``make-benchmark``); (4) a table
comparing the trained model, the same network untrained, and SIFT on the same patches. The
trained model is written to ``OUT/run/model.pt`` for ``descbal extract``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from descbal.data.make_benchmark import BenchmarkConfig, make_benchmark
from descbal.data.patchset import load_patchset
from descbal.data.selfsup import PoolConfig, cache_images
from descbal.data.synthetic import synthetic_sequence, write_sequence
from descbal.errors import DataMissingError
from descbal.eval.hpatches import evaluate_hpatches
from descbal.eval.model_eval import evaluate_brown_model, hpatches_descriptors
from descbal.images import UnreadableImageError, read_gray
from descbal.models import build_model, resolve_model
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult
from descbal.run_config import resolve_run_config
from descbal.train.trainer import Trainer

#: Photographs in scikit-image's wheel (``skimage/data``) used for training.
TRAIN_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "clock_motion.png", "coins.png", "grass.png",
                "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
                "page.png", "retina.jpg", "text.png")
#: Held-out photographs the benchmark is built from, with their sequence kind.
BENCH_PHOTOS = (("coffee.png", "v"), ("chelsea.png", "v"), ("rocket.jpg", "v"), ("motorcycle_right.png", "i"),
                ("color.png", "i"), ("logo.png", "i"))


@dataclass
class QuickstartResult(JsonResult):
    """The quickstart's comparison: one row per descriptor (``{"descriptor", "verification",
    "matching", "retrieval", "fpr95"}``: HPatches-protocol headline fractions on the synthetic
    benchmark and FPR95 on the pool's held-out pairs, None for SIFT), the trained model, the
    benchmark folder, the pool and the benchmark's sequences."""

    rows: list[dict[str, Any]]
    model: str
    benchmark: str
    pool: str
    sequences: list[str]


def skimage_data_dir() -> Path:
    """The ``data`` folder inside the installed scikit-image package (no network)."""
    try:
        import skimage
    except ImportError:
        raise DataMissingError("scikit-image is not installed (pip install scikit-image)") from None
    return Path(skimage.__file__).parent / "data"


def run_quickstart(out: str | Path, seed: int = 0, quick: bool = False,
                   progress: Progress | None = None,
                   log: Callable[[str], None] = lambda s: None) -> QuickstartResult:
    """Run the quickstart into ``out``; ``quick`` shrinks every stage (for tests).

    ``log`` receives one line per stage; ``progress`` the stages' loops (``"images"``,
    ``"write"``, ``"train"`` with the trainer's loss, lr and patches/s, ``"sequences"``).
    """
    out = Path(out)
    progress = or_no_progress(progress)
    data = skimage_data_dir()
    photos = out / "photos"
    if photos.exists():
        shutil.rmtree(photos)
    photos.mkdir(parents=True)
    for name in TRAIN_PHOTOS:
        if (data / name).is_file():
            shutil.copy(data / name, photos / name)
    log(f"1/4 patch pool from {len(list(photos.iterdir()))} photos shipped with scikit-image")
    pool_cfg = PoolConfig(seed=seed, max_keypoints=60 if quick else 300, views=3 if quick else 4, pairs=2000)
    pool_path = out / "pool.h5"
    cache_images(photos, pool_path, pool_cfg, progress=progress)
    pool = load_patchset(pool_path)

    log("2/4 training a small HyNet with the Self-TNet recipe (self-tnet-small)")
    overrides = [f'data.train="{pool_path}"', f"loop.seed={seed}", "loop.device=cpu"]
    if quick:
        overrides += ["loop.epochs=1", "loop.iters_per_epoch=4", "loop.classes_per_batch=16", "phases.anneal.cycles.iters=2"]
    cfg = resolve_run_config(recipe="self-tnet-small", overrides=overrides)
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    trainer = Trainer(cfg, run_dir, pool, None)
    trainer.fit(progress=progress, log=log)

    log("3/4 benchmark from held-out photos with synthetic homographies")
    seq_dir = out / "sequences"
    rng = np.random.default_rng(seed + 7)
    for name, kind in BENCH_PHOTOS[: 2 if quick else None]:
        try:
            img = read_gray(data / name)
        except UnreadableImageError:
            continue
        images, hs = synthetic_sequence(img, kind, rng)
        write_sequence(seq_dir / f"{kind}_{Path(name).stem}", images, hs)
    bench = out / "benchmark"
    bcfg = BenchmarkConfig(seed=seed, max_keypoints=80 if quick else 400, verification_pairs=2000 if quick else 20000)
    make_benchmark(seq_dir, bench, bcfg, progress=progress)

    log("4/4 evaluation: trained vs untrained network vs SIFT")
    seqs = sorted(p.name for p in (bench / "patches").iterdir() if p.is_dir())
    torch.manual_seed(cfg.loop.seed)  # the trained model's own initial weights
    untrained = build_model(cfg.model.name, **cfg.model.params)
    rows = []
    candidates = [resolve_model(trainer.model, name="Self-TNet small (trained)"),
                  resolve_model(untrained, name="HyNet untrained"), resolve_model("SIFT=sift")]
    for model in candidates:
        desc = hpatches_descriptors(model, bench / "patches", seqs, device="cpu")
        fpr = None if model.classical else evaluate_brown_model(model, pool).fpr95  # the column compares the networks
        res = evaluate_hpatches(desc, bench / "tasks", bcfg.split)
        rows.append({"descriptor": model.name, **res.headline, "fpr95": fpr})
    return QuickstartResult(rows=rows, model=str(run_dir / "model.pt"), benchmark=str(bench), pool=str(pool_path),
                            sequences=seqs)

