"""Detect + describe: one image (:class:`FeatureExtractor`) or a whole folder (:func:`extract_folder`).

The folder pipeline is idempotent like hloc's: images already in the output are skipped unless
``overwrite``; unreadable, empty and keypoint-less images are reported, skipped and listed in
the summary (when no image at all could be extracted, that is bad input); writes are atomic and
committed as the work proceeds (see :mod:`descbal.extract.writers`); a run that stores nothing
leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from descbal.detectors import detect, get_detector
from descbal.devices import resolve_device
from descbal.extract.describers import PATCH_SIZE, describer_model, load_describer
from descbal.extract.writers import COMMIT_EVERY_IMAGES, COMMIT_EVERY_S, Features, open_writer
from descbal.geometry import GeometryOptions, GeometrySpec, decode_keypoints, resolve_geometry
from descbal.images import UnreadableImageError, fit_max_side, list_images, read_gray
from descbal.models.resolve import ModelSpec
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult


@dataclass(frozen=True)
class ExtractConfig:
    """Extraction settings; the CLI's defaults are these."""

    model: str = "sift"  # any model spec (descbal.models.resolve): path, architecture, sift/rootsift, NAME=..., FILE.onnx
    detector: str = "sift"  # a name in descbal.detectors.DETECTORS that this OpenCV build has
    max_keypoints: int = 2048  # per image, strongest by response; 0 keeps all
    # keypoint -> patch conventions: options (mag / upright not given: the model's trained ones, else 5 / oriented)
    # or a full PatchGeometry used as it is (descbal.geometry.resolve_geometry)
    geometry: GeometrySpec = field(default_factory=GeometryOptions)
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:1, ...
    batch_size: int = 1024  # patches per forward pass
    half: bool = False  # store descriptors as float16
    bf16: bool = False  # run the network under bfloat16 autocast
    compile: bool = False  # run the network compiled by torch.compile (inductor; eager where it cannot compile)
    commit_every: int = COMMIT_EVERY_IMAGES  # an hloc output commits after this many new images ...
    commit_every_s: float = COMMIT_EVERY_S  # ... or this many seconds, whichever first (a kill keeps that)
    max_size: int | None = None  # detect and describe on the image shrunk to this longer side; keypoints in full-size pixels


@dataclass
class ExtractResult(JsonResult):
    """What :func:`extract_folder` did: images found, extracted, already in the output and
    failed (``{"name", "reason"}``: the skipped inputs), keypoints written, wall time (s),
    images/s and the provenance stored in the output."""

    SKIPPED_KEY = "failed"

    images_dir: str
    out: str
    format: str
    images: int
    extracted: int
    skipped_existing: int
    failed: list[dict[str, str]]
    num_keypoints: int
    seconds: float
    images_per_s: float
    provenance: dict[str, Any]


class FeatureExtractor:
    """Keypoints and descriptors of gray images.

    Args:
        model: any model spec (:func:`descbal.models.resolve.resolve_model`: a checkpoint, run
            folder or published weights, an architecture or OpenCV descriptor name, ``NAME=``
            any of these, an nn.Module or a resolved model), or a file written by
            ``descbal export`` (``FILE.onnx``, run by onnxruntime; :func:`~descbal.extract.describers.describer_model`).
        detector: a registered detector name (one this OpenCV build has).
        max_keypoints: keep the strongest by response (0: all).
        geometry: keypoint-to-patch conventions (also how OpenCV descriptors read keypoints):
            :class:`~descbal.geometry.GeometryOptions`, whose ``mag`` and ``upright`` not given
            come from the geometry the model was trained with, or a full
            :class:`~descbal.geometry.PatchGeometry` (:func:`~descbal.geometry.resolve_geometry`;
            the result: ``self.geometry``, ``self.geometry_source``, both in the provenance).
        device: ``auto``, ``cpu``, ``cuda``... or a torch.device.
        bf16: run a network under bfloat16 autocast (see :class:`~descbal.extract.describers.NetworkDescriber`).
        compile: run a network compiled by ``torch.compile``, or eager where inductor cannot
            compile (``provenance["compile"]`` says which, and why).
        max_size: detect and describe on the image downscaled so that its longer side is
            ``max_size`` (:func:`descbal.images.fit_max_side`); keypoints, scales and
            ``image_size`` are then given in the full image's pixels (:func:`scale_features`).

    Raises:
        BadInputError: an unknown detector or one this OpenCV build lacks (the message says which
            are available, or why it is missing).
    """

    def __init__(self, model: ModelSpec = "sift", detector: str = "sift", max_keypoints: int = 2048,
                 geometry: GeometrySpec = GeometryOptions(), device: str | torch.device = "auto",
                 batch_size: int = 1024, bf16: bool = False, max_size: int | None = None, compile: bool = False) -> None:
        get_detector(detector)  # fail before loading the model
        if max_keypoints < 0:
            raise ValueError("max_keypoints must be >= 0")
        if max_size is not None and max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self.device = resolve_device(device)
        self.detector = detector
        self.max_keypoints = max_keypoints
        resolved = describer_model(model)
        self.geometry, self.geometry_source = resolve_geometry(geometry, resolved.geometry)
        self.describer = load_describer(resolved, self.geometry, self.device, batch_size, bf16, compile)

    @classmethod
    def from_config(cls, cfg: ExtractConfig) -> FeatureExtractor:
        return cls(cfg.model, cfg.detector, cfg.max_keypoints, cfg.geometry, cfg.device, cfg.batch_size, cfg.bf16,
                   cfg.max_size, cfg.compile)

    @property
    def provenance(self) -> dict[str, Any]:
        """What produced the features: model, weights SHA-256, geometry and where it came from
        (``geometry_source``: option, model or default), detector, versions."""
        from descbal import __version__

        return {**self.describer.provenance, "geometry": dataclasses.asdict(self.geometry),
                "geometry_source": self.geometry_source,
                "detector": {"name": self.detector, "max_keypoints": self.max_keypoints}, "patch_size": PATCH_SIZE,
                "max_size": self.max_size,
                "descbal_version": __version__, "opencv_version": cv2.__version__, "torch_version": torch.__version__}

    def __call__(self, image: NDArray[np.uint8]) -> Features:
        """Features of a gray uint8 image. Shape: (H, W) -> N keypoints, (N, D) descriptors."""
        small = fit_max_side(image, self.max_size)
        if small is not image:
            return scale_features(self._describe(small), image.shape[1], image.shape[0])
        return self._describe(image)

    def _describe(self, image: NDArray[np.uint8]) -> Features:
        kps = detect(image, self.detector, self.max_keypoints)
        desc, kept = self.describer(image, kps)
        kps = kps.subset(kept)
        f = decode_keypoints(kps.xy, kps.size, kps.angle, self.geometry)  # stored in OpenCV's conventions
        return Features(keypoints=f.xy.astype(np.float32), descriptors=np.asarray(desc, np.float32),
                        scores=kps.response.astype(np.float32), scales=f.diameter.astype(np.float32),
                        oris=f.angle.astype(np.float32), image_size=np.array([image.shape[1], image.shape[0]], np.int64))


