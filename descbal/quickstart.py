"""``descbal quickstart``: the whole pipeline on photos shipped inside scikit-image's wheel.

No download: (1) a self-supervised patch pool from the training photos (``cache images``);
(2) a small HyNet trained with the Self-TNet small recipe, in a run folder like ``descbal
train``'s (``OUT/run``: config.toml, environment.json, checkpoints; ``descbal train --resume
OUT/run`` works on it); (3) an HPatches-format benchmark built from held-out photos with
synthetic homographies (``make-benchmark``); (4) a table comparing the trained model, the same
network untrained, and SIFT on the same patches and on a real stereo pair (Middlebury 2014
Motorcycle, ``descbal eval stereo --builtin motorcycle``). The trained model is written to
``OUT/run/model.pt`` for ``descbal extract``.

Idempotent like every other command: a rerun on the same ``OUT`` skips finished stages (the
pool while up to date, a finished run, the benchmark and the evaluation while their inputs are
unchanged; ``OUT/quickstart.json`` records them) and resumes an interrupted training run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from descbal import __version__
from descbal.config import load_config, to_dict
from descbal.data.make_benchmark import BenchmarkConfig, make_benchmark
from descbal.data.patchset import load_patchset
from descbal.data.paths import skimage_data_dir
from descbal.data.selfsup import PoolConfig, cache_images
from descbal.data.synthetic import synthetic_sequence, write_sequence
from descbal.errors import BadInputError
from descbal.eval.hpatches import evaluate_hpatches
from descbal.eval.model_eval import evaluate_brown_model, hpatches_descriptors
from descbal.eval.stereo import evaluate_stereo, open_stereo_pair
from descbal.fileio import write_text_atomic
from descbal.images import UnreadableImageError, read_gray
from descbal.models import build_model, resolve_model
from descbal.models.resolve import state_dict_sha256
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult
from descbal.run_config import resolve_run_config
from descbal.train.config import RunConfig
from descbal.train.trainer import resume_run, start_run

__all__ = ["BENCH_PHOTOS", "DEFAULT_OUT", "QuickstartResult", "TRAIN_PHOTOS", "run_quickstart", "skimage_data_dir"]

#: The working folder when none is given (``descbal quickstart --out``).
DEFAULT_OUT = "descbal-quickstart"
#: Photographs in scikit-image's wheel (``skimage/data``) used for training; not the stereo
#: pair's (``motorcycle_left/right.png``): that real-data row must be held out.
TRAIN_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "clock_motion.png", "coins.png", "grass.png",
                "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "page.png", "retina.jpg",
                "text.png")
#: Held-out photographs the benchmark is built from, with their sequence kind.
BENCH_PHOTOS = (("coffee.png", "v"), ("chelsea.png", "v"), ("rocket.jpg", "v"), ("motorcycle_right.png", "i"),
                ("color.png", "i"), ("logo.png", "i"))


@dataclass
class QuickstartResult(JsonResult):
    """The quickstart's comparison: one row per descriptor (``{"descriptor", "verification",
    "matching", "retrieval", "fpr95", "stereo_mma3", "stereo_matches"}``: HPatches-protocol
    headline fractions on the synthetic benchmark, FPR95 on the pool's held-out pairs (None for
    SIFT), MMA@3 (fraction) and matches on the Motorcycle stereo pair), the trained model, the
    benchmark folder, the pool, the benchmark's sequences, the stereo evaluation's document
    (:class:`~descbal.eval.stereo.StereoResult`) and what each stage did this time
    (``stages``: ``{"pool", "training", "benchmark", "evaluation"}`` -> ``"done"``,
    ``"resumed"`` or ``"up to date"``)."""

    OMIT_NONE = ("stereo", "stages")

    rows: list[dict[str, Any]]
    model: str
    benchmark: str
    pool: str
    sequences: list[str]
    stereo: dict[str, Any] | None = None
    stages: dict[str, str] | None = None


#: The trained model's, the untrained network's and SIFT's display names.
TRAINED, UNTRAINED, SIFT = "Self-TNet small (trained)", "HyNet untrained", "SIFT"
#: Keypoints per image on the stereo pair (``descbal eval stereo``'s default; fewer with ``quick``).
STEREO_KEYPOINTS = 2048
_STATE = "quickstart.json"


def _copy_photos(data: Path, photos: Path) -> None:
    """The training photos in ``photos``, copied with their modification times (so the pool's
    fingerprint holds on a rerun) and nothing else there."""
    photos.mkdir(parents=True, exist_ok=True)
    for f in photos.iterdir():
        if f.name in TRAIN_PHOTOS:
            continue
        if f.is_dir():
            shutil.rmtree(f)
        else:
            f.unlink()
    for name in TRAIN_PHOTOS:
        src, dst = data / name, photos / name
        if src.is_file() and not (dst.is_file() and dst.stat().st_size == src.stat().st_size
                                  and dst.stat().st_mtime_ns == src.stat().st_mtime_ns):
            shutil.copy2(src, dst)


def _config_difference(a: RunConfig, b: RunConfig) -> list[str]:
    """The dotted keys whose values differ between two run configurations."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def _check_run(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse a run folder that holds a run of another configuration (before any work)."""
    if (run_dir / "config.toml").is_file():
        diff = _config_difference(load_config(RunConfig, run_dir / "config.toml"), cfg)
        if diff:
            raise BadInputError(f"holds a run of another configuration ({', '.join(diff[:4])} differ); use another "
                                "--out, or the options it was made with", run_dir)


