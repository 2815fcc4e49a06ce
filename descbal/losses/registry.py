"""The registries of the loss pipeline: losses, miners and reducers (one decorator line each).

``import descbal.losses`` imports every module that registers one, so all are known after it.
"""

from __future__ import annotations

from descbal.registry import Registry

LOSSES = Registry("loss", "name")
MINERS = Registry("miner", "name")
REDUCERS = Registry("reducer", "name")
register_loss = LOSSES.register
register_miner = MINERS.register
register_reducer = REDUCERS.register
