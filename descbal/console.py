"""Terminal output: logs, tables and progress on stderr; data on stdout.

Progress (see :mod:`descbal.progress`) is a rich bar per task when stderr is a terminal, a plain
log line every :data:`LOG_EVERY_S` seconds per task (and one when a task completes) when it is
not, and nothing with ``--quiet``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import Any, Literal

from rich.console import Console

from descbal.fileio import write_text_atomic
from descbal.progress import NO_PROGRESS, Progress

stderr = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)

#: Seconds between two plain progress lines of one task when stderr is not a terminal.
LOG_EVERY_S = 10.0

#: ``"items"``: counts (images, pairs, steps...); ``"bytes"``: sizes shown in MB.
Unit = Literal["items", "bytes"]


def format_number(value: float) -> str:
    """A progress number for people: integers as is, large values with thousands separators,
    others with 4 significant digits (``0.1234``, ``0.001``, ``1.5e-05``)."""
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    if v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (what rich's bars show)."""
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class _TaskState:
    start: float  # clock when this run of the task began
    start_done: int  # done at that moment (the rate counts from here)
    last_line: float  # clock of the last line written
    done: int = 0
    finished: bool = False
    info: dict[str, float] = field(default_factory=dict)  # latest value of every info key


class LogProgress:
    """The plain-text :class:`~descbal.progress.Progress` (stderr not a terminal).

    For each task, a line when at least ``every`` seconds have passed since its start or its
    last line, and one when it completes (``done >= total > 0``)::

        train: 120/1,000 (12 %)  loss 0.2131  lr 0.001  patches_per_s 5,120  10.0/s  ETA 0:01:28
        train: 1,000/1,000 (100 %)  loss 0.1020  lr 1e-05  patches_per_s 5,200  10.2/s  took 0:01:38

    The rate counts from the task's first call; ``info`` values are kept per key, so a number
    reported only now and then (``patches_per_s``) stays on later lines. With ``unit="bytes"``
    sizes and rates are in MB.

    Args:
        write: receives each line (without newline).
        every: seconds between lines of one task.
        unit: what ``done`` and ``total`` count.
        clock: seconds, monotonic.
    """

    def __init__(self, write: Callable[[str], None], every: float = LOG_EVERY_S, unit: Unit = "items",
                 clock: Callable[[], float] = monotonic) -> None:
        self.write = write
        self.every = every
        self.unit = unit
        self.clock = clock
        self.tasks: dict[str, _TaskState] = {}

    def __call__(self, task: str, done: int, total: int | None, info: Mapping[str, float] | None = None) -> None:
        now = self.clock()
        st = self.tasks.get(task)
        if st is None or done < st.done:  # a new task, or the same one started again
            st = self.tasks[task] = _TaskState(start=now, start_done=done, last_line=now)
        st.done = done
        if info:
            st.info.update(info)
        if total is not None and total > 0 and done >= total:
            if not st.finished:
                st.finished = True
                self.write(self.line(task, st, total, now))
        elif now - st.last_line >= self.every:
            st.last_line = now
            self.write(self.line(task, st, total, now))

    def _amount(self, n: float) -> str:
        return f"{n / 1e6:.1f}" if self.unit == "bytes" else f"{n:,.0f}"

    def line(self, task: str, st: _TaskState, total: int | None, now: float) -> str:
        """One progress line of ``task`` at clock ``now``."""
        head = f"{task}: {self._amount(st.done)}"
        if total is not None:
            head += f"/{self._amount(total)}"
        head += " MB" if self.unit == "bytes" else ""
        if total:
            head += f" ({100 * st.done / total:.0f} %)"
        parts = [head]
        parts += [f"{k} {format_number(v)}" for k, v in st.info.items()]
        elapsed = now - st.start
        rate = (st.done - st.start_done) / elapsed if elapsed > 0 else 0.0
        if elapsed > 0:
            parts.append(f"{rate / 1e6:.1f} MB/s" if self.unit == "bytes" else f"{rate:.1f}/s")
        if st.finished:
            parts.append(f"took {format_duration(elapsed)}")
        elif total is not None and rate > 0:
            parts.append(f"ETA {format_duration((total - st.done) / rate)}")
        return "  ".join(parts)


@contextlib.contextmanager
def _rich_bars(unit: Unit) -> Iterator[Progress]:
    """One rich bar per task on stderr (a terminal)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as RichProgress

    if unit == "bytes":
        columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                              TimeRemainingColumn()]
    else:
        columns = [TextColumn("{task.description:<13}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]:7.1f}/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[info]}")]
    bars: dict[str, Any] = {}
    starts: dict[str, tuple[float, int]] = {}
    info_by_task: dict[str, dict[str, float]] = {}
    with RichProgress(*columns, console=stderr) as prog:

        def update(task: str, done: int, total: int | None, info: Mapping[str, float] | None = None) -> None:
            now = monotonic()
            if task not in bars:
                bars[task] = prog.add_task(task, total=total, rate=0.0, info="")
                starts[task] = (now, done)
                info_by_task[task] = {}
            t0, d0 = starts[task]
            if info:
                info_by_task[task].update(info)
            rate = (done - d0) / (now - t0) if now > t0 else 0.0
            text = "  ".join(f"{k} {format_number(v)}" for k, v in info_by_task[task].items())
            prog.update(bars[task], completed=done, total=total, rate=rate, info=text)

        yield update


@contextlib.contextmanager
def progress_reporter(quiet: bool = False, unit: Unit = "items", every: float = LOG_EVERY_S) -> Iterator[Progress]:
    """The console's :class:`~descbal.progress.Progress`: nothing with ``quiet``; rich bars when
    stderr is a terminal; otherwise :class:`LogProgress` lines every ``every`` seconds."""
    if quiet:
        yield NO_PROGRESS
    elif stderr.is_terminal:
        with _rich_bars(unit) as bars:
            yield bars
    else:
        yield LogProgress(lambda line: stderr.print(line, markup=False, highlight=False, soft_wrap=True), every, unit,
                          monotonic)


def emit_json(doc: Any, target: str | None) -> None:
    """Write ``doc`` (a JSON document, e.g. a result's ``to_json()``) to stdout (``-``) or
    atomically to a file; nothing when None."""
    if target is None:
        return
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text_atomic(Path(target), text)


def show(renderables: list[Any], quiet: bool = False) -> None:
    """Print report tables and lines (see :mod:`descbal.report`) on stderr unless ``quiet``."""
    if quiet:
        return
    for r in renderables:
        stderr.print(r, soft_wrap=isinstance(r, str))
