"""The training loop: sampling, on-device augmentation, AMP, checkpoints and exact resume.

A run folder holds ``config.toml`` (the resolved configuration), ``environment.json``
(versions, git commit, device), ``metrics.jsonl`` (one JSON object per logged step and per
validation), ``checkpoints/last.pt`` (+ one per epoch) and, at the end, ``model.pt``.

A run is a list of *phases* run in order (``descbal.train.phases``: the recipe's
``[phases.NAME]`` tables, annealing cycles expanded), each with its own loss pipeline, batch
shape, length, schedule and a fresh optimiser. Each step embeds the batch and scores it with
the phase's pipeline (``descbal.train.step.loss_step``); with ``loop.compile`` that forward is
one compiled graph (``descbal.train.compiled``), with ``loop.prefetch`` the next batch is
prepared in a thread meanwhile, and ``loop.precision`` sets the autocast.

Determinism: batch ``i`` of epoch ``e`` of phase ``p`` and its augmentation are pure functions
of ``(seed, p, e, i)``, and the torch generator (dropout) is re-seeded from ``(seed, step)`` before
every step, so a run resumed from any checkpoint -- per epoch or written on Ctrl-C -- continues
exactly as the uninterrupted run (bit for bit on CPU).

Distributed runs (started by ``torchrun`` or ``descbal train --nproc N``;
``descbal.train.distributed``): each rank trains on its shard of the same global batch, and
rank 0 alone writes the run folder and validates. All state is global (the batch, its
augmentation, dropout masks, the loss's statistics and memory), so a run resumes exactly with
the same number of processes and, up to float rounding, with another.
"""

from __future__ import annotations

import json
import platform
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import descbal
from descbal.config import dump_toml, load_config, to_dict
from descbal.data.patchset import CommonGeometry, PatchSet, common_geometry, concat_patchsets, load_patchset
from descbal.devices import resolve_device
from descbal.errors import BadInputError, DataMissingError
from descbal.eval.model_eval import evaluate_brown_model
from descbal.fileio import atomic_path, sha256_hex, write_text_atomic
from descbal.geometry import PatchGeometry
from descbal.heap import keep_freed_memory
from descbal.heap import kept as heap_kept
from descbal.losses.pipeline import StepOutput
from descbal.models import build_model
from descbal.models.checkpoint import FORMAT, geometry_entries, read_checkpoint
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult
from descbal.train import distributed
from descbal.train.augment import AugmentParams, network_input, sample_params
from descbal.train.compiled import StepCompiler, compile_network, compile_note, scope
from descbal.train.config import NO_VAL, DataConfig, RunConfig
from descbal.train.distributed import BatchShard, DistContext
from descbal.train.global_layers import distribute_layers
from descbal.train.optim import make_optimizer, schedule_at, set_lr_beta1
from descbal.train.phases import Phase, build_phases
from descbal.train.sampler import ClassBatchSampler
from descbal.train.step import loss_step


