"""``descbal cache sfm``: Brown-style training sets from COLMAP reconstructions (issue 17)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

pycolmap = pytest.importorskip("pycolmap")

from sfm_fixtures import SyntheticScene, box_surface_points, project, render_box_scene, write_box_model  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402, F401

from descbal.cli import app  # noqa: E402
from descbal.data.patchset import load_patchset, read_datasets  # noqa: E402
from descbal.errors import BadInputError  # noqa: E402
from descbal.geometry import PatchGeometry, build_pyramid, patch_affines, sample_warped_patches  # noqa: E402
from descbal.images import read_gray  # noqa: E402
from descbal.sfm import SfmSetConfig, build_sfm_set, cache_sfm, sfm_inputs  # noqa: E402
from descbal.sfm.trainset import scene_name  # noqa: E402

runner = CliRunner()


@dataclass
class Box:
    """The synthetic scene and its models: ``out`` in descbal reconstruct's layout (binary model/
    and features.h5), ``text`` a text model without features; ``ids`` the 3D point id of each
    point of ``xyz`` (0: not in the model); ``special`` names some points' indices."""

    root: Path
    scene: SyntheticScene
    xyz: np.ndarray
    ids: list[int]
    special: dict[str, int]

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def out(self) -> Path:
        return self.root / "box"

    @property
    def text(self) -> Path:
        return self.root / "boxtxt" / "sparse" / "0"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Box:
    root = tmp_path_factory.mktemp("sfmset")
    scene = render_box_scene(root / "images", num_views=8, size=(640, 480))
    xyz, normals = box_surface_points(10, seed=1)
    plus_x = np.array([1.0, 0.0, 0.0])
    extra = {
        "A": [1.0, 0.3, 0.2], "B": [1.0, 0.31, 0.2],  # ~1 px apart in every view
        "C": [1.0, -0.4, -0.3], "D": [1.0, -0.4, -0.296],  # one point split into two tracks (views 0-3, 4-6)
        "E": [1.0, 0.0, -0.6],  # seen in two views only
        "F": [1.0, 0.6, -0.5],  # three views, one sighting 10 px off: mean error 3.3 px
        "G": [1.0, -0.7, 0.5],  # six views, one sighting 10 px off: mean error 1.7 px, that sighting dropped
    }
    special = {k: len(xyz) + i for i, k in enumerate(extra)}
    xyz = np.concatenate([xyz, np.array(list(extra.values()))])
    normals = np.concatenate([normals, np.tile(plus_x, (len(extra), 1))])
    only = {special["C"]: [0, 1, 2, 3], special["D"]: [4, 5, 6], special["E"]: [0, 1], special["F"]: [0, 1, 2],
            special["G"]: [0, 1, 2, 3, 4, 5]}
    shift = {(special["F"], 1): (10.0, 0.0), (special["G"], 2): (10.0, 0.0)}
    ids = write_box_model(root / "box" / "model", scene, xyz, normals, only=only, shift=shift,
                          features=root / "box" / "features.h5")
    assert write_box_model(root / "boxtxt" / "sparse" / "0", scene, xyz, normals, only=only, shift=shift,
                           text=True) == ids
    return Box(root, scene, xyz, ids, special)


def _views(box: Box, p: int) -> list[int]:
    """The views point ``p`` is observed in (as write_box_model decides), brute force."""
    rec = pycolmap.Reconstruction(box.out / "model")
    return sorted(e.image_id - 1 for e in rec.points3D[box.ids[p]].track.elements)


def _index_of_id(box: Box) -> dict[int, int]:
    return {pid: p for p, pid in enumerate(box.ids) if pid}


