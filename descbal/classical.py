"""Classical (hand-crafted) patch descriptors, registered by name.

They serve as baselines beside learned models: ``sift`` and ``rootsift`` compute OpenCV's SIFT
descriptor at the centre of each patch, upright, with the descriptor window filling the patch.
A new descriptor is one function plus one ``@register`` line. Its name is then a model spec
(:func:`descbal.models.resolve.resolve_model`); ``extract`` and ``eval sequences`` need the
keypoint form of the same name too (:data:`descbal.extract.describers.KEYPOINT_DESCRIPTORS`).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from numpy.typing import NDArray

PatchDescriptor = Callable[[NDArray[np.uint8]], NDArray[np.float32]]
CLASSICAL: dict[str, PatchDescriptor] = {}

# OpenCV's SIFT window radius is about 1.5 * size * sqrt(2) * (4 + 1) / 2 = 5.3 * size pixels.
_SIFT_RADIUS_PER_SIZE = 1.5 * np.sqrt(2.0) * 2.5
_MOSAIC_COLUMNS = 64


def register(name: str) -> Callable[[PatchDescriptor], PatchDescriptor]:
    """Decorator adding a patch descriptor to :data:`CLASSICAL`."""

    def deco(fn: PatchDescriptor) -> PatchDescriptor:
        CLASSICAL[name] = fn
        return fn

    return deco


@register("sift")
def sift_patch_descriptor(patches: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Upright OpenCV SIFT at the centre of ready patches, window inside the patch
    (:func:`descbal.extract.describers.sift_keypoint_descriptor` is SIFT at keypoints of an image).

    Patches are laid side by side in one mosaic image so that OpenCV processes thousands per
    call. Shape: (N, P, P) uint8 -> (N, 128) float32 (OpenCV's scale: entries up to 255).
    """
    patches = np.asarray(patches, dtype=np.uint8)
    n, ph, pw = patches.shape
    size = float(min(ph, pw) - 1) / 2.0 / _SIFT_RADIUS_PER_SIZE
    extractor = cv2.SIFT_create()
    out = np.zeros((n, 128), dtype=np.float32)
    block = _MOSAIC_COLUMNS * 16
    for s in range(0, n, block):
        chunk = patches[s : s + block]
        rows = -(-len(chunk) // _MOSAIC_COLUMNS)
        mosaic = np.zeros((rows * ph, _MOSAIC_COLUMNS * pw), dtype=np.uint8)
        kps = []
        for i, p in enumerate(chunk):
            r, c = divmod(i, _MOSAIC_COLUMNS)
            mosaic[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = p
            kps.append(cv2.KeyPoint(c * pw + (pw - 1) / 2.0, r * ph + (ph - 1) / 2.0, size, 0.0))
        kps_out, desc = extractor.compute(mosaic, kps)
        if desc is None or len(kps_out) != len(kps):
            raise RuntimeError("OpenCV SIFT dropped keypoints at patch centres")
        out[s : s + len(chunk)] = desc
    return out


def root_normalise(sift: NDArray[np.floating]) -> NDArray[np.float32]:
    """RootSIFT's mapping of SIFT descriptors: L1-normalise, then square-root (unit L2).
    Shape: (N, 128) -> (N, 128) float32."""
    d = np.asarray(sift, dtype=np.float64).copy()
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-12)
    return np.sqrt(d).astype(np.float32)


@register("rootsift")
def rootsift_patch_descriptor(patches: NDArray[np.uint8]) -> NDArray[np.float32]:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise SIFT, then square-root.

    Shape: (N, P, P) uint8 -> (N, 128) float32, unit L2 norm.
    """
    return root_normalise(sift_patch_descriptor(patches))


def get_classical(name: str) -> PatchDescriptor:
    """A registered descriptor by name; ValueError listing the names otherwise."""
    try:
        return CLASSICAL[name]
    except KeyError:
        raise ValueError(f"unknown descriptor {name!r}; choose from {', '.join(CLASSICAL)}") from None
