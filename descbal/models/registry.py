"""Model registry: a new architecture is one class plus one ``@register_model`` line.

Every registered model maps a batch of grey patches (B, 1, 32, 32) float32 to descriptors
(B, D). The class attribute ``input_scale`` says what the model expects from uint8 intensities:
the input is ``uint8_patch * input_scale`` (e.g. 1/255 for networks trained on [0, 1] inputs).
"""

from __future__ import annotations

from torch import nn

from descbal.registry import Registry

MODELS = Registry("model", "arch")
register_model = MODELS.register
build_model = MODELS.build


def unwrap_model(model: nn.Module) -> nn.Module:
    """The eager module behind a ``torch.compile`` wrapper (functional calls need its names)."""
    return getattr(model, "_orig_mod", model)
