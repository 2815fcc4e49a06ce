"""descbal.detectors: the one detector registry (extract, eval sequences, cache images and
make-benchmark all use it), and detectors this OpenCV build lacks (hidden, refused with the
reason). Availability is monkeypatched, so these tests do not depend on the OpenCV build."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from descbal.cli import app
from descbal.data.make_benchmark import BenchmarkConfig, make_benchmark, sequence_patches
from descbal.data.selfsup import PoolConfig, build_pool
from descbal.data.sequences import Sequence
from descbal.detectors import (
    DETECTORS,
    ORB_ALL,
    DetectorEntry,
    Keypoints,
    available_detectors,
    detect,
    get_detector,
)
from descbal.errors import BadInputError

runner = CliRunner()
REASON = "not in this OpenCV build (5.0.0)"
BUILTIN = ("sift", "orb", "gftt", "akaze")


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide detectors other test modules register (test_extract's ``test-fixed``) from the lists."""
    for name in [n for n in DETECTORS if n not in BUILTIN]:
        monkeypatch.delitem(DETECTORS, name)


def textured(seed: int, h: int = 200, w: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (h // 8, w // 8), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(2):
        cv2.imwrite(str(d / f"p{i}.png"), textured(i))
    return d


def two_points(image: np.ndarray, max_keypoints: int) -> Keypoints:
    """Two fixed keypoints near the image centre: (90, 90) and (110, 104), diameter 8, angle 0."""
    return Keypoints(np.array([[90.0, 90.0], [110.0, 104.0]]), np.full(2, 8.0), np.zeros(2), np.array([2.0, 1.0]))


def make_unavailable(monkeypatch: pytest.MonkeyPatch, name: str = "akaze") -> None:
    monkeypatch.setitem(DETECTORS, name, replace(DETECTORS[name], missing=lambda: REASON))


def test_builtin_names_and_labels_in_registration_order() -> None:
    assert list(DETECTORS) == list(BUILTIN)
    assert DETECTORS["sift"].label == "DoG"


def test_data_builders_detect_with_the_registry(monkeypatch: pytest.MonkeyPatch, photos: Path) -> None:
    monkeypatch.setitem(DETECTORS, "test-two", DetectorEntry(two_points))
    # cache images: 2 keypoints x 2 photos = 4 classes, every one seen in both views
    ps, skipped = build_pool(photos, PoolConfig(detector="test-two", max_keypoints=2, views=2, holdout_fraction=0.0))
    assert skipped == [] and len(np.unique(ps.labels)) == 4 and len(ps) == 8
    # make-benchmark: the same two keypoints; patch centre (32, 32) is the keypoint's pixel
    img = textured(3)
    seq = Sequence("v_same", [img] * 6, {k: np.eye(3) for k in range(2, 7)})
    p = sequence_patches(seq, BenchmarkConfig(detector="test-two", max_keypoints=2), np.random.default_rng(0))
    assert p.shape == (16, 2, 65, 65)
    assert p[0, 0, 32, 32] == img[90, 90] and p[0, 1, 32, 32] == img[104, 110]


def test_pools_use_gftt_and_ask_orb_for_all_corners(monkeypatch: pytest.MonkeyPatch, photos: Path) -> None:
    ps, _ = build_pool(photos, PoolConfig(detector="gftt", max_keypoints=20, views=2, holdout_fraction=0.0))
    assert len(np.unique(ps.labels)) > 20  # two photos, up to 20 corners each
    asked: list[int] = []
    real = cv2.ORB_create

    def spy(*args: object, **kwargs: int) -> object:
        asked.append(kwargs["nfeatures"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cv2, "ORB_create", spy)
    build_pool(photos, PoolConfig(detector="orb", max_keypoints=20, views=2, holdout_fraction=0.0))
    assert asked == [ORB_ALL, ORB_ALL]  # one per photo: ORB's own nfeatures would share 20 out per level


def test_unavailable_detector_is_hidden_and_refused_with_its_reason(monkeypatch: pytest.MonkeyPatch,
                                                                   photos: Path, tmp_path: Path) -> None:
    make_unavailable(monkeypatch)
    assert "akaze" in DETECTORS and "akaze" not in available_detectors()
    assert DETECTORS.help() == "Keypoint detector: sift (DoG), orb (oriented FAST), gftt (Shi-Tomasi corners)."
    with pytest.raises(BadInputError, match=r"^akaze: not in this OpenCV build \(5\.0\.0\); choose from sift, orb, gftt$"):
        get_detector("akaze")
    with pytest.raises(BadInputError, match="akaze: not in this OpenCV build"):
        make_benchmark(tmp_path / "none", tmp_path / "bench", BenchmarkConfig(detector="akaze"))
    for args in (["extract", str(photos), "-m", "sift", "-o", str(tmp_path / "f.h5"), "--detector", "akaze"],
                 ["cache", "images", str(photos), "--out", str(tmp_path / "p.h5"), "--detector", "akaze"],
                 ["eval", "sequences", str(tmp_path), "-m", "sift", "--detector", "akaze"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert f"akaze: {REASON}" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "p.h5").exists()


def test_unknown_detector_lists_the_available_ones(monkeypatch: pytest.MonkeyPatch, photos: Path,
                                                   tmp_path: Path) -> None:
    make_unavailable(monkeypatch)
    r = runner.invoke(app, ["cache", "images", str(photos), "--out", str(tmp_path / "p.h5"), "--detector", "surf"])
    assert r.exit_code == 2
    assert "unknown detector 'surf'; choose from sift, orb, gftt" in r.output and "akaze" not in r.output
    # where the build has it, it is listed and runs
    monkeypatch.setitem(DETECTORS, "akaze", DetectorEntry(two_points, "nonlinear scale space"))
    assert "akaze" in available_detectors() and "akaze (nonlinear scale space)" in DETECTORS.help()
    assert len(detect(textured(0), "akaze")) == 2


def test_cli_help_lists_what_this_build_has() -> None:
    r = runner.invoke(app, ["extract", "--help"])
    text = " ".join(r.output.replace("│", " ").split())
    for name in BUILTIN:
        entry = DETECTORS[name]
        assert (f"{name} ({entry.label})" in text) == (entry.missing() is None), name
