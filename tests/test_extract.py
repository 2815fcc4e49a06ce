"""descbal extract: geometry pins on synthetic images, detectors, hloc/npz/colmap schemas read
back as hloc reads them, resume, atomicity, failure summary and --list."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from descbal.cli import app
from descbal.detectors import DETECTORS, Keypoints, detect, register_detector
from descbal.errors import BadInputError
from descbal.extract import (
    ExtractConfig,
    FeatureExtractor,
    extract_folder,
    list_features,
    sample_patches,
)
from descbal.extract.describers import NetworkDescriber, OpenCVDescriber
from descbal.extract.writers import quantise_descriptors
from descbal.geometry import PatchGeometry
from descbal.models import save_checkpoint
from descbal.models.registry import register_model

runner = CliRunner()
P = 32
C = (P - 1) / 2.0
SIZE = 84
YY, XX = np.mgrid[0:SIZE, 0:SIZE]
RAMP = (XX + 2 * YY).astype(np.uint8)  # I(x, y) = x + 2y, linear: bilinear sampling is exact


def ramp_patch(cx: float, cy: float, s: float, theta_deg: float) -> np.ndarray:
    """The expected patch, written out independently of descbal.geometry: patch pixel (u, v)
    samples image point c + s R(theta) ((u, v) - (P-1)/2), R rotating clockwise on screen."""
    t = math.radians(theta_deg)
    v, u = np.mgrid[0:P, 0:P].astype(np.float64)
    x = cx + s * (math.cos(t) * (u - C) - math.sin(t) * (v - C))
    y = cy + s * (math.sin(t) * (u - C) + math.cos(t) * (v - C))
    return x + 2 * y


def patch_of(image: np.ndarray, xy: tuple[float, float], size: float, angle: float, geo: PatchGeometry) -> np.ndarray:
    return sample_patches(image, np.array([xy]), np.array([size]), np.array([angle]), geo, P)[0, 0].numpy()


# ------------------------------------------------------------------------------ geometry pins


def test_ramp_centre_and_scale() -> None:
    # diameter 6.4 at mag 5 covers 32 px: one image pixel per patch pixel, centred on (40, 30).
    got = patch_of(RAMP, (40, 30), 6.4, 0, PatchGeometry())
    np.testing.assert_allclose(got, ramp_patch(40, 30, 1.0, 0), atol=1e-3)
    assert got[0, 0] == pytest.approx(40 - C + 2 * (30 - C), abs=1e-3)  # top-left patch pixel


@pytest.mark.parametrize(("mag", "size", "s"), [(2.5, 12.8, 1.0), (10.0, 6.4, 2.0), (5.0, 25.6, 4.0)])
def test_mag_sets_the_extent(mag: float, size: float, s: float) -> None:
    # s >= 2 samples pyramid level floor(log2 s); a pyrDown of a linear ramp is the same ramp
    # (interior), so the patch is still exact.
    got = patch_of(RAMP, (42, 41) if s < 4 else (42, 41), size, 0, PatchGeometry(mag=mag))
    if s == 4.0:  # 4 x 31 = 124 px: larger than the image; compare the interior only
        exp = ramp_patch(42, 41, s, 0)
        np.testing.assert_allclose(got[8:24, 8:24][2:-2, 2:-2], exp[8:24, 8:24][2:-2, 2:-2], atol=1e-3)
    else:
        np.testing.assert_allclose(got, ramp_patch(42, 41, s, 0), atol=1e-3)


def test_size_kind_sigma_doubles() -> None:
    a = patch_of(RAMP, (40, 30), 3.2, 0, PatchGeometry(size_kind="sigma"))
    np.testing.assert_allclose(a, ramp_patch(40, 30, 1.0, 0), atol=1e-3)


@pytest.mark.parametrize("theta", [30.0, 90.0, 200.0])
def test_angle_unit_sign_and_upright(theta: float) -> None:
    exp = ramp_patch(42, 41, 1.0, theta)
    np.testing.assert_allclose(patch_of(RAMP, (42, 41), 6.4, theta, PatchGeometry()), exp, atol=1e-3)
    np.testing.assert_allclose(patch_of(RAMP, (42, 41), 6.4, math.radians(theta), PatchGeometry(angle_unit="rad")), exp,
                               atol=1e-3)
    np.testing.assert_allclose(patch_of(RAMP, (42, 41), 6.4, -theta, PatchGeometry(angle_sign=-1.0)), exp, atol=1e-3)
    np.testing.assert_allclose(patch_of(RAMP, (42, 41), 6.4, theta, PatchGeometry(upright=True)),
                               ramp_patch(42, 41, 1.0, 0), atol=1e-3)


def test_pixel_origin_corner_shifts_half_a_pixel() -> None:
    got = patch_of(RAMP, (40.5, 30.5), 6.4, 0, PatchGeometry(pixel_origin="corner"))
    np.testing.assert_allclose(got, ramp_patch(40, 30, 1.0, 0), atol=1e-3)


@pytest.mark.parametrize("theta", [0.0, 60.0, 135.0, 250.0])
def test_arrow_drawn_at_the_keypoint_angle_points_right_in_the_patch(theta: float) -> None:
    # OpenCV angles turn clockwise on screen (y down): an arrow drawn from the keypoint towards
    # (cos t, sin t) must appear pointing along +u in the patch.
    img = np.zeros((160, 160), np.uint8)
    t = math.radians(theta)
    end = (round(80 + 45 * math.cos(t)), round(80 + 45 * math.sin(t)))
    cv2.arrowedLine(img, (80, 80), end, 255, 5, cv2.LINE_AA, tipLength=0.3)
    patch = patch_of(img, (80, 80), 20.0, theta, PatchGeometry())  # 100 px window
    v, u = np.nonzero(patch > 128)
    assert u.mean() > C + 6  # mass to the right of the centre
    assert abs(v.mean() - C) < 1.5  # on the horizontal axis
    assert patch[round(C), P - 6] > 128 and patch[round(C), 3] < 64


def test_grid_sample_matches_opencv_remap_from_the_pyramid() -> None:
    from descbal.geometry import build_pyramid, patch_affines, sample_warped_patches

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (120, 150), dtype=np.uint8), (0, 0), 1.5)
    xy = rng.uniform(10, 110, (20, 2))
    size = rng.uniform(2, 40, 20)
    ang = rng.uniform(0, 360, 20)
    got = sample_patches(img, xy, size, ang, PatchGeometry(), P).numpy()[:, 0]
    pyr, aff = build_pyramid(img), patch_affines(xy, size, ang, PatchGeometry(), P)
    ref = sample_warped_patches(pyr, aff, None, np.sqrt(np.abs(np.linalg.det(aff[:, :, :2]))), P)
    for i in range(20):
        assert np.abs(ref[i].astype(np.float64) - got[i]).max() <= 1.0  # OpenCV rounds to uint8, 5-bit weights


@pytest.mark.parametrize(("side", "shape"), [(P, (90, 130)), (64, (90, 130)), (P, (17, 23))])
def test_cpu_remap_path_equals_the_device_atlas_path(side: int, shape: tuple[int, int],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU samples with cv2.remap per level, other devices with one grid_sample on the
    levels' atlas: same patches, borders (keypoints near and far beyond the edge, mirrored
    several times: BORDER_REFLECT_101) and levels included, for more keypoints than one remap
    call takes (and in several chunks on the device), and for a one-level image."""
    from descbal.extract import sampling

    rng = np.random.default_rng(5)
    h, w = shape
    img = cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (0, 0), 1.0)
    n = sampling.REMAP_ROWS // side + 37
    xy = rng.uniform(-8, 8, (n, 2)) + rng.uniform(0, 1, (n, 2)) * (w, h)
    size = rng.uniform(1, 30, n)
    ang = rng.uniform(0, 360, n)
    cpu = sample_patches(img, xy, size, ang, PatchGeometry(), side).numpy()
    monkeypatch.setattr(sampling, "_on_host", lambda device: False)
    monkeypatch.setattr(sampling, "CHUNK", 100)  # several grid_sample calls
    pyr = sampling.image_pyramid(img)
    assert pyr.atlas is not None and pyr.num_levels == (1 if h < 32 else 3)
    dev = sample_patches(pyr, xy, size, ang, PatchGeometry(), side).numpy()
    assert cpu.shape == dev.shape == (n, 1, side, side)
    assert np.abs(cpu - dev).max() < 0.05  # OpenCV interpolates at 1/32 px, in float32


