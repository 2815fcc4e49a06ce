"""Image matching on a rectified stereo pair with a ground-truth disparity map.

Per model: features of the left and the right image (:class:`~descbal.extract.pipeline.FeatureExtractor`),
mutual-nearest-neighbour matches (:func:`descbal.match.mutual_nn`, as ``eval sequences``), then

* the **correctness rule**: a match of left keypoint ``(x_l, y_l)`` and right keypoint ``p_r``
  is correct at threshold t when ``||p_r - (x_l - d, y_l)|| <= t`` pixels, with ``d`` the
  ground-truth disparity at the left keypoint (Middlebury's convention, ``x_r = x_l - d``);
* ``d`` is sampled at the **nearest pixel** (keypoints have pixel centres at integers; x.5
  rounds up): bilinear sampling would blend foreground and background disparities across an
  occlusion edge into a value valid for neither, and spread unknown (infinite) values;
* left keypoints **without valid disparity** (not finite, <= 0, or outside the map) are dropped
  before matching: whether their matches are right cannot be told, so they neither count nor
  take a right keypoint from a keypoint that does; MMA and the match count refer to the same
  matches;
* **MMA** at t = 1..10 px: the fraction of correct matches (0 without a match), and the
  numbers of features (left, left with valid disparity, right) and of matches.

Disparity files (:func:`read_disparity`): ``.npy`` (H, W), ``.npz`` (one (H, W) array),
``.pfm`` (Middlebury's; infinity where unknown) or ``.png`` / ``.tif`` (8 or 16 bit; KITTI
stores 256 x disparity with 0 where unknown: ``disparity_scale=256``); disparity = stored value
/ ``disparity_scale``. Built-in pair: ``motorcycle``, Middlebury 2014 Motorcycle as shipped
in scikit-image's wheel (741 x 500, 4x down-sampled; :func:`skimage.data.stereo_motorcycle`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from descbal.errors import BadInputError, DataMissingError
from descbal.eval.sequences import THRESHOLDS, mma_curve
from descbal.geometry import GeometryOptions, GeometrySpec
from descbal.images import read_image, to_gray
from descbal.models.resolve import ModelSpec, resolve_model
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult

#: How the disparity is read at a keypoint (see the module docstring).
DISPARITY_SAMPLING = "nearest"


@dataclass
class StereoPair:
    """A rectified pair and the ground-truth disparity of its left image.

    Attributes:
        name: a short name (``motorcycle``, or the left image's file stem).
        left, right: (H, W) uint8 grey images (pixels as stored: no EXIF rotation).
        disparity: (H, W) float32 pixels, ``x_r = x_l - d``; not finite or <= 0 where unknown.
        sources: the files read and the disparity scale (for the result's provenance).
    """

    name: str
    left: NDArray[np.uint8]
    right: NDArray[np.uint8]
    disparity: NDArray[np.float32]
    sources: dict[str, Any]


@dataclass
class StereoResult(JsonResult):
    """Matching on a stereo pair, every model.

    ``models``: one ``{"name", "provenance", "geometry", "geometry_source", "num_features": {"left", "left_valid", "right"},
    "num_matches", "mma": [10] (fractions at ``thresholds`` px), "seconds"}`` per model.
    ``valid_disparity``: the fraction of pixels with a valid disparity.
    """

    pair: str
    sources: dict[str, Any]
    image_size: list[int]  # (W, H)
    valid_disparity: float
    disparity_sampling: str
    thresholds: list[int]
    detector: str
    max_keypoints: int
    geometry: dict[str, Any]
    ratio: float | None
    models: list[dict[str, Any]]

    def mma_at(self, model: int, t: int) -> float:
        """MMA of the ``model``-th model at threshold ``t`` px."""
        return self.models[model]["mma"][self.thresholds.index(t)]


# ------------------------------------------------------------------------------ the rule


def disparity_at(disparity: NDArray[np.floating], xy: NDArray[np.floating]) -> NDArray[np.float64]:
    """The disparity at each keypoint, nearest pixel (x.5 rounds up); NaN outside the map.
    Shape: (H, W), (N, 2) -> (N,)."""
    h, w = disparity.shape
    col = np.floor(np.asarray(xy[:, 0], np.float64) + 0.5).astype(np.int64)
    row = np.floor(np.asarray(xy[:, 1], np.float64) + 0.5).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    out = np.full(len(xy), np.nan)
    out[inside] = disparity[row[inside], col[inside]]
    return out


def valid_disparity(d: NDArray[np.floating]) -> NDArray[np.bool_]:
    """Where a disparity is usable: finite and > 0. Shape: any -> same."""
    d = np.asarray(d, np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(d) & (d > 0)


def stereo_errors(kp_left: NDArray, kp_right: NDArray, matches: NDArray[np.int32],
                  d_left: NDArray[np.floating]) -> NDArray[np.float64]:
    """Distances of matched right keypoints from their left keypoints shifted by the disparity.

    Args:
        kp_left, kp_right: (N, 2) and (M, 2) positions (x, y) in pixels.
        matches: (N,) index into ``kp_right`` or -1 (the ``matches0`` convention).
        d_left: (N,) disparity at each left keypoint (all valid).

    Shape: (N, 2), (M, 2), (N,), (N,) -> (K,) for the K matched left keypoints, in their order.
    """
    idx = np.flatnonzero(matches >= 0)
    expected = np.stack([kp_left[idx, 0] - d_left[idx], kp_left[idx, 1]], axis=1)
    return np.linalg.norm(kp_right[matches[idx]] - expected, axis=1) if len(idx) else np.zeros(0)


# ------------------------------------------------------------------------------ files


def _read_npy(path: Path) -> NDArray:
    return np.load(path, allow_pickle=False)


def _read_npz(path: Path) -> NDArray:
    with np.load(path, allow_pickle=False) as z:
        if len(z.files) != 1:
            raise BadInputError(f"expected one array in the .npz, found {len(z.files)} ({', '.join(z.files)})", path)
        return z[z.files[0]]


def _read_pfm(path: Path) -> NDArray:
    data = path.read_bytes()
    # header: "Pf" (grey), width, height, scale (< 0: little-endian), each followed by whitespace
    m = re.match(rb"(P[Ff])\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s", data)
    if m is None:
        raise BadInputError("not a PFM file (no 'Pf W H SCALE' header)", path)
    if m.group(1) == b"PF":
        raise BadInputError("a colour PFM (PF); a disparity map has one channel (Pf)", path)
    w, h, scale = int(m.group(2)), int(m.group(3)), float(m.group(4))
    body = data[m.end():]
    if len(body) < 4 * w * h:
        raise BadInputError(f"PFM holds {len(body)} bytes of data, {w}x{h} needs {4 * w * h}", path)
    arr = np.frombuffer(body[: 4 * w * h], dtype="<f4" if scale < 0 else ">f4").reshape(h, w)
    return arr[::-1]  # PFM rows run bottom to top


def _read_png(path: Path) -> NDArray:
    img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BadInputError("not an image OpenCV decodes", path)
    if img.ndim != 2:
        raise BadInputError(f"a disparity image has one channel, this one has shape {img.shape}", path)
    return img


#: Disparity readers by file suffix: stored values, before the scale.
DISPARITY_READERS: dict[str, Callable[[Path], NDArray]] = {
    ".npy": _read_npy, ".npz": _read_npz, ".pfm": _read_pfm, ".png": _read_png, ".tif": _read_png, ".tiff": _read_png,
}


def read_disparity(path: str | Path, scale: float = 1.0) -> NDArray[np.float32]:
    """A disparity map (pixels) from ``path``: stored value / ``scale`` (see the module docstring).

    Shape: -> (H, W) float32.

    Raises:
        DataMissingError: no such file.
        BadInputError: an unknown suffix, an unreadable file, not 2-D, or ``scale`` <= 0.
    """
    path = Path(path)
    if not path.is_file():
        raise DataMissingError("disparity file not found", path)
    if not scale > 0:
        raise BadInputError(f"disparity scale must be > 0, got {scale}")
    reader = DISPARITY_READERS.get(path.suffix.lower())
    if reader is None:
        raise BadInputError(f"unknown disparity format {path.suffix!r}; use one of {', '.join(DISPARITY_READERS)}",
                            path)
    try:
        arr = np.asarray(reader(path))
    except (OSError, ValueError) as e:
        raise BadInputError(f"cannot read the disparity map: {e}", path) from None
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise BadInputError(f"a disparity map is a 2-D number array, got {arr.dtype} {arr.shape}", path)
    return (arr.astype(np.float64) / scale).astype(np.float32)


def _read_gray(path: Path) -> NDArray[np.uint8]:
    if not path.is_file():
        raise DataMissingError("image not found", path)
    return to_gray(read_image(path))  # stored pixels: the disparity refers to them


def _motorcycle() -> tuple[Path, Path, Path, float]:
    from descbal.data.paths import skimage_data_dir

    data = skimage_data_dir()
    # the files behind skimage.data.stereo_motorcycle(): inf where the disparity is unknown
    return data / "motorcycle_left.png", data / "motorcycle_right.png", data / "motorcycle_disp.npz", 1.0


#: Built-in pairs: name -> (left, right, disparity file, disparity scale).
BUILTIN_PAIRS: dict[str, Callable[[], tuple[Path, Path, Path, float]]] = {"motorcycle": _motorcycle}


def open_stereo_pair(left: str | Path | None = None, right: str | Path | None = None,
                     disparity: str | Path | None = None, *, builtin: str | None = None,
                     disparity_scale: float = 1.0) -> StereoPair:
    """Read a rectified pair and its left disparity map, or a built-in pair (:data:`BUILTIN_PAIRS`).

    Raises:
        BadInputError: both or neither of the files and ``builtin``, an unknown built-in, images
            of different sizes or a disparity map of another size, unreadable files.
        DataMissingError: a file is missing.
    """
    files = [left, right, disparity]
    if builtin is not None:
        if any(f is not None for f in files):
            raise BadInputError("give LEFT RIGHT DISPARITY or --builtin, not both")
        if builtin not in BUILTIN_PAIRS:
            raise BadInputError(f"unknown built-in pair {builtin!r}; choose from {', '.join(BUILTIN_PAIRS)}")
        left, right, disparity, disparity_scale = BUILTIN_PAIRS[builtin]()
        name = builtin
    elif any(f is None for f in files):
        raise BadInputError(f"give LEFT RIGHT DISPARITY (three files) or --builtin {'|'.join(BUILTIN_PAIRS)}")
    else:
        name = Path(str(left)).stem
    assert left is not None and right is not None and disparity is not None
    lp, rp, dp = Path(left), Path(right), Path(disparity)
    img_l, img_r = _read_gray(lp), _read_gray(rp)
    if img_l.shape != img_r.shape:
        raise BadInputError(f"right image is {img_r.shape[1]}x{img_r.shape[0]}, the left "
                            f"{img_l.shape[1]}x{img_l.shape[0]}: not a rectified pair", rp)
    disp = read_disparity(dp, disparity_scale)
    if disp.shape != img_l.shape:
        raise BadInputError(f"disparity map is {disp.shape[1]}x{disp.shape[0]}, the left image "
                            f"{img_l.shape[1]}x{img_l.shape[0]}", dp)
    return StereoPair(name, img_l, img_r, disp, {"left": str(lp), "right": str(rp), "disparity": str(dp),
                                                 "disparity_scale": float(disparity_scale)})


# ------------------------------------------------------------------------------ evaluation


def evaluate_stereo(pair: StereoPair, models: Sequence[ModelSpec], *, detector: str = "sift",
                    max_keypoints: int = 2048, geometry: GeometrySpec = GeometryOptions(), ratio: float | None = None,
                    device: str | torch.device = "auto", names: Sequence[str] | None = None,
                    progress: Progress | None = None) -> StereoResult:
    """Detect, describe, match and score every model on a stereo pair (module docstring).

    Args:
        models: model specs (:func:`descbal.models.resolve.resolve_model`), all resolved before
            any work; ``names``: their display names (default: the resolver's).
        geometry: options (``mag`` / ``upright`` not given: each model's trained geometry, see
            :func:`descbal.geometry.resolve_geometry`) or one full geometry for every model.
        ratio: also apply Lowe's ratio test, in (0, 1].
        progress: ``progress("models", done, total)`` per model.

    Raises:
        BadInputError: no model, a bad ratio, an unknown detector (or one this OpenCV lacks).
    """
    from descbal.detectors import get_detector
    from descbal.extract.pipeline import FeatureExtractor
    from descbal.match import mutual_nn

    get_detector(detector)
    if not models:
        raise BadInputError("give at least one model")
    if ratio is not None and not 0 < ratio <= 1:
        raise BadInputError(f"--ratio must be in (0, 1], got {ratio}")
    if names is not None and len(names) != len(models):
        raise BadInputError(f"{len(names)} names for {len(models)} models")
    resolved = [resolve_model(m, name=None if names is None else names[i]) for i, m in enumerate(models)]
    progress = or_no_progress(progress)
    results = []
    for i, model in enumerate(resolved):
        t0 = time.perf_counter()
        ext = FeatureExtractor(model, detector, max_keypoints, geometry, device)
        fl, fr = ext(pair.left), ext(pair.right)
        d = disparity_at(pair.disparity, fl.keypoints)
        keep = np.flatnonzero(valid_disparity(d))
        m, _ = mutual_nn(fl.descriptors[keep], fr.descriptors, ratio, ext.device)
        errors = stereo_errors(fl.keypoints[keep], fr.keypoints, m, d[keep])
        results.append({"name": model.name, "provenance": ext.provenance, "geometry": asdict(ext.geometry),
                        "geometry_source": ext.geometry_source,
                        "num_features": {"left": len(fl), "left_valid": int(len(keep)), "right": len(fr)},
                        "num_matches": int((m >= 0).sum()), "mma": mma_curve(errors),
                        "seconds": time.perf_counter() - t0})
        progress("models", i + 1, len(resolved))
    h, w = pair.left.shape
    return StereoResult(pair=pair.name, sources=dict(pair.sources), image_size=[w, h],
                        valid_disparity=float(valid_disparity(pair.disparity).mean()),
                        disparity_sampling=DISPARITY_SAMPLING, thresholds=list(THRESHOLDS), detector=detector,
                        max_keypoints=max_keypoints, geometry=asdict(geometry), ratio=ratio, models=results)


def run_stereo(left: str | Path | None, right: str | Path | None, disparity: str | Path | None,
               models: Sequence[ModelSpec], *, builtin: str | None = None, disparity_scale: float = 1.0,
               **options: Any) -> StereoResult:
    """``descbal eval stereo``: :func:`open_stereo_pair` then :func:`evaluate_stereo` (``options``)."""
    return evaluate_stereo(open_stereo_pair(left, right, disparity, builtin=builtin, disparity_scale=disparity_scale),
                           models, **options)
