"""The built-in example: deterministic, realistic numbers, and the README's first command."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from descbal.cli import app
from descbal.data.hpatches_layout import TYPES
from descbal.eval.example import make_example_patches, run_example

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


def test_run_example_writes_release_layout(tmp_path: Path) -> None:
    res = run_example(tmp_path, seed=1, patches_per_sequence=60)
    png = cv2.imread(str(tmp_path / "patches" / "i_example1" / "t3.png"), cv2.IMREAD_GRAYSCALE)
    assert png.shape == (60 * 65, 65)
    assert (tmp_path / "descriptors" / "sift" / "v_example3" / "ref.csv").is_file()
    assert (tmp_path / "tasks" / "splits" / "splits.json").is_file()
    h = res.headline
    # SIFT on this example: strong but not perfect; tough jitter is the hardest.
    assert 0.5 < h["verification"] < 1.0 and 0.3 < h["matching"] < 0.95 and 0.5 < h["retrieval"] < 1.0
    v = res.verification
    assert v["e"]["intra"]["imbalanced_ap"] > v["t"]["intra"]["imbalanced_ap"]


def test_cli_example_json_deterministic() -> None:
    a = runner.invoke(app, ["eval", "example", "-q", "--json", "-", "--seed", "2"])
    assert a.exit_code == 0, a.output
    b = runner.invoke(app, ["eval", "example", "-q", "--json", "-", "--seed", "2"])
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert json.loads(a.stdout)["model"] == "sift"
