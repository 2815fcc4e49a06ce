"""Registries of losses (per-class loss functions over mined tuples)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)

LOSSES: dict[str, type] = {}


def register_loss(name: str) -> Callable[[T], T]:
    """Class decorator adding a loss to :data:`LOSSES`."""

    def deco(cls: T) -> T:
        cls.name = name  # type: ignore[attr-defined]
        LOSSES[name] = cls
        return cls

    return deco


def build_loss(name: str, **params: Any) -> Any:
    """Instantiate a registered loss; ValueError listing the known names otherwise."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(sorted(LOSSES))}") from None
    return cls(**params)
