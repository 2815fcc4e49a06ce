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

:func:`decode_keypoints` is the one place these conventions are read: it gives OpenCV's terms
(``cv2.KeyPoint`` position, size and angle; what feature files store) and the patch rotation,
and :func:`patch_affines` builds on it. Patches are sampled bilinearly with OpenCV's
``BORDER_REFLECT_101`` (mirrored without repeating the edge pixel) from a :func:`build_pyramid`
level chosen by :func:`pyramid_level`: on the host by :func:`remap` (the data builders through
:func:`sample_warped_patches`, ``extract`` through ``descbal.extract.sampling``), on a GPU by
``descbal.extract.sampling``'s atlas, which mirrors coordinates the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

#: The accepted values of the string options (the CLI's choices are built from these).
SIZE_KINDS: tuple[str, ...] = ("diameter", "sigma")
ANGLE_UNITS: tuple[str, ...] = ("deg", "rad")
PIXEL_ORIGINS: tuple[str, ...] = ("center", "corner")
#: Rows of one ``cv2.remap`` call's maps (OpenCV requires fewer than 32,767): 1,000 patches of 32x32.
REMAP_ROWS = 32000
_HOMOGRAPHY_ROWS = 16384  # points per product in apply_homography


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
        if self.angle_sign not in (1.0, -1.0):
            raise ValueError(f"angle_sign must be 1 or -1, got {self.angle_sign!r}")

    def to_dict(self) -> dict[str, object]:
        """The fields as plain values (stored in patch sets, checkpoints and provenance)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PatchGeometry:
        """The inverse of :meth:`to_dict`; unknown keys are refused (ValueError), missing ones default."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"unknown geometry field(s) {', '.join(extra)}")
        return cls(**d)  # type: ignore[arg-type]


@dataclass(frozen=True)
class KeypointFrames:
    """Keypoints decoded under a :class:`PatchGeometry` into OpenCV's conventions.

    Attributes:
        xy: (N, 2) float64 positions, pixel centres at integers.
        diameter: (N,) float64 neighbourhood diameters in pixels (``cv2.KeyPoint.size``).
        angle: (N,) float64 OpenCV angles: degrees in [0, 360), clockwise in y-down images, 0
            when upright (``cv2.KeyPoint.angle``, hloc's ``oris``).
        theta: (N,) float64 the patch's rotation in radians, the same angle before wrapping
            (kept as given so that patch affines do not move by the rounding of a wrap).
    """

    xy: NDArray[np.float64]
    diameter: NDArray[np.float64]
    angle: NDArray[np.float64]
    theta: NDArray[np.float64]


#: Where a command's geometry came from (:func:`resolve_geometry`).
GEOMETRY_SOURCES: tuple[str, ...] = ("option", "model", "default")
#: The fields a model decides (how much context it saw, whether it saw orientations); the others
#: describe the keypoint source (OpenCV's detectors) and stay the command's options.
MODEL_FIELDS: tuple[str, ...] = ("mag", "upright")


@dataclass(frozen=True)
class GeometryOptions:
    """A command's geometry options: the keypoint source's conventions, and ``mag`` / ``upright``
    where given (None: not given, so the model's trained geometry decides, else the defaults of
    :class:`PatchGeometry`). :func:`resolve_geometry` turns it into a :class:`PatchGeometry`.

    Raises:
        ValueError: a value :class:`PatchGeometry` refuses.
    """

    mag: float | None = None
    size_kind: str = "diameter"
    angle_unit: str = "deg"
    angle_sign: float = 1.0
    pixel_origin: str = "center"
    upright: bool | None = None

    def __post_init__(self) -> None:
        self.fill(None)  # validates every given value

    def given(self) -> bool:
        """Whether ``mag`` or ``upright`` was given explicitly."""
        return self.mag is not None or self.upright is not None

    def fill(self, trained: PatchGeometry | None) -> PatchGeometry:
        """The geometry with the fields not given taken from ``trained`` (else the defaults)."""
        base = trained if trained is not None else PatchGeometry()
        return PatchGeometry(mag=base.mag if self.mag is None else self.mag, size_kind=self.size_kind,
                             angle_unit=self.angle_unit, angle_sign=self.angle_sign, pixel_origin=self.pixel_origin,
                             upright=base.upright if self.upright is None else self.upright)