def _near_reference(box: Box, ps_labels: np.ndarray, ex: dict[str, np.ndarray], near_px: float) -> set[tuple[int, int]]:
    """The near label pairs by their definition, pair by pair: sightings within near_px in one
    image, or 3D points within near_px pixels at the coarsest view of either."""
    of_id = _index_of_id(box)
    f = box.scene.K[0, 0]
    labels = sorted(set(ps_labels.tolist()))
    sight = {lab: [(int(i), ex["keypoint"][k, :2].astype(np.float64)) for k in np.flatnonzero(ps_labels == lab)
                   for i in [ex["image_id"][k]]] for lab in labels}
    xyz = {lab: box.xyz[of_id[int(ex["point3d_id"][ps_labels == lab][0])]] for lab in labels}
    coarse = {lab: max(project(box.scene, box.scene.names[i - 1], xyz[lab][None])[1][0] / f for i, _ in sight[lab])
              for lab in labels}
    out = set()
    for a in labels:
        for b in labels:
            if a >= b:
                continue
            close_2d = any(i == j and np.linalg.norm(u - v) <= near_px for i, u in sight[a] for j, v in sight[b])
            close_3d = np.linalg.norm(xyz[a] - xyz[b]) <= near_px * max(coarse[a], coarse[b])
            if close_2d or close_3d:
                out.add((a, b))
    return out


# ------------------------------------------------------------------------------ inputs

def test_orientations_decide_the_recorded_geometry(box: Box, tmp_path: Path) -> None:
    """descbal's features file: oriented; no features file, or another extractor's (its scales
    are COLMAP's, its angles its own): depth sizes, angle 0 and an upright geometry recorded;
    scenes of both kinds in one oriented set are refused, and accepted upright."""
    with_oris, ex, _ = build_sfm_set(sfm_inputs([box.out], images=box.images), SfmSetConfig())
    assert with_oris.geometry == PatchGeometry() and (ex["keypoint"][:, 3] != 0).any()
    bare, _, _ = build_sfm_set(sfm_inputs([box.text], images=box.images), SfmSetConfig())
    assert bare.geometry == PatchGeometry(upright=True)
    other = tmp_path / "hloc.h5"  # the same file without descbal's provenance attribute
    shutil.copy(box.out / "features.h5", other)
    with h5py.File(other, "a") as h5:
        del h5.attrs["descbal_provenance"]
    hloc, ex_h, _ = build_sfm_set(sfm_inputs([box.out], images=box.images, features=other), SfmSetConfig())
    assert hloc.geometry == PatchGeometry(upright=True) and (ex_h["keypoint"][:, 3] == 0).all()
    with h5py.File(other, "r") as h5:  # its scales were not read as diameters
        g = h5[box.scene.names[0]]
        assert not np.isin(ex_h["keypoint"][ex_h["image_id"] == 1, 2], g["scales"][...]).any()
    both = sfm_inputs([f"{box.out}={box.images}", f"{box.text}={box.images}"])
    with pytest.raises(BadInputError, match=r"scene\(s\) .* have no keypoint orientations.*--upright"):
        build_sfm_set(both, SfmSetConfig())
    up, _, _ = build_sfm_set(both, SfmSetConfig(geometry=PatchGeometry(upright=True)))
    assert up.geometry == PatchGeometry(upright=True)



def test_inputs_resolve_models_features_and_scene_names(box: Box, tmp_path: Path) -> None:
    a, b, c = sfm_inputs([str(box.out), f"{box.text}={box.images}", box.out], images=box.images)
    assert a.model == box.out / "model" and a.features == box.out / "features.h5" and a.images == box.images
    assert b.model == box.text and b.features is None  # no features.h5 beside sparse/0
    assert [a.scene, b.scene, c.scene] == ["box", "boxtxt", "box-2"]  # sparse/0 skipped upward; duplicates numbered
    assert scene_name(Path("/data/castle/sparse/0")) == "castle" and scene_name(Path("/0/model")) == "scene"
    with pytest.raises(BadInputError, match="--images DIR or"):
        sfm_inputs([box.out])
    with pytest.raises(BadInputError, match="single reconstruction"):
        sfm_inputs([box.out, box.text], images=box.images, features=box.out / "features.h5")


# ------------------------------------------------------------------------------ patches


