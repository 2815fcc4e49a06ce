"""A synthetic scene for the structure-from-motion tests: a textured box seen from known cameras.

Each visible face of the box is rendered with ``cv2.warpPerspective`` of its own random texture
(blobs at several scales, so that DoG finds many distinctive keypoints); the background is flat
grey. Cameras stand on an arc around the box at two alternating heights (so that their centres
span 3-D and a similarity aligned on them pins every rotation axis), all looking at its centre.
Projection: ``x ~ K (R X + t)`` (``R``, ``t``: world -> camera, OpenCV axes: x right, y down,
z forward; pixel centres at integers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

TEXTURE = 512  # texture side (pixels) of every face


@dataclass
class SyntheticScene:
    """Image names, ``K`` (3, 3) and per image ``R`` (3, 3) world -> camera and centre ``C`` (3,)."""

    names: list[str]
    K: NDArray[np.float64]
    R: dict[str, NDArray[np.float64]]
    C: dict[str, NDArray[np.float64]]


def _texture(rng: np.random.Generator) -> NDArray[np.uint8]:
    img = np.zeros((TEXTURE, TEXTURE), np.float64)
    for cells, weight in ((8, 1.0), (24, 0.8), (64, 0.6), (128, 0.4)):
        noise = rng.random((cells, cells))
        img += weight * cv2.resize(noise, (TEXTURE, TEXTURE), interpolation=cv2.INTER_CUBIC)
    img = (img - img.min()) / (img.max() - img.min())
    return np.clip(30 + 200 * img, 0, 255).astype(np.uint8)


def look_at(centre: NDArray[np.float64], target: NDArray[np.float64]) -> NDArray[np.float64]:
    """World -> camera rotation of a camera at ``centre`` looking at ``target``, world z up."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def box_faces(half: float = 1.0) -> list[tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]]:
    """The box's faces as ``(origin, a, b)``: points ``origin + u a + v b`` for u, v in [0, 1],
    ``a x b`` the outward normal."""
    h = half
    e = 2 * h
    X, Y, Z = np.eye(3)
    return [
        (np.array([h, -h, -h]), e * Y, e * Z),  # +x
        (np.array([-h, h, -h]), -e * Y, e * Z),  # -x
        (np.array([h, h, -h]), -e * X, e * Z),  # +y
        (np.array([-h, -h, -h]), e * X, e * Z),  # -y
        (np.array([-h, -h, h]), e * X, e * Y),  # +z (top)
    ]


def render_box_scene(folder: str | Path, num_views: int = 8, size: tuple[int, int] = (640, 480), seed: int = 0,
                     radius: float = 6.0, height: float = 2.5, arc_deg: float = 70.0) -> SyntheticScene:
    """Write ``folder/NNNN.png`` views of a textured 2 x 2 x 2 box centred at the origin and
    return the cameras. Shape: each image (H, W) = (size[1], size[0]) uint8."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    faces = box_faces()
    textures = [_texture(rng) for _ in faces]
    w, h = size
    K = np.array([[0.9 * w, 0, (w - 1) / 2], [0, 0.9 * w, (h - 1) / 2], [0, 0, 1]], np.float64)
    scene = SyntheticScene([], K, {}, {})
    for i in range(num_views):
        az = np.deg2rad(15.0 + arc_deg * i / max(num_views - 1, 1))
        C = np.array([radius * np.cos(az), radius * np.sin(az), height + (1.5 if i % 2 else 0.0)])
        R = look_at(C, np.zeros(3))
        t = -R @ C
        img = np.full((h, w), 128, np.uint8)
        for (o, a, b), tex in zip(faces, textures, strict=True):
            normal = np.cross(a, b)
            if normal @ (C - (o + (a + b) / 2)) <= 0:  # facing away
                continue
            # texture pixel (u, v), centres at integers, spans the face: X = o + (u+0.5)/T a + (v+0.5)/T b
            A = np.column_stack([R @ a / TEXTURE, R @ b / TEXTURE, R @ (o + (a + b) * 0.5 / TEXTURE) + t])
            H = K @ A
            warped = cv2.warpPerspective(tex, H, (w, h), flags=cv2.INTER_LINEAR)
            mask = cv2.warpPerspective(np.full_like(tex, 255), H, (w, h), flags=cv2.INTER_NEAREST)
            img[mask > 0] = warped[mask > 0]
        name = f"{i:04d}.png"
        cv2.imwrite(str(folder / name), img)
        scene.names.append(name)
        scene.R[name] = R
        scene.C[name] = C
    return scene