#: What a geometry argument of a library function may be: a full geometry (used as given) or
#: options resolved against the model (:func:`resolve_geometry`).
GeometrySpec = PatchGeometry | GeometryOptions


def resolve_geometry(spec: GeometrySpec, trained: PatchGeometry | None) -> tuple[PatchGeometry, str]:
    """The geometry a command uses for a model, and where it came from.

    Args:
        spec: a :class:`PatchGeometry` (used as it is: source ``"option"``) or
            :class:`GeometryOptions`: ``mag`` and ``upright`` given override the model's, the
            ones not given come from ``trained``, else from :class:`PatchGeometry`'s defaults
            (mag 5, oriented); the keypoint-source fields (size kind, angle unit and sign, pixel
            origin) always come from ``spec``.
        trained: the geometry the model was trained with (``ResolvedModel.geometry``; None for
            published weights, architectures, classical descriptors and old checkpoints).

    Returns:
        ``(geometry, source)``, source ``"option"`` (an explicit mag / upright was given; a
        field not given still comes from the model), ``"model"`` (the model's) or ``"default"``.
    """
    if isinstance(spec, PatchGeometry):
        return spec, "option"
    source = "option" if spec.given() else "model" if trained is not None else "default"
    return spec.fill(trained), source


def geometry_from_options(mag: float | None = None, size_kind: str = "diameter", angle_unit: str = "deg",
                          angle_sign: float = 1.0, pixel_origin: str = "center",
                          upright: bool | None = None) -> GeometryOptions:
    """:class:`GeometryOptions` from command options (None: not given); a bad value is a one-line
    BadInputError naming the option (``--angle-sign``, ``--mag``, ...)."""
    from descbal.errors import BadInputError

    try:
        return GeometryOptions(mag=mag, size_kind=size_kind, angle_unit=angle_unit, angle_sign=angle_sign,
                               pixel_origin=pixel_origin, upright=upright)
    except ValueError as e:
        name = str(e).split(" ", 1)[0]
        raise BadInputError(f"--{name.replace('_', '-')}: {e}") from None


