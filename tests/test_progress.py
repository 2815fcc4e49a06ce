"""The one progress protocol and the console's reporters: exact plain log lines (fake clock, a
non-terminal stream), nothing with --quiet, the trainer's adapter."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import descbal.console
from descbal.console import LogProgress, format_duration, format_number, progress_reporter
from descbal.progress import NO_PROGRESS, or_no_progress


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_numbers_and_durations() -> None:
    assert [format_number(v) for v in (96.0, 2, 0.21314, 1e-3, 1.5e-5, 5123.4, 12_345_678.0, float("nan"))] == [
        "96", "2", "0.2131", "0.001", "1.5e-05", "5,123", "12,345,678", "nan"]
    assert [format_duration(s) for s in (0, 59.6, 88, 3600 + 61)] == ["0:00:00", "0:01:00", "0:01:28", "1:01:01"]


def test_plain_lines_every_n_seconds_and_at_the_end() -> None:
    lines: list[str] = []
    clock = Clock()
    log = LogProgress(lines.append, every=10.0, clock=clock)
    log("train", 0, 1000, {"loss": 0.5, "lr": 1e-3})
    clock.t += 9.9
    log("train", 99, 1000, {"loss": 0.3})
    assert lines == []  # under 10 s since the task started
    clock.t += 0.1  # 10 s, 100 steps: 10 steps/s, 900 left
    log("train", 100, 1000, {"loss": 0.2131, "patches_per_s": 5120.4})
    clock.t += 5.0
    log("train", 150, 1000, {"loss": 0.2})  # 5 s after the last line: silent
    clock.t += 5.0
    log("train", 200, 1000, {"loss": 0.19})  # patches/s kept from the earlier call
    clock.t += 80.0
    log("train", 1000, 1000, {"loss": 0.102, "lr": 1e-5})
    log("train", 1000, 1000)  # a repeated end: no second line
    assert lines == [
        "train: 100/1,000 (10 %)  loss 0.2131  lr 0.001  patches_per_s 5,120  10.0/s  ETA 0:01:30",
        "train: 200/1,000 (20 %)  loss 0.19  lr 0.001  patches_per_s 5,120  10.0/s  ETA 0:01:20",
        "train: 1,000/1,000 (100 %)  loss 0.102  lr 1e-05  patches_per_s 5,120  10.0/s  took 0:01:40",
    ]


def test_tasks_are_separate_and_restart() -> None:
    lines: list[str] = []
    clock = Clock()
    log = LogProgress(lines.append, every=10.0, clock=clock)
    log("read tiles", 0, 4)
    clock.t += 2.0
    log("read tiles", 4, 4)  # done in 2 s: one line, though under 10 s
    log("write", 0, 1000)
    clock.t += 1.0
    log("write", 1000, 1000)
    log("write", 0, 500)  # the same task again (the next Brown set): a new run
    clock.t += 4.0
    log("write", 500, 500)
    log("images", 0, 0)  # nothing to do: no line
    log("images", 0, 0)
    assert lines == ["read tiles: 4/4 (100 %)  2.0/s  took 0:00:02",
                     "write: 1,000/1,000 (100 %)  1000.0/s  took 0:00:01",
                     "write: 500/500 (100 %)  125.0/s  took 0:00:04"]


def test_bytes_and_unknown_totals() -> None:
    lines: list[str] = []
    clock = Clock()
    log = LogProgress(lines.append, every=10.0, unit="bytes", clock=clock)
    log("liberty.zip", 0, 200_000_000)
    clock.t += 10.0
    log("liberty.zip", 50_000_000, 200_000_000)
    log("tasks.csv", 0, None)
    clock.t += 10.0
    log("tasks.csv", 3_000_000, None)
    assert lines == ["liberty.zip: 50.0/200.0 MB (25 %)  5.0 MB/s  ETA 0:00:30",
                     "tasks.csv: 3.0 MB  0.3 MB/s"]


@pytest.fixture
def plain_stderr(monkeypatch: pytest.MonkeyPatch) -> tuple[io.StringIO, Clock]:
    """The console's stderr replaced by a non-terminal stream, and its clock by a fake."""
    stream = io.StringIO()
    monkeypatch.setattr(descbal.console, "stderr", Console(file=stream, force_terminal=False, width=80))
    clock = Clock()
    monkeypatch.setattr(descbal.console, "monotonic", clock)
    return stream, clock


def test_reporter_logs_plain_lines_when_not_a_terminal(plain_stderr: tuple[io.StringIO, Clock]) -> None:
    stream, clock = plain_stderr
    with progress_reporter(every=10.0) as progress:
        progress("pairs", 0, 30)
        clock.t += 12.0
        progress("pairs", 6, 30)
        clock.t += 3.0
        progress("pairs", 30, 30)
    # long lines are not wrapped at the console width
    with progress_reporter() as train:
        train("train", 0, 4, {"loss": 1.0})
        clock.t += 2.0
        train("train", 4, 4, {"loss": 0.12345678, "lr": 3.3e-3, "patches_per_s": 1234.5, "patches": 96.0})
    assert stream.getvalue().splitlines() == [
        "pairs: 6/30 (20 %)  0.5/s  ETA 0:00:48",
        "pairs: 30/30 (100 %)  2.0/s  took 0:00:15",
        "train: 4/4 (100 %)  loss 0.1235  lr 0.0033  patches_per_s 1,234  patches 96  2.0/s  took 0:00:02",
    ]


def test_quiet_reports_nothing(plain_stderr: tuple[io.StringIO, Clock]) -> None:
    stream, clock = plain_stderr
    with progress_reporter(quiet=True) as progress:
        assert progress is NO_PROGRESS
        progress("pairs", 3, 3)
    with progress_reporter(quiet=True) as train:
        train("train", 2, 2, {"loss": 1.0})
    assert stream.getvalue() == ""
    assert or_no_progress(None) is NO_PROGRESS and NO_PROGRESS("x", 1, None, {"a": 1.0}) is None