def test_patches_are_centred_on_the_projections_with_the_feature_frames(box: Box) -> None:
    """(1) with the features file: every keypoint is its 3D point's projection and carries the
    feature's own diameter and angle, and every patch is exactly the one sampled there."""
    ps, ex, skipped = build_sfm_set(sfm_inputs([box.out], images=box.images), SfmSetConfig())
    assert skipped == [] and ps.patches.shape[1:] == (64, 64) and ps.geometry == PatchGeometry()
    of_id = _index_of_id(box)
    kp = ex["keypoint"].astype(np.float64)
    with h5py.File(box.out / "features.h5", "r") as h5:
        for k in range(len(ps)):
            name = box.scene.names[int(ex["image_id"][k]) - 1]
            xy, _ = project(box.scene, name, box.xyz[of_id[int(ex["point3d_id"][k])]][None])
            np.testing.assert_allclose(kp[k, :2], xy[0], atol=1e-3)
            j = int(np.argmin(np.abs(h5[name]["keypoints"][:] - kp[k, :2]).sum(1)))  # the sighting's keypoint
            assert (kp[k, 2], kp[k, 3]) == (h5[name]["scales"][j], h5[name]["oris"][j])
    for i in np.unique(ex["image_id"]):
        idx = np.flatnonzero(ex["image_id"] == i)
        pyr = build_pyramid(read_gray(box.images / box.scene.names[int(i) - 1]))
        aff = patch_affines(kp[idx, :2], kp[idx, 2], kp[idx, 3], PatchGeometry(), 64)
        direct = sample_warped_patches(pyr, aff, None, 5.0 * kp[idx, 2] / 64, 64)
        np.testing.assert_array_equal(ps.patches[idx], direct)


