"""Synthetic Brown-schema patch sets and tiny run configurations for the training tests.

``make_patchset`` draws one smooth random texture per class (blurred noise) and derives each of
the class's patches from it with a small shift, a contrast/brightness change and pixel noise, so
that patches of a class really look alike and a descriptor can learn something in a few steps.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from descbal.data.patchset import PatchSet, write_patchset
from descbal.train.config import DataConfig, LoopConfig, ModelConfig, RunConfig
from descbal.train.optim import ScheduleConfig


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
