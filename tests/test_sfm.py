"""Structure from motion through pycolmap: database writer, reconstruction, ground truth, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

pycolmap = pytest.importorskip("pycolmap")

from sfm_fixtures import render_box_scene  # noqa: E402

from descbal.cli import app  # noqa: E402
from descbal.errors import BadInputError  # noqa: E402
from descbal.extract.pipeline import FeatureExtractor, scale_features  # noqa: E402
from descbal.extract.writers import Features  # noqa: E402
from descbal.sfm import (  # noqa: E402
    CameraOptions,
    ReconstructConfig,
    colmap_camera_params,
    load_ground_truth,
    read_colmap_groundtruth,
    reconstruct,
    to_colmap_keypoints,
    write_colmap_database,
)
from descbal.sfm.evaluate import pose_auc, relative_pose_errors, robust_similarity, umeyama  # noqa: E402
from descbal.sfm.groundtruth import read_strecha_camera  # noqa: E402

runner = CliRunner()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "sfm"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data/sfm")


# ------------------------------------------------------------------------------ small generated inputs


def _write_inputs(tmp: Path, names: list[str], image_names: list[str] | None = None) -> tuple[Path, Path, Path]:
    """Images (64 x 48 grey), an hloc features file with 3 keypoints per image and a matches file
    with every pair of ``names`` (keypoint i of image 0 -> keypoint (i + 1) % 3 of image 1)."""
    images = tmp / "images"
    for n in image_names if image_names is not None else names:
        (images / n).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(images / n), np.full((48, 64), 100, np.uint8))
    feats, matches = tmp / "feats.h5", tmp / "matches.h5"
    with h5py.File(feats, "w") as h5:
        for k, n in enumerate(names):
            g = h5.create_group(n)
            g["keypoints"] = np.array([[0, 0], [10.25, 3], [63, 47]], np.float32) + np.float32(k)
            g["descriptors"] = np.eye(3, 4, dtype=np.float32).T
            g["image_size"] = np.array([64, 48])
    with h5py.File(matches, "w") as h5:
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                h5.require_group(a.replace("/", "-")).create_group(b.replace("/", "-"))["matches0"] = \
                    np.array([1, 2, -1], np.int32)
    return images, feats, matches


def test_pixel_shift_is_half_a_pixel() -> None:
    # descbal/hloc: centre of the top-left pixel at (0, 0); COLMAP: its corner at (0, 0)
    assert to_colmap_keypoints(np.array([[0, 0], [10.25, 3]])).tolist() == [[0.5, 0.5], [10.75, 3.5]]
    K = np.array([[500.0, 0, 31.5], [0, 400.0, 23.5], [0, 0, 1]])
    assert colmap_camera_params("PINHOLE", K) == [500.0, 400.0, 32.0, 24.0]
    assert colmap_camera_params("SIMPLE_RADIAL", K) == [450.0, 32.0, 24.0, 0.0]
    with pytest.raises(BadInputError, match="unknown camera model"):
        colmap_camera_params("FISHEYE_9000", K)


def test_database_round_trip(tmp_path: Path) -> None:
    names = ["a.png", "sub/b.png", "c.png"]
    images, feats, matches = _write_inputs(tmp_path, names)
    (tmp_path / "K.txt").write_text("500 0 31.5\n0 400 23.5\n0 0 1\n")
    db_path = tmp_path / "out.db"
    res = write_colmap_database(feats, matches, images, db_path, verify=False,
                                camera=CameraOptions("PINHOLE", str(tmp_path / "K.txt")))
    assert (res.images, res.cameras, res.keypoints, res.pairs, res.matches) == (3, 3, 9, 3, 6)
    with pycolmap.Database.open(db_path) as db:
        ims = {im.name: im for im in db.read_all_images()}
        assert sorted(ims) == sorted(names)
        for k, n in enumerate(names):
            kp = db.read_keypoints(ims[n].image_id)
            assert np.allclose(kp[:, :2], np.array([[0, 0], [10.25, 3], [63, 47]]) + k + 0.5)
            cam = db.read_camera(ims[n].camera_id)
            assert (cam.width, cam.height) == (64, 48)
            assert np.allclose(cam.params, [500, 400, 32, 24])
        m = db.read_matches(ims["a.png"].image_id, ims["sub/b.png"].image_id)
        pairs = {tuple(r) for r in m.tolist()}
        # COLMAP may store the pair in id order; either way the correspondences are (0,1), (1,2)
        assert pairs in ({(0, 1), (1, 2)}, {(1, 0), (2, 1)})
    # never into an existing database
    with pytest.raises(BadInputError, match="exists"):
        write_colmap_database(feats, matches, images, db_path, verify=False)
    r = runner.invoke(app, ["colmap", str(feats), str(matches), "--images", str(images), "--database", str(db_path),
                            "--single-camera", "--no-verify", "--overwrite", "--json", "-", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cameras"] == 1


def test_missing_names_listed_in_one_error_before_writing(tmp_path: Path) -> None:
    names = ["a.png", "b.png", "c.png"]
    images, feats, matches = _write_inputs(tmp_path, names, image_names=["a.png"])
    with h5py.File(matches, "a") as h5:
        h5.require_group("a.png").create_group("ghost.png")["matches0"] = np.array([0, -1, -1], np.int32)
    db_path = tmp_path / "out.db"
    r = runner.invoke(app, ["colmap", str(feats), str(matches), "--images", str(images), "--database", str(db_path)])
    assert r.exit_code == 2
    for n in ("b.png", "c.png", "ghost.png"):
        assert n in r.output
    assert "Traceback" not in r.output
    assert not db_path.exists() and not list(tmp_path.glob(".out.db*"))


def test_pairs_file_naming_unknown_images(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for n in ("0.png", "1.png"):
        cv2.imwrite(str(images / n), np.full((48, 64), 100, np.uint8))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("0.png 1.png\n0.png 7.png\nx/8.png 1.png\n")
    out = tmp_path / "rec"
    with pytest.raises(BadInputError, match=r"2 name\(s\) of the pairs file") as e:
        reconstruct(images, out, ReconstructConfig(pairs=str(pairs)))
    assert "7.png" in str(e.value) and "x/8.png" in str(e.value)
    assert not out.exists()  # checked before anything is extracted


def test_scene_without_cameras_is_one_line_exit_2(tmp_path: Path) -> None:
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    cv2.imwrite(str(scene / "images" / "0.png"), np.zeros((8, 8), np.uint8))
    r = runner.invoke(app, ["eval", "sfm", str(scene), "-m", "sift", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "no ground-truth cameras" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ evaluation maths


def test_umeyama_and_robust_similarity_recover_a_known_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(8, 3))
    a = np.deg2rad(30)
    R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    tgt = 2.5 * src @ R.T + np.array([1.0, -2.0, 3.0])
    s, R2, t2 = umeyama(src, tgt)
    assert s == pytest.approx(2.5) and np.allclose(R2, R) and np.allclose(t2, [1, -2, 3])
    bad = tgt.copy()
    bad[3] += 10.0  # one wildly wrong camera
    s, R2, t2, inl = robust_similarity(src, bad, threshold=0.1)
    assert inl.tolist() == [True, True, True, False, True, True, True, True]
    assert s == pytest.approx(2.5) and np.allclose(R2, R)


def test_pose_auc_and_relative_pose_errors_by_hand() -> None:
    # errors 1 and 3 deg: recall 0 -> 0.5 at 1, -> 1 at 3, flat to 5: area 0.25 + 1.5 + 2 = 3.75, / 5
    assert pose_auc(np.array([3.0, 1.0]), (5.0,)) == [pytest.approx(0.75)]
    assert pose_auc(np.array([30.0]), (5.0,)) == [0.0]
    eye = np.eye(3)
    gt = {"a": (eye, np.zeros(3)), "b": (eye, np.array([-1.0, 0, 0])), "c": (eye, np.array([0, -1.0, 0]))}
    # the same poses in another world frame (scaled by 2) have no relative-pose error; c missing: 180
    est = {"a": (eye, np.zeros(3)), "b": (eye, np.array([-2.0, 0, 0]))}
    assert relative_pose_errors(gt, est).tolist() == [0.0, 180.0, 180.0]


def test_scale_features_maps_keypoints_back_to_full_resolution() -> None:
    f = Features(keypoints=np.array([[0, 0], [99, 49]], np.float32), descriptors=np.zeros((2, 4), np.float32),
                 scores=np.ones(2, np.float32), scales=np.array([4, 8], np.float32), oris=np.zeros(2, np.float32),
                 image_size=np.array([100, 50]))
    g = scale_features(f, 200, 100)
    # pixel centres at integers: small pixel 0 covers big pixels 0 and 1 -> centre 0.5
    assert g.keypoints.tolist() == [[0.5, 0.5], [198.5, 98.5]]
    assert g.scales.tolist() == [8, 16] and g.image_size.tolist() == [200, 100]
    img = cv2.resize((np.indices((96, 128)).sum(0) % 37 * 7).astype(np.uint8), (256, 192))
    ext = FeatureExtractor("sift", max_keypoints=50, device="cpu", max_size=128)
    assert ext(img).image_size.tolist() == [256, 192]


# ------------------------------------------------------------------------------ end to end


def _strecha_scene(root: Path) -> Path:
    """The synthetic box scene in the Strecha layout (images/, images/K.txt, gt_dense_cameras/)."""
    scene = root / "box"
    sc = render_box_scene(scene / "images", num_views=8)
    np.savetxt(scene / "images" / "K.txt", sc.K)
    (scene / "gt_dense_cameras").mkdir()
    for n in sc.names:
        lines = [" ".join(map(str, r)) for r in sc.K] + ["0 0 0"]
        lines += [" ".join(map(str, r)) for r in sc.R[n].T] + [" ".join(map(str, sc.C[n])), "640 480"]
        (scene / "gt_dense_cameras" / f"{n}.camera").write_text("\n".join(lines) + "\n")
    return scene


def test_synthetic_box_reconstructs_and_aligns_to_its_cameras(tmp_path: Path) -> None:
    scene = _strecha_scene(tmp_path)
    K, R, C = read_strecha_camera(scene / "gt_dense_cameras" / "0000.png.camera")
    gt = load_ground_truth(scene)
    assert gt.source == "strecha" and len(gt.names) == 8 and np.allclose(gt.R["0000.png"], R)
    out = tmp_path / "eval"
    r = runner.invoke(app, ["eval", "sfm", str(scene), "-m", "sift", "--out", str(out), "--single-camera",
                            "--intrinsics", str(scene / "images" / "K.txt"), "--device", "cpu", "--json", "-", "-q"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["rows"][0]
    assert row["registered"] == 8 and row["points3d"] > 300
    radius = 6.0  # cameras stand 6 units from the box: errors are a small fraction of that
    assert row["centre_error_median"] < 0.002 * radius  # about 0.0007 x radius here
    assert row["rotation_error_median"] < 0.5  # about 0.2 deg here
    assert row["pose_accuracy"]["5"] == 1.0
    assert (out / "box.png").is_file()
    summary = json.loads((out / "box" / "sift" / "summary.json").read_text())
    assert summary["registered"] == 8 and set(summary["seconds"]) == {"extract", "pairs", "match", "database", "mapping"}
    # the model written is a COLMAP model: readable back as ground truth, same centres
    again = read_colmap_groundtruth(out / "box" / "sift", out / "box" / "sift" / "model")
    assert sorted(again.C) == gt.names
    # resumable: nothing is redone
    res = reconstruct(scene / "images", out / "box" / "sift",
                      ReconstructConfig(camera=CameraOptions(intrinsics=str(scene / "images" / "K.txt"),
                                                             single_camera=True),
                                        extract=_extract_cfg()))
    assert res.resumed == ["extract", "match", "database", "mapping"] and res.registered == 8


def _extract_cfg():  # the extraction the CLI resolved above
    from descbal.extract.pipeline import ExtractConfig

    return ExtractConfig(max_keypoints=4096, device="cpu")


@pytest.mark.skipif(not (SHARED / "fountain-P11").is_dir(), reason="shared data not present")
def test_strecha_camera_reader_on_fountain() -> None:
    K, R, C = read_strecha_camera(SHARED / "fountain-P11" / "gt_dense_cameras" / "0000.jpg.camera")
    assert K[0, 0] == pytest.approx(2759.48) and C.tolist() == pytest.approx([-7.28137, -7.57667, 0.204446])
    # R is world -> camera: the file's rotation transposed (x ~ K R_s^T (X - C))
    assert R[0].tolist() == pytest.approx([0.450927, -0.892535, 0.00679989])
    gt = load_ground_truth(SHARED / "fountain-P11")
    assert len(gt.names) == 11 and gt.names[0] == "0000.jpg"
