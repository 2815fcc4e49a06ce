"""What miners return and losses consume: two typed tuple kinds, and a reference set.

* :class:`ClassTuples`: one hardest positive pair and one hardest negative pair per class (the
  triplet-like losses: HardNet's, Self-TNet's balance and annealing losses).
* :class:`PairTuples`: positive pairs ``(a1, p)`` and negative pairs ``(a2, n)`` with optional
  per-pair weights (the pair losses: SoftCon, XBM's contrastive loss, OSM). ``a1``/``a2`` index
  the anchors (rows of the batch), ``p``/``n`` the reference set: the batch itself, or a
  :class:`Reference` (a memory bank; other ranks' embeddings).

Every tuple carries the miner's statistics (``stats``, for the training log: floats or 0-d
tensors, :data:`Stat`). A pair
loss accepts class tuples too (:meth:`ClassTuples.as_pairs`), so it works with any miner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: A logged statistic: a float, or a detached 0-d tensor (what a compiled step can return; the
#: trainer converts them all at once, :meth:`descbal.losses.pipeline.StepOutput.floats`).
Stat = float | torch.Tensor


@dataclass(frozen=True)
class Reference:
    """Embeddings mined against instead of the batch.

    ``embeddings`` (M, D) float32 (no gradient), ``labels`` (M,), ``ids`` (M,) global ids;
    ``query_ids`` (N,): the batch rows' ids in the same id space (a pair with ``query_ids[i] ==
    ids[j]`` is a self match).
    """

    embeddings: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    query_ids: torch.Tensor


@dataclass(frozen=True)
class PairTuples:
    """Positive pairs ``(a1[k], p[k])`` and negative pairs ``(a2[k], n[k])``, each index (K,) int64.

    ``w_pos`` (Kp,) / ``w_neg`` (Kn,): optional float32 per-pair weights from a soft miner.
    """

    a1: torch.Tensor
    p: torch.Tensor
    a2: torch.Tensor
    n: torch.Tensor
    w_pos: torch.Tensor | None = None
    w_neg: torch.Tensor | None = None
    stats: dict[str, Stat] = field(default_factory=dict)

    @property
    def num_pos(self) -> int:
        return int(self.a1.numel())

    @property
    def num_neg(self) -> int:
        return int(self.a2.numel())

    def __len__(self) -> int:
        return self.num_pos + self.num_neg

    @staticmethod
    def from_masks(pos: torch.Tensor, neg: torch.Tensor, stats: dict[str, Stat] | None = None) -> PairTuples:
        """Pairs at the True entries of two (N, M) bool masks, in row-major order."""
        a1, p = pos.nonzero(as_tuple=True)
        a2, n = neg.nonzero(as_tuple=True)
        return PairTuples(a1, p, a2, n, stats=dict(stats or {}))

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> PairTuples:
        z = torch.zeros(0, dtype=torch.long, device=device)
        return PairTuples(z, z, z, z)

    def as_pairs(self) -> PairTuples:
        return self


@dataclass(frozen=True)
class ClassTuples:
    """Per-class mined indices into the batch, each (C,) int64, in ascending class-id order.

    ``pos_a``/``pos_b``: the hardest positive pair; ``neg_a``/``neg_b``: the hardest negative
    pair. ``valid`` (C,) bool: False where the class has no usable negative.
    """

    pos_a: torch.Tensor
    pos_b: torch.Tensor
    neg_a: torch.Tensor
    neg_b: torch.Tensor
    valid: torch.Tensor
    stats: dict[str, Stat] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.pos_a.shape[0])

    def as_pairs(self) -> PairTuples:
        """The same pairs as :class:`PairTuples`: every positive pair, the valid negative pairs."""
        return PairTuples(self.pos_a, self.pos_b, self.neg_a[self.valid], self.neg_b[self.valid], stats=dict(self.stats))


Tuples = ClassTuples | PairTuples
