"""Describing uint8 patches: the bit-exact OpenCV resize and the mode handling of describe()."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from train_fixtures import one_torch_thread, trained_like  # noqa: F401

from descbal.data.hpatches_data import read_patch_column
from descbal.models.describe import describe, resize_linear_u8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cv2_resize(patches: np.ndarray, size: int = 32) -> np.ndarray:
    return np.stack([cv2.resize(p, (size, size), interpolation=cv2.INTER_LINEAR) for p in patches])


def test_resize_65_matches_opencv_on_real_hpatches(shared_data: Path) -> None:
    path = shared_data / "hpatches-patches" / "ref.png"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    patches = read_patch_column(path)
    assert patches.shape == (1123, 65, 65)
    got = resize_linear_u8(patches)
    assert got.dtype == np.uint8 and got.shape == (1123, 32, 32)
    np.testing.assert_array_equal(got, cv2_resize(patches))


@pytest.mark.parametrize("size", [65, 64])
def test_resize_matches_opencv_on_random_patches(size: int) -> None:
    rng = np.random.default_rng(size)
    noise = rng.integers(0, 256, (300, size, size), dtype=np.uint8)
    # extremes and smooth ramps exercise the rounding of the fixed-point path
    ramp = np.broadcast_to(np.arange(size, dtype=np.float64) * 255 / (size - 1), (size, size))
    special = np.stack([np.zeros((size, size)), np.full((size, size), 255), ramp, ramp.T, 255 - ramp,
                        (np.indices((size, size)).sum(0) % 2) * 255]).astype(np.uint8)
    for batch in (noise, special):
        np.testing.assert_array_equal(resize_linear_u8(batch), cv2_resize(batch))


def test_resize_64_is_rounded_block_mean() -> None:
    rng = np.random.default_rng(1)
    p = rng.integers(0, 256, (50, 64, 64), dtype=np.uint8)
    s = p.reshape(50, 32, 2, 32, 2).astype(np.int64).sum(axis=(2, 4))
    np.testing.assert_array_equal(resize_linear_u8(p), ((s + 2) // 4).astype(np.uint8))


def test_resize_other_sizes_fall_back_to_opencv() -> None:
    rng = np.random.default_rng(2)
    for size in (48, 70):
        p = rng.integers(0, 256, (5, size, size), dtype=np.uint8)
        np.testing.assert_array_equal(resize_linear_u8(p), cv2_resize(p))
    p = rng.integers(0, 256, (3, 65, 65), dtype=np.uint8)
    np.testing.assert_array_equal(resize_linear_u8(p, size=16), cv2_resize(p, 16))


@pytest.mark.parametrize("train_mode", [True, False])
@pytest.mark.parametrize("name", ["hynet", "tfeat"])
def test_describe_uses_eval_mode_and_restores_the_mode(name: str, train_mode: bool) -> None:
    m = trained_like(name)
    m.train(train_mode)
    rng = np.random.default_rng(3)
    patches = rng.integers(0, 256, (7, 64, 64), dtype=np.uint8)
    a = describe(m, patches)
    assert m.training is train_mode
    for mod in m.modules():
        assert mod.training is train_mode
    b = describe(m, patches, batch_size=3)  # eval mode: batches do not interact
    assert a.shape == (7, 128) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    x = torch.from_numpy(resize_linear_u8(patches)).float().unsqueeze(1) * float(m.input_scale)
    m.eval()
    with torch.no_grad():
        want = m(x).numpy()
    np.testing.assert_allclose(a, want, atol=1e-5, rtol=0)
    if name == "hynet":
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)


def test_describe_does_not_update_running_statistics() -> None:
    m = trained_like("hardnet").train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    describe(m, np.random.default_rng(0).integers(0, 256, (9, 32, 32), dtype=np.uint8))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_describe_sizes_and_scale() -> None:
    """65x65 (HPatches) and 64x64 (Brown) patches are resized first; 32x32 are used as they are;
    the uint8 values are multiplied by ``input_scale``."""
    m = trained_like("sosnet").eval()
    rng = np.random.default_rng(4)
    for size in (65, 64, 32):
        p = rng.integers(0, 256, (4, size, size), dtype=np.uint8)
        small = p if size == 32 else resize_linear_u8(p)
        with torch.no_grad():
            want = m(torch.from_numpy(small).float().unsqueeze(1) / 255.0).numpy()
        np.testing.assert_allclose(describe(m, p), want, atol=1e-5, rtol=0)
    m.input_scale = 1.0  # type: ignore[assignment]
    p = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    with torch.no_grad():
        want = m(torch.from_numpy(p).float().unsqueeze(1)).numpy()
    np.testing.assert_allclose(describe(m, p), want, atol=1e-5, rtol=0)


def test_describe_runs_a_copy_on_the_requested_device_and_leaves_the_model_alone() -> None:
    """``describe(..., device=d)`` runs the model's parameters and inputs on ``d`` (a CUDA run once
    failed with a CPU model and CUDA inputs) through an inference copy; the caller's model keeps
    its tensors, mode and device."""
    seen: list[tuple[int, str, str]] = []

    class Recording(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(32 * 32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((id(self), str(x.device), str(self.lin.weight.device)))
            return self.lin(x.flatten(1))

    m = Recording().train()
    weight = m.lin.weight
    out = describe(m, np.zeros((3, 32, 32), np.uint8), device="cpu")
    assert out.shape == (3, 4)
    assert [(d, w) for _, d, w in seen] == [("cpu", "cpu")]
    assert seen[0][0] != id(m)  # a copy ran
    assert m.lin.weight is weight and m.training and weight.requires_grad
