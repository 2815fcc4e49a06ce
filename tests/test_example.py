"""The built-in example: make-benchmark's generator on textures, deterministic, realistic
numbers, and the README's first command."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from descbal.cli import app
from descbal.data.hpatches_layout import TYPES
from descbal.data.make_benchmark import BenchmarkConfig, sequence_patches
from descbal.data.sequences import Sequence
from descbal.data.synthetic import synthetic_sequence
from descbal.eval.example import make_example_patches, run_example, texture

runner = CliRunner()


def test_example_patches_layout_and_determinism() -> None:
    a = make_example_patches(seed=3, num_sequences=2, patches_per_sequence=10)
    b = make_example_patches(seed=3, num_sequences=2, patches_per_sequence=10)
    assert list(a) == ["i_example1", "v_example1"]
    for k in a:
        assert a[k].shape == (16, 10, 65, 65) and a[k].dtype == np.uint8
        np.testing.assert_array_equal(a[k], b[k])
    # easy targets resemble the reference more than tough ones
    ref = a["v_example1"][0].astype(float)
    err = [np.abs(a["v_example1"][TYPES.index(f"{n}1")].astype(float) - ref).mean() for n in "eht"]
    assert err[0] < err[1] < err[2]


def test_example_is_make_benchmarks_generator_on_textures() -> None:
    # sequence k: its own seed [seed, k] for the texture, the synthetic homographies and photometry
    # (descbal.data.synthetic) and make-benchmark's detection, jitter and sampling
    a = make_example_patches(seed=3, num_sequences=2, patches_per_sequence=10)
    rng = np.random.default_rng([3, 1])
    images, hs = synthetic_sequence(texture(rng), "v", rng)
    exp = sequence_patches(Sequence("v_example1", images, hs), BenchmarkConfig(seed=3, max_keypoints=10), rng)
    np.testing.assert_array_equal(a["v_example1"], exp)


def test_run_example_writes_release_layout(tmp_path: Path) -> None:
    res = run_example(tmp_path, seed=1, patches_per_sequence=60)
    png = cv2.imread(str(tmp_path / "patches" / "i_example1" / "t3.png"), cv2.IMREAD_GRAYSCALE)
    assert png.shape == (60 * 65, 65)
    assert (tmp_path / "descriptors" / "sift" / "v_example3" / "ref.csv").is_file()
    assert (tmp_path / "tasks" / "splits" / "splits.json").is_file()
    h = res.headline
    # SIFT on this example: HPatches-like (0.56 / 0.22 / 0.27 here); tough jitter is the hardest.
    assert 0.45 < h["verification"] < 0.8 and 0.1 < h["matching"] < 0.5 and 0.15 < h["retrieval"] < 0.6
    v = res.verification
    assert v["e"]["intra"]["imbalanced_ap"] > v["h"]["intra"]["imbalanced_ap"] > v["t"]["intra"]["imbalanced_ap"]


def test_cli_example_json_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    from descbal.eval import example

    # 60 points per sequence instead of 300: the same command, a fifth of the generation time
    monkeypatch.setattr(example, "run_example", functools.partial(example.run_example, patches_per_sequence=60))
    a = runner.invoke(app, ["eval", "example", "-q", "--json", "-", "--seed", "2"])
    assert a.exit_code == 0, a.output
    b = runner.invoke(app, ["eval", "example", "-q", "--json", "-", "--seed", "2"])
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert json.loads(a.stdout)["model"] == "sift"
