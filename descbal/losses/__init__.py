"""Losses and miners, separated as in pytorch-metric-learning.

A **miner** (``descbal.losses.mining``) turns a batch of descriptors and labels into index
tuples under ``no_grad``; a **loss** turns the distances at those tuples into per-element
losses; a **reducer** makes the scalar. Losses and miners are registered by name
(``descbal.losses.registry``) so a new one is one class plus one line.
"""
