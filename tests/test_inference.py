"""Inference copies: BatchNorm folding, in-place activations, the two-pass FRN, and that the copy
computes what the model computes without touching the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from train_fixtures import one_torch_thread, trained_like  # noqa: F401

from descbal.models import MODELS, build_model
from descbal.models.inference import fold_batchnorm, inference_copy, prepare_input
from descbal.models.layers import FRN, TLU, _FRNScale

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCHS = sorted(n for n, cls in MODELS.items() if cls.__module__.startswith("descbal."))


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("conv_bias", [False, True])
def test_fold_batchnorm_equals_conv_then_batchnorm(affine: bool, conv_bias: bool) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=conv_bias)
    bn = nn.BatchNorm2d(5, affine=affine, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0]))
        bn.running_var.copy_(torch.tensor([0.25, 4.0, 1.0, 9.0, 0.01]))
        if affine:
            bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5]))
            bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3, 0.0, 1.0]))
    bn.eval()
    x = torch.randn(4, 3, 9, 9)
    folded = fold_batchnorm(conv, bn)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), atol=1e-5, rtol=1e-5)
    # hand-computed channel 1 of a 1x1 case: (w x + b - mean) * g / sqrt(var + eps) + beta
    c1 = nn.Conv2d(1, 1, 1, bias=True)
    b1 = nn.BatchNorm2d(1).eval()
    with torch.no_grad():
        c1.weight.fill_(2.0)
        c1.bias.fill_(1.0)  # type: ignore[union-attr]
        b1.running_mean.fill_(3.0)
        b1.running_var.fill_(4.0 - 1e-5)
        b1.weight.fill_(6.0)
        b1.bias.fill_(0.5)
        y = fold_batchnorm(c1, b1)(torch.full((1, 1, 1, 1), 5.0))
    assert y.item() == pytest.approx((2 * 5 + 1 - 3) * 6 / 2 + 0.5)


@pytest.mark.parametrize("name", ARCHS)
def test_inference_copy_computes_the_same_descriptors(name: str) -> None:
    m = trained_like(name)
    x = torch.rand(9, 1, 32, 32) * float(m.input_scale) * 255
    fast = inference_copy(m, "cpu")
    with torch.no_grad():
        want = m(x)
        got = fast(prepare_input(x))
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(fast(prepare_input(x[:2])), want[:2], atol=2e-6, rtol=1e-5)  # batches independent
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in fast.modules() if name != "tfeat")
    assert fast.input_scale == m.input_scale and fast.config == m.config  # type: ignore[attr-defined]


def test_inference_copy_leaves_the_model_alone_and_is_reused() -> None:
    m = trained_like("hynet").train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fast = inference_copy(m)
    assert not fast.training and m.training
    assert all(not p.requires_grad for p in fast.parameters()) and all(p.requires_grad for p in m.parameters())
    assert all(t.inplace for t in fast.modules() if isinstance(t, TLU))
    assert not any(t.inplace for t in m.modules() if isinstance(t, TLU))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert inference_copy(fast, "cpu") is fast  # already one for this device
    assert inference_copy(m) is not fast


def test_in_place_only_where_the_input_is_a_temporary() -> None:
    """A ReLU fed by the Sequential's input (or after a Dropout, which returns its input in eval
    mode) must not overwrite the caller's tensor."""
    seq = nn.Sequential(nn.ReLU(), nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Dropout(0.5), nn.ReLU())
    fast = inference_copy(seq, "cpu")
    assert [type(mod).__name__ for mod in fast] == ["ReLU", "Conv2d", "Identity", "ReLU", "Dropout", "ReLU"]
    assert [getattr(mod, "inplace", None) for mod in fast] == [False, None, None, True, False, False]
    x = torch.randn(2, 1, 4, 4)
    keep = x.clone()
    with torch.no_grad():
        fast(x)
    assert torch.equal(x, keep)


def test_tlu_in_place_only_without_gradients() -> None:
    t = TLU(2, inplace=True)
    x = torch.tensor([[[[-3.0]], [[0.5]]]], requires_grad=True)
    y = t(x)  # recording a graph: out of place
    assert torch.equal(x.detach(), torch.tensor([[[[-3.0]], [[0.5]]]]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([[[[0.0]], [[1.0]]]]))
    z = torch.tensor([[[[-3.0]], [[0.5]]]])
    with torch.no_grad():
        out = t(z)
    assert out is z and torch.equal(z, torch.tensor([[[[-1.0]], [[0.5]]]]))


def test_frn_two_pass_forward_matches_the_formula_in_value_and_gradient() -> None:
    torch.manual_seed(2)
    f = FRN(3)
    with torch.no_grad():
        f.weight.copy_(torch.tensor([1.0, -0.5, 2.0]).view(1, 3, 1, 1))
        f.bias.copy_(torch.tensor([0.0, 0.25, -1.0]).view(1, 3, 1, 1))
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    x[1, 2] = 0.0  # an all-zero channel: eps keeps it finite
    f = f.double()
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    w2 = f.weight.detach().clone().requires_grad_(True)
    b2 = f.bias.detach().clone().requires_grad_(True)
    y1 = f(x1)
    y2 = x2 / torch.sqrt(x2.pow(2).mean(dim=(2, 3), keepdim=True) + 1e-6) * w2 + b2
    torch.testing.assert_close(y1, y2)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert torch.isfinite(x1.grad).all()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(f.weight.grad, w2.grad)
    torch.testing.assert_close(f.bias.grad, b2.grad)
    # gradients in x, gamma and beta at once, against finite differences
    assert torch.autograd.gradcheck(lambda t, w, b: _FRNScale.apply(t, w, b, f.eps, torch.float64),
                                    (torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True),
                                     f.weight.detach().clone().requires_grad_(True),
                                     f.bias.detach().clone().requires_grad_(True)))
    nb = FRN(3, bias=False).double()
    assert torch.autograd.gradcheck(lambda t: nb(t), (torch.randn(1, 3, 3, 3, dtype=torch.float64, requires_grad=True),))



def test_frn_dtype_promotes_like_before_unless_keep_dtype() -> None:
    """Training under bfloat16 autocast sees float32 FRN outputs (as with the five-pass form);
    inference copies keep bfloat16 activations."""
    x = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    f = FRN(3)
    xg = x.clone().requires_grad_(True)
    yg = f(xg)  # the training path (closed-form backward)
    yg.sum().backward()
    assert yg.dtype == torch.float32 and xg.grad.dtype == torch.bfloat16 and f.weight.grad.dtype == torch.float32
    with torch.no_grad():
        assert f(x).dtype == torch.float32
        torch.testing.assert_close(f(x), yg.detach())
        f.keep_dtype = True
        y = f(x)
    assert y.dtype == torch.bfloat16
    want = x.float() / torch.sqrt(x.float().pow(2).mean(dim=(2, 3), keepdim=True) + 1e-6)
    torch.testing.assert_close(y.float(), want, atol=0.05, rtol=0.02)
    fast = inference_copy(build_model("hynet"), "cpu")
    assert all(m.keep_dtype for m in fast.modules() if isinstance(m, FRN))
