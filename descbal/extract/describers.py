"""Descriptors of detected keypoints: a network on resampled patches, or OpenCV directly.

* :class:`NetworkDescriber`: the image's pyramid goes to the device once, every keypoint's
  32x32 patch is sampled there in one batch (:mod:`descbal.extract.sampling`) and the model
  describes the patches in batches.
* :class:`ExportedDescriber`: a file written by ``descbal export`` (``--model FILE.onnx``)
  run by onnxruntime on the CPU, on patches sampled exactly as for :class:`NetworkDescriber`,
  so a deployed file is checked in the pipeline it will run in.
* :class:`OpenCVDescriber`: a classical descriptor (``sift``, ``rootsift``) computed by OpenCV
  on the keypoints themselves, in OpenCV's own scale space (no resampled patches), as a
  reference point for the learned models. The geometry's conventions still say how keypoints
  become OpenCV keypoints (size kind, angle unit and sign, pixel origin, upright); ``mag`` does
  not apply (OpenCV's SIFT window is about 5.3 x the keypoint size in radius).

:func:`load_describer` turns a ``--model`` value (resolved by
:func:`descbal.models.resolve.resolve_model`) into one of them. A new OpenCV descriptor is one
function plus one ``@register_keypoint_descriptor`` line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from descbal.classical import root_normalise
from descbal.compiling import compile_function
from descbal.detectors import Keypoints
from descbal.devices import resolve_device
from descbal.errors import BadInputError
from descbal.extract.sampling import image_pyramid, sample_patches
from descbal.geometry import PatchGeometry, decode_keypoints
from descbal.models.exported import ExportedModel, is_onnx_spec
from descbal.models.inference import inference_copy, prepare_input
from descbal.models.resolve import ModelSpec, ResolvedModel, resolve_model

PATCH_SIZE = 32


class Describer(Protocol):
    """Describes keypoints of a gray image."""

    provenance: dict[str, Any]

    def __call__(self, image: NDArray[np.uint8], kps: Keypoints) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """``(descriptors (M, D) float32, kept (M,) indices into kps)``; M < N only when the
        descriptor drops keypoints (OpenCV may)."""
        ...


@torch.inference_mode()
def keypoint_patches(image: NDArray[np.uint8], kps: Keypoints, geometry: PatchGeometry,
                     device: torch.device) -> torch.Tensor:
    """Every keypoint's 32x32 patch of 0..255 grey levels, sampled on ``device`` from the image's
    pyramid. Shape: (H, W) uint8, N keypoints -> (N, 1, 32, 32) float32."""
    return sample_patches(image_pyramid(image, device), kps.xy, kps.size, kps.angle, geometry, PATCH_SIZE)


class NetworkDescriber:
    """A descriptor network applied to 32x32 patches sampled on the device.

    Args:
        model: a registered descbal model (``input_scale`` says how uint8 intensities are scaled).
        geometry: keypoint-to-patch conventions.
        device: where the pyramid, the sampling and the model run.
        batch_size: patches per forward pass.
        bf16: run the network under bfloat16 autocast (descriptors are returned as float32;
            they differ from float32 inference by about 0.01 in L2). On 2 CPU cores with
            AVX512-BF16 the forward pass is 2x faster for HardNet and 1.8x for HyNet.
        compile: run the inference copy compiled by ``torch.compile`` (inductor;
            :func:`descbal.compiling.compile_function`): the first batch pays the compilation
            (about 14 s for HardNet on 2 CPU cores); descriptors equal eager ones within 1e-5
            in float32 (measured 6e-7) and 0.02 in L2 under ``bf16`` (other roundings). Where
            inductor cannot compile (no C++ compiler on the CPU, no Triton on CUDA) the network
            runs eager and ``compile_path.reason`` says why. Combines with ``bf16``.

    The model runs as an :func:`~descbal.models.inference.inference_copy` (BatchNorm folded,
    in-place activations, channels-last on the CPU); ``model`` itself is not modified. The
    provenance records ``compute_dtype`` and ``compile`` (:meth:`CompilePath.to_dict
    <descbal.compiling.CompilePath.to_dict>`: requested, the path that ran, the reason).
    """

    def __init__(self, model: nn.Module, geometry: PatchGeometry = PatchGeometry(), device: str | torch.device = "cpu",
                 batch_size: int = 1024, provenance: dict[str, Any] | None = None, bf16: bool = False,
                 compile: bool = False) -> None:
        self.device = resolve_device(device)
        self.model = inference_copy(model, self.device)
        # dynamic shapes: an image's last batch is smaller, and keypoint counts vary, so one graph
        # serves every batch of 2 or more patches (dynamo specialises a batch of 1: at most two
        # compilations in all)
        self.forward, self.compile_path = compile_function(self.model, self.device, compile, dynamic=True)
        self.geometry = geometry
        self.batch_size = batch_size
        self.bf16 = bf16
        self.scale = float(getattr(model, "input_scale", 1.0))
        self.provenance = {**(provenance or {"model": getattr(model, "arch", type(model).__name__), "kind": "network"}),
                           "compute_dtype": "bfloat16" if bf16 else "float32", "compile": self.compile_path.to_dict()}

    def patches(self, image: NDArray[np.uint8], kps: Keypoints) -> torch.Tensor:
        """The network's input patches, before ``input_scale``. Shape: -> (N, 1, 32, 32) float32."""
        return keypoint_patches(image, kps, self.geometry, self.device)

    @torch.inference_mode()
    def describe_patches(self, patches: torch.Tensor) -> NDArray[np.float32]:
        """Descriptors of 0..255 patches. Shape: (N, 1, 32, 32) -> (N, D) float32."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = [self.forward(prepare_input(patches[s : s + self.batch_size].to(self.device) * self.scale)).float()
                   for s in range(0, len(patches), self.batch_size)]
        if not out:
            return np.zeros((0, 0), np.float32)
        return torch.cat(out).cpu().numpy()

    def __call__(self, image: NDArray[np.uint8], kps: Keypoints) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        return self.describe_patches(self.patches(image, kps)), np.arange(len(kps), dtype=np.int64)


class ExportedDescriber:
    """A file written by ``descbal export`` applied to 32x32 patches sampled on the device.

    Args:
        model: the exported file (:class:`~descbal.models.exported.ExportedModel`; onnxruntime
            on the CPU for ONNX); patches are multiplied by its ``input_scale`` as for the
            network it came from.
        geometry, device, batch_size: as for :class:`NetworkDescriber` (the device samples the
            patches; the file runs on the CPU).
    """

    def __init__(self, model: ExportedModel, geometry: PatchGeometry = PatchGeometry(),
                 device: str | torch.device = "cpu", batch_size: int = 1024) -> None:
        self.model = model
        self.device = resolve_device(device)
        self.geometry = geometry
        self.batch_size = batch_size
        self.provenance = {**model.provenance(), "kind": "network", "input_scale": model.input_scale,
                           "compute_dtype": "float16" if model.metadata.get("fp16") else "float32"}

    def patches(self, image: NDArray[np.uint8], kps: Keypoints) -> torch.Tensor:
        """The file's input patches, before ``input_scale``. Shape: -> (N, 1, 32, 32) float32."""
        return keypoint_patches(image, kps, self.geometry, self.device)

    @torch.inference_mode()
    def describe_patches(self, patches: torch.Tensor) -> NDArray[np.float32]:
        """Descriptors of 0..255 patches. Shape: (N, 1, 32, 32) -> (N, D) float32."""
        scale = self.model.input_scale
        out = [self.model(patches[s : s + self.batch_size].cpu() * scale) for s in range(0, len(patches), self.batch_size)]
        if not out:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(out)

    def __call__(self, image: NDArray[np.uint8], kps: Keypoints) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        return self.describe_patches(self.patches(image, kps)), np.arange(len(kps), dtype=np.int64)


