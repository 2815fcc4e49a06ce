"""Descriptor networks: shapes, HyNet's size and initialisation, modes, checkpoints, published weights."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from train_fixtures import one_torch_thread, trained_like  # noqa: F401

import descbal
from descbal.errors import BadInputError, DataMissingError
from descbal.models import MODELS, build_model, load, save_checkpoint
from descbal.models.checkpoint import read_checkpoint, recognise, resolve_path
from descbal.models.hynet import HyNet
from descbal.models.layers import FRN, TLU

# the package's own models (other test modules may register toy models in the same registry)
ARCHS = sorted(n for n, cls in MODELS.items() if cls.__module__.startswith("descbal."))
NORMALISED = [a for a in ARCHS if a != "tfeat"]  # TFeat's release outputs are not unit vectors
TFEAT_SETS = ("liberty", "notredame", "yosemite")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def patches(n: int = 6, seed: int = 0, scale: float = 1.0 / 255.0) -> torch.Tensor:
    """(n, 1, 32, 32) float32 random grey patches, intensities times ``scale``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 32, 32), generator=g).float() * scale


def same_outputs(a: nn.Module, b: nn.Module) -> None:
    a.eval()
    b.eval()
    x = patches(5, 42, float(a.input_scale))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# ---------------------------------------------------------------------------- shapes and modes


def test_registry_holds_the_four_published_architectures() -> None:
    assert {"hynet", "hardnet", "sosnet", "tfeat"} <= set(MODELS)
    for name, cls in MODELS.items():
        assert cls.arch == name  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="hynet"):
        build_model("no-such-net")


@pytest.mark.parametrize("name", ARCHS)
def test_shape_contract(name: str) -> None:
    m = build_model(name).eval()
    with torch.no_grad():
        out = m(patches(5, 1, float(m.input_scale)))
    assert out.shape == (5, 128) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if name in NORMALISED:
        torch.testing.assert_close(out.norm(dim=1), torch.ones(5), atol=1e-5, rtol=0)
    assert isinstance(m.input_scale, float) and m.input_scale > 0


@pytest.mark.parametrize("name", ["hynet", "hardnet", "sosnet"])
def test_descriptor_dimension_is_configurable(name: str) -> None:
    m = build_model(name, dim=64).eval()
    with torch.no_grad():
        out = m(patches(3))
    assert out.shape == (3, 64)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ARCHS)
def test_eval_mode_is_deterministic_and_per_sample(name: str) -> None:
    m = trained_like(name, 3)
    x = patches(6, 2, float(m.input_scale))
    with torch.no_grad():
        a, b = m(x), m(x)
        # eval mode: no batch statistics, so a sample's descriptor does not depend on its batch
        alone = m(x[2:3])
    assert torch.equal(a, b)
    torch.testing.assert_close(alone[0], a[2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["hynet", "hardnet", "sosnet"])
def test_train_mode_dropout_changes_outputs(name: str) -> None:
    x = patches(6, 5)
    torch.manual_seed(0)
    m = build_model(name, dropout=0.3).train()
    a, b = m(x), m(x)
    assert not torch.allclose(a, b)
    # without dropout, train mode (batch statistics) is deterministic too
    torch.manual_seed(0)
    m0 = build_model(name, dropout=0.0).train()
    assert torch.equal(m0(x), m0(x))


def test_tfeat_has_no_dropout() -> None:
    m = build_model("tfeat").train()
    x = patches(4, 1, 1.0)
    assert torch.equal(m(x), m(x))


# ---------------------------------------------------------------------------- HyNet


def test_hynet_size_and_layout() -> None:
    m = HyNet()
    assert sum(p.numel() for p in m.parameters()) == 1_336_355  # about 1.34 M (self-tnet.md §5.1)
    assert m.config == {"dim": 128, "dropout": 0.3, "init_gain": 0.6, "init_bias": 0.01}
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 32, (3, 3), (1, 1)), (32, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (2, 2)), (64, 64, (3, 3), (1, 1)),
        (64, 128, (3, 3), (2, 2)), (128, 128, (3, 3), (1, 1)), (128, 128, (8, 8), (1, 1))]
    assert convs[-1].bias is None and all(c.bias is not None for c in convs[:-1])
    drop = [mod for mod in m.modules() if isinstance(mod, nn.Dropout)]
    assert len(drop) == 1 and drop[0].p == 0.3
    assert isinstance(m.layer1[0], FRN) and isinstance(m.layer1[1], TLU)  # the input normalisation layer


