"""One training step's forward: the network runs here, the loss pipeline scores its embeddings."""

from __future__ import annotations

import torch
from torch import nn

from descbal.losses.pipeline import Embedded, LossPipeline, StepOutput
from descbal.losses.tuples import Reference


def loss_step(model: nn.Module, pipeline: LossPipeline, x: torch.Tensor, labels: torch.Tensor,
              reference: Reference | None = None) -> StepOutput:
    """Embed a batch and score it: the forward pass of one training step.

    Rows the pipeline holds out for a meta step (``pipeline.split``) are not embedded; the
    teacher pass (eval mode, no gradient) runs before the student's train-mode pass, as in
    Self-TNet; then ``pipeline(Embedded(...))``.

    Args:
        model: maps (B, 1, H, W) inputs to (B, D) unit descriptors (in train mode).
        x: (B, 1, H, W) network inputs. labels: (B,) class ids.
        reference: optional embeddings from elsewhere (other ranks) for the loss.

    Returns:
        The pipeline's :class:`StepOutput` (scalar float32 loss with gradient, statistics).
    """
    held = None
    split = pipeline.split(labels)
    if split is not None:
        keep, out = split
        held = (x[out], labels[out])
        if keep is not None:
            x, labels = x[keep], labels[keep]
    teacher = pipeline.teacher(model, x) if pipeline.teacher is not None else None
    emb = model(x).float()
    return pipeline(Embedded(emb, labels, teacher=teacher, model=model, inputs=x, held=held, reference=reference))
