"""Self-TNet's annealing training strategy (stage 2, self-tnet.md §4.1).

K = floor((start_batch - min_batch) / step) cycles; cycle k uses batch ``start_batch - step (k +
1)`` classes, margin threshold ``threshold + threshold_step k``, learning rate ``lr
lr_factor^k`` and ``iters`` iterations, with a fresh optimiser and a flat-then-cosine schedule
(flat for 60 %). Smaller batches give easier in-batch hardest negatives and the rising threshold
drops the hardest tuples: training ends on progressively easier examples.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AnnealCycle:
    """One annealing cycle."""

    index: int
    batch_size: int  # classes per batch
    threshold: float  # tuples with margin b - a <= threshold get weight 0
    lr: float
    iters: int


def annealing_schedule(start_batch: int = 2944, min_batch: int = 1024, step: int = 128, threshold: float = -0.10,
                       threshold_step: float = 0.05, lr: float = 1.5e-6, lr_factor: float = 0.75,
                       iters: int = 1400) -> list[AnnealCycle]:
    """The cycles of the annealing stage (15 with the defaults, batch 2816 down to 1024)."""
    if step <= 0 or start_batch <= min_batch:
        raise ValueError("annealing needs step > 0 and start_batch > min_batch")
    k_max = (start_batch - min_batch) // step
    return [AnnealCycle(k, start_batch - step * (k + 1), threshold + threshold_step * k, lr * lr_factor**k, iters)
            for k in range(k_max)]
