"""The patch geometry a model was trained with travels with it (issue 17 §3): training sets record
it, a run on several sets must agree on it, checkpoints store it, and extraction and evaluation
use it unless ``--mag`` / ``--upright`` say otherwise."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from train_fixtures import make_patchset, one_torch_thread, tiny_config  # noqa: F401
from typer.testing import CliRunner

from descbal.cli import app
from descbal.data.patchset import write_patchset
from descbal.errors import BadInputError
from descbal.eval.sequences import evaluate_sequences
from descbal.extract.writers import provenance_conflicts
from descbal.geometry import GeometryOptions, PatchGeometry, resolve_geometry
from descbal.models import build_model, resolve_model, save_checkpoint
from descbal.models.checkpoint import read_checkpoint
from descbal.train.config import DataConfig
from descbal.train.trainer import geometry_line, start_run

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = ["--recipe", "triplet", "--set", "loop.epochs=1", "--set", "loop.iters_per_epoch=2", "--set",
         "loop.classes_per_batch=8", "--set", "loop.device=cpu", "--no-val", "-q"]
G7 = PatchGeometry(mag=7.0)


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pools cut at mag 7 and at mag 5 (the latter with a near table), and a Brown-like set of
    unknown geometry."""
    root = tmp_path_factory.mktemp("sets")
    paths = {"pool7": root / "pool7.h5", "pool5": root / "pool5.h5", "brown": root / "brown.h5"}
    write_patchset(paths["pool7"], replace(make_patchset(0, 12, 3, name="pool7"), geometry=G7))
    write_patchset(paths["pool5"], replace(make_patchset(1, 12, 3, name="pool5"), geometry=PatchGeometry(),
                                           near=np.array([[5, 8]])))
    write_patchset(paths["brown"], make_patchset(2, 12, 3, name="brown"))
    return paths


@pytest.fixture(scope="module")
def run7(sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run7"
    res = run("train", "--data", sets["pool7"], *SMALL, "--out", out)
    assert res.exit_code == 0, (res.output, res.exception)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    noise = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    img = cv2.GaussianBlur(cv2.resize(noise, (160, 120), interpolation=cv2.INTER_CUBIC), (0, 0), 1.0)
    cv2.imwrite(str(root / "a.png"), img)
    return root


# ------------------------------------------------------------------------------ resolving


def test_resolve_geometry_by_hand() -> None:
    trained = PatchGeometry(mag=7.0, upright=True, size_kind="sigma")
    assert resolve_geometry(GeometryOptions(), trained) == (PatchGeometry(mag=7.0, upright=True), "model")
    assert resolve_geometry(GeometryOptions(), None) == (PatchGeometry(), "default")
    # a --mag given: the model still decides upright; the keypoint source's fields are the options'
    got = resolve_geometry(GeometryOptions(mag=5.0, angle_sign=-1.0), trained)
    assert got == (PatchGeometry(mag=5.0, upright=True, angle_sign=-1.0), "option")
    assert resolve_geometry(GeometryOptions(upright=True), None) == (PatchGeometry(upright=True), "option")
    assert resolve_geometry(PatchGeometry(mag=3.0), trained) == (PatchGeometry(mag=3.0), "option")
    with pytest.raises(ValueError, match="mag must be positive"):
        GeometryOptions(mag=0.0)


# ------------------------------------------------------------------------------ training


def test_a_run_on_a_pool_records_its_geometry(run7: Path) -> None:
    for f in (run7 / "model.pt", run7 / "checkpoints" / "last.pt"):
        doc = read_checkpoint(f)
        assert doc["patch_geometry"] == G7.to_dict() and "mixed_geometry" not in doc, f
    assert resolve_model(run7).geometry == G7
    assert resolve_model(run7).geometry.mag == 7  # type: ignore[union-attr]


def test_models_without_a_recorded_geometry(tmp_path: Path) -> None:
    old = tmp_path / "old.pt"
    save_checkpoint(old, build_model("tfeat"))  # as written before checkpoints recorded one
    published = tmp_path / "hardnet-release.pth"
    torch.save({"state_dict": build_model("hardnet").state_dict()}, published)
    assert "patch_geometry" not in read_checkpoint(old)
    for spec in (old, published, "hynet", "sift", build_model("tfeat")):
        assert resolve_model(spec).geometry is None, spec  # type: ignore[arg-type]
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, build_model("tfeat"), patch_geometry={"mag": 5.0, "zoom": 2})
    with pytest.raises(BadInputError, match="unreadable 'patch_geometry'") as e:
        resolve_model(bad)
    assert str(bad) in str(e.value)


