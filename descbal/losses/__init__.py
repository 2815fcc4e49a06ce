"""Losses, miners and reducers, separated as in pytorch-metric-learning.

The trainer embeds the batch and hands the embeddings to a :class:`LossPipeline`: a **miner**
turns embeddings and labels into index tuples under ``no_grad`` (``descbal.losses.tuples``); a
**loss** turns the distances at those tuples into per-element values and weights; a
**reducer** makes the scalar (``descbal.losses.reducers``). Distances live in
``descbal.losses.distances`` (one unit-distance formula, float32 under autocast).

Every loss, miner and reducer is registered by name and known after ``import descbal.losses``:
a new one is one class plus one decorator line (``@register_loss``, ``@register_miner``,
``@register_reducer``), and config names it (``loss.name``, ``loss.miner``, ``loss.reducer``).
"""

from descbal.losses import balance, ddtas, memory, miners, osm, reducers, triplet  # noqa: F401  (registration)
from descbal.losses.pipeline import Embedded, Loss, LossPipeline, StepOutput, build_pipeline
from descbal.losses.registry import LOSSES, MINERS, REDUCERS, register_loss, register_miner, register_reducer
from descbal.losses.tuples import ClassTuples, PairTuples, Reference

__all__ = [
    "LOSSES", "MINERS", "REDUCERS", "ClassTuples", "Embedded", "Loss", "LossPipeline", "PairTuples", "Reference",
    "StepOutput", "build_pipeline", "register_loss", "register_miner", "register_reducer",
]
