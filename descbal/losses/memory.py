"""Memory-based contrastive learning: XBM's contrastive loss with a cross-batch memory.

dml-seeds.md §2 and §5.2 ("Rethinking Deep Contrastive Learning with Embedding Memory",
Zhang et al. 2021, which extends XBM, Wang et al. CVPR 2020), on cosine similarities of unit
descriptors. Per anchor i of the batch against a reference set R (the batch, or the memory):

    l_i(R) = sum_{j in R: y_j = y_i, j != i} (1 - S_ij)  +  sum_{j in R: y_j != y_i, S_ij > lambda} S_ij

i.e. every positive with weight 1 ("weighting positives is not helpful") and only the hard
negatives above ``lambda`` (0.5): easy negatives are discarded. ``L(R) = mean_i l_i(R)``
(``reduction="sum"``, XBM's summed terms; ``"mean"`` averages each anchor's positive and active
negative terms instead, §5.2 pitfall ii). The objective is ``L(batch) + w L(memory)`` once the
warm-up of ``start_iter`` calls is over, ``L(batch)`` before.

The memory (a ring of ``memory_size`` descriptors, labels and global ids) is updated **before**
the loss, so it holds the current batch; each anchor's own entry is masked by its global id, not
by a similarity test. Everything the memory needs to continue is a buffer of this module
(``mem_feats``, ``mem_labels``, ``mem_ids``, ``ptr``, ``filled``, ``seen``, ``iteration``,
``ema_params``), so the trainer's checkpoints carry it and a resumed run continues with the same
memory. Buffers are sized at the first batch (``memory_size = memory_batches x batch``) and
re-sized from a state dict on load.

Global ids: the trainer gives the loss only ``(model, x, labels)``. By default a sample's id is
its position in the stream of all samples ever enqueued (``seen + k``): unique, stable across a
resume, and enough to mask self matches (the only copy of *this* forward pass of a patch). An
earlier copy of the same patch, drawn again in a later batch with another augmentation, is a
legitimate positive and is kept. From Python, ``compute(..., ids=patch_indices)`` masks by patch
index instead (which also drops those earlier copies, as pytorch-metric-learning does).

The 2021 paper's "momentum-updated memory" could not be read (§2.4); both readings are options:

* ``update="fifo"`` (default, the XBM code): descriptors enqueued as computed, oldest replaced.
* ``update="ema_bank"`` (reading a): an entry per key, ``m_k <- normalise(mu m_k + (1 - mu) f_k)``
  when the key is already stored, inserted (oldest key evicted) otherwise. Without patch indices
  the key is the 3D point id plus the patch's rank among that point's patches in the batch
  (``label * 65536 + rank``), i.e. one momentum entry per point view; pass ``ids`` to key by patch.
* ``update="ema_encoder"`` (reading b, MoCo): a FIFO of descriptors computed by a momentum copy of
  the network (``theta_k <- mu theta_k + (1 - mu) theta``, kept flat in ``ema_params``; run in eval
  mode with the online network's normalisation buffers); one extra forward pass per step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from descbal.losses.pairs import (
    PairTuples,
    class_ranks,
    pair_similarities,
    per_anchor_count,
    per_anchor_sum,
    similarity_matrix,
    unwrap_model,
    zero_loss,
)
from descbal.losses.registry import register_loss
from descbal.losses.triplet import StepOutput

#: Mined rows are processed in chunks of at most this many similarities.
CHUNK = 1 << 25
RANK_BASE = 65536
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HardNegativePairMiner:
    """All positives (self excluded by id) and the negatives with ``S > neg_threshold``.

    Args:
        neg_threshold: cosine similarity above which a negative is hard (lambda, 0.5).

    ``__call__(desc, labels, ref, ref_labels, ids, ref_ids)`` runs under ``no_grad`` in float32;
    without ``ref`` the batch is its own reference and the diagonal is the self match.
    """

    def __init__(self, neg_threshold: float = 0.5) -> None:
        self.neg_threshold = float(neg_threshold)

    @torch.no_grad()
    def __call__(self, desc: torch.Tensor, labels: torch.Tensor, ref: torch.Tensor | None = None,
                 ref_labels: torch.Tensor | None = None, ids: torch.Tensor | None = None,
                 ref_ids: torch.Tensor | None = None) -> PairTuples:
        """Pairs ``(a1, p, a2, n)``; ``p``/``n`` index ``ref`` (or the batch).

        Shapes: desc (N, D), labels (N,), ref (M, D), ref_labels (M,), ids (N,), ref_ids (M,).
        A pair (i, j) is a self match when ``ids[i] == ref_ids[j]`` (with ``ref=None``: i == j).
        """
        n = desc.shape[0]
        if ref is None:
            ref, ref_labels = desc, labels
            ids = ref_ids = torch.arange(n, device=desc.device)
        if ref_labels is None or ids is None or ref_ids is None:
            raise ValueError("a reference set needs ref_labels, ids and ref_ids")
        m = ref.shape[0]
        rows = max(1, CHUNK // max(m, 1))
        parts: list[tuple[torch.Tensor, ...]] = []
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            s = similarity_matrix(desc[r0:r1].detach(), ref.detach())
            same = labels[r0:r1, None] == ref_labels[None, :]
            not_self = ids[r0:r1, None] != ref_ids[None, :]
            a1, p = (same & not_self).nonzero(as_tuple=True)
            a2, nn_ = (~same & (s > self.neg_threshold)).nonzero(as_tuple=True)
            parts.append((a1 + r0, p, a2 + r0, nn_))
        if not parts:
            return PairTuples.empty(desc.device)
        return PairTuples(*(torch.cat([q[k] for q in parts]) for k in range(4)))


def contrastive_pair_loss(desc: torch.Tensor, pairs: PairTuples, ref: torch.Tensor | None = None,
                          reduction: str = "sum") -> tuple[torch.Tensor, dict[str, float]]:
    """XBM contrastive loss at mined pairs: ``(1 - S)`` per positive, ``S`` per negative.

    Args:
        desc: (N, D) anchors with gradient. ref: (M, D) reference (None: ``desc`` itself).
        pairs: indices into desc (a1, a2) and ref (p, n).
        reduction: ``"sum"`` (per anchor sums, XBM) or ``"mean"`` (per anchor means of the
            positive and of the negative terms); then the mean over all N anchors.

    Returns:
        Scalar float32 loss (an exact 0 without pairs) and statistics ``pos``, ``neg`` (pairs
        per anchor).
    """
    n = desc.shape[0]
    stats = {"pos": pairs.num_pos / max(n, 1), "neg": pairs.num_neg / max(n, 1)}
    if len(pairs) == 0:
        return zero_loss(desc), stats
    sp = pair_similarities(desc, ref, pairs.a1, pairs.p)
    sn = pair_similarities(desc, ref, pairs.a2, pairs.n)
    pos = per_anchor_sum(1.0 - sp, pairs.a1, n)
    neg = per_anchor_sum(sn, pairs.a2, n)
    if reduction == "mean":
        pos = pos / per_anchor_count(pairs.a1, n).clamp(min=1)
        neg = neg / per_anchor_count(pairs.a2, n).clamp(min=1)
    return (pos + neg).mean(), stats


@register_loss("memory_contrastive")
class MemoryContrastiveLoss(nn.Module):
    """Contrastive loss with a cross-batch memory (module docstring).

    Args:
        neg_threshold: lambda, the hard-negative similarity threshold (0.5; sweep 0.3-0.6).
        memory_size: entries in the memory; 0 = ``memory_batches`` x the first batch's size.
        memory_batches: the memory in batches when ``memory_size`` is 0 (8; the spec: 8-16).
        start_iter: calls before the memory term is used (warm-up; XBM 1000). The memory is
            filled during the warm-up too.
        memory_weight: w, the memory term's weight (1).
        include_batch_term: add ``L(batch)`` (XBM: yes).
        update: ``"fifo"`` | ``"ema_bank"`` | ``"ema_encoder"``. momentum: mu of the EMA updates.
        reduction: ``"sum"`` | ``"mean"`` (see :func:`contrastive_pair_loss`).
        memory_dtype: ``"float32"`` | ``"bfloat16"`` | ``"float16"`` storage (similarities are
            always float32).
    """

    _LAZY = ("mem_feats", "mem_labels", "mem_ids", "ema_params")

    def __init__(self, neg_threshold: float = 0.5, memory_size: int = 0, memory_batches: int = 8,
                 start_iter: int = 1000, memory_weight: float = 1.0, include_batch_term: bool = True,
                 update: str = "fifo", momentum: float = 0.99, reduction: str = "sum",
                 memory_dtype: str = "float32") -> None:
        super().__init__()
        if update not in ("fifo", "ema_bank", "ema_encoder"):
            raise ValueError(f"update must be 'fifo', 'ema_bank' or 'ema_encoder', got {update!r}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if memory_dtype not in _DTYPES:
            raise ValueError(f"memory_dtype must be one of {', '.join(_DTYPES)}, got {memory_dtype!r}")
        if memory_size < 0 or memory_batches < 1 or start_iter < 0:
            raise ValueError("memory_size >= 0, memory_batches >= 1 and start_iter >= 0 are required")
        if not 0.0 <= momentum < 1.0:
            raise ValueError("momentum must be in [0, 1)")
        self.miner = HardNegativePairMiner(neg_threshold)
        self.memory_size, self.memory_batches = int(memory_size), int(memory_batches)
        self.start_iter, self.memory_weight = int(start_iter), float(memory_weight)
        self.include_batch_term, self.update = bool(include_batch_term), update
        self.momentum, self.reduction = float(momentum), reduction
        self.memory_dtype = _DTYPES[memory_dtype]
        self.register_buffer("mem_feats", torch.zeros(0, 0, dtype=self.memory_dtype))
        self.register_buffer("mem_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("mem_ids", torch.zeros(0, dtype=torch.long))
        self.register_buffer("ema_params", torch.zeros(0))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ state

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in self._LAZY:  # buffers sized at the first batch: take the checkpoint's size
            src = state_dict.get(prefix + name)
            cur = getattr(self, name)
            if isinstance(src, torch.Tensor) and (src.shape != cur.shape or src.dtype != cur.dtype):
                setattr(self, name, torch.empty(src.shape, dtype=src.dtype, device=cur.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def capacity(self) -> int:
        """Memory size in entries (0 before the first batch)."""
        return int(self.mem_feats.shape[0])

    def memory(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The filled part of the memory: descriptors (F, D) float32, labels (F,), ids (F,)."""
        f = int(self.filled)
        return self.mem_feats[:f].float(), self.mem_labels[:f], self.mem_ids[:f]

    def reset_memory(self) -> None:
        """Empty the memory (keeps its size and the iteration counter)."""
        self.ptr.zero_()
        self.filled.zero_()
        self.mem_ids.fill_(-1)

    def _allocate(self, batch: int, dim: int, device: torch.device) -> None:
        size = self.memory_size or self.memory_batches * batch
        if batch > size:
            raise ValueError(f"batch of {batch} descriptors does not fit a memory of {size}")
        self.mem_feats = torch.zeros(size, dim, dtype=self.memory_dtype, device=device)
        self.mem_labels = torch.zeros(size, dtype=torch.long, device=device)
        self.mem_ids = torch.full((size,), -1, dtype=torch.long, device=device)
        self.ptr.zero_()
        self.filled.zero_()

    def _write_fifo(self, feats: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> None:
        m = self.capacity
        slots = (self.ptr + torch.arange(feats.shape[0], device=feats.device)) % m
        self.mem_feats[slots] = feats.to(self.memory_dtype)
        self.mem_labels[slots] = labels
        self.mem_ids[slots] = ids
        self.ptr.copy_((self.ptr + feats.shape[0]) % m)
        self.filled.copy_(torch.clamp(self.filled + feats.shape[0], max=m))

    @torch.no_grad()
    def enqueue(self, feats: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> None:
        """Add a batch to the memory (FIFO, or EMA update of stored keys for ``ema_bank``).

        Shapes: feats (B, D) unit descriptors, labels (B,), ids (B,) unique global ids / keys.
        """
        feats = feats.detach().float()
        if self.capacity == 0 or self.mem_feats.shape[1] != feats.shape[1]:
            self._allocate(feats.shape[0], feats.shape[1], feats.device)
        if feats.shape[0] > self.capacity:
            raise ValueError(f"batch of {feats.shape[0]} descriptors does not fit a memory of {self.capacity}")
        if self.update != "ema_bank":
            self._write_fifo(feats, labels, ids)
            return
        if torch.unique(ids).numel() != ids.numel():
            raise ValueError("ema_bank needs ids that are unique within a batch")
        f = int(self.filled)
        found = torch.zeros_like(ids, dtype=torch.bool)
        if f:
            stored, order = torch.sort(self.mem_ids[:f])
            pos = torch.searchsorted(stored, ids).clamp(max=f - 1)
            found = stored[pos] == ids
            slots = order[pos[found]]
            mixed = self.momentum * self.mem_feats[slots].float() + (1.0 - self.momentum) * feats[found]
            self.mem_feats[slots] = F.normalize(mixed, dim=1).to(self.memory_dtype)
            self.mem_labels[slots] = labels[found]
        new = ~found
        if bool(new.any()):
            self._write_fifo(feats[new], labels[new], ids[new])

    # ------------------------------------------------------------------ momentum encoder

    @torch.no_grad()
    def momentum_descriptors(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Update the EMA copy of ``model``'s parameters and return its descriptors of ``x``.

        Shape: (B, 1, H, W) -> (B, D) float32. The first call copies the parameters.
        """
        net = unwrap_model(model)
        named = list(net.named_parameters())
        vec = torch.cat([p.detach().reshape(-1).float() for _, p in named])
        if self.ema_params.shape != vec.shape:
            self.ema_params = vec.clone()
        else:
            self.ema_params.mul_(self.momentum).add_(vec.to(self.ema_params.device), alpha=1.0 - self.momentum)
        params, o = {}, 0
        for name, p in named:
            params[name] = self.ema_params[o:o + p.numel()].view_as(p).to(p.dtype)
            o += p.numel()
        was_training = net.training
        net.eval()
        try:
            return functional_call(net, {**params, **dict(net.named_buffers())}, (x,)).float()
        finally:
            net.train(was_training)

    # ------------------------------------------------------------------ loss

    def _ids(self, labels: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        if ids is not None:
            return ids.to(device=labels.device, dtype=torch.long)
        if self.update == "ema_bank":
            return labels.long() * RANK_BASE + class_ranks(labels)
        return self.seen.to(labels.device) + torch.arange(labels.shape[0], device=labels.device)

    def compute(self, desc: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor | None = None,
                keys: torch.Tensor | None = None) -> StepOutput:
        """Enqueue the batch, then the loss of ``desc`` against the batch and the memory.

        Args:
            desc: (B, D) unit descriptors with gradient. labels: (B,) 3D-point ids.
            ids: optional (B,) global ids (e.g. patch indices) for the self mask and the EMA bank.
            keys: optional (B, D) descriptors to enqueue instead of ``desc`` (momentum encoder).

        Returns:
            :class:`StepOutput` with the float32 loss and statistics ``loss_batch``,
            ``loss_memory``, ``pos_batch``/``neg_batch``/``pos_memory``/``neg_memory`` (pairs per
            anchor), ``memory_on`` and ``memory_fill``.
        """
        if desc.ndim != 2 or labels.shape != (desc.shape[0],):
            raise ValueError(f"expected desc (B, D) and labels (B,), got {tuple(desc.shape)} and {tuple(labels.shape)}")
        desc = desc.float()
        gid = self._ids(labels, ids)
        self.enqueue(desc if keys is None else keys, labels, gid)
        self.seen.add_(desc.shape[0])
        total = zero_loss(desc)
        stats: dict[str, float] = {}
        if self.include_batch_term:
            lb, sb = contrastive_pair_loss(desc, self.miner(desc, labels), None, self.reduction)
            total = total + lb
            stats.update(loss_batch=float(lb.detach()), pos_batch=sb["pos"], neg_batch=sb["neg"])
        on = int(self.iteration) >= self.start_iter
        if on:
            mem, mem_labels, mem_ids = self.memory()
            pairs = self.miner(desc, labels, mem, mem_labels, gid, mem_ids)
            lm, sm = contrastive_pair_loss(desc, pairs, mem, self.reduction)
            total = total + self.memory_weight * lm
            stats.update(loss_memory=float(lm.detach()), pos_memory=sm["pos"], neg_memory=sm["neg"])
        self.iteration.add_(1)
        stats.update(memory_on=float(on), memory_fill=float(self.filled) / max(self.capacity, 1))
        return StepOutput(total, stats)

    def forward(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """One training step: descriptors of ``x`` (B, 1, H, W), then :meth:`compute`."""
        desc = model(x).float()
        keys = self.momentum_descriptors(model, x) if self.update == "ema_encoder" else None
        return self.compute(desc, labels, keys=keys)
