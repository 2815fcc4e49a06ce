"""Self-supervised patch datasets from any folder of photos (``descbal cache images``).

From every photo: keypoints from a detector (``descbal.detectors``; OpenCV SIFT / DoG by default), then for every
keypoint several *views*: the photo itself and random homographies of it (rotation, zoom,
perspective), each with a photometric change (gain, gamma, blur, noise). The keypoint is carried
into each view through the homography and then *re-detected with noise* -- position, scale and
orientation jitter like a real detector's -- and the view's 64x64 patch is sampled at that
geometry (``descbal.geometry``; anti-aliased from an image pyramid, the view rendered implicitly
through the inverse homography). Several detections at one location (SIFT's multiple
orientations) stay separate classes, as in real data: they are the false negatives a loss must
tolerate.

The result has the Brown cache schema: ``patches``, ``labels`` (one class per keypoint) and
``pairs``, a 50/50 match / non-match list drawn from the keypoints of held-out photos, whose
patches are flagged in ``holdout`` and never trained on. Deterministic from the seed;
unreadable or tiny photos are reported and skipped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
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
from descbal.detectors import detect, get_detector
from descbal.errors import BadInputError, DataMissingError
from descbal.fileio import sha256_hex
from descbal.geometry import (
    PatchGeometry,
    apply_homography,
    build_pyramid,
    decode_keypoints,
    homography_jacobian,
    patch_affines,
    sample_warped_patches,
)
from descbal.images import UnreadableImageError, list_images, read_gray
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult


@dataclass(frozen=True)
class PoolConfig:
    """How photos become patches (defaults tuned for 64x64 training patches)."""

    seed: int = 0
    detector: str = "sift"  # a name in descbal.detectors.DETECTORS
    max_keypoints: int = 300  # per photo, strongest first
    views: int = 4  # per keypoint, the first being the photo itself
    patch_size: int = 64
    geometry: PatchGeometry = field(default_factory=PatchGeometry)
    max_side: int = 1024  # larger photos are downscaled first
    min_side: int = 96  # smaller photos are skipped
    rotation: float = 25.0  # deg, uniform +-
    zoom: tuple[float, float] = (0.7, 1.4)  # log-uniform
    perspective: float = 0.08  # corner displacement, fraction of the image side
    pos_noise: float = 0.04  # detector noise: fraction of the keypoint diameter (std)
    scale_noise: float = 0.1  # log2 units (std)
    angle_noise: float = 6.0  # deg (std)
    gain: tuple[float, float] = (0.7, 1.4)
    gamma: tuple[float, float] = (0.75, 1.33)
    blur: float = 1.0  # max Gaussian sigma, patch pixels
    noise: float = 3.0  # max noise std, grey levels
    holdout_fraction: float = 0.1  # photos whose keypoints form the evaluation pairs
    pairs: int = 10000

    def __post_init__(self) -> None:
        if self.views < 2:
            raise ValueError("views must be at least 2 (a keypoint needs a positive pair)")
        if self.max_keypoints < 1:
            raise ValueError("max_keypoints must be at least 1")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout fraction must be in [0, 1), got {self.holdout_fraction}")




def random_homography(rng: np.random.Generator, w: int, h: int, cfg: PoolConfig) -> NDArray[np.float64]:
    """A homography of the image plane onto itself: rotation and zoom about the centre, then a
    perspective jitter of the corners."""
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    th = math.radians(rng.uniform(-cfg.rotation, cfg.rotation))
    z = math.exp(rng.uniform(math.log(cfg.zoom[0]), math.log(cfg.zoom[1])))
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) * z
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    moved = (corners - c) @ rot.T + c + rng.uniform(-1, 1, (4, 2)) * cfg.perspective * np.array([w, h])
    return cv2.getPerspectiveTransform(corners.astype(np.float32), moved.astype(np.float32)).astype(np.float64)


def _photometric(p: NDArray[np.float32], rng: np.random.Generator, cfg: PoolConfig) -> NDArray[np.uint8]:
    gain = math.exp(rng.uniform(math.log(cfg.gain[0]), math.log(cfg.gain[1])))
    gamma = math.exp(rng.uniform(math.log(cfg.gamma[0]), math.log(cfg.gamma[1])))
    x = 255.0 * np.power(np.clip(p, 0, 255) / 255.0, gamma) * gain
    sigma = rng.uniform(0, cfg.blur)
    if sigma > 0.3:
        x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    x = x + rng.normal(0, rng.uniform(0, cfg.noise), x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def image_views(image: NDArray[np.uint8], cfg: PoolConfig, rng: np.random.Generator
                ) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Patches of every keypoint of one photo in every view.

    Returns:
        ``(patches (M, P, P) uint8, keypoint (M,) int64)``, keypoints numbered from 0; a keypoint
        keeps only views whose re-detected centre lies inside the view, and needs two.
    """
    h, w = image.shape
    kps = detect(image, cfg.detector, cfg.max_keypoints)
    xy, size, angle = kps.xy, kps.size, kps.angle
    n = len(xy)
    if n == 0:
        return np.zeros((0, cfg.patch_size, cfg.patch_size), np.uint8), np.zeros(0, np.int64)
    pyr = build_pyramid(image)
    ps = cfg.patch_size
    patches, owner = [], []
    for v in range(cfg.views):
        hm = np.eye(3) if v == 0 else random_homography(rng, w, h, cfg)
        hinv = np.linalg.inv(hm)
        c_v = apply_homography(hm, xy)
        jac = homography_jacobian(hm, xy)
        s_j = np.sqrt(np.abs(np.linalg.det(jac)))
        rot_j = np.degrees(np.arctan2(jac[:, 1, 0] - jac[:, 0, 1], jac[:, 0, 0] + jac[:, 1, 1]))
        size_v = size * s_j * 2.0 ** rng.normal(0, cfg.scale_noise, n)
        ang_v = angle + cfg.geometry.angle_sign * rot_j + rng.normal(0, cfg.angle_noise, n)
        c_v = c_v + rng.normal(0, 1, (n, 2)) * (cfg.pos_noise * size_v)[:, None]
        inside = (c_v[:, 0] >= 0) & (c_v[:, 0] <= w - 1) & (c_v[:, 1] >= 0) & (c_v[:, 1] <= h - 1)
        aff = patch_affines(c_v, size_v, ang_v, cfg.geometry, ps)
        view_rng = np.random.default_rng(rng.integers(2**63))
        idx = np.flatnonzero(inside)
        # the view is rendered implicitly: view pixels map back to the photo through H^-1
        diameter = decode_keypoints(c_v[idx], size_v[idx], ang_v[idx], cfg.geometry).diameter
        scale = cfg.geometry.mag * diameter / ps / s_j[idx]
        for k, raw in zip(idx, sample_warped_patches(pyr, aff[idx], hinv, scale, ps), strict=True):
            patches.append(raw.astype(np.float32) if v else raw)
            owner.append(k)
        if v:
            for i in range(len(patches) - int(inside.sum()), len(patches)):
                patches[i] = _photometric(patches[i], view_rng, cfg)
    owner_a = np.array(owner, np.int64)
    counts = np.bincount(owner_a, minlength=n)
    keep = counts[owner_a] >= 2
    out = np.stack(patches)[keep] if keep.any() else np.zeros((0, ps, ps), np.uint8)
    return out.astype(np.uint8), owner_a[keep]