def scale_features(feats: Features, width: int, height: int) -> Features:
    """Features of a downscaled image in the pixels of the (width x height) original: with pixel
    centres at integers, ``x -> (x + 0.5) W / w - 0.5`` (same for y), scales x the mean factor."""
    w, h = (int(v) for v in feats.image_size)
    fx, fy = width / w, height / h
    xy = (feats.keypoints.astype(np.float64) + 0.5) * np.array([fx, fy]) - 0.5
    return dataclasses.replace(feats, keypoints=xy.astype(np.float32),
                               scales=(feats.scales * (fx + fy) / 2).astype(np.float32),
                               image_size=np.array([width, height], np.int64))


def _load(path: Path) -> tuple[Path, NDArray[np.uint8] | None, str | None]:
    try:
        return path, read_gray(path), None
    except UnreadableImageError as e:
        return path, None, e.reason


def extract_folder(images_dir: str | Path, out: str | Path, cfg: ExtractConfig = ExtractConfig(), *, fmt: str = "hloc",
                   overwrite: bool = False, progress: Progress | None = None,
                   extractor: FeatureExtractor | None = None) -> ExtractResult:
    """Extract features for every image under ``images_dir`` (recursive) into ``out``.

    Names are POSIX paths relative to ``images_dir``. Images already in ``out`` are skipped
    unless ``overwrite`` (which starts the output afresh). An hloc output is committed every
    ``cfg.commit_every`` images or ``cfg.commit_every_s`` seconds, whichever comes first.
    ``progress("images", done, total)`` counts the images to do.

    Returns:
        An :class:`ExtractResult`.

    Raises:
        DataMissingError: ``images_dir`` missing or without images.
        BadInputError: ``out`` holds features of a different extraction (model, geometry...),
            or no image could be extracted (all unreadable or without keypoints; then nothing
            is written).
    """
    from descbal.data.patchset import prefetch
    from descbal.errors import BadInputError, DataMissingError

    t0 = time.perf_counter()
    images_dir = Path(images_dir)
    files = list_images(images_dir)
    if not files:
        raise DataMissingError("no image files (jpg, png, ppm, ...) found", images_dir)
    ext = extractor if extractor is not None else FeatureExtractor.from_config(cfg)
    prov = {**ext.provenance, "descriptors_dtype": "float16" if cfg.half else "float32", "format": fmt}
    progress = or_no_progress(progress)
    failed: list[dict[str, str]] = []
    done = n_kp = 0
    with open_writer(fmt, out, prov, overwrite=overwrite, half=cfg.half, commit_every=cfg.commit_every,
                     commit_every_s=cfg.commit_every_s) as writer:
        have = writer.existing()
        todo = [f for f in files if f.relative_to(images_dir).as_posix() not in have]
        skipped = len(files) - len(todo)
        progress("images", 0, len(todo))
        for i, (path, img, err) in enumerate(prefetch(_load, todo, 1)):
            name = path.relative_to(images_dir).as_posix()
            if img is None:
                failed.append({"name": name, "reason": err or "unreadable"})
            else:
                feats = ext(img)
                if len(feats) == 0:
                    failed.append({"name": name, "reason": "no keypoints detected"})
                else:
                    writer.write(name, feats)
                    done += 1
                    n_kp += len(feats)
            progress("images", i + 1, len(todo))
    if failed and done == 0 and skipped == 0:
        shown = "; ".join(f"{f['name']}: {f['reason']}" for f in failed[:3])
        more = f"; ... and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise BadInputError(f"no image could be extracted ({shown}{more})", images_dir)
    secs = time.perf_counter() - t0
    return ExtractResult(images_dir=str(images_dir), out=str(out), format=fmt, images=len(files), extracted=done,
                         skipped_existing=skipped, failed=failed, num_keypoints=n_kp, seconds=secs,
                         images_per_s=(done / secs) if secs > 0 else 0.0, provenance=prov)
