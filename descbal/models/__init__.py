"""Descriptor networks (HyNet, HardNet, SOSNet, TFeat), their registry and checkpoints."""

from descbal.models.checkpoint import load, save_checkpoint
from descbal.models.registry import MODELS, build_model, register_model, unwrap_model

__all__ = ["MODELS", "build_model", "load", "register_model", "save_checkpoint", "unwrap_model"]