# ------------------------------------------------------------------------------ detectors


def textured(seed: int, h: int = 160, w: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (h // 8, w // 8), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


@pytest.mark.parametrize("name", ["sift", "orb", "gftt", "akaze"])
def test_detectors_sorted_and_capped(name: str) -> None:
    img = textured(1, 240, 320)
    try:
        k = detect(img, name, 50)
    except Exception as e:  # akaze is absent from OpenCV 5 builds without contrib
        assert name == "akaze", e
        pytest.skip(f"akaze unavailable: {e}")
    assert 0 < len(k) <= 50 and k.xy.shape == (len(k), 2)
    assert np.all(np.diff(k.response) <= 0) and np.all(k.size > 0) and np.all((k.angle >= 0) & (k.angle < 360))
    full = detect(img, name, 0)
    assert len(full) >= len(k)
    np.testing.assert_allclose(k.response, full.response[: len(k)])  # the kept ones are the strongest


# ------------------------------------------------------------------------------ an identity "network"


@register_model("test-patch-identity")
class PatchIdentity(nn.Module):
    """Describes a patch by its 1024 pixels: the stored descriptors are the sampled patches."""

    input_scale = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.config: dict = {}
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) + 0 * self.dummy


FIXED: dict = {"xy": (40.0, 30.0), "size": 6.4, "angle": 0.0}


@register_detector("test-fixed")
def _fixed(image: np.ndarray, max_keypoints: int) -> Keypoints:
    return Keypoints(np.array([FIXED["xy"]], np.float64), np.array([FIXED["size"]]), np.array([FIXED["angle"]]),
                     np.array([1.0]), [])


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "identity.pt"
    save_checkpoint(path, PatchIdentity())
    return path


CLI_CASES = [  # (detector output (xy, size, angle), options, expected stored keypoint, scale, ori, patch (cx, cy, s, deg))
    (((40.0, 30.0), 6.4, 0.0), [], (40, 30), 6.4, 0.0, (40, 30, 1.0, 0)),
    (((42.0, 41.0), 6.4, 0.0), ["--mag", "10"], (42, 41), 6.4, 0.0, (42, 41, 2.0, 0)),
    (((40.0, 30.0), 3.2, 0.0), ["--size-kind", "sigma"], (40, 30), 6.4, 0.0, (40, 30, 1.0, 0)),
    (((42.0, 41.0), 6.4, math.pi / 6), ["--angle-unit", "rad"], (42, 41), 6.4, 30.0, (42, 41, 1.0, 30)),
    (((42.0, 41.0), 6.4, 30.0), ["--angle-sign", "-1"], (42, 41), 6.4, 330.0, (42, 41, 1.0, -30)),
    (((40.5, 30.5), 6.4, 0.0), ["--pixel-origin", "corner"], (40, 30), 6.4, 0.0, (40, 30, 1.0, 0)),
    (((42.0, 41.0), 6.4, 77.0), ["--upright"], (42, 41), 6.4, 0.0, (42, 41, 1.0, 0)),
]


@pytest.mark.parametrize(("det", "opts", "kp", "scale", "ori", "pp"), CLI_CASES)
def test_cli_geometry_options_pin_the_stored_patch(tmp_path: Path, identity_model: Path, det: tuple, opts: list[str],
                                                   kp: tuple, scale: float, ori: float, pp: tuple) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "ramp.png"), RAMP)
    FIXED.update(xy=det[0], size=det[1], angle=det[2])
    out = tmp_path / "f.h5"
    r = runner.invoke(app, ["extract", str(imgs), "--model", str(identity_model), "--out", str(out), "--detector",
                            "test-fixed", "--device", "cpu", "-q", *opts])
    assert r.exit_code == 0, r.output
    with h5py.File(out, "r") as h5:
        g = h5["ramp.png"]
        np.testing.assert_allclose(g["keypoints"][...], [kp], atol=1e-5)
        assert g["scales"][0] == pytest.approx(scale) and g["oris"][0] == pytest.approx(ori, abs=1e-4)
        patch = g["descriptors"][:, 0].reshape(P, P)
        geo = json.loads(h5.attrs["geometry"])
    np.testing.assert_allclose(patch, ramp_patch(*pp), atol=1e-3)
    assert geo == {**PatchGeometry().__dict__, **geo} and set(geo) == set(PatchGeometry().__dict__)


