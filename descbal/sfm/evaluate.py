"""Reconstructions against ground-truth cameras: ``descbal eval sfm``.

Per scene and model (and overall per model):

* registered images / total, 3D points, mean track length, mean reprojection error (px): the
  largest model pycolmap built (:mod:`descbal.sfm.reconstruct`);
* camera-centre error (scene units; metres for the Strecha scenes), mean and median over the
  registered images, after a **robust similarity alignment** of the estimated centres to the
  ground truth (:func:`robust_similarity`: RANSAC over triplets of cameras, inliers within
  ``ALIGN_INLIER_FRACTION`` x the ground-truth extent, then a least-squares fit on the inliers,
  :func:`umeyama`), and the rotation error (degrees) after the same alignment;
* relative-pose accuracy over **all** image pairs of the ground truth (no alignment needed):
  a pair's error is the larger of the rotation error and the angle between the translation
  directions of camera i -> j; a pair with an unregistered image has error 180 degrees. The
  fraction of pairs under 5/10/20 degrees and its AUC (the area under the recall-error curve up
  to the threshold, divided by the threshold, as SuperGlue and LightGlue report it).

The PNG per scene (:func:`plot_top_view`) shows the ground-truth centres (black circles) and each
model's aligned centres (one colour per model) in the plane of the two main axes of the
ground-truth centres, i.e. from above for cameras at about one height.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from descbal.errors import BadInputError
from descbal.fileio import atomic_path
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult
from descbal.sfm.groundtruth import GroundTruth, colmap_model_dir, load_ground_truth
from descbal.sfm.reconstruct import ReconstructConfig, load_model, reconstruct

THRESHOLDS_DEG = (5.0, 10.0, 20.0)
#: Alignment inlier threshold, as a fraction of the median distance of the ground-truth centres to their centroid.
ALIGN_INLIER_FRACTION = 0.05
#: Triplets tried by the alignment RANSAC (all of them when there are fewer).
ALIGN_TRIALS = 2000
#: BGR colours of the models in the plots, in order.
PALETTE = ((31, 119, 180)[::-1], (255, 127, 14)[::-1], (44, 160, 44)[::-1], (214, 39, 40)[::-1],
           (148, 103, 189)[::-1], (140, 86, 75)[::-1], (227, 119, 194)[::-1], (23, 190, 207)[::-1])

Vec = NDArray[np.float64]


def umeyama(src: Vec, tgt: Vec) -> tuple[float, Vec, Vec]:
    """Least-squares similarity ``tgt ~ s R src + t`` (Umeyama 1991).

    Shape: (N, 3), (N, 3) with N >= 3 -> (s, R (3, 3), t (3,)).
    """
    src, tgt = np.asarray(src, np.float64), np.asarray(tgt, np.float64)
    mu_s, mu_t = src.mean(0), tgt.mean(0)
    a, b = src - mu_s, tgt - mu_t
    var = (a**2).sum() / len(src)
    U, D, Vt = np.linalg.svd(b.T @ a / len(src))
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var) if var > 0 else 1.0
    return s, R, mu_t - s * R @ mu_s


def robust_similarity(src: Vec, tgt: Vec, threshold: float, trials: int = ALIGN_TRIALS,
                      seed: int = 0) -> tuple[float, Vec, Vec, NDArray[np.bool_]]:
    """RANSAC over triplets of :func:`umeyama`, refit on the inliers (distance < ``threshold``
    after alignment, in ``tgt``'s units). Deterministic for a seed.

    Shape: (N, 3), (N, 3), N >= 3 -> (s, R, t, inliers (N,) bool).
    """
    src, tgt = np.asarray(src, np.float64), np.asarray(tgt, np.float64)
    n = len(src)
    if n < 3:
        raise ValueError("a similarity needs at least 3 points")
    if math.comb(n, 3) <= trials:
        samples: list[tuple[int, ...]] = list(itertools.combinations(range(n), 3))
    else:
        rng = np.random.default_rng(seed)
        samples = [tuple(rng.choice(n, 3, replace=False)) for _ in range(trials)]
    best: tuple[int, float] = (-1, math.inf)
    best_mask = np.ones(n, bool)
    for idx in samples:
        s, R, t = umeyama(src[list(idx)], tgt[list(idx)])
        err = np.linalg.norm(src @ R.T * s + t - tgt, axis=1)
        mask = err < threshold
        score = (int(mask.sum()), float(err[mask].sum()))
        if score[0] > best[0] or (score[0] == best[0] and score[1] < best[1]):
            best, best_mask = score, mask
    if best_mask.sum() < 3:
        best_mask = np.ones(n, bool)
    s, R, t = umeyama(src[best_mask], tgt[best_mask])
    return s, R, t, best_mask


def rotation_angle_deg(R: Vec) -> float:
    """The angle (degrees) of a rotation matrix. Shape: (3, 3) -> scalar."""
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


def _angle_deg(u: Vec, v: Vec) -> float:
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu < 1e-12 or nv < 1e-12:
        return 0.0 if nu < 1e-12 and nv < 1e-12 else 180.0
    return float(np.degrees(np.arccos(np.clip(u @ v / (nu * nv), -1.0, 1.0))))


def relative_pose_errors(gt: dict[str, tuple[Vec, Vec]], est: dict[str, tuple[Vec, Vec]]) -> NDArray[np.float64]:
    """Per pair (i < j by name) of the ground truth, ``max(rotation error, translation direction
    error)`` in degrees of the relative pose i -> j; 180 when either image is not in ``est``.

    Args:
        gt, est: name -> (R (3, 3), t (3,)), world -> camera.

    Shape: -> (P,) with P = n (n - 1) / 2 for n ground-truth images.
    """
    errs = []
    for a, b in itertools.combinations(sorted(gt), 2):
        if a not in est or b not in est:
            errs.append(180.0)
            continue
        rel = []
        for poses in (gt, est):
            (Ra, ta), (Rb, tb) = poses[a], poses[b]
            R = Rb @ Ra.T
            rel.append((R, tb - R @ ta))
        (Rg, tg), (Re, te) = rel
        errs.append(max(rotation_angle_deg(Rg.T @ Re), _angle_deg(tg, te)))
    return np.asarray(errs, np.float64)


def pose_auc(errors: NDArray[np.float64], thresholds: tuple[float, ...] = THRESHOLDS_DEG) -> list[float]:
    """Area under the recall-error curve up to each threshold, over the threshold (in [0, 1])."""
    e = np.sort(np.asarray(errors, np.float64))
    if len(e) == 0:
        return [0.0 for _ in thresholds]
    recall = np.arange(1, len(e) + 1) / len(e)
    e = np.r_[0.0, e]
    recall = np.r_[0.0, recall]
    out = []
    for th in thresholds:
        last = int(np.searchsorted(e, th))
        r = np.r_[recall[:last], recall[last - 1]]
        x = np.r_[e[:last], th]
        out.append(float(np.trapezoid(r, x) / th))
    return out


@dataclass
class SfmMetrics(JsonResult):
    """One model on one scene (or ``scene="overall"``): see the module docstring. Errors are
    None when fewer than 3 registered images have ground truth. ``pose_accuracy`` and
    ``pose_auc`` are keyed by the threshold in degrees ("5", "10", "20")."""

    scene: str
    model: str
    images: int
    registered: int
    points3d: int
    mean_track_length: float
    mean_reprojection_error: float
    centre_error_mean: float | None
    centre_error_median: float | None
    rotation_error_mean: float | None
    rotation_error_median: float | None
    alignment_inliers: int
    pose_accuracy: dict[str, float]
    pose_auc: dict[str, float]
    seconds: float
    reconstruction: str | None
    aligned_centres: dict[str, list[float]] = dataclasses.field(default_factory=dict)


@dataclass
class _Errors:
    centre: NDArray[np.float64]
    rotation: NDArray[np.float64]
    pairs: NDArray[np.float64]


def _stat(x: NDArray[np.float64], fn: Any) -> float | None:
    return float(fn(x)) if len(x) else None


def evaluate_reconstruction(rec: Any, gt: GroundTruth, model: str = "", seconds: float = 0.0,
                            where: str | None = None) -> tuple[SfmMetrics, _Errors]:
    """Metrics of a ``pycolmap.Reconstruction`` (or None: nothing registered) against ``gt``."""
    est: dict[str, tuple[Vec, Vec]] = {}
    centres: dict[str, Vec] = {}
    if rec is not None:
        for im in rec.images.values():
            if im.has_pose and im.name in gt.R:
                pose = im.cam_from_world()
                est[im.name] = (np.asarray(pose.rotation.matrix(), np.float64), np.asarray(pose.translation, np.float64))
                centres[im.name] = np.asarray(im.projection_center(), np.float64)
    names = sorted(centres)
    centre_err = rot_err = np.zeros(0)
    aligned: dict[str, list[float]] = {}
    inliers = 0
    if len(names) >= 3:
        src = np.stack([centres[n] for n in names])
        tgt = np.stack([gt.C[n] for n in names])
        all_gt = np.stack([gt.C[n] for n in gt.names])
        extent = float(np.median(np.linalg.norm(all_gt - all_gt.mean(0), axis=1)))
        s, Ra, ta, mask = robust_similarity(src, tgt, ALIGN_INLIER_FRACTION * max(extent, 1e-12))
        inliers = int(mask.sum())
        moved = src @ Ra.T * s + ta
        centre_err = np.linalg.norm(moved - tgt, axis=1)
        rot_err = np.array([rotation_angle_deg(gt.R[n] @ (est[n][0] @ Ra.T).T) for n in names])
        aligned = {n: moved[i].tolist() for i, n in enumerate(names)}
    pair_err = relative_pose_errors({n: (gt.R[n], gt.t(n)) for n in gt.names}, est)
    metrics = SfmMetrics(
        scene=gt.scene, model=model, images=len(gt.names), registered=len(est),
        points3d=rec.num_points3D() if rec is not None else 0,
        mean_track_length=float(rec.compute_mean_track_length()) if rec is not None else 0.0,
        mean_reprojection_error=float(rec.compute_mean_reprojection_error()) if rec is not None else 0.0,
        centre_error_mean=_stat(centre_err, np.mean), centre_error_median=_stat(centre_err, np.median),
        rotation_error_mean=_stat(rot_err, np.mean), rotation_error_median=_stat(rot_err, np.median),
        alignment_inliers=inliers, **_pose_fields(pair_err), seconds=seconds, reconstruction=where,
        aligned_centres=aligned)
    return metrics, _Errors(centre_err, rot_err, pair_err)


def _pose_fields(pair_err: NDArray[np.float64]) -> dict[str, dict[str, float]]:
    acc = {f"{th:g}": float((pair_err < th).mean()) if len(pair_err) else 0.0 for th in THRESHOLDS_DEG}
    auc = dict(zip((f"{th:g}" for th in THRESHOLDS_DEG), pose_auc(pair_err), strict=True))
    return {"pose_accuracy": acc, "pose_auc": auc}


def _overall(model: str, rows: list[SfmMetrics], errs: list[_Errors]) -> SfmMetrics:
    centre = np.concatenate([e.centre for e in errs])
    rot = np.concatenate([e.rotation for e in errs])
    pairs = np.concatenate([e.pairs for e in errs])
    return SfmMetrics(
        scene="overall", model=model, images=sum(r.images for r in rows), registered=sum(r.registered for r in rows),
        points3d=sum(r.points3d for r in rows),
        mean_track_length=float(np.mean([r.mean_track_length for r in rows])),
        mean_reprojection_error=float(np.mean([r.mean_reprojection_error for r in rows])),
        centre_error_mean=_stat(centre, np.mean), centre_error_median=_stat(centre, np.median),
        rotation_error_mean=_stat(rot, np.mean), rotation_error_median=_stat(rot, np.median),
        alignment_inliers=sum(r.alignment_inliers for r in rows), **_pose_fields(pairs),
        seconds=sum(r.seconds for r in rows), reconstruction=None)


def plot_top_view(gt: GroundTruth, rows: list[SfmMetrics], path: str | Path, size: int = 800) -> None:
    """PNG of the ground-truth centres and each row's aligned centres (see the module docstring)."""
    all_gt = np.stack([gt.C[n] for n in gt.names])
    mu = all_gt.mean(0)
    _, _, Vt = np.linalg.svd(all_gt - mu)
    axes = Vt[:2]  # the plane of the two largest spreads

    def uv(p: Vec) -> Vec:
        return (np.asarray(p) - mu) @ axes.T

    pts = [uv(all_gt)] + [uv(np.array(list(r.aligned_centres.values()))) for r in rows if r.aligned_centres]
    allp = np.concatenate(pts)
    lo, hi = allp.min(0), allp.max(0)
    span = float(max(hi - lo)) or 1.0
    margin, legend = 40, 22 * (len(rows) + 1) + 10
    scale = (size - 2 * margin) / span

    def px(p: Vec) -> tuple[int, int]:
        q = (p - (lo + hi) / 2) * scale + size / 2  # centred, one scale for both axes
        return int(round(q[0])), int(round(size - q[1]))  # y up

    img = np.full((size + legend, size, 3), 255, np.uint8)
    for p in uv(all_gt):
        cv2.circle(img, px(p), 7, (0, 0, 0), 2, cv2.LINE_AA)
    for k, r in enumerate(rows):
        colour = PALETTE[k % len(PALETTE)]
        for name, c in r.aligned_centres.items():
            a = px(uv(np.array(c)))
            cv2.drawMarker(img, a, colour, cv2.MARKER_CROSS, 12, 2, cv2.LINE_AA)
            cv2.line(img, a, px(uv(gt.C[name])), colour, 1, cv2.LINE_AA)
    y = size + 5
    cv2.circle(img, (20, y + 8), 7, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(img, f"{gt.scene}: ground truth", (35, y + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for k, r in enumerate(rows):
        y += 22
        colour = PALETTE[k % len(PALETTE)]
        cv2.drawMarker(img, (20, y + 8), colour, cv2.MARKER_CROSS, 12, 2, cv2.LINE_AA)
        cv2.putText(img, f"{r.model} ({r.registered}/{r.images})", (35, y + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1,
                    cv2.LINE_AA)
    with atomic_path(path, suffix=".png") as tmp:
        _, buf = cv2.imencode(".png", img)
        tmp.write_bytes(buf.tobytes())


@dataclass
class SfmEvalResult(JsonResult):
    """``descbal eval sfm``: one row per scene and model, then one ``overall`` row per model;
    the PNG written per scene; where the reconstructions are; per model, the patch geometry its
    features were extracted with and where it came from (``{"geometry", "geometry_source"}``:
    option, model or default)."""

    out: str
    scenes: list[str]
    models: list[str]
    rows: list[SfmMetrics]
    plots: list[str]
    geometries: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def scene_dirs(paths: list[str | Path]) -> list[Path]:
    """Scenes of ``paths``: each is a scene (it has ground truth) or a folder of scene folders.

    Raises:
        BadInputError: a path that is neither (one line naming it).
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and ((p / "gt_dense_cameras").is_dir() or colmap_model_dir(p) is not None):
            out.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / "gt_dense_cameras").is_dir()) if p.is_dir() else []
        if not subs:
            load_ground_truth(p)  # raises the one-line error for this folder
        out.extend(subs)
    return out


def evaluate_sfm(scenes: list[str | Path], models: list[str], out: str | Path,
                 cfg: ReconstructConfig = ReconstructConfig(), *, plot: bool = True, overwrite: bool = False,
                 progress: Progress | None = None, verbose: bool = False) -> SfmEvalResult:
    """Reconstruct every scene with every model (``out/<scene>/<model>/``, resumable) and score
    it against the ground truth (see the module docstring).

    Args:
        scenes: scene folders, or folders of scenes (:func:`scene_dirs`).
        models: model specs (``descbal.models.resolve``); the display name names the folder.
        cfg: the reconstruction options (its ``extract.model`` is replaced by each model; with
            geometry options, each model's geometry is its own unless ``mag`` / ``upright`` are given).
        plot: write ``out/<scene>.png``.

    Raises:
        BadInputError: a scene without ground truth, no models, two models with one display name.
        DataMissingError: a missing folder.
    """
    from descbal.models.resolve import resolve_model

    if not models:
        raise BadInputError("give at least one model (-m sift -m RUN ...)")
    out = Path(out)
    progress = or_no_progress(progress)
    dirs = scene_dirs(list(scenes))
    gts = [load_ground_truth(d) for d in dirs]
    names = [resolve_model(m).name for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BadInputError(f"two models are shown as {dup[0]!r}; name them with NAME=MODEL")
    rows: list[SfmMetrics] = []
    errs: dict[str, list[_Errors]] = {n: [] for n in names}
    per_model: dict[str, list[SfmMetrics]] = {n: [] for n in names}
    plots: list[str] = []
    geometries: dict[str, dict[str, Any]] = {}
    for gt in gts:
        scene_rows = []
        for spec, name in zip(models, names, strict=True):
            run_cfg = dataclasses.replace(cfg, extract=dataclasses.replace(cfg.extract, model=spec))
            where = out / gt.scene / name
            t0 = time.perf_counter()
            res = reconstruct(gt.images_dir, where, run_cfg, overwrite=overwrite, progress=progress, verbose=verbose)
            geometries[name] = {"geometry": res.options["extract"]["geometry"], "geometry_source": res.geometry_source}
            secs = sum(res.seconds.values()) if not res.resumed else time.perf_counter() - t0
            rec = load_model(res.model) if res.model is not None else None
            m, e = evaluate_reconstruction(rec, gt, name, secs, res.model)
            scene_rows.append(m)
            per_model[name].append(m)
            errs[name].append(e)
        rows.extend(scene_rows)
        if plot:
            path = out / f"{gt.scene}.png"
            plot_top_view(gt, scene_rows, path)
            plots.append(str(path))
    if len(gts) > 1:
        rows.extend(_overall(n, per_model[n], errs[n]) for n in names)
    return SfmEvalResult(out=str(out), scenes=[gt.scene for gt in gts], models=names, rows=rows, plots=plots,
                         geometries=geometries)