def environment(device: torch.device, dist: DistContext | None = None,
                execution: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, git commit and device of this run (and its processes when distributed;
    ``execution``: how the step runs, :meth:`Trainer.execution`)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(descbal.__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "descbal": descbal.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "platform": platform.platform(), "git_commit": commit,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "cpu_threads": torch.get_num_threads(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "distributed": None if dist is None else {"world_size": dist.world_size, "backend": dist.backend},
        **(execution or {}),
    }


@dataclass
class TrainSummary(JsonResult):
    """What :meth:`Trainer.fit` returns: whether it stopped early, the global step reached, and
    for a finished run its wall time (s), the per-epoch validation records and the model path
    (a stopped run's document has ``stopped`` and ``steps`` only)."""

    OMIT_NONE = ("seconds", "validation", "model")

    stopped: bool
    steps: int
    seconds: float | None = None
    validation: tuple[dict[str, Any], ...] | None = None
    model: str | None = None


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63)


class Trainer:
    """One training run in ``run_dir`` (see the module docstring).

    Args:
        cfg: resolved configuration.
        run_dir: output folder (created).
        train_set: patches (N, 64, 64) uint8 with labels; ``val_set``: with ``pairs``.
        val_note: the line :meth:`fit` logs first, saying what validates (:func:`validation_set`).
        data_notes: lines :meth:`fit` logs before it (how the training sets were combined).
        mixed_geometry: the training sets recorded different patch geometries (checkpoints say
            so next to ``train_set.geometry``, the first set's).
        dist: this process's rank in a distributed run (None: a single process). Every phase's
            classes per batch must divide by the world size, and all ranks must hold the same
            configuration and training data (checked here: BadInputError).

    Checkpoints and ``model.pt`` record ``train_set.geometry`` as ``patch_geometry`` (absent when
    unknown), which extraction and evaluation then use by default.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, train_set: PatchSet, val_set: PatchSet | None = None,
                 val_note: str | None = None, *, data_notes: Sequence[str] = (), mixed_geometry: bool = False,
                 dist: DistContext | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = dist
        self.device = dist.device if dist is not None else resolve_device(cfg.loop.device)
        self.train_set = train_set
        self.val_set = val_set
        self.val_note = val_note
        self.data_notes = tuple(data_notes)
        self.mixed_geometry = mixed_geometry
        if cfg.loop.seed < 0:
            raise BadInputError("config: loop.seed must be >= 0")
        torch.manual_seed(cfg.loop.seed)  # the initial weights derive from the seed too
        try:
            self.model = build_model(cfg.model.name, **cfg.model.params).to(self.device)
        except (ValueError, TypeError) as e:
            raise BadInputError(f"config: {e}") from None
        if cfg.model.init:
            self._init_from(cfg.model.init)
        dtypes = {"float32": torch.float32, "float64": torch.float64}
        if cfg.loop.dtype not in dtypes:
            raise BadInputError(f"config: loop.dtype must be float32 or float64, got {cfg.loop.dtype!r}")
        self.dtype = dtypes[cfg.loop.dtype]
        self.model = self.model.to(self.dtype)
        self.phases: list[Phase] = build_phases(cfg)
        if dist is not None:
            distributed.check_divisible(self.phases, dist.world_size)
            with distributed.collective_errors(dist):
                dist.check_same("configuration or training data", sha256_hex([
                    dump_toml(to_dict(cfg)).encode(), b"\0", train_set.labels.tobytes(), b"\0",
                    str(train_set.patches.shape).encode()]))
            distribute_layers(self.model)
        if self.device.type == "cuda" and cfg.loop.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # bf16 autocast: "auto" keeps fp32 on the CPU, where it would change every number
        self.bf16 = cfg.loop.precision == "bf16" or (cfg.loop.precision == "auto" and self.device.type == "cuda")
        # loop.compile: the whole step forward (single process), or the network alone (distributed:
        # the collectives of a sharded step are not traced)
        self.compiler: StepCompiler | None = None
        if dist is None:
            self.compiler = StepCompiler(self.device, cfg.loop.compile)
            self.step_model: nn.Module = self.model
            self.compile_path = self.compiler.path
            self.compile_scope = {p.name: scope(p.pipeline) for p in self.phases}
        else:
            self.step_model, self.compile_path = compile_network(self.model, self.device, cfg.loop.compile)
            self.compile_scope = {p.name: "network" for p in self.phases}
        if cfg.loop.keep_memory:
            keep_freed_memory()  # process-wide: before the first step allocates its buffers
        self._prefetcher: ThreadPoolExecutor | None = None
        self._pending: tuple[tuple[int, int, int], Future[tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                BatchShard | None]]] | None = None
        self.patches = torch.from_numpy(train_set.patches).to(self.device)
        self.labels = torch.from_numpy(train_set.labels).to(self.device)
        self.phase = 0
        self.epoch = 0
        self.iteration = 0
        self._stop = False  # Ctrl-C seen by this process
        self._stop_all = False  # all ranks agreed to stop after this step (distributed runs)
        self._enter_phase()

    def _init_from(self, path: str) -> None:
        from descbal.models import resolve_model

        src = resolve_model(path).network
        if type(src) is not type(self.model):
            got = "no network" if src is None else f"a {src.arch}"
            raise BadInputError(f"model.init holds {got}, the run trains a {self.model.arch}", path)
        self.model.load_state_dict(src.state_dict())

    def _enter_phase(self) -> None:
        """Sampler and a fresh optimiser for the current phase."""
        ph = self.phases[self.phase]
        try:
            usable = None if self.train_set.holdout is None else ~self.train_set.holdout
            self.sampler = ClassBatchSampler(self.train_set.labels, ph.classes_per_batch, ph.npos,
                                             self.cfg.loop.seed + 1_000_003 * self.phase, usable, self.train_set.near)
        except ValueError as e:
            raise BadInputError(f"phase {ph.name}: {e}") from None
        ph.pipeline.to(self.device)
        extra = [p for p in ph.pipeline.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.model, self.cfg.optim, ph.schedule.lr_max, extra=extra)

    # ------------------------------------------------------------------ persistence

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def global_step(self) -> int:
        """Steps done so far over all phases."""
        ph = self.phases[self.phase] if self.phase < len(self.phases) else None
        done = sum(p.steps for p in self.phases[: self.phase])
        return done + (self.epoch * ph.iters_per_epoch + self.iteration if ph else 0)

    def _checkpoint_doc(self) -> dict[str, Any]:
        return {
            "descbal_format": FORMAT, "arch": self.model.arch, "config": dict(self.model.config),
            "input_scale": float(self.model.input_scale),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "phase": self.phase, "epoch": self.epoch,
            "iteration": self.iteration, "loss_state": self._loss_state(),
            "run_config": dump_toml(to_dict(self.cfg)), **self._geometry_doc(),
        }

    def _geometry_doc(self) -> dict[str, Any]:
        """The checkpoint keys recording the training patches' geometry (none when unknown)."""
        return geometry_entries(self.train_set.geometry, self.mixed_geometry)

    def _loss_state(self) -> dict[str, Any]:
        """State of the phases' loss pipelines (a memory bank, a threshold, a head), keyed by phase index."""
        return {str(i): {k: v.detach().cpu() for k, v in p.pipeline.state_dict().items()}
                for i, p in enumerate(self.phases) if p.pipeline.state_dict()}

    @property
    def is_main(self) -> bool:
        """True in a single process and on rank 0 of a distributed run: the process that writes."""
        return self.dist is None or self.dist.is_main

    def execution(self) -> dict[str, Any]:
        """How the steps run, for ``environment.json``: ``compile`` (requested, ``path``
        inductor or eager, the reason it fell back, and per phase the ``scope`` compiled: the
        whole ``step`` or the ``network`` alone, ``descbal.train.compiled``), ``precision``
        (bf16 or fp32 autocast), ``prefetch`` and ``heap`` (``kept``: freed memory kept for
        reuse in this process, ``descbal.heap``; else ``default``)."""
        return {"compile": {**self.compile_path.to_dict(), "scope": self.compile_scope},
                "precision": "bf16" if self.bf16 else "fp32", "prefetch": self.cfg.loop.prefetch,
                "heap": "kept" if heap_kept() else "default"}

    def save(self, name: str = "last.pt") -> Path:
        """Write the training state (model, optimiser, position) atomically (rank 0 only)."""
        path = self.run_dir / "checkpoints" / name
        if not self.is_main:
            return path
        with atomic_path(path) as tmp:
            torch.save(self._checkpoint_doc(), tmp)
        return path

    def load_state(self, path: str | Path) -> None:
        """Restore model, optimiser and position from a checkpoint written by :meth:`save`."""
        doc = read_checkpoint(path)
        if "optimizer" not in doc:
            raise BadInputError("not a training checkpoint (no optimiser state)", path)
        self.model.load_state_dict(doc["state_dict"])
        self.phase, self.epoch, self.iteration = int(doc.get("phase", 0)), int(doc["epoch"]), int(doc["iteration"])
        for key, state in dict(doc.get("loss_state", {})).items():
            self.phases[int(key)].pipeline.load_state_dict(state)
        if self.phase < len(self.phases):
            self._enter_phase()
            self.optimizer.load_state_dict(doc["optimizer"])

    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ one step

    def _batch_inputs(self, phase: int, epoch: int, it: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                    BatchShard | None]:
        """The network inputs, labels and class ids (C,) ascending of batch ``it`` of ``epoch``
        of the current phase (this rank's rows in a distributed run, with its
        :class:`BatchShard`; augmentation drawn for the global batch). A pure function of the
        seed and the position: the prefetch thread may compute it ahead."""
        b = self.sampler.batch(epoch, it)
        class_pos = _class_positions(b.labels)
        idx = torch.from_numpy(b.indices).to(self.device)
        labels = self.labels.index_select(0, idx)
        classes = torch.from_numpy(np.sort(b.classes)).to(self.device)
        params = None
        if self.cfg.loop.augment:
            rng = np.random.default_rng([self.cfg.loop.seed, phase, epoch, it, 1])
            params = sample_params(self.cfg.augment, class_pos, len(b.classes), rng, in_size=self.patches.shape[-1])
        shard = None
        if self.dist is not None:
            bounds = distributed.shard_bounds(class_pos, len(b.classes), self.dist.world_size)
            shard = BatchShard(labels, tuple(int(v) for v in bounds), self.dist)
            lo, hi = shard.start, shard.stop
            idx = idx[lo:hi]
            if params is not None:
                params = AugmentParams(params.theta[lo:hi], params.flip[lo:hi], params.transpose[lo:hi])
        x = network_input(self.patches.index_select(0, idx), params, self.model.input_scale, self.cfg.augment.out_size)
        x = x.to(self.dtype)
        if self.device.type == "cuda" and self.cfg.loop.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels if shard is None else labels[shard.start:shard.stop], classes, shard

    def _inputs(self, epoch: int, it: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, BatchShard | None]:
        """:meth:`_batch_inputs` of this step, taken from the prefetch thread when it holds
        them; with ``loop.prefetch`` the next batch of the phase is then started there."""
        key = (self.phase, epoch, it)
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key:
            inputs = pending[1].result()
        else:
            if pending is not None:
                pending[1].cancel()
            inputs = self._batch_inputs(*key)
        if self.cfg.loop.prefetch:
            ph = self.phases[self.phase]
            nxt = (epoch, it + 1) if it + 1 < ph.iters_per_epoch else (epoch + 1, 0)
            if nxt[0] < ph.epochs:  # a new phase has another sampler: not ahead of it
                if self._prefetcher is None:
                    self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="descbal-prefetch")
                self._pending = ((self.phase, *nxt), self._prefetcher.submit(self._batch_inputs, self.phase, *nxt))
        return inputs

    def close(self) -> None:
        """Stop the prefetch thread (a trainer that is not fitted any more)."""
        if self._pending is not None:
            self._pending[1].cancel()
            self._pending = None
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True)
            self._prefetcher = None

    def step(self, epoch: int, it: int) -> dict[str, float]:
        """Run one optimisation step of the current phase; returns its statistics."""
        ph = self.phases[self.phase]
        lr, beta1 = schedule_at(ph.schedule, epoch * ph.iters_per_epoch + it, ph.steps)
        set_lr_beta1(self.optimizer, lr, beta1)
        step = sum(p.steps for p in self.phases[: self.phase]) + epoch * ph.iters_per_epoch + it
        torch.manual_seed(_step_seed(self.cfg.loop.seed, step))
        x, labels, classes, shard = self._inputs(epoch, it)
        self.model.train()
        if self.compiler is not None:
            out = StepOutput(*self.compiler(self.step_model, ph.pipeline, x, labels, classes, self.bf16))
        else:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = loss_step(self.step_model, ph.pipeline, x, labels, shard=shard)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.dist is not None:  # every rank ran the global loss: sum the ranks' shares of the gradient
            self._stop_all = self.dist.reduce_gradients(self.model.parameters(), self._stop, ph.pipeline.parameters())
        self.optimizer.step()
        patches = len(labels) if shard is None else len(shard.labels)
        report = out.report()  # one device sync for the loss and every statistic
        return {"loss": report.pop("loss"), "lr": lr, "patches": float(patches), **report}

    # ------------------------------------------------------------------ validation

    def validate(self) -> float | None:
        """FPR95 (HardNet definition) on the validation pairs, or None without a set."""
        vs = self.val_set
        if vs is None or vs.pairs is None or not self.is_main:
            return None
        return evaluate_brown_model(self.model, vs, max_pairs=self.cfg.data.val_pairs, device=self.device).fpr95

    # ------------------------------------------------------------------ the loop

    def fit(self, progress: Progress | None = None, stop_after: int | None = None,
            log: Callable[[str], None] | None = None) -> TrainSummary:
        """Train from the current position to the end (or until Ctrl-C / ``stop_after`` steps).

        ``progress("train", step, total_steps, stats)`` is called after every step (stats: loss,
        lr, patches, patches/s on logged steps, the pipeline's statistics); ``log`` gets the
        trainer's ``val_note`` first (what validates), its ``data_notes`` and the patch geometry
        (:func:`geometry_line`), one line when a phase starts and one per validation. On Ctrl-C
        or SIGTERM the current step finishes, ``checkpoints/last.pt`` is written and
        KeyboardInterrupt is raised (a distributed run's ranks stop after the same step).
        """
        progress = or_no_progress(progress if self.is_main else None)
        say = (log if self.is_main else None) or (lambda line: None)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        # Ctrl-C, and SIGTERM (a scheduler's pre-emption, `kill`): finish the step, save, stop
        stops = (signal.SIGINT, signal.SIGTERM)
        previous: dict[int, Any] | None = {s: signal.getsignal(s) for s in stops}

        def on_stop(signum: int, frame: Any) -> None:
            self._stop = True

        try:
            for s in stops:
                signal.signal(s, on_stop)
        except ValueError:  # not in the main thread
            previous = None
        history: list[dict[str, Any]] = []  # the validation records of this call
        if self.val_note:
            say(self.val_note)
        for line in self.data_notes:
            say(line)
        say(geometry_line(self.train_set.geometry, self.mixed_geometry))
        note = compile_note(self.compile_path)
        if note:
            say(note)
        try:
            with distributed.collective_errors(self.dist):
                return self._loop(progress, say, stop_after, history, start)
        finally:
            self.close()
            for s, handler in (previous or {}).items():
                signal.signal(s, handler)

    def _loop(self, progress: Progress, say: Callable[[str], None], stop_after: int | None,
              history: list[dict[str, Any]], start: float) -> TrainSummary:
        """:meth:`fit`'s loop over the phases, epochs and steps from the current position."""
        cfg = self.cfg.loop
        done_here = 0
        window_t, window_n = time.perf_counter(), 0.0
        while self.phase < len(self.phases):
            ph = self.phases[self.phase]
            if self.epoch == 0 and self.iteration == 0:
                say(phase_line(ph))
                if self.compiler is not None and self.compile_path.compiled and self.compile_scope[ph.name] != "step":
                    say(f"phase {ph.name}: loss {ph.pipeline.loss.name} does not trace into one graph; the network "
                        "alone is compiled (descbal.train.compiled says why)")
            while self.iteration < ph.iters_per_epoch:
                graphs = None if self.compiler is None else self.compiler.compiles
                stats = self.step(self.epoch, self.iteration)
                if self.compiler is not None and self.compiler.compiles != graphs:
                    say(f"compiled the training step: {self.compiler.compiles} graph(s), "
                        f"{self.compiler.compile_s:.1f} s so far")
                self.iteration += 1
                done_here += 1
                window_n += stats["patches"]
                step = self.global_step
                if step % cfg.log_every == 0 or self.iteration == ph.iters_per_epoch:
                    now = time.perf_counter()
                    stats["patches_per_s"] = window_n / max(now - window_t, 1e-9)
                    window_t, window_n = now, 0.0
                    self._log({"step": step, "phase": ph.name, "epoch": self.epoch, **stats})
                progress("train", step, self.total_steps, stats)
                # a distributed run stops where all ranks agreed (the gradient all-reduce carries it)
                interrupted = self._stop_all if self.dist is not None else self._stop
                if interrupted or (stop_after is not None and done_here >= stop_after):
                    self.save()
                    if interrupted:
                        raise KeyboardInterrupt
                    return TrainSummary(True, step)  # seconds, validation and model stay None
            self.epoch += 1
            self.iteration = 0
            finished = self.epoch
            rec = {"phase": ph.name, "epoch": finished, "step": self.global_step, "val_fpr95": self.validate()}
            history.append(rec)
            self._log(rec)
            if rec["val_fpr95"] is not None:
                say(f"phase {ph.name} epoch {finished}: validation FPR95 {100 * rec['val_fpr95']:.2f} %")
            if self.epoch == ph.epochs:  # the phase is over: the checkpoint starts the next one
                self.phase += 1
                self.epoch = 0
                if self.phase < len(self.phases):
                    self._enter_phase()
            self.save()
            self.save(f"{ph.name}_epoch_{finished:03d}.pt")
        from descbal.models.checkpoint import save_checkpoint

        if self.is_main:
            save_checkpoint(self.run_dir / "model.pt", self.model, run_config=dump_toml(to_dict(self.cfg)),
                            **self._geometry_doc())
        return TrainSummary(False, self.total_steps, time.perf_counter() - start, tuple(history),
                            str(self.run_dir / "model.pt"))


