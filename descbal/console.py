"""Terminal output: logs, tables and progress on stderr; data on stdout.

Progress bars are shown only when stderr is a terminal and ``--quiet`` is not given.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from descbal.fileio import write_text_atomic

stderr = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


@contextlib.contextmanager
def task_progress(quiet: bool = False) -> Iterator[Any]:
    """Yield a ``progress(task, done, total)`` callback driving one rich bar per task name."""
    if quiet or not stderr.is_terminal:
        yield lambda task, done, total: None
        return
    bars: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description:<13}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=stderr, transient=False,
    ) as prog:

        def update(task: str, done: int, total: int) -> None:
            if task not in bars:
                bars[task] = prog.add_task(task, total=total)
            prog.update(bars[task], completed=done, total=total)

        yield update


def emit_json(doc: Any, target: str | None) -> None:
    """Write ``doc`` as JSON to stdout (``-``) or atomically to a file; nothing when None."""
    if target is None:
        return
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text_atomic(Path(target), text)


@contextlib.contextmanager
def byte_progress(quiet: bool = False) -> Iterator[Any]:
    """Yield a ``progress(name, done_bytes, total_bytes_or_None)`` callback with rich download
    bars (bytes, speed, ETA), one per file name."""
    if quiet or not stderr.is_terminal:
        yield lambda name, done, total: None
        return
    from rich.progress import DownloadColumn, TransferSpeedColumn

    bars: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=stderr,
    ) as prog:

        def update(name: str, done: int, total: int | None) -> None:
            if name not in bars:
                bars[name] = prog.add_task(name, total=total)
            prog.update(bars[name], completed=done, total=total)

        yield update


@contextlib.contextmanager
def train_progress(quiet: bool = False) -> Iterator[Any]:
    """Yield a ``progress(step, total, stats)`` callback showing loss, lr, patches/s and ETA."""
    if quiet or not stderr.is_terminal:
        yield lambda step, total, stats: None
        return
    with Progress(
        TextColumn("train"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[speed]:,.0f} patches/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=stderr,
    ) as prog:
        task = prog.add_task("train", total=None, loss=float("nan"), lr=0.0, speed=0.0)

        def update(step: int, total: int, stats: dict) -> None:
            fields = {"loss": stats.get("loss", float("nan")), "lr": stats.get("lr", 0.0)}
            if "patches_per_s" in stats:
                fields["speed"] = stats["patches_per_s"]
            prog.update(task, completed=step, total=total, **fields)

        yield update
