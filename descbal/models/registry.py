"""Model registry: a new architecture is one class plus one ``@register_model`` line.

Every registered model maps a batch of grey patches (B, 1, 32, 32) float32 to descriptors
(B, D). The class attribute ``input_scale`` says what the model expects from uint8 intensities:
the input is ``uint8_patch * input_scale`` (e.g. 1/255 for networks trained on [0, 1] inputs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

M = TypeVar("M", bound=type[nn.Module])

MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator adding a model to :data:`MODELS` under ``name``."""

    def deco(cls: M) -> M:
        cls.arch = name  # type: ignore[attr-defined]
        MODELS[name] = cls
        return cls

    return deco


def build_model(name: str, **config: Any) -> nn.Module:
    """Instantiate a registered model; ValueError listing the known names otherwise."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}") from None
    return cls(**config)
