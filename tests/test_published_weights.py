"""Published weights load through ``descbal.models.load`` and compute what their publishers' networks compute.

Each case builds, here, a state dict with exactly the publisher's keys and shapes (seeded random
values), writes it with ``torch.save`` the way the publisher's file holds it (wrapper keys
included), loads it with descbal and compares descbal's forward with a functional re-creation,
written here from the publisher's model definition, of the publisher's network (its own input
normalisation included) on random patches: equal to 1e-5.

Publishers' definitions (read for facts): zonszer/Self-TNet ``models.py`` (``SDGMNet_128``,
``FRN``, ``TLU``, ``norm_HW``) and ``ftrain.py`` (what a checkpoint holds); kornia
``kornia/feature/{hynet,hardnet,sosnet,tfeat}.py``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from train_fixtures import one_torch_thread  # noqa: F401

from descbal.errors import BadInputError
from descbal.models import MODELS, load, resolve_model, save_checkpoint
from descbal.models.checkpoint import LAYOUTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

StateDict = "OrderedDict[str, torch.Tensor]"
BN_EPS = 1e-5  # torch's BatchNorm2d / InstanceNorm2d default, which every publisher keeps


# ---------------------------------------------------------------------------- state dicts in the publishers' layouts


class Draw:
    """Seeded random tensors sized so that activations stay O(1)."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g) * std

    def conv(self, sd: dict, key: str, cout: int, cin: int, k: int, bias: bool) -> None:
        sd[f"{key}.weight"] = self.randn(cout, cin, k, k, std=(cin * k * k) ** -0.5)
        if bias:
            sd[f"{key}.bias"] = self.randn(cout, std=0.1)

    def batchnorm(self, sd: dict, key: str, c: int, tracked: bool = True) -> None:
        """BatchNorm2d(affine=False): running statistics only."""
        sd[f"{key}.running_mean"] = self.randn(c, std=0.3)
        sd[f"{key}.running_var"] = torch.rand(c, generator=self.g) + 0.5
        if tracked:
            sd[f"{key}.num_batches_tracked"] = torch.tensor(1000, dtype=torch.int64)

    def frn(self, sd: dict, key: str, c: int) -> None:
        """FRN: weight, bias (1, C, 1, 1) and the fixed eps buffer (1,) = 1e-6."""
        sd[f"{key}.weight"] = 1.0 + self.randn(1, c, 1, 1, std=0.1)
        sd[f"{key}.bias"] = self.randn(1, c, 1, 1, std=0.1)
        sd[f"{key}.eps"] = torch.tensor([1e-6])

    def tlu(self, sd: dict, key: str, c: int) -> None:
        sd[f"{key}.tau"] = -1.0 + self.randn(1, c, 1, 1, std=0.1)


# (in, out, stride) of the six 3x3 convolutions of the L2-Net layout
L2NET = ((1, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1))


def hynet_state(seed: int, dim: int = 128) -> StateDict:
    """HyNet / SDGMNet_128: layer1 = FRN(1), TLU(1), conv(1->32, bias), FRN, TLU; layer2..6 =
    conv(bias), FRN, TLU; layer7 = Dropout, conv 8x8 (128->dim, no bias), BatchNorm(affine=False)."""
    d, sd = Draw(seed), OrderedDict()
    d.frn(sd, "layer1.0", 1)
    d.tlu(sd, "layer1.1", 1)
    for i, (cin, cout, _) in enumerate(L2NET):
        base, at = f"layer{i + 1}", (2 if i == 0 else 0)
        d.conv(sd, f"{base}.{at}", cout, cin, 3, bias=True)
        d.frn(sd, f"{base}.{at + 1}", cout)
        d.tlu(sd, f"{base}.{at + 2}", cout)
    d.conv(sd, "layer7.1", dim, 128, 8, bias=False)
    d.batchnorm(sd, "layer7.2", dim)
    return sd


