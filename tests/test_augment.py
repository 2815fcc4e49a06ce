"""On-device augmentation (self-tnet.md §5.3): conventions, shared flips, ranges, determinism.

``theta`` maps output pixel coordinates at twice the output resolution, ``(u, v, 1)``, to source
pixel coordinates in the un-padded input; pixel centres are integers. Its linear part is
``A^-1 diag(w, h) / 64`` (A = zoom R(angle) Shear_x, det R = det Shear = 1; w x h the crop in the
padded patch) and its translation places the crop inside the padded patch.
"""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from train_fixtures import one_torch_thread  # noqa: F401

from descbal.train.augment import (
    AugmentConfig,
    AugmentParams,
    apply_augment,
    identity_params,
    network_input,
    sample_params,
)

PLAIN = AugmentConfig(degrees=0.0, shear=0.0, scale=(1.0, 1.0), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), pad=0)
N = 4000

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def asymmetric_patches(n: int, seed: int = 0) -> np.ndarray:
    """(n, 64, 64) uint8 with no flip or transpose symmetry (a ramp plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    base = 2.0 * xx + 0.7 * yy
    return np.clip(base + rng.normal(0, 20, (n, 64, 64)), 0, 255).astype(np.uint8)


def block_mean(p: np.ndarray) -> np.ndarray:
    """The plain 64 -> 32 resize: 2x2 block means / 255. Shape: (B, 64, 64) -> (B, 32, 32)."""
    return p.reshape(len(p), 32, 2, 32, 2).astype(np.float64).mean(axis=(2, 4)) / 255.0


def draw(cfg: AugmentConfig, n: int = N, seed: int = 0, classes: int | None = None) -> AugmentParams:
    class_pos = np.arange(n) if classes is None else np.repeat(np.arange(classes), n // classes)
    return sample_params(cfg, class_pos, int(class_pos.max()) + 1, np.random.default_rng(seed))


def linear(theta: np.ndarray) -> np.ndarray:
    return theta[:, :, :2]


def test_identity_params_reproduce_the_plain_resize() -> None:
    p = asymmetric_patches(6)
    prm = identity_params(6)
    assert prm.theta.shape == (6, 2, 3) and not prm.flip.any() and not prm.transpose.any()
    out = apply_augment(torch.from_numpy(p), prm)
    assert out.shape == (6, 1, 32, 32) and out.dtype == torch.float32
    np.testing.assert_allclose(out[:, 0].numpy(), block_mean(p), atol=1e-6, rtol=0)


def test_network_input_units_and_plain_resize() -> None:
    """Grey level v becomes v x input_scale (HyNet 1/255, HardNet 1): a flat patch stays flat at
    that value; without params it is the plain resize."""
    flat = torch.full((2, 64, 64), 100, dtype=torch.uint8)
    torch.testing.assert_close(network_input(flat, None, 1.0 / 255.0), torch.full((2, 1, 32, 32), 100 / 255.0))
    torch.testing.assert_close(network_input(flat, None, 1.0), torch.full((2, 1, 32, 32), 100.0))
    p = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8))
    torch.testing.assert_close(network_input(p, None, 1.0), apply_augment(p, identity_params(3)) * 255.0)
    params = identity_params(3)
    params.flip[:] = True
    assert torch.equal(network_input(p, params, 1.0), network_input(p, None, 1.0).flip(-1))


def test_identity_params_other_sizes() -> None:
    """A 65x65 patch onto the 32x32 output: the same pixel-centre convention, scale 65/64."""
    prm = identity_params(1, in_size=65, out_size=32)
    s = 65 / 64
    np.testing.assert_allclose(prm.theta[0], [[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5]])
    # output pixel extents [-0.5, 63.5] map onto the input extents [-0.5, 64.5]
    for u, x in ((-0.5, -0.5), (63.5, 64.5)):
        assert prm.theta[0, 0, 0] * u + prm.theta[0, 0, 2] == pytest.approx(x)


def test_plain_config_gives_identity_maps() -> None:
    prm = draw(replace(PLAIN, flip_p=0.0, transpose_p=0.0), n=8)
    np.testing.assert_allclose(prm.theta, identity_params(8).theta, atol=1e-12)


def test_padding_is_edge_padding_with_bicubic_resampling() -> None:
    """Full crop of the 3-px edge-padded patch = OpenCV bicubic resize of the replicate-padded
    70x70 patch to 64x64, then the 2x2 box filter."""
    cfg = replace(PLAIN, pad=3, flip_p=0.0, transpose_p=0.0)
    p = asymmetric_patches(3, 1)
    out = apply_augment(torch.from_numpy(p), draw(cfg, n=3))[:, 0].numpy()
    for i in range(3):
        padded = cv2.copyMakeBorder(p[i], 3, 3, 3, 3, cv2.BORDER_REPLICATE).astype(np.float32) / 255.0
        big = cv2.resize(padded, (64, 64), interpolation=cv2.INTER_CUBIC)
        want = np.clip(big.reshape(32, 2, 32, 2).mean(axis=(1, 3)), 0, 1)
        np.testing.assert_allclose(out[i], want, atol=1e-5, rtol=0)


def test_flips_and_transposes_are_shared_by_a_class() -> None:
    p = asymmetric_patches(12, 2)
    plain = torch.from_numpy(block_mean(p)).float()
    class_pos = np.repeat(np.arange(4), 3)
    seen = set()
    for seed in range(12):
        prm = sample_params(PLAIN, class_pos, 4, np.random.default_rng(seed))
        out = apply_augment(torch.from_numpy(p), prm)[:, 0]
        for c in range(4):
            members = class_pos == c
            assert len(set(prm.flip[members])) == 1 and len(set(prm.transpose[members])) == 1
        for i in range(12):
            want = plain[i]
            if prm.transpose[i]:
                want = want.T
            if prm.flip[i]:
                want = want.flip(-1)  # horizontal: mirror the columns
            torch.testing.assert_close(out[i], want, atol=1e-6, rtol=0)
            seen.add((bool(prm.flip[i]), bool(prm.transpose[i])))
    assert len(seen) == 4  # all four combinations occur


def test_flip_and_transpose_probabilities() -> None:
    prm = draw(AugmentConfig(), n=N)
    assert abs(prm.flip.mean() - 0.5) < 0.04 and abs(prm.transpose.mean() - 0.5) < 0.04
    assert abs((prm.flip & prm.transpose).mean() - 0.25) < 0.04  # independent
    never = draw(replace(AugmentConfig(), flip_p=0.0, transpose_p=0.0), n=200)
    assert not never.flip.any() and not never.transpose.any()
    always = draw(replace(AugmentConfig(), flip_p=1.0, transpose_p=1.0), n=200)
    assert always.flip.all() and always.transpose.all()


def test_same_seed_same_params_and_output() -> None:
    p = torch.from_numpy(asymmetric_patches(9, 3))
    class_pos = np.repeat(np.arange(3), 3)
    a = sample_params(AugmentConfig(), class_pos, 3, np.random.default_rng([1, 2, 3]))
    b = sample_params(AugmentConfig(), class_pos, 3, np.random.default_rng([1, 2, 3]))
    c = sample_params(AugmentConfig(), class_pos, 3, np.random.default_rng([1, 2, 4]))
    np.testing.assert_array_equal(a.theta, b.theta)
    np.testing.assert_array_equal(a.flip, b.flip)
    np.testing.assert_array_equal(a.transpose, b.transpose)
    assert torch.equal(apply_augment(p, a), apply_augment(p, b))
    assert not np.array_equal(a.theta, c.theta)
    assert len({tuple(t.ravel()) for t in a.theta}) == 9  # the affine maps are drawn per patch


def test_rotation_range() -> None:
    prm = draw(replace(PLAIN, degrees=5.0))
    lin = linear(prm.theta)
    # a pure rotation: orthonormal, det 1
    np.testing.assert_allclose(lin @ lin.transpose(0, 2, 1), np.broadcast_to(np.eye(2), lin.shape), atol=1e-12)
    ang = np.degrees(np.arctan2(lin[:, 0, 1], lin[:, 0, 0]))
    assert np.abs(ang).max() <= 5.0 + 1e-9
    assert np.abs(ang).max() > 4.9 and ang.min() < -4.9  # the whole range, both signs
    assert abs(np.mean(np.abs(ang)) - 2.5) < 0.15  # uniform in [-5, 5]
    np.testing.assert_allclose(lin[:, 1, 0], -lin[:, 0, 1], atol=1e-12)


def test_zoom_range() -> None:
    prm = draw(replace(PLAIN, scale=(1.0, 1.14)))
    lin = linear(prm.theta)
    np.testing.assert_allclose(lin[:, 0, 1], 0, atol=1e-12)
    np.testing.assert_allclose(lin[:, 0, 0], lin[:, 1, 1])
    zoom = 1.0 / lin[:, 0, 0]  # zooming in samples a smaller source area
    assert zoom.min() >= 1.0 - 1e-12 and zoom.max() <= 1.14 + 1e-12
    assert zoom.min() < 1.005 and zoom.max() > 1.135


def test_shear_range() -> None:
    prm = draw(replace(PLAIN, shear=5.0))
    lin = linear(prm.theta)
    np.testing.assert_allclose(np.diagonal(lin, axis1=1, axis2=2), 1, atol=1e-12)
    np.testing.assert_allclose(lin[:, 1, 0], 0, atol=1e-12)
    sh = np.degrees(np.arctan(np.abs(lin[:, 0, 1])))
    assert sh.max() <= 5.0 + 1e-9 and sh.max() > 4.9


def test_crop_range() -> None:
    """RandomResizedCrop(32, scale=(0.9, 1), ratio=(0.9, 1.1)) of the 70x70 padded patch: integer
    crop sizes, area and aspect in range (up to rounding), the crop inside the padded patch."""
    pad = 3
    prm = draw(replace(PLAIN, pad=pad, crop_scale=(0.9, 1.0), crop_ratio=(0.9, 1.1)))
    lin = linear(prm.theta)
    np.testing.assert_allclose(lin[:, 0, 1], 0, atol=1e-12)
    w, h = 64 * lin[:, 0, 0], 64 * lin[:, 1, 1]
    np.testing.assert_allclose(w, np.rint(w), atol=1e-9)
    np.testing.assert_allclose(h, np.rint(h), atol=1e-9)
    area = w * h / 70**2
    assert area.min() >= 0.9 - 0.02 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() >= 0.9 - 0.03 and ratio.max() <= 1.1 + 0.03
    assert ratio.min() < 0.93 and ratio.max() > 1.07
    # the crop window in un-padded pixel coordinates, from the output extents [-0.5, 63.5]
    lo_x = prm.theta[:, 0, 2] - 0.5 * lin[:, 0, 0]
    hi_x = prm.theta[:, 0, 2] + 63.5 * lin[:, 0, 0]
    lo_y = prm.theta[:, 1, 2] - 0.5 * lin[:, 1, 1]
    hi_y = prm.theta[:, 1, 2] + 63.5 * lin[:, 1, 1]
    np.testing.assert_allclose(hi_x - lo_x, w)
    for lo, hi in ((lo_x, hi_x), (lo_y, hi_y)):
        assert lo.min() >= -0.5 - pad - 1e-9 and hi.max() <= 63.5 + pad + 1e-9
        assert lo.min() < -0.5 - pad + 0.5  # the crop reaches the padded border sometimes
        np.testing.assert_allclose(lo + 0.5 + pad, np.rint(lo + 0.5 + pad), atol=1e-9)  # integer offsets


def test_full_config_determinant_and_centre() -> None:
    """With every knob on, det(theta) = w h / (64 zoom)^2; with a full crop the affine map keeps
    the patch centre (rotation, zoom and shear are about the centre)."""
    cfg = AugmentConfig()
    prm = draw(cfg)
    det = np.linalg.det(linear(prm.theta))
    lo = 0.9 * 70**2 * 0.97 / (64 * 1.14) ** 2
    hi = 70**2 / 64**2
    assert det.min() >= lo and det.max() <= hi + 1e-9
    full = draw(replace(cfg, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)))
    centre = full.theta @ np.array([31.5, 31.5, 1.0])
    np.testing.assert_allclose(centre, 31.5, atol=1e-9)
    lin = linear(full.theta) * 64 / 70  # undo the crop scale: A^-1 alone
    zoom = 1 / np.sqrt(np.linalg.det(lin))
    assert zoom.min() >= 1 - 1e-9 and zoom.max() <= 1.14 + 1e-9


@pytest.mark.parametrize("seed", [0, 1])
def test_output_range_shape_and_device_independence(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 256, (10, 64, 64), dtype=np.uint8)
    p[0] = 0
    p[1] = 255
    p[2] = (np.indices((64, 64)).sum(0) % 2) * 255  # a checkerboard makes bicubic overshoot
    prm = draw(AugmentConfig(), n=10, seed=seed)
    out = apply_augment(torch.from_numpy(p), prm)
    assert out.shape == (10, 1, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[0], torch.zeros(1, 32, 32))
    torch.testing.assert_close(out[1], torch.ones(1, 32, 32), atol=1e-6, rtol=0)
    assert math.isclose(float(out[2].mean()), 0.5, abs_tol=0.05)


def test_out_size() -> None:
    cfg = replace(PLAIN, out_size=16)
    p = asymmetric_patches(2, 5)
    prm = sample_params(cfg, np.arange(2), 2, np.random.default_rng(0), in_size=64)
    out = apply_augment(torch.from_numpy(p), prm, out_size=16)
    assert out.shape == (2, 1, 16, 16)
    want = p.reshape(2, 16, 4, 16, 4).astype(np.float64).mean(axis=(2, 4)) / 255.0
    # bicubic at half-pixel positions is not a box filter: compare loosely (same image, same orientation)
    got = out[:, 0].numpy()
    for i in range(2):
        if prm.transpose[i]:
            got[i] = got[i].T
        if prm.flip[i]:
            got[i] = got[i][:, ::-1]
    assert np.abs(got - want).mean() < 0.03
