"""Error types that the CLI turns into one-line messages and exit codes.

Exit codes follow the project convention: 0 ok, 1 runtime failure, 2 bad usage or bad input,
3 data missing or checksum mismatch, 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path


class DescbalError(Exception):
    """Base class for errors that are reported to the user without a traceback."""

    exit_code: int = 1

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class BadInputError(DescbalError):
    """The user gave a file or option that cannot be used (exit code 2)."""

    exit_code = 2


class DataMissingError(DescbalError):
    """Required data is absent or fails its checksum (exit code 3)."""

    exit_code = 3


def list_names(names: list[str], limit: int = 50) -> str:
    """Names for an error message, one per indented line, at most ``limit`` then a count of the
    rest: ``"\\n  a.jpg\\n  b.jpg\\n  ... and 3 more"``."""
    shown = "".join(f"\n  {n}" for n in names[:limit])
    return shown + (f"\n  ... and {len(names) - limit} more" if len(names) > limit else "")
