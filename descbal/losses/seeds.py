"""Registers the three "seed" deep-metric-learning losses (dml-seeds.md) by importing them.

``import descbal.losses.seeds`` makes ``ddtas``, ``memory_contrastive`` and ``osm_caa`` known to
:func:`descbal.losses.registry.build_loss` (and so to ``descbal train --set loss.name=...``).
"""

from __future__ import annotations

from descbal.losses.ddtas import (
    AsymmetricPairMiner,
    DDTASLoss,
    SoftContrastiveLoss,
    meta_pair_weights,
    meta_threshold_step,
    multi_similarity_loss,
)
from descbal.losses.memory import HardNegativePairMiner, MemoryContrastiveLoss, contrastive_pair_loss
from descbal.losses.osm import OSMCAALoss, OSMSoftMiner, SoftPairs, batch_centroid_attention, osm_pair_loss
from descbal.losses.pairs import PairTuples

__all__ = [
    "AsymmetricPairMiner", "DDTASLoss", "HardNegativePairMiner", "MemoryContrastiveLoss", "OSMCAALoss", "OSMSoftMiner",
    "PairTuples", "SoftContrastiveLoss", "SoftPairs", "batch_centroid_attention", "contrastive_pair_loss",
    "meta_pair_weights", "meta_threshold_step", "multi_similarity_loss", "osm_pair_loss",
]

#: Registered names of the seed losses.
SEED_LOSSES = ("ddtas", "memory_contrastive", "osm_caa")
