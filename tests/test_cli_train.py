"""CLI tests for ``descbal train`` and ``descbal eval brown|hpatches --model``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import make_hpatches_release, one_torch_thread, write_sets, write_split  # noqa: F401
from typer.testing import CliRunner

from descbal.cli import app
from descbal.data.hpatches_data import cache_hpatches
from descbal.data.patchset import load_patchset
from descbal.eval.model_eval import evaluate_brown_model
from descbal.models import load

runner = CliRunner()
# the recipe's device is "auto": pin the CPU so that numbers compare exactly on any machine
SMALL = ["--set", "loop.epochs=1", "--set", "loop.iters_per_epoch=2", "--set", "loop.classes_per_batch=8",
         "--set", "loop.device=cpu"]
SEQS = {"i_alpha": 6, "v_beta": 5, "v_gamma": 7}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res, code: int, *needles: str) -> None:
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_sets(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished 2-step run of the triplet recipe, and its JSON summary."""
    out = tmp_path_factory.mktemp("runs") / "run"
    res = run("train", "--recipe", "triplet", "--data", sets[0], "--val", sets[1], *SMALL, "--out", out, "--json", "-")
    assert res.exit_code == 0, (res.output, res.exception)
    return out, json.loads(res.stdout)


@pytest.fixture(scope="module")
def hpatches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HPatches cache (3 sequences) with tasks/ (split a) beside it."""
    root = tmp_path_factory.mktemp("hp")
    make_hpatches_release(root / "release", SEQS, seed=3)
    write_split(root / "tasks-src", "a", list(SEQS))
    summary = cache_hpatches(root, release=root / "release", tasks=root / "tasks-src", out=root / "cache" / "hp.h5")
    assert summary.num_sequences == 3
    return root / "cache" / "hp.h5"


# ---------------------------------------------------------------------------- train


def test_list_recipes() -> None:
    res = run("train", "--list-recipes")
    assert res.exit_code == 0
    assert "triplet" in res.stdout.split()


def test_train_prints_the_summary(trained: tuple[Path, dict], sets: tuple[Path, Path]) -> None:
    out, doc = trained
    assert doc["model"] == str(out / "model.pt") and Path(doc["model"]).is_file()
    assert doc["stopped"] is False and doc["steps"] == 2
    vals = [r["val_fpr95"] for r in doc["validation"]]
    assert len(vals) == 1 and 0.0 <= vals[0] <= 1.0
    # the recipe and the overrides are in the resolved config, --data/--val as absolute paths
    text = (out / "config.toml").read_text()
    for line in ("iters_per_epoch = 2", "classes_per_batch = 8", "seed = 211", f'train = "{sets[0].resolve()}"',
                 f'val = "{sets[1].resolve()}"'):
        assert line in text, line
    assert load(out).arch == "hynet"


def test_resume_a_finished_run(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    before = {k: v.clone() for k, v in load(out / "model.pt").state_dict().items()}
    res = run("train", "--resume", out, "--json", "-", "-q")
    assert res.exit_code == 0, (res.output, res.exception)
    doc = json.loads(res.stdout)
    assert doc["stopped"] is False and doc["model"] == str(out / "model.pt")
    after = load(out / "model.pt").state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


def test_resume_reports_the_position(trained: tuple[Path, dict]) -> None:
    res = run("train", "--resume", trained[0])
    assert res.exit_code == 0
    assert "step 2/2" in res.stderr


@pytest.mark.parametrize(
    "override, needle",
    [
        ("loop.epochz=1", "loop.epochz"),
        ("nosuch.key=1", "nosuch"),
        ("loop.epochs=abc", "loop.epochs"),
        ("loop.epochs=1.5", "loop.epochs"),
        ("loop.compile=3", "loop.compile"),
        ("schedule.moms=[0.9, 0.8]", "schedule.moms"),
        ("loop.epochs", "loop.epochs"),
        ("loop.epochs.x=1", "loop.epochs"),
    ],
    ids=["unknown-key", "unknown-section", "word-for-int", "float-for-int", "int-for-bool", "short-tuple",
         "missing-equals", "key-below-a-value"],
)
def test_bad_set_is_one_line_naming_the_key(override: str, needle: str, sets: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    res = run("train", "--recipe", "triplet", "--data", sets[0], "--set", override, "--out", tmp_path / "run")
    one_line_error(res, 2, needle)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bool_for_int_is_rejected(sets: tuple[Path, Path], tmp_path: Path) -> None:
    res = run("train", "--recipe", "triplet", "--data", sets[0], *SMALL, "--set", "loop.epochs=true", "-q",
              "--out", tmp_path / "run")
    one_line_error(res, 2, "loop.epochs")


def test_bad_config_values(sets: tuple[Path, Path], tmp_path: Path) -> None:
    base = ["train", "--recipe", "triplet", "--data", sets[0], *SMALL]
    one_line_error(run(*base, "--set", "model.name=nonet", "--out", tmp_path / "a"), 2, "nonet")
    one_line_error(run(*base, "--set", "loss.name=nope", "--out", tmp_path / "b"), 2, "nope")
    one_line_error(run(*base, "--set", "loop.classes_per_batch=61", "--out", tmp_path / "c"), 2, "61")
    one_line_error(run(*base, "--set", "model.params.bogus=1", "--out", tmp_path / "d"), 2, "bogus")


def test_unknown_device_is_bad_input(sets: tuple[Path, Path], tmp_path: Path) -> None:
    res = run("train", "--recipe", "triplet", "--data", sets[0], *SMALL, "--set", "loop.device=tpu",
              "--out", tmp_path / "run")
    one_line_error(res, 2, "tpu")


def test_missing_or_absent_data(sets: tuple[Path, Path], tmp_path: Path) -> None:
    one_line_error(run("train", "--recipe", "triplet", *SMALL, "--out", tmp_path / "a"), 2, "--data")
    one_line_error(run("train", "--recipe", "triplet", "--data", tmp_path / "none.h5", *SMALL, "--out", tmp_path / "b"),
                   3, "none.h5")
    one_line_error(run("train", "--recipe", "triplet", "--data", sets[0], *SMALL), 2, "--out")
    one_line_error(run("train", "--recipe", "nope", "--data", sets[0], "--out", tmp_path / "c"), 2, "triplet")


def test_no_val(sets: tuple[Path, Path], tmp_path: Path) -> None:
    res = run("train", "--recipe", "triplet", "--data", sets[0], "--no-val", *SMALL, "--out", tmp_path / "r", "--json", "-")
    assert res.exit_code == 0, (res.output, res.exception)
    assert [r["val_fpr95"] for r in json.loads(res.stdout)["validation"]] == [None]
    assert 'validation: off' in res.stderr and 'val = "none"' in (tmp_path / "r" / "config.toml").read_text()
    one_line_error(run("train", "--recipe", "triplet", "--data", sets[0], "--val", sets[1], "--no-val", *SMALL,
                       "--out", tmp_path / "s"), 2, "--no-val")


def test_resume_errors(trained: tuple[Path, dict], tmp_path: Path) -> None:
    one_line_error(run("train", "--resume", trained[0], "--set", "loop.epochs=3"), 2, "--resume")
    one_line_error(run("train", "--resume", trained[0], "--no-val"), 2, "--resume")
    one_line_error(run("train", "--resume", tmp_path), 3, "last.pt")


def test_start_on_an_existing_run(trained: tuple[Path, dict], sets: tuple[Path, Path]) -> None:
    res = run("train", "--recipe", "triplet", "--data", sets[0], *SMALL, "--out", trained[0])
    one_line_error(res, 2, "--resume")


@pytest.mark.parametrize("folder", ['we"ird', "back\\slash"])
def test_data_path_with_special_characters(folder: str, tmp_path: Path) -> None:
    train, _ = write_sets(tmp_path / folder)
    res = run("train", "--recipe", "triplet", "--data", train, *SMALL, "--set", "loop.epochs=1",
              "--out", tmp_path / "run", "-q")
    assert res.exit_code == 0, res.output


@contextlib.contextmanager
def _interrupting_progress(quiet: bool = False) -> Iterator:
    def progress(task: str, step: int, total: int | None, stats: dict | None = None) -> None:
        if task == "train" and step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    yield progress


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_ctrl_c_exits_130_and_resume_completes(sets: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import descbal.console

    out = tmp_path / "run"
    monkeypatch.setattr(descbal.console, "progress_reporter", _interrupting_progress)
    res = run("train", "--recipe", "triplet", "--data", sets[0], *SMALL, "--out", out)
    assert res.exit_code == 130, (res.output, res.exception)
    said = res.stderr.replace("\n", "")  # rich may wrap the hint at the terminal width
    assert "interrupted" in said and "descbal train --resume" in said and str(out) in said
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / "model.pt").exists()
    monkeypatch.undo()
    res = run("train", "--resume", out, "-q", "--json", "-")
    assert res.exit_code == 0, (res.output, res.exception)
    assert json.loads(res.stdout)["steps"] == 2 and (out / "model.pt").is_file()


# ---------------------------------------------------------------------------- eval --model


def test_eval_brown_model(trained: tuple[Path, dict], sets: tuple[Path, Path]) -> None:
    out, doc = trained
    res = run("eval", "brown", "--model", out, "--data", sets[1], "--device", "cpu", "--json", "-")
    assert res.exit_code == 0, (res.output, res.exception)
    result = json.loads(res.stdout)
    assert 0.0 <= result["fpr95"] <= 1.0 and result["pairs"] == 40 and result["definition"] == "hardnet"
    # the same number as the library and as the run's own validation after its last epoch
    want = evaluate_brown_model(load(out), load_patchset(sets[1]))
    assert result["fpr95"] == want.fpr95
    assert result["fpr95"] == pytest.approx(doc["validation"][-1]["val_fpr95"], abs=1e-12)
    # the model file and the folder are the same model
    res2 = run("eval", "brown", "--model", out / "model.pt", "--data", sets[1], "--device", "cpu", "--json", "-", "-q")
    assert json.loads(res2.stdout)["fpr95"] == result["fpr95"]


def test_eval_brown_model_errors(trained: tuple[Path, dict], sets: tuple[Path, Path], tmp_path: Path) -> None:
    one_line_error(run("eval", "brown", "--model", trained[0]), 2, "--data")
    one_line_error(run("eval", "brown", "--model", tmp_path / "none.pt", "--data", sets[1]), 3, "none.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, junk)
    one_line_error(run("eval", "brown", "--model", junk, "--data", sets[1]), 2, "junk.pt")
    one_line_error(run("eval", "brown", "--model", trained[0], "--data", sets[0]), 2, "no pairs")


def test_eval_hpatches_model_and_exported_csvs(trained: tuple[Path, dict], hpatches: Path, tmp_path: Path) -> None:
    out, _ = trained
    csv_dir = tmp_path / "csv"
    res = run("eval", "hpatches", "--model", out, "--patches", hpatches, "--split", "a", "--task", "matching",
              "--export-csv", csv_dir, "--device", "cpu", "--json", "-")
    assert res.exit_code == 0, (res.output, res.exception)
    direct = json.loads(res.stdout)
    assert set(direct["sequences"]) == set(SEQS) and "matching" in direct and "verification" not in direct
    # the official layout: DIR/<seq>/<type>.csv, N rows of 128 '%10.5f' values
    for seq, n in SEQS.items():
        files = sorted(p.name for p in (csv_dir / seq).glob("*.csv"))
        assert len(files) == 16 and "ref.csv" in files and "t5.csv" in files
        rows = (csv_dir / seq / "e1.csv").read_text().splitlines()
        assert len(rows) == n and len(rows[0].split(",")) == 128
        assert all(len(v) == 10 for v in rows[0].split(","))
    # the exported descriptors reproduce the matching numbers
    res2 = run("eval", "hpatches", "--descriptors", csv_dir, "--tasks", hpatches.parent / "tasks", "--split", "a",
               "--task", "matching", "--json", "-", "-q")
    assert res2.exit_code == 0, (res2.output, res2.exception)
    from_csv = json.loads(res2.stdout)
    assert from_csv["sequences"] == direct["sequences"]
    a, b = direct["matching"], from_csv["matching"]
    assert a.keys() == b.keys()
    flat_a, flat_b = _numbers(a), _numbers(b)
    assert len(flat_a) == len(flat_b) > 0
    np.testing.assert_allclose(flat_a, flat_b, atol=1e-6)
    aps = [r["ap"] for r in a["per_image"]]
    assert len(aps) == 3 * 15 and 0.1 < np.mean(aps) < 0.99  # non-trivial numbers


def _numbers(doc) -> list[float]:
    """All numbers of a JSON document in a fixed order."""
    if isinstance(doc, dict):
        return [x for k in sorted(doc) for x in _numbers(doc[k])]
    if isinstance(doc, list):
        return [x for v in doc for x in _numbers(v)]
    if isinstance(doc, bool) or not isinstance(doc, int | float):
        return []
    return [float(doc)]


def test_eval_hpatches_model_errors(trained: tuple[Path, dict], hpatches: Path, tmp_path: Path) -> None:
    one_line_error(run("eval", "hpatches", "--model", trained[0], "--tasks", hpatches.parent / "tasks"), 2, "--patches")
    write_split(tmp_path / "tasks", "a", ["v_missing"])
    one_line_error(run("eval", "hpatches", "--model", trained[0], "--patches", hpatches, "--tasks", tmp_path / "tasks",
                       "--task", "matching"), 2, "v_missing")


def test_show_recipe_prints_copyable_toml(tmp_path: Path) -> None:
    import tomllib

    res = runner.invoke(app, ["train", "--show-recipe", "self-tnet"])
    assert res.exit_code == 0
    doc = tomllib.loads(res.stdout)
    assert doc["loss"]["name"] == "balance" and doc["phases"]["anneal"]["cycles"]["iters"] == 1400
    assert runner.invoke(app, ["train", "--show-recipe", "nope"]).exit_code == 2


def test_seed_and_device_options(sets: tuple[Path, Path], tmp_path: Path) -> None:
    """Issue 21: ``--seed`` and ``--device`` map to loop.seed / loop.device, after --set."""
    out = tmp_path / "run"
    res = run("train", "--recipe", "triplet", "--data", sets[0], *SMALL, "--set", "loop.seed=1", "--seed", "11",
              "--set", "loop.device=cuda", "--device", "cpu", "--out", out, "-q")
    assert res.exit_code == 0, (res.output, res.exception)
    text = (out / "config.toml").read_text()
    assert "seed = 11" in text and 'device = "cpu"' in text
    res = run("train", "--resume", out, "--seed", "3")
    assert res.exit_code == 2 and "drop the other options" in res.stderr


def test_compile_option(sets: tuple[Path, Path], trained: tuple[Path, dict], tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--compile`` is ``loop.compile = true`` (dynamo's eager backend here: the path, not the
    codegen); with ``--resume`` it is refused like every other option."""
    import torch._dynamo

    from descbal.train import compiled

    monkeypatch.setattr(compiled, "BACKEND", "eager")
    out = tmp_path / "run"
    res = run("train", "--recipe", "triplet", "--data", sets[0], "--no-val", *SMALL, "--compile", "--out", out)
    torch._dynamo.reset()
    assert res.exit_code == 0, (res.output, res.exception)
    assert "compiled the training step: 1 graph(s)" in res.stderr
    assert "compile = true" in (out / "config.toml").read_text()
    env = json.loads((out / "environment.json").read_text())
    assert env["compile"]["requested"] is True and env["compile"]["scope"] == {"main": "step"}
    assert env["precision"] == "fp32" and env["prefetch"] is False
    one_line_error(run("train", "--resume", trained[0], "--compile"), 2, "--resume continues a run with its own config")