def test_without_features_sizes_follow_depth_from_a_reference_sighting(box: Box) -> None:
    """(1) text model, no features: keypoints at the projections, angle 0, the same physical
    size in every view (diameter x depth / focal constant) and ref_scale at the lower-median view."""
    ps, ex, _ = build_sfm_set(sfm_inputs([box.text], images=box.images), SfmSetConfig(ref_scale=10.0))
    of_id = _index_of_id(box)
    f = box.scene.K[0, 0]
    kp = ex["keypoint"].astype(np.float64)
    assert (kp[:, 3] == 0).all()
    for lab in np.unique(ps.labels):
        idx = np.flatnonzero(ps.labels == lab)
        X = box.xyz[of_id[int(ex["point3d_id"][idx[0]])]][None]
        mpp = []
        for k in idx:
            xy, depth = project(box.scene, box.scene.names[int(ex["image_id"][k]) - 1], X)
            np.testing.assert_allclose(kp[k, :2], xy[0], atol=1e-3)
            mpp.append(depth[0] / f)
        mpp = np.array(mpp)
        ref = np.argsort(mpp)[(len(mpp) - 1) // 2]
        np.testing.assert_allclose(kp[idx, 2] * mpp, 10.0 * mpp[ref], rtol=1e-5)
        assert kp[idx[ref], 2] == pytest.approx(10.0, rel=1e-6)


def test_labels_tracks_reprojection_and_holdout(box: Box) -> None:
    """(2) one label per kept point in point id order; short tracks and a point with a large
    mean error dropped, a single bad sighting dropped; holdout by point; pairs 50/50 among
    held-out patches only."""
    ps, ex, _ = build_sfm_set(sfm_inputs([box.text], images=box.images),
                              SfmSetConfig(holdout_fraction=0.25, pairs=400, seed=3))
    sp = box.special
    expected = [p for p, pid in enumerate(box.ids) if pid and p not in (sp["E"], sp["F"]) and len(_views(box, p)) >= 3]
    n = len(expected)
    assert np.array_equal(np.unique(ps.labels), np.arange(n))
    assert np.all(np.diff(ps.labels) >= 0)  # patches grouped by label
    first = np.searchsorted(ps.labels, np.arange(n))
    assert ex["point3d_id"][first].tolist() == [box.ids[p] for p in expected]  # label order = point id order
    counts = np.bincount(ps.labels)
    for lab, p in enumerate(expected):
        assert counts[lab] == len(_views(box, p)) - (p == sp["G"]), p
    g = np.flatnonzero(ex["point3d_id"] == box.ids[sp["G"]])
    assert sorted(ex["image_id"][g].tolist()) == [1, 2, 4, 5, 6]  # view 2 (image id 3) was 10 px off
    held = np.zeros(n, bool)
    held[ps.labels[ps.holdout]] = True
    assert np.array_equal(ps.holdout, held[ps.labels]) and held.sum() == round(0.25 * n)
    assert ps.pairs is not None and len(ps.pairs) == 400 and ps.pairs[:, 2].sum() == 200
    assert ps.holdout[ps.pairs[:, 0]].all() and ps.holdout[ps.pairs[:, 1]].all()
    same = ps.labels[ps.pairs[:, 0]] == ps.labels[ps.pairs[:, 1]]
    assert np.array_equal(same, ps.pairs[:, 2] == 1) and (ps.pairs[:, 0] != ps.pairs[:, 1]).all()
    again, _, _ = build_sfm_set(sfm_inputs([box.text], images=box.images),
                                SfmSetConfig(holdout_fraction=0.25, pairs=400, seed=3))
    assert np.array_equal(again.pairs, ps.pairs) and np.array_equal(again.patches, ps.patches)  # seeded


def test_max_points_keeps_a_seeded_subset_of_points(box: Box) -> None:
    inputs = sfm_inputs([box.text], images=box.images)
    full, ex_full, _ = build_sfm_set(inputs, SfmSetConfig())
    ps, ex, _ = build_sfm_set(inputs, SfmSetConfig(max_points=10, seed=5))
    assert np.array_equal(np.unique(ps.labels), np.arange(10))
    kept = np.unique(ex["point3d_id"])
    assert len(kept) == 10 and np.isin(kept, ex_full["point3d_id"]).all()
    for pid in kept:  # whole tracks, the same patches as in the full set
        np.testing.assert_array_equal(ps.patches[ex["point3d_id"] == pid], full.patches[ex_full["point3d_id"] == pid])
    again, ex2, _ = build_sfm_set(inputs, SfmSetConfig(max_points=10, seed=5))
    assert np.array_equal(ex2["point3d_id"], ex["point3d_id"])
    other, ex3, _ = build_sfm_set(inputs, SfmSetConfig(max_points=10, seed=6))
    assert not np.array_equal(np.unique(ex3["point3d_id"]), kept)


def test_near_points_are_recorded_and_never_held_out_non_matches(box: Box, tmp_path: Path) -> None:
    """(3) two points 1 px apart, and one point split into two tracks that share no image, are
    near; the table is exactly the definition's; no held-out non-match joins near points;
    keep_near writes none."""
    inputs = sfm_inputs([box.out], images=box.images)
    cfg = SfmSetConfig(holdout_scene="box", pairs=4000)
    ps, ex, _ = build_sfm_set(inputs, cfg)
    label_of = {int(pid): int(lab) for pid, lab in zip(ex["point3d_id"], ps.labels, strict=True)}
    sp = box.special
    ab = tuple(sorted((label_of[box.ids[sp["A"]]], label_of[box.ids[sp["B"]]])))
    cd = tuple(sorted((label_of[box.ids[sp["C"]]], label_of[box.ids[sp["D"]]])))
    assert ps.near is not None
    table = {tuple(r) for r in ps.near.tolist()}
    assert ab in table and cd in table
    assert table == _near_reference(box, ps.labels, ex, 3.0)
    assert np.array_equal(ps.near, np.unique(ps.near, axis=0)) and (ps.near[:, 0] < ps.near[:, 1]).all()
    assert ps.holdout.all()
    non = ps.pairs[ps.pairs[:, 2] == 0]
    pairs = {tuple(sorted(r)) for r in np.stack([ps.labels[non[:, 0]], ps.labels[non[:, 1]]], 1).tolist()}
    assert not pairs & table
    res = cache_sfm(inputs, tmp_path / "keep.h5", SfmSetConfig(keep_near=True))
    with h5py.File(res.path, "r") as h5:
        assert "near" not in h5
    assert load_patchset(res.path).near is None


def test_merged_scenes_keep_labels_apart_and_a_scene_can_be_held_out(box: Box) -> None:
    """(4) the same reconstruction twice: disjoint labels, scene tags; --holdout-scene."""
    inputs = sfm_inputs([box.text, box.text], images=box.images)
    one, ex1, _ = build_sfm_set(inputs[:1], SfmSetConfig())
    ps, ex, _ = build_sfm_set(inputs, SfmSetConfig(holdout_scene="boxtxt-2"))
    n, p = len(one), int(one.labels.max()) + 1
    assert ps.name == "boxtxt+boxtxt-2" and ex["scene"].tolist() == [0] * n + [1] * n
    assert np.array_equal(ps.labels, np.concatenate([one.labels, one.labels + p]))
    assert np.array_equal(ex["point3d_id"], np.tile(ex1["point3d_id"], 2))
    assert np.array_equal(ps.holdout, ex["scene"] == 1)
    assert np.array_equal(ps.near, np.concatenate([one.near, one.near + p]))  # no near pair across scenes
    with pytest.raises(BadInputError, match=r"'nowhere' is not a scene of the inputs \(boxtxt, boxtxt-2\)"):
        build_sfm_set(inputs, SfmSetConfig(holdout_scene="nowhere"))


@pytest.mark.usefixtures("one_torch_thread")
def test_the_set_loads_and_trains(box: Box, tmp_path: Path) -> None:
    """(5) load_patchset reads it with its geometry, extras are readable, two training steps run."""
    from descbal.train.trainer import open_run

    res = cache_sfm(sfm_inputs([box.out], images=box.images), tmp_path / "set.h5", SfmSetConfig())
    ps = load_patchset(res.path)
    assert len(ps) == res.num_patches and ps.geometry == PatchGeometry() and ps.near is not None
    ex = read_datasets(res.path, ["scene", "image_id", "point3d_id", "keypoint"])
    assert ex["keypoint"].shape == (len(ps), 4) and ex["scene"].dtype == np.int16
    with h5py.File(res.path, "r") as h5:
        assert json.loads(h5.attrs["scenes"]) == ["box"]
        assert json.loads(h5.attrs["inputs"])[0]["features"] == str(box.out / "features.h5")
        assert json.loads(h5.attrs["config"])["min_track"] == 3
    trainer = open_run(tmp_path / "run", recipe="self-tnet-small", data=res.path, device="cpu",
                       overrides=["loop.epochs=1", "loop.iters_per_epoch=2", "loop.classes_per_batch=8"])
    assert trainer.fit(stop_after=2).to_json() == {"stopped": True, "steps": 2}


# ------------------------------------------------------------------------------ command line


def test_cli_builds_skips_when_current_and_reports_bad_inputs(box: Box, tmp_path: Path) -> None:
    """(6) --json result, idempotent rerun, missing model (3), not a model (2), features that are
    not the model's (2), a model with no usable point (2), a missing image skipped (--strict: 1)."""
    out = tmp_path / "s.h5"
    args = ["cache", "sfm", str(box.out), "--images", str(box.images), "-o", str(out), "--json", "-"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["skipped"] is False and doc["scenes"] == ["box"] and doc["images"] == 8 and doc["skipped_images"] == []
    assert doc["num_patches"] == len(load_patchset(out)) and doc["num_near"] >= 2 and doc["num_pairs"] == 10000
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and json.loads(res.stdout)["skipped"] is True and "up to date, skipped" in res.stderr

    res = runner.invoke(app, ["cache", "sfm", str(tmp_path / "nope"), "--images", str(box.images), "-o", str(out)])
    assert res.exit_code == 3 and str(tmp_path / "nope") in res.stderr
    res = runner.invoke(app, ["cache", "sfm", str(box.images), "--images", str(box.images), "-o", str(out)])
    assert res.exit_code == 2 and "not a COLMAP model" in res.stderr and str(box.images) in res.stderr
    res = runner.invoke(app, ["cache", "sfm", str(box.out), "--images", str(box.images), "-o", str(out),
                              "--min-track", "9"])
    assert res.exit_code == 2 and "no usable 3D point" in res.stderr and str(box.out / "model") in res.stderr
    res = runner.invoke(app, ["cache", "sfm", str(box.out), "--images", str(box.images), "-o", str(out),
                              "--min-track", "1"])
    assert res.exit_code == 2 and "min_track" in res.stderr

    wrong = tmp_path / "wrong.h5"
    shutil.copy(box.out / "features.h5", wrong)
    with h5py.File(wrong, "r+") as h5:
        h5["0002.png"]["keypoints"][...] = h5["0002.png"]["keypoints"][...] + 0.5  # COLMAP's convention by mistake
    res = runner.invoke(app, ["cache", "sfm", str(box.out), "--images", str(box.images), "-o", str(out),
                              "--features", str(wrong)])
    assert res.exit_code == 2 and "not the model's features file" in res.stderr and str(wrong) in res.stderr
    assert "0002.png" in res.stderr and len(res.stderr.strip().splitlines()) == 1

    few = tmp_path / "few"
    shutil.copytree(box.images, few)
    (few / "0003.png").unlink()
    (few / "0005.png").write_bytes(b"not a png")
    args = ["cache", "sfm", f"{box.text}={few}", "-o", str(tmp_path / "few.h5"), "--json", "-"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [s["path"] for s in doc["skipped_images"]] == [str(few / "0003.png"), str(few / "0005.png")]
    assert doc["images"] == 6 and "2 input(s) skipped" in res.stderr
    ex = read_datasets(tmp_path / "few.h5", ["image_id"])
    assert not np.isin(ex["image_id"], [4, 6]).any()
    res = runner.invoke(app, [*args, "--strict"])
    assert res.exit_code == 1 and json.loads(res.stdout)["skipped"] is True  # up to date, still without them


def test_a_descbal_reconstruction_with_its_features(tmp_path: Path) -> None:
    """descbal reconstruct's OUT as the input: its model/ and features.h5 (DoG scales and
    orientations, keypoint i = points2D i, +0.5 px in COLMAP) are found and agree."""
    from descbal.extract.pipeline import ExtractConfig
    from descbal.sfm import CameraOptions, ReconstructConfig, reconstruct

    # the set-up test_sfm's end-to-end test reconstructs reliably: 8 views, known intrinsics
    sc = render_box_scene(tmp_path / "images", num_views=8)
    np.savetxt(tmp_path / "K.txt", sc.K)
    res = reconstruct(tmp_path / "images", tmp_path / "out",
                      ReconstructConfig(extract=ExtractConfig(model="sift", max_keypoints=1024, device="cpu"),
                                        camera=CameraOptions(intrinsics=str(tmp_path / "K.txt"), single_camera=True)))
    assert res.registered == 8
    (inp,) = sfm_inputs([tmp_path / "out"], images=tmp_path / "images")
    assert inp.features == tmp_path / "out" / "features.h5" and inp.scene == "out"
    ps, ex, skipped = build_sfm_set([inp], SfmSetConfig())
    assert skipped == [] and len(np.unique(ps.labels)) > 100
    rec = pycolmap.Reconstruction(tmp_path / "out" / "model")
    with h5py.File(inp.features, "r") as h5:
        for k in range(0, len(ps), 7):
            im = rec.images[int(ex["image_id"][k])]
            point = rec.points3D[int(ex["point3d_id"][k])]
            # COLMAP may keep two sightings of one point in one image (SIFT's second orientation at
            # the same place): the patch's keypoint is one of them, position, size and angle
            cands = [e.point2D_idx for e in point.track.elements if e.image_id == im.image_id]
            g = h5[im.name]
            frames = [[*g["keypoints"][c].tolist(), g["scales"][c], g["oris"][c]] for c in cands]
            assert ex["keypoint"][k].tolist() in frames
            j = cands[frames.index(ex["keypoint"][k].tolist())]
            np.testing.assert_allclose(ex["keypoint"][k, :2], im.points2D[j].xy - 0.5, atol=1e-3)
