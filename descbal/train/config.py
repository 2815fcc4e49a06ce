"""The training run's configuration schema (TOML tables mirror these dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from descbal.train.augment import AugmentConfig
from descbal.train.optim import OptimConfig, ScheduleConfig


@dataclass(frozen=True)
class DataConfig:
    """Training and validation patch sets (Brown-schema HDF5 caches)."""

    train: str = ""  # path to the training cache (patches, labels)
    val: str = ""  # optional validation cache with 'pairs' (FPR95 each epoch)
    val_pairs: int = 0  # use only the first N validation pairs (0 = all)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture name (``descbal.models.MODELS``) and constructor arguments."""

    name: str = "hynet"
    params: dict[str, Any] = field(default_factory=dict)
    init: str = ""  # start from these weights (a checkpoint, run folder or published weights)


@dataclass(frozen=True)
class LossConfig:
    """Loss name (``descbal.losses.registry.LOSSES``) and its arguments."""

    name: str = "triplet"
    params: dict[str, Any] = field(default_factory=dict)


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
class AnnealConfig:
    """Self-TNet stage 2 (self-tnet.md §4): run after the main stage when enabled."""

    enabled: bool = False
    start_batch: int = 2944
    min_batch: int = 1024
    step: int = 128
    threshold: float = -0.10
    threshold_step: float = 0.05
    lr: float = 1.5e-6
    lr_factor: float = 0.75
    iters: int = 1400  # per cycle
    npos: int = 2  # pairs, as the authors' stage-2 command runs
    B: float = 4.25  # fixed boundary
    R: float = 1.0
    pct_start: float = 0.6  # flat part of each cycle's flat-then-cosine schedule
    div_final: float = 1e5


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
    anneal: AnnealConfig = field(default_factory=AnnealConfig)
