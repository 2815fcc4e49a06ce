"""Shipped recipes resolve, and the GPU photo recipe is exactly the measured configuration."""

from __future__ import annotations

from dataclasses import replace

import pytest

from descbal.config import load_config
from descbal.recipes import recipe_names, recipe_text
from descbal.train.config import RunConfig
from descbal.train.trainer import build_phases


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_resolves_and_builds(name: str) -> None:
    cfg = load_config(RunConfig, [recipe_text(name)])
    assert build_phases(cfg)


def test_photo_recipe_is_the_benchmarked_schedule() -> None:
    """``self-tnet-photos`` = what ``benchmarks/selfsup.py --steps 3000 --classes 512`` trained
    (self-tnet-small stretched, annealing off); only the logging interval differs."""
    photos = load_config(RunConfig, [recipe_text("self-tnet-photos")])
    bench = load_config(RunConfig, [recipe_text("self-tnet-small")],
                        ["loop.epochs=4", "loop.iters_per_epoch=750", "loop.classes_per_batch=512",
                         "phases.anneal.enabled=false"])
    assert replace(photos.loop, log_every=bench.loop.log_every) == bench.loop
    assert (photos.model, photos.optim, photos.schedule, photos.augment) == (bench.model, bench.optim, bench.schedule,
                                                                           bench.augment)
    assert "anneal" not in photos.phases and bench.phases["anneal"].enabled is False
    (phase,) = build_phases(photos)
    assert phase.steps == 3000 and phase.classes_per_batch == 512
