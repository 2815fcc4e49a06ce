"""Throughput of a whole training step, against a plain fp32 eager loop with CPU augmentation.

A step = class-balanced sampling + augmentation + forward (teacher and student passes for the
balance loss) + loss + backward + optimiser step. Measured, in the same run and on the same
device:

* descbal: on-device batched augmentation; on CUDA with bf16 autocast, channels_last and (with
  ``--compile``) ``torch.compile``;
* baseline: the reference pipeline's structure -- every patch augmented on the CPU one by one
  (PIL affine + random resized crop as torchvision does it, or OpenCV if Pillow is absent),
  stacked, copied to the device, fp32 eager forward/backward;
* sampling + augmentation alone (descbal), which must be >= 5x faster than the step it feeds.

Shapes: Self-TNet's 2560 classes x 3 patches on CUDA; ``--classes`` (default 128) on the CPU.
Target on one H100/H200: >= 300,000 patches/s end to end. Usage:
``python benchmarks/train_step.py [--device cuda] [--compile] [--loss balance] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from descbal.losses import build_pipeline
from descbal.models import build_model
from descbal.train.augment import AugmentConfig, apply_augment, sample_params
from descbal.train.optim import OptimConfig, make_optimizer
from descbal.train.sampler import ClassBatchSampler
from descbal.train.step import loss_step


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


def run(device: torch.device, classes: int, npos: int, steps: int, loss_name: str, fast: bool, compile_model: bool,
        patches: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Time ``steps`` full steps (after 3 warm-up steps); returns patches/s and times."""
    torch.manual_seed(0)
    model = build_model("hynet").to(device)
    pipeline = build_pipeline(loss_name).to(device)
    if fast and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if (fast and compile_model) else model
    opt = make_optimizer(model, OptimConfig(), 1e-3)
    sampler = ClassBatchSampler(labels, classes, npos, seed=0)
    cfg = AugmentConfig()
    data = torch.from_numpy(patches).to(device) if fast else None
    lab_t = torch.from_numpy(labels).to(device)
    rng = np.random.default_rng(1)
    n_patches = 0
    aug_time = 0.0
    t_total = 0.0
    for i in range(steps + 3):
        _sync(device)
        t0 = time.perf_counter()
        b = sampler.batch(0, i)
        if fast:
            change = np.r_[True, b.labels[1:] != b.labels[:-1]]
            params = sample_params(cfg, np.cumsum(change) - 1, len(b.classes), rng)
            x = apply_augment(data.index_select(0, torch.from_numpy(b.indices).to(device)), params)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = torch.from_numpy(np.stack([cpu_augment_one(patches[j], rng, cfg) for j in b.indices]))[:, None].to(device)
        _sync(device)
        t1 = time.perf_counter()
        y = lab_t.index_select(0, torch.from_numpy(b.indices).to(device))
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if (fast and device.type == "cuda") else torch.autocast(
            "cpu", enabled=False)
        with amp:
            out = loss_step(step_model, pipeline, x, y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        _sync(device)
        t2 = time.perf_counter()
        if i >= 3:
            n_patches += len(b.indices)
            aug_time += t1 - t0
            t_total += t2 - t0
    return {"patches_per_s": n_patches / t_total, "step_s": t_total / steps, "sample_aug_s": aug_time / steps,
            "sample_aug_patches_per_s": n_patches / max(aug_time, 1e-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--classes", type=int, default=None, help="classes per batch (default 2560 on CUDA, 128 on CPU)")
    ap.add_argument("--npos", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--loss", default="balance", help="a registered loss (descbal.losses.LOSSES)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--baseline-steps", type=int, default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    classes = args.classes or (2560 if dev.type == "cuda" else 128)
    steps = args.steps or (20 if dev.type == "cuda" else 5)
    base_steps = args.baseline_steps or (3 if dev.type == "cuda" else 2)
    patches, labels = make_data(max(classes * 4, 20000 if dev.type == "cuda" else 1000), 3)
    fast = run(dev, classes, args.npos, steps, args.loss, True, args.compile, patches, labels)
    base = run(dev, classes, args.npos, base_steps, args.loss, False, False, patches, labels)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nTraining step throughput on {name}: {classes} classes x {args.npos} patches, loss {args.loss}")
    print(f"{'pipeline':<44}{'patches/s':>12}{'step ms':>10}{'sample+aug ms':>15}")
    label = "descbal (on-device aug" + (", bf16, channels_last" if dev.type == "cuda" else "") + \
        (", compiled" if args.compile else "") + ")"
    for lab, r in ((label, fast), ("baseline (per-patch CPU aug, fp32 eager)", base)):
        print(f"{lab:<44}{r['patches_per_s']:>12,.0f}{1000 * r['step_s']:>10.1f}{1000 * r['sample_aug_s']:>15.1f}")
    print(f"speed-up end to end: {fast['patches_per_s'] / base['patches_per_s']:.1f}x")
    ratio = fast["step_s"] / max(fast["sample_aug_s"], 1e-12)
    print(f"sampling + augmentation: {fast['sample_aug_patches_per_s']:,.0f} patches/s, "
          f"{ratio:.1f}x faster than the step it feeds (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
    if dev.type == "cuda":
        ok = fast["patches_per_s"] >= 300_000
        print(f"target >= 300,000 patches/s end to end: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