def geometry_line(geometry: PatchGeometry | None, mixed: bool = False) -> str:
    """The line :meth:`Trainer.fit` logs about the training patches' geometry."""
    if geometry is None:
        return ("patch geometry: unknown (no training set records one); models of this run extract with the "
                "default geometry unless --mag is given")
    fields = ", ".join(f"{k} {v}" for k, v in geometry.to_dict().items())
    return f"patch geometry: {fields}{' (sets of mixed geometries)' if mixed else ''}; recorded in the checkpoints"


def phase_line(ph: Phase) -> str:
    """One line describing a phase as it starts."""
    p = ph.pipeline
    return (f"phase {ph.name}: {ph.steps} steps ({ph.epochs} x {ph.iters_per_epoch}) of {ph.classes_per_batch} classes x "
            f"{ph.npos} patches; loss {p.loss.name}, miner {getattr(p.miner, 'name', type(p.miner).__name__)}, "
            f"reducer {getattr(p.reducer, 'name', type(p.reducer).__name__)}, lr_max {ph.schedule.lr_max:g}")


def _class_positions(labels: np.ndarray) -> np.ndarray:
    """Position of each patch's class in a batch whose classes are contiguous. Shape: (B,)."""
    change = np.ones(len(labels), dtype=bool)
    change[1:] = labels[1:] != labels[:-1]
    return np.cumsum(change) - 1


