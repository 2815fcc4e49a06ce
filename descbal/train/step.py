"""One training step's forward: the network runs here, the loss pipeline scores its embeddings."""

from __future__ import annotations

import torch
from torch import nn

from descbal.losses.distances import at_least_fp32
from descbal.losses.pipeline import Embedded, LossPipeline, StepOutput
from descbal.losses.sharding import AnchorShard
from descbal.losses.tuples import Reference
from descbal.train.distributed import BatchShard, gather_any, gather_rows, sum_over_ranks
from descbal.train.global_layers import sharded_rows


def loss_step(model: nn.Module, pipeline: LossPipeline, x: torch.Tensor, labels: torch.Tensor,
              reference: Reference | None = None, shard: BatchShard | None = None,
              classes: torch.Tensor | None = None) -> StepOutput:
    """Embed a batch and score it: the forward pass of one training step.

    Rows the pipeline holds out for a meta step (``pipeline.split``) are not embedded; the
    teacher pass (eval mode, no gradient) runs before the student's train-mode pass, as in
    Self-TNet; then ``pipeline(Embedded(...))``.

    In a distributed run (``shard`` given; ``descbal.train.distributed``) ``x`` and ``labels``
    are this rank's rows of the global batch: the split is the global batch's, the teacher and
    the student embed this rank's rows, and the pipeline gets the embeddings of all ranks,
    gathered in rank order (the student's with gradient). A pipeline that shards
    (``LossPipeline.shards_anchors``: the triplet-like losses) scores this rank's anchors
    against them and the output's ``total`` is the global loss; any other runs whole on every
    rank. The inputs are gathered only for a loss that runs the network itself
    (``Loss.uses_inputs``).

    Args:
        model: maps (B, 1, H, W) inputs to (B, D) unit descriptors (in train mode).
        x: (B, 1, H, W) network inputs. labels: (B,) class ids.
        reference: optional embeddings from elsewhere for the loss.
        shard: this rank's place in the global batch (None: a single process).
        classes: (C,) the batch's class ids in ascending order, when known
            (:attr:`Embedded.classes`; single process only).

    Returns:
        The pipeline's :class:`StepOutput` (scalar float32 loss with gradient, statistics).
    """
    if shard is not None:
        return _sharded_step(model, pipeline, x, shard, reference)
    held = None
    split = pipeline.split(labels)
    if split is not None:
        keep, out = split
        held = (x[out], labels[out])
        if keep is not None:
            x, labels = x[keep], labels[keep]
    teacher = pipeline.teacher(model, x) if pipeline.teacher is not None else None
    emb = at_least_fp32(model(x))
    return pipeline(Embedded(emb, labels, teacher=teacher, model=model, inputs=x, held=held, reference=reference,
                             classes=classes if split is None else None))


def _sharded_step(model: nn.Module, pipeline: LossPipeline, x: torch.Tensor, shard: BatchShard,
                  reference: Reference | None) -> StepOutput:
    ctx, labels = shard.ctx, shard.labels
    counts = shard.counts()
    held = everything = None
    rows = None  # the global rows embedded (None: all)
    split = pipeline.split(labels)
    if split is not None:
        keep, out = split
        everything = gather_rows(x.detach(), counts, ctx)  # all ranks' inputs, gathered once
        held = (everything[out], labels[out])
        rows = keep
    if rows is None:
        mine, offset, total = x, shard.start, len(labels)
    else:
        local = rows[(rows >= shard.start) & (rows < shard.stop)] - shard.start
        mine, offset, total = x[local], int((rows < shard.start).sum()), len(rows)
        counts, labels = shard.counts(rows), labels[rows]
    teacher = None
    if pipeline.teacher is not None:
        teacher = gather_rows(pipeline.teacher(model, mine), counts, ctx)
    sharded = pipeline.shards_anchors
    with sharded_rows(offset, total):
        emb = gather_rows(at_least_fp32(model(mine)), counts, ctx, summed=sharded)
    inputs = None
    if pipeline.loss.uses_inputs():
        inputs = gather_rows(mine.detach(), counts, ctx) if everything is None else everything[rows]
    anchors = None
    if sharded:  # this rank's rows of the gathered batch are its anchors
        anchors = AnchorShard(offset, offset + counts[ctx.rank], int(torch.unique(labels).numel()),
                              lambda t: sum_over_ranks(t, ctx), lambda t: gather_any(t, ctx))
    with ctx.timed("loss"):
        out = pipeline(Embedded(emb, labels, teacher=teacher, model=model, inputs=inputs, held=held,
                                reference=reference, anchors=anchors))
    if sharded:
        out.total = float(sum_over_ranks(out.loss.detach(), ctx))
    return out
