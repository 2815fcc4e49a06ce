"""``descbal train --nproc N``: one run on N local processes, started by torch's elastic
launcher (the machinery behind ``torchrun``; no launcher of our own).

Each process is one rank (``descbal.train.distributed``); rank 0 prints what ``descbal train``
prints (the start line, progress, log lines) and its summary comes back to the caller. Before
anything starts, the configuration is resolved here and checked against N (classes per batch
divisible by N; enough GPUs). A rank that fails ends the run: it prints its error and exits,
the launcher stops the others, and :func:`train_processes` raises one error naming the rank
(exit 1; 2 or 3 when the rank's own error was a bad input or missing data). Ctrl-C stops
every rank after the same step with a checkpoint (KeyboardInterrupt here, exit 130).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable
from typing import Any

import torch

from descbal.errors import BadInputError, DescbalError
from descbal.train.trainer import TrainSummary


def check_launch(nproc: int, kwargs: dict[str, Any]) -> None:
    """BadInputError when the run of ``open_run(**kwargs)`` cannot run on ``nproc`` processes."""
    from descbal.devices import resolve_device
    from descbal.train import distributed
    from descbal.train.phases import build_phases

    if nproc < 1:
        raise BadInputError(f"--nproc must be >= 1, got {nproc}")
    from descbal.train.trainer import run_config

    cfg = run_config(**kwargs)
    distributed.check_divisible(build_phases(cfg), nproc)
    dev = resolve_device(cfg.loop.device)
    if dev.type == "cuda" and nproc > torch.cuda.device_count():
        raise BadInputError(f"--nproc {nproc} on CUDA, but this machine has {torch.cuda.device_count()} GPU(s)")


def train_processes(nproc: int, kwargs: dict[str, Any], quiet: bool = False) -> TrainSummary:
    """Run ``descbal train`` (``open_run(**kwargs)`` then ``fit``, :func:`rank_main`) on
    ``nproc`` local processes; returns rank 0's :class:`TrainSummary`.

    Raises:
        BadInputError / DataMissingError: the run cannot start (also when a rank reports it).
        DescbalError: a rank failed (exit 1), naming it and how it ended.
        KeyboardInterrupt: Ctrl-C; the run stopped with a checkpoint.
    """
    check_launch(nproc, kwargs)
    results = run_local(nproc, rank_main, kwargs, quiet)
    return _summary_of(results)


def run_local(nproc: int, fn: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """``fn(*args)`` on ``nproc`` local processes, ranks of one process group-to-be (torch's
    elastic launcher, spawn start; ``fn`` must be importable by name and its result picklable).
    Returns ``{rank: result}``.

    ``OMP_NUM_THREADS`` defaults to the cores divided among the processes (torchrun's rule).
    SIGINT is left to the processes (each finishes its step; see :mod:`descbal.train.launch`).

    Raises:
        DescbalError: a process failed; names the lowest failed rank and how it ended.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # Ctrl-C is left to the ranks (each finishes its step and rank 0 saves); older torch reads
    # the launcher's signal list from the environment only
    signals = {"signals_to_handle": "SIGTERM,SIGHUP,SIGQUIT"}
    if "signals_to_handle" not in {f.name for f in dataclasses.fields(LaunchConfig)}:
        os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", signals.pop("signals_to_handle"))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, rdzv_backend="c10d",
                          rdzv_endpoint="127.0.0.1:0", run_id=f"descbal-{uuid.uuid4().hex[:12]}", max_restarts=0,
                          monitor_interval=0.2, start_method="spawn", **signals)
    env_before = os.environ.get("OMP_NUM_THREADS")
    if env_before is None:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the launcher logs a failed rank with a traceback of its own; the one line below says it
    quiet_loggers = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torchelastic-events-null",
                                                    "torch.multiprocessing")]
    levels = [lg.level for lg in quiet_loggers]
    for lg in quiet_loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        return elastic_launch(config, fn)(*args)
    except ChildFailedError as e:
        # a rank's own bad-input / missing-data error (it printed the reason) before the others' exits
        rank, failure = min(e.failures.items(), key=lambda rf: (rf[1].exitcode not in (2, 3), rf[0]))
        if failure.exitcode in (2, 3):
            err = DescbalError(f"rank {rank} of {nproc} stopped on the error above; the run did not continue")
            err.exit_code = failure.exitcode
            raise err from None
        how = (f"was killed by signal {failure.signal_name()}" if failure.exitcode < 0
               else f"exited with code {failure.exitcode}")
        raise DescbalError(f"rank {rank} of {nproc} {how}; the run stopped (continue from its last checkpoint "
                           "with --resume)") from None
    finally:
        for lg, level in zip(quiet_loggers, levels, strict=True):
            lg.setLevel(level)
        signal.signal(signal.SIGINT, previous)
        if env_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)


def _summary_of(results: dict[int, dict[str, Any]]) -> TrainSummary:
    """Rank 0's summary (KeyboardInterrupt when the ranks were interrupted)."""
    if any(d.get("interrupted") for d in results.values()):
        raise KeyboardInterrupt
    s = results[0]["summary"]
    val = s.get("validation")
    return TrainSummary(bool(s["stopped"]), int(s["steps"]), s.get("seconds"),
                        None if val is None else tuple(val), s.get("model"))


def rank_main(kwargs: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """One rank of :func:`train_processes`: ``open_run(**kwargs)`` and ``fit``, printing (on
    rank 0) what ``descbal train`` prints. Returns ``{"summary": ...}`` or ``{"interrupted":
    True}``. On an error it prints it (one line, naming the rank) and exits with its code, so
    the launcher stops the other ranks at once."""
    from descbal.console import progress_reporter, show, stderr
    from descbal.report import train_start_line
    from descbal.train import distributed
    from descbal.train.trainer import open_run

    signal.signal(signal.SIGINT, signal.default_int_handler)  # the launcher's children inherit SIG_IGN
    try:
        trainer = open_run(**kwargs)
        q = quiet or not trainer.is_main
        show([train_start_line(trainer.run_dir, trainer.device, trainer.global_step, trainer.total_steps)], q)
        with progress_reporter(q) as progress:
            summary = trainer.fit(progress=progress, log=None if q else stderr.print)
        return {"summary": summary.to_json()}
    except DescbalError as e:
        from rich.markup import escape

        rank = os.environ.get("RANK", "?")
        stderr.print(f"[red]error:[/red] rank {rank}: {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        return {"interrupted": True}
    finally:
        distributed.shutdown()