def validation_set(data: DataConfig, train: PatchSet) -> tuple[PatchSet | None, str]:
    """The run's validation set and the log line saying what it is.

    ``data.val`` names a cache; ``"none"`` turns validation off; unset, the training set itself
    validates on those of its ``pairs`` that join only ``holdout`` patches (a pool of ``descbal
    cache images`` or a set of ``cache sfm``): the sampler never draws those, so these pairs
    are held out. Brown sets' pairs, among their training patches, are not used so (combined
    with a pool, only the pool's pairs validate).
    """
    if data.val == NO_VAL:
        return None, 'validation: off (--no-val / data.val = "none")'
    if data.val:
        val = load_patchset(data.val)
        n = 0 if val.pairs is None else len(val.pairs)
        return val, f"validation: FPR95 each epoch on {data.val} ({_pairs_used(n, data.val_pairs)} pairs)"
    pairs, held = train.pairs, train.holdout
    inside = held[pairs[:, :2]].all(axis=1) if pairs is not None and held is not None and len(pairs) else None
    if inside is not None and inside.any():
        # several sets: a Brown set's pairs (among its training patches) are dropped, the pool's kept
        val = train if inside.all() else replace(train, pairs=pairs[inside])  # type: ignore[index]
        n = int(inside.sum())
        among = "" if inside.all() else f" (of {len(inside)}: those among held-out patches)"
        return val, (f"validation: FPR95 each epoch on the training set's {_pairs_used(n, data.val_pairs)} "
                     f"held-out pairs{among} ({int(held.sum())} held-out patches, never trained on); "  # type: ignore[union-attr]
                     "--no-val to skip")
    return None, "validation: none (the training set has no held-out pairs; give --val SET.h5)"