def test_hynet_initialisation() -> None:
    torch.manual_seed(11)
    m = HyNet()
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    for c in convs:
        w = c.weight.detach().reshape(c.out_channels, -1).double()
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w  # orthogonal rows (or columns) times 0.6
        torch.testing.assert_close(gram, 0.36 * torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
        if c.bias is not None:
            assert torch.equal(c.bias.detach(), torch.full_like(c.bias, 0.01))
    frns = [mod for mod in m.modules() if isinstance(mod, FRN)]
    tlus = [mod for mod in m.modules() if isinstance(mod, TLU)]
    assert len(frns) == len(tlus) == 7
    for f in frns:
        assert torch.equal(f.weight.detach(), torch.ones_like(f.weight))
        assert f.bias is not None and torch.equal(f.bias.detach(), torch.zeros_like(f.bias))
        assert "eps" in dict(f.named_buffers()) and "eps" not in dict(f.named_parameters())
    for t in tlus:
        assert torch.equal(t.tau.detach(), torch.full_like(t.tau, -1.0))
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert len(bns) == 1 and not bns[0].affine and bns[0].weight is None and bns[0].bias is None


def test_hynet_init_options() -> None:
    m = HyNet(dropout=0.2, init_gain=1.0, init_bias=0.0)
    conv = m.layer2[0]
    w = conv.weight.detach().reshape(32, -1).double()
    torch.testing.assert_close(w @ w.T, torch.eye(32, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.equal(conv.bias.detach(), torch.zeros(32))
    assert m.layer7[0].p == 0.2


def test_frn_and_tlu_formulas() -> None:
    x = torch.randn(3, 4, 5, 5)
    f = FRN(4)
    with torch.no_grad():
        f.weight.copy_(torch.arange(1.0, 5.0).view(1, 4, 1, 1))
        f.bias.copy_(torch.full((1, 4, 1, 1), 0.5))
    want = x / torch.sqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + 1e-6) * f.weight + f.bias
    torch.testing.assert_close(f(x), want)
    t = TLU(4)
    assert torch.equal(t(x), torch.maximum(x, torch.tensor(-1.0)))


def test_tlu_gradient_in_closed_form() -> None:
    """d max(x, tau)/dx = [x > tau], d/dtau = [x <= tau] summed over batch and space (ties go
    to tau); a NaN input stays NaN."""
    t = TLU(2)
    with torch.no_grad():
        t.tau.copy_(torch.tensor([-1.0, 0.5]).view(1, 2, 1, 1))
    x = torch.tensor([[[[-2.0, 0.0]], [[0.5, 3.0]]], [[[-1.0, -5.0]], [[1.0, -4.0]]]], requires_grad=True)
    g = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]], [[[5.0, 6.0]], [[7.0, 8.0]]]])
    y = t(x)
    assert torch.equal(y.detach(), torch.tensor([[[[-1.0, 0.0]], [[0.5, 3.0]]], [[[-1.0, -1.0]], [[1.0, 0.5]]]]))
    y.backward(g)
    # channel 0 (tau -1): x > tau at (0, 0, 0, 1) only; channel 1 (tau 0.5): at 3.0 and 1.0
    assert torch.equal(x.grad, torch.tensor([[[[0.0, 2.0]], [[0.0, 4.0]]], [[[0.0, 0.0]], [[7.0, 0.0]]]]))
    assert torch.equal(t.tau.grad.flatten(), torch.tensor([1.0 + 5.0 + 6.0, 3.0 + 8.0]))
    with torch.enable_grad():
        assert torch.isnan(t(torch.full((1, 2, 1, 1), float("nan"), requires_grad=True))).all()
    ref = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: t(a), (ref,))


def test_hynet_input_scale_only_matters_up_to_eps() -> None:
    """The leading FRN divides by the RMS: 0-255 inputs and [0, 1] inputs give (nearly) the same
    descriptor (self-tnet.md §5.1)."""
    m = trained_like("hynet", 4)
    x = patches(4, 9, 1.0)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x / 255.0), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------- descbal checkpoints


