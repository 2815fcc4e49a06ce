"""Building an HPatches-format patch benchmark from image sequences with homographies.

Follows the HPatches extraction method (hpatches/hpatches-dataset README, "Patch Extraction
Method"): keypoints are detected in the reference image (here OpenCV's DoG/SIFT, with Lowe's
orientation); the measurement region is the detected scale magnified by 5; only regions fully
inside the reference image are kept; detections overlapping by more than 50 % are clustered
and one at random is kept. For every target image k, each reference frame is perturbed by a
random affine *jitter* -- rotation, anisotropic scaling and translation -- that simulates a
detector's geometric repeatability error, then reprojected through the ground-truth
homography ``H_1_k``, and the 65x65 patch is sampled there (anti-aliased, from an image
pyramid). The README gives the median overlap of a jittered region with the original as about
0.85 for *easy* and 0.72 for *hard* jitter; the *tough* level continues the progression to
about 0.60. The amounts below (``JITTER``) reproduce these medians (a test measures them).

Writes the HPatches release layout (``<out>/patches/<seq>/{ref,e1..e5,h1..h5,t1..t5}.png``) and
a task folder in the official format (``<out>/tasks``: ``splits/splits.json`` with one split
covering all sequences, verification pairs, retrieval queries and distractors), so ``descbal
eval hpatches`` runs on it unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from descbal.data.hpatches_data import write_patch_release
from descbal.data.sequences import Sequence, list_sequence_folders, read_sequence
from descbal.data.taskgen import write_retrieval_tasks, write_splits, write_verification_tasks
from descbal.detectors import detect, get_detector
from descbal.errors import BadInputError, DataMissingError
from descbal.geometry import (
    PatchGeometry,
    build_pyramid,
    decode_keypoints,
    homography_jacobian,
    patch_affines,
    sample_warped_patches,
)
from descbal.images import to_gray
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult

PATCH = 65
#: Jitter per level as (max rotation deg, max |log2 scale| per axis, max translation as a fraction
#: of the region's half-side), all drawn uniformly: medians of region overlap 0.85 / 0.72 / 0.60.
BASE_JITTER = (20.0, 0.35, 0.3)
JITTER = {"e": 0.47, "h": 0.9, "t": 1.45}


@dataclass(frozen=True)
class BenchmarkConfig:
    """Benchmark construction knobs."""

    seed: int = 0
    detector: str = "sift"  # a name in descbal.detectors.DETECTORS
    max_keypoints: int = 1000  # per sequence, detected in the reference image
    geometry: PatchGeometry = field(default_factory=PatchGeometry)  # mag 5 = HPatches' region
    cluster_overlap: float = 0.5
    split: str = "full"
    verification_pairs: int = 20000
    queries: int = 2000
    distractors: int = 8000


def jitter_matrix(level: str, rng: np.random.Generator, n: int) -> NDArray[np.float64]:
    """(n, 2, 3) affine jitters in units of the region's half-side (rotation, anisotropic
    scale, translation)."""
    a = JITTER[level]
    rot, sc, tr = BASE_JITTER
    th = np.deg2rad(rng.uniform(-1, 1, n) * rot * a)
    s = 2.0 ** (rng.uniform(-1, 1, (n, 2)) * sc * a)
    t = rng.uniform(-1, 1, (n, 2)) * tr * a
    m = np.zeros((n, 2, 3))
    c, si = np.cos(th), np.sin(th)
    m[:, 0, 0], m[:, 0, 1] = c * s[:, 0], -si * s[:, 1]
    m[:, 1, 0], m[:, 1, 1] = si * s[:, 0], c * s[:, 1]
    m[:, :, 2] = t
    return m


def circle_iou(c1: NDArray, r1: NDArray, c2: NDArray, r2: NDArray) -> NDArray[np.float64]:
    """Intersection over union of circles (broadcasting). Shapes: (..., 2), (...,) -> (...)."""
    d = np.hypot(*np.moveaxis(np.asarray(c1, float) - np.asarray(c2, float), -1, 0))
    r1, r2 = np.broadcast_arrays(np.asarray(r1, float), np.asarray(r2, float))
    d = np.broadcast_to(d, r1.shape)
    small = np.minimum(r1, r2)
    with np.errstate(divide="ignore", invalid="ignore"):
        a1 = r1**2 * np.arccos(np.clip((d**2 + r1**2 - r2**2) / (2 * d * r1), -1, 1))
        a2 = r2**2 * np.arccos(np.clip((d**2 + r2**2 - r1**2) / (2 * d * r2), -1, 1))
        k = np.sqrt(np.clip((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2), 0, None))
    inter = np.where(d >= r1 + r2, 0.0, np.where(d <= np.abs(r1 - r2), np.pi * small**2, a1 + a2 - 0.5 * k))
    return inter / (np.pi * (r1**2 + r2**2) - inter)


def _cluster(xy: NDArray, radius: NDArray, max_overlap: float, rng: np.random.Generator) -> NDArray[np.int64]:
    """Indices kept after clustering detections whose circles overlap (IoU) above the limit;
    one detection of each cluster, chosen at random."""
    kept: list[int] = []
    for i in rng.permutation(len(xy)):
        if not kept or np.all(circle_iou(xy[i], radius[i], xy[kept], radius[kept]) <= max_overlap):
            kept.append(int(i))
    return np.array(sorted(kept), np.int64)


def sequence_patches(sequence: str | Path | Sequence, cfg: BenchmarkConfig, rng: np.random.Generator
                     ) -> NDArray[np.uint8]:
    """The 16 patch images of one sequence: a folder, or a :class:`~descbal.data.sequences.Sequence`
    in memory (``eval example``'s generated ones). Shape: (16, N, 65, 65) uint8 in TYPES order,
    N <= ``cfg.max_keypoints``.

    Raises:
        BadInputError: images 1..6 or H_1_2..H_1_6 missing, or no keypoint region inside image 1.
    """
    seq = sequence if isinstance(sequence, Sequence) else read_sequence(sequence)
    where = seq.name if isinstance(sequence, Sequence) else sequence  # what error messages name
    ids = list(seq.image_ids)
    if 1 not in ids or not all(k in ids and k in seq.homographies for k in range(2, 7)):
        raise BadInputError("a benchmark sequence needs image 1 and images 2..6 with H_1_2..H_1_6", where)
    ref = to_gray(seq.image(1))
    h, w = ref.shape
    kps = detect(ref, cfg.detector, cfg.max_keypoints * 3)
    xy, size, angle = kps.xy, kps.size, kps.angle
    geo = cfg.geometry
    frames = decode_keypoints(xy, size, angle, geo)  # the one reading of the convention
    d, c_xy = frames.diameter, frames.xy
    half = geo.mag * d / 2 * math.sqrt(2)  # the rotated square's circumradius
    inside = ((c_xy[:, 0] - half >= 0) & (c_xy[:, 1] - half >= 0) & (c_xy[:, 0] + half <= w - 1)
              & (c_xy[:, 1] + half <= h - 1))
    xy, size, angle, d = xy[inside], size[inside], angle[inside], d[inside]
    keep = _cluster(xy, geo.mag * d / 2, cfg.cluster_overlap, rng)[: cfg.max_keypoints]
    xy, size, angle, d = xy[keep], size[keep], angle[keep], d[keep]
    if len(xy) == 0:
        raise BadInputError("no keypoint with its region inside the reference image", where)
    aff = patch_affines(xy, size, angle, geo, PATCH)
    scale = geo.mag * d / PATCH
    out = np.empty((16, len(xy), PATCH, PATCH), np.uint8)
    out[0] = sample_warped_patches(build_pyramid(ref), aff, None, scale, PATCH)
    c = (PATCH - 1) / 2.0
    pyrs = {k: build_pyramid(to_gray(seq.image(k))) for k in range(2, 7)}
    # local zoom of each H at the keypoints
    h_scales = {k: np.sqrt(np.abs(np.linalg.det(homography_jacobian(seq.homographies[k], xy)))) for k in range(2, 7)}
    for li, level in enumerate("eht"):
        for k in range(2, 7):
            pyr, hm, h_scale = pyrs[k], seq.homographies[k], h_scales[k]
            jit = jitter_matrix(level, rng, len(xy))
            frames = np.empty((len(xy), 2, 3))
            for i in range(len(xy)):
                # jitter in the patch frame (half-side units), then the reference frame, then H
                j = jit[i].copy()
                j[:, 2] *= c
                frame = np.eye(3)
                frame[:2] = aff[i]
                local = np.eye(3)
                local[:2, :2] = j[:, :2]
                local[:2, 2] = np.array([c, c]) - j[:, :2] @ np.array([c, c]) + j[:, 2]
                frames[i] = (frame @ local)[:2]
            out[1 + li * 5 + (k - 2)] = sample_warped_patches(pyr, frames, hm, scale * h_scale, PATCH)
    return out


@dataclass
class BenchmarkResult(JsonResult):
    """A built benchmark: output folder, split name, patches per sequence, sequences skipped
    (``{"sequence", "reason"}``: the skipped inputs), and the patch and task folders."""

    SKIPPED_KEY = "skipped"

    out: str
    split: str
    sequences: dict[str, int]
    skipped: list[dict[str, str]]
    patches: str
    tasks: str


def make_benchmark(sequences_dir: str | Path, out: str | Path, cfg: BenchmarkConfig = BenchmarkConfig(),
                   progress: Progress | None = None) -> BenchmarkResult:
    """Build the benchmark (``progress("sequences", done, total)``).

    Raises:
        BadInputError: an unknown detector or one this OpenCV build lacks; no usable sequence.
        DataMissingError: no such folder.
    """
    get_detector(cfg.detector)  # here: a sequence's BadInputError only skips that sequence
    src, out = Path(sequences_dir), Path(out)
    if not src.is_dir():
        raise DataMissingError("sequences folder not found", src)
    folders = [f for f in list_sequence_folders(src)]
    if not folders:
        raise BadInputError("no sequence folders (with 1.ppm|png and H_1_k files)", src)
    progress = or_no_progress(progress)
    rng = np.random.default_rng(cfg.seed)
    data, skipped = {}, []
    for i, f in enumerate(folders):
        progress("sequences", i, len(folders))
        try:
            data[f.name] = sequence_patches(f, cfg, np.random.default_rng([cfg.seed, i]))
        except BadInputError as e:
            skipped.append({"sequence": f.name, "reason": str(e)})
    progress("sequences", len(folders), len(folders))
    if not data:
        raise BadInputError("no usable sequence: " + "; ".join(s["reason"] for s in skipped), src)
    write_patch_release(out / "patches", data)
    tasks = out / "tasks"
    write_splits(tasks, {cfg.split: sorted(data)})
    lengths = {k: v.shape[1] for k, v in sorted(data.items())}
    write_verification_tasks(tasks, cfg.split, lengths, cfg.verification_pairs, rng)
    total = sum(lengths.values())
    n_q = min(cfg.queries, total // 4)
    write_retrieval_tasks(tasks, cfg.split, {k: data[k][0] for k in sorted(data)}, n_q,
                          min(cfg.distractors, total - n_q), rng)
    return BenchmarkResult(out=str(out), split=cfg.split, sequences=lengths, skipped=skipped, patches=str(out / "patches"),
                           tasks=str(tasks))