def self_tnet_state(seed: int) -> StateDict:
    """SDGMNet_128's state dict: its layer1 .. layer7 also sit in ``features = Sequential(layer1 ..
    layer7)``, so torch's state_dict() lists every tensor again as ``features.<i>.<rest>`` (the
    same tensor objects, so torch.save stores them once)."""
    sd = hynet_state(seed)
    for k, v in list(sd.items()):
        layer, rest = k.split(".", 1)
        sd[f"features.{int(layer[len('layer'):]) - 1}.{rest}"] = v
    return sd


def hardnet_state(seed: int) -> StateDict:
    """HardNet: features.0 .. 17 = six (conv 3x3 no bias, BatchNorm, ReLU), 18 Dropout, 19 conv 8x8, 20 BatchNorm."""
    d, sd = Draw(seed), OrderedDict()
    for i, (cin, cout, _) in enumerate(L2NET):
        d.conv(sd, f"features.{3 * i}", cout, cin, 3, bias=False)
        d.batchnorm(sd, f"features.{3 * i + 1}", cout)
    d.conv(sd, "features.19", 128, 128, 8, bias=False)
    d.batchnorm(sd, "features.20", 128)
    return sd


def hardnet8_state(seed: int) -> StateDict:
    """kornia HardNet8: features.0 .. 20 = seven (conv, BatchNorm, ReLU) (the seventh 128->256),
    21 Dropout, 22 conv 8x8 256->512, 23 BatchNorm; buffers components (512, 128), mean (512)."""
    d, sd = Draw(seed), OrderedDict()
    for i, (cin, cout, _) in enumerate((*L2NET, (128, 256, 1))):
        d.conv(sd, f"features.{3 * i}", cout, cin, 3, bias=False)
        d.batchnorm(sd, f"features.{3 * i + 1}", cout)
    d.conv(sd, "features.22", 512, 256, 8, bias=False)
    d.batchnorm(sd, "features.23", 512)
    sd["components"] = d.randn(512, 128, std=512 ** -0.5)
    sd["mean"] = d.randn(512, std=0.02)
    return sd


def sosnet_state(seed: int) -> StateDict:
    """SOSNet: layers.0 InstanceNorm (no tensors), 1 .. 18 six (conv, BatchNorm, ReLU), 19 Dropout,
    20 conv 8x8, 21 BatchNorm. The release predates num_batches_tracked."""
    d, sd = Draw(seed), OrderedDict()
    for i, (cin, cout, _) in enumerate(L2NET):
        d.conv(sd, f"layers.{3 * i + 1}", cout, cin, 3, bias=False)
        d.batchnorm(sd, f"layers.{3 * i + 2}", cout, tracked=False)
    d.conv(sd, "layers.20", 128, 128, 8, bias=False)
    d.batchnorm(sd, "layers.21", 128, tracked=False)
    return sd


def tfeat_state(seed: int) -> StateDict:
    """TFeat: features.0 InstanceNorm, 1 conv 7x7 1->32, 2 Tanh, 3 MaxPool, 4 conv 6x6 32->64,
    5 Tanh; descr.0 Linear 4096->128, 1 Tanh."""
    d, sd = Draw(seed), OrderedDict()
    d.conv(sd, "features.1", 32, 1, 7, bias=True)
    d.conv(sd, "features.4", 64, 32, 6, bias=True)
    sd["descr.0.weight"] = d.randn(128, 4096, std=4096 ** -0.5)
    sd["descr.0.bias"] = d.randn(128, std=0.1)
    return sd


# ---------------------------------------------------------------------------- the publishers' networks, re-created


def bn(x: torch.Tensor, sd: StateDict, key: str) -> torch.Tensor:
    """Eval-mode BatchNorm2d(affine=False)."""
    mean, var = sd[f"{key}.running_mean"], sd[f"{key}.running_var"]
    return (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + BN_EPS)


def frn(x: torch.Tensor, sd: StateDict, key: str) -> torch.Tensor:
    """``x * rsqrt(mean_HW(x^2) + |eps|) * weight + bias``."""
    nu2 = x.pow(2).mean(dim=(2, 3), keepdim=True)
    return x * torch.rsqrt(nu2 + sd[f"{key}.eps"].abs()) * sd[f"{key}.weight"] + sd[f"{key}.bias"]


