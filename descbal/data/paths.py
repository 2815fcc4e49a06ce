"""Where descbal keeps downloaded data and caches, and where scikit-image's shipped data lie."""

from __future__ import annotations

import os
from pathlib import Path

from descbal.errors import DataMissingError


def default_root() -> Path:
    """``$DESCBAL_HOME`` if set, else ``~/.cache/descbal``."""
    env = os.environ.get("DESCBAL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "descbal"


def skimage_data_dir() -> Path:
    """The ``data`` folder inside the installed scikit-image package (photos and the Middlebury
    Motorcycle stereo pair; no network)."""
    try:
        import skimage
    except ImportError:
        raise DataMissingError("scikit-image is not installed (pip install scikit-image)") from None
    return Path(skimage.__file__).parent / "data"
