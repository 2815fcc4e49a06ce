"""Synthetic Brown-schema patch sets and tiny run configurations for the training tests.

``make_patchset`` draws one smooth random texture per class (blurred noise) and derives each of
the class's patches from it with a small shift, a contrast/brightness change and pixel noise, so
that patches of a class really look alike and a descriptor can learn something in a few steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from descbal.data.patchset import PatchSet, write_patchset
from descbal.models import build_model
from descbal.train.config import DataConfig, LoopConfig, ModelConfig, RunConfig
from descbal.train.optim import ScheduleConfig


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module's small CPU networks on one thread (restored afterwards).

    The tensors here are tiny, so one thread costs little; and when other processes keep the
    cores busy, OpenMP's spinning worker threads slow such tests down tenfold or more.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trained_like(name: str, seed: int = 0, **config: object) -> torch.nn.Module:
    """A registered model with seed-dependent weights and BatchNorm running statistics away from
    their initial (0, 1) (three training-mode passes over random patches), in eval mode."""
    torch.manual_seed(seed)
    m = build_model(name, **config)
    m.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            m(torch.randint(0, 256, (8, 1, 32, 32), generator=g).float() * float(m.input_scale))
    return m.eval()


def class_textures(rng: np.random.Generator, num_classes: int, size: int = 72) -> np.ndarray:
    """(C, size, size) float32 blurred-noise textures scaled to roughly [0, 255]."""
    noise = rng.normal(0.0, 1.0, (num_classes, size, size)).astype(np.float32)
    out = np.stack([cv2.GaussianBlur(n, (0, 0), 2.0) for n in noise])
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-6
    return 128.0 + 45.0 * out


def make_patchset(seed: int, num_classes: int, per_class: int | list[int], size: int = 64, name: str = "synthetic",
                  num_pairs: int = 0) -> PatchSet:
    """A Brown-schema set: ``per_class`` patches (an int, or one count per class) of each class.

    Labels are the class ids ``0..C-1`` times 3 plus 5 (so they are not positions). With
    ``num_pairs`` > 0, half matching and half non-matching pairs are added (in random order).
    """
    rng = np.random.default_rng(seed)
    counts = [per_class] * num_classes if isinstance(per_class, int) else list(per_class)
    tex = class_textures(rng, num_classes, size + 8)
    patches, labels = [], []
    for c, k in enumerate(counts):
        for _ in range(k):
            dy, dx = rng.integers(0, 9, 2)
            p = tex[c, dy : dy + size, dx : dx + size] * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12)
            p = p + rng.normal(0.0, 6.0, p.shape)
            patches.append(np.clip(np.rint(p), 0, 255).astype(np.uint8))
            labels.append(3 * c + 5)
    lab = np.asarray(labels, dtype=np.int64)
    pairs = None
    if num_pairs:
        rows = []
        by_class = {c: np.flatnonzero(lab == c) for c in np.unique(lab)}
        multi = [c for c, idx in by_class.items() if len(idx) >= 2]
        for i in range(num_pairs):
            if i % 2 == 0:
                i1, i2 = rng.choice(by_class[multi[rng.integers(len(multi))]], 2, replace=False)
                rows.append((i1, i2, 1))
            else:
                while True:
                    i1, i2 = rng.integers(0, len(lab), 2)
                    if lab[i1] != lab[i2]:
                        break
                rows.append((i1, i2, 0))
        pairs = np.asarray(rows, dtype=np.int64)[rng.permutation(num_pairs)]
    return PatchSet(np.stack(patches), lab, pairs, name)


def write_sets(folder: Path, seed: int = 0, num_classes: int = 60, per_class: int = 3) -> tuple[Path, Path]:
    """Write ``train.h5`` (``num_classes`` x ``per_class``, no pairs) and ``val.h5`` (with 40
    pairs) under ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    train, val = folder / "train.h5", folder / "val.h5"
    write_patchset(train, make_patchset(seed, num_classes, per_class, name="train"))
    write_patchset(val, make_patchset(seed + 1000, 20, 2, name="val", num_pairs=40))
    return train, val


def tiny_config(train: Path, val: Path | None = None, *, epochs: int = 2, iters: int = 3, classes: int = 8,
                seed: int = 7, **loop: object) -> RunConfig:
    """A HyNet + triplet run small enough for a CPU test (one-cycle over epochs x iters steps)."""
    return RunConfig(
        data=DataConfig(train=str(train), val=str(val) if val else ""),
        model=ModelConfig(name="hynet", params={"dropout": 0.3}),
        schedule=ScheduleConfig(kind="one_cycle", lr_max=3e-3),
        loop=replace(LoopConfig(), seed=seed, epochs=epochs, iters_per_epoch=iters, classes_per_batch=classes,
                     npos=3, device="cpu", log_every=1, **loop),  # type: ignore[arg-type]
    )


def make_hpatches_release(root: Path, sequences: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Write an HPatches-layout release ``root/<seq>/<type>.png`` whose patches are overlapping
    crops (3 px apart) of one texture per sequence; the 15 target images shift each crop by up
    to 1, 2 or 3 px (e, h, t) and add noise, so matching is hard enough to give non-trivial
    numbers. Returns sequence -> (16, N, 65, 65) uint8."""
    from descbal.data.hpatches_data import write_patch_release

    rng = np.random.default_rng(seed)
    data = {}
    for name, n in sequences.items():
        tex = class_textures(rng, 1, 65 + 3 * n + 8)[0]
        images = []
        for jitter, sigma in ((0, 0.0),) + ((1, 8.0),) * 5 + ((2, 16.0),) * 5 + ((3, 24.0),) * 5:
            crops = []
            for i in range(n):
                dy, dx = rng.integers(-jitter, jitter + 1, 2)
                y0, x0 = 4 + dy, 4 + 3 * i + dx
                crops.append(tex[y0 : y0 + 65, x0 : x0 + 65] + rng.normal(0.0, sigma, (65, 65)))
            images.append(np.stack(crops))
        data[name] = np.clip(np.rint(np.stack(images)), 0, 255).astype(np.uint8)
    write_patch_release(root, data)
    return data


def write_split(tasks: Path, split: str, test: list[str]) -> None:
    """``tasks/splits/splits.json`` with one split whose test set is ``test``."""
    import json

    (tasks / "splits").mkdir(parents=True, exist_ok=True)
    (tasks / "splits" / "splits.json").write_text(json.dumps({split: {"name": split, "test": test, "train": []}}))
