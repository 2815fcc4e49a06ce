"""The training run's configuration schema (TOML tables mirror these dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from descbal.errors import BadInputError
from descbal.registry import Registry
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

    ``train`` may list several caches (``train = ["pool.h5", "liberty.h5"]``): they are combined
    (:func:`descbal.data.patchset.concat_patchsets`: labels kept apart), and must record one patch
    geometry, or none (Brown's), unless ``mixed_geometry``.
    """

    train: str | list[str] = ""  # the training cache (patches, labels), or a list of them: one run on all
    val: str = ""  # validation cache with 'pairs'; "": the training set's held-out pairs, if any; "none": off
    val_pairs: int = 0  # use only the first N validation pairs (0 = all)
    mixed_geometry: bool = False  # allow training sets of different recorded patch geometries (else refused)

    @property
    def train_paths(self) -> list[str]:
        """``train`` as a list of paths (a string is one set; "" none): the one place it is normalised."""
        if isinstance(self.train, str):
            return [self.train] if self.train else []
        return list(self.train)


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


#: ``loop.precision`` values.
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class LoopConfig:
    """Length, batch shape and execution of the training loop.

    ``compile``: the whole step's forward (teacher and student passes, mining, loss) is one
    ``torch.compile`` graph whose backward is compiled with it, for the pipelines that trace
    whole; for the others, and in distributed runs, the network alone is compiled
    (``descbal.train.compiled``); without a C++ compiler (CPU) or Triton (CUDA) the run goes on
    eager with one warning line.
    ``precision``: ``"auto"`` (bf16 autocast on CUDA, fp32 elsewhere), ``"fp32"`` or ``"bf16"``
    (autocast on any device; on a CPU without AVX512-BF16 it is emulated and slower).
    ``prefetch``: the next batch is sampled and augmented in a background thread while the
    current step runs (the same batches: they depend on the seed and position only).
    ``keep_memory``: the process keeps the memory large tensors free for reuse
    (:func:`descbal.heap.keep_freed_memory`; glibc on Linux, process-wide from the trainer's
    construction on): a large CPU batch then stops faulting its buffers in again every step
    (eager HyNet at 256 x 3 patches about 1.5x faster on 2 cores); at 64 x 3 the faults are
    few and the difference is within the noise. Off by default: resident memory stays at the
    peak between steps.
    """

    _moved_keys: ClassVar[dict[str, str]] = {
        "bf16": 'loop.bf16 became loop.precision: "auto" (bf16 on CUDA, fp32 on the CPU; what bf16 = true did), '
                '"fp32" (bf16 = false) or "bf16" (on any device); edit config.toml to resume a run written before',
    }

    seed: int = 0
    epochs: int = 25
    iters_per_epoch: int = 1582
    classes_per_batch: int = 2560  # 3D points per batch
    npos: int = 3  # patches per 3D point
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on the CPU) | fp32 | bf16
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the whole step (forward, mining, loss; its backward)
    prefetch: bool = False  # sample and augment the next batch in a background thread during the step
    keep_memory: bool = False  # keep freed memory for reuse in this process (descbal.heap; glibc)
    log_every: int = 10  # iterations between JSONL log lines
    augment: bool = True
    dtype: str = "float32"  # the network's parameters and inputs: float32 | float64 (exactness checks)
    dist_timeout_s: float = 1800.0  # distributed runs: a collective waiting longer for a rank fails the run


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

    def __post_init__(self) -> None:
        check_run_config(self)