def _pairs_used(n: int, limit: int) -> int:
    return min(n, limit) if limit > 0 else n


@dataclass(frozen=True)
class TrainingData:
    """The training sets of a run, combined (:func:`load_training_data`).

    ``train``: the one set trained on; ``geometry``: its sets' common patch geometry
    (:func:`descbal.data.patchset.common_geometry`: ``mixed``, and the log ``notes``).
    """

    train: PatchSet
    geometry: CommonGeometry


def load_training_data(data: DataConfig) -> TrainingData:
    """Read ``data.train`` (one or several caches) and combine the sets
    (:func:`~descbal.data.patchset.concat_patchsets`).

    Raises:
        BadInputError: no training data, sets of different patch sizes, or of different
            recorded geometries without ``data.mixed_geometry`` (naming both files).
        DataMissingError: a cache that does not exist.
    """
    paths = data.train_paths
    if not paths:
        raise BadInputError("no training data: give --data or set data.train")
    sets = [load_patchset(p) for p in paths]
    names = [Path(p).name for p in paths]
    common = common_geometry([s.geometry for s in sets], names, allow_mixed=data.mixed_geometry)
    return TrainingData(concat_patchsets(sets, paths, allow_mixed_geometry=data.mixed_geometry), common)


def _trainer(cfg: RunConfig, run_dir: Path) -> Trainer:
    """The run's trainer; one rank of a distributed run when torch's launcher started this process."""
    dist = distributed.init_from_env(cfg.loop.device, cfg.loop.dist_timeout_s) if distributed.launched() else None
    data = load_training_data(cfg.data)
    val, note = validation_set(cfg.data, data.train)
    return Trainer(cfg, run_dir, data.train, val, val_note=note, data_notes=data.geometry.notes,
                   mixed_geometry=data.geometry.mixed, dist=dist)