def tlu(x: torch.Tensor, sd: StateDict, key: str) -> torch.Tensor:
    return torch.max(x, sd[f"{key}.tau"])


def per_patch_standardise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """HardNet's / kornia's input normalisation: mean and unbiased std over (C, H, W), std + eps."""
    n = x[0].numel()
    mean = x.sum(dim=(1, 2, 3), keepdim=True) / n
    std = torch.sqrt(((x - mean) ** 2).sum(dim=(1, 2, 3), keepdim=True) / (n - 1))
    return (x - mean) / (std + eps)


def instance_norm(x: torch.Tensor) -> torch.Tensor:
    """InstanceNorm2d(affine=False): biased variance, eps 1e-5."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + BN_EPS)


def lrn_descriptor(x: torch.Tensor) -> torch.Tensor:
    """kornia's HyNet / SOSNet output: LocalResponseNorm(2D, alpha=2D, beta=0.5, k=0) of x + 1e-10."""
    dim = x.shape[1]
    return F.local_response_norm(x + 1e-10, 2 * dim, alpha=2.0 * dim, beta=0.5, k=0.0).flatten(1)


def hynet_body(x: torch.Tensor, sd: StateDict) -> torch.Tensor:
    x = tlu(frn(x, sd, "layer1.0"), sd, "layer1.1")
    for i, (_, _, stride) in enumerate(L2NET):
        base, at = f"layer{i + 1}", (2 if i == 0 else 0)
        x = F.conv2d(x, sd[f"{base}.{at}.weight"], sd[f"{base}.{at}.bias"], stride=stride, padding=1)
        x = tlu(frn(x, sd, f"{base}.{at + 1}"), sd, f"{base}.{at + 2}")
    return bn(F.conv2d(x, sd["layer7.1.weight"]), sd, "layer7.2")


def self_tnet_reference(x01: torch.Tensor, sd: StateDict) -> torch.Tensor:
    """SDGMNet_128.forward: ``features(x)`` (no ``norm_HW``: it overrides BaseHardNet.forward,
    whose per-patch standardisation is only a comment there), then F.normalize (eps 1e-12).
    Input: ToTensor's [0, 1]."""
    d = hynet_body(x01, sd).flatten(1)
    return d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)


def kornia_hynet_reference(x01: torch.Tensor, sd: StateDict) -> torch.Tensor:
    return lrn_descriptor(hynet_body(x01, sd))


def l2net_body(x: torch.Tensor, sd: StateDict, prefix: str, first: int, widths: tuple = L2NET) -> torch.Tensor:
    for i, (_, _, stride) in enumerate(widths):
        at = first + 3 * i
        x = F.relu(bn(F.conv2d(x, sd[f"{prefix}.{at}.weight"], stride=stride, padding=1), sd, f"{prefix}.{at + 1}"))
    return x


def hardnet_reference(x01: torch.Tensor, sd: StateDict, eps: float) -> torch.Tensor:
    """HardNet: per-patch standardisation (DagnyT/hardnet: eps 1e-7; kornia: 1e-6), L2-Net body,
    F.normalize."""
    x = l2net_body(per_patch_standardise(x01, eps), sd, "features", 0)
    d = bn(F.conv2d(x, sd["features.19.weight"]), sd, "features.20").flatten(1)
    return d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)


def hardnet8_reference(x01: torch.Tensor, sd: StateDict) -> torch.Tensor:
    """kornia HardNet8: standardise (eps 1e-7), body, 512-d head, F.normalize, minus mean, times
    components, F.normalize."""
    x = l2net_body(per_patch_standardise(x01, 1e-7), sd, "features", 0, (*L2NET, (128, 256, 1)))
    head = bn(F.conv2d(x, sd["features.22.weight"]), sd, "features.23").flatten(1)
    head = head / head.norm(dim=1, keepdim=True).clamp_min(1e-12)
    pca = (head - sd["mean"]) @ sd["components"]
    return pca / pca.norm(dim=1, keepdim=True).clamp_min(1e-12)


def sosnet_reference(x01: torch.Tensor, sd: StateDict) -> torch.Tensor:
    x = l2net_body(instance_norm(x01), sd, "layers", 1)
    return lrn_descriptor(bn(F.conv2d(x, sd["layers.20.weight"]), sd, "layers.21"))


