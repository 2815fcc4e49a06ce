"""``descbal export`` (descbal.export) and exported files in ``descbal extract`` (issue 19 §1).

Untrained seeded HyNet and HardNet (a HardNet checkpoint with a trained geometry), exported to
ONNX and TorchScript, run back through onnxruntime / torch.jit.load on real HPatches patches
(batch 300 and batch 1) against descbal's own descriptors.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from train_fixtures import one_torch_thread  # noqa: F401
from typer.testing import CliRunner

import descbal.errors
import descbal.export
from descbal import __version__
from descbal.cli import app
from descbal.export import FP32_TOLERANCE, export_model
from descbal.extract import ExtractConfig, FeatureExtractor, extract_folder
from descbal.fileio import sha256_file
from descbal.geometry import PatchGeometry
from descbal.models import resolve_model, save_checkpoint
from descbal.models.describe import describe, patch_tensor, resize_linear_u8
from descbal.models.exported import ExportedModel, onnx_session

runner = CliRunner()
GEOMETRY = PatchGeometry(mag=6.0, upright=True)  # the checkpoint's: the exported file must carry it to extract
#: TorchScript replays the same ATen kernels as eager PyTorch: measured 0 here.
TS_BOUND = 1e-6


@pytest.fixture(scope="module")
def real_patches(shared_data: Path) -> np.ndarray:
    """The first 300 HPatches reference patches, 65 -> 32 as descbal describes them. (300, 32, 32) uint8."""
    col = cv2.imread(str(shared_data / "hpatches-patches" / "ref.png"), cv2.IMREAD_GRAYSCALE)
    return resize_linear_u8(col[: 300 * 65].reshape(300, 65, 65))


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> dict[tuple[str, str], tuple]:  # noqa: F811
    """(arch, format) -> (file, ExportResult, source model spec), 64 random parity patches each."""
    root = tmp_path_factory.mktemp("exports")
    ckpt = root / "hardnet-ckpt.pt"
    save_checkpoint(ckpt, resolve_model("hardnet", seed=3).network, patch_geometry=GEOMETRY.to_dict())
    out = {}
    for arch, spec in (("hynet", "hynet"), ("hardnet", str(ckpt))):
        for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts")):
            path = root / f"{arch}{suffix}"
            out[arch, fmt] = (path, export_model(spec, path, fmt, num_random=64), spec)
    return out


CASES = [(a, f) for a in ("hynet", "hardnet") for f in ("onnx", "torchscript")]


@pytest.mark.parametrize(("arch", "fmt"), CASES, ids=[f"{a}-{f}" for a, f in CASES])
def test_round_trip_matches_descbal_on_real_patches_at_batch_300_and_1(arch: str, fmt: str, exports: dict,
                                                                       real_patches: np.ndarray) -> None:
    path, result, spec = exports[arch, fmt]
    bound = FP32_TOLERANCE if fmt == "onnx" else TS_BOUND
    assert result.parity["random"]["patches"] == 64 and result.parity["random"]["max_abs"] <= bound
    net = resolve_model(spec).network
    ref = describe(net, real_patches)  # (300, 128)
    exported = ExportedModel(path)
    assert exported.format == fmt
    x = patch_tensor(real_patches, net.input_scale)
    got = exported(x)
    assert got.shape == (300, 128) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= bound
    one = exported(x[7:8])  # dynamic batch: one patch
    assert one.shape == (1, 128) and np.abs(one[0] - ref[7]).max() <= bound


def test_metadata_says_what_the_file_takes_and_returns(exports: dict) -> None:
    path, result, spec = exports["hardnet", "onnx"]
    meta = ExportedModel(path).metadata
    assert meta == result.metadata
    assert meta["input"] == {"name": "patches", "shape": ["N", 1, 32, 32], "dtype": "float32",
                             "input_scale": 1 / 255, "range": [0.0, 1.0], "units": meta["input"]["units"]}
    assert meta["output"] == {"name": "descriptors", "shape": ["N", 128], "dtype": "float32", "l2_normalised": True}
    assert (meta["arch"], meta["opset"], meta["fp16"], meta["descbal_version"]) == ("hardnet", 20, False, __version__)
    assert meta["weights_sha256"] == sha256_file(spec) and meta["model_kind"] == "checkpoint"
    assert PatchGeometry.from_dict(meta["patch_geometry"]) == GEOMETRY
    session = onnx_session(path)
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "patches" and isinstance(inp.shape[0], str) and inp.shape[1:] == [1, 32, 32]  # dynamic N
    assert outp.name == "descriptors" and isinstance(outp.shape[0], str) and outp.shape[1] == 128
    ts = ExportedModel(exports["hynet", "torchscript"][0]).metadata
    assert (ts["format"], ts["arch"], ts["opset"]) == ("torchscript", "hynet", None)
    assert ts["weights_sha256"] == resolve_model("hynet").weights_sha256


def test_a_parity_failure_writes_nothing_and_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(descbal.export, "max_abs_difference", lambda a, b: 0.25)
    res = runner.invoke(app, ["export", "hardnet", "--format", "torchscript", "-o", str(tmp_path / "m.ts")])
    err = res.stderr.strip()
    assert res.exit_code == 1, res.output
    assert "\n" not in err and "max abs difference 0.25 > tolerance 1e-05" in err and "nothing written" in err, err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_cli_writes_json_and_refuses_bad_requests(tmp_path: Path, one_torch_thread: None) -> None:  # noqa: F811
    out = tmp_path / "m.ts"
    res = runner.invoke(app, ["export", "hardnet", "--format", "torchscript", "-o", str(out), "--json", "-", "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["out"] == str(out) and out.is_file() and doc["parity"]["random"]["patches"] == 1000
    assert doc["max_abs_difference"] <= TS_BOUND and doc["metadata"]["format"] == "torchscript"
    for args, says in ((["hardnet", "-o", str(out)], "pass --overwrite"),
                       (["sift", "-o", str(tmp_path / "s.onnx")], "not a network"),
                       (["hardnet", "--format", "torchscript", "--fp16", "-o", str(tmp_path / "h.ts")], "ONNX only"),
                       (["hardnet", "--opset", "13", "-o", str(tmp_path / "h.onnx")], "opset 18 or later")):
        res = runner.invoke(app, ["export", *args])
        assert res.exit_code == 2 and says in res.stderr, (args, res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ts"]


def test_extract_with_the_onnx_file_equals_extract_with_the_checkpoint(exports: dict, shared_data: Path,
                                                                       tmp_path: Path) -> None:
    onnx_file, _, ckpt = exports["hardnet", "onnx"]
    img = cv2.imread(str(shared_data / "hpatches-sequences" / "v_dogman" / "1.png"), cv2.IMREAD_GRAYSCALE)
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), img[100:400, 200:500])
    cfg = dict(max_keypoints=300, device="cpu")
    ref = FeatureExtractor(ckpt, **cfg)
    res = extract_folder(tmp_path / "images", tmp_path / "f.npz", ExtractConfig(model=f"deployed={onnx_file}", **cfg),
                         fmt="npz")
    assert res.extracted == 1 and res.num_keypoints > 100
    prov = res.provenance
    assert (prov["model"], prov["model_kind"], prov["export_format"]) == ("deployed", "exported", "onnx")
    assert prov["weights_sha256"] == sha256_file(onnx_file) and prov["exported_from"]["weights_sha256"] == sha256_file(ckpt)
    assert prov["geometry"] == GEOMETRY.to_dict() == ref.provenance["geometry"] and prov["geometry_source"] == "model"
    want = ref(cv2.imread(str(tmp_path / "images" / "a.png"), cv2.IMREAD_GRAYSCALE))
    with np.load(tmp_path / "f.npz" / "a.png.npz") as got:
        assert np.array_equal(got["keypoints"], want.keypoints)
        assert np.abs(got["descriptors"].T - want.descriptors).max() <= FP32_TOLERANCE  # stored (D, N) like hloc


def test_fp16_onnx_is_within_its_stated_tolerance(tmp_path: Path, one_torch_thread: None) -> None:  # noqa: F811
    res = export_model("hardnet", tmp_path / "h16.onnx", fp16=True, num_random=64)
    assert res.fp16 and res.tolerance == 2e-2 and 1e-5 < res.max_abs_difference <= 2e-2  # float16, not float32
    assert ExportedModel(tmp_path / "h16.onnx").metadata["fp16"] is True
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(("arch", "l2", "top"), [("hardnet8", True, 1.0), ("sosnet", True, 1.0), ("tfeat", False, 255.0)])
def test_every_architecture_exports(arch: str, l2: bool, top: float, tmp_path: Path,
                                    one_torch_thread: None) -> None:  # noqa: F811
    """HardNet8's PCA, SOSNet's InstanceNorm and TFeat (tanh, not L2, raw 0..255) pass the
    parity check, low-contrast patches included, and say so in the metadata."""
    res = export_model(arch, tmp_path / f"{arch}.onnx", "onnx", num_random=16)
    assert res.max_abs_difference <= FP32_TOLERANCE
    meta = ExportedModel(tmp_path / f"{arch}.onnx").metadata
    assert meta["output"]["l2_normalised"] is l2 and meta["input"]["range"] == [0.0, top]
    assert meta["opset"] == res.opset == 20  # read back from the file


def test_low_contrast_patches_join_the_parity_set() -> None:
    sets = descbal.export._check_sets(16, 0, None)["random"]
    assert [int(sets[i].max()) - int(sets[i].min()) for i in range(3)] == [4, 8, 16]
    assert int(sets[3].max()) - int(sets[3].min()) > 200  # then uniform noise


def test_a_foreign_metadata_document_is_one_line(tmp_path: Path) -> None:
    import onnx

    path = tmp_path / "x.onnx"
    export_model("hynet", path, "onnx", num_random=4)
    proto = onnx.load(str(path))
    for entry in proto.metadata_props:
        entry.value = "{not json"
    onnx.save(proto, str(path))
    with pytest.raises(descbal.errors.BadInputError, match="metadata is not descbal export's"):
        ExportedModel(path)
