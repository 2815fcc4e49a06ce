"""Synthetic image sequences with exact homographies from single photos.

Each photo becomes an HPatches-sequences folder: ``1.png`` (the photo) and ``2.png`` .. ``6.png``
with ``H_1_2`` .. ``H_1_6`` mapping image-1 pixels to image k. ``v_`` sequences get
increasingly strong random homographies (rotation, zoom, perspective) and mild photometric
changes; ``i_`` sequences get near-identity homographies and strong photometric changes
(gain, gamma, blur, noise), like HPatches' illumination sequences.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from descbal.data.selfsup import PoolConfig, random_homography
from descbal.fileio import atomic_path


def _photometric_image(img: NDArray[np.uint8], rng: np.random.Generator, strong: bool) -> NDArray[np.uint8]:
    g = math.exp(rng.uniform(-0.5, 0.5) if strong else rng.uniform(-0.1, 0.1))
    gamma = math.exp(rng.uniform(-0.45, 0.45) if strong else 0.0)
    x = 255.0 * np.power(img.astype(np.float32) / 255.0, gamma) * g
    if strong and rng.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5))
    x = x + rng.normal(0, 2.0, x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def synthetic_sequence(image: NDArray[np.uint8], kind: str, rng: np.random.Generator
                       ) -> tuple[list[NDArray[np.uint8]], dict[int, NDArray[np.float64]]]:
    """Six images and the homographies H_1_k (k = 2..6) of one synthetic sequence.

    Args:
        image: (H, W) or (H, W, 3) uint8 photo (image 1).
        kind: ``"v"`` (viewpoint) or ``"i"`` (illumination).
    """
    h, w = image.shape[:2]
    images, hs = [image], {}
    for k in range(2, 7):
        if kind == "v":
            level = (k - 1) / 5.0
            cfg = replace(PoolConfig(), rotation=8 + 25 * level, zoom=(1 - 0.35 * level, 1 + 0.35 * level),
                          perspective=0.03 + 0.12 * level)
            hm = random_homography(rng, w, h, cfg)
        else:
            hm = random_homography(rng, w, h, replace(PoolConfig(), rotation=1.0, zoom=(0.99, 1.01), perspective=0.003))
        warped = cv2.warpPerspective(image, hm, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        images.append(_photometric_image(warped, rng, strong=kind == "i"))
        hs[k] = hm
    return images, hs


def write_sequence(folder: str | Path, images: list[NDArray[np.uint8]], homographies: dict[int, NDArray]) -> None:
    """Write ``1.png`` .. ``n.png`` and ``H_1_k`` text files (3 rows, space-separated)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(images, start=1):
        ok, buf = cv2.imencode(".png", img)
        if not ok:
            raise OSError(f"cannot encode image {k}")
        with atomic_path(folder / f"{k}.png") as tmp:
            tmp.write_bytes(buf.tobytes())
    for k, hm in homographies.items():
        text = "\n".join(" ".join(f"{v:.10g}" for v in row) for row in hm) + "\n"
        with atomic_path(folder / f"H_1_{k}") as tmp:
            tmp.write_text(text)