def tfeat_reference(x255: torch.Tensor, sd: StateDict) -> torch.Tensor:
    """TFeat: raw 0-255 intensities, InstanceNorm, tanh convolutions, max-pool, linear, tanh (no L2)."""
    x = torch.tanh(F.conv2d(instance_norm(x255), sd["features.1.weight"], sd["features.1.bias"]))
    x = torch.tanh(F.conv2d(F.max_pool2d(x, 2, 2), sd["features.4.weight"], sd["features.4.bias"]))
    return torch.tanh(F.linear(x.flatten(1), sd["descr.0.weight"], sd["descr.0.bias"]))


# ---------------------------------------------------------------------------- the cases


def self_tnet_stage1(sd: StateDict) -> dict[str, Any]:
    """ftrain.py with --teacher=self: the student twice, architecture names and save_name."""
    return {"S_state_dict": sd, "T_state_dict": sd, "model_arch": "TeacherNet", "S_model_arch": "SDGMNet128",
            "T_model_arch": "SDGMNet128", "save_name": "Self-TNet"}


def self_tnet_stage2(sd: StateDict) -> dict[str, Any]:
    """ftrain.py without a teacher (the annealing stage): a plain checkpoint."""
    return {"epoch": 1, "state_dict": sd, "model_arch": "SDGMNet128", "save_name": "Self-TNet"}


# name: (state dict, file content, reference, its input scale for uint8, descbal arch, config, save legacy)
CASES: dict[str, tuple[Callable, Callable, Callable, float, str, dict, bool]] = {
    "self-tnet-stage1": (self_tnet_state, self_tnet_stage1, self_tnet_reference, 1 / 255, "hynet", {"dim": 128}, False),
    "self-tnet-stage2": (self_tnet_state, self_tnet_stage2, self_tnet_reference, 1 / 255, "hynet", {"dim": 128}, False),
    "kornia-hynet": (hynet_state, lambda sd: sd, kornia_hynet_reference, 1 / 255, "hynet", {"dim": 128}, False),
    # DagnyT/hardnet checkpoint_liberty_with_aug.pth / HardNet++.pth: {"epoch", "state_dict"}
    "kornia-hardnet": (hardnet_state, lambda sd: {"epoch": 10, "state_dict": sd},
                       lambda x, sd: hardnet_reference(x, sd, 1e-7), 1 / 255, "hardnet", {"dim": 128}, False),
    "kornia-hardnet8": (hardnet8_state, lambda sd: sd, hardnet8_reference, 1 / 255, "hardnet8", {"dim": 128}, False),
    "kornia-sosnet": (sosnet_state, lambda sd: sd, sosnet_reference, 1 / 255, "sosnet", {"dim": 128}, False),
    # vbalnt/tfeat .params files are the legacy (non-zip) torch serialisation
    "kornia-tfeat": (tfeat_state, lambda sd: sd, tfeat_reference, 1.0, "tfeat", {}, True),
}


