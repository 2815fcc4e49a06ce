"""A small built-in HPatches-style example, generated from a seed (no download).

Six synthetic sequences of textured images, built exactly as ``descbal make-benchmark`` builds
a benchmark from photos: each texture becomes a sequence with exact homographies
(:func:`descbal.data.synthetic.synthetic_sequence`; three ``i_`` with strong photometric change,
three ``v_`` with stronger geometric change), and its patches are SIFT keypoints of image 1 with
easy / hard / tough jitter reprojected into images 2..6
(:func:`descbal.data.make_benchmark.sequence_patches`), written in the HPatches release layout
(16 stacked 65-px PNGs per sequence). A baseline descriptor is computed, written as official
CSVs, task files are generated in the official format, and ``descbal eval hpatches`` scores it.
Any model spec can be described instead of the baseline (``descbal eval example -m MODEL``).
It exists so that a fresh install can show the whole evaluation path in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from descbal.data.hpatches_data import write_patch_release
from descbal.data.make_benchmark import BenchmarkConfig, sequence_patches
from descbal.data.sequences import Sequence
from descbal.data.synthetic import synthetic_sequence
from descbal.data.taskgen import write_retrieval_tasks, write_splits, write_verification_tasks
from descbal.eval.hpatches import HPatchesResult, evaluate_hpatches
from descbal.eval.hpatches_io import load_descriptors, write_descriptor_tree
from descbal.eval.model_eval import describe_hpatches, patch_descriptor
from descbal.models.resolve import ModelSpec, resolve_model
from descbal.progress import Progress

SPLIT = "example"
#: Side of each generated texture (pixels): room for 300 separated keypoint regions.
TEXTURE_SIZE = 480


def texture(rng: np.random.Generator, size: int = TEXTURE_SIZE) -> NDArray[np.uint8]:
    """Multi-scale band-pass noise plus random strokes: corners and blobs at many scales.

    Shape: -> (size, size) uint8.
    """
    img = np.zeros((size, size), np.float32)
    for sigma, w in ((1.5, 0.5), (4.0, 1.0), (10.0, 1.5)):
        img += w * cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma) * sigma
    img = (img - img.mean()) / (img.std() + 1e-6) * 40 + 128
    for _ in range(40 * size * size // 360**2):  # the stroke density of a 360-px texture with 40
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        p2 = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.line(img, p1, p2, float(rng.uniform(0, 255)), int(rng.integers(1, 4)))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_example_patches(seed: int = 0, num_sequences: int = 6, patches_per_sequence: int = 300
                         ) -> dict[str, NDArray[np.uint8]]:
    """Generate the example sequences (see the module docstring), each from its own seed.

    Returns:
        sequence name -> (16, N, 65, 65) uint8 in TYPES order, N <= ``patches_per_sequence``
        (fewer when the texture has fewer separated keypoint regions).
    """
    cfg = BenchmarkConfig(seed=seed, max_keypoints=patches_per_sequence)
    out = {}
    for k in range(num_sequences):
        kind = "i" if k % 2 == 0 else "v"
        name = f"{kind}_example{k // 2 + 1}"
        rng = np.random.default_rng([seed, k])
        images, homographies = synthetic_sequence(texture(rng), kind, rng)
        out[name] = sequence_patches(Sequence(name, images, homographies), cfg, rng)
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