def describer_model(model: ModelSpec | ExportedModel) -> ResolvedModel | ExportedModel:
    """What a ``--model`` value names for extraction: an exported ONNX file (``FILE.onnx``,
    ``NAME=FILE.onnx``) as an :class:`~descbal.models.exported.ExportedModel`, anything else
    through :func:`~descbal.models.resolve.resolve_model`. Both have ``.geometry``: the patch
    geometry the model was trained with (None when unknown)."""
    if isinstance(model, ExportedModel):
        return model
    onnx_file = is_onnx_spec(model)
    if onnx_file is None:
        return resolve_model(model)
    name, path = onnx_file
    return ExportedModel(path, name=name)


# ---------------------------------------------------------------------------------- OpenCV

KeypointDescriptor = Callable[[NDArray[np.uint8], list], tuple[list, NDArray[np.float32] | None]]
KEYPOINT_DESCRIPTORS: dict[str, KeypointDescriptor] = {}


def register_keypoint_descriptor(name: str) -> Callable[[KeypointDescriptor], KeypointDescriptor]:
    """Decorator adding an OpenCV keypoint descriptor ``(image, cv keypoints) -> (kept keypoints,
    descriptors)`` to :data:`KEYPOINT_DESCRIPTORS`."""

    def deco(fn: KeypointDescriptor) -> KeypointDescriptor:
        KEYPOINT_DESCRIPTORS[name] = fn
        return fn

    return deco


@register_keypoint_descriptor("sift")
def sift_keypoint_descriptor(image: NDArray[np.uint8], kps: list) -> tuple[list, NDArray[np.float32] | None]:
    """OpenCV SIFT computed at the given OpenCV keypoints (entries up to 255, L2 norm about 512);
    :func:`descbal.classical.sift_patch_descriptor` is SIFT at the centre of ready patches."""
    return cv2.SIFT_create().compute(image, kps)


