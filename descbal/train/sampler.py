"""Class-balanced batch sampling (self-tnet.md §2.1), deterministic and resumable.

A batch holds ``num_classes`` distinct classes (3D points), drawn without replacement within
the batch and independently across batches. Per class: ``npos`` patches without replacement if
the class has more; all of them if it has 2..npos; its single patch twice if it has one.

Batch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so a resumed run draws exactly the
batches an uninterrupted run would have drawn.

With a ``near`` table (pairs of labels that are distinct classes but would be false negatives of
each other), no batch holds two classes near each other: the classes are drawn in a random
order and taken greedily, each skipped when it is near one taken already, until the batch is
full. Without one (None or empty) the draws are exactly those of the plain sampler.
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
        near: optional (K, 2) pairs of labels never drawn into one batch (labels absent from the
            usable patches are ignored). A batch can always be filled apart when ``num_classes <=
            C / (d + 1)``, C classes and d the most near neighbours of one class; otherwise an
            unlucky draw completes its batch with near classes (see :meth:`_take_apart`).

    Raises:
        ValueError: more classes per batch than the data have, ``npos < 2``, or a near table
            that leaves too few classes apart to fill a batch in class order.
    """

    def __init__(self, labels: NDArray[np.integer], num_classes: int, npos: int, seed: int,
                 usable: NDArray[np.bool_] | None = None, near: NDArray[np.integer] | None = None) -> None:
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
        # near neighbours as CSR over class positions (None: no table, the plain draws)
        self._near: tuple[NDArray[np.int64], NDArray[np.int64]] | None = _near_graph(uniq, near)
        if self._near is not None:
            self._take_apart(np.arange(len(uniq)), strict=True)  # a batch is possible at all (else the error now)

    def batch(self, epoch: int, index: int) -> Batch:
        """The batch ``index`` of ``epoch`` (pure function of seed, epoch and index)."""
        rng = np.random.default_rng([self.seed, epoch, index])
        if self._near is None:
            cls = rng.choice(len(self.class_ids), self.num_classes, replace=False)
        else:
            cls = self._take_apart(rng.permutation(len(self.class_ids)))
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

    def _take_apart(self, order: NDArray[np.int64], strict: bool = False) -> NDArray[np.int64]:
        """The first ``num_classes`` class positions of ``order`` none of which is near one taken
        before it (greedy). When an unlucky order leaves too few such classes, the batch is
        filled with the skipped classes in ``order`` (a few near pairs in that batch rather than a
        failed run; always possible when ``num_classes <= C / (d + 1)``); ``strict``: raise
        instead (the constructor's check that the table leaves a batch possible at all)."""
        assert self._near is not None
        ptr, nbr = self._near
        blocked = np.zeros(len(self.class_ids), bool)
        taken: list[int] = []
        skipped: list[int] = []
        for c in order.tolist():
            if blocked[c]:
                skipped.append(c)
                continue
            taken.append(c)
            if len(taken) == self.num_classes:
                return np.asarray(taken, dtype=np.int64)
            blocked[nbr[ptr[c] : ptr[c + 1]]] = True
        if strict:
            raise ValueError(f"batch of {self.num_classes} classes, but only {len(taken)} of the {len(self.class_ids)} "
                             "classes could be drawn with none near another (the set's near table); use fewer "
                             "classes per batch")
        return np.asarray(taken + skipped[: self.num_classes - len(taken)], dtype=np.int64)


def _near_graph(class_ids: NDArray[np.int64], near: NDArray[np.integer] | None
                ) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
    """Both directions of the ``near`` label pairs as CSR ``(ptr (C+1,), neighbours)`` over
    positions in ``class_ids`` (sorted); pairs with a label not in it, or a label paired with
    itself, are dropped. None without any pair left."""
    if near is None:
        return None
    pairs = np.asarray(near, dtype=np.int64).reshape(-1, 2)
    pos = np.searchsorted(class_ids, pairs)
    pos = np.minimum(pos, max(len(class_ids) - 1, 0))
    ok = (class_ids[pos] == pairs).all(axis=1) & (pairs[:, 0] != pairs[:, 1]) if len(class_ids) else np.zeros(0, bool)
    pos = pos[ok]
    if len(pos) == 0:
        return None
    src = np.concatenate([pos[:, 0], pos[:, 1]])
    dst = np.concatenate([pos[:, 1], pos[:, 0]])
    order = np.argsort(src, kind="stable")
    ptr = np.zeros(len(class_ids) + 1, np.int64)
    np.add.at(ptr, src + 1, 1)
    return np.cumsum(ptr), dst[order]
