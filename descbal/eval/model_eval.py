"""Evaluating a model directly: descriptors computed from cached patches, then the protocols.

Models are named as everywhere (:func:`descbal.models.resolve.resolve_model`). Networks see
patches resized to 32x32 exactly as the reference extraction scripts do (OpenCV INTER_LINEAR
on uint8, replicated bit for bit in ``descbal.models.describe``); classical descriptors
(``descbal.classical``) describe the patches at their own size (65x65 HPatches, 64x64 Brown).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from descbal.classical import get_classical
from descbal.data.hpatches_data import load_hpatches_cache, read_hpatches_sequence
from descbal.data.hpatches_layout import TYPES
from descbal.data.patchset import PatchSet
from descbal.devices import resolve_device
from descbal.errors import BadInputError, DataMissingError
from descbal.eval.brown import BrownResult, evaluate_brown
from descbal.eval.hpatches import HPatchesResult
from descbal.eval.hpatches_io import HPatchesDescriptors
from descbal.eval.metrics import Fpr95Definition
from descbal.models.describe import describe
from descbal.models.inference import inference_copy
from descbal.models.resolve import ModelSpec, resolve_model
from descbal.progress import Progress

PatchDescriptor = Callable[[NDArray[np.uint8]], NDArray[np.float32]]


def patch_descriptor(model: ModelSpec, device: str | torch.device | None = None) -> PatchDescriptor:
    """The function describing uint8 patches with ``model`` (any model spec): a classical
    descriptor's patch form, or the network's inference copy on ``device`` (``auto``, ``cpu``,
    ``cuda``...; default: where its parameters are) through :func:`describe`.

    Shape of the returned function: (N, H, W) uint8 -> (N, D) float32.
    """
    resolved = resolve_model(model)
    if resolved.classical is not None:
        return get_classical(resolved.classical)
    assert resolved.network is not None
    net = inference_copy(resolved.network, None if device is None else resolve_device(device))  # once for all calls
    return lambda patches: describe(net, patches)


def evaluate_brown_model(model: ModelSpec, patchset: PatchSet, definition: Fpr95Definition = "hardnet",
                         max_pairs: int = 0, device: str | torch.device | None = None) -> BrownResult:
    """FPR95 of ``model`` (any model spec) on a Brown-schema patch set's pairs (only the patches in
    pairs are described). ``max_pairs`` > 0 keeps the first pairs only. The result's ``model`` is
    the display name."""
    if patchset.pairs is None or len(patchset.pairs) == 0:
        raise BadInputError(f"patch set {patchset.name!r} has no pairs to evaluate")
    resolved = resolve_model(model)
    pairs = patchset.pairs if max_pairs <= 0 else patchset.pairs[:max_pairs]
    ids, inv = np.unique(pairs[:, :2], return_inverse=True)
    desc = patch_descriptor(resolved, device)(patchset.patches[ids])
    inv = inv.reshape(-1, 2)
    return replace(evaluate_brown(desc, inv[:, 0], inv[:, 1], pairs[:, 2], definition), model=resolved.name)


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


def describe_hpatches(patches: dict[str, NDArray[np.uint8]], fn: PatchDescriptor) -> HPatchesDescriptors:
    """Apply a patch descriptor ((N, H, W) uint8 -> (N, D)) to every image type of every sequence."""
    out = {}
    for seq, arr in patches.items():
        out[seq] = np.asarray(fn(arr.reshape(-1, *arr.shape[2:])), np.float32).reshape(arr.shape[0], arr.shape[1], -1)
    return HPatchesDescriptors(out)


def hpatches_descriptors(model: ModelSpec, source: str | Path, sequences: Sequence[str],
                         device: str | torch.device | None = None) -> HPatchesDescriptors:
    """Descriptors of the HPatches patches of ``sequences`` (cache or release folder) by any model
    spec: a network, or a classical descriptor (e.g. ``"sift"``) on the 65x65 patches.
    Returns sequence -> (16, N, D) float32."""
    fn = patch_descriptor(model, device)  # resolved before the patches are read: a bad name fails first
    return describe_hpatches(load_hpatches_patches(source, sequences), fn)


def run_hpatches(tasks: str | Path | None, split: str | None = None, *, descriptors: str | Path | None = None,
                 model: ModelSpec | None = None, patches: str | Path | None = None, export_csv: str | Path | None = None,
                 task_names: Sequence[str] | None = None, dist: str = "L2", delimiter: str = ",", use_cache: bool = True,
                 device: str | torch.device = "auto", progress: Progress | None = None,
                 log: Callable[[str], None] | None = None) -> HPatchesResult:
    """``descbal eval hpatches``: the official protocol on a descriptor tree, or on a model's
    descriptors of an HPatches patch cache or release.

    Args:
        tasks: the task folder (default with ``patches``: ``tasks/`` beside it).
        split: the split whose test sequences are evaluated; None: the task folder's only split,
            else ``a`` (:func:`~descbal.eval.hpatches_io.default_split`), said in a ``log`` line.
        descriptors: ``DIR/<sequence>/<type>.csv|.npy``; or ``model`` (any model spec) with
            ``patches`` (cache ``.h5`` or release folder), optionally writing ``export_csv``.
        task_names: tasks to run (default all three). dist: ``"L2"`` | ``"L1"``.

    Returns:
        The :class:`HPatchesResult`, its ``model`` the model's display name.
    """
    from descbal.eval.hpatches import TASKS, evaluate_hpatches
    from descbal.eval.hpatches_io import default_split, get_split, load_descriptors, write_descriptor_tree

    if (model is None) == (descriptors is None):
        raise BadInputError("give either --descriptors DIR or --model M (with --patches CACHE.h5)")
    if patches is not None and not Path(patches).exists():  # before tasks/ beside it is looked for
        raise DataMissingError("HPatches patches not found (a cache .h5 or a release folder)", patches)
    if tasks is None:
        if patches is None:
            raise BadInputError("--tasks DIR is required")
        tasks = Path(patches).parent / "tasks"
    why = None
    if split is None:
        split, why = default_split(tasks)
    spl = get_split(tasks, split)
    name = None
    if model is not None:
        if patches is None:
            raise BadInputError("--model needs --patches CACHE.h5 (from 'descbal cache hpatches')")
        resolved = resolve_model(model)
        name = resolved.name
        desc = hpatches_descriptors(resolved, patches, spl["test"], device=device)
        if export_csv is not None:
            write_descriptor_tree(export_csv, desc)
    else:
        assert descriptors is not None
        desc = load_descriptors(descriptors, spl["test"], delimiter=delimiter, use_cache=use_cache)
    if why is not None and log is not None:  # said once the inputs are read: an input error stays one line
        log(f"split {split}: {why}")
    result = evaluate_hpatches(desc, tasks, split, list(task_names or TASKS), dist, progress=progress)
    result.model = name
    return result


def run_brown(*, pairs: str | Path | None = None, descriptors: str | Path | None = None, model: ModelSpec | None = None,
              data: str | Path | None = None, definition: Fpr95Definition = "hardnet",
              device: str | torch.device = "auto") -> BrownResult:
    """``descbal eval brown``: FPR95 of ``descriptors`` (.npy or .h5) on a ``pairs`` file, or of
    ``model`` (any model spec) on a Brown cache ``data`` (patches + pairs)."""
    from descbal.data.patchset import load_patchset
    from descbal.eval.brown import load_patch_descriptors, read_pairs

    if model is not None:
        if data is None or pairs is not None or descriptors is not None:
            raise BadInputError("--model needs --data SET.h5 (and no --pairs/--descriptors)")
        return evaluate_brown_model(model, load_patchset(data), definition, device=device)
    if pairs is None or descriptors is None:
        raise BadInputError("give --pairs and --descriptors, or --model and --data")
    id1, id2, labels = read_pairs(pairs)
    return evaluate_brown(load_patch_descriptors(descriptors), id1, id2, labels, definition, source=pairs)
