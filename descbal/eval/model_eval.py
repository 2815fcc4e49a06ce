"""Evaluating a model directly: descriptors computed from cached patches, then the protocols.

Patches are resized to 32x32 exactly as the reference extraction scripts do (OpenCV
INTER_LINEAR on uint8, replicated bit for bit in ``descbal.models.describe``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from descbal.data.hpatches_data import load_hpatches_cache, read_hpatches_sequence
from descbal.data.patchset import PatchSet
from descbal.errors import BadInputError
from descbal.eval.brown import evaluate_brown
from descbal.eval.hpatches_io import TYPES, HPatchesDescriptors, write_descriptor_csv
from descbal.eval.metrics import Fpr95Definition
from descbal.models.describe import describe


def evaluate_brown_model(model: nn.Module, patchset: PatchSet, definition: Fpr95Definition = "hardnet",
                         max_pairs: int = 0, device: str | torch.device | None = None) -> dict:
    """FPR95 of ``model`` on a Brown-schema patch set's pairs (only the patches in pairs are
    described). ``max_pairs`` > 0 keeps the first pairs only."""
    if patchset.pairs is None or len(patchset.pairs) == 0:
        raise BadInputError(f"patch set {patchset.name!r} has no pairs to evaluate")
    pairs = patchset.pairs if max_pairs <= 0 else patchset.pairs[:max_pairs]
    ids, inv = np.unique(pairs[:, :2], return_inverse=True)
    desc = describe(model, patchset.patches[ids], device=device)
    inv = inv.reshape(-1, 2)
    return evaluate_brown(desc, inv[:, 0], inv[:, 1], pairs[:, 2], definition)


def hpatches_descriptors(model: nn.Module, cache: str | Path, sequences: Sequence[str],
                         device: str | torch.device | None = None) -> HPatchesDescriptors:
    """Describe the 16 patch images of each sequence from an HPatches cache (``descbal cache
    hpatches``) or a release folder (``<seq>/<type>.png``, e.g. from ``descbal make-benchmark``).
    Returns sequence -> (16, N, D) float32."""
    cache = Path(cache)
    if cache.is_dir():
        patches = {}
        for seq in sequences:
            if (cache / seq).is_dir():
                imgs = read_hpatches_sequence(cache / seq)
                patches[seq] = np.stack([imgs[t] for t in TYPES])
    else:
        patches = load_hpatches_cache(cache, sequences=list(sequences))
    missing = [s for s in sequences if s not in patches]
    if missing:
        raise BadInputError(f"HPatches cache lacks sequence(s) {', '.join(missing[:5])}", cache)
    out = {}
    for seq in sequences:
        arr = patches[seq]
        d = describe(model, arr.reshape(-1, *arr.shape[2:]), device=device)
        out[seq] = d.reshape(arr.shape[0], arr.shape[1], -1)
    return HPatchesDescriptors(out)


def export_csv(descriptors: HPatchesDescriptors, root: str | Path) -> None:
    """Write descriptors in the official layout ``root/<seq>/<type>.csv`` (``%10.5f``)."""
    for seq, arr in descriptors.data.items():
        for t, d in zip(TYPES, arr, strict=True):
            write_descriptor_csv(Path(root) / seq / f"{t}.csv", d)