def decode_keypoints(xy: NDArray[np.floating], size: NDArray[np.floating], angle: NDArray[np.floating],
                     geometry: PatchGeometry) -> KeypointFrames:
    """Keypoints given in ``geometry``'s conventions, in OpenCV's (see :class:`KeypointFrames`).

    Args:
        xy: (N, 2) positions (x right, y down), in the geometry's pixel origin.
        size: (N,) sizes (diameters or sigmas, per the geometry).
        angle: (N,) orientations (unit and sign per the geometry; ignored when upright).
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    d = np.asarray(size, dtype=np.float64).reshape(-1) * (2.0 if geometry.size_kind == "sigma" else 1.0)
    a = np.asarray(angle, dtype=np.float64).reshape(-1)
    if geometry.upright:
        deg, theta = np.zeros_like(a), np.zeros_like(a)
    elif geometry.angle_unit == "deg":
        deg, theta = np.mod(a * geometry.angle_sign, 360.0), np.deg2rad(a) * geometry.angle_sign
    else:
        deg, theta = np.mod(np.rad2deg(a) * geometry.angle_sign, 360.0), a * geometry.angle_sign
    if geometry.pixel_origin == "corner":
        xy = xy - 0.5
    return KeypointFrames(xy, d, deg, theta)


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
    f = decode_keypoints(xy, size, angle, geometry)
    xy = f.xy
    s = geometry.mag * f.diameter / patch_size
    c = (patch_size - 1) / 2.0
    cos, sin = np.cos(f.theta) * s, np.sin(f.theta) * s
    a = np.empty((len(xy), 2, 3))
    a[:, 0, 0], a[:, 0, 1] = cos, -sin
    a[:, 1, 0], a[:, 1, 1] = sin, cos
    a[:, 0, 2] = xy[:, 0] - c * (cos - sin)
    a[:, 1, 2] = xy[:, 1] - c * (sin + cos)
    return a


def affine_scales(affines: NDArray[np.floating]) -> NDArray[np.float64]:
    """Image pixels per patch pixel of patch-to-image affines (the pyramid level's input):
    ``sqrt(|det A[:, :, :2]|)``, ``mag * diameter / P`` for :func:`patch_affines`.
    Shape: (N, 2, 3) -> (N,)."""
    a = np.asarray(affines, dtype=np.float64).reshape(-1, 2, 3)
    return np.sqrt(np.abs(np.linalg.det(a[:, :, :2])))


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


def remap(level: NDArray, map_x: NDArray[np.float32], map_y: NDArray[np.float32]) -> NDArray:
    """``level`` sampled at per-pixel coordinates: bilinear, ``BORDER_REFLECT_101`` outside (the
    host's one sampler). Callers pass at most :data:`REMAP_ROWS` rows of maps.

    Shape: (H, W) level, maps (R, C) float32 -> (R, C) of the level's dtype (uint8 is rounded).
    """
    import cv2

    return cv2.remap(level, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def apply_homography(hm: NDArray[np.floating], pts: NDArray[np.floating]) -> NDArray[np.float64]:
    """Points through a 3x3 homography (with the perspective division). Shape: (..., 2) -> (..., 2)."""
    p = np.asarray(pts, dtype=np.float64)
    flat, lin, shift = p.reshape(-1, 2), np.asarray(hm)[:, :2].T, np.asarray(hm)[:, 2]
    q = np.empty((len(flat), 3))
    # (B, 2) @ (2, 3) products: matmul on a stack of patches makes one tiny product per patch row,
    # about 10x slower; the values are the same
    for s in range(0, len(flat), _HOMOGRAPHY_ROWS):
        q[s : s + _HOMOGRAPHY_ROWS] = flat[s : s + _HOMOGRAPHY_ROWS] @ lin + shift
    q = q.reshape(p.shape[:-1] + (3,))
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


def sample_warped_patches(pyramid: list[NDArray[np.uint8]], affines: NDArray[np.floating], homography: NDArray | None,
                          scales: NDArray[np.floating], patch_size: int) -> NDArray[np.uint8]:
    """Patches whose pixels map through ``affines`` (patch -> frame) and then, if given, through
    one ``homography`` (frame -> image), each sampled by :func:`remap` from the pyramid level that
    keeps its residual down-scaling below 2x (anti-aliasing). All patches of one level go in one
    call: the same pixels as patch by patch.

    Args:
        affines: (N, 2, 3) patch-to-frame maps.
        scales: (N,) image pixels per patch pixel (they choose the pyramid levels).

    Shape: -> (N, patch_size, patch_size) uint8.
    """
    a = np.asarray(affines, dtype=np.float64).reshape(-1, 2, 3)
    s = np.asarray(scales, dtype=np.float64).reshape(-1)
    chunk = max(1, REMAP_ROWS // patch_size)  # bounds the coordinates' memory (tens of MB)
    if len(a) > chunk:
        return np.concatenate([sample_warped_patches(pyramid, a[i : i + chunk], homography, s[i : i + chunk], patch_size)
                               for i in range(0, len(a), chunk)])
    p = patch_size
    g = np.arange(p, dtype=np.float64)
    u, v = np.meshgrid(g, g)
    pts = np.stack([a[:, 0, 0, None, None] * u + a[:, 0, 1, None, None] * v + a[:, 0, 2, None, None],
                    a[:, 1, 0, None, None] * u + a[:, 1, 1, None, None] * v + a[:, 1, 2, None, None]], axis=-1)
    if homography is not None:
        pts = apply_homography(homography, pts)
    map_x, map_y = pts[..., 0].astype(np.float32), pts[..., 1].astype(np.float32)
    lv = pyramid_level(s, len(pyramid) - 1)
    out = np.empty((len(a), p, p), pyramid[0].dtype)
    for level in np.unique(lv):
        idx = np.flatnonzero(lv == level)
        f = 1.0 / (1 << int(level))
        out[idx] = remap(pyramid[level], (map_x[idx] * f).astype(np.float32).reshape(-1, p),
                         (map_y[idx] * f).astype(np.float32).reshape(-1, p)).reshape(-1, p, p)
    return out