def _train(cfg: RunConfig, run_dir: Path, progress: Progress, log: Callable[[str], None]) -> str:
    """Train (or resume, or skip) the run in ``run_dir``; returns what it did."""
    if (run_dir / "model.pt").is_file():
        log(f"2/4 training: {run_dir / 'model.pt'} is up to date")
        return "up to date"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        trainer = resume_run(run_dir)
        log(f"2/4 training: resuming {run_dir} at step {trainer.global_step}/{trainer.total_steps}")
        what = "resumed"
    else:
        log("2/4 training a small HyNet with the Self-TNet recipe (self-tnet-small)")
        trainer = start_run(cfg, run_dir)
        what = "done"
    trainer.fit(progress=progress, log=log)
    return what


def run_quickstart(out: str | Path = DEFAULT_OUT, seed: int = 0, quick: bool = False,
                   progress: Progress | None = None,
                   log: Callable[[str], None] = lambda s: None) -> QuickstartResult:
    """Run the quickstart into ``out`` (see the module docstring); ``quick`` shrinks every stage
    (for tests).

    ``log`` receives one line per stage (and the trainer's phase and validation lines);
    ``progress`` the stages' loops (``"images"``, ``"write"``, ``"train"`` with the trainer's
    loss, lr and patches/s, ``"sequences"``, ``"models"``). On Ctrl-C during training the run's
    checkpoint is written and KeyboardInterrupt raised: a rerun resumes it.

    Raises:
        BadInputError: ``out/run`` holds a run of another configuration (other ``seed`` or
            ``quick``).
        DataMissingError: scikit-image is not installed.
    """
    out = Path(out)
    progress = or_no_progress(progress)
    data = skimage_data_dir()
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / _STATE
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    stages: dict[str, str] = {}

    def save_state() -> None:
        write_text_atomic(state_path, json.dumps(state, indent=1) + "\n")

    pool_path = out / "pool.h5"
    overrides = [f"loop.seed={seed}", "loop.device=cpu"]
    if quick:
        overrides += ["loop.epochs=1", "loop.iters_per_epoch=4", "loop.classes_per_batch=16",
                      "phases.anneal.cycles.iters=2", "data.val_pairs=400"]
    cfg = resolve_run_config(recipe="self-tnet-small", overrides=overrides, data=pool_path)
    run_dir = out / "run"
    _check_run(cfg, run_dir)

    photos = out / "photos"
    _copy_photos(data, photos)
    log(f"1/4 patch pool from {len(list(photos.iterdir()))} photos shipped with scikit-image")
    pool_cfg = PoolConfig(seed=seed, max_keypoints=60 if quick else 300, views=3 if quick else 4, pairs=2000)
    pool_res = cache_images(photos, pool_path, pool_cfg, progress=progress)
    stages["pool"] = "up to date" if pool_res.skipped else "done"
    if pool_res.skipped:
        log(f"    {pool_path} is up to date")

    stages["training"] = _train(cfg, run_dir, progress, log)
    model_path = run_dir / "model.pt"

    seq_dir, bench = out / "sequences", out / "benchmark"
    bcfg = BenchmarkConfig(seed=seed, max_keypoints=80 if quick else 400, verification_pairs=2000 if quick else 20000)
    photos_used = BENCH_PHOTOS[: 2 if quick else None]
    bench_key = {"seed": seed, "photos": [list(p) for p in photos_used], "config": asdict(bcfg),
                 "descbal": __version__}
    if state.get("benchmark") == bench_key and (bench / "tasks").is_dir() and (bench / "patches").is_dir():
        log(f"3/4 benchmark: {bench} is up to date")
        stages["benchmark"] = "up to date"
    else:
        log("3/4 benchmark from held-out photos with synthetic homographies")
        for folder in (seq_dir, bench):  # our own folders: stale sequences must not join the benchmark
            if folder.exists():
                shutil.rmtree(folder)
        rng = np.random.default_rng(seed + 7)
        for name, kind in photos_used:
            try:
                img = read_gray(data / name)
            except UnreadableImageError:
                continue
            images, hs = synthetic_sequence(img, kind, rng)
            write_sequence(seq_dir / f"{kind}_{Path(name).stem}", images, hs)
        make_benchmark(seq_dir, bench, bcfg, progress=progress)
        state["benchmark"] = bench_key
        state.pop("evaluation", None)
        save_state()
        stages["benchmark"] = "done"

    stereo_kp = 300 if quick else STEREO_KEYPOINTS
    trained = resolve_model(model_path, name=TRAINED)
    assert trained.network is not None
    # the weights, not the file: torch.save's bytes change with the temporary file's name
    eval_key = {"benchmark": bench_key, "pool": pool_res.source_sha256,
                "weights_sha256": state_dict_sha256(trained.network), "seed": cfg.loop.seed,
                "stereo_keypoints": stereo_kp}
    done = state.get("evaluation")
    if done is not None and done.get("key") == eval_key:
        log(f"4/4 evaluation: up to date ({state_path})")
        stages["evaluation"] = "up to date"
        return QuickstartResult(**{**done["result"], "stages": stages})

    log("4/4 evaluation: trained vs untrained network vs SIFT, on the benchmark and on a real stereo pair "
        "(Middlebury Motorcycle)")
    seqs = sorted(p.name for p in (bench / "patches").iterdir() if p.is_dir())
    pool = load_patchset(pool_path)
    torch.manual_seed(cfg.loop.seed)  # the trained model's own initial weights
    untrained = build_model(cfg.model.name, **cfg.model.params)
    candidates = [trained, resolve_model(untrained, name=UNTRAINED),
                  resolve_model(f"{SIFT}=sift")]
    stereo = evaluate_stereo(open_stereo_pair(builtin="motorcycle"), candidates, max_keypoints=stereo_kp, device="cpu",
                             progress=progress)
    rows = []
    for i, model in enumerate(candidates):
        desc = hpatches_descriptors(model, bench / "patches", seqs, device="cpu")
        fpr = None if model.classical else evaluate_brown_model(model, pool).fpr95  # the column compares the networks
        res = evaluate_hpatches(desc, bench / "tasks", bcfg.split)
        rows.append({"descriptor": model.name, **res.headline, "fpr95": fpr, "stereo_mma3": stereo.mma_at(i, 3),
                     "stereo_matches": stereo.models[i]["num_matches"]})
    result = QuickstartResult(rows=rows, model=str(model_path), benchmark=str(bench), pool=str(pool_path),
                              sequences=seqs, stereo=stereo.to_json())
    state["evaluation"] = {"key": eval_key, "result": result.to_json()}
    save_state()
    stages["evaluation"] = "done"
    result.stages = stages
    return result
