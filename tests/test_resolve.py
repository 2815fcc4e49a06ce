"""One way to name a model: the resolver's kinds, display names and errors, and every command that
takes a model accepting the same specs (issue 15 part 4, issue 21 point 8)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from descbal.classical import CLASSICAL, get_classical
from descbal.cli import app
from descbal.data.patchset import PatchSet, write_patchset
from descbal.errors import BadInputError, DataMissingError
from descbal.eval.brown import evaluate_brown
from descbal.eval.example import run_example
from descbal.eval.model_eval import evaluate_brown_model, hpatches_descriptors
from descbal.eval.sequences import SequencesResult, plotted_splits, render_mma
from descbal.extract.describers import KEYPOINT_DESCRIPTORS, load_describer
from descbal.models import MODELS, build_model, resolve_model, save_checkpoint
from descbal.models.resolve import display_name, split_name, state_dict_sha256

runner = CliRunner()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder ``exp-7`` holding ``model.pt`` (a TFeat checkpoint)."""
    run = tmp_path_factory.mktemp("runs") / "exp-7"
    torch.manual_seed(3)
    save_checkpoint(run / "model.pt", build_model("tfeat"))
    return run


# ------------------------------------------------------------------------------ the resolver


def test_checkpoint_file_and_run_folder(run_dir: Path) -> None:
    by_folder = resolve_model(run_dir)
    by_file = resolve_model(str(run_dir / "model.pt"))
    for r in (by_folder, by_file):
        assert (r.kind, r.name, r.arch, r.classical) == ("checkpoint", "exp-7", "tfeat", None)
        assert r.source == run_dir / "model.pt" and r.weights_sha256 == sha(run_dir / "model.pt")
    assert same_weights(by_folder.network, by_file.network)


def test_published_weights_and_file_stem(tmp_path: Path) -> None:
    net = build_model("tfeat")
    path = tmp_path / "tfeat-liberty.params"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, path)  # a DataParallel release
    r = resolve_model(str(path))
    assert (r.kind, r.name, r.arch, r.weights_sha256) == ("published", "tfeat-liberty", "tfeat", sha(path))
    assert same_weights(r.network, net)


def test_architecture_is_untrained_from_the_seed_and_leaves_the_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = resolve_model("hardnet")
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is untouched
    torch.manual_seed(0)
    want = build_model("hardnet")
    assert (a.kind, a.name, a.seed, a.source) == ("architecture", "hardnet", 0, None)
    assert same_weights(a.network, want)
    assert a.weights_sha256 == state_dict_sha256(want) == resolve_model("hardnet").weights_sha256
    b = resolve_model("hardnet", seed=1)
    assert not same_weights(a.network, b.network) and b.weights_sha256 != a.weights_sha256 and b.seed == 1


def test_classical_module_and_resolved() -> None:
    r = resolve_model("rootsift")
    assert (r.kind, r.name, r.classical, r.network, r.weights_sha256) == ("classical", "rootsift", "rootsift", None, None)
    net = build_model("tfeat")
    m = resolve_model(net)
    assert (m.kind, m.name, m.network) == ("module", "tfeat", net)
    assert resolve_model(m) is m and resolve_model(m, name="T").name == "T"


def test_name_prefix(run_dir: Path) -> None:
    assert split_name("baseline=sift") == ("baseline", "sift")
    assert split_name("sift") == (None, "sift")
    r = resolve_model(f"mine={run_dir}")
    assert (r.name, r.kind, r.source) == ("mine", "checkpoint", run_dir / "model.pt")
    assert resolve_model("SIFT=sift").name == "SIFT" and resolve_model("h = hynet").name == "h"
    with pytest.raises(BadInputError, match="NAME=SPEC"):
        resolve_model("=sift")


def test_a_path_with_an_equals_sign_is_a_path(tmp_path: Path) -> None:
    path = tmp_path / "lr=0.1.pt"
    save_checkpoint(path, build_model("tfeat"))
    assert resolve_model(str(path)).name == "lr=0.1"


def test_display_names(tmp_path: Path) -> None:
    run = tmp_path / "run-a"
    (run / "checkpoints").mkdir(parents=True)
    assert display_name(run) == "run-a"
    assert display_name(run / "model.pt") == "run-a"
    assert display_name(run / "checkpoints" / "last.pt") == "run-a"
    assert display_name(tmp_path / "weights" / "hynet-liberty.pth") == "hynet-liberty"


def test_unknown_names_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="unknown model 'banana'") as e:
        resolve_model("banana")
    for accepted in ("checkpoint", "sift", "rootsift", "hynet", "hardnet", "tfeat", "NAME="):
        assert accepted in str(e.value)
    with pytest.raises(DataMissingError, match="model not found") as e:
        resolve_model(str(tmp_path / "none.pt"))
    assert str(tmp_path / "none.pt") in str(e.value)
    with pytest.raises(DataMissingError):
        resolve_model("runs/missing")
    with pytest.raises(DataMissingError, match="neither model.pt"):
        resolve_model(tmp_path)  # a folder that is no run


def test_registries_agree() -> None:
    # every classical name works in every command: patch form (eval) and keypoint form (extract)
    assert set(CLASSICAL) == set(KEYPOINT_DESCRIPTORS)
    assert not set(CLASSICAL) & set(MODELS)


# ------------------------------------------------------------------------------ commands


