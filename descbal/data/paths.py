"""Where descbal keeps downloaded data and caches."""

from __future__ import annotations

import os
from pathlib import Path


def default_root() -> Path:
    """``$DESCBAL_HOME`` if set, else ``~/.cache/descbal``."""
    env = os.environ.get("DESCBAL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "descbal"
