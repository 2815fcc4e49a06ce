"""Keypoint-to-patch geometry pins and the self-supervised pool builder (``cache images``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from descbal.cli import app
from descbal.data.patchset import load_patchset
from descbal.data.selfsup import PoolConfig, build_pool, cache_images
from descbal.errors import BadInputError
from descbal.geometry import PatchGeometry, build_pyramid, decode_keypoints, patch_affines, sample_warped_patches
from descbal.train.sampler import ClassBatchSampler

runner = CliRunner()
RAMP = np.arange(25, dtype=np.float32).reshape(5, 5)


def sample(img: np.ndarray, aff: np.ndarray, p: int) -> np.ndarray:
    g = np.arange(p, dtype=np.float64)
    u, v = np.meshgrid(g, g)
    x = aff[0, 0] * u + aff[0, 1] * v + aff[0, 2]
    y = aff[1, 0] * u + aff[1, 1] * v + aff[1, 2]
    return cv2.remap(img, x.astype(np.float32), y.astype(np.float32), cv2.INTER_LINEAR)


def test_centre_2_scale_1_reproduces_the_ramp() -> None:
    # A 5-pixel patch covering mag * diameter = 5 image pixels around (2, 2) is the image itself.
    geo = PatchGeometry(mag=5.0)
    aff = patch_affines(np.array([[2.0, 2.0]]), np.array([1.0]), np.array([0.0]), geo, 5)[0]
    np.testing.assert_allclose(aff, [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(sample(RAMP, aff, 5), RAMP)


def test_sigma_and_corner_conventions() -> None:
    a = patch_affines(np.array([[2.0, 2.0]]), np.array([0.5]), np.array([0.0]),
                      PatchGeometry(mag=5.0, size_kind="sigma"), 5)[0]
    np.testing.assert_allclose(a, [[1, 0, 0], [0, 1, 0]])  # sigma 0.5 = diameter 1
    b = patch_affines(np.array([[2.5, 2.5]]), np.array([1.0]), np.array([0.0]),
                      PatchGeometry(mag=5.0, pixel_origin="corner"), 5)[0]
    np.testing.assert_allclose(b, [[1, 0, 0], [0, 1, 0]])  # (2.5, 2.5) is pixel (2, 2)'s centre


def test_angle_sign_and_unit() -> None:
    # +90 deg (OpenCV: clockwise in y-down coordinates): the patch's x axis points down the image.
    a = patch_affines(np.array([[2.0, 2.0]]), np.array([1.0]), np.array([90.0]), PatchGeometry(mag=5.0), 5)[0]
    np.testing.assert_allclose(a[:, :2], [[0, -1], [1, 0]], atol=1e-12)
    # patch (u, v) samples image (x, y) = (4 - v, u): patch[v, u] = RAMP[u, 4 - v], i.e. the image
    # content turned a quarter counter-clockwise, undoing the keypoint's clockwise orientation.
    np.testing.assert_allclose(sample(RAMP, a, 5), RAMP.T[::-1, :], atol=1e-4)
    r = patch_affines(np.array([[2.0, 2.0]]), np.array([1.0]), np.array([np.pi / 2]),
                      PatchGeometry(mag=5.0, angle_unit="rad"), 5)[0]
    np.testing.assert_allclose(r, a, atol=1e-12)
    up = patch_affines(np.array([[2.0, 2.0]]), np.array([1.0]), np.array([90.0]), PatchGeometry(mag=5.0, upright=True), 5)
    np.testing.assert_allclose(up[0], [[1, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError):
        PatchGeometry(size_kind="radius")


def test_decode_keypoints_gives_opencv_terms_and_the_patch_rotation() -> None:
    # sigma 3.2 = diameter 6.4; corner origin (40.5, 30.5) = pixel centre (40, 30); -30 deg in the
    # opposite sense is OpenCV's 330; the patch turns by -pi/6 (unwrapped)
    f = decode_keypoints(np.array([[40.5, 30.5]]), np.array([3.2]), np.array([30.0]),
                         PatchGeometry(size_kind="sigma", pixel_origin="corner", angle_sign=-1.0))
    np.testing.assert_array_equal(f.xy, [[40.0, 30.0]])
    assert f.diameter[0] == 6.4 and f.angle[0] == 330.0 and f.theta[0] == -np.pi / 6
    r = decode_keypoints(np.array([[1.0, 2.0]]), np.array([5.0]), np.array([2.5 * np.pi]), PatchGeometry(angle_unit="rad"))
    assert r.angle[0] == pytest.approx(90.0) and r.theta[0] == 2.5 * np.pi and r.diameter[0] == 5.0
    up = decode_keypoints(np.array([[1.0, 2.0]]), np.array([5.0]), np.array([77.0]), PatchGeometry(upright=True))
    assert up.angle[0] == 0.0 and up.theta[0] == 0.0


def test_opencv_keypoints_and_stored_features_read_the_geometry_like_patches() -> None:
    from descbal.detectors import Keypoints
    from descbal.extract.describers import opencv_keypoints

    geo = PatchGeometry(size_kind="sigma", pixel_origin="corner", angle_sign=-1.0)
    k = opencv_keypoints(Keypoints(np.array([[40.5, 30.5]]), np.array([3.2]), np.array([30.0]), np.array([1.0])), geo)[0]
    assert k.pt == (40.0, 30.0) and k.size == pytest.approx(6.4) and k.angle == pytest.approx(330.0)
    # the patch of the same keypoint: centred on (40, 30), side 5 x 6.4 px, x axis at -30 deg
    a = patch_affines(np.array([[40.5, 30.5]]), np.array([3.2]), np.array([30.0]), geo, 32)[0]
    s = 5 * 6.4 / 32
    np.testing.assert_allclose(a[:, :2], s * np.array([[np.cos(np.pi / 6), np.sin(np.pi / 6)],
                                                       [-np.sin(np.pi / 6), np.cos(np.pi / 6)]]), atol=1e-12)
    np.testing.assert_allclose(a @ [15.5, 15.5, 1], [40.0, 30.0], atol=1e-12)


def test_warped_patches_in_one_batch_equal_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import descbal.geometry as geometry

    rng = np.random.default_rng(0)
    pyr = build_pyramid(cv2.GaussianBlur(rng.integers(0, 256, (120, 150), dtype=np.uint8), (0, 0), 1.0))
    n = 40
    scale, th = rng.uniform(0.3, 9.0, n), rng.uniform(0, 7, n)  # levels 0..3, borders crossed
    a = np.zeros((n, 2, 3))
    cos, sin = scale * np.cos(th), scale * np.sin(th)
    a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1] = cos, -sin, sin, cos
    a[:, :, 2] = rng.uniform(-20, 160, (n, 2))
    hm = np.array([[1.05, 0.04, 2.0], [-0.03, 0.97, -3.0], [1e-4, -2e-4, 1.0]])
    for h in (None, hm):
        one = np.stack([sample_warped_patches(pyr, a[i : i + 1], h, scale[i : i + 1], 33)[0] for i in range(n)])
        np.testing.assert_array_equal(sample_warped_patches(pyr, a, h, scale, 33), one)
        monkeypatch.setattr(geometry, "REMAP_ROWS", 33 * 7)  # chunks of 7 patches
        np.testing.assert_array_equal(sample_warped_patches(pyr, a, h, scale, 33), one)
        monkeypatch.undo()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    d = tmp_path_factory.mktemp("photos")
    for name in ("lft__01.png", "mods__roofs1.jpg", "d2net__pair_1_1.jpg"):
        shutil.copy(shared_data / "train-pool" / name, d / name)
    return d


SMALL = PoolConfig(max_keypoints=40, views=3, pairs=200, holdout_fraction=0.34)


def test_pool_schema_determinism_and_holdout(photos: Path) -> None:
    a, skipped = build_pool(photos, SMALL)
    b, _ = build_pool(photos, SMALL)
    assert skipped == []
    np.testing.assert_array_equal(a.patches, b.patches)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.patches.dtype == np.uint8 and a.patches.shape[1:] == (64, 64)
    counts = np.bincount(a.labels)
    assert counts[counts > 0].min() >= 2 and counts.max() <= 3
    assert a.holdout is not None and 0 < a.holdout.sum() < len(a)
    assert a.pairs is not None and len(a.pairs) == 200 and a.pairs[:, 2].sum() == 100
    assert np.all(a.holdout[a.pairs[:, 0]]) and np.all(a.holdout[a.pairs[:, 1]])
    same = a.labels[a.pairs[:, 0]] == a.labels[a.pairs[:, 1]]
    np.testing.assert_array_equal(same, a.pairs[:, 2] == 1)
    assert a.geometry == SMALL.geometry and a.near is None
    c, _ = build_pool(photos, PoolConfig(**{**SMALL.__dict__, "seed": 1}))
    assert not np.array_equal(c.patches[:50], a.patches[:50])


def test_views_of_a_keypoint_look_alike(photos: Path) -> None:
    ps, _ = build_pool(photos, SMALL)
    x = ps.patches.reshape(len(ps), -1).astype(np.float64)
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    order = np.argsort(ps.labels, kind="stable")
    start = np.unique(ps.labels[order], return_index=True)[1]
    first, second = order[start], order[start + 1]  # every class has >= 2 patches
    ok = ps.labels[second] == ps.labels[first]
    assert ok.all()
    same = np.mean(np.sum(x[first[ok]] * x[second[ok]], 1)) / x.shape[1]
    rng = np.random.default_rng(0)
    other = rng.permutation(first[ok])
    diff = np.mean(np.sum(x[first[ok]] * x[other], 1)) / x.shape[1]
    assert same > 0.5 and same > diff + 0.4


def test_sampler_never_draws_holdout(photos: Path) -> None:
    ps, _ = build_pool(photos, SMALL)
    s = ClassBatchSampler(ps.labels, 16, 2, seed=0, usable=~ps.holdout)
    for i in range(30):
        assert not ps.holdout[s.batch(0, i).indices].any()


def test_cache_images_cli_idempotent_and_skips(photos: Path, tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    shutil.copytree(photos, d)
    (d / "broken.jpg").write_bytes(b"not an image")
    cv2.imwrite(str(d / "tiny.png"), np.zeros((30, 30), np.uint8))
    out = tmp_path / "pool.h5"
    args = ["cache", "images", str(d), "--out", str(out), "--max-keypoints", "30", "--views", "2", "-q", "--json", "-"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {s["path"] for s in doc["skipped_images"]} == {"broken.jpg", "tiny.png"}
    assert load_patchset(out).holdout is not None
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["skipped"] is True
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.jpg").write_bytes(b"junk")
    res = runner.invoke(app, ["cache", "images", str(empty), "--out", str(tmp_path / "e.h5")])
    assert res.exit_code == 2 and "no usable photo" in res.output
    with pytest.raises(BadInputError):
        cache_images(empty, tmp_path / "e.h5")


@pytest.mark.parametrize(("field", "value", "message"), [("views", 1, "views must be at least 2"),
                                                         ("max_keypoints", 0, "max_keypoints must be at least 1"),
                                                         ("holdout_fraction", 1.0, "holdout fraction")])
def test_pool_config_rejects_bad_values(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PoolConfig(**{field: value})


def test_cache_images_cli_reports_bad_views_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from descbal.cli import app

    res = CliRunner().invoke(app, ["cache", "images", str(tmp_path), "--out", str(tmp_path / "p.h5"), "--views", "1"])
    assert res.exit_code == 2
    assert "views must be at least 2" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "p.h5").exists()
