"""The registry of losses: ``@register_loss("name")`` on a class, ``build_loss(name, **params)``."""

from __future__ import annotations

from descbal.registry import Registry

LOSSES = Registry("loss", "name")
register_loss = LOSSES.register
build_loss = LOSSES.build
