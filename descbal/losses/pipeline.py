"""The loss pipeline: embeddings in, a scalar loss out, through miner -> tuples -> loss -> reducer.

The trainer runs the network (``descbal.train.step.loss_step``): the student's train-mode
embeddings, a teacher pass when the pipeline has a teacher, and it hands the result to the
pipeline as an :class:`Embedded` batch. For each reference set the loss asks for (by default
only the batch itself; a memory bank adds its contents) the pipeline runs

    tuples = miner(embeddings, labels, reference, batch)       # no_grad: indices (+ weights)
    terms  = loss(embeddings, labels, tuples, reference, batch)  # per-element values, weights
    value  = reducer(terms)                                    # the scalar

and sums the values with the loss's weights. Stateful parts (a memory bank, DDTAS's
threshold, an OSM classifier head) are submodules of the loss, so ``pipeline.state_dict()``
carries them into checkpoints; the teacher is the pipeline's.

A new loss is one class with ``@register_loss("name")`` deriving from :class:`Loss`; a new
miner or reducer one class with ``@register_miner`` / ``@register_reducer``. Config:
``loss.name``, ``loss.miner`` (default: the loss's own), ``loss.reducer``, and their params.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from descbal.losses.distances import zero_loss
from descbal.losses.miners import Miner
from descbal.losses.reducers import Reducer, Terms
from descbal.losses.registry import LOSSES, MINERS, REDUCERS
from descbal.losses.sharding import AnchorShard
from descbal.losses.teachers import Teacher, build_teacher
from descbal.losses.tuples import ClassTuples, PairTuples, Reference, Stat, Tuples


@dataclass
class Embedded:
    """One embedded training batch, as the trainer hands it to the pipeline.

    ``embeddings`` (N, D) float32 with gradient (train mode); ``labels`` (N,);
    ``teacher`` (N, D) no-gradient teacher embeddings when the pipeline has a teacher;
    ``model`` and ``inputs`` (N, 1, H, W): for parts that run the network again (DDTAS's virtual
    step, a momentum encoder); ``held``: inputs (M, 1, H, W) and labels (M,) held out of the
    embeddings for a meta step (:meth:`Loss.split`); ``reference``: embeddings from elsewhere
    (other ranks) offered to the loss; ``anchors``: in a distributed step of a pipeline that
    shards (:attr:`LossPipeline.shards_anchors`), the rows this rank scores and the reductions
    over ranks (``descbal.losses.sharding``); ``classes``: (C,) the batch's class ids in
    ascending order when the caller knows them (the trainer, from its sampler), so that miners
    need not find them with ``torch.unique``, whose output size depends on the data (a
    compiled step cannot hold it without a graph break).
    """

    embeddings: torch.Tensor
    labels: torch.Tensor
    teacher: torch.Tensor | None = None
    model: nn.Module | None = None
    inputs: torch.Tensor | None = None
    held: tuple[torch.Tensor, torch.Tensor] | None = None
    reference: Reference | None = None
    ids: torch.Tensor | None = None
    anchors: AnchorShard | None = None
    classes: torch.Tensor | None = None


@dataclass
class StepOutput:
    """What the pipeline returns for one batch: the scalar loss and its statistics.

    ``stats``: floats or detached 0-d tensors (:data:`~descbal.losses.tuples.Stat`; the
    triplet-like losses give tensors, so that a compiled step holds no host synchronisation);
    :meth:`floats` converts them. ``total``: the loss of the whole global batch when ``loss``
    is one distributed rank's share (None: ``loss`` is the whole); :attr:`value` is the one to
    report.
    """

    loss: torch.Tensor
    stats: dict[str, Stat] = field(default_factory=dict)
    total: float | None = None

    @property
    def value(self) -> float:
        """The batch's loss as a float (the global batch's in a distributed step)."""
        return float(self.loss.detach()) if self.total is None else self.total

    def floats(self) -> dict[str, float]:
        """``stats`` as floats, the tensors read back in one transfer (one device sync)."""
        return _as_floats(self.stats)

    def report(self) -> dict[str, float]:
        """``{"loss": value, **floats()}``, the loss read back in the same transfer."""
        if self.total is not None:
            return {"loss": self.total, **self.floats()}
        return _as_floats({"loss": self.loss.detach(), **self.stats})


def _as_floats(stats: dict[str, Stat]) -> dict[str, float]:
    names = [k for k, v in stats.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in stats.items() if not isinstance(v, torch.Tensor)}
    if names:
        tensors = [stats[k] for k in names]
        values = torch.stack([t.detach().reshape(()).to(torch.float64) for t in tensors]).cpu().tolist()  # type: ignore[union-attr]
        out.update(zip(names, values, strict=True))
    return {k: out[k] for k in stats}


class Loss(nn.Module):
    """Base of the registered losses: per-element values and weights of mined tuples.

    Class attributes: ``tuples`` (the tuple kinds it consumes: ``ClassTuples`` for the
    triplet-like losses; ``PairTuples`` for pair losses, which also take class tuples as pairs),
    ``default_miner`` and ``default_reducer`` (registered names). Hooks with defaults:
    :meth:`references`, :meth:`split`, :meth:`teacher_spec`, :meth:`make_reducer`, :meth:`uses_inputs`.
    """

    tuples: ClassVar[type] = PairTuples
    default_miner: ClassVar[str] = "hardest"
    default_reducer: ClassVar[str] = "mean"
    suffix_stats: ClassVar[bool] = True  # name each term's statistics after its reference
    shards_anchors: ClassVar[bool] = False  # scores only Embedded.anchors' rows when given (distributed)
    fullgraph: ClassVar[bool] = False  # traces into one graph without breaks (descbal.train.compiled)
    name: ClassVar[str]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, tuples: Tuples, reference: Reference | None,
                batch: Embedded) -> Terms:
        raise NotImplementedError

    def references(self, batch: Embedded) -> list[tuple[str, Reference | None, float]]:
        """``(name, reference, weight)`` of each term: by default the batch alone, weight 1.

        A loss that consumes a reference set handed in by the trainer (``batch.reference``)
        overrides this; the others refuse one rather than ignore it.
        """
        if batch.reference is not None:
            raise ValueError(f"loss {self.name!r} does not take a reference set")
        return [("", None, 1.0)]

    def split(self, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        """Rows to embed (None: all) and rows to hold out for a meta step, or None."""
        return None

    def teacher_spec(self) -> str | None:
        """The teacher this loss needs: ``"self"``, a model path, or None."""
        return None

    def make_miner(self) -> Miner:
        """The miner used when the config names none (built from the loss's own parameters)."""
        return MINERS.build(self.default_miner)

    def step_stats(self) -> dict[str, float]:
        """Statistics of the loss's own state after a step (e.g. a memory's fill)."""
        return {}

    def uses_inputs(self) -> bool:
        """True when the loss runs the network on ``Embedded.inputs`` itself (a meta step, a
        momentum encoder): a distributed run then gathers every rank's inputs for it."""
        return False

    def make_reducer(self) -> Reducer:
        """The reducer used when the config names none (built from the loss's own parameters)."""
        return REDUCERS.build(self.default_reducer)

    def accept(self, tuples: Tuples) -> Tuples:
        """The tuples in the kind this loss consumes (class tuples become pairs for pair losses)."""
        if isinstance(tuples, self.tuples):
            return tuples
        if self.tuples is PairTuples and isinstance(tuples, ClassTuples):
            return tuples.as_pairs()
        raise ValueError(f"loss {self.name!r} needs {self.tuples.__name__}, the miner gave {type(tuples).__name__}")


class LossPipeline(nn.Module):
    """Miner, loss, reducer and teacher of one training phase (see the module docstring)."""

    def __init__(self, loss: Loss, miner: Miner | None = None, reducer: Reducer | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.miner: Miner = miner if miner is not None else loss.make_miner()
        self.reducer: Reducer = reducer if reducer is not None else loss.make_reducer()
        spec = loss.teacher_spec()
        self.teacher: Teacher | None = None if spec is None else build_teacher(spec)

    def split(self, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        return self.loss.split(labels)

    @property
    def shards_anchors(self) -> bool:
        """True when loss, miner and reducer all score only a distributed rank's anchors
        (``shards_anchors`` class attributes; ``descbal.losses.sharding``); otherwise every
        rank runs the pipeline on the whole gathered batch."""
        return all(bool(getattr(part, "shards_anchors", False)) for part in (self.loss, self.miner, self.reducer))

    @property
    def fullgraph(self) -> bool:
        """True when loss, miner, reducer and teacher all trace without a graph break
        (``fullgraph`` class attributes; a compiled step is then one graph,
        ``descbal.train.compiled``)."""
        parts = (self.loss, self.miner, self.reducer, *(() if self.teacher is None else (self.teacher,)))
        return all(bool(getattr(part, "fullgraph", False)) for part in parts)

    def forward(self, batch: Embedded) -> StepOutput:
        emb, labels = batch.embeddings, batch.labels
        total = zero_loss(emb)
        stats: dict[str, Stat] = {}
        for name, ref, weight in self.loss.references(batch):
            with torch.no_grad():
                tuples = self.loss.accept(self.miner(emb, labels, ref, batch))
            terms = self.loss(emb, labels, tuples, ref, batch)
            value = self.reducer(terms)
            total = total + (value if weight == 1.0 else weight * value)
            if name:
                stats[f"loss_{name}"] = value.detach()
            suffix = f"_{name}" if name and self.loss.suffix_stats else ""
            stats.update({f"{k}{suffix}": v for k, v in {**tuples.stats, **terms.stats}.items()})
            if terms.extra is not None:
                total = total + terms.extra
        stats.update(self.loss.step_stats())
        return StepOutput(total, stats)


def build_pipeline(name: str, params: dict[str, Any] | None = None, miner: str = "", miner_params: dict[str, Any] | None = None,
                   reducer: str = "", reducer_params: dict[str, Any] | None = None) -> LossPipeline:
    """The pipeline of a configured loss: ``LOSSES[name](**params)`` with its miner and reducer.

    The loss's default miner and reducer are built from the loss's own parameters (e.g. DDTAS's
    tolerances, XBM's threshold, OSM's margin); naming that same miner without ``miner_params``
    keeps them. Another miner (or ``miner_params``) is built from ``miner_params`` alone; the
    same for reducers. ValueError/TypeError on unknown names or parameters.
    """
    loss = LOSSES.build(name, **(params or {}))
    m = None
    if miner_params or (miner and miner != loss.default_miner):
        m = MINERS.build(miner or loss.default_miner, **(miner_params or {}))
    r = None
    if reducer_params or (reducer and reducer != loss.default_reducer):
        r = REDUCERS.build(reducer or loss.default_reducer, **(reducer_params or {}))
    return LossPipeline(loss, m, r)
