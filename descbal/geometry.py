"""Keypoint-to-patch geometry: one explicit convention, shared by every component.

OpenCV, kornia, hloc and LightGlue disagree on the scale multiplier, on whether a keypoint's
size is a diameter or a sigma, on the angle's unit and sign, and on the pixel origin, so each is
a field of :class:`PatchGeometry`. The defaults describe OpenCV keypoints:

* ``size_kind="diameter"``: ``KeyPoint.size`` is the diameter of the meaningful neighbourhood
  (for SIFT, ``2 sigma``); with ``"sigma"`` the size is multiplied by 2 first;
* ``mag``: the patch's side covers ``mag * diameter`` image pixels;
* ``angle_unit="deg"``, ``angle_sign=+1``: OpenCV angles, degrees, clockwise in an image whose
  y axis points down (the patch's x axis is rotated by the angle, so a rotated view of a
  rotated keypoint gives the same patch); ``upright=True`` ignores angles;
* ``pixel_origin="center"``: pixel centres are at integer coordinates (OpenCV, hloc); with
  ``"corner"`` the keypoints' coordinates are shifted by -0.5 first (pixel (0, 0) spans [0, 1]).

Patch pixel (u, v), with centres at 0..P-1, maps to the image point
``c + s R(theta) ((u, v) - (P - 1) / 2)`` with ``s = mag * diameter / P``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: The accepted values of the string options (the CLI's choices are built from these).
SIZE_KINDS: tuple[str, ...] = ("diameter", "sigma")
ANGLE_UNITS: tuple[str, ...] = ("deg", "rad")
PIXEL_ORIGINS: tuple[str, ...] = ("center", "corner")


@dataclass(frozen=True)
class PatchGeometry:
    """How keypoints map to patches (see the module docstring)."""

    mag: float = 5.0
    size_kind: str = "diameter"  # "diameter" | "sigma"
    angle_unit: str = "deg"  # "deg" | "rad"
    angle_sign: float = 1.0  # +1: clockwise in y-down image coordinates (OpenCV)
    pixel_origin: str = "center"  # "center" | "corner"
    upright: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("size_kind", SIZE_KINDS), ("angle_unit", ANGLE_UNITS), ("pixel_origin", PIXEL_ORIGINS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.mag <= 0:
            raise ValueError("mag must be positive")


def patch_affines(xy: NDArray[np.floating], size: NDArray[np.floating], angle: NDArray[np.floating],
                  geometry: PatchGeometry, patch_size: int) -> NDArray[np.float64]:
    """Affine maps from patch pixel coordinates to image coordinates.

    Args:
        xy: (N, 2) keypoint positions (x right, y down), in the geometry's pixel origin.
        size: (N,) keypoint sizes (diameters or sigmas, per the geometry).
        angle: (N,) orientations (per the geometry; ignored when upright).

    Returns:
        (N, 2, 3) matrices A with ``(x, y) = A @ (u, v, 1)``, image coordinates with pixel centres
        at integers.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    d = np.asarray(size, dtype=np.float64).reshape(-1) * (2.0 if geometry.size_kind == "sigma" else 1.0)
    th = np.asarray(angle, dtype=np.float64).reshape(-1)
    if geometry.angle_unit == "deg":
        th = np.deg2rad(th)
    th = np.zeros_like(th) if geometry.upright else th * geometry.angle_sign
    if geometry.pixel_origin == "corner":
        xy = xy - 0.5
    s = geometry.mag * d / patch_size
    c = (patch_size - 1) / 2.0
    cos, sin = np.cos(th) * s, np.sin(th) * s
    a = np.empty((len(xy), 2, 3))
    a[:, 0, 0], a[:, 0, 1] = cos, -sin
    a[:, 1, 0], a[:, 1, 1] = sin, cos
    a[:, 0, 2] = xy[:, 0] - c * (cos - sin)
    a[:, 1, 2] = xy[:, 1] - c * (sin + cos)
    return a


