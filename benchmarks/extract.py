"""Speed of ``descbal extract``'s patch + descriptor stage against a naive per-keypoint loop.

Case: one 1024x768 gray photo (``train-pool/mods__river1.jpg`` from ``../shared/data`` when
present, else a generated texture) with its 2,000 strongest SIFT keypoints (detected once, not
timed: detection is the same for both). Same model, same keypoints, same device, same run:

* **descbal** (:class:`descbal.extract.describers.NetworkDescriber`): the image pyramid to the
  device once and every patch sampled in one batch (:mod:`descbal.extract.sampling`: ``cv2.remap``
  per level on the CPU, one ``grid_sample`` over an atlas of the levels elsewhere), descriptors in batches of
  ``--batch-size`` by an inference copy of the model (:mod:`descbal.models.inference`: BatchNorm
  folded, in-place activations, channels-last on the CPU); in float32 and with ``--bf16``, each
  eager and compiled (``--compile``: :func:`descbal.compiling.compile_function`, inductor; the
  compile time, the first call's, is printed once per describer and excluded from images/s;
  where inductor cannot compile the row says it ran eager and why);
* **naive crop loop**: one ``cv2.warpAffine`` per keypoint (32x32, the same affine, bilinear,
  BORDER_REFLECT_101, straight from the full-resolution image), the stack then described in
  the same batches by the model as loaded (eval mode, float32), as a user's script would;
* **naive per-keypoint**: the same crop loop with one forward pass per keypoint (timed on
  ``--per-keypoint`` keypoints and extrapolated linearly to 2,000, which the table says).

On CUDA it also times candidates for the GPU defaults: channels-last weights (float32 and
bfloat16) and ``cudnn.benchmark``.

The table also prints the largest descriptor difference between descbal's float32 network and
the model as loaded, on the same patches (float rounding only).

Reported per device (CPU, and CUDA when available): images/s for the patch stage alone and end
to end (patches + descriptors), median of ``--repeats`` runs after one warm-up, and the speed-up
of batched over each naive variant. Target: >= 10x the naive loop on the same device.

The ``bound`` row times descbal's fastest forward pass alone on ready patches: the end-to-end
speed-up over the naive crop loop cannot exceed it whatever the patch stage costs. Where it is
under 10x (a CPU, where the network is nearly all of the naive loop's time), the target needs a
faster network forward, not faster sampling.

Usage: ``python benchmarks/extract.py [--model hardnet|tfeat|PATH] [--repeats 5] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from descbal.detectors import detect
from descbal.extract.describers import NetworkDescriber
from descbal.extract.sampling import image_pyramid, sample_patches
from descbal.geometry import PatchGeometry, patch_affines
from descbal.images import UnreadableImageError, read_gray
from descbal.models import resolve_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
W, H, N_KP = 1024, 768, 2000


def load_image() -> tuple[np.ndarray, str]:
    photo = SHARED / "train-pool" / "mods__river1.jpg"
    if photo.is_file():
        try:
            img = read_gray(photo)
        except UnreadableImageError:
            img = None
        if img is not None and img.shape == (H, W):
            return img, photo.name
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 256, (H // 6, W // 6), dtype=np.uint8), (W, H), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(img, (0, 0), 1.0), "generated texture"


def load_model(spec: str) -> torch.nn.Module:
    """The network a model spec names (an architecture is untrained, seed 0)."""
    model = resolve_model(spec)
    if model.network is None:
        sys.exit(f"extract benchmark: --model {spec!r} is a classical descriptor; this benchmark times networks")
    return model.network


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median seconds of ``repeats`` calls after one warm-up."""
    fn()
    sync()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def run_device(dev: torch.device, img: np.ndarray, kps, model: torch.nn.Module, args: argparse.Namespace) -> list[dict]:
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    geo = PatchGeometry()
    desc = NetworkDescriber(model, geo, dev, args.batch_size)
    desc_bf16 = NetworkDescriber(model, geo, dev, args.batch_size, bf16=True)
    compiled = {bf16: NetworkDescriber(model, geo, dev, args.batch_size, bf16=bf16, compile=True) for bf16 in (False, True)}
    plain = copy.deepcopy(model).to(dev).eval()  # what a user script runs: the model as loaded
    scale = desc.scale
    aff = patch_affines(kps.xy, kps.size, kps.angle, geo, 32)

    def naive_patches() -> torch.Tensor:
        crops = [cv2.warpAffine(img, a, (32, 32), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REFLECT_101) for a in aff]
        return torch.from_numpy(np.stack(crops)).to(dev).float().unsqueeze(1)

    @torch.inference_mode()
    def plain_forward(x: torch.Tensor) -> np.ndarray:
        return torch.cat([plain(x[s : s + args.batch_size] * scale) for s in range(0, len(x), args.batch_size)]).cpu().numpy()

    def batched_patches() -> torch.Tensor:
        return sample_patches(image_pyramid(img, dev), kps.xy, kps.size, kps.angle, geo, 32)

    n_one = min(args.per_keypoint, len(aff))

    @torch.inference_mode()
    def naive_per_keypoint() -> None:
        for a in aff[:n_one]:
            crop = cv2.warpAffine(img, a, (32, 32), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REFLECT_101)
            x = torch.from_numpy(crop).to(dev).float()[None, None] * scale
            plain(x).cpu()

    t_naive_p = timed(naive_patches, args.repeats, sync)
    t_batch_p = timed(batched_patches, args.repeats, sync)
    t_naive_e = timed(lambda: plain_forward(naive_patches()), args.repeats, sync)
    t_batch_e = timed(lambda: desc.describe_patches(batched_patches()), args.repeats, sync)
    t_bf16_e = timed(lambda: desc_bf16.describe_patches(batched_patches()), args.repeats, sync)
    t_one = timed(naive_per_keypoint, max(1, args.repeats // 2), sync) * len(aff) / n_one
    ready = batched_patches()
    t_fwd = min(timed(lambda: desc.describe_patches(ready), args.repeats, sync),
                timed(lambda: desc_bf16.describe_patches(ready), args.repeats, sync))
    gap = float(np.abs(desc.describe_patches(batched_patches()) - plain_forward(batched_patches())).max())
    t_comp, compile_s, comp_gap = {}, {}, {}
    for bf16, d in compiled.items():
        t = time.perf_counter()  # the first call compiles (both batch sizes: 1,024 and the last 976)
        first = d.describe_patches(ready)
        sync()
        compile_s[bf16] = time.perf_counter() - t
        comp_gap[bf16] = float(np.abs(first - (desc_bf16 if bf16 else desc).describe_patches(ready)).max())
        t_comp[bf16] = timed(lambda d=d: d.describe_patches(batched_patches()), args.repeats, sync)
        t_fwd = min(t_fwd, timed(lambda d=d: d.describe_patches(ready), args.repeats, sync))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    rows = [
        {"device": name, "stage": "patches", "method": "naive crop loop (warpAffine)", "images_per_s": 1 / t_naive_p},
        {"device": name, "stage": "patches", "method": "batched (pyramid + sampling)", "images_per_s": 1 / t_batch_p,
         "speedup": t_naive_p / t_batch_p},
        {"device": name, "stage": "end to end", "method": "naive per-keypoint (crop + forward each)"
         + (f", extrapolated from {n_one}" if n_one < len(aff) else ""), "images_per_s": 1 / t_one},
        {"device": name, "stage": "end to end", "method": "naive crop loop + batched forward", "images_per_s": 1 / t_naive_e},
        {"device": name, "stage": "end to end", "method": "descbal extract (float32)", "images_per_s": 1 / t_batch_e,
         "speedup": t_naive_e / t_batch_e, "speedup_vs_per_keypoint": t_one / t_batch_e, "max_abs_diff_vs_plain": gap},
        {"device": name, "stage": "end to end", "method": "descbal extract --bf16", "images_per_s": 1 / t_bf16_e,
         "speedup": t_naive_e / t_bf16_e, "speedup_vs_per_keypoint": t_one / t_bf16_e},
        *({"device": name, "stage": "end to end", "method": f"descbal extract {label} --compile"
           + ("" if d.compile_path.compiled else f" (ran eager: {d.compile_path.reason})"),
           "images_per_s": 1 / t_comp[bf16], "speedup": t_naive_e / t_comp[bf16],
           "speedup_vs_per_keypoint": t_one / t_comp[bf16], "compile_s": compile_s[bf16],
           "max_abs_diff_vs_eager": comp_gap[bf16], "compile": d.compile_path.to_dict()}
          for (bf16, d), label in zip(compiled.items(), ("(float32)", "--bf16"), strict=True)),
        # Amdahl: with patch sampling free, descbal still runs its fastest forward, so no
        # sampling work can push the end-to-end speed-up past this.
        {"device": name, "stage": "bound",
         "method": "descriptors alone (fastest of float32 / bf16, eager / compiled), patches free",
         "images_per_s": 1 / t_fwd, "speedup": t_naive_e / t_fwd},
    ]
    if dev.type == "cuda":  # candidates for the GPU defaults, measured last (cudnn.benchmark stays on)
        for label, bf16 in (("float32", False), ("--bf16", True)):
            d = NetworkDescriber(model, geo, dev, args.batch_size, bf16=bf16)
            d.model = d.forward = d.model.to(memory_format=torch.channels_last)
            t = timed(lambda d=d: d.describe_patches(batched_patches()), args.repeats, sync)
            rows.append({"device": name, "stage": "end to end", "method": f"descbal extract ({label}), channels-last weights",
                         "images_per_s": 1 / t, "speedup": t_naive_e / t})
        torch.backends.cudnn.benchmark = True
        t = timed(lambda: desc_bf16.describe_patches(batched_patches()), args.repeats, sync)
        rows.append({"device": name, "stage": "end to end", "method": "descbal extract --bf16, cudnn.benchmark",
                     "images_per_s": 1 / t, "speedup": t_naive_e / t})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="hardnet", help="any descbal model spec naming a network: an architecture "
                    "(untrained, seed 0) or a weights file")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--per-keypoint", type=int, default=50, help="keypoints timed for the per-keypoint variant")
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    img, source = load_image()
    kps = detect(img, "sift", N_KP)
    model = load_model(args.model)
    print(f"image {source} {img.shape[1]}x{img.shape[0]}, {len(kps)} SIFT keypoints, model {args.model}, "
          f"torch {torch.__version__}, OpenCV {cv2.__version__}", file=sys.stderr)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() and not args.cpu_only else [])
    rows = []
    for dev in devices:
        rows += run_device(dev, img, kps, model, args)
    print("| device | stage | method | images/s | speed-up |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        sp = ""
        if "speedup" in r:
            sp = f"{r['speedup']:.1f}x vs naive crop loop"
            if "speedup_vs_per_keypoint" in r:
                sp += f"; {r['speedup_vs_per_keypoint']:.1f}x vs per-keypoint"
            if "max_abs_diff_vs_plain" in r:
                sp += f"; max descriptor diff {r['max_abs_diff_vs_plain']:.1e}"
            if "compile_s" in r:
                sp += f"; first call (compiling) {r['compile_s']:.1f} s; max diff vs eager {r['max_abs_diff_vs_eager']:.1e}"
        print(f"| {r['device']} | {r['stage']} | {r['method']} | {r['images_per_s']:.3g} | {sp} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"image": source, "keypoints": len(kps), "model": args.model,
                                               "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