@register_keypoint_descriptor("rootsift")
def rootsift_keypoint_descriptor(image: NDArray[np.uint8], kps: list) -> tuple[list, NDArray[np.float32] | None]:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalised SIFT, square-rooted (unit L2)."""
    kept, d = sift_keypoint_descriptor(image, kps)
    if d is None:
        return kept, d
    return kept, root_normalise(d)


def opencv_keypoints(kps: Keypoints, geometry: PatchGeometry) -> list:
    """OpenCV keypoints for ``kps`` read under ``geometry``: diameter sizes, OpenCV angles in
    degrees (0 when upright), pixel centres at integers; ``class_id`` is the index in ``kps`` and
    ``octave`` is kept from the detector when it was an OpenCV one
    (:func:`descbal.geometry.decode_keypoints` reads the conventions)."""
    f = decode_keypoints(kps.xy, kps.size, kps.angle, geometry)
    out = []
    for i in range(len(kps)):
        octave = kps.cv[i].octave if kps.cv else 0
        out.append(cv2.KeyPoint(float(f.xy[i, 0]), float(f.xy[i, 1]), float(f.diameter[i]), float(f.angle[i]),
                                float(kps.response[i]), int(octave), i))
    return out


class OpenCVDescriber:
    """A registered OpenCV descriptor computed on the keypoints (see the module docstring)."""

    def __init__(self, name: str, geometry: PatchGeometry = PatchGeometry()) -> None:
        if name not in KEYPOINT_DESCRIPTORS:
            raise ValueError(f"unknown OpenCV descriptor {name!r}; choose from {', '.join(KEYPOINT_DESCRIPTORS)}")
        self.name = name
        self.fn = KEYPOINT_DESCRIPTORS[name]
        self.geometry = geometry
        self.provenance = {"model": name, "kind": "opencv", "weights_sha256": f"opencv-{cv2.__version__}"}

    def __call__(self, image: NDArray[np.uint8], kps: Keypoints) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        if len(kps) == 0:
            return np.zeros((0, 128), np.float32), np.zeros(0, np.int64)
        kept, desc = self.fn(image, opencv_keypoints(kps, self.geometry))
        if desc is None or not kept:
            return np.zeros((0, 128), np.float32), np.zeros(0, np.int64)
        idx = np.array([k.class_id for k in kept], dtype=np.int64)
        return np.asarray(desc, dtype=np.float32), idx


def load_describer(model: ModelSpec | ExportedModel, geometry: PatchGeometry = PatchGeometry(),
                   device: str | torch.device = "cpu", batch_size: int = 1024,
                   bf16: bool = False, compile: bool = False) -> NetworkDescriber | ExportedDescriber | OpenCVDescriber:
    """A describer from a ``--model`` value (:func:`describer_model`: an exported ``.onnx``
    file, else :func:`descbal.models.resolve.resolve_model`: a checkpoint, run folder or
    published weights, an architecture name, a classical descriptor, ``NAME=`` any of these,
    an nn.Module or a resolved model).

    The provenance records the display name (``model``), ``kind`` (``network`` or ``opencv``),
    ``model_kind``, the architecture, the weights file (``source``) and its SHA-256. ``bf16``
    and ``compile`` apply to networks (see :class:`NetworkDescriber`).

    Raises:
        DataMissingError: a model path that does not exist.
        BadInputError: an unknown name, a file that is not usable weights, a classical
            descriptor without a keypoint form, or ``bf16`` or ``compile`` with an OpenCV
            descriptor or an exported file.
    """
    resolved = describer_model(model)
    network_only = "--bf16" if bf16 else "--compile" if compile else None  # the first option that needs a network
    if isinstance(resolved, ExportedModel):
        if network_only is not None:
            raise BadInputError(f"{network_only} applies to PyTorch networks, not to an exported file", resolved.path)
        return ExportedDescriber(resolved, geometry, device, batch_size)
    if resolved.classical is not None:
        if network_only is not None:
            raise BadInputError(f"{network_only} applies to networks, not to the OpenCV descriptor {resolved.classical!r}")
        if resolved.classical not in KEYPOINT_DESCRIPTORS:
            raise BadInputError(f"classical descriptor {resolved.classical!r} has no keypoint form; choose from "
                                f"{', '.join(KEYPOINT_DESCRIPTORS)}")
        describer = OpenCVDescriber(resolved.classical, geometry)
        describer.provenance = {**describer.provenance, "model": resolved.name, "model_kind": resolved.kind}
        return describer
    assert resolved.network is not None
    net = resolved.network
    prov = {**resolved.provenance(), "kind": "network", "input_scale": float(getattr(net, "input_scale", 1.0))}
    return NetworkDescriber(net, geometry, device, batch_size, prov, bf16, compile)
