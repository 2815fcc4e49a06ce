"""A rich progress bar for per-image work, with images/s (stderr; off when not a terminal)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def image_progress(label: str = "images", quiet: bool = False) -> Iterator[Any]:
    """Yield a ``progress(done, total, name)`` callback drawing one bar with the images/s rate."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from descbal.console import stderr

    if quiet or not stderr.is_terminal:
        yield lambda done, total, name: None
        return
    with Progress(
        TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:6.1f} {task.fields[unit]}/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[name]}", style="dim"), console=stderr,
    ) as prog:
        task = prog.add_task(label, total=None, rate=0.0, unit=label, name="")
        t0 = time.perf_counter()

        def update(done: int, total: int, name: str) -> None:
            dt = time.perf_counter() - t0
            prog.update(task, completed=done, total=total, rate=done / dt if dt > 0 else 0.0, name=name[-40:])

        yield update
