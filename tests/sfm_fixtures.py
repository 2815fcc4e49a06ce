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


def box_surface_points(num_per_face: int, seed: int = 0, margin: float = 0.1
                       ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Random points on the box's faces (at least ``margin`` from the edges) and their outward
    unit normals. Shape: -> (5 num_per_face, 3), (5 num_per_face, 3)."""
    rng = np.random.default_rng(seed)
    xyz, normals = [], []
    for o, a, b in box_faces():
        uv = rng.uniform(margin / 2, 1 - margin / 2, (num_per_face, 2))
        xyz.append(o + uv[:, :1] * a + uv[:, 1:] * b)
        n = np.cross(a, b)
        normals.append(np.tile(n / np.linalg.norm(n), (num_per_face, 1)))
    return np.concatenate(xyz), np.concatenate(normals)


def project(scene: SyntheticScene, name: str, xyz: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Pixel positions (centres at integers) and depths of points in view ``name``.
    Shape: (P, 3) -> (P, 2), (P,)."""
    cam = (xyz - scene.C[name]) @ scene.R[name].T
    x = cam @ scene.K.T
    return x[:, :2] / x[:, 2:], cam[:, 2]


def write_box_model(folder: str | Path, scene: SyntheticScene, xyz: NDArray[np.float64], normals: NDArray[np.float64],
                    size: tuple[int, int] = (640, 480), *, only: dict[int, list[int]] | None = None,
                    shift: dict[tuple[int, int], tuple[float, float]] | None = None, text: bool = False,
                    features: str | Path | None = None, seed: int = 0, descbal_features: bool = True) -> list[int]:
    """A COLMAP model of ``scene`` (PINHOLE cameras, the true poses) in ``folder`` whose 3D points
    are ``xyz``, each observed where it projects (+0.5 px: COLMAP's pixel corners) in every view
    that sees its face, inside the image by 4 px. ``only``: point -> the view indices it may be
    observed in; ``shift``: (point, view) -> an offset (px) added to that observation (a bad
    sighting). Every image also has 3 keypoints without a 3D point. ``features``: also write the
    hloc features file the model would come from (keypoints = observations - 0.5, float32;
    random ``scales`` in [8, 16] px and ``oris`` in [0, 360) deg; with ``descbal_features`` the
    provenance attribute descbal's writer adds, else none, like another hloc extractor's file). Returns the 3D point id of each
    point (0 when it is seen in fewer than two views and left out)."""
    import h5py
    import pycolmap

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    K = scene.K
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=w, height=h, camera_id=1,
                                                    params=[K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]))
    obs: dict[int, list[tuple[int, NDArray[np.float64]]]] = {}  # view -> (point, COLMAP xy)
    for v, name in enumerate(scene.names):
        xy, depth = project(scene, name, xyz)
        facing = np.einsum("ij,ij->i", normals, scene.C[name] - xyz) > 0
        inside = (xy[:, 0] >= 4) & (xy[:, 0] <= w - 5) & (xy[:, 1] >= 4) & (xy[:, 1] <= h - 5) & (depth > 0)
        for p in np.flatnonzero(facing & inside):
            if only is not None and int(p) in only and v not in only[int(p)]:
                continue
            obs.setdefault(v, []).append((int(p), xy[p] + 0.5 + np.array((shift or {}).get((int(p), v), (0.0, 0.0)))))
    views_of: dict[int, list[tuple[int, int]]] = {}  # point -> (view, point2D index)
    feats = {}
    for v, name in enumerate(scene.names):
        rows = obs.get(v, [])
        kp = np.array([xy for _, xy in rows] + list(rng.uniform(10, 200, (3, 2))), np.float64)
        im = pycolmap.Image(name=name, keypoints=kp, camera_id=1, image_id=v + 1)
        R, C = scene.R[name], scene.C[name]
        rec.add_image_with_trivial_frame(im, pycolmap.Rigid3d(np.column_stack([R, -R @ C])))
        for j, (p, _) in enumerate(rows):
            views_of.setdefault(p, []).append((v, j))
        feats[name] = (kp - 0.5).astype(np.float32)
    ids = [0] * len(xyz)
    for p in sorted(views_of):
        if len(views_of[p]) < 2:
            continue
        track = pycolmap.Track()
        for v, j in views_of[p]:
            track.add_element(v + 1, j)
        ids[p] = rec.add_point3D(xyz[p], track)
    rec.update_point_3d_errors()
    rec.write_text(folder) if text else rec.write_binary(folder)
    if features is not None:
        with h5py.File(features, "w") as f:
            if descbal_features:
                f.attrs["descbal_provenance"] = '{"model": "sift"}'
            for name, kp in feats.items():
                g = f.create_group(name)
                g["keypoints"] = kp
                g["scales"] = rng.uniform(8, 16, len(kp)).astype(np.float32)
                g["oris"] = rng.uniform(0, 360, len(kp)).astype(np.float32)
                g["image_size"] = np.array([w, h])
    return ids