def uint8_patches(n: int = 24, seed: int = 3) -> torch.Tensor:
    """(n, 1, 32, 32) random grey levels 0..255 as float32, some with little contrast."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 32, 32), generator=g).float()
    x[::4] = 100 + x[::4] / 8  # low-contrast patches too
    return x


def write(case: str, tmp_path: Path, seed: int = 0) -> tuple[Path, StateDict]:
    make, pack, *_, legacy = CASES[case]
    sd = make(seed)
    path = tmp_path / f"{case}.pt"
    torch.save(pack(sd), path, _use_new_zipfile_serialization=not legacy)
    return path, sd


@pytest.mark.parametrize("case", sorted(CASES))
def test_published_layout_loads_and_matches_the_publishers_network(case: str, tmp_path: Path) -> None:
    _, _, reference, ref_scale, arch, config, _ = CASES[case]
    path, sd = write(case, tmp_path)
    model = load(path).eval()
    assert model.arch == arch and {k: model.config[k] for k in config} == config
    x = uint8_patches()
    with torch.no_grad():
        got = model(x * float(model.input_scale))
        want = reference(x * ref_scale, sd)
    assert got.shape == want.shape == (len(x), 128)
    assert (got - want).abs().max().item() <= 1e-5
    # the one resolver reads the same file the same way
    resolved = resolve_model(str(path))
    assert resolved.kind == "published" and resolved.arch == arch
    with torch.no_grad():
        assert torch.equal(resolved.network.eval()(x * float(model.input_scale)), got)


def test_the_input_scales_are_the_publishers_ranges() -> None:
    """[0, 1] for the networks trained on ToTensor patches (Self-TNet, HyNet, HardNet, HardNet8,
    SOSNet); raw 0-255 for TFeat."""
    for case, (*_, ref_scale, arch, _, _) in CASES.items():
        assert MODELS[arch].input_scale == ref_scale, case


def test_hardnet_matches_kornias_eps_too(tmp_path: Path) -> None:
    """kornia's HardNet adds 1e-6 to the std where the HardNet release (which trained the
    weights, and descbal) adds 1e-7: the descriptors agree to 1e-5 all the same."""
    path, sd = write("kornia-hardnet", tmp_path)
    model = load(path).eval()
    x = uint8_patches()
    with torch.no_grad():
        got = model(x / 255.0)
        assert (got - hardnet_reference(x / 255.0, sd, 1e-6)).abs().max().item() <= 1e-5


def test_self_tnet_network_does_not_standardise_its_input(tmp_path: Path) -> None:
    """The authors' SDGMNet_128 feeds patches to its leading FRN unchanged: an intensity offset
    changes the descriptor (a per-patch standardisation would remove it), a scale does not (up to eps)."""
    path, sd = write("self-tnet-stage1", tmp_path)
    model = load(path).eval()
    x = uint8_patches(8) / 255.0
    with torch.no_grad():
        base, shifted, scaled = model(x), model(x + 0.2), model(x * 3.0)
    assert (base - shifted).abs().max().item() > 1e-2
    assert (base - scaled).abs().max().item() < 1e-4
    torch.testing.assert_close(shifted, self_tnet_reference(x + 0.2, sd), atol=1e-5, rtol=0)


def test_self_tnet_copies_that_differ_are_refused(tmp_path: Path) -> None:
    sd = self_tnet_state(0)
    sd["features.2.0.weight"] = sd["layer3.0.weight"] + 1.0  # a hand-edited copy
    path = tmp_path / "edited.pt"
    torch.save(self_tnet_stage1(sd), path)
    with pytest.raises(BadInputError) as e:
        load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and e.value.exit_code == 2
    assert "features.2.0.weight" in msg and "layer3.0.weight" in msg and "differ" in msg


def test_a_loaded_published_model_round_trips_as_a_descbal_checkpoint(tmp_path: Path) -> None:
    """HardNet8's PCA buffers and Self-TNet's weights survive save_checkpoint -> load."""
    x = uint8_patches(6) / 255.0
    for case in ("kornia-hardnet8", "self-tnet-stage1"):
        path, _ = write(case, tmp_path)
        model = load(path).eval()
        save_checkpoint(tmp_path / f"{case}-descbal.pt", model)
        back = load(tmp_path / f"{case}-descbal.pt").eval()
        assert back.config == model.config
        with torch.no_grad():
            assert torch.equal(back(x), model(x))


def test_unknown_layout_lists_keys_seen_and_layouts_known(tmp_path: Path) -> None:
    sd = OrderedDict((f"backbone.block{i}.conv.weight", torch.zeros(2, 2)) for i in range(9))
    path = tmp_path / "other.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(BadInputError) as e:
        load(path)
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2 and str(path) in msg
    assert msg.startswith(f"{path}: unrecognised state-dict layout (9 tensors: backbone.block0.conv.weight, ")
    assert "backbone.block5.conv.weight, ..." in msg and "block6" not in msg  # a sample, not all
    for layout in LAYOUTS:
        assert layout.name in msg and all(k in msg for k in layout.keys)
    assert {lay.arch for lay in LAYOUTS} == {"tfeat", "hardnet", "hardnet8", "hynet", "sosnet"}
