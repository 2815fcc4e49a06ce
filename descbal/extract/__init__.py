"""Keypoints + descriptors for folders of images: batched patch sampling, describers (networks
on the device, or OpenCV on the keypoints) and feature-file writers (hloc HDF5, npz, COLMAP
text). The detectors are :mod:`descbal.detectors` (shared with the data builders)."""

from descbal.extract.describers import (
    KEYPOINT_DESCRIPTORS,
    ExportedDescriber,
    NetworkDescriber,
    OpenCVDescriber,
    load_describer,
    register_keypoint_descriptor,
)
from descbal.extract.pipeline import ExtractConfig, FeatureExtractor, extract_folder
from descbal.extract.sampling import Pyramid, image_pyramid, sample_affine_patches, sample_patches
from descbal.extract.writers import WRITERS, Features, list_features, open_writer

__all__ = [
    "KEYPOINT_DESCRIPTORS",
    "WRITERS",
    "ExtractConfig",
    "FeatureExtractor",
    "Features",
    "ExportedDescriber",
    "NetworkDescriber",
    "OpenCVDescriber",
    "Pyramid",
    "extract_folder",
    "image_pyramid",
    "list_features",
    "load_describer",
    "open_writer",
    "register_keypoint_descriptor",
    "sample_affine_patches",
    "sample_patches",
]
