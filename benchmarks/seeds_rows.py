"""Ablation rows for the three seed losses (DDTAS, memory contrastive, OSM + CAA).

``seed_method_overrides()`` gives, per method, the ``--set`` overrides that replace the
self-tnet-small recipe's loss; ``benchmarks/ablation.py`` puts its ``common`` overrides (batch
shape, device, ``loop.epochs=4``, ``loop.iters_per_epoch``, ``phases.anneal.enabled=false``) in front,
so every row trains the same HyNet for the same number of steps. Every loss is registered by
``import descbal.losses``.

Equal budget means equal steps, not equal time: the DDTAS meta step costs about three plain
steps; the memory row adds one (B x M) similarity matrix per step.
"""

from __future__ import annotations


def seed_method_overrides(steps: int = 300, memory_batches: int = 8) -> dict[str, list[str]]:
    """``--set`` overrides per method (row name -> list of ``section.key=value`` strings).

    Args:
        steps: the row's training steps (ablation.py's ``--steps``); the memory's warm-up is the
            first quarter of them (the one-cycle schedule's warm-up, ``pct_start = 0.25``).
        memory_batches: memory size in batches (the spec suggests 8-16).

    Each list sets ``loss.name`` and replaces ``loss.params`` as a whole (the recipe's balance-loss
    parameters would otherwise be merged in).
    """
    warmup = max(1, steps // 4)
    return {
        "DDTAS (AT-ASMS + meta thresholds)": [
            'loss.name="ddtas"',
            'loss.params={alpha = 40.0, beta = 2.0, base = 0.7, pos_tol = 0.1, neg_tol = 0.01, adaptive = true, '
            'ratio = "code", meta = "pair_weight", weight_norm = "separate", meta_val_fraction = 0.25}',
        ],
        "memory contrastive (XBM)": [
            'loss.name="memory_contrastive"',
            f'loss.params={{neg_threshold = 0.5, memory_batches = {memory_batches}, start_iter = {warmup}, '
            'memory_weight = 1.0, update = "fifo"}',
        ],
        "OSM + CAA (batch centroid)": [
            'loss.name="osm_caa"',
            'loss.params={margin = 1.2, sigma_osm = 0.8, sigma_caa = 0.68, attention = "batch_centroid"}',
        ],
    }