# The values a run can use, per table: ``(">=", bound)`` or ``(">", bound)``. A value outside
# would fail late (an empty sampler, a log that never writes) or silently (a skipped phase).
_LOOP_SHAPE = {"epochs": (">=", 0), "iters_per_epoch": (">=", 1), "classes_per_batch": (">=", 2), "npos": (">=", 2)}
RANGES: dict[str, dict[str, tuple[str, float]]] = {
    "data": {"val_pairs": (">=", 0)},
    "loop": {"seed": (">=", 0), **_LOOP_SHAPE, "log_every": (">=", 1)},
    "phase": _LOOP_SHAPE,
    "schedule": {"lr_max": (">", 0), "div": (">", 0), "div_final": (">", 0)},
    "optim": {"eps": (">", 0), "weight_decay": (">=", 0)},
    "cycles": {"start_batch": (">=", 2), "min_batch": (">=", 2), "step": (">=", 1), "lr": (">", 0),
               "lr_factor": (">", 0), "iters": (">=", 1)},
    "augment": {"pad": (">=", 0), "out_size": (">=", 1)},
}


def _check_ranges(table: object, kind: str, key: str) -> None:
    for f in fields(table):  # type: ignore[arg-type]
        rule = RANGES[kind].get(f.name)
        v = getattr(table, f.name)
        if rule is None or v is None:
            continue
        op, bound = rule
        if not (v >= bound if op == ">=" else v > bound):
            raise BadInputError(f"config: {key}.{f.name} must be {op} {bound:g}, got {v!r}")


def _check_params(registry: Registry, name: str, params: dict[str, Any], name_key: str, params_key: str) -> None:
    """``name`` is registered and takes every key of ``params`` (its constructor's signature)."""
    if name not in registry:
        raise BadInputError(f"config: {name_key}: unknown {registry.kind} {name!r}; choose from "
                            f"{', '.join(sorted(registry))}")
    known = registry.parameters(name)
    unknown = [k for k in params if known is not None and k not in known]
    if unknown:
        raise BadInputError(f"config: {params_key}.{unknown[0]}: {registry.kind} {name!r} has no parameter "
                            f"{unknown[0]!r} (its parameters: {', '.join(known or []) or 'none'})")


def _check_loss(loss: LossConfig, key: str) -> None:
    from descbal.losses.registry import LOSSES, MINERS, REDUCERS

    _check_params(LOSSES, loss.name, loss.params, f"{key}.name", f"{key}.params")
    default = LOSSES[loss.name]
    if loss.miner or loss.miner_params:  # as build_pipeline builds them
        _check_params(MINERS, loss.miner or default.default_miner, loss.miner_params, f"{key}.miner",
                      f"{key}.miner_params")
    if loss.reducer:
        _check_params(REDUCERS, loss.reducer, loss.reducer_params, f"{key}.reducer", f"{key}.reducer_params")
    elif loss.reducer_params:
        raise BadInputError(f"config: {key}.reducer_params need {key}.reducer (the loss's own reducer is built "
                            f"from {key}.params)")


def check_run_config(cfg: RunConfig) -> None:
    """Every value of ``cfg`` in range and every loss, miner, reducer and model name known with
    the parameters given, or BadInputError naming the key (e.g. ``loss.params.tacher``, with
    the parameters the loss has). Run on every :class:`RunConfig` built."""
    from descbal.models import MODELS

    for kind in ("data", "loop", "schedule", "optim", "augment"):
        _check_ranges(getattr(cfg, kind), kind, kind)
    if cfg.loop.precision not in PRECISIONS:
        raise BadInputError(f"config: loop.precision must be one of {', '.join(PRECISIONS)}, got {cfg.loop.precision!r}")
    _check_params(MODELS, cfg.model.name, cfg.model.params, "model.name", "model.params")
    _check_loss(cfg.loss, "loss")
    for name, ph in cfg.phases.items():
        key = f"phases.{name}"
        _check_ranges(ph, "phase", key)
        if ph.schedule is not None:
            _check_ranges(ph.schedule, "schedule", f"{key}.schedule")
        if ph.cycles is not None:
            _check_ranges(ph.cycles, "cycles", f"{key}.cycles")
        if ph.loss is not None:
            _check_loss(ph.loss, f"{key}.loss")