def test_train_refuses_sets_of_different_geometries(sets: dict[str, Path], tmp_path: Path) -> None:
    res = run("train", "--data", sets["pool7"], "--data", sets["pool5"], *SMALL, "--out", tmp_path / "r")
    assert res.exit_code == 2, (res.output, res.exception)
    err = res.stderr.strip()
    assert "\n" not in err and "pool7.h5 and pool5.h5" in err and "mag 7.0 vs 5.0" in err, err
    assert not (tmp_path / "r").exists()


def test_mixed_geometries_allowed_with_the_flag(sets: dict[str, Path], tmp_path: Path) -> None:
    cfg = replace(tiny_config(sets["pool5"], epochs=1, iters=1),
                  data=DataConfig(train=[str(sets["pool5"]), str(sets["pool7"])], mixed_geometry=True))
    trainer = start_run(cfg, tmp_path / "run")
    lines: list[str] = []
    trainer.fit(log=lines.append)
    assert any("pool7.h5 records another patch geometry than pool5.h5 (mag 5.0 vs 7.0)" in ln for ln in lines), lines
    assert geometry_line(PatchGeometry(), True) in lines
    doc = read_checkpoint(tmp_path / "run" / "model.pt")
    assert doc["patch_geometry"] == PatchGeometry().to_dict() and doc["mixed_geometry"] is True


def test_unknown_geometry_joins_a_known_one(sets: dict[str, Path], tmp_path: Path) -> None:
    cfg = replace(tiny_config(sets["brown"], epochs=1, iters=1),
                  data=DataConfig(train=[str(sets["brown"]), str(sets["pool5"])]))
    trainer = start_run(cfg, tmp_path / "run")
    assert len(trainer.train_set) == 72 and len(np.unique(trainer.train_set.labels)) == 24  # labels kept apart
    # pool5's near pair (5, 8) follows its labels: brown's top label is 3*11+5 = 38, so pool5's shift is 39 - 5
    assert trainer.train_set.near is not None and trainer.train_set.near.tolist() == [[39, 42]]
    assert trainer.sampler._near is not None  # the sampler keeps them apart
    lines: list[str] = []
    trainer.fit(log=lines.append)
    assert "brown.h5 records no patch geometry; the run's geometry is pool5.h5's" in lines
    assert geometry_line(PatchGeometry()) in lines
    assert read_checkpoint(tmp_path / "run" / "model.pt")["patch_geometry"] == PatchGeometry().to_dict()


def test_all_unknown_records_nothing(sets: dict[str, Path], tmp_path: Path) -> None:
    trainer = start_run(tiny_config(sets["brown"], epochs=1, iters=1), tmp_path / "run")
    lines: list[str] = []
    trainer.fit(log=lines.append)
    assert geometry_line(None) in lines
    assert "patch_geometry" not in read_checkpoint(tmp_path / "run" / "model.pt")


def test_train_data_list_in_toml_and_one_string(sets: dict[str, Path], tmp_path: Path) -> None:
    from descbal.run_config import resolve_run_config

    toml = tmp_path / "c.toml"
    toml.write_text(f'[data]\ntrain = [{json.dumps(str(sets["brown"]))}, {json.dumps(str(sets["pool5"]))}]\n')
    cfg = resolve_run_config(config=toml)
    assert cfg.data.train == [str(sets["brown"]), str(sets["pool5"])] and cfg.data.train_paths == cfg.data.train
    assert resolve_run_config(data=[sets["brown"]]).data.train == str(sets["brown"])  # one set stays a string
    assert resolve_run_config(data=[sets["brown"], sets["pool5"]]).data.train_paths == [str(sets["brown"]),
                                                                                        str(sets["pool5"])]
    with pytest.raises(BadInputError, match="data.train"):
        resolve_run_config(overrides=["data.train=[1, 2]"])


# ------------------------------------------------------------------------------ extraction and evaluation


def _provenance(path: Path) -> dict:
    with h5py.File(path, "r") as h5:
        return json.loads(h5.attrs["descbal_provenance"])