def build_pool(folder: str | Path, cfg: PoolConfig = PoolConfig(),
               progress: Progress | None = None) -> tuple[PatchSet, list[dict[str, str]]]:
    """Patch set from every photo of ``folder``. Returns the set and the skipped photos
    (``{"path", "reason"}``).

    Raises:
        BadInputError: an unknown detector or one this OpenCV build lacks; no usable photo.
        DataMissingError: no folder, or no image files in it.
    """
    get_detector(cfg.detector)  # before reading any photo
    folder = Path(folder)
    progress = or_no_progress(progress)
    files = list_images(folder)
    if not files:
        raise DataMissingError("no image files (jpg, png, ppm, ...) found", folder)
    rng = np.random.default_rng(cfg.seed)
    held = rng.random(len(files)) < cfg.holdout_fraction
    if cfg.holdout_fraction > 0 and not held.any() and len(files) > 1:
        held[rng.integers(len(files))] = True
    all_p, all_l, all_h, skipped = [], [], [], []
    next_label = 0
    for i, f in enumerate(files):
        progress("images", i, len(files))
        rel = f.relative_to(folder).as_posix()
        try:
            img = read_gray(f, cfg.max_side)
        except UnreadableImageError:
            skipped.append({"path": rel, "reason": "unreadable"})
            continue
        if min(img.shape) < cfg.min_side:
            skipped.append({"path": rel, "reason": f"too small ({img.shape[1]}x{img.shape[0]})"})
            continue
        p, k = image_views(img, cfg, np.random.default_rng([cfg.seed, i]))
        if len(p) == 0:
            skipped.append({"path": rel, "reason": "no keypoints"})
            continue
        all_p.append(p)
        all_l.append(k + next_label)
        all_h.append(np.full(len(p), held[i]))
        next_label += int(k.max()) + 1
    progress("images", len(files), len(files))
    if not all_p:
        raise BadInputError("no usable photo (all unreadable, too small or without keypoints)", folder)
    patches = np.concatenate(all_p)
    labels = np.concatenate(all_l)
    holdout = np.concatenate(all_h)
    pairs = holdout_pairs(labels, holdout, cfg.pairs, np.random.default_rng([cfg.seed, 99]))
    return (PatchSet(patches, labels, pairs if len(pairs) else None, folder.name, holdout, geometry=cfg.geometry),
            skipped)


