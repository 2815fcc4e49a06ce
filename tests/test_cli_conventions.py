"""The command line's conventions, checked over every command (README, Conventions).

* Exit codes: a missing input path exits 3 (data missing) with one line naming that path, in
  every command and for every input path it takes (one table, checked to cover them all).
* Options: the same concept is the same option everywhere (walking Typer's click tree).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from enum import Enum
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer.main
from train_fixtures import one_torch_thread, write_sets, write_split  # noqa: F401
from typer.testing import CliRunner

from descbal.cli import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def leaf_commands() -> Iterator[tuple[str, object]]:
    """``("eval hpatches", click command)`` for every command of the CLI."""

    def walk(cmd: object, path: list[str]) -> Iterator[tuple[str, object]]:
        subs = getattr(cmd, "commands", None)
        if subs is None:
            yield " ".join(path), cmd
            return
        for name, sub in subs.items():
            yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


COMMANDS = dict(leaf_commands())


# ------------------------------------------------------------------------------ exit code 3

#: (command, parameter, arguments). ``{nope}`` is a path that does not exist; ``{name}`` any of
#: the inputs below, all valid, so that the missing path is the only problem of each call.
MISSING = [
    ("extract", "images_dir", ["{nope}", "-m", "sift", "-o", "{out}/f.h5"]),
    ("extract", "model", ["{images}", "-m", "{nope}.pt", "-o", "{out}/f.h5"]),
    ("extract", "list_file", ["--list", "{nope}.h5"]),
    ("train", "config", ["--config", "{nope}.toml", "--data", "{train}", "--out", "{out}/run"]),
    ("train", "resume", ["--resume", "{nope}"]),
    ("train", "data", ["--recipe", "triplet", "--data", "{nope}.h5", "--out", "{out}/run"]),
    ("train", "val", ["--recipe", "triplet", "--data", "{train}", "--val", "{nope}.h5", "--out", "{out}/run"]),
    ("train", "model.init", ["--recipe", "triplet", "--data", "{train}", "--set", "model.init={nope}.pt",
                             "--set", "loop.device=cpu", "--out", "{out}/run"]),
    ("export", "model", ["{nope}.pt", "-o", "{out}/m.onnx"]),
    ("export", "check_patches", ["hardnet", "-o", "{out}/m.onnx", "--check-patches", "{nope}.png"]),
    ("make-benchmark", "sequences", ["{nope}", "-o", "{out}/bench"]),
    ("match", "features", ["{nope}.h5", "--pairs", "{image_pairs}", "-o", "{out}/m.h5"]),
    ("match", "pairs", ["{features}", "--pairs", "{nope}.txt", "-o", "{out}/m.h5"]),
    ("eval hpatches", "descriptors", ["-d", "{nope}", "-t", "{tasks}"]),
    ("eval hpatches", "tasks", ["-d", "{descriptors}", "-t", "{nope}"]),
    ("eval hpatches", "patches", ["-m", "sift", "--patches", "{nope}"]),
    ("eval hpatches", "model", ["-m", "{nope}.pt", "--patches", "{patches}", "-t", "{tasks}"]),
    ("eval brown", "pairs", ["--pairs", "{nope}.txt", "--descriptors", "{desc}"]),
    ("eval brown", "descriptors", ["--pairs", "{brown_pairs}", "--descriptors", "{nope}.npy"]),
    ("eval brown", "data", ["-m", "sift", "--data", "{nope}.h5"]),
    ("eval brown", "model", ["-m", "{nope}.pt", "--data", "{val}"]),
    ("eval example", "model", ["-m", "{nope}.pt", "-o", "{out}/ex"]),
    ("eval sequences", "folder", ["{nope}", "-m", "sift"]),
    ("eval sequences", "model", ["{sequences}", "-m", "{nope}.pt"]),
    ("colmap", "features", ["{nope}.h5", "{features}", "--images", "{images}", "--database", "{out}/db.db"]),
    ("colmap", "matches", ["{hloc}", "{nope}.h5", "--images", "{images}", "--database", "{out}/db.db"]),
    ("colmap", "images", ["{hloc}", "{hloc}", "--images", "{nope}", "--database", "{out}/db.db"]),
    ("reconstruct", "images", ["{nope}", "-m", "sift", "-o", "{out}/r"]),
    ("reconstruct", "model", ["{images}", "-m", "{nope}.pt", "-o", "{out}/r"]),
    ("reconstruct", "pairs", ["{images}", "-m", "sift", "-o", "{out}/r", "-p", "{nope}.txt"]),
    ("eval sfm", "scenes", ["{nope}", "-m", "sift", "-o", "{out}/s"]),
    ("eval sfm", "model", ["{scene}", "-m", "{nope}.pt", "-o", "{out}/s"]),
    ("eval stereo", "left", ["{nope}.png", "{images}/a.png", "{disp}", "-m", "sift"]),
    ("eval stereo", "right", ["{images}/a.png", "{nope}.png", "{disp}", "-m", "sift"]),
    ("eval stereo", "disparity", ["{images}/a.png", "{images}/a.png", "{nope}.npy", "-m", "sift"]),
    ("eval stereo", "model", ["{images}/a.png", "{images}/a.png", "{disp}", "-m", "{nope}.pt"]),
    ("download brown", "from_file", ["liberty", "--from-file", "{nope}.zip", "--root", "{out}/root"]),
    ("download hpatches", "from_file", ["--part", "patches", "--from-file", "{nope}.tar.gz", "--root", "{out}/root"]),
    ("cache brown", "root", ["liberty", "--root", "{nope}"]),
    ("cache hpatches", "root", ["--root", "{nope}"]),
    ("cache sequences", "src", ["{nope}", "-o", "{out}/s.h5"]),
    ("cache images", "folder", ["{nope}", "-o", "{out}/p.h5"]),
    ("cache sfm", "reconstructions", ["{nope}", "--images", "{images}", "-o", "{out}/s.h5"]),
    ("cache sfm", "images", ["{colmap_model}", "--images", "{nope}", "-o", "{out}/s.h5"]),
    ("cache sfm", "features", ["{colmap_model}", "--images", "{images}", "--features", "{nope}.h5", "-o",
                               "{out}/s.h5"]),
]
#: Path parameters that name outputs (created when absent), not inputs.
OUTPUT_PATHS = {"out", "export_csv", "plot", "database"}
NOT_INPUTS = {("download brown", "root"), ("download hpatches", "root")}  # the download's target


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("inputs")
    img = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    (root / "images").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), img)
    (root / "sequences" / "s1").mkdir(parents=True)
    cv2.imwrite(str(root / "sequences" / "s1" / "1.png"), img)
    write_split(root / "tasks", "full", ["s1"])
    (root / "descriptors").mkdir()
    (root / "patches").mkdir()
    (root / "image_pairs.txt").write_text("a.png a.png\n")
    (root / "features.h5").write_bytes(b"")
    (root / "brown_pairs.txt").write_text("0 5 0 1 5 0 0\n")
    np.save(root / "desc.npy", np.zeros((2, 4), np.float32))
    np.save(root / "disp.npy", np.full((48, 64), 4.0, np.float32))
    import h5py

    with h5py.File(root / "hloc.h5", "w") as h5:  # a readable (empty) features / matches file
        h5.create_group("a.png")
    (root / "scene" / "images").mkdir(parents=True)  # a Strecha-layout scene with ground-truth cameras
    cv2.imwrite(str(root / "scene" / "images" / "0000.png"), img)
    (root / "scene" / "images" / "K.txt").write_text("50 0 32\n0 50 24\n0 0 1\n")
    (root / "scene" / "gt_dense_cameras").mkdir()
    (root / "scene" / "gt_dense_cameras" / "0000.png.camera").write_text(
        "50 0 32\n0 50 24\n0 0 1\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n0 0 0\n64 48\n")
    (root / "colmap_model").mkdir()  # looks like a COLMAP text model (its files are only listed before the check)
    for part in ("cameras", "images", "points3D"):
        (root / "colmap_model" / f"{part}.txt").write_text("")
    train, val = write_sets(root / "sets", num_classes=12, per_class=3)
    paths = {p.stem if p.is_file() else p.name: p for p in root.iterdir()}
    return {**{k: str(v) for k, v in paths.items()}, "train": str(train), "val": str(val)}


@pytest.mark.parametrize(("command", "param", "args"), MISSING, ids=[f"{c}:{p}" for c, p, _ in MISSING])
def test_a_missing_input_path_exits_3_naming_it(command: str, param: str, args: list[str], inputs: dict[str, str],
                                                tmp_path: Path) -> None:
    """Issue 21: 2 in some commands, 3 in most; and ``--patches /nope`` named /tasks/splits.json."""
    nope = tmp_path / f"nope-{param}"
    (tmp_path / "out").mkdir()
    argv = [a.format(nope=nope, out=tmp_path / "out", **inputs) for a in args]
    res = runner.invoke(app, [*command.split(), *argv])
    err = res.stderr.strip()
    assert res.exit_code == 3, (res.exit_code, res.output, res.exception)
    assert "\n" not in err and err.startswith("error: ") and str(nope) in err, err


def _path_params(cmd: object) -> set[str]:
    """The parameters of a command that take a path or a model (which may be a path)."""
    return {p.name for p in cmd.params  # type: ignore[attr-defined]
            if p.type_descriptor.annotation is Path or p.name == "model"}


def test_the_missing_path_table_covers_every_input_of_every_command() -> None:
    covered = {(c, p) for c, p, _ in MISSING}
    for name, cmd in COMMANDS.items():
        for p in _path_params(cmd) - OUTPUT_PATHS:
            assert (name, p) in covered or (name, p) in NOT_INPUTS, f"add a row to MISSING for {name} {p}"


# ------------------------------------------------------------------------------ options


def _options(cmd: object) -> list:
    return [p for p in cmd.params if p.param_type_name == "option"]  # type: ignore[attr-defined]


def test_one_option_per_concept_across_commands() -> None:
    """The same long option has the same short alias, value type and flag-ness everywhere, and a
    short alias means one long option."""
    seen: dict[str, tuple[tuple[str, ...], str, bool, str]] = {}
    short_of: dict[str, str] = {}
    for name, cmd in COMMANDS.items():
        for p in _options(cmd):
            longs = [o for o in p.opts if o.startswith("--")]
            shorts = tuple(sorted(o for o in p.opts if not o.startswith("--")))
            assert len(longs) == 1, (name, p.opts)
            tp = p.type_descriptor.annotation
            tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp  # repeatable: its element
            # a choice is a choice: --format picks among feature formats in extract, file formats in export
            kind = (shorts, "choice" if isinstance(tp, type) and issubclass(tp, Enum) else str(tp), bool(p.is_flag), name)
            first = seen.setdefault(longs[0], kind)
            assert first[:3] == kind[:3], f"{longs[0]}: {first[3]} {first[:3]} vs {name} {kind[:3]}"
            for s in shorts:
                assert short_of.setdefault(s, longs[0]) == longs[0], f"{s} is {short_of[s]} and {longs[0]} ({name})"


def test_conventional_options() -> None:
    """Issue 21: ``-o`` existed only on extract and match; train had no --seed or --device."""
    for name, cmd in COMMANDS.items():
        opts = {p.name: p for p in _options(cmd)}
        assert "json_out" in opts and "quiet" in opts, name
        assert set(opts["quiet"].opts) == {"--quiet", "-q"}, name
        if "out" in opts:
            assert set(opts["out"].opts) == {"--out", "-o"}, name
        if "model" in opts:
            assert set(opts["model"].opts) == {"--model", "-m"}, name
        for p in opts.values():  # the concept's name is the option's name
            assert p.name.replace("_", "-") in {o.lstrip("-") for o in p.opts} or p.name in ("json_out", "set_",
                                                                                            "list_file", "fmt",
                                                                                            "definition"), (name, p.opts)
    assert {"seed", "device"} <= {p.name for p in _options(COMMANDS["train"])}
    repeatable = {n for n, c in COMMANDS.items() for p in _options(c) if p.name == "model" and p.multiple}
    assert repeatable == {"eval sequences", "eval stereo", "eval sfm"}  # several models in one table; one elsewhere


def test_boolean_options_are_plain_flags_without_a_placeholder() -> None:
    """Issue 21: the help showed ``<bool>`` after every flag, although ``--quiet true`` is refused."""
    for name, cmd in COMMANDS.items():
        for p in _options(cmd):
            if p.type_descriptor.annotation is bool:
                assert p.is_flag and not p.secondary_opts, (name, p.opts)
        res = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        assert "<bool>" not in res.output, (name, [ln for ln in res.output.splitlines() if "<bool>" in ln])
        # options that take a value still show what it is
        assert re.search(r"--json\s+\S*<str>", res.output), name
    for group in ([], ["eval"], ["cache"], ["download"]):
        res = runner.invoke(app, [*group, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0 and "<bool>" not in res.output, res.output
