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

Global ids: the trainer gives no ids (``Embedded.ids`` is None). By default a sample's id is
its position in the stream of all samples ever enqueued (``seen + k``): unique, stable across a
resume, and enough to mask self matches (the only copy of *this* forward pass of a patch). An
earlier copy of the same patch, drawn again in a later batch with another augmentation, is a
legitimate positive and is kept. From Python, ``Embedded(..., ids=patch_indices)`` masks by patch
index instead (which also drops those earlier copies, as pytorch-metric-learning does).

In the pipeline: :meth:`MemoryContrastiveLoss.references` enqueues the batch (before any loss
is computed) and names the terms, ``batch`` (weight 1) and, after the warm-up, ``memory``
(weight w); the ``xbm`` miner mines each; the ``anchor`` reducer sums (or averages) each
anchor's pair terms and averages over the anchors.

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

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from descbal.losses.distances import pair_similarities, similarity_matrix, zero_loss
from descbal.losses.grouping import class_ranks
from descbal.losses.pipeline import Embedded, Loss
from descbal.losses.reducers import AnchorReducer, PairTerms
from descbal.losses.registry import register_loss, register_miner
from descbal.losses.tuples import PairTuples, Reference
from descbal.models.registry import unwrap_model

#: Mined rows are processed in chunks of at most this many similarities.
CHUNK = 1 << 25
RANK_BASE = 65536
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_miner("xbm")
class HardNegativePairMiner:
    """All positives (self excluded by id) and the negatives with ``S > neg_threshold``.

    Args:
        neg_threshold: cosine similarity above which a negative is hard (lambda, 0.5).

    ``miner(desc, labels, reference)`` runs under ``no_grad`` in float32; without a reference
    the batch is its own reference and the diagonal is the self match; with one, a pair (i, j)
    is a self match when ``reference.query_ids[i] == reference.ids[j]``.
    """

    def __init__(self, neg_threshold: float = 0.5) -> None:
        self.neg_threshold = float(neg_threshold)

    @torch.no_grad()
    def __call__(self, desc: torch.Tensor, labels: torch.Tensor, reference: Reference | None = None,
                 batch: Any = None) -> PairTuples:
        """Pairs ``(a1, p, a2, n)``; ``p``/``n`` index the reference (or the batch).

        Shapes: desc (N, D), labels (N,); reference (M, D) embeddings, (M,) labels and ids.
        """
        n = desc.shape[0]
        if reference is None:
            ref, ref_labels = desc, labels
            ids = ref_ids = torch.arange(n, device=desc.device)
        else:
            ref, ref_labels, ids, ref_ids = reference.embeddings, reference.labels, reference.query_ids, reference.ids
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


def contrastive_terms(desc: torch.Tensor, pairs: PairTuples, ref: torch.Tensor | None = None) -> PairTerms:
    """XBM contrastive pair terms: ``1 - S`` per positive, ``S`` per negative, with gradient.

    Args:
        desc: (N, D) anchors with gradient. ref: (M, D) reference (None: ``desc`` itself).
        pairs: indices into desc (a1, a2) and ref (p, n).

    Statistics ``pos``, ``neg``: pairs per anchor.
    """
    n = desc.shape[0]
    sp = pair_similarities(desc, ref, pairs.a1, pairs.p)
    sn = pair_similarities(desc, ref, pairs.a2, pairs.n)
    return PairTerms(1.0 - sp, sn, pairs.a1, pairs.a2, n,
                     stats={"pos": pairs.num_pos / max(n, 1), "neg": pairs.num_neg / max(n, 1)})


def contrastive_pair_loss(desc: torch.Tensor, pairs: PairTuples, ref: torch.Tensor | None = None,
                          reduction: str = "sum") -> tuple[torch.Tensor, dict[str, float]]:
    """XBM contrastive loss at mined pairs: :func:`contrastive_terms` through the ``anchor`` reducer.

    ``reduction``: ``"sum"`` (per anchor sums, XBM) or ``"mean"`` (per anchor means of the
    positive and of the negative terms); then the mean over all N anchors. Returns the scalar
    float32 loss (an exact 0 without pairs) and the statistics ``pos``, ``neg``.
    """
    terms = contrastive_terms(desc, pairs, ref)
    if len(pairs) == 0:
        return zero_loss(desc), terms.stats
    return _reducer(reduction)(terms), terms.stats


def _reducer(reduction: str) -> AnchorReducer:
    return AnchorReducer(pair_mean=reduction == "mean", require_both=False, over="all")


@register_loss("memory_contrastive")
class MemoryContrastiveLoss(Loss):
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
    default_miner: ClassVar[str] = "xbm"
    default_reducer: ClassVar[str] = "anchor"

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
        self.neg_threshold = float(neg_threshold)
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

    def uses_inputs(self) -> bool:
        return self.update == "ema_encoder"

    def make_miner(self) -> HardNegativePairMiner:
        return HardNegativePairMiner(self.neg_threshold)

    def make_reducer(self) -> AnchorReducer:
        return _reducer(self.reduction)

    def references(self, batch: Embedded) -> list[tuple[str, Reference | None, float]]:
        """Enqueue the batch (momentum-encoder keys for ``ema_encoder``), then the terms:
        ``batch`` (if ``include_batch_term``) and, once the warm-up is over, ``memory``."""
        desc, labels = batch.embeddings, batch.labels
        if batch.reference is not None:
            raise ValueError("memory_contrastive mines against its own memory; it does not take a reference set")
        if desc.ndim != 2 or labels.shape != (desc.shape[0],):
            raise ValueError(f"expected desc (B, D) and labels (B,), got {tuple(desc.shape)} and {tuple(labels.shape)}")
        keys = None
        if self.update == "ema_encoder":
            if batch.model is None or batch.inputs is None:
                raise ValueError("update='ema_encoder' needs the batch's model and inputs")
            keys = self.momentum_descriptors(batch.model, batch.inputs)
        gid = self._ids(labels, batch.ids)
        self.enqueue(desc if keys is None else keys, labels, gid)
        self.seen.add_(desc.shape[0])
        terms: list[tuple[str, Reference | None, float]] = []
        if self.include_batch_term:
            terms.append(("batch", None, 1.0))
        self._on = int(self.iteration) >= self.start_iter
        if self._on:
            mem, mem_labels, mem_ids = self.memory()
            terms.append(("memory", Reference(mem, mem_labels, mem_ids, gid), self.memory_weight))
        self.iteration.add_(1)
        return terms

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, tuples: PairTuples, reference: Reference | None,
                batch: Embedded | None = None) -> PairTerms:
        return contrastive_terms(embeddings, tuples, None if reference is None else reference.embeddings)

    def step_stats(self) -> dict[str, float]:
        return {"memory_on": float(getattr(self, "_on", False)), "memory_fill": float(self.filled) / max(self.capacity, 1)}
