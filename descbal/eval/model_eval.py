"""Evaluating a model directly: descriptors computed from cached patches, then the protocols.

Patches are resized to 32x32 exactly as the reference extraction scripts do (OpenCV
INTER_LINEAR on uint8, replicated bit for bit in ``descbal.models.describe``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from descbal.classical import get_classical
from descbal.data.hpatches_data import load_hpatches_cache, read_hpatches_sequence
from descbal.data.hpatches_layout import TYPES
from descbal.data.patchset import PatchSet
from descbal.errors import BadInputError
from descbal.eval.brown import BrownResult, evaluate_brown
from descbal.eval.hpatches_io import HPatchesDescriptors
from descbal.eval.metrics import Fpr95Definition
from descbal.models.describe import describe
from descbal.models.inference import inference_copy


def evaluate_brown_model(model: nn.Module, patchset: PatchSet, definition: Fpr95Definition = "hardnet",
                         max_pairs: int = 0, device: str | torch.device | None = None) -> BrownResult:
    """FPR95 of ``model`` on a Brown-schema patch set's pairs (only the patches in pairs are
    described). ``max_pairs`` > 0 keeps the first pairs only."""
    if patchset.pairs is None or len(patchset.pairs) == 0:
        raise BadInputError(f"patch set {patchset.name!r} has no pairs to evaluate")
    pairs = patchset.pairs if max_pairs <= 0 else patchset.pairs[:max_pairs]
    ids, inv = np.unique(pairs[:, :2], return_inverse=True)
    desc = describe(model, patchset.patches[ids], device=device)
    inv = inv.reshape(-1, 2)
    return evaluate_brown(desc, inv[:, 0], inv[:, 1], pairs[:, 2], definition)


def load_hpatches_patches(source: str | Path, sequences: Sequence[str]) -> dict[str, NDArray[np.uint8]]:
    """The patches of ``sequences`` from an HPatches cache (``descbal cache hpatches``) or a
    release folder (``<seq>/<type>.png``, e.g. from ``descbal make-benchmark``).
    Returns sequence -> (16, N, 65, 65) uint8 in TYPES order."""
    source = Path(source)
    if source.is_dir():
        patches = {}
        for seq in sequences:
            if (source / seq).is_dir():
                imgs = read_hpatches_sequence(source / seq)
                patches[seq] = np.stack([imgs[t] for t in TYPES])
    else:
        patches = load_hpatches_cache(source, sequences=list(sequences))
    missing = [s for s in sequences if s not in patches]
    if missing:
        raise BadInputError(f"HPatches patches lack sequence(s) {', '.join(missing[:5])}", source)
    return patches


def describe_hpatches(patches: dict[str, NDArray[np.uint8]],
                      fn: Callable[[NDArray[np.uint8]], NDArray[np.float32]]) -> HPatchesDescriptors:
    """Apply a patch descriptor ((N, H, W) uint8 -> (N, D)) to every image type of every sequence."""
    out = {}
    for seq, arr in patches.items():
        out[seq] = np.asarray(fn(arr.reshape(-1, *arr.shape[2:])), np.float32).reshape(arr.shape[0], arr.shape[1], -1)
    return HPatchesDescriptors(out)


def hpatches_descriptors(model: nn.Module | str, source: str | Path, sequences: Sequence[str],
                         device: str | torch.device | None = None) -> HPatchesDescriptors:
    """Descriptors of the HPatches patches of ``sequences`` (cache or release folder) by a model,
    or by a classical descriptor named as in ``descbal.classical`` (e.g. ``"sift"``).
    Returns sequence -> (16, N, D) float32."""
    patches = load_hpatches_patches(source, sequences)
    if isinstance(model, str):
        return describe_hpatches(patches, get_classical(model))
    net = inference_copy(model, device)  # once for every sequence
    return describe_hpatches(patches, lambda p: describe(net, p))