def start_run(cfg: RunConfig, run_dir: str | Path) -> Trainer:
    """Create a run folder (resolved config, environment) and a trainer at step 0."""
    run_dir = Path(run_dir)
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise BadInputError("run folder already holds a run; use --resume to continue it", run_dir)
    trainer = _trainer(cfg, run_dir)
    if trainer.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.toml", dump_toml(to_dict(cfg)))
        write_text_atomic(run_dir / "environment.json",
                          json.dumps(environment(trainer.device, trainer.dist, trainer.execution()), indent=2) + "\n")
    return trainer


def _resume_config(run_dir: Path) -> RunConfig:
    """The config of the run in ``run_dir`` (DataMissingError without a run to resume)."""
    if not run_dir.is_dir():
        raise DataMissingError("run folder not found", run_dir)
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise DataMissingError("no checkpoints/last.pt to resume from", run_dir)
    return load_config(RunConfig, run_dir / "config.toml")


def resume_run(run_dir: str | Path, cfg: RunConfig | None = None) -> Trainer:
    """A trainer restored from ``run_dir/checkpoints/last.pt`` with the run's own config
    (``cfg``: that config, already read by :func:`run_config`)."""
    run_dir = Path(run_dir)
    trainer = _trainer(cfg if cfg is not None else _resume_config(run_dir), run_dir)
    trainer.load_state(run_dir / "checkpoints" / "last.pt")
    return trainer


