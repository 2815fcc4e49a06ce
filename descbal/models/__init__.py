"""Descriptor networks (HyNet, HardNet, HardNet8, SOSNet, TFeat), their registry, checkpoints and
the one model resolver (:func:`resolve_model`: paths, published weights, architectures, classical
names)."""

from descbal.models.checkpoint import load, save_checkpoint
from descbal.models.registry import MODELS, build_model, register_model, unwrap_model
from descbal.models.resolve import ModelSpec, ResolvedModel, resolve_model

__all__ = ["MODELS", "ModelSpec", "ResolvedModel", "build_model", "load", "register_model", "resolve_model",
           "save_checkpoint", "unwrap_model"]
