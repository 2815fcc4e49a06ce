"""The training run's configuration schema (TOML tables mirror these dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from descbal.train.augment import AugmentConfig
from descbal.train.optim import OptimConfig, ScheduleConfig

#: ``data.val`` that turns validation off (``descbal train --no-val``).
NO_VAL = "none"


@dataclass(frozen=True)
class DataConfig:
    """Training and validation patch sets (Brown-schema HDF5 caches).

    ``val``: a cache with ``pairs`` (FPR95 each epoch); ``""`` (default) validates on the
    training set's own held-out pairs when it has them (a pool of ``descbal cache images``:
    ``pairs`` among ``holdout`` patches, which training never samples), else not at all;
    ``"none"`` (:data:`NO_VAL`) never validates.
    """

    train: str = ""  # path to the training cache (patches, labels)
    val: str = ""  # validation cache with 'pairs'; "": the training set's held-out pairs, if any; "none": off
    val_pairs: int = 0  # use only the first N validation pairs (0 = all)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture name (``descbal.models.MODELS``) and constructor arguments."""

    name: str = "hynet"
    params: dict[str, Any] = field(default_factory=dict)
    init: str = ""  # start from these weights (a checkpoint, run folder or published weights)


@dataclass(frozen=True)
class LossConfig:
    """The loss pipeline: loss, miner and reducer names (``descbal.losses``) and their arguments."""

    name: str = "triplet"  # a registered loss
    params: dict[str, Any] = field(default_factory=dict)
    miner: str = ""  # a registered miner ("": the loss's default, built from its params)
    miner_params: dict[str, Any] = field(default_factory=dict)
    reducer: str = ""  # a registered reducer ("": the loss's default)
    reducer_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoopConfig:
    """Length, batch shape and execution of the training loop."""

    seed: int = 0
    epochs: int = 25
    iters_per_epoch: int = 1582
    classes_per_batch: int = 2560  # 3D points per batch
    npos: int = 3  # patches per 3D point
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the model
    log_every: int = 10  # iterations between JSONL log lines
    augment: bool = True


@dataclass(frozen=True)
class CyclesConfig:
    """Self-TNet's annealing cycles (self-tnet.md §4.1): a phase with ``cycles`` runs as K phases.

    Cycle k: ``start_batch - step (k + 1)`` classes, the loss's ``threshold`` parameter
    ``threshold + threshold_step k``, learning rate ``lr lr_factor^k`` (the phase schedule's
    ``lr_max``; beta1 = ``optim.betas[0]``), ``iters`` iterations, one epoch, a fresh optimiser.
    """

    start_batch: int = 2944
    min_batch: int = 1024
    step: int = 128
    threshold: float = -0.10
    threshold_step: float = 0.05
    lr: float = 1.5e-6
    lr_factor: float = 0.75
    iters: int = 1400  # per cycle


@dataclass(frozen=True)
class PhaseConfig:
    """One stretch of training in ``[phases.NAME]``; unset values come from the run's tables.

    ``loss`` / ``schedule`` default to the run's ``[loss]`` / ``[schedule]``; ``epochs``,
    ``iters_per_epoch``, ``classes_per_batch``, ``npos`` to ``[loop]``'s. A phase with 0 epochs
    or ``enabled = false`` is skipped. Each phase starts with a fresh optimiser.
    """

    enabled: bool = True
    loss: LossConfig | None = None
    schedule: ScheduleConfig | None = None
    epochs: int | None = None
    iters_per_epoch: int | None = None
    classes_per_batch: int | None = None
    npos: int | None = None
    cycles: CyclesConfig | None = None  # expand into annealing cycles


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs, resolved and written beside its outputs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    # the phases in order; none: one phase "main" of the run's [loss], [schedule] and [loop] shape
    phases: dict[str, PhaseConfig] = field(default_factory=dict)

    _moved_keys: ClassVar[dict[str, str]] = {
        "anneal": "the [anneal] table became a phase: [phases.anneal] with cycles = {...} (see 'descbal train "
                  "--show-recipe self-tnet'); e.g. --set phases.anneal.enabled=false, --set phases.anneal.cycles.iters=N",
    }