@pytest.mark.parametrize(("model", "opts", "mag", "source"), [
    ("run7", [], 7.0, "model"),
    ("run7", ["--mag", "5"], 5.0, "option"),
    ("hynet", [], 5.0, "default"),
    ("sift", [], 5.0, "default"),
])
def test_extract_takes_the_models_geometry_by_default(model: str, opts: list[str], mag: float, source: str,
                                                      run7: Path, images: Path, tmp_path: Path) -> None:
    spec = run7 if model == "run7" else model
    out = tmp_path / "f.h5"
    res = run("extract", images, "-m", spec, "-o", out, "--max-keypoints", "20", "--device", "cpu", "-q", *opts)
    assert res.exit_code == 0, (res.output, res.exception)
    prov = _provenance(out)
    assert prov["geometry"] == {**PatchGeometry().to_dict(), "mag": mag} and prov["geometry_source"] == source
    # the same extraction resumes: nothing to do, no conflict
    again = run("extract", images, "-m", spec, "-o", out, "--max-keypoints", "20", "--device", "cpu", "-q", *opts,
                "--json", "-")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped_existing"] == 1, again.output


def test_files_written_before_geometry_source_still_resume() -> None:
    new = {"model": "m", "kind": "network", "weights_sha256": "ab", "geometry": PatchGeometry().to_dict(),
           "geometry_source": "default"}
    old = {k: v for k, v in new.items() if k != "geometry_source"}
    assert provenance_conflicts(old, new) == []
    assert provenance_conflicts(old, {**new, "geometry": G7.to_dict()}) == ["geometry"]


def test_eval_sequences_records_each_models_geometry(run7: Path, tmp_path: Path) -> None:
    seq = tmp_path / "seqs" / "v_one"
    seq.mkdir(parents=True)
    noise = np.random.default_rng(1).integers(0, 256, (30, 40), dtype=np.uint8)
    img = cv2.GaussianBlur(cv2.resize(noise, (160, 120), interpolation=cv2.INTER_CUBIC), (0, 0), 1.0)
    for k in (1, 2):
        cv2.imwrite(str(seq / f"{k}.png"), img)
    (seq / "H_1_2").write_text("1 0 0\n0 1 0\n0 0 1\n")
    res = evaluate_sequences(tmp_path / "seqs", [run7, "hynet"], max_keypoints=20, device="cpu")
    got = [(m["geometry"]["mag"], m["geometry_source"]) for m in res.models]
    assert got == [(7.0, "model"), (5.0, "default")]
    assert res.to_json()["geometry"]["mag"] is None  # given: nothing, each model its own
    forced = evaluate_sequences(tmp_path / "seqs", [run7, "hynet"], max_keypoints=20, device="cpu",
                                geometry=GeometryOptions(mag=6.0))
    assert [(m["geometry"]["mag"], m["geometry_source"]) for m in forced.models] == [(6.0, "option")] * 2


@pytest.mark.parametrize("command", [["reconstruct", "{images}", "-m", "sift", "-o", "{out}"],
                                     ["eval", "sfm", "{images}", "-m", "sift", "-o", "{out}"]])
def test_reconstruct_and_eval_sfm_take_mag(command: list[str], images: Path, tmp_path: Path) -> None:
    argv = [a.format(images=images, out=tmp_path / "o") for a in command]
    res = run(*argv, "--mag", "0", "--upright", "-q")
    assert res.exit_code == 2 and "--mag" in res.stderr, res.output


def test_a_pool_with_a_brown_set_validates_on_the_pools_held_out_pairs() -> None:
    """Combined, a Brown set's pairs (among its training patches) are dropped from validation and
    a pool's held-out pairs are kept, offset to the combined set's patch ids."""
    from descbal.data.patchset import concat_patchsets
    from descbal.train.trainer import validation_set

    brown = make_patchset(2, 6, 3, name="brown", num_pairs=20)  # 18 patches, pairs among them
    pool = make_patchset(3, 6, 3, name="pool")
    held = np.zeros(18, bool)
    held[9:] = True
    pool = replace(pool, holdout=held, pairs=np.array([[9, 10, 1], [12, 15, 0], [16, 17, 1]]))
    both = concat_patchsets([brown, pool], ["brown.h5", "pool.h5"])
    val, line = validation_set(DataConfig(train=["brown.h5", "pool.h5"]), both)
    assert val is not None and val.pairs is not None
    assert val.pairs.tolist() == [[27, 28, 1], [30, 33, 0], [34, 35, 1]]
    assert "3 held-out pairs (of 23: those among held-out patches)" in line
    alone, line = validation_set(DataConfig(train="brown.h5"), brown)
    assert alone is None and "no held-out pairs" in line
