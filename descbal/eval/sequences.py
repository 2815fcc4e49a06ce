"""Image matching on sequences with ground-truth homographies (HPatches-sequences layout).

Per model, per sequence: features of image 1 and of each image k with a homography ``H_1_k``,
mutual-nearest-neighbour matches (:func:`descbal.match.mutual_nn`), then

* **MMA** (D2-Net protocol, Dusmanu et al. CVPR 2019, ``hpatches_sequences`` notebook): a match
  is correct at threshold t when the image-1 keypoint projected by ``H_1_k`` lies within t
  pixels of its match in image k (``<= t``); per pair the fraction of correct matches (0 when
  there is no match), averaged over pairs, for t = 1..10, separately over ``i_``
  (illumination) and ``v_`` (viewpoint) sequences and over all;
* numbers of features (per image) and of matches (per pair);
* **homography accuracy** (SuperPoint / D2-Net style): ``cv2.findHomography`` with RANSAC
  (reprojection threshold 3 px) on the matches; the 4 corners of image 1 are mapped by the
  estimate and by ``H_1_k``; the pair is correct at eps when their mean distance is at most
  eps, for eps = 1, 3, 5 px (fewer than 4 matches or no estimate: incorrect).

:func:`plot_mma` draws MMA against threshold for every model with OpenCV primitives.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from descbal.data.sequences import list_sequence_folders, read_sequence
from descbal.errors import BadInputError, DataMissingError
from descbal.geometry import GeometryOptions, GeometrySpec, apply_homography
from descbal.images import to_gray
from descbal.models.resolve import ModelSpec, resolve_model
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult

THRESHOLDS: tuple[int, ...] = tuple(range(1, 11))
HOMOGRAPHY_EPS: tuple[int, ...] = (1, 3, 5)
RANSAC_THRESHOLD = 3.0
SPLITS = ("overall", "illumination", "viewpoint")


@dataclass
class SequencesResult(JsonResult):
    """Matching on sequences with homographies, every model on every sequence.

    ``geometry``: the geometry given (``mag`` / ``upright`` None: each model's own); per model,
    ``geometry`` is the one used and ``geometry_source`` where it came from (option, model,
    default: :func:`descbal.geometry.resolve_geometry`).

    ``models``: one ``{"name", "provenance", "geometry", "geometry_source", "thresholds", "num_features", "mma": {split: [10] |
    None}, "num_matches": {split}, "homography_accuracy": {split: {"1", "3", "5"}}, "num_pairs":
    {split}, "pairs": [{"sequence", "k", "num_matches", "mma": [10], "corner_error"}],
    "seconds"}`` per model (splits: overall, illumination, viewpoint; MMA and accuracies are
    fractions, thresholds and errors pixels).
    """

    root: str
    sequences: list[str]
    thresholds: list[int]
    homography_eps: list[int]
    detector: str
    max_keypoints: int
    geometry: dict[str, Any]
    ratio: float | None
    models: list[dict[str, Any]]


def reprojection_errors(kp1: NDArray, kpk: NDArray, matches: NDArray[np.int32], h_1k: NDArray) -> NDArray[np.float64]:
    """Distances between ``H_1_k``-projected image-1 keypoints and their matches in image k.

    Args:
        matches: (N1,) index into ``kpk`` or -1 (the ``matches0`` convention).

    Shape: (N1, 2), (Nk, 2), (N1,), (3, 3) -> (M,) for the M matched keypoints.
    """
    idx = np.flatnonzero(matches >= 0)
    if len(idx) == 0:
        return np.zeros(0)
    return np.linalg.norm(apply_homography(h_1k, kp1[idx]) - kpk[matches[idx]], axis=1)


def corner_error(h_est: NDArray | None, h_gt: NDArray, width: int, height: int) -> float:
    """Mean distance of image 1's 4 corners mapped by the estimate and by the ground truth
    (inf without an estimate)."""
    if h_est is None:
        return float("inf")
    c = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], np.float64)
    err = np.linalg.norm(apply_homography(h_est, c) - apply_homography(h_gt, c), axis=1).mean()
    return float(err) if np.isfinite(err) else float("inf")


def estimate_homography(kp1: NDArray, kpk: NDArray, matches: NDArray[np.int32]) -> NDArray[np.float64] | None:
    """RANSAC homography from the matches (None with fewer than 4 or when OpenCV fails)."""
    idx = np.flatnonzero(matches >= 0)
    if len(idx) < 4:
        return None
    h, _ = cv2.findHomography(kp1[idx].astype(np.float32), kpk[matches[idx]].astype(np.float32), cv2.RANSAC,
                              RANSAC_THRESHOLD)
    return None if h is None else h.astype(np.float64)


def mma_curve(errors: NDArray[np.floating], thresholds: Sequence[float] = THRESHOLDS) -> list[float]:
    """Fraction of matches whose error is at most each threshold (0 without matches).
    Shape: (M,) pixel errors -> one fraction per threshold."""
    errors = np.asarray(errors)
    return [float(np.mean(errors <= t)) if len(errors) else 0.0 for t in thresholds]


def _split_of(name: str) -> str | None:
    return "illumination" if name.startswith("i_") else "viewpoint" if name.startswith("v_") else None


def summarise(pairs: list[dict[str, Any]], num_features: list[int]) -> dict[str, Any]:
    """MMA, matches and homography accuracy per split from per-pair records
    (``{"split", "errors" (M,), "num_matches", "corner_error"}``)."""
    out: dict[str, Any] = {"thresholds": list(THRESHOLDS), "num_features": float(np.mean(num_features)) if num_features else 0.0,
                           "mma": {}, "num_matches": {}, "homography_accuracy": {}, "num_pairs": {}}
    for split in SPLITS:
        sel = [p for p in pairs if split == "overall" or p["split"] == split]
        out["num_pairs"][split] = len(sel)
        if not sel:
            out["mma"][split] = None
            out["num_matches"][split] = None
            out["homography_accuracy"][split] = None
            continue
        acc = [mma_curve(p["errors"]) for p in sel]
        out["mma"][split] = np.mean(np.array(acc), axis=0).tolist()
        out["num_matches"][split] = float(np.mean([p["num_matches"] for p in sel]))
        ce = np.array([p["corner_error"] for p in sel])
        out["homography_accuracy"][split] = {str(e): float(np.mean(ce <= e)) for e in HOMOGRAPHY_EPS}
    return out


def evaluate_sequences(root: str | Path, models: Sequence[ModelSpec], *, detector: str = "sift",
                       max_keypoints: int = 2048, geometry: GeometrySpec = GeometryOptions(), ratio: float | None = None,
                       device: str | torch.device = "auto", sequences: Sequence[str] | None = None,
                       names: Sequence[str] | None = None,
                       progress: Progress | None = None) -> SequencesResult:
    """Detect, describe, match and score every model on every sequence under ``root``.

    Args:
        root: a folder of sequence folders (``<seq>/1.ppm|png .. 6.*``, ``H_1_k``).
        models: model specs (:func:`descbal.models.resolve.resolve_model`: paths, published
            weights, architecture or classical descriptor names, ``NAME=SPEC``, nn.Modules), one
            result each; all are resolved before any work.
        geometry: options (``mag`` / ``upright`` not given: each model's trained geometry, see
            :func:`descbal.geometry.resolve_geometry`) or one full geometry for every model.
        sequences: only these sequence names (default: all, sorted).
        names: display names of the models (default: the resolver's display names).
        progress: ``progress("pairs", done, total)`` per image pair (all models together).

    Returns:
        A :class:`SequencesResult`.

    Raises:
        DataMissingError: ``root`` is missing.
        BadInputError: no sequence folder, an unknown requested sequence, or an unknown detector
            (or one this OpenCV build lacks).
    """
    from descbal.detectors import get_detector
    from descbal.extract.pipeline import FeatureExtractor

    get_detector(detector)  # before reading any sequence
    root = Path(root)
    if not root.is_dir():
        raise DataMissingError("sequences folder not found", root)
    folders = list_sequence_folders(root)
    if sequences is not None:
        by_name = {f.name: f for f in folders}
        unknown = [s for s in sequences if s not in by_name]
        if unknown:
            raise BadInputError(f"unknown sequence(s): {', '.join(unknown)}", root)
        folders = [by_name[s] for s in sequences]
    if not folders:
        raise BadInputError("no sequence folders (sub-folders with 1.ppm, 1.png or 1.jpg)", root)
    if not models:
        raise BadInputError("give at least one model")
    if names is not None and len(names) != len(models):
        raise BadInputError(f"{len(names)} names for {len(models)} models")
    resolved = [resolve_model(m, name=None if names is None else names[i]) for i, m in enumerate(models)]
    progress = or_no_progress(progress)
    seqs = [read_sequence(f) for f in folders]
    total = sum(len([k for k in s.homographies if k in s.image_ids]) for s in seqs) * len(models)
    done = 0
    results = []
    for model in resolved:
        t0 = time.perf_counter()
        ext = FeatureExtractor(model, detector, max_keypoints, geometry, device)
        label = model.name
        pairs: list[dict[str, Any]] = []
        n_feats: list[int] = []
        for seq in seqs:
            split = _split_of(seq.name)
            img1 = to_gray(seq.image(1))
            f1 = ext(img1)
            n_feats.append(len(f1))
            h1, w1 = img1.shape
            for k in sorted(seq.homographies):
                if k not in seq.image_ids or k == 1:
                    continue
                fk = ext(to_gray(seq.image(k)))
                n_feats.append(len(fk))
                m, _ = _match(f1.descriptors, fk.descriptors, ratio, ext.device)
                errs = reprojection_errors(f1.keypoints, fk.keypoints, m, seq.homographies[k])
                ce = corner_error(estimate_homography(f1.keypoints, fk.keypoints, m), seq.homographies[k], w1, h1)
                pairs.append({"sequence": seq.name, "k": k, "split": split, "errors": errs,
                              "num_matches": int((m >= 0).sum()), "corner_error": ce})
                done += 1
                progress("pairs", done, total)
        res = {"name": label, "provenance": ext.provenance, "geometry": dataclasses.asdict(ext.geometry),
               "geometry_source": ext.geometry_source, **summarise(pairs, n_feats)}
        res["pairs"] = [{"sequence": p["sequence"], "k": p["k"], "num_matches": p["num_matches"],
                         "mma": mma_curve(p["errors"]),
                         "corner_error": p["corner_error"] if np.isfinite(p["corner_error"]) else None} for p in pairs]
        res["seconds"] = time.perf_counter() - t0
        results.append(res)
    return SequencesResult(root=str(root), sequences=[s.name for s in seqs], thresholds=list(THRESHOLDS),
                           homography_eps=list(HOMOGRAPHY_EPS), detector=detector, max_keypoints=max_keypoints,
                           geometry=dataclasses.asdict(geometry), ratio=ratio,
                           models=results)


def _match(d1: NDArray, dk: NDArray, ratio: float | None, device: torch.device) -> tuple[NDArray[np.int32], NDArray]:
    from descbal.match import mutual_nn

    return mutual_nn(d1, dk, ratio, device)


# ------------------------------------------------------------------------------ plot

_COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
            (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23)]  # BGR, matplotlib's tab10


def _text(img: NDArray, s: str, org: tuple[int, int], scale: float = 0.5, colour: tuple[int, int, int] = (0, 0, 0),
          thick: int = 1, centre: bool = False) -> None:
    if centre:
        (w, _), _ = cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        org = (org[0] - w // 2, org[1])
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def plotted_splits(result: SequencesResult) -> list[str]:
    """The splits (of Overall, Illumination, Viewpoint) for which some model has an MMA curve;
    ``["overall"]`` when none has (an empty panel then says so)."""
    have = [s for s in SPLITS if any(m["mma"].get(s) is not None for m in result.models)]
    return have or ["overall"]


def render_mma(result: SequencesResult, panel: tuple[int, int] = (420, 360)) -> NDArray[np.uint8]:
    """An image (BGR) of MMA against threshold: one panel per split with data
    (:func:`plotted_splits`: Overall, then Illumination and Viewpoint when there are such
    sequences), one line per model, legend below with the models' display names.
    Shape: -> (H, n_panels * panel width, 3) uint8."""
    pw, ph = panel
    ml, mr, mt, mb = 60, 22, 40, 45
    models = result.models
    legend_h = 24 * len(models) + 10
    splits = plotted_splits(result)
    img = np.full((ph + legend_h, len(splits) * pw, 3), 255, np.uint8)
    th = result.thresholds
    for pi, split in enumerate(splits):
        x0 = pi * pw
        left, right, top, bottom = x0 + ml, x0 + pw - mr, mt, ph - mb

        def to_px(t: float, y: float, left: int = left, right: int = right, top: int = top,
                  bottom: int = bottom) -> tuple[int, int]:
            fx = (t - th[0]) / max(th[-1] - th[0], 1)
            return int(round(left + fx * (right - left))), int(round(bottom - y * (bottom - top)))

        for y in np.linspace(0, 1, 6):
            p = to_px(th[0], y)
            cv2.line(img, (left, p[1]), (right, p[1]), (225, 225, 225), 1)
            _text(img, f"{y:.1f}", (left - 35, p[1] + 5), 0.45)
        for t in th:
            p = to_px(t, 0)
            cv2.line(img, (p[0], top), (p[0], bottom), (225, 225, 225), 1)
            _text(img, str(t), (p[0], bottom + 18), 0.45, centre=True)
        cv2.rectangle(img, (left, top), (right, bottom), (0, 0, 0), 1)
        _text(img, split.capitalize(), ((left + right) // 2, 25), 0.65, thick=2, centre=True)
        _text(img, "threshold [px]", ((left + right) // 2, ph - 8), 0.45, centre=True)
        if pi == 0:
            _text(img, "MMA", (x0 + 5, top - 10), 0.45)
        any_curve = False
        for mi, m in enumerate(models):
            ys = m["mma"].get(split)
            if ys is None:
                continue
            any_curve = True
            pts = np.array([to_px(t, y) for t, y in zip(th, ys, strict=True)], np.int32)
            colour = _COLOURS[mi % len(_COLOURS)]
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
            for p in pts:
                cv2.circle(img, (int(p[0]), int(p[1])), 3, colour, -1, cv2.LINE_AA)
        if not any_curve:
            _text(img, "no sequences", ((left + right) // 2, (top + bottom) // 2), 0.6, (128, 128, 128), centre=True)
    for mi, m in enumerate(models):
        y = ph + 18 + 24 * mi
        colour = _COLOURS[mi % len(_COLOURS)]
        cv2.line(img, (ml, y - 5), (ml + 30, y - 5), colour, 3, cv2.LINE_AA)
        mma = m["mma"]["overall"]
        _text(img, f"{m['name']}  (MMA@3 overall {mma[2]:.3f})" if mma else m["name"], (ml + 40, y), 0.5)
    return img


def plot_mma(result: SequencesResult, path: str | Path) -> None:
    """Write :func:`render_mma` as a PNG, atomically."""
    from descbal.fileio import atomic_path

    ok, buf = cv2.imencode(".png", render_mma(result))
    if not ok:
        raise RuntimeError("OpenCV could not encode the plot")
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(buf.tobytes())
