"""The one progress protocol of every long loop in descbal.

A loop reports ``progress(task, done, total, info)`` as it advances: ``task`` names the loop
(``"images"``, ``"write"``, ``"train"``, a file name for downloads...), ``done`` and ``total`` count
its units (items, steps or bytes; ``total`` None when unknown) and ``info`` carries optional numbers
to show (training: ``loss``, ``lr``, ``patches_per_s``). A task that starts again from a smaller
``done`` is a new run of that task. Library functions take ``progress: Progress | None`` and call
:data:`NO_PROGRESS` when given None; :func:`descbal.console.progress_reporter` is the console's
implementation (a rich bar on a terminal, plain log lines elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Progress(Protocol):
    """``progress(task, done, total, info=None)``, called as work advances."""

    def __call__(self, task: str, done: int, total: int | None, info: Mapping[str, float] | None = None) -> None: ...


def _no_progress(task: str, done: int, total: int | None, info: Mapping[str, float] | None = None) -> None:
    return None


#: A :class:`Progress` that does nothing (what ``progress=None`` means).
NO_PROGRESS: Progress = _no_progress


def or_no_progress(progress: Progress | None) -> Progress:
    """``progress``, or :data:`NO_PROGRESS` when None."""
    return NO_PROGRESS if progress is None else progress