def pyramid_level(scale: NDArray[np.floating], max_level: int) -> NDArray[np.int64]:
    """Pyramid level to sample from so that the remaining down-scaling is below 2x (anti-aliasing):
    ``floor(log2(scale))`` clipped to [0, max_level]. ``scale``: image px per patch px."""
    lv = np.floor(np.log2(np.maximum(np.asarray(scale, dtype=np.float64), 1e-12)))
    return np.clip(lv, 0, max_level).astype(np.int64)


def build_pyramid(image: NDArray[np.uint8], min_side: int = 16) -> list[NDArray[np.uint8]]:
    """Gaussian pyramid (``cv2.pyrDown``): level L pixel i sits at original coordinate i 2^L."""
    import cv2

    levels = [image]
    while min(levels[-1].shape[:2]) // 2 >= min_side:
        levels.append(cv2.pyrDown(levels[-1]))
    return levels


def sample_patch(pyramid: list[NDArray[np.uint8]], map_x: NDArray[np.float32], map_y: NDArray[np.float32],
                 scale: float, border: int | None = None) -> NDArray[np.uint8]:
    """Sample one patch given per-pixel image coordinates, from the pyramid level that keeps the
    residual down-scaling below 2x. Shape: maps (P, P) -> (P, P) uint8."""
    import cv2

    lv = int(pyramid_level(np.array([scale]), len(pyramid) - 1)[0])
    f = 1.0 / (1 << lv)
    flag = cv2.BORDER_REFLECT_101 if border is None else border
    return cv2.remap(pyramid[lv], (map_x * f).astype(np.float32), (map_y * f).astype(np.float32),
                     cv2.INTER_LINEAR, borderMode=flag)


def apply_homography(hm: NDArray[np.floating], pts: NDArray[np.floating]) -> NDArray[np.float64]:
    """Points through a 3x3 homography (with the perspective division). Shape: (..., 2) -> (..., 2)."""
    p = np.asarray(pts, dtype=np.float64)
    q = p @ np.asarray(hm)[:, :2].T + np.asarray(hm)[:, 2]
    return q[..., :2] / q[..., 2:3]


def homography_jacobian(hm: NDArray[np.floating], pts: NDArray[np.floating]) -> NDArray[np.float64]:
    """Jacobians of a homography at points. Shape: (N, 2) -> (N, 2, 2)."""
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    x, y = p[:, 0], p[:, 1]
    w = hm[2, 0] * x + hm[2, 1] * y + hm[2, 2]
    u = hm[0, 0] * x + hm[0, 1] * y + hm[0, 2]
    v = hm[1, 0] * x + hm[1, 1] * y + hm[1, 2]
    j = np.empty((len(p), 2, 2))
    j[:, 0, 0] = (hm[0, 0] * w - u * hm[2, 0]) / w**2
    j[:, 0, 1] = (hm[0, 1] * w - u * hm[2, 1]) / w**2
    j[:, 1, 0] = (hm[1, 0] * w - v * hm[2, 0]) / w**2
    j[:, 1, 1] = (hm[1, 1] * w - v * hm[2, 1]) / w**2
    return j


def sample_warped_patch(pyramid: list[NDArray[np.uint8]], affine: NDArray[np.floating], homography: NDArray | None,
                        scale: float, patch_size: int) -> NDArray[np.uint8]:
    """One patch whose pixels map through ``affine`` (patch -> frame) and then, if given, through
    ``homography`` (frame -> image), sampled anti-aliased by :func:`sample_patch`.

    ``scale``: image pixels per patch pixel (chooses the pyramid level).
    Shape: -> (patch_size, patch_size) uint8.
    """
    g = np.arange(patch_size, dtype=np.float64)
    u, v = np.meshgrid(g, g)
    pts = np.stack([affine[0, 0] * u + affine[0, 1] * v + affine[0, 2],
                    affine[1, 0] * u + affine[1, 1] * v + affine[1, 2]], axis=-1)
    if homography is not None:
        pts = apply_homography(homography, pts)
    return sample_patch(pyramid, pts[..., 0].astype(np.float32), pts[..., 1].astype(np.float32), scale)
