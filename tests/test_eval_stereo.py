"""Matching on a rectified stereo pair: the correctness rule, disparity files, the built-in pair, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from descbal.cli import app
from descbal.detectors import DETECTORS, DetectorEntry, Keypoints
from descbal.errors import BadInputError, DataMissingError
from descbal.eval.stereo import disparity_at, evaluate_stereo, open_stereo_pair, read_disparity, stereo_errors, valid_disparity

runner = CliRunner()
SHIFT = 8  # the synthetic pair's true disparity everywhere


# ---------------------------------------------------------------------------- the rule, by hand


def test_nearest_pixel_sampling_and_validity() -> None:
    disp = np.array([[1.0, 2.0, 3.0], [4.0, np.inf, 0.0], [np.nan, -1.0, 9.0]], np.float32)
    xy = np.array([[0.0, 0.0], [1.49, 0.2], [1.5, 0.0], [2.4, 2.4], [-0.6, 0.0], [0.0, 2.5], [1.0, 1.0],
                   [2.0, 1.0], [0.0, 2.0], [1.0, 2.0]])
    d = disparity_at(disp, xy)
    # x.5 rounds up (pixel centres at integers); (-0.6, 0) and (0, 2.5) fall outside the map
    np.testing.assert_array_equal(d[:4], [1.0, 2.0, 3.0, 9.0])
    assert np.isnan(d[4]) and np.isnan(d[5])
    assert valid_disparity(d).tolist() == [True, True, True, True, False, False, False, False, False, False]


def test_errors_are_distances_to_the_left_keypoint_shifted_by_its_disparity() -> None:
    kp_l = np.array([[10.0, 5.0], [20.0, 7.0], [30.0, 9.0], [40.0, 2.0]])
    d = np.array([4.0, 2.5, 6.0, 1.0])
    kp_r = np.array([[6.0, 5.0], [17.5, 11.0], [27.0, 9.0], [26.0, 13.0]])
    matches = np.array([0, 1, 3, -1], np.int32)  # left 3 is unmatched
    # (6, 5) - (10 - 4, 5) = 0;  (17.5, 11) - (17.5, 7) = 4;  (26, 13) - (24, 9) = sqrt(4 + 16)
    np.testing.assert_allclose(stereo_errors(kp_l, kp_r, matches, d), [0.0, 4.0, np.sqrt(20.0)])
    assert stereo_errors(kp_l, kp_r, np.full(4, -1, np.int32), d).shape == (0,)


# ---------------------------------------------------------------------------- a synthetic shifted pair

# left-image x of the marker keypoints, by ground-truth band (see shifted_pair)
RIGHT = (40, 60, 80, 100)  # d = 8: correct at every threshold
OFF_BY_3 = (135, 160)  # d = 5: 3 px off, correct from t = 3
UNKNOWN = (195, 220)  # d = inf
ZERO = (255, 280)  # d = 0


def markers(image: np.ndarray, max_keypoints: int) -> Keypoints:
    """Keypoints at the pixels of value 255 (diameter 8, angle 0), in raster order."""
    yx = np.argwhere(image == 255).astype(np.float64)
    n = len(yx)
    return Keypoints(yx[:, ::-1].copy(), np.full(n, 8.0), np.zeros(n), np.ones(n))


@pytest.fixture
def marker_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DETECTORS, "test-markers", DetectorEntry(markers))


def shifted_pair(folder: Path) -> tuple[Path, Path, Path]:
    """A 320x140 texture and the same texture shifted left by 8 px (the right image: x_r = x_l - 8),
    with 255-valued marker pixels at RIGHT, OFF_BY_3, UNKNOWN and ZERO; a disparity map that is 8
    up to x = 120, 5 up to 180, inf up to 240 and 0 beyond."""
    rng = np.random.default_rng(4)
    h, w = 140, 320
    tex = cv2.GaussianBlur(rng.normal(0, 1, (h, w + SHIFT)).astype(np.float32), (0, 0), 2.0)
    wide = np.clip(128 + 40 * tex / tex.std(), 0, 254).astype(np.uint8)
    for i, x in enumerate(RIGHT + OFF_BY_3 + UNKNOWN + ZERO):
        wide[40 + 7 * i, x] = 255
    left, right = wide[:, :w], wide[:, SHIFT:]
    disp = np.zeros((h, w), np.float32)
    disp[:, :120], disp[:, 120:180], disp[:, 180:240] = SHIFT, 5.0, np.inf
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "left.png"), left)
    cv2.imwrite(str(folder / "right.png"), right)
    np.save(folder / "disp.npy", disp)
    return folder / "left.png", folder / "right.png", folder / "disp.npy"


@pytest.mark.usefixtures("marker_detector")
def test_shifted_pair_exact_mma(tmp_path: Path) -> None:
    pair = open_stereo_pair(*shifted_pair(tmp_path))
    res = evaluate_stereo(pair, ["sift"], detector="test-markers", max_keypoints=0, device="cpu")
    m = res.models[0]
    # 10 markers left and right; the 4 without valid disparity (inf, 0) are left out before
    # matching; identical patches match their own shifted copies: 4 errors of 0 px, 2 of 3 px
    assert m["num_features"] == {"left": 10, "left_valid": 6, "right": 10}
    assert m["num_matches"] == 6
    assert m["mma"] == [4 / 6, 4 / 6] + [1.0] * 8
    assert res.thresholds == list(range(1, 11)) and res.mma_at(0, 3) == 1.0
    assert res.image_size == [320, 140] and res.valid_disparity == pytest.approx(180 / 320)
    assert res.disparity_sampling == "nearest"


@pytest.mark.usefixtures("marker_detector")
def test_cli_eval_stereo_on_files(tmp_path: Path) -> None:
    left, right, disp = shifted_pair(tmp_path)
    res = runner.invoke(app, ["eval", "stereo", str(left), str(right), str(disp), "-m", "SIFT=sift", "--detector",
                              "test-markers", "--max-keypoints", "0", "--device", "cpu", "--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["pair"] == "left" and doc["sources"]["disparity"] == str(disp)
    assert [m["name"] for m in doc["models"]] == ["SIFT"] and doc["models"][0]["mma"][:3] == [4 / 6, 4 / 6, 1.0]
    assert "MMA@3" in res.stderr and "nearest pixel" in res.stderr


def one_line_error(res, code: int, *needles: str) -> None:
    assert res.exit_code == code, (res.exit_code, res.output)
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in res.output, err
    for n in needles:
        assert n in err, err


def test_cli_eval_stereo_errors(tmp_path: Path) -> None:
    left, right, disp = shifted_pair(tmp_path)
    one_line_error(runner.invoke(app, ["eval", "stereo", "-m", "sift"]), 2, "--builtin")
    one_line_error(runner.invoke(app, ["eval", "stereo", str(left), str(right), str(disp), "--builtin", "motorcycle",
                                       "-m", "sift"]), 2, "not both")
    one_line_error(runner.invoke(app, ["eval", "stereo", "--builtin", "tsukuba", "-m", "sift"]), 2, "motorcycle")
    one_line_error(runner.invoke(app, ["eval", "stereo", str(left), str(right), str(tmp_path / "no.pfm"), "-m",
                                       "sift"]), 3, "no.pfm")
    one_line_error(runner.invoke(app, ["eval", "stereo", str(left), str(tmp_path / "r.png"), str(disp), "-m",
                                       "sift"]), 3, "r.png")
    np.save(tmp_path / "small.npy", np.ones((10, 10), np.float32))
    one_line_error(runner.invoke(app, ["eval", "stereo", str(left), str(right), str(tmp_path / "small.npy"), "-m",
                                       "sift"]), 2, "small.npy", "10x10")
    one_line_error(runner.invoke(app, ["eval", "stereo", str(left), str(right), str(disp)]), 2, "model")
    one_line_error(runner.invoke(app, ["eval", "stereo", str(left), str(right), str(disp), "-m", "sift", "--ratio",
                                       "1.5"]), 2, "ratio")


# ---------------------------------------------------------------------------- disparity files


def write_pfm(path: Path, arr: np.ndarray, little: bool = True) -> None:
    h, w = arr.shape
    body = np.ascontiguousarray(arr[::-1]).astype("<f4" if little else ">f4").tobytes()  # bottom row first
    path.write_bytes(f"Pf\n{w} {h}\n{-1.0 if little else 1.0}\n".encode() + body)


def test_disparity_formats(tmp_path: Path) -> None:
    want = np.array([[1.5, 2.0, np.inf], [0.0, 7.25, 3.0]], np.float32)
    np.save(tmp_path / "d.npy", want)
    np.savez(tmp_path / "d.npz", arr_0=want)
    write_pfm(tmp_path / "le.pfm", want)
    write_pfm(tmp_path / "be.pfm", want, little=False)
    for name in ("d.npy", "d.npz", "le.pfm", "be.pfm"):
        np.testing.assert_array_equal(read_disparity(tmp_path / name), want, err_msg=name)
    # a KITTI-style 16-bit PNG: 256 x disparity, 0 where unknown
    png = np.array([[384, 512, 0], [0, 1856, 768]], np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), png)
    np.testing.assert_array_equal(read_disparity(tmp_path / "d.png", 256), png / 256.0)
    np.testing.assert_array_equal(read_disparity(tmp_path / "d.npy", 2.0), want / 2)
    with pytest.raises(DataMissingError):
        read_disparity(tmp_path / "none.npy")
    (tmp_path / "d.txt").write_text("1 2")
    with pytest.raises(BadInputError, match="unknown disparity format"):
        read_disparity(tmp_path / "d.txt")
    (tmp_path / "bad.pfm").write_bytes(b"P6\n1 1\n255\n\0\0\0")
    with pytest.raises(BadInputError, match="not a PFM"):
        read_disparity(tmp_path / "bad.pfm")
    np.savez(tmp_path / "two.npz", a=want, b=want)
    with pytest.raises(BadInputError, match="one array"):
        read_disparity(tmp_path / "two.npz")
    with pytest.raises(BadInputError, match="scale"):
        read_disparity(tmp_path / "d.npy", 0.0)


# ---------------------------------------------------------------------------- the built-in pair


def test_builtin_motorcycle_is_scikit_images_pair() -> None:
    skdata = pytest.importorskip("skimage.data")
    left, right, disp = skdata.stereo_motorcycle()
    pair = open_stereo_pair(builtin="motorcycle")
    assert pair.left.shape == pair.right.shape == pair.disparity.shape == (500, 741)
    np.testing.assert_array_equal(pair.disparity, disp)  # inf where unknown
    np.testing.assert_array_equal(pair.left, cv2.cvtColor(left, cv2.COLOR_RGB2GRAY))
    np.testing.assert_array_equal(pair.right, cv2.cvtColor(right, cv2.COLOR_RGB2GRAY))


def test_cli_builtin_motorcycle_sign_convention() -> None:
    pytest.importorskip("skimage")
    res = runner.invoke(app, ["eval", "stereo", "--builtin", "motorcycle", "-m", "sift", "--max-keypoints", "300",
                              "--device", "cpu", "-q", "--json", "-"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)["models"][0]
    # x_r = x_l - d: with the opposite sign almost no match would be within 3 px
    assert m["num_matches"] > 100 and m["mma"][2] > 0.6
    assert m["num_features"]["left_valid"] < m["num_features"]["left"] == 300
