"""The training step's forward as one compiled region (``loop.compile``).

:func:`step_forward` is :func:`descbal.train.step.loss_step` -- teacher pass, student pass,
mining, loss, reduction -- returning the loss and its statistics as tensors, under the run's
autocast. :class:`StepCompiler` hands it to ``torch.compile`` once per trainer
(:func:`descbal.compiling.compile_function`): dynamo traces it into one graph, AOTAutograd
derives the backward from that graph and inductor compiles both, so ``loss.backward()`` runs
compiled code too. Tracing the teacher's and the student's passes into one graph lets the
compiler compute their shared layers once (HyNet's teacher differs from the student only in
the last block's dropout and BatchNorm).

Graph breaks: the triplet-like pipelines (``triplet``, ``balance``, ``anneal`` with the
``hardest`` miner, ``mean`` reducer and the ``self`` teacher or none) trace whole
(:attr:`descbal.losses.pipeline.LossPipeline.fullgraph`, tested with ``fullgraph=True``).
The others cannot; for them only the network is compiled and the rest of the step runs eager
(compiling their steps in pieces around the breaks changed DDTAS's numbers, so it is not done):

* ``ddtas``: AT-ASMS picks its pairs with ``nonzero`` (data-dependent counts) and reads its
  ratios back as floats to set the thresholds; the meta step calls ``torch.autograd.grad``
  inside the forward;
* ``memory_contrastive``: the bank's fill level is a Python int that slices it, its mined pairs
  come from ``nonzero``, and the enqueue writes the bank in place;
* ``osm_caa``: its class-aware attention groups the batch with ``torch.unique`` and its pairs
  come from ``nonzero``.

Recompilations: the batch dimension is symbolic from the first graph on (``mark_dynamic``), so
batch sizes never recompile, and the graph a phase gets does not depend on the phases before
it (a run resumed in a new process compiles the same code). A new loss compiles once more, and
a loss constant that changes (the annealing threshold) once, after which dynamo leaves it
symbolic. A run of Self-TNet's recipe (stage 1, then 15 annealing cycles of shrinking batches
and rising thresholds) therefore compiles at most 3 times (dynamo's count, the same for every
backend; tested); :attr:`StepCompiler.compiles` counts them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from descbal.compiling import CompilePath, compile_count, compile_function
from descbal.losses.pipeline import LossPipeline
from descbal.losses.tuples import Stat
from descbal.train.step import loss_step

#: The dynamo backend the trainer compiles with (tests substitute a cheaper one).
BACKEND = "inductor"


def step_forward(model: nn.Module, pipeline: LossPipeline, x: torch.Tensor, labels: torch.Tensor,
                 classes: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, dict[str, Stat]]:
    """One step's forward for a single process: ``loss_step`` under bf16 autocast when ``bf16``.

    Shapes: x (B, 1, H, W), labels (B,), classes (C,) the batch's class ids ascending.
    Returns the scalar float32 loss (with gradient) and the pipeline's statistics.
    """
    amp = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with amp:
        out = loss_step(model, pipeline, x, labels, classes=classes)
    return out.loss, out.stats


class StepCompiler:
    """:func:`step_forward`, compiled for ``device`` when ``requested`` and possible: whole for
    a pipeline that traces into one graph (:attr:`LossPipeline.fullgraph`), else with the
    network alone compiled (:func:`scope`).

    ``path``: the :class:`~descbal.compiling.CompilePath` taken; ``compiles``: graphs compiled
    so far; ``compile_s``: seconds spent in steps that compiled.
    """

    def __init__(self, device: torch.device, requested: bool) -> None:
        self.device = device
        self.compiles = 0
        self.compile_s = 0.0
        self.fn: Callable[..., tuple[torch.Tensor, dict[str, Stat]]]
        self.fn, self.path = compile_function(step_forward, device, requested, backend=BACKEND)
        self._networks: dict[int, nn.Module] = {}  # id(model) -> the compiled network, for the other pipelines

    def _network(self, model: nn.Module) -> nn.Module:
        if id(model) not in self._networks:  # (the wrapper holds the model: its id is not reused)
            self._networks[id(model)] = compile_network(model, self.device, True)[0]
        return self._networks[id(model)]

    def __call__(self, model: nn.Module, pipeline: LossPipeline, x: torch.Tensor, labels: torch.Tensor,
                 classes: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, dict[str, Stat]]:
        """The step's loss and statistics (``compiles`` grows when this call compiled)."""
        before, t0 = compile_count(), time.perf_counter()
        if self.path.compiled:
            # the batch dimension is symbolic from the first graph on: the graph a phase gets does
            # not depend on the batch sizes seen before (a resumed run compiles the same code)
            for t in (x, labels, classes):
                torch._dynamo.mark_dynamic(t, 0)
        if self.path.compiled and scope(pipeline) == "network":
            loss, stats = step_forward(self._network(model), pipeline, x, labels, classes, bf16)
        else:
            loss, stats = self.fn(model, pipeline, x, labels, classes, bf16)
        if compile_count() != before:
            self.compiles += compile_count() - before
            self.compile_s += time.perf_counter() - t0
        return loss, stats


def compile_network(model: nn.Module, device: torch.device, requested: bool) -> tuple[nn.Module, CompilePath]:
    """The network alone compiled with the trainer's backend (what a step whose loss does not
    trace whole, or a distributed step, runs), and the path taken."""
    return compile_function(model, device, requested, backend=BACKEND)


def scope(pipeline: LossPipeline) -> str:
    """What ``loop.compile`` compiles of a step with ``pipeline``: ``"step"`` or ``"network"``."""
    return "step" if pipeline.fullgraph else "network"


def compile_note(path: CompilePath) -> str | None:
    """The warning line a run logs when compiling was asked for and skipped (None otherwise)."""
    return f"warning: loop.compile: {path.reason}" if path.requested and not path.compiled else None