def test_bad_angle_sign_is_bad_usage(tmp_path: Path) -> None:
    r = runner.invoke(app, ["extract", str(tmp_path), "--model", "sift", "--out", str(tmp_path / "f.h5"),
                            "--angle-sign", "2"])
    assert r.exit_code == 2 and "--angle-sign" in r.output


# ------------------------------------------------------------------------------ folders, hloc schema, resume


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    (d / "sub" / "deep").mkdir(parents=True)
    cv2.imwrite(str(d / "a.png"), textured(1))
    cv2.imwrite(str(d / "sub" / "b.jpg"), cv2.cvtColor(textured(2), cv2.COLOR_GRAY2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(d / "sub" / "deep" / "c.png"), textured(3, 120, 140))
    return d


def hloc_list_h5_names(path: Path) -> list[str]:
    """hloc.utils.io.list_h5_names, as hloc writes it."""
    names = []
    with h5py.File(str(path), "r", libver="latest") as fd:

        def visit_fn(_: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                names.append(obj.parent.name.strip("/"))

        fd.visititems(visit_fn)
    return list(set(names))


def hloc_read_pair_data(path: Path, name: str) -> dict:
    """What hloc's match_features.FeaturePairsDataset builds for one image."""
    with h5py.File(str(path), "r") as fd:
        grp = fd[name]
        data = {k + "0": torch.from_numpy(v.__array__()).float() for k, v in grp.items()}
        data["image0"] = torch.empty((1,) + tuple(grp["image_size"])[::-1])
    return data


def test_hloc_schema_round_trip(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    cfg = ExtractConfig(model="rootsift", max_keypoints=100, device="cpu")
    res = extract_folder(folder, out, cfg)
    assert res.extracted == 3 and res.failed == []
    assert sorted(hloc_list_h5_names(out)) == ["a.png", "sub/b.jpg", "sub/deep/c.png"] == list_features(out)
    ext = FeatureExtractor.from_config(cfg)
    for name, img in [("a.png", textured(1)), ("sub/deep/c.png", textured(3, 120, 140))]:
        mem = ext(img)
        data = hloc_read_pair_data(out, name)
        n = len(mem)
        assert data["keypoints0"].shape == (n, 2) and data["descriptors0"].shape == (128, n)
        assert data["scores0"].shape == (n,) and data["scales0"].shape == (n,) and data["oris0"].shape == (n,)
        assert data["image0"].shape == (1, img.shape[0], img.shape[1])  # image_size is (W, H)
        np.testing.assert_allclose(data["descriptors0"].numpy().T, mem.descriptors, atol=1e-6)
        np.testing.assert_allclose(data["keypoints0"].numpy(), mem.keypoints)
    with h5py.File(out, "r") as h5:
        g = h5["sub"]["deep"]["c.png"]  # nested folders are nested groups
        assert g["keypoints"].dtype == np.float32 and g["descriptors"].dtype == np.float32
        assert list(g["image_size"][...]) == [140, 120]
        assert h5.attrs["model"] == "rootsift" and json.loads(h5.attrs["detector"])["name"] == "sift"
        assert len(h5.attrs["weights_sha256"]) > 0 and json.loads(h5.attrs["geometry"])["mag"] == 5.0


def test_keypoints_use_pixel_centres_at_integers(tmp_path: Path) -> None:
    # A bright blob centred on pixel (x=70, y=50): the SIFT keypoint is stored at (70, 50), not
    # half a pixel away (OpenCV's SIFT itself reports about +0.25 px here, from the linear 2x
    # up-sampling of its first octave; we store OpenCV's coordinates unchanged).
    img = np.zeros((100, 140), np.uint8)
    cv2.circle(img, (70, 50), 6, 255, -1)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)
    f = FeatureExtractor("sift", max_keypoints=1, device="cpu")(img)
    np.testing.assert_allclose(f.keypoints[0], [70, 50], atol=0.3)


def test_float16_descriptors_and_network_model(folder: Path, tmp_path: Path) -> None:
    from descbal.models import build_model

    net = build_model("tfeat", normalize=True)
    ext = FeatureExtractor(net, max_keypoints=20, device="cpu")
    res = extract_folder(folder, tmp_path / "h.h5", ExtractConfig(half=True), extractor=ext)
    assert res.extracted == 3
    with h5py.File(tmp_path / "h.h5", "r") as h5:
        d = h5["a.png"]["descriptors"]
        assert d.dtype == np.float16 and d.shape[0] == 128
        np.testing.assert_allclose(np.linalg.norm(d[...].astype(np.float32), axis=0), 1.0, atol=2e-3)
        assert h5.attrs["model"] == "tfeat"


def test_resume_skips_and_overwrite_redoes(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    cfg = ExtractConfig(model="sift", max_keypoints=50, device="cpu")
    assert extract_folder(folder, out, cfg).extracted == 3
    with h5py.File(out, "r") as h5:
        before = h5["a.png"]["keypoints"][...]
    res = extract_folder(folder, out, cfg)
    assert res.extracted == 0 and res.skipped_existing == 3
    cv2.imwrite(str(folder / "new.png"), textured(9))
    res = extract_folder(folder, out, cfg)
    assert res.extracted == 1 and res.skipped_existing == 3
    assert sorted(list_features(out)) == ["a.png", "new.png", "sub/b.jpg", "sub/deep/c.png"]
    res = extract_folder(folder, out, cfg, overwrite=True)
    assert res.extracted == 4 and res.skipped_existing == 0
    with h5py.File(out, "r") as h5:
        np.testing.assert_array_equal(h5["a.png"]["keypoints"][...], before)
    # a different extraction must not be appended to this file

    with pytest.raises(BadInputError, match="different extraction"):
        extract_folder(folder, out, ExtractConfig(model="sift", max_keypoints=60, device="cpu"))
    assert not list(tmp_path.glob(".*.tmp"))


def test_interrupted_run_leaves_a_valid_file(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    inner = FeatureExtractor("sift", max_keypoints=30, device="cpu")

    class Dies:
        calls = 0
        provenance = inner.provenance

        def __call__(self, img: np.ndarray):  # noqa: ANN204
            Dies.calls += 1
            if Dies.calls == 2:
                raise KeyboardInterrupt
            return inner(img)

    with pytest.raises(KeyboardInterrupt):
        extract_folder(folder, out, ExtractConfig(model="sift", max_keypoints=30), extractor=Dies())  # type: ignore[arg-type]
    assert list_features(out) == ["a.png"]  # committed on the way out, complete groups only
    assert not list(tmp_path.glob(".*.tmp"))
    res = extract_folder(folder, out, ExtractConfig(model="sift", max_keypoints=30, device="cpu"))
    assert res.skipped_existing == 1 and res.extracted == 2


def test_failures_are_summarised_and_exit_1_with_strict(folder: Path, tmp_path: Path) -> None:
    # issue 21 point 12: skipped images exit 0 with a warning, 1 with --strict (one policy)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "broken.png").write_bytes(b"not an image at all")
    cv2.imwrite(str(folder / "flat.png"), np.full((64, 64), 128, np.uint8))
    out = tmp_path / "f.h5"
    r = runner.invoke(app, ["extract", str(folder), "-m", "sift", "-o", str(out), "--max-keypoints", "40",
                            "--json", "-", "-q", "--strict"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    reasons = {f["name"]: f["reason"] for f in doc["failed"]}
    assert reasons == {"broken.png": "unreadable (not an image OpenCV decodes)", "empty.jpg": "empty file",
                       "flat.png": "no keypoints detected"}
    assert doc["extracted"] == 3 and sorted(list_features(out)) == ["a.png", "sub/b.jpg", "sub/deep/c.png"]
    r = runner.invoke(app, ["extract", str(folder), "-m", "sift", "-o", str(out), "--max-keypoints", "40"])
    assert r.exit_code == 0 and "3 already there" in r.output and "3 failed" in r.output
    assert "warning: 3 input(s) skipped (listed in the JSON's 'failed'); --strict makes this exit 1" in r.output


def test_list_prints_exact_keys(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    assert runner.invoke(app, ["extract", str(folder), "-m", "sift", "-o", str(out), "--max-keypoints", "20",
                               "-q"]).exit_code == 0
    r = runner.invoke(app, ["extract", "--list", str(out)])
    assert r.exit_code == 0 and r.stdout.splitlines() == ["a.png", "sub/b.jpg", "sub/deep/c.png"]
    r = runner.invoke(app, ["extract", "--list", str(out), "--json", "-"])
    assert json.loads(r.stdout)["names"] == ["a.png", "sub/b.jpg", "sub/deep/c.png"]
    assert runner.invoke(app, ["extract", "--list", str(tmp_path / "nope.h5")]).exit_code == 3
    assert runner.invoke(app, ["extract", str(folder)]).exit_code == 2  # --model / --out missing


def test_npz_and_colmap_formats(folder: Path, tmp_path: Path) -> None:
    cfg = ExtractConfig(model="sift", max_keypoints=25, device="cpu")
    res = extract_folder(folder, tmp_path / "npz", cfg, fmt="npz")
    assert res.extracted == 3
    z = np.load(tmp_path / "npz" / "sub" / "deep" / "c.png.npz")
    n = len(z["keypoints"])
    assert z["descriptors"].shape == (128, n) and list(z["image_size"]) == [140, 120]
    assert list_features(tmp_path / "npz") == ["a.png", "sub/b.jpg", "sub/deep/c.png"]
    assert extract_folder(folder, tmp_path / "npz", cfg, fmt="npz").skipped_existing == 3
    res = extract_folder(folder, tmp_path / "colmap", cfg, fmt="colmap")
    lines = (tmp_path / "colmap" / "sub" / "deep" / "c.png.txt").read_text().splitlines()
    n0, d0 = map(int, lines[0].split())
    assert d0 == 128 and n0 == len(lines) - 1 == n
    row = lines[1].split()
    assert len(row) == 4 + 128 and all(0 <= int(v) <= 255 for v in row[4:])
    np.testing.assert_allclose([float(row[0]), float(row[1])], z["keypoints"][0] + 0.5, atol=1e-3)


def test_quantisation_is_documented_lossy() -> None:
    # non-negative descriptors (SIFT): 512 * (0.6, 0.8, 0) saturates, as COLMAP does
    assert quantise_descriptors(np.array([[3.0, 4.0, 0.0], [0.0, 0.1, 0.0]])).tolist() == [[255, 255, 0], [0, 255, 0]]
    # signed descriptors (networks): 128 + 512 d, clipped
    q = quantise_descriptors(np.array([[-1.0, 0.0, 1.0], [0.1, -0.1, 1.0]]))
    assert q[0].tolist() == [0, 128, 255] and q[1].tolist() == [179, 77, 255]


def test_opencv_describer_uses_keypoints_directly() -> None:
    img = textured(4, 200, 240)
    k = detect(img, "sift", 30)
    ours, kept = OpenCVDescriber("sift")(img, k)
    _, ref = cv2.SIFT_create().compute(img, k.cv)
    np.testing.assert_array_equal(kept, np.arange(len(k)))
    np.testing.assert_allclose(ours, ref)
    up, _ = OpenCVDescriber("sift", PatchGeometry(upright=True))(img, k)
    assert not np.allclose(up, ref)


def test_network_describer_batches_agree() -> None:
    from descbal.models import build_model

    net = build_model("tfeat")
    img = textured(5, 200, 240)
    k = detect(img, "sift", 24)
    a, _ = NetworkDescriber(net, batch_size=7)(img, k)
    b, _ = NetworkDescriber(net, batch_size=1024)(img, k)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert set(DETECTORS) >= {"sift", "orb", "gftt", "akaze"}


def test_unknown_model_and_detector(tmp_path: Path, folder: Path) -> None:
    r = runner.invoke(app, ["extract", str(folder), "-m", str(tmp_path / "none.pt"), "-o", str(tmp_path / "f.h5")])
    assert r.exit_code == 3
    r = runner.invoke(app, ["extract", str(folder), "-m", "sift", "-o", str(tmp_path / "f.h5"), "--detector", "surf"])
    assert r.exit_code == 2 and "sift" in r.output


class _CentredPixels(nn.Module):
    """Describes a patch by its mean-removed pixels (a rotation-sensitive 'descriptor')."""

    input_scale = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return x - x.mean(1, keepdim=True)


def test_sift_angles_with_the_default_sign_undo_a_rotation() -> None:
    # Image 2 is image 1 turned by 40 degrees. With OpenCV's angle convention (the default
    # geometry) the keypoints' patches are rotation-normalised and raw pixels match; the opposite
    # sign or ignoring orientations breaks that.
    from descbal.eval.sequences import reprojection_errors
    from descbal.match import mutual_nn

    base = textured(7, 320, 400)
    rot = cv2.getRotationMatrix2D((200, 160), 40, 1.0)
    img2 = cv2.warpAffine(base, rot, (400, 320), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    h = np.vstack([rot, [0, 0, 1]])
    acc = {}
    for label, geo in [("default", PatchGeometry()), ("flipped", PatchGeometry(angle_sign=-1.0)),
                       ("upright", PatchGeometry(upright=True))]:
        ext = FeatureExtractor(_CentredPixels(), max_keypoints=250, geometry=geo, device="cpu")
        f1, f2 = ext(base), ext(img2)
        m, _ = mutual_nn(f1.descriptors, f2.descriptors)
        acc[label] = float(np.mean(reprojection_errors(f1.keypoints, f2.keypoints, m, h) <= 3))
    assert acc["default"] > 0.85 and acc["flipped"] < 0.3 and acc["upright"] < 0.3, acc


def test_resume_accepts_the_same_weights_under_another_path(folder: Path, tmp_path: Path, identity_model: Path) -> None:
    import shutil

    copy = tmp_path / "copy.pt"
    shutil.copy(identity_model, copy)
    out = tmp_path / "f.h5"
    cfg = ExtractConfig(model=str(identity_model), max_keypoints=5, device="cpu")
    assert extract_folder(folder, out, cfg).extracted == 3
    res = extract_folder(folder, out, ExtractConfig(model=str(copy), max_keypoints=5, device="cpu"))
    assert res.skipped_existing == 3


def test_bf16_is_close_to_float32_and_recorded(folder: Path, tmp_path: Path, identity_model: Path) -> None:
    from descbal.extract.writers import provenance_conflicts
    from descbal.models import build_model

    net = build_model("hardnet")
    img = textured(9, 200, 240)
    k = detect(img, "sift", 40)
    d32, _ = NetworkDescriber(net)(img, k)
    bf = NetworkDescriber(net, bf16=True)
    d16, _ = bf(img, k)
    assert d16.dtype == np.float32 and d16.shape == d32.shape
    gap = np.linalg.norm(d16 - d32, axis=1)
    assert 0 < gap.max() < 0.05  # bfloat16 ran (not identical), and stays close
    assert bf.provenance["compute_dtype"] == "bfloat16"
    # a file written in float32 is not resumed in bfloat16; files from before the key existed were float32
    out = tmp_path / "f.h5"
    assert extract_folder(folder, out, ExtractConfig(model=str(identity_model), max_keypoints=5, device="cpu")).extracted
    with pytest.raises(BadInputError, match="compute_dtype"):
        extract_folder(folder, out, ExtractConfig(model=str(identity_model), max_keypoints=5, device="cpu", bf16=True))
    assert provenance_conflicts({"model": "m"}, {"model": "m", "compute_dtype": "float32"}) == []
    assert provenance_conflicts({"model": "m"}, {"model": "m", "compute_dtype": "bfloat16"}) == ["compute_dtype"]
    r = runner.invoke(app, ["extract", str(folder), "-m", str(identity_model), "-o", str(tmp_path / "g.h5"), "--bf16",
                            "--max-keypoints", "5", "--device", "cpu", "--json", "-"])
    assert r.exit_code == 0, r.output
    assert '"compute_dtype": "bfloat16"' in r.output
    r = runner.invoke(app, ["extract", str(folder), "-m", "sift", "-o", str(tmp_path / "h.h5"), "--bf16"])
    assert r.exit_code == 2 and "--bf16 applies to networks" in r.output and not (tmp_path / "h.h5").exists()


def test_compiled_describer_equals_eager_and_compiles_once_for_every_batch_size() -> None:
    """The one test that runs inductor (about 20 s on 2 cores): float32 and bfloat16 compiled
    describers against eager ones on patches of real keypoints, in batches of 8, 4 and 3."""
    from descbal.extract.describers import keypoint_patches
    from descbal.models import build_model

    torch.manual_seed(0)
    net = build_model("hardnet")
    img = textured(9, 200, 240)
    patches = keypoint_patches(img, detect(img, "sift", 40), PatchGeometry(), torch.device("cpu"))
    assert len(patches) >= 19
    eager, eager16 = NetworkDescriber(net, batch_size=8), NetworkDescriber(net, batch_size=8, bf16=True)
    comp = NetworkDescriber(net, batch_size=8, compile=True)
    if not comp.compile_path.compiled:
        pytest.skip(f"inductor cannot compile here: {comp.compile_path.reason}")
    assert comp.provenance["compile"] == {"requested": True, "path": "inductor", "reason": None}
    assert eager.provenance["compile"] == {"requested": False, "path": "eager", "reason": None}
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    # patch sets of 5, 12 (8 + 4) and 19 (8 + 8 + 3) patches: batches of 5, 8, 4 and 3, one graph
    for n in (5, 12, 19):
        np.testing.assert_allclose(comp.describe_patches(patches[:n]), eager.describe_patches(patches[:n]), rtol=0,
                                   atol=1e-5)  # measured: 4e-7 (unit-norm descriptors; HyNet 6e-7)
    assert counters["stats"]["unique_graphs"] == 1
    comp16 = NetworkDescriber(net, batch_size=8, bf16=True, compile=True)
    assert comp16.provenance["compute_dtype"] == "bfloat16" and comp16.provenance["compile"]["path"] == "inductor"
    d16, e16 = comp16.describe_patches(patches[:19]), eager16.describe_patches(patches[:19])
    d32 = eager.describe_patches(patches[:19])
    assert d16.dtype == np.float32 and 0 < np.abs(d16 - d32).max()  # bfloat16 ran compiled
    assert np.linalg.norm(d16 - e16, axis=1).max() < 0.05  # measured: 0.004 (HyNet 0.015): bfloat16 rounding in other fusions


def test_compile_without_a_cxx_runs_eager_with_one_warning(folder: Path, tmp_path: Path, identity_model: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.config as inductor_config

    # a machine without a C++ compiler (config.patch: monkeypatch's undo would delete the config entry)
    with inductor_config.patch({"cpp.cxx": ("no-such-cxx",)}):
        monkeypatch.delenv("CXX", raising=False)
        net = PatchIdentity()
        d = NetworkDescriber(net, compile=True)
        assert d.forward is d.model and d.provenance["compile"]["path"] == "eager"
        assert d.provenance["compile"]["requested"] is True and "no C++ compiler" in d.provenance["compile"]["reason"]
        img = textured(9, 200, 240)
        k = detect(img, "sift", 10)
        np.testing.assert_array_equal(d(img, k)[0], NetworkDescriber(net)(img, k)[0])
        # an extraction made without --compile resumes with it (same descriptors up to rounding)
        out = tmp_path / "f.h5"
        base = ["extract", str(folder), "-m", str(identity_model), "-o", str(out), "--max-keypoints", "5", "--device", "cpu"]
        assert runner.invoke(app, base).exit_code == 0
        r = runner.invoke(app, [*base, "--compile", "--json", "-"])
        assert r.exit_code == 0, r.output
        warnings = [line for line in r.output.splitlines() if "warning" in line]
        assert len(warnings) == 1 and "--compile: compiling skipped, running eager: no C++ compiler" in warnings[0]
        assert '"skipped_existing": 3' in r.output and '"path": "eager"' in r.output
        r = runner.invoke(app, ["extract", str(folder), "-m", "rootsift", "-o", str(tmp_path / "h.h5"), "--compile"])
        assert r.exit_code == 2 and "--compile applies to networks" in r.output and not (tmp_path / "h.h5").exists()