@dataclass
class PoolResult(JsonResult):
    """A self-supervised patch pool (``descbal cache images``): file, whether it was already up
    to date (``skipped``; then only these three fields are set, and ``skipped_images`` when the
    pool was built without some photos) and the fingerprint of photos and config; when built,
    the photos found and skipped (``{"path", "reason"}``: the skipped inputs), patches, keypoint
    classes, held-out pairs and patches, and wall time (s)."""

    SKIPPED_KEY = "skipped_images"
    OMIT_NONE = ("images", "skipped_images", "num_patches", "num_classes", "num_pairs", "holdout_patches", "seconds")

    path: str
    skipped: bool
    source_sha256: str
    images: int | None = None
    skipped_images: list[dict[str, str]] | None = None
    num_patches: int | None = None
    num_classes: int | None = None
    num_pairs: int | None = None
    holdout_patches: int | None = None
    seconds: float | None = None


def cache_images(folder: str | Path, out: str | Path, cfg: PoolConfig = PoolConfig(), *, overwrite: bool = False,
                 progress: Progress | None = None) -> PoolResult:
    """Build (or skip, when up to date) the patch pool of a photo folder into ``out`` (HDF5,
    Brown schema plus ``holdout``). ``progress("images", ...)`` then ``progress("write", ...)``."""
    folder, out = Path(folder), Path(out)
    start = time.perf_counter()
    files = list_images(folder)
    source = sha256_hex(fingerprint_files(files, folder) + config_hash(cfg))
    if not overwrite and cache_is_current(out, source):
        return PoolResult(path=str(out), skipped=True, source_sha256=source, skipped_images=skipped_when_built(out))
    ps, skipped = build_pool(folder, cfg, progress)
    attrs = cache_attrs(folder.name, source, config=json.dumps(asdict(cfg)), skipped=json.dumps(skipped))
    write_patchset(out, ps, attrs, progress=progress)
    return PoolResult(path=str(out), skipped=False, source_sha256=source, images=len(files), skipped_images=skipped,
                      num_patches=len(ps), num_classes=int(len(np.unique(ps.labels))), num_pairs=ps.num_pairs,
                      holdout_patches=int(ps.holdout.sum()) if ps.holdout is not None else 0,
                      seconds=time.perf_counter() - start)
