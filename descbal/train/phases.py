"""A run's phases: the flat list the trainer runs, from the config's ``[phases.NAME]`` tables.

Each phase has its own loss pipeline, batch shape, length, schedule and a fresh optimiser.
Without ``[phases]`` the run is one phase, ``main``, of the run's ``[loss]``, ``[schedule]`` and
``[loop]`` shape. A phase with ``cycles`` expands into Self-TNet's annealing cycles
(:func:`descbal.train.anneal.annealing_schedule`), named ``NAME00``, ``NAME01``, ...
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from descbal.errors import BadInputError
from descbal.losses.pipeline import LossPipeline, build_pipeline
from descbal.train.anneal import annealing_schedule
from descbal.train.config import LossConfig, PhaseConfig, RunConfig
from descbal.train.optim import ScheduleConfig


@dataclass
class Phase:
    """A stretch of training with one loss pipeline, batch shape, schedule and optimiser."""

    name: str
    pipeline: LossPipeline
    classes_per_batch: int
    npos: int
    epochs: int
    iters_per_epoch: int
    schedule: ScheduleConfig

    @property
    def steps(self) -> int:
        return self.epochs * self.iters_per_epoch


def pipeline_of(loss: LossConfig, **params: object) -> LossPipeline:
    """The pipeline of a loss config (``params`` update its loss parameters)."""
    return build_pipeline(loss.name, {**loss.params, **params}, loss.miner, loss.miner_params, loss.reducer,
                          loss.reducer_params)


def _expand(name: str, ph: PhaseConfig, cfg: RunConfig) -> list[Phase]:
    loss = ph.loss if ph.loss is not None else cfg.loss
    sched = ph.schedule if ph.schedule is not None else cfg.schedule
    loop = cfg.loop
    cpb = ph.classes_per_batch if ph.classes_per_batch is not None else loop.classes_per_batch
    npos = ph.npos if ph.npos is not None else loop.npos
    epochs = ph.epochs if ph.epochs is not None else loop.epochs
    iters = ph.iters_per_epoch if ph.iters_per_epoch is not None else loop.iters_per_epoch
    for key, v in (("epochs", epochs), ("iters_per_epoch", iters), ("classes_per_batch", cpb), ("npos", npos)):
        if v < (0 if key == "epochs" else 1):
            raise ValueError(f"phase {name}: {key} must be >= {0 if key == 'epochs' else 1}, got {v}")
    if ph.cycles is None:
        return [Phase(name, pipeline_of(loss), cpb, npos, epochs, iters, sched)] if epochs > 0 else []
    c = ph.cycles
    cycles = annealing_schedule(c.start_batch, c.min_batch, c.step, c.threshold, c.threshold_step, c.lr, c.lr_factor,
                                c.iters)
    return [Phase(f"{name}{k.index:02d}", pipeline_of(loss, threshold=k.threshold), k.batch_size, npos, 1, k.iters,
                  replace(sched, lr_max=k.lr, beta1=cfg.optim.betas[0])) for k in cycles]


def build_phases(cfg: RunConfig) -> list[Phase]:
    """The run's phases in order (module docstring). BadInputError on a bad config."""
    specs = cfg.phases or {"main": PhaseConfig()}
    try:
        phases = [p for name, ph in specs.items() if ph.enabled for p in _expand(name, ph, cfg)]
    except (ValueError, TypeError) as e:
        raise BadInputError(f"config: {e}") from None
    if not phases:
        raise BadInputError("config: nothing to train (every phase has 0 epochs or is disabled)")
    return phases
