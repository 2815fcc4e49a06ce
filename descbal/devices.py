"""Which torch device a ``--device`` value names (shared by training, extraction, matching and
evaluation)."""

from __future__ import annotations

import torch

from descbal.errors import BadInputError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; a torch.device is returned as it is.

    Raises:
        BadInputError: an unknown or unsupported device, or CUDA requested without CUDA.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise BadInputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise BadInputError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"device {name!r} requested but CUDA is not available")
    return dev
