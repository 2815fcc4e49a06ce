"""A small named registry: a new component is one class plus one decorator line.

Used for models (``descbal.models.MODELS``) and losses (``descbal.losses.registry.LOSSES``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


class Registry(dict[str, type]):
    """``name -> class`` with a registering decorator and a builder with a clear error.

    Args:
        kind: what is registered ("model", "loss"), for messages.
        name_attr: class attribute set to the registered name (e.g. ``arch``).
    """

    def __init__(self, kind: str, name_attr: str) -> None:
        super().__init__()
        self.kind = kind
        self.name_attr = name_attr

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register ``cls`` under ``name`` and set ``cls.<name_attr> = name``."""

        def deco(cls: T) -> T:
            setattr(cls, self.name_attr, name)
            self[name] = cls
            return cls

        return deco

    def parameters(self, name: str) -> list[str] | None:
        """The keyword parameters of the constructor registered as ``name``, in order; None when
        it also takes ``**kwargs`` (any name may be right). KeyError for an unknown name."""
        sig = inspect.signature(self[name])
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return None
        return [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def build(self, name: str, **params: Any) -> Any:
        """Instantiate a registered class; ValueError listing the known names otherwise."""
        try:
            cls = self[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(sorted(self))}") from None
        return cls(**params)
