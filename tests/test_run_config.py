"""Config precedence of a training run (defaults < recipe < --config < --set < --data/--val)
and Brown set names, as library functions (what ``descbal train`` and ``cache brown`` call)."""

from __future__ import annotations

from pathlib import Path

import pytest

from descbal.data.brown import resolve_brown_names
from descbal.errors import BadInputError, DataMissingError
from descbal.run_config import resolve_run_config
from descbal.train.config import RunConfig


def test_each_level_overrides_the_previous(tmp_path: Path) -> None:
    defaults = RunConfig()
    assert (defaults.loop.seed, defaults.loop.epochs, defaults.loop.npos) == (0, 25, 3)
    # the triplet recipe sets loop.seed = 211 and keeps epochs 25, npos 3
    recipe = resolve_run_config(recipe="triplet")
    assert (recipe.loop.seed, recipe.loop.epochs, recipe.loop.npos) == (211, 25, 3)
    assert recipe.loss.name == "triplet" and recipe.schedule.lr_max == 3.3e-3
    toml = tmp_path / "run.toml"
    toml.write_text('[loop]\nseed = 5\nepochs = 3\n\n[data]\ntrain = "from-config.h5"\nval = "val-config.h5"\n')
    config = resolve_run_config(recipe="triplet", config=toml)
    assert (config.loop.seed, config.loop.epochs, config.loop.npos) == (5, 3, 3)
    assert config.loss.name == "triplet"  # what the file does not set stays the recipe's
    sets = resolve_run_config(recipe="triplet", config=toml, overrides=["loop.epochs=2", "loop.npos=2", "loop.npos=4",
                                                                       'data.train="from-set.h5"'])
    assert (sets.loop.seed, sets.loop.epochs, sets.loop.npos) == (5, 2, 4)  # a later --set wins
    assert sets.data.train == "from-set.h5" and sets.data.val == "val-config.h5"
    data = resolve_run_config(recipe="triplet", config=toml, overrides=['data.train="from-set.h5"'],
                              data=tmp_path / "train.h5", val=Path("rel") / "val.h5")
    assert data.data.train == str(tmp_path / "train.h5")
    assert data.data.val == str(Path.cwd() / "rel" / "val.h5")  # made absolute
    assert resolve_run_config() == defaults


def test_run_config_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="unknown recipe 'nope'"):
        resolve_run_config(recipe="nope")
    with pytest.raises(DataMissingError, match="missing.toml: config file not found"):
        resolve_run_config(config=tmp_path / "missing.toml")
    with pytest.raises(BadInputError, match="loop.epoch"):
        resolve_run_config(overrides=["loop.epoch=3"])


def test_data_paths_with_quotes_survive(tmp_path: Path) -> None:
    odd = tmp_path / 'a "quoted" \\ name.h5'
    assert resolve_run_config(data=odd).data.train == str(odd)


def test_brown_names(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match="no downloaded Brown set"):
        resolve_brown_names(["all"], tmp_path)
    for name in ("yosemite", "liberty"):
        (tmp_path / "brown" / name).mkdir(parents=True)
    (tmp_path / "brown" / "notredame.zip").touch()  # a file, not a downloaded set
    assert resolve_brown_names(["all"], tmp_path) == ["liberty", "yosemite"]  # BROWN_NAMES order
    assert resolve_brown_names(["yosemite", "liberty", "yosemite"], tmp_path) == ["yosemite", "liberty"]
    # 'all' among other names: every set (the download list), whether downloaded or not
    assert resolve_brown_names(["notredame", "all"], tmp_path) == [
        "notredame", "liberty", "yosemite", "liberty_harris", "notredame_harris", "yosemite_harris"]
    with pytest.raises(BadInputError, match="unknown Brown set 'atlantis'"):
        resolve_brown_names(["atlantis"], tmp_path)
    with pytest.raises(BadInputError, match="no Brown set given"):
        resolve_brown_names([], tmp_path)


def test_seed_and_device_come_after_set() -> None:
    """Issue 21: ``train`` had no --seed or --device; they override --set like --data does."""
    cfg = resolve_run_config("triplet", overrides=["loop.seed=3", "loop.device=cuda"], seed=5, device="cpu")
    assert (cfg.loop.seed, cfg.loop.device) == (5, "cpu")
    cfg = resolve_run_config("triplet", overrides=["loop.seed=3", "loop.device=cuda"])
    assert (cfg.loop.seed, cfg.loop.device) == (3, "cuda")
