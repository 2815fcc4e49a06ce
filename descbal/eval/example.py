"""A small built-in HPatches-style example, generated from a seed (no download).

Six synthetic sequences (three ``i_`` with strong photometric change, three ``v_`` with stronger
geometric change) of textured images; from each, reference patches and 15 target patches per
point with easy / hard / tough geometric jitter, written in the HPatches release layout (16
stacked 65-px PNGs per sequence). A baseline descriptor is computed, written as official CSVs,
task files are generated in the official format, and ``descbal eval hpatches`` scores it.
Any model spec can be described instead of the baseline (``descbal eval example -m MODEL``).
It exists so that a fresh install can show the whole evaluation path in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from descbal.data.hpatches_data import write_patch_release
from descbal.data.taskgen import write_retrieval_tasks, write_splits, write_verification_tasks
from descbal.eval.hpatches import HPatchesResult, evaluate_hpatches
from descbal.eval.hpatches_io import load_descriptors, write_descriptor_tree
from descbal.eval.model_eval import describe_hpatches, patch_descriptor
from descbal.models.resolve import ModelSpec, resolve_model
from descbal.progress import Progress

PATCH = 65
SPLIT = "example"
#: (max rotation deg, max log2 scale change, max shift px) of the easy / hard / tough jitter.
JITTER = {"e": (5.0, 0.1, 1.0), "h": (12.0, 0.25, 2.5), "t": (25.0, 0.4, 4.0)}


def _texture(rng: np.random.Generator, size: int) -> NDArray[np.float32]:
    """Multi-scale band-pass noise plus random strokes: corners and blobs at many scales."""
    img = np.zeros((size, size), np.float32)
    for sigma, w in ((1.5, 0.5), (4.0, 1.0), (10.0, 1.5)):
        img += w * cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma) * sigma
    img = (img - img.mean()) / (img.std() + 1e-6) * 40 + 128
    for _ in range(40):
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        p2 = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.line(img, p1, p2, float(rng.uniform(0, 255)), int(rng.integers(1, 4)))
    return img


def _extract(img: NDArray[np.float32], centres: NDArray[np.float64], angle: NDArray, scale: NDArray,
             shift: NDArray) -> NDArray[np.uint8]:
    """65x65 patches around ``centres`` after rotation (deg), scale and shift (px)."""
    out = np.empty((len(centres), PATCH, PATCH), np.uint8)
    c = (PATCH - 1) / 2.0
    for i, (x, y) in enumerate(centres):
        m = cv2.getRotationMatrix2D((c, c), float(angle[i]), float(scale[i]))
        # Map patch coordinates to image coordinates: invert the rotation about the centre.
        m = cv2.invertAffineTransform(m)
        m[:, 2] += (x + shift[i, 0] - c, y + shift[i, 1] - c)
        patch = cv2.warpAffine(img, m, (PATCH, PATCH), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
        out[i] = np.clip(np.rint(patch), 0, 255).astype(np.uint8)
    return out


def make_example_patches(seed: int = 0, num_sequences: int = 6, patches_per_sequence: int = 300
                         ) -> dict[str, NDArray[np.uint8]]:
    """Generate the example sequences. Returns sequence -> (16, N, 65, 65) uint8 (TYPES order)."""
    rng = np.random.default_rng(seed)
    out = {}
    size = 360
    for k in range(num_sequences):
        kind = "i" if k % 2 == 0 else "v"
        name = f"{kind}_example{k // 2 + 1}"
        base = _texture(rng, size)
        margin = 48
        centres = rng.uniform(margin, size - margin, size=(patches_per_sequence, 2))
        n = patches_per_sequence
        types = [_extract(base, centres, np.zeros(n), np.ones(n), np.zeros((n, 2)))]
        for noise in "eht":
            rot, lscale, shift = JITTER[noise]
            if kind == "v":
                rot, lscale = rot * 1.5, lscale * 1.5
            for _image in range(1, 6):
                gain = math.exp(rng.uniform(-0.6, 0.6)) if kind == "i" else math.exp(rng.uniform(-0.1, 0.1))
                gamma = math.exp(rng.uniform(-0.4, 0.4)) if kind == "i" else 1.0
                img = 255.0 * (np.clip(base, 0, 255) / 255.0) ** gamma * gain
                img = img + rng.normal(0, 3, img.shape).astype(np.float32)
                angle = rng.uniform(-rot, rot, n)
                scale = 2.0 ** rng.uniform(-lscale, lscale, n)
                sh = rng.uniform(-shift, shift, (n, 2))
                types.append(_extract(img.astype(np.float32), centres, angle, scale, sh))
        out[name] = np.stack(types)
    return out


def run_example(
    out_dir: str | Path,
    model: ModelSpec = "sift",
    seed: int = 0,
    patches_per_sequence: int = 300,
    progress: Progress | None = None,
    describe: Callable[[NDArray[np.uint8]], NDArray[np.float32]] | None = None,
    device: str | torch.device | None = None,
) -> HPatchesResult:
    """Generate the example, describe it and evaluate it. Returns the evaluation, with
    ``model``: the model's display name.

    Args:
        out_dir: where ``patches/``, ``descriptors/<name>/`` and ``tasks/`` are written.
        model: any model spec (:func:`descbal.models.resolve.resolve_model`): a classical
            descriptor (default ``sift``), a checkpoint, published weights, an architecture...
        patches_per_sequence: points per sequence (6 sequences).
        describe: optional custom patch descriptor, (N, 65, 65) uint8 -> (N, D) float32, used
            instead of the model's (``model`` then only names it).
        device: where a network runs (``auto``, ``cpu``, ``cuda``...).
    """
    out_dir = Path(out_dir)
    resolved = resolve_model(model)
    fn = describe or patch_descriptor(resolved, device)
    rng = np.random.default_rng(seed + 1)
    seqs = make_example_patches(seed, patches_per_sequence=patches_per_sequence)
    write_patch_release(out_dir / "patches", seqs)
    desc_dir = out_dir / "descriptors" / resolved.name.replace("/", "_")
    write_descriptor_tree(desc_dir, describe_hpatches(seqs, fn))
    tasks = out_dir / "tasks"
    write_splits(tasks, {SPLIT: list(seqs)})
    lengths = {k: v.shape[1] for k, v in seqs.items()}
    total = sum(lengths.values())
    write_verification_tasks(tasks, SPLIT, lengths, num_pairs=11 * total, rng=rng)
    write_retrieval_tasks(tasks, SPLIT, {k: v[0] for k, v in seqs.items()}, total // 4, total * 2 // 3, rng)
    loaded = load_descriptors(desc_dir, list(seqs))
    result = evaluate_hpatches(loaded, tasks, SPLIT, progress=progress)
    result.model = resolved.name
    return result