@pytest.mark.parametrize("name", ARCHS)
def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    m = trained_like(name, 21)
    m.input_scale = 0.5  # type: ignore[assignment]
    save_checkpoint(tmp_path / "m.pt", m, note="hello", epoch=3)
    back = load(tmp_path / "m.pt")
    assert type(back) is type(m) and back.config == m.config
    assert back.input_scale == 0.5 and type(m).input_scale != 0.5  # the instance value, kept
    assert back.training  # documented: call .eval() yourself
    same_outputs(m, back)
    doc = read_checkpoint(tmp_path / "m.pt")
    assert doc["descbal_format"] == 1 and doc["arch"] == name
    assert doc["note"] == "hello" and doc["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # written atomically, no leftovers


def test_checkpoint_keeps_constructor_config(tmp_path: Path) -> None:
    m = trained_like("hynet", 5, dim=64, dropout=0.1)
    save_checkpoint(tmp_path / "m.pt", m)
    back = load(tmp_path / "m.pt")
    assert back.config == {"dim": 64, "dropout": 0.1, "init_gain": 0.6, "init_bias": 0.01}
    same_outputs(m, back)


def test_checkpoint_errors(tmp_path: Path) -> None:
    m = build_model("hynet")
    save_checkpoint(tmp_path / "m.pt", m)
    doc = read_checkpoint(tmp_path / "m.pt")

    newer = dict(doc, descbal_format=99)
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(BadInputError, match="newer") as e:
        load(tmp_path / "newer.pt")
    assert e.value.exit_code == 2 and str(tmp_path / "newer.pt") in str(e.value)

    torch.save(dict(doc, arch="nonet"), tmp_path / "arch.pt")
    with pytest.raises(BadInputError, match="nonet"):
        load(tmp_path / "arch.pt")

    torch.save(dict(doc, config={"bogus": 1}), tmp_path / "cfg.pt")
    with pytest.raises(BadInputError, match="bogus"):
        load(tmp_path / "cfg.pt")

    sd = dict(doc["state_dict"])
    del sd["layer3.0.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(dict(doc, state_dict=sd), tmp_path / "partial.pt")
    with pytest.raises(BadInputError, match="layer3.0.weight"):
        load(tmp_path / "partial.pt")

    with pytest.raises(DataMissingError) as e3:
        load(tmp_path / "absent.pt")
    assert e3.value.exit_code == 3


def test_wrong_tensor_shape_is_bad_input(tmp_path: Path) -> None:
    sd = build_model("hynet").state_dict()
    sd["layer2.0.weight"] = torch.zeros(32, 32, 5, 5)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(BadInputError, match="shape.pth"):
        load(tmp_path / "shape.pth")


# ---------------------------------------------------------------------------- run folders


def test_run_folder_resolves_to_model_then_last(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(DataMissingError, match="neither model.pt nor"):
        resolve_path(run)
    a = trained_like("hardnet", 1)
    save_checkpoint(run / "checkpoints" / "last.pt", a)
    assert resolve_path(run) == run / "checkpoints" / "last.pt"
    same_outputs(load(run), a)
    b = trained_like("hardnet", 2)
    save_checkpoint(run / "model.pt", b)
    assert resolve_path(run) == run / "model.pt"
    same_outputs(load(run), b)
    assert resolve_path(run / "model.pt") == run / "model.pt"  # a file is itself


# ---------------------------------------------------------------------------- published weights


@pytest.mark.parametrize("subset", TFEAT_SETS)
def test_real_tfeat_params(subset: str, shared_data: Path) -> None:
    path = shared_data / "weights" / "tfeat" / f"tfeat-{subset}.params"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    m = load(path)
    assert type(m).__name__ == "TFeat" and m.arch == "tfeat"
    assert m.input_scale == 1.0 and m.config == {"normalize": False}
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"features.1.weight", "features.1.bias", "features.4.weight", "features.4.bias",
                        "descr.0.weight", "descr.0.bias"}
    for k, v in raw.items():
        assert torch.equal(m.state_dict()[k], v)
    m.eval()
    x = patches(16, 7, 1.0)  # raw 0-255 intensities
    with torch.no_grad():
        out = m(x)
        again = m(x / 255.0)  # the instance normalisation makes the input scale irrelevant (up to eps)
    assert out.shape == (16, 128)
    norms = out.norm(dim=1)
    assert (norms > 1.5).all(), norms  # not unit vectors
    assert (out.abs() <= 1).all()  # tanh outputs
    torch.testing.assert_close(again, out, atol=1e-3, rtol=0)


def test_real_tfeat_files_differ(shared_data: Path) -> None:
    paths = [shared_data / "weights" / "tfeat" / f"tfeat-{s}.params" for s in TFEAT_SETS]
    if not all(p.is_file() for p in paths):
        pytest.skip("TFeat weights are absent")
    x = patches(4, 3, 1.0)
    outs = []
    for p in paths:
        m = load(p).eval()
        with torch.no_grad():
            outs.append(m(x))
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


def test_hardtfeat_checkpoint_is_refused_cleanly(shared_data: Path) -> None:
    """affnet's HardTFeat.pth has a layout descbal does not know: a one-line BadInputError."""
    path = shared_data / "weights" / "affnet" / "HardTFeat.pth"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with pytest.raises(BadInputError, match="unrecognised state-dict layout") as e:
        load(path)
    assert str(path) in str(e.value)


def foreign_state_dict(m: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """``m``'s state dict as an old release would store it: no num_batches_tracked, optional prefix."""
    return {prefix + k: v.clone() for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}


LAYOUTS = {"hardnet": "features.0.weight", "hynet": "layer1.2.weight", "sosnet": "layers.1.weight"}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("wrap", [None, "state_dict", "model_state_dict"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_foreign_state_dicts_are_recognised(name: str, wrap: str | None, prefix: str, tmp_path: Path) -> None:
    src = trained_like(name, 100 + len(prefix) + len(wrap or ""))
    sd = foreign_state_dict(src, prefix)
    assert prefix + LAYOUTS[name] in sd and not any("num_batches_tracked" in k for k in sd)
    obj: dict = sd if wrap is None else {wrap: sd, "epoch": 7, "arch": "whatever"}
    torch.save(obj, tmp_path / "w.pth")
    m = load(tmp_path / "w.pth")
    assert m.arch == name and type(m) is type(src)
    assert m.input_scale == type(src).input_scale
    got = m.state_dict()
    for k, v in sd.items():  # really loaded, not a fresh instance
        assert torch.equal(got[k[len(prefix):]], v)
    same_outputs(m, src)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_recognise_reads_the_dimension(name: str) -> None:
    sd = build_model(name, dim=64).state_dict()
    arch, cfg = recognise(sd)
    assert arch == name and cfg == {"dim": 64}


def test_recognise_tfeat_and_unknown() -> None:
    assert recognise(build_model("tfeat").state_dict()) == ("tfeat", {})
    with pytest.raises(ValueError, match="unrecognised"):
        recognise({"encoder.weight": torch.zeros(2)})


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"encoder.0.weight": torch.zeros(3, 3), "head.bias": torch.zeros(3)}, "unrecognised state-dict layout"),
        ({"state_dict": {"foo": torch.zeros(1)}}, "unrecognised state-dict layout"),
        ({}, "unrecognised state-dict layout"),
        (torch.zeros(4, 4), "expected a state dict"),
        ([torch.zeros(2)], "expected a state dict"),
    ],
    ids=["junk-keys", "wrapped-junk", "empty", "tensor", "list"],
)
def test_junk_weights_are_bad_input(obj: object, message: str, tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    torch.save(obj, path)
    with pytest.raises(BadInputError, match=message) as e:
        load(path)
    assert e.value.exit_code == 2
    assert str(path) in str(e.value) and e.value.path == str(path)


def test_non_torch_files_are_bad_input(tmp_path: Path) -> None:
    for name, data in (("text.pt", b"not a checkpoint\n"), ("empty.pt", b""), ("npy.pt", b"\x93NUMPY\x01\x00")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(BadInputError, match=r"not a PyTorch checkpoint \(or not a weights file\)") as e:
            load(path)
        assert e.value.exit_code == 2 and str(path) in str(e.value)


def test_random_bytes_say_not_a_checkpoint(tmp_path: Path) -> None:
    """Issue 21: random bytes gave torch's weights-only paragraph cut mid-word."""
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    half = tmp_path / "half.pt"  # a real checkpoint cut in the middle (a damaged zip archive)
    torch.save({"w": torch.zeros(4)}, half)
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    for p in (path, half):
        with pytest.raises(BadInputError) as e:
            load(p)
        assert str(e.value) == f"{p}: not a PyTorch checkpoint (or not a weights file)"
        assert e.value.exit_code == 2


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: what an unsafe ``torch.load`` would execute."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("where", ["top", "inside"])
def test_pickled_code_is_never_executed(where: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    sd = build_model("hardnet").state_dict()
    obj = {"payload": Payload(str(marker)), **sd} if where == "top" else {"state_dict": sd, "meta": Payload(str(marker))}
    torch.save(obj, tmp_path / "evil.pth")
    with pytest.raises(BadInputError, match=r"not a weights file: it holds pickled Python objects \(\w+\.mkdir\)"):
        load(tmp_path / "evil.pth")
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    """Static guard: each ``torch.load(...)`` call in descbal passes ``weights_only=True``."""
    root = Path(descbal.__file__).parent
    calls = 0
    for py in sorted(root.rglob("*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id == "torch":
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                assert ok, f"{py.relative_to(root)}:{node.lineno}: torch.load without weights_only=True"
    assert calls >= 1


def test_load_puts_nothing_on_the_gpu_and_keeps_float32(tmp_path: Path) -> None:
    m = trained_like("sosnet", 8)
    save_checkpoint(tmp_path / "m.pt", m)
    back = load(tmp_path / "m.pt")
    assert {p.device.type for p in back.parameters()} == {"cpu"}
    assert {p.dtype for p in back.parameters()} == {torch.float32}
    assert np.isclose(back.input_scale, 1 / 255)


@pytest.mark.parametrize("arch", ["hynet", "hardnet"])
def test_initial_weights_do_not_depend_on_the_thread_count(arch: str) -> None:
    """The orthogonal initialisation's QR gives other bits on other thread counts; the models'
    initial weights must follow the seed alone (an untrained row, a run's start)."""
    from descbal.models.resolve import state_dict_sha256

    before = torch.get_num_threads()
    shas = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            shas.append(state_dict_sha256(build_model(arch)))
    finally:
        torch.set_num_threads(before)
    assert shas[0] == shas[1]
