"""Class-balanced batch sampling (self-tnet.md §2.1), deterministic and resumable.

A batch holds ``num_classes`` distinct classes (3D points), drawn without replacement within
the batch and independently across batches. Per class: ``npos`` patches without replacement if
the class has more; all of them if it has 2..npos; its single patch twice if it has one.

Batch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so a resumed run draws exactly the
batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Batch:
    """Indices into the patch set and class labels of one batch.

    ``indices`` (B,) int64 patch indices; ``labels`` (B,) int64 class ids; ``classes`` (C,)
    int64 the class ids in batch order. Patches of a class are contiguous.
    """

    indices: NDArray[np.int64]
    labels: NDArray[np.int64]
    classes: NDArray[np.int64]


class ClassBatchSampler:
    """Draws :class:`Batch` es of ``num_classes`` classes x up to ``npos`` patches.

    Args:
        labels: (N,) class id of every patch (any integers).
        num_classes: classes per batch.
        npos: patches per class.
        seed: the seed every draw derives from.
        usable: optional (N,) bool; patches marked False are never drawn (held-out data).
    """

    def __init__(self, labels: NDArray[np.integer], num_classes: int, npos: int, seed: int,
                 usable: NDArray[np.bool_] | None = None) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        order = np.argsort(labels, kind="stable")
        if usable is not None:
            order = order[np.asarray(usable, dtype=bool)[order]]
        uniq, start, count = np.unique(labels[order], return_index=True, return_counts=True)
        if num_classes > len(uniq):
            raise ValueError(f"batch of {num_classes} classes, but the data have only {len(uniq)}")
        if npos < 2:
            raise ValueError("npos must be >= 2 (every class needs a positive pair)")
        self.members = order
        self.class_ids = uniq
        self.start = start
        self.count = count
        self.num_classes = num_classes
        self.npos = npos
        self.seed = seed

    def batch(self, epoch: int, index: int) -> Batch:
        """The batch ``index`` of ``epoch`` (pure function of seed, epoch and index)."""
        rng = np.random.default_rng([self.seed, epoch, index])
        cls = rng.choice(len(self.class_ids), self.num_classes, replace=False)
        n = self.count[cls]
        k = np.minimum(n, self.npos)
        k = np.where(n == 1, 2, k)  # a lone patch is taken twice
        draws = np.zeros((len(cls), self.npos), dtype=np.int64)
        # The j-th draw is uniform over the n - j positions not taken yet: draw among n - j,
        # then step over the positions already taken (kept sorted), left to right.
        taken = np.zeros((len(cls), 0), dtype=np.int64)
        for j in range(self.npos):
            r = np.floor(rng.random(len(cls)) * np.maximum(n - j, 1)).astype(np.int64)
            for t in range(taken.shape[1]):
                r = r + (taken[:, t] <= r)
            draws[:, j] = r
            taken = np.sort(np.concatenate([taken, r[:, None]], axis=1), axis=1)
        # Classes with at most npos patches take all of them, in order.
        small = n <= self.npos
        draws[small] = np.arange(self.npos)[None, :]
        draws = np.where(n[:, None] == 1, 0, draws)
        keep = np.arange(self.npos)[None, :] < k[:, None]
        pos = self.start[cls][:, None] + draws
        idx = self.members[pos[keep]]
        labels = np.repeat(self.class_ids[cls], k)
        return Batch(indices=idx, labels=labels, classes=self.class_ids[cls])
