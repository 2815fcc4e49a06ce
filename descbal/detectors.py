"""Keypoint detectors from OpenCV: the one registry that ``extract``, ``eval sequences``,
``cache images`` and ``make-benchmark`` share.

A detector is a function ``(gray image, max_keypoints) -> Keypoints`` plus one
``@register_detector`` line. Every detector returns OpenCV keypoints: positions with pixel
centres at integers, ``size`` a diameter in pixels and ``angle`` in degrees (OpenCV's sense,
0 when the detector gives no orientation), sorted strongest first by response and cut to
``max_keypoints`` (0 keeps all).

Not every OpenCV build has every detector (OpenCV 5 moved AKAZE to opencv-contrib): a
detector registered with ``missing=`` is listed, in ``--help`` and in error messages, only where
the running OpenCV has it; asking for it elsewhere is a :class:`~descbal.errors.BadInputError`
that says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray

from descbal.errors import BadInputError

#: GFTT corners have no scale: they get this diameter (pixels), so that a patch covers
#: ``mag * GFTT_SIZE`` pixels, about a mid-sized DoG keypoint's.
GFTT_SIZE = 12.0
#: ORB's ``nfeatures`` when asked for "all" corners.
ORB_ALL = 1_000_000


@dataclass
class Keypoints:
    """Detected keypoints, strongest first.

    Attributes:
        xy: (N, 2) float64 positions (x right, y down, pixel centres at integers).
        size: (N,) float64 OpenCV sizes (diameters, pixels).
        angle: (N,) float64 OpenCV angles (degrees; 0 when the detector has none).
        response: (N,) float64 detector responses (higher is stronger).
        cv: the OpenCV ``KeyPoint`` objects in the same order (they carry ``octave``, which
            OpenCV's SIFT descriptor uses to pick its scale-space layer).
    """

    xy: NDArray[np.float64]
    size: NDArray[np.float64]
    angle: NDArray[np.float64]
    response: NDArray[np.float64]
    cv: list = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.xy)

    def subset(self, idx: NDArray[np.int64]) -> Keypoints:
        """The keypoints at ``idx`` (same order as ``idx``)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Keypoints(self.xy[idx], self.size[idx], self.angle[idx], self.response[idx],
                         [self.cv[i] for i in idx] if self.cv else [])

    @classmethod
    def from_cv(cls, kps: list, max_keypoints: int = 0) -> Keypoints:
        """From OpenCV keypoints: sorted by decreasing response (stable), cut to ``max_keypoints``."""
        order = sorted(range(len(kps)), key=lambda i: -kps[i].response)
        if max_keypoints > 0:
            order = order[:max_keypoints]
        kps = [kps[i] for i in order]
        if not kps:
            z = np.zeros(0)
            return cls(np.zeros((0, 2)), z, z.copy(), z.copy(), [])
        return cls(
            xy=np.array([k.pt for k in kps], dtype=np.float64).reshape(-1, 2),
            size=np.array([k.size for k in kps], dtype=np.float64),
            angle=np.array([k.angle if k.angle >= 0 else 0.0 for k in kps], dtype=np.float64),
            response=np.array([k.response for k in kps], dtype=np.float64),
            cv=kps,
        )


Detector = Callable[[NDArray[np.uint8], int], Keypoints]
#: Why a detector cannot run in this OpenCV build, or None when it can.
Requirement = Callable[[], str | None]


def _always() -> str | None:
    return None


@dataclass(frozen=True)
class DetectorEntry:
    """One registered detector: the function, a few words for ``--help`` and its requirement."""

    fn: Detector
    label: str = ""
    missing: Requirement = _always


class DetectorRegistry(dict[str, DetectorEntry]):
    """``name -> DetectorEntry`` in registration order (the default, ``sift``, first)."""

    def register(self, name: str, label: str = "", missing: Requirement | None = None
                 ) -> Callable[[Detector], Detector]:
        """Decorator registering a detector under ``name``; ``missing`` says why this OpenCV
        build cannot run it (None when it can), checked when the detector is asked for."""

        def deco(fn: Detector) -> Detector:
            self[name] = DetectorEntry(fn, label, missing or _always)
            return fn

        return deco

    def available(self) -> list[str]:
        """The names this OpenCV build can run, in registration order."""
        return [n for n, e in self.items() if e.missing() is None]

    def get_detector(self, name: str) -> Detector:
        """The detector ``name``.

        Raises:
            BadInputError: not registered (the message lists the available names), or not in
                this OpenCV build (the message says why).
        """
        entry = self.get(name)
        if entry is None:
            raise BadInputError(f"unknown detector {name!r}; choose from {', '.join(self.available())}")
        reason = entry.missing()
        if reason is not None:
            raise BadInputError(f"{name}: {reason}; choose from {', '.join(self.available())}")
        return entry.fn

    def help(self) -> str:
        """One line for ``--help``: the available detectors with their labels."""
        names = [f"{n} ({self[n].label})" if self[n].label else n for n in self.available()]
        return f"Keypoint detector: {', '.join(names)}."


DETECTORS = DetectorRegistry()
register_detector = DETECTORS.register
get_detector = DETECTORS.get_detector
available_detectors = DETECTORS.available


@register_detector("sift", "DoG")
def sift(image: NDArray[np.uint8], max_keypoints: int) -> Keypoints:
    """Difference of Gaussians (OpenCV SIFT), with SIFT orientations."""
    return Keypoints.from_cv(cv2.SIFT_create(nfeatures=max(max_keypoints, 0)).detect(image, None), max_keypoints)


@register_detector("orb", "oriented FAST")
def orb(image: NDArray[np.uint8], max_keypoints: int) -> Keypoints:
    """ORB's oriented FAST on an 8-level pyramid (Harris response). ORB is asked for every
    corner it finds (its own ``nfeatures`` would share the budget out per level), then the
    strongest are kept."""
    return Keypoints.from_cv(cv2.ORB_create(nfeatures=ORB_ALL).detect(image, None), max_keypoints)


@register_detector("gftt", "Shi-Tomasi corners")
def gftt(image: NDArray[np.uint8], max_keypoints: int) -> Keypoints:
    """Shi-Tomasi corners (good features to track): no scale or orientation, so size is
    :data:`GFTT_SIZE` and angle 0."""
    det = cv2.GFTTDetector_create(maxCorners=max(max_keypoints, 0), qualityLevel=0.01, minDistance=3)
    kps = [cv2.KeyPoint(k.pt[0], k.pt[1], GFTT_SIZE, 0.0, k.response) for k in det.detect(image, None)]
    return Keypoints.from_cv(kps, max_keypoints)


def _akaze_factory() -> Callable[[], object] | None:
    """OpenCV's AKAZE constructor, wherever this build has it (OpenCV 5 moved AKAZE out of the
    main package into opencv-contrib's ``xfeatures2d``); None when absent."""
    for owner, attr in ((cv2, "AKAZE_create"), (getattr(cv2, "AKAZE", None), "create"),
                        (getattr(cv2, "xfeatures2d", None), "AKAZE_create")):
        fn = getattr(owner, attr, None) if owner is not None else None
        if fn is not None:
            return fn
    return None


def _akaze_missing() -> str | None:
    if _akaze_factory() is not None:
        return None
    return f"not in this OpenCV build ({cv2.__version__}; OpenCV 5 moved AKAZE to opencv-contrib-python)"


@register_detector("akaze", "nonlinear scale space", missing=_akaze_missing)
def akaze(image: NDArray[np.uint8], max_keypoints: int) -> Keypoints:
    """AKAZE's nonlinear scale space (Hessian response), with orientations."""
    factory = _akaze_factory()
    if factory is None:  # called directly rather than through get_detector
        raise BadInputError(f"akaze: {_akaze_missing()}")
    return Keypoints.from_cv(factory().detect(image, None), max_keypoints)  # type: ignore[attr-defined]


def detect(image: NDArray[np.uint8], name: str = "sift", max_keypoints: int = 0) -> Keypoints:
    """Keypoints of a gray uint8 image with a registered detector, strongest first.

    Shape: (H, W) uint8 -> N keypoints, N <= max_keypoints when max_keypoints > 0.

    Raises:
        BadInputError: an unknown detector, or one this OpenCV build lacks.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a gray uint8 image (H, W), got {image.dtype} {image.shape}")
    return get_detector(name)(image, max_keypoints)
