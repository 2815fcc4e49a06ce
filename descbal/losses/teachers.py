"""Teachers: a no-gradient second view of the batch that a loss weighs its tuples with.

``"self"`` is Self-TNet's (self-tnet.md §3.1): the student network itself in eval mode
(BatchNorm running statistics, no dropout); a path is a frozen external model (through the
one model resolver, ``descbal.models.resolve_model``). The trainer calls ``teacher(model, x)``
before the student pass.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from descbal.losses.distances import at_least_fp32


class Teacher(nn.Module):
    """``teacher(model, x) -> (N, D)`` float32 (at least) embeddings without gradient."""

    fullgraph = False  # a frozen teacher moves itself to the batch's device on first use

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return at_least_fp32(self.embed(model, x))


class SelfTeacher(Teacher):
    """The student in eval mode (its train/eval state is restored)."""

    fullgraph = True  # traces whole (descbal.train.compiled)

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            return model(x)
        finally:
            model.train(was_training)


class FrozenTeacher(Teacher):
    """A fixed model loaded from ``path`` (not part of checkpoints: the path is in the config)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        from descbal.models import resolve_model

        check_teacher(path)
        net = resolve_model(path).network
        if net is None:
            raise ValueError(f"teacher {path!r} is not a network")
        net = net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "_net", net)  # kept out of state_dict and parameters()

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        net = self._net.to(x.device)
        object.__setattr__(self, "_net", net)
        return net(x.to(next(net.parameters()).dtype))  # its own dtype (a float64 student's inputs too)


def check_teacher(spec: object) -> None:
    """ValueError unless ``spec`` is ``"self"``, ``"none"`` or an existing model path."""
    if not isinstance(spec, str) or (spec not in ("self", "none") and not Path(spec).exists()):
        raise ValueError(f"teacher must be 'self', 'none' or a model path; {spec!r} does not exist")


def build_teacher(spec: str) -> Teacher:
    """``"self"`` or a model path."""
    return SelfTeacher() if spec == "self" else FrozenTeacher(spec)