def run_config(out: str | Path | None = None, *, resume: str | Path | None = None, recipe: str | None = None,
               config: str | Path | None = None, overrides: Sequence[str] = (),
               data: str | Path | Sequence[str | Path] | None = None,
               val: str | Path | None = None, seed: int | None = None, device: str | None = None,
               no_val: bool = False, compile: bool = False) -> RunConfig:
    """The configuration :func:`open_run` runs with the same arguments (and its checks of them):
    the resumed run's own, or the one resolved as recipe < config < overrides <
    data (one or several training sets)/val/seed/device (:func:`descbal.run_config.resolve_run_config`;
    ``no_val``: no validation; ``compile``: ``loop.compile = true``)."""
    from descbal.run_config import resolve_run_config

    if resume is not None:
        if config or recipe or overrides or data or val or no_val or compile or seed is not None or device is not None:
            raise BadInputError("--resume continues a run with its own config; drop the other options")
        return _resume_config(Path(resume))
    if out is None:
        raise BadInputError("--out RUN_DIR is required (or --resume RUN_DIR)")
    if compile:
        overrides = (*overrides, "loop.compile=true")
    return resolve_run_config(recipe, config, overrides, data, val, seed, device, no_val=no_val)


def open_run(out: str | Path | None = None, *, resume: str | Path | None = None, **options: Any) -> Trainer:
    """``descbal train``'s run: resumed from ``resume`` (with its own config, nothing else given),
    or started in ``out``; ``options`` (recipe, config, overrides, data, val, seed, device,
    no_val, compile) as :func:`run_config` takes them."""
    cfg = run_config(out, resume=resume, **options)
    if resume is not None:
        return resume_run(resume, cfg)
    assert out is not None
    return start_run(cfg, out)
