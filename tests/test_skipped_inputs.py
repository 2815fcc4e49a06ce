"""One policy for commands that skip bad inputs (issue 21 point 12): exit 0 with a warning
summary on stderr, exit 1 with ``--strict``; the JSON lists the skipped inputs either way."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from descbal.cli import app
from descbal.data.make_benchmark import BenchmarkResult
from descbal.data.synthetic import synthetic_sequence, write_sequence
from descbal.report import skipped_summary
from descbal.results import STRICT_EXIT_CODE, skipped_exit_code

runner = CliRunner()


def textured(seed: int, h: int = 120, w: int = 150) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w)).astype(np.float32), (0, 0), 2.0).astype(np.uint8)


def photos(root: Path) -> list[str]:
    d = root / "photos"
    d.mkdir()
    for i in range(3):
        cv2.imwrite(str(d / f"p{i}.png"), textured(i))
    (d / "broken.jpg").write_bytes(b"not an image")
    return [str(d)]


def extract_case(root: Path) -> list[str]:
    return ["extract", *photos(root), "-m", "sift", "-o", str(root / "f.h5"), "--max-keypoints", "20"]


def pool_case(root: Path) -> list[str]:
    return ["cache", "images", *photos(root), "--out", str(root / "pool.h5"), "--max-keypoints", "20", "--views", "2"]


def benchmark_case(root: Path) -> list[str]:
    seqs = root / "sequences"
    rng = np.random.default_rng(0)
    for i in range(2):
        images, hs = synthetic_sequence(textured(10 + i, 160, 200), "v", rng)
        write_sequence(seqs / f"v_s{i}", images, hs)
    (seqs / "v_bad").mkdir()
    cv2.imwrite(str(seqs / "v_bad" / "1.png"), textured(5))  # no images 2..6, no homographies
    return ["make-benchmark", str(seqs), "--out", str(root / "bench"), "--max-keypoints", "30"]


# command -> (arguments on a fresh folder, the JSON field listing the skipped inputs, the one skipped)
CASES: dict[str, tuple[Callable[[Path], list[str]], str, str]] = {
    "extract": (extract_case, "failed", "broken.jpg"),
    "cache images": (pool_case, "skipped_images", "broken.jpg"),
    "make-benchmark": (benchmark_case, "skipped", "v_bad"),
}


@pytest.mark.parametrize("command", list(CASES))
def test_skipped_inputs_warn_and_exit_0_or_1_with_strict(command: str, tmp_path: Path) -> None:
    make_args, key, bad = CASES[command]
    args = make_args(tmp_path) + ["--json", "-"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [next(iter(s.values())) for s in doc[key]] == [bad] and doc[key][0]["reason"]
    assert f"warning: 1 input(s) skipped (listed in the JSON's '{key}'); --strict makes this exit 1" in r.stderr
    r = runner.invoke(app, args + ["--strict"])  # again: resumed / up to date, the input is still left out
    assert r.exit_code == STRICT_EXIT_CODE == 1, r.output
    assert [next(iter(s.values())) for s in json.loads(r.stdout)[key]] == [bad]
    assert f"error: 1 input(s) skipped (listed in the JSON's '{key}'); exit code 1 (--strict)" in r.stderr
    r = runner.invoke(app, args + ["--strict", "-q"])
    assert r.exit_code == 1 and r.stderr == ""


@pytest.mark.parametrize("command", list(CASES))
def test_every_skipping_command_has_strict(command: str) -> None:
    r = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert r.exit_code == 0 and "--strict" in r.output


def test_the_policy_on_a_result() -> None:
    clean = BenchmarkResult(out="b", split="full", sequences={"a": 3}, skipped=[], patches="p", tasks="t")
    bad = BenchmarkResult(out="b", split="full", sequences={"a": 3}, skipped=[{"sequence": "x", "reason": "r"}],
                          patches="p", tasks="t")
    assert [skipped_exit_code(r, s) for r in (clean, bad) for s in (False, True)] == [0, 0, 0, 1]
    assert skipped_summary(clean) == [] and skipped_summary(clean, strict=True) == []
    assert skipped_summary(bad) == ["[yellow]warning:[/yellow] 1 input(s) skipped (listed in the JSON's 'skipped'); "
                                    "--strict makes this exit 1"]
