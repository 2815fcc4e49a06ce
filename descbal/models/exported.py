"""Descriptor networks exported by ``descbal export`` (ONNX, TorchScript), loaded and run.

An exported file takes what :mod:`descbal.models` networks take: float32 patches of shape
(N, 1, 32, 32), N dynamic, in *model units*, i.e. grey levels 0..255 multiplied by the
network's ``input_scale`` (1/255 for HyNet, HardNet, SOSNet: values 0..1). The network's own
input normalisation (HardNet's per-patch standardisation, SOSNet's InstanceNorm, HyNet's FRN)
is part of the graph; the ``input_scale`` multiply is not, so a caller scales exactly as it
would for the PyTorch model. Output: (N, D) float32 descriptors.

Every file carries one JSON document under :data:`METADATA_KEY` saying so (ONNX:
``metadata_props``; TorchScript: the extra file ``descbal.json``): ``input`` (name, shape,
dtype, ``input_scale``, value range), ``output`` (name, shape, ``l2_normalised``), ``arch``,
``model``, ``weights_sha256`` of the source weights, ``patch_geometry`` the model was trained
with, ``opset`` (ONNX, as written in the file), ``fp16``, ``descbal_version`` and
``torch_version``. (The parity measured at export is in ``descbal export``'s result, not in
the file.)

:class:`ExportedModel` runs a file: ONNX through onnxruntime (CPU), TorchScript through
``torch.jit.load``; ``descbal extract --model FILE.onnx`` describes with it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from descbal.errors import BadInputError, DataMissingError
from descbal.fileio import sha256_file
from descbal.geometry import PatchGeometry
from descbal.models.resolve import split_name

#: The metadata entry (ONNX ``metadata_props`` key; TorchScript extra file ``descbal.json``).
METADATA_KEY = "descbal"
TORCHSCRIPT_EXTRA = f"{METADATA_KEY}.json"
INPUT_NAME, OUTPUT_NAME = "patches", "descriptors"
ONNX_SUFFIX = ".onnx"


def onnxruntime_module() -> Any:
    """The ``onnxruntime`` module; BadInputError naming the extra to install when it is missing."""
    try:
        import onnxruntime
    except ImportError:
        raise BadInputError("ONNX needs onnxruntime: pip install 'descbal[export]'") from None
    return onnxruntime


def onnx_session(source: str | Path | bytes, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of a file or serialized model; ``threads`` intra-op threads
    (default: torch's thread count, so that timings and parity runs compare like with like)."""
    ort = onnxruntime_module()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3  # errors only
    model = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def is_onnx_spec(spec: object) -> tuple[str | None, Path] | None:
    """``(NAME or None, file)`` when a ``--model`` value names an ONNX file (``FILE.onnx`` or
    ``NAME=FILE.onnx``), else None."""
    if not isinstance(spec, str | Path):
        return None
    name, target = split_name(str(spec))
    path = Path(target)
    return (name, path) if path.suffix.lower() == ONNX_SUFFIX else None


class ExportedModel:
    """An exported descriptor network (see the module docstring).

    Args:
        path: an ``.onnx`` file, or a TorchScript file (a zip archive) written by ``descbal export``.
        threads: onnxruntime intra-op threads (default: torch's thread count).
        fmt: ``onnx`` or ``torchscript`` whatever the file's name (default: ``.onnx`` is ONNX,
            a zip archive TorchScript).
        name: display name (default: the file's stem).

    Attributes:
        format: ``onnx`` or ``torchscript``.
        metadata: the file's :data:`METADATA_KEY` document.
        input_scale: multiplier from grey levels 0..255 to the file's input units.
        geometry: the patch geometry the source model was trained with (None when unknown).
        sha256: hex SHA-256 of the file.

    Raises:
        DataMissingError: the file does not exist.
        BadInputError: not an ONNX / TorchScript file, or one without descbal's metadata.
    """

    def __init__(self, path: str | Path, threads: int | None = None, fmt: str | None = None,
                 name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.stem
        if not self.path.is_file():
            raise DataMissingError("exported model not found", self.path)
        self.sha256 = sha256_file(self.path)
        if fmt == "onnx" or (fmt is None and self.path.suffix.lower() == ONNX_SUFFIX):
            self.format = "onnx"
            try:
                self._session = onnx_session(self.path, threads)
            except BadInputError:
                raise
            except Exception as e:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...)
                raise BadInputError(f"not a model onnxruntime can load ({str(e).splitlines()[0]})", self.path) from None
            text = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        elif zipfile.is_zipfile(self.path):
            self.format = "torchscript"
            extra = {TORCHSCRIPT_EXTRA: ""}
            try:
                self._module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
            except RuntimeError as e:
                raise BadInputError(f"not a TorchScript file ({str(e).splitlines()[0]})", self.path) from None
            text = extra[TORCHSCRIPT_EXTRA] or None
        else:
            raise BadInputError("not an exported model (give an .onnx file or a TorchScript archive)", self.path)
        if not text:
            raise BadInputError(f"no {METADATA_KEY!r} metadata: not written by descbal export", self.path)
        try:
            self.metadata: dict[str, Any] = json.loads(text)
            self.input_scale = float(self.metadata["input"]["input_scale"])
            geometry = self.metadata.get("patch_geometry")
            self.geometry = None if geometry is None else PatchGeometry.from_dict(geometry)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadInputError(f"its {METADATA_KEY!r} metadata is not descbal export's ({type(e).__name__}: {e})",
                                self.path) from None

    def __call__(self, x: torch.Tensor | NDArray[np.float32]) -> NDArray[np.float32]:
        """Descriptors of patches in the file's input units.

        Shape: (N, 1, 32, 32) float32 -> (N, D) float32.
        """
        if self.format == "onnx":
            arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            return self._session.run(None, {INPUT_NAME: np.ascontiguousarray(arr, dtype=np.float32)})[0]
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))
        with torch.inference_mode():
            return self._module(t.cpu().float().contiguous()).numpy()

    def provenance(self) -> dict[str, Any]:
        """What identifies the file in outputs (JSON-ready): the file, its SHA-256 and format,
        and what it was exported from (arch, source weights' SHA-256)."""
        runtime = (f"onnxruntime-{onnxruntime_module().__version__}" if self.format == "onnx"
                   else f"torch-{torch.__version__}")
        return {"model": self.name, "model_kind": "exported", "arch": self.metadata.get("arch"),
                "source": str(self.path), "weights_sha256": self.sha256, "seed": None,
                "export_format": self.format, "runtime": runtime,
                "exported_from": {"model": self.metadata.get("model"), "weights_sha256": self.metadata.get("weights_sha256")}}