def test_eval_hpatches_model_sift_reproduces_the_example(tmp_path: Path) -> None:
    """Issue 21: ``eval hpatches --model sift`` failed with 'model file not found'."""
    ex = run_example(tmp_path / "ex", seed=1, patches_per_sequence=30)
    base = ["eval", "hpatches", "--patches", str(tmp_path / "ex" / "patches"), "--split", "example", "-q", "--json", "-"]
    res = runner.invoke(app, [*base, "--model", "sift", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["model"] == "sift"
    assert doc["headline"] == pytest.approx(ex.headline, abs=1e-12)  # the same 65x65 SIFT as eval example
    res = runner.invoke(app, [*base, "--model", "SIFT=sift", "--task", "matching"])
    assert res.exit_code == 0 and json.loads(res.stdout)["model"] == "SIFT"
    res = runner.invoke(app, [*base, "--model", "banana"])
    assert res.exit_code == 2 and res.output.startswith("error: unknown model 'banana'") and "Traceback" not in res.output
    res = runner.invoke(app, [*base, "--model", str(tmp_path / "none.pt")])
    assert res.exit_code == 3 and str(tmp_path / "none.pt") in res.output


def test_hpatches_descriptors_resolve_the_device_library_side(tmp_path: Path) -> None:
    run_example(tmp_path, seed=2, patches_per_sequence=5, describe=lambda p: np.zeros((len(p), 4), np.float32))
    d = hpatches_descriptors("tfeat", tmp_path / "patches", ["i_example1"], device="auto")
    assert d.data["i_example1"].shape == (16, 5, 128)


def brown_set(tmp_path: Path) -> tuple[PatchSet, Path]:
    """Three distinct textures, each twice: pairs (0,1) (2,3) match, (0,2) (1,4) do not."""
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    patches = np.repeat(tex, 2, axis=0)
    pairs = np.array([[0, 1, 1], [2, 3, 1], [0, 2, 0], [1, 4, 0]], np.int64)
    ps = PatchSet(patches, np.repeat(np.arange(3), 2).astype(np.int64), pairs, "toy")
    write_patchset(tmp_path / "toy.h5", ps)
    return ps, tmp_path / "toy.h5"


def test_brown_with_a_classical_descriptor_and_an_architecture(tmp_path: Path) -> None:
    ps, path = brown_set(tmp_path)
    r = evaluate_brown_model("sift", ps)
    # identical patches have distance 0 and different textures do not: FPR95 is exactly 0
    assert r.model == "sift" and r.fpr95 == 0.0 and (r.matches, r.non_matches) == (2, 2)
    d = get_classical("sift")(ps.patches[:5])
    assert r.fpr95 == evaluate_brown(d, np.array([0, 2, 0, 1]), np.array([1, 3, 2, 4]), ps.pairs[:, 2]).fpr95
    res = runner.invoke(app, ["eval", "brown", "--model", "hardnet", "--data", str(path), "--device", "auto", "-q",
                              "--json", "-"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"] == "hardnet" and json.loads(res.stdout)["fpr95"] == 0.0


def test_eval_example_takes_any_model(tmp_path: Path) -> None:
    res = runner.invoke(app, ["eval", "example", "-m", "untrained=tfeat", "--out", str(tmp_path), "-q", "--json", "-"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"] == "untrained"
    assert (tmp_path / "descriptors" / "untrained" / "i_example1" / "ref.csv").is_file()
    res = runner.invoke(app, ["eval", "example", "-m", "surf"])
    assert res.exit_code == 2 and "unknown model 'surf'" in res.output


def test_extract_provenance_names_the_model(run_dir: Path) -> None:
    d = load_describer(f"mine={run_dir}")
    p = d.provenance
    assert (p["model"], p["kind"], p["model_kind"], p["arch"]) == ("mine", "network", "checkpoint", "tfeat")
    assert p["weights_sha256"] == sha(run_dir / "model.pt") and p["source"] == str(run_dir / "model.pt")
    a = load_describer("hardnet").provenance
    assert (a["model"], a["model_kind"], a["seed"]) == ("hardnet", "architecture", 0) and len(a["weights_sha256"]) == 64
    s = load_describer("SIFT=sift").provenance
    assert (s["model"], s["kind"], s["model_kind"]) == ("SIFT", "opencv", "classical")


# ------------------------------------------------------------------------------ the MMA plot


def _result(*splits: str) -> SequencesResult:
    mma = {s: ([0.1 * t for t in range(1, 11)] if s in splits else None) for s in ("overall", "illumination", "viewpoint")}
    return SequencesResult(root="r", sequences=[], thresholds=list(range(1, 11)), homography_eps=[1, 3, 5], detector="sift",
                           max_keypoints=10, geometry={}, ratio=None, models=[{"name": "m", "mma": mma}])


@pytest.mark.parametrize(("splits", "panels"), [(("overall", "viewpoint"), ["overall", "viewpoint"]),
                                                (("overall", "illumination"), ["overall", "illumination"]),
                                                (("overall", "illumination", "viewpoint"),
                                                 ["overall", "illumination", "viewpoint"]),
                                                ((), ["overall"])])
def test_plot_draws_only_panels_with_data(splits: tuple[str, ...], panels: list[str]) -> None:
    r = _result(*splits)
    assert plotted_splits(r) == panels
    assert render_mma(r, panel=(100, 80)).shape[1] == 100 * len(panels)
