"""Structure from motion with descbal features, through pycolmap (``pip install 'descbal[sfm]'``).

* :mod:`~descbal.sfm.colmap_db`: hloc features + matches -> a COLMAP database (``descbal colmap``).
* :mod:`~descbal.sfm.reconstruct`: images -> extract -> pairs -> match -> database ->
  ``pycolmap.incremental_mapping`` (``descbal reconstruct``).
* :mod:`~descbal.sfm.groundtruth`: Strecha ``.camera`` files and COLMAP models as ground truth.
* :mod:`~descbal.sfm.evaluate`: reconstructions against ground truth (``descbal eval sfm``).
* :mod:`~descbal.sfm.trainset`: reconstructions into Brown-style training sets (``descbal cache sfm``).

Triangulation, bundle adjustment and mapping are pycolmap's; descbal only hands it features
and measures what comes back. pycolmap is imported when a function needs it.
"""

from descbal.sfm.colmap_db import (
    CAMERA_PARAMS,
    COLMAP_PIXEL_SHIFT,
    CameraOptions,
    ColmapResult,
    colmap_camera_params,
    read_intrinsics,
    to_colmap_keypoints,
    write_colmap_database,
)
from descbal.sfm.evaluate import SfmEvalResult, SfmMetrics, evaluate_reconstruction, evaluate_sfm, plot_top_view
from descbal.sfm.groundtruth import GroundTruth, load_ground_truth, read_colmap_groundtruth, read_strecha
from descbal.sfm.reconstruct import ReconstructConfig, ReconstructResult, load_model, make_pairs, reconstruct
from descbal.sfm.trainset import (
    SfmInput,
    SfmSetConfig,
    SfmSetResult,
    build_sfm_set,
    cache_sfm,
    near_label_pairs,
    resolve_model_dir,
    sfm_inputs,
)

__all__ = [
    "CAMERA_PARAMS",
    "COLMAP_PIXEL_SHIFT",
    "CameraOptions",
    "ColmapResult",
    "GroundTruth",
    "ReconstructConfig",
    "ReconstructResult",
    "SfmEvalResult",
    "SfmInput",
    "SfmMetrics",
    "SfmSetConfig",
    "SfmSetResult",
    "build_sfm_set",
    "cache_sfm",
    "colmap_camera_params",
    "evaluate_reconstruction",
    "evaluate_sfm",
    "load_ground_truth",
    "load_model",
    "make_pairs",
    "near_label_pairs",
    "plot_top_view",
    "read_colmap_groundtruth",
    "read_intrinsics",
    "read_strecha",
    "reconstruct",
    "resolve_model_dir",
    "sfm_inputs",
    "to_colmap_keypoints",
    "write_colmap_database",
]
