"""Brown-style training sets from COLMAP reconstructions (``descbal cache sfm``).

Brown's sets are patches of 3D points seen in several photos; a reconstruction has exactly
that. For every 3D point with at least ``min_track`` usable sightings, one patch per sighting:

* **Which sightings.** The point's mean reprojection error (COLMAP's ``error``) must be at most
  ``max_reproj`` px, and so must each sighting's own error (the point projected through that
  image's pose and camera, against its observed keypoint); a sighting above it is dropped, as
  are sightings in images that cannot be read (listed as skipped). The point then still needs
  ``min_track`` sightings.
* **Where.** Centred on the observed keypoint, in descbal pixels (centres at integers: COLMAP's
  ``xy - 0.5``, :data:`~descbal.sfm.colmap_db.COLMAP_PIXEL_SHIFT`).
* **How large, which way up.** When the features file the model was built from is one descbal
  wrote (``descbal extract`` / ``reconstruct``: its provenance attribute) and has ``scales``
  (and ``oris``) -- DoG keypoints -- the keypoint's own diameter and OpenCV angle. Else (other
  hloc extractors store COLMAP's scale and their own angle convention; a bare COLMAP model has
  none) the point's *reference sighting* (the one of median metres-per-pixel, ``depth /
  focal``) gets a diameter of ``ref_scale`` px and every other sighting the same physical size:
  ``ref_scale * (depth_ref / focal_ref) / (depth / focal)``; the angle is 0, and a set none of
  whose scenes has orientations records an upright geometry (a model trained on it is then
  used upright). Scenes with and without orientations in one oriented set are refused.
* **Sampling.** 64x64 uint8, anti-aliased from each image's pyramid by the sampler ``extract``
  and ``cache images`` use (:func:`descbal.geometry.sample_warped_patches`), with the same
  geometry conventions (:class:`~descbal.geometry.PatchGeometry`, ``mag`` etc.). Each image is
  read once, full size.

The output has the Brown cache schema (:mod:`descbal.data.patchset`): ``labels`` 0..P-1 over
the kept points in (scene, point id) order, patches grouped by label; ``holdout``: a seeded
``holdout_fraction`` of the *points* (or every point of ``holdout_scene``, which then replaces
the random split), whose patches give ``pairs`` (50/50 matching, for FPR95) and are never
trained on; ``near``: label pairs that must not be negatives of each other (below). Per patch
it also stores ``scene`` (N,) int16 (index into the ``scenes`` attribute, a JSON list),
``image_id`` (N,) int64 and ``point3d_id`` (N,) int64 (COLMAP ids) and ``keypoint`` (N, 4)
float32 (x, y in descbal pixels, diameter px, OpenCV angle deg).

**False negatives.** Two 3D points of one scene are *near* when sightings of both lie within
``near_px`` of each other in one image, or when their 3D distance is within ``near_px`` pixels
at the coarsest view of either (``near_px * depth / focal``: they would project that close, the
split tracks of one physical point). Near pairs go to ``near`` and held-out non-matches never
join them; ``keep_near`` writes no table (Brown's behaviour).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

from descbal.data.patchset import (
    PatchSet,
    cache_attrs,
    cache_is_current,
    config_hash,
    fingerprint_files,
    holdout_pairs,
    skipped_when_built,
    write_patchset,
)
from descbal.errors import BadInputError, DataMissingError, list_names
from descbal.fileio import sha256_hex
from descbal.geometry import (
    PatchGeometry,
    affine_scales,
    build_pyramid,
    patch_affines,
    sample_warped_patches,
)
from descbal.images import UnreadableImageError, list_images, read_gray
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult
from descbal.sfm.colmap_db import COLMAP_PIXEL_SHIFT, import_pycolmap
from descbal.sfm.groundtruth import colmap_model_dir

#: Folder names that say nothing about the scene (skipped upward when naming it).
GENERIC_FOLDERS = ("model", "sparse")
#: The attribute descbal's features files carry (``descbal.extract.writers``): their scales are diameters.
DESCBAL_PROVENANCE = "descbal_provenance"
#: The features file :func:`sfm_inputs` looks for beside the model folder (what ``descbal reconstruct`` writes).
DEFAULT_FEATURES = "features.h5"
#: Largest |features keypoint - (COLMAP xy - 0.5)| (px) for a features file to be the model's.
KEYPOINT_TOLERANCE = 0.01
#: Per-patch datasets written beside the Brown schema.
EXTRA_DATASETS = ("scene", "image_id", "point3d_id", "keypoint")


@dataclass(frozen=True)
class SfmSetConfig:
    """How a reconstruction becomes a patch set (the CLI's defaults are these)."""

    seed: int = 0
    min_track: int = 3  # usable sightings a point needs
    max_reproj: float = 2.0  # px: the point's mean error and each sighting's own must be <= it
    holdout_fraction: float = 0.1  # of the points (not patches); ignored with holdout_scene
    holdout_scene: str | None = None  # hold out every point of this scene instead
    pairs: int = 10000  # held-out verification pairs, half matching
    patch_size: int = 64
    geometry: PatchGeometry = field(default_factory=PatchGeometry)  # mag and upright; conventions OpenCV's
    ref_scale: float = 12.0  # px: diameter of a point's reference sighting when there are no feature scales
    near_px: float = 3.0  # px: points closer than this in an image are near (false negatives)
    keep_near: bool = False  # write no near table (Brown's behaviour)
    max_points: int = 0  # 0: every usable point; else at most this many, a seeded subset

    def __post_init__(self) -> None:
        if self.min_track < 2:
            raise ValueError("min_track must be at least 2 (a point needs a positive pair)")
        if self.max_reproj <= 0 or self.ref_scale <= 0:
            raise ValueError("max_reproj and ref_scale must be positive")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.pairs < 0 or self.max_points < 0 or self.near_px < 0:
            raise ValueError("pairs, max_points and near_px must be >= 0")
        if self.patch_size < 4:
            raise ValueError("patch_size must be at least 4")
        convention = {k: v for k, v in self.geometry.to_dict().items() if k not in ("mag", "upright")}
        if convention != {k: v for k, v in PatchGeometry().to_dict().items() if k not in ("mag", "upright")}:
            # the keypoints come from COLMAP and hloc files, whose conventions are fixed
            raise ValueError("only the geometry's mag and upright apply: keypoints are OpenCV's (diameters, "
                             "degrees, pixel centres at integers)")


@dataclass(frozen=True)
class SfmInput:
    """One reconstruction: its model folder (``cameras``, ``images``, ``points3D``, ``.bin`` or
    ``.txt``), the image folder its image names are relative to, the hloc features file it was
    built from (None: keypoints from the model, scales from depth) and the scene's name."""

    model: Path
    images: Path
    features: Path | None
    scene: str


def resolve_model_dir(path: str | Path) -> Path:
    """The COLMAP model folder of ``path``: the folder itself, ``path/model`` (``descbal
    reconstruct``'s OUT), ``path/sparse`` or ``path/sparse/0``.

    Raises:
        DataMissingError: ``path`` does not exist.
        BadInputError: no model in any of those places.
    """
    path = Path(path)
    if not path.exists():
        raise DataMissingError("reconstruction not found", path)
    found = colmap_model_dir(path) or colmap_model_dir(path / "model")
    if found is None:
        raise BadInputError("not a COLMAP model (no cameras, images and points3D .bin or .txt here, in model/, "
                            "sparse/ or sparse/0/)", path)
    return found


def scene_name(model_dir: Path) -> str:
    """The scene a model folder belongs to: its name, or the first name upward that is not
    generic (``model``, ``sparse``, digits); ``"scene"`` when there is none."""
    for part in reversed(Path(model_dir).resolve().parts[1:]):
        if part not in GENERIC_FOLDERS and not part.isdigit():
            return part
    return "scene"


def sfm_inputs(reconstructions: Sequence[str | Path], images: str | Path | None = None,
               features: str | Path | None = None) -> list[SfmInput]:
    """Inputs from ``MODEL`` or ``MODEL=IMAGES`` specs (``descbal cache sfm``'s arguments).

    Args:
        reconstructions: model folders (or ``descbal reconstruct`` outputs), each optionally
            ``=IMAGES``; a spec that exists as a path is a model even if it holds ``=``.
        images: the image folder of the specs given without ``=IMAGES``.
        features: the hloc features file (one spec only); by default ``features.h5`` beside the
            model folder when present.

    Scene names: :func:`scene_name`, the second and later of equal names suffixed ``-2``, ``-3``.

    Raises:
        DataMissingError: a model, image folder or features file that does not exist.
        BadInputError: no specs, a spec without images, ``features`` with several specs, or a
            folder without a model.
    """
    if not reconstructions:
        raise BadInputError("give at least one reconstruction (MODEL or MODEL=IMAGES)")
    if features is not None and len(reconstructions) > 1:
        raise BadInputError("--features applies to a single reconstruction; for several, put each features.h5 "
                            "beside its model folder")
    specs: list[tuple[Path, Path]] = []
    for spec in reconstructions:
        text = str(spec)
        model, sep, imgs = (text, "", "") if Path(text).exists() or "=" not in text else text.partition("=")
        if not sep and images is None:
            raise BadInputError(f"no images for reconstruction {model}: give --images DIR or {model}=IMAGES")
        specs.append((Path(model), Path(imgs) if sep else Path(images)))  # type: ignore[arg-type]
    for model, imgs in specs:  # every missing path before any other problem (exit 3)
        if not model.exists():
            raise DataMissingError("reconstruction not found", model)
        if not imgs.is_dir():
            raise DataMissingError("image folder not found", imgs)
    if features is not None and not Path(features).is_file():
        raise DataMissingError("features file not found", features)
    out: list[SfmInput] = []
    seen: dict[str, int] = {}
    for model, imgs in specs:
        model_dir = resolve_model_dir(model)
        feats = Path(features) if features is not None else model_dir.parent / DEFAULT_FEATURES
        name = scene_name(model_dir)
        seen[name] = seen.get(name, 0) + 1
        out.append(SfmInput(model_dir, imgs, feats if feats.is_file() else None,
                            name if seen[name] == 1 else f"{name}-{seen[name]}"))
    return out


# ------------------------------------------------------------------------------ sightings


@dataclass
class _Sightings:
    """The candidate sightings of one scene, S of them, grouped by point (point id order).

    ``point`` (S,) int64 point index within the scene (0..P-1, by point id), ``point_id`` (P,)
    int64 COLMAP ids, ``xyz`` (P, 3), ``image_id`` (S,) int64, ``xy`` (S, 2) descbal pixels,
    ``size`` (S,) diameters px, ``angle`` (S,) OpenCV degrees, ``mpp`` (S,) metres per pixel
    (depth / focal) of the sighting's view; ``images``: image id -> (name, (W, H)).
    """

    point: NDArray[np.int64]
    point_id: NDArray[np.int64]
    xyz: NDArray[np.float64]
    image_id: NDArray[np.int64]
    xy: NDArray[np.float64]
    size: NDArray[np.float64]
    angle: NDArray[np.float64]
    mpp: NDArray[np.float64]
    images: dict[int, tuple[str, tuple[int, int]]]
    oriented: bool = True  # every sighting has its keypoint's own orientation (a descbal features file)

    def subset(self, keep_sighting: NDArray[np.bool_]) -> _Sightings:
        """The sightings where ``keep_sighting``; points left without any are dropped (renumbered)."""
        used = np.zeros(len(self.point_id), bool)
        used[self.point[keep_sighting]] = True
        new_index = np.cumsum(used) - 1
        return _Sightings(new_index[self.point[keep_sighting]], self.point_id[used], self.xyz[used],
                          self.image_id[keep_sighting], self.xy[keep_sighting], self.size[keep_sighting],
                          self.angle[keep_sighting], self.mpp[keep_sighting], self.images, self.oriented)


def _read_model(model_dir: Path) -> Any:
    pycolmap = import_pycolmap()
    try:
        return pycolmap.Reconstruction(model_dir)
    except Exception as e:  # pycolmap raises ValueError/RuntimeError with COLMAP's check message
        raise BadInputError(f"not a COLMAP model pycolmap reads ({e})", model_dir) from None


def _track_counts_ok(point: NDArray[np.int64], keep: NDArray[np.bool_], num_points: int, min_track: int
                     ) -> NDArray[np.bool_]:
    """Sightings kept (``keep``) whose point keeps at least ``min_track`` of them."""
    counts = np.bincount(point[keep], minlength=num_points)
    return keep & (counts[point] >= min_track)


def scene_sightings(inp: SfmInput, cfg: SfmSetConfig) -> _Sightings:
    """The usable sightings of one reconstruction (see the module docstring), before any image
    is read.

    Raises:
        BadInputError: an unreadable model, a features file that is not the model's (naming it),
            or no usable point (naming the model).
    """
    rec = _read_model(inp.model)
    posed = {iid: im for iid, im in rec.images.items() if im.has_pose}
    point_ids, xyzs, rows = [], [], []  # rows: (point index, image id, point2D index)
    for pid, p in sorted(rec.points3D.items(), key=lambda item: item[0]):
        if not p.error <= cfg.max_reproj:  # also drops NaN errors
            continue
        els = [(e.image_id, e.point2D_idx) for e in p.track.elements if e.image_id in posed]
        if len(els) < cfg.min_track:
            continue
        k = len(point_ids)
        point_ids.append(pid)
        xyzs.append(np.asarray(p.xyz, np.float64))
        rows.extend((k, iid, idx) for iid, idx in els)
    if not rows:
        raise BadInputError(f"no usable 3D point (tracks of at least {cfg.min_track} posed images, mean "
                            f"reprojection error <= {cfg.max_reproj} px)", inp.model)
    r = np.array(rows, np.int64)
    point, image_id, p2d = r[:, 0], r[:, 1], r[:, 2]
    xyz = np.stack(xyzs)
    n = len(r)
    obs = np.empty((n, 2))  # COLMAP pixels (corners at integers)
    proj = np.empty((n, 2))
    mpp = np.empty(n)
    for iid in np.unique(image_id):
        idx = np.flatnonzero(image_id == iid)
        im = posed[int(iid)]
        pts2d = im.points2D
        obs[idx] = [pts2d[int(j)].xy for j in p2d[idx]]
        pose = np.asarray(im.cam_from_world().matrix(), np.float64)  # (3, 4) world -> camera
        cam_pts = xyz[point[idx]] @ pose[:, :3].T + pose[:, 3]
        proj[idx] = im.camera.img_from_cam(cam_pts, check_cheirality=False)
        # metres per pixel at the point: depth / focal (points behind the camera give <= 0 and fail below)
        mpp[idx] = cam_pts[:, 2] / im.camera.mean_focal_length()
    good = (np.linalg.norm(obs - proj, axis=1) <= cfg.max_reproj) & (mpp > 0)
    keep = _track_counts_ok(point, good, len(point_ids), cfg.min_track)
    if not keep.any():
        raise BadInputError(f"no usable 3D point: no track keeps {cfg.min_track} sightings with a reprojection "
                            f"error <= {cfg.max_reproj} px", inp.model)
    xy = obs - COLMAP_PIXEL_SHIFT
    size = np.zeros(n)
    angle = np.zeros(n)
    has_scale = np.zeros(n, bool)
    if inp.features is not None:
        names = {int(i): posed[int(i)].name for i in np.unique(image_id[keep])}
        has_scale = _feature_keypoints(inp.features, names, image_id, p2d, keep, xy, size, angle)
    oriented = bool(has_scale[keep].all())
    images = {int(i): (posed[int(i)].name, (int(posed[int(i)].camera.width), int(posed[int(i)].camera.height)))
              for i in np.unique(image_id)}
    s = _Sightings(point, np.array(point_ids, np.int64), xyz, image_id, xy, size, angle, mpp, images,
                   oriented).subset(keep)
    _depth_scales(s, has_scale[keep], cfg.ref_scale)
    s.angle = np.zeros_like(s.angle) if cfg.geometry.upright else np.mod(s.angle, 360.0)
    return s


def _feature_keypoints(path: Path, names: dict[int, str], image_id: NDArray[np.int64], p2d: NDArray[np.int64],
                       keep: NDArray[np.bool_], xy: NDArray[np.float64], size: NDArray[np.float64],
                       angle: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Fill ``xy``, ``size`` and ``angle`` of the kept sightings from an hloc features file
    (in place); return where a scale was found. The file must be the model's: every kept
    sighting's keypoint within :data:`KEYPOINT_TOLERANCE` of the model's. Scales and
    orientations are read only from a file descbal wrote (its provenance attribute): other hloc
    extractors store COLMAP's scale (about a radius) and their own angle convention, so their
    points get depth-derived sizes, upright.

    Raises:
        BadInputError: an image missing from the file, or keypoints that do not match.
    """
    has_scale = np.zeros(len(xy), bool)
    try:
        h5 = h5py.File(path, "r", locking=False)
    except OSError as e:
        raise BadInputError(f"not a readable HDF5 features file ({e})", path) from None
    with h5:
        # scales and orientations in descbal's conventions (diameters, OpenCV degrees) only in a file
        # descbal wrote; other hloc extractors store COLMAP scales and their own angles
        trusted = DESCBAL_PROVENANCE in h5.attrs
        missing = [n for n in names.values() if not isinstance(h5.get(n), h5py.Group) or "keypoints" not in h5[n]]
        if missing:
            raise BadInputError(f"not the model's features file: {len(missing)} image(s) of the model have no "
                                f"keypoints in it:{list_names(missing)}", path)
        for iid, name in names.items():
            idx = np.flatnonzero((image_id == iid) & keep)
            g = h5[name]
            kp = np.asarray(g["keypoints"][...], np.float64).reshape(-1, 2)
            j = p2d[idx]
            if j.max() >= len(kp) or np.abs(kp[j] - xy[idx]).max() >= KEYPOINT_TOLERANCE:
                raise BadInputError(f"not the model's features file: the keypoints of {name} differ from the model's "
                                    f"points2D (minus {COLMAP_PIXEL_SHIFT} px); give the features the model was built "
                                    "from with --features", path)
            xy[idx] = kp[j]
            if not trusted:
                continue
            if "scales" in g:
                size[idx] = np.asarray(g["scales"][...], np.float64)[j]
                has_scale[idx] = size[idx] > 0
            if "oris" in g:
                angle[idx] = np.asarray(g["oris"][...], np.float64)[j]
    return has_scale


def _depth_scales(s: _Sightings, has_scale: NDArray[np.bool_], ref_scale: float) -> None:
    """Points with a sighting lacking a feature scale get depth-derived diameters and angle 0
    (see the module docstring), in place."""
    lacking = np.zeros(len(s.point_id), bool)
    lacking[s.point[~has_scale]] = True
    for k in np.flatnonzero(lacking):
        idx = np.flatnonzero(s.point == k)
        m = s.mpp[idx]
        ref = np.sort(m)[(len(m) - 1) // 2]  # the lower median sighting
        s.size[idx] = ref_scale * ref / m
        s.angle[idx] = 0.0


# ------------------------------------------------------------------------------ near points


def near_label_pairs(labels: NDArray[np.int64], image_id: NDArray[np.int64], xy: NDArray[np.float64],
                     xyz: NDArray[np.float64], mpp: NDArray[np.float64], near_px: float) -> NDArray[np.int64]:
    """Label pairs of one scene that are near (see the module docstring).

    Args:
        labels: (S,) label of each sighting; image_id (S,); xy (S, 2) px; mpp (S,) the
            sighting's metres per pixel (depth / focal).
        xyz: (L, 3) position of each label 0..L-1 (labels index it).

    Returns:
        (K, 2) int64, each pair once, smaller label first, sorted.
    """
    from scipy.spatial import cKDTree

    found: list[NDArray[np.int64]] = []
    for iid in np.unique(image_id):
        idx = np.flatnonzero(image_id == iid)
        if len(idx) > 1:
            ij = cKDTree(xy[idx]).query_pairs(near_px, output_type="ndarray")
            found.append(labels[idx][ij])
    coarse = np.zeros(len(xyz))
    np.maximum.at(coarse, labels, mpp)  # metres per pixel of the coarsest view of each point
    pts = np.unique(labels)
    balls = cKDTree(xyz[pts]).query_ball_point(xyz[pts], r=near_px * coarse[pts])
    ab = [(a, b) for a, ball in zip(pts, balls, strict=True) for b in pts[np.asarray(ball, np.int64)] if a != b]
    if ab:
        found.append(np.array(ab, np.int64))
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(found).reshape(-1, 2)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(np.sort(pairs, axis=1), axis=0).reshape(-1, 2)


# ------------------------------------------------------------------------------ the set


def _sample_image(path: Path, expected: tuple[int, int], s: _Sightings, idx: NDArray[np.int64],
                  cfg: SfmSetConfig) -> NDArray[np.uint8]:
    """The patches of sightings ``idx`` (all in one image). Raises UnreadableImageError, also
    for an image whose size is not its camera's."""
    img = read_gray(path)
    if (img.shape[1], img.shape[0]) != expected:
        raise UnreadableImageError(f"size {img.shape[1]}x{img.shape[0]}, the model's camera is "
                                   f"{expected[0]}x{expected[1]}", path)
    ps = cfg.patch_size
    aff = patch_affines(s.xy[idx], s.size[idx], s.angle[idx], cfg.geometry, ps)
    return sample_warped_patches(build_pyramid(img), aff, None, affine_scales(aff), ps)


def build_sfm_set(inputs: Sequence[SfmInput], cfg: SfmSetConfig = SfmSetConfig(), progress: Progress | None = None
                  ) -> tuple[PatchSet, dict[str, NDArray[Any]], list[dict[str, str]]]:
    """The patch set of one or more reconstructions (see the module docstring).

    Returns:
        ``(set, extras, skipped)``: the :class:`~descbal.data.patchset.PatchSet` (N patches),
        the per-patch datasets ``scene`` (N,) int16, ``image_id`` (N,) int64, ``point3d_id``
        (N,) int64 and ``keypoint`` (N, 4) float32, and the images skipped (``{"path",
        "reason"}``). ``progress("images", done, total)`` per image read.

    Raises:
        BadInputError: no inputs, an unknown ``holdout_scene`` (the message lists the scenes),
            an unreadable model, a features file that is not its model's, or a model with no
            usable point (naming it).
    """
    if not inputs:
        raise BadInputError("no reconstruction given")
    progress = or_no_progress(progress)
    scenes = [inp.scene for inp in inputs]
    if cfg.holdout_scene is not None and cfg.holdout_scene not in scenes:
        raise BadInputError(f"--holdout-scene {cfg.holdout_scene!r} is not a scene of the inputs "
                            f"({', '.join(scenes)})")
    found = [scene_sightings(inp, cfg) for inp in inputs]
    if cfg.max_points:
        total = sum(len(s.point_id) for s in found)
        if total > cfg.max_points:
            chosen = np.zeros(total, bool)
            chosen[np.random.default_rng([cfg.seed, 1]).choice(total, cfg.max_points, replace=False)] = True
            offsets = np.cumsum([0] + [len(s.point_id) for s in found])
            found = [s.subset(chosen[offsets[i] + s.point]) for i, s in enumerate(found)]
    num_images = sum(len(np.unique(s.image_id)) for s in found)
    skipped: list[dict[str, str]] = []
    done = 0
    parts = []
    progress("images", 0, num_images)
    for inp, s in zip(inputs, found, strict=True):
        patches = np.zeros((len(s.point), cfg.patch_size, cfg.patch_size), np.uint8)
        read_ok = np.zeros(len(s.point), bool)
        for iid in np.unique(s.image_id):
            idx = np.flatnonzero(s.image_id == iid)
            name, size = s.images[int(iid)]
            try:
                patches[idx] = _sample_image(inp.images / name, size, s, idx, cfg)
                read_ok[idx] = True
            except UnreadableImageError as e:
                skipped.append({"path": str(inp.images / name), "reason": e.reason})
            done += 1
            progress("images", done, num_images)
        keep = _track_counts_ok(s.point, read_ok, len(s.point_id), cfg.min_track)
        if not keep.any():
            raise BadInputError(f"no usable 3D point: no track keeps {cfg.min_track} sightings in readable images",
                                inp.model)
        s = s.subset(keep)
        parts.append((s, patches[keep]))
    return _assemble(parts, scenes, cfg, _recorded_geometry(found, scenes, cfg)), _extras(parts), skipped


def _recorded_geometry(found: list[_Sightings], scenes: list[str], cfg: SfmSetConfig) -> PatchGeometry:
    """The geometry the set records: ``cfg.geometry``, upright when no scene has keypoint
    orientations (their patches are cut at angle 0, so a model trained on them is upright).

    Raises:
        BadInputError: some scenes with orientations and some without under an oriented geometry
            (the set would mix both; give ``--upright``).
    """
    if cfg.geometry.upright:
        return cfg.geometry
    lacking = [name for name, s in zip(scenes, found, strict=True) if not s.oriented]
    if not lacking:
        return cfg.geometry
    if len(lacking) == len(found):
        return replace(cfg.geometry, upright=True)
    raise BadInputError(f"scene(s) {', '.join(lacking)} have no keypoint orientations (no features file descbal "
                        "wrote), the others do: give --upright to cut every patch upright")


def _assemble(parts: list[tuple[_Sightings, NDArray[np.uint8]]], scenes: list[str], cfg: SfmSetConfig,
              geometry: PatchGeometry) -> PatchSet:
    """Labels, holdout, near table and pairs of the scenes' kept sightings (patches by label)."""
    labels, near, point_scene = [], [], []
    offset = 0
    for k, (s, _) in enumerate(parts):
        lab = s.point + offset
        labels.append(lab)
        point_scene.append(np.full(len(s.point_id), k))
        if not cfg.keep_near:
            near.append(near_label_pairs(s.point, s.image_id, s.xy, s.xyz, s.mpp, cfg.near_px) + offset)
        offset += len(s.point_id)
    lab = np.concatenate(labels)
    pscene = np.concatenate(point_scene)
    if cfg.holdout_scene is not None:
        held = pscene == scenes.index(cfg.holdout_scene)
    else:
        held = np.zeros(offset, bool)
        n_held = round(cfg.holdout_fraction * offset)
        if cfg.holdout_fraction > 0 and offset > 1:
            n_held = min(max(n_held, 1), offset - 1)  # some points to train on and some to test
        held[np.random.default_rng([cfg.seed, 2]).permutation(offset)[:n_held]] = True
    near_t = None if cfg.keep_near else np.concatenate(near).reshape(-1, 2)
    holdout = held[lab]
    pairs = holdout_pairs(lab, holdout, cfg.pairs, np.random.default_rng([cfg.seed, 99]), near_t)
    return PatchSet(np.concatenate([p for _, p in parts]), lab, pairs if len(pairs) else None, "+".join(scenes),
                    holdout, near_t, geometry)


def _extras(parts: list[tuple[_Sightings, NDArray[np.uint8]]]) -> dict[str, NDArray[Any]]:
    """The per-patch datasets (see :func:`build_sfm_set`)."""
    return {
        "scene": np.concatenate([np.full(len(s.point), k, np.int16) for k, (s, _) in enumerate(parts)]),
        "image_id": np.concatenate([s.image_id for s, _ in parts]).astype(np.int64),
        "point3d_id": np.concatenate([s.point_id[s.point] for s, _ in parts]).astype(np.int64),
        "keypoint": np.concatenate([np.column_stack([s.xy, s.size, s.angle]) for s, _ in parts]).astype(np.float32),
    }


# ------------------------------------------------------------------------------ the cache file


def _model_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in (".bin", ".txt"))


def sfm_fingerprint(inputs: Sequence[SfmInput], cfg: SfmSetConfig) -> str:
    """SHA-256 (hex) identifying a set's inputs and options: per input its scene name and the
    metadata of its model files, of the images in its folder and of its features file
    (:func:`~descbal.data.patchset.fingerprint_files`), then the config's hash."""
    parts = []
    for inp in inputs:
        parts += [inp.scene, fingerprint_files(_model_files(inp.model), inp.model),
                  fingerprint_files(list_images(inp.images), inp.images),
                  fingerprint_files([inp.features], inp.features.parent) if inp.features is not None else "-"]
    return sha256_hex("\n".join(parts) + config_hash(cfg))


@dataclass
class SfmSetResult(JsonResult):
    """A training set from reconstructions (``descbal cache sfm``): file, whether it was already
    up to date (``skipped``; then only these three fields are set, and ``skipped_images`` when
    the set was built without some images) and the fingerprint of inputs and config; when built,
    the scenes, the images the patches come from and those skipped (``{"path", "reason"}``:
    the skipped inputs), patches, 3D points (classes), near label pairs, held-out pairs and patches,
    and wall time (s)."""

    SKIPPED_KEY = "skipped_images"
    OMIT_NONE = ("scenes", "images", "skipped_images", "num_patches", "num_classes", "num_near", "num_pairs",
                 "holdout_patches", "seconds")

    path: str
    skipped: bool
    source_sha256: str
    scenes: list[str] | None = None
    images: int | None = None
    skipped_images: list[dict[str, str]] | None = None
    num_patches: int | None = None
    num_classes: int | None = None
    num_near: int | None = None
    num_pairs: int | None = None
    holdout_patches: int | None = None
    seconds: float | None = None


def cache_sfm(inputs: Sequence[SfmInput], out: str | Path, cfg: SfmSetConfig = SfmSetConfig(), *,
              overwrite: bool = False, progress: Progress | None = None) -> SfmSetResult:
    """Build (or skip, when up to date) the training set of reconstructions into ``out`` (HDF5,
    Brown schema plus ``holdout``, ``near`` and the per-patch datasets of :func:`build_sfm_set`),
    written atomically. ``progress("images", ...)`` then ``progress("write", ...)``.

    Raises:
        BadInputError, DataMissingError: as :func:`build_sfm_set`; a missing image folder.
    """
    out = Path(out)
    start = time.perf_counter()
    source = sfm_fingerprint(inputs, cfg)
    if not overwrite and cache_is_current(out, source):
        return SfmSetResult(path=str(out), skipped=True, source_sha256=source, skipped_images=skipped_when_built(out))
    ps, extras, skipped = build_sfm_set(inputs, cfg, progress)
    scenes = [inp.scene for inp in inputs]
    described = [{"scene": inp.scene, "model": str(inp.model), "images": str(inp.images),
                  "features": None if inp.features is None else str(inp.features)} for inp in inputs]
    attrs = cache_attrs(ps.name, source, config=json.dumps(asdict(cfg)), inputs=json.dumps(described),
                        scenes=json.dumps(scenes), skipped=json.dumps(skipped))
    write_patchset(out, ps, attrs, progress=progress, extra=extras)
    num_images = sum(len(np.unique(extras["image_id"][extras["scene"] == k])) for k in range(len(inputs)))
    return SfmSetResult(path=str(out), skipped=False, source_sha256=source, scenes=scenes,
                        images=num_images, skipped_images=skipped, num_patches=len(ps),
                        num_classes=int(len(np.unique(ps.labels))), num_near=0 if ps.near is None else len(ps.near),
                        num_pairs=ps.num_pairs, holdout_patches=int(ps.holdout.sum()) if ps.holdout is not None else 0,
                        seconds=time.perf_counter() - start)
