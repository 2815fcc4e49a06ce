"""Ground-truth cameras of a scene: the Strecha layout, or a COLMAP model.

Every camera is stored as COLMAP does, world -> camera: ``x_cam = R X + t`` with the camera
centre ``C = -R^T t`` (OpenCV axes: x right, y down, z forward).

* **Strecha layout** (fountain-P11, castle-P30, ...): ``SCENE/images/NNNN.jpg``,
  ``SCENE/images/K.txt`` and ``SCENE/gt_dense_cameras/NNNN.jpg.camera``: 9 text lines, K (3
  lines), three radial distortion values, a rotation ``R_s`` (3 lines), the centre ``C`` (world
  units, metres for Strecha's scenes), and ``width height``. Its projection is
  ``x ~ K R_s^T (X - C)`` (``R_s`` maps camera axes to world axes), so ``R = R_s^T``.
* **COLMAP model** (``cameras``, ``images``, ``points3D``, ``.bin`` or ``.txt``): in
  ``SCENE/``, ``SCENE/sparse/`` or ``SCENE/sparse/0/``; images are in ``SCENE/images/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from descbal.errors import BadInputError, DataMissingError

CAMERA_SUFFIX = ".camera"


@dataclass
class GroundTruth:
    """Cameras of a scene by image name (POSIX path relative to ``images_dir``).

    Attributes:
        R: name -> (3, 3) world -> camera rotation.
        C: name -> (3,) camera centre in world units.
        K: name -> (3, 3) intrinsics when known (pixel centres at integers), else absent.
    """

    scene: str
    images_dir: Path
    source: str  # "strecha" or "colmap"
    R: dict[str, NDArray[np.float64]]
    C: dict[str, NDArray[np.float64]]
    K: dict[str, NDArray[np.float64]]

    @property
    def names(self) -> list[str]:
        return sorted(self.R)

    def t(self, name: str) -> NDArray[np.float64]:
        """World -> camera translation ``-R C``. Shape: (3,)."""
        return -self.R[name] @ self.C[name]


def read_strecha_camera(path: str | Path) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``(K (3, 3), R (3, 3) world -> camera, C (3,))`` of a Strecha ``.camera`` file.

    Raises:
        BadInputError: fewer than 8 lines of numbers, or a rotation that is not one.
    """
    path = Path(path)
    try:
        rows = [[float(v) for v in line.split()] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        K = np.array(rows[0:3], np.float64)
        Rs = np.array(rows[4:7], np.float64)
        C = np.array(rows[7], np.float64)
    except (ValueError, IndexError):
        raise BadInputError("not a Strecha .camera file (K, distortion, R, C, size on 9 lines)", path) from None
    if K.shape != (3, 3) or Rs.shape != (3, 3) or C.shape != (3,) or not np.allclose(Rs @ Rs.T, np.eye(3), atol=1e-3):
        raise BadInputError("not a Strecha .camera file (K, distortion, R, C, size on 9 lines)", path)
    return K, Rs.T, C


def read_strecha(scene: str | Path) -> GroundTruth:
    """Ground truth of a scene in the Strecha layout (see the module docstring).

    Raises:
        BadInputError: no ``gt_dense_cameras/*.camera`` files, or a malformed one.
    """
    scene = Path(scene)
    files = sorted((scene / "gt_dense_cameras").glob(f"*{CAMERA_SUFFIX}"))
    if not files:
        raise BadInputError("no ground-truth cameras (gt_dense_cameras/*.camera)", scene)
    gt = GroundTruth(scene.name, scene / "images", "strecha", {}, {}, {})
    for f in files:
        name = f.name[: -len(CAMERA_SUFFIX)]
        gt.K[name], gt.R[name], gt.C[name] = read_strecha_camera(f)
    return gt


def colmap_model_dir(scene: str | Path) -> Path | None:
    """The folder of a COLMAP model (``cameras`` + ``images`` + ``points3D``, binary or text) in
    ``scene``, ``scene/sparse`` or ``scene/sparse/0``; None when there is none."""
    scene = Path(scene)
    for d in (scene, scene / "sparse", scene / "sparse" / "0"):
        for ext in (".bin", ".txt"):
            if all((d / f"{part}{ext}").is_file() for part in ("cameras", "images", "points3D")):
                return d
    return None


def read_colmap_groundtruth(scene: str | Path, model: str | Path | None = None) -> GroundTruth:
    """Ground truth from a COLMAP model's registered images (see the module docstring).

    Raises:
        BadInputError: no model, or one pycolmap cannot read.
    """
    from descbal.sfm.colmap_db import import_pycolmap

    pycolmap = import_pycolmap()
    scene = Path(scene)
    where = Path(model) if model is not None else colmap_model_dir(scene)
    if where is None:
        raise BadInputError("no COLMAP model (cameras, images, points3D .bin or .txt)", scene)
    rec = pycolmap.Reconstruction()
    try:
        rec.read(where)
    except Exception as e:  # pycolmap raises ValueError/RuntimeError with COLMAP's check message
        raise BadInputError(f"not a COLMAP model pycolmap reads ({e})", where) from None
    gt = GroundTruth(scene.name, scene / "images", "colmap", {}, {}, {})
    for im in rec.images.values():
        if not im.has_pose:
            continue
        pose = im.cam_from_world()
        gt.R[im.name] = np.asarray(pose.rotation.matrix(), np.float64)
        gt.C[im.name] = np.asarray(im.projection_center(), np.float64)
        K = np.asarray(im.camera.calibration_matrix(), np.float64).copy()
        K[:2, 2] -= 0.5  # COLMAP's pixel corners -> pixel centres at integers
        gt.K[im.name] = K
    return gt


def load_ground_truth(scene: str | Path) -> GroundTruth:
    """Ground-truth cameras of ``scene``: the Strecha layout when ``gt_dense_cameras/`` exists,
    else a COLMAP model (see the module docstring).

    Raises:
        DataMissingError: ``scene`` is not a folder.
        BadInputError: neither layout (one line naming the folder), or no ``images/`` folder.
    """
    scene = Path(scene)
    if not scene.is_dir():
        raise DataMissingError("scene folder not found", scene)
    if (scene / "gt_dense_cameras").is_dir():
        gt = read_strecha(scene)
    elif colmap_model_dir(scene) is not None:
        gt = read_colmap_groundtruth(scene)
    else:
        raise BadInputError("no ground-truth cameras: expected gt_dense_cameras/*.camera (Strecha layout) or a COLMAP "
                            "model (cameras, images, points3D in the folder, sparse/ or sparse/0/)", scene)
    if not gt.images_dir.is_dir():
        raise BadInputError("no images/ folder beside the ground-truth cameras", scene)
    return gt
