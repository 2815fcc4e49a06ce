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


@pytest.mark.parametrize(("override", "message"), [
    ("loss.params.tacher=none",
     "config: loss.params.tacher: loss 'balance' has no parameter 'tacher' (its parameters: lo, hi, A, R, teacher, "
     "boundary)"),
    ("loss.miner_params.margin=1", "config: loss.miner_params.margin: miner 'hardest' has no parameter 'margin' "
                                   "(its parameters: near_duplicate)"),
    ("loss.reducer_params.over=all", "config: loss.reducer_params need loss.reducer (the loss's own reducer is built "
                                     "from loss.params)"),
    ("model.params.widht=2", "config: model.params.widht: model 'hynet' has no parameter 'widht' (its parameters: dim, "
                             "dropout, init_gain, init_bias)"),
    ("loss.name=balanse", "config: loss.name: unknown loss 'balanse'; choose from anneal, balance, ddtas, "
                          "memory_contrastive, osm_caa, triplet"),
])
def test_unknown_parameters_name_the_key_and_list_the_known_ones(override: str, message: str) -> None:
    """Issue 21: ``--set loss.params.tacher=none`` gave Python's ``__init__()`` message, no key."""
    with pytest.raises(BadInputError) as e:
        resolve_run_config("self-tnet-small", overrides=[override])
    assert str(e.value) == message


def test_parameters_of_a_phase_loss_and_a_named_reducer() -> None:
    with pytest.raises(BadInputError) as e:
        resolve_run_config("self-tnet-small", overrides=["loss.reducer=anchor", "loss.reducer_params.pair_men=1"])
    assert str(e.value) == ("config: loss.reducer_params.pair_men: reducer 'anchor' has no parameter 'pair_men' "
                            "(its parameters: pair_mean, require_both, over)")
    with pytest.raises(BadInputError, match=r"^config: phases.main.loss.params.x: loss 'triplet' has no parameter 'x' "
                                            r"\(its parameters: margin\)$"):
        resolve_run_config("self-tnet-small", overrides=["phases.main.loss.name=triplet", "phases.main.loss.params.x=1"])
    ok = resolve_run_config("self-tnet-small", overrides=["loss.reducer=anchor", "loss.reducer_params.over=positives"])
    assert ok.loss.reducer_params == {"over": "positives"}


@pytest.mark.parametrize(("override", "message"), [
    ("loop.epochs=-1", "config: loop.epochs must be >= 0, got -1"),
    ("loop.iters_per_epoch=0", "config: loop.iters_per_epoch must be >= 1, got 0"),
    ("loop.classes_per_batch=1", "config: loop.classes_per_batch must be >= 2, got 1"),
    ("loop.npos=1", "config: loop.npos must be >= 2, got 1"),
    ("loop.log_every=0", "config: loop.log_every must be >= 1, got 0"),
    ("loop.seed=-3", "config: loop.seed must be >= 0, got -3"),
    ("schedule.lr_max=0", "config: schedule.lr_max must be > 0, got 0.0"),
    ("phases.main.npos=1", "config: phases.main.npos must be >= 2, got 1"),
    ("phases.main.schedule.lr_max=-1e-3", "config: phases.main.schedule.lr_max must be > 0, got -0.001"),
    ("data.val_pairs=-1", "config: data.val_pairs must be >= 0, got -1"),
])
def test_out_of_range_values_name_the_key(override: str, message: str) -> None:
    """Issue 21: ``--set loop.epochs=-1`` was accepted silently (it skipped stage 1)."""
    with pytest.raises(BadInputError) as e:
        resolve_run_config("self-tnet-small", overrides=[override])
    assert str(e.value) == message
