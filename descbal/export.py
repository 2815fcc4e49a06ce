"""``descbal export``: a descriptor network as an ONNX or TorchScript file, with verified parity.

What is exported is the model's :func:`~descbal.models.inference.inference_copy` (eval mode,
BatchNorm folded into the convolutions) in float32, or in float16 with float32 input and output
(``fp16``, ONNX only). The file's inputs and outputs, and the JSON metadata it carries, are
described in :mod:`descbal.models.exported`: (N, 1, 32, 32) float32 patches in model units
(grey levels 0..255 x the model's ``input_scale``; the network's own normalisation is in the
graph), dynamic N, -> (N, D) float32 descriptors.

Parity: before the file is renamed into place, the written file itself (onnxruntime on the CPU,
``torch.jit.load``) describes :data:`NUM_RANDOM` random uint8 patches and, if given, the patches
of an HPatches patch-column image, and its descriptors are compared with
:func:`descbal.models.describe.describe` on the same patches. A maximum absolute difference over
the tolerance (:data:`FP32_TOLERANCE`, :data:`FP16_TOLERANCE`) writes nothing and raises a
:class:`~descbal.errors.DescbalError` (exit 1) stating it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from descbal.errors import BadInputError, DataMissingError, DescbalError
from descbal.fileio import atomic_path
from descbal.models.describe import describe, patch_tensor, resize_linear_u8
from descbal.models.exported import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, TORCHSCRIPT_EXTRA, ExportedModel
from descbal.models.inference import inference_copy
from descbal.models.resolve import ModelSpec, ResolvedModel, resolve_model
from descbal.results import JsonResult

#: Max abs descriptor difference allowed for a float32 file (descriptors have unit norm).
FP32_TOLERANCE = 1e-5
#: ... and for ``fp16`` (float16 arithmetic from the input on; measured with the low-contrast
#: parity patches: HyNet 6e-4, SOSNet 2e-4, HardNet 1.1e-2 (its standardisation of a patch of
#: +-8 grey levels in float16); on HPatches patches 0.9e-3, 0.2e-3, 1.2e-3).
FP16_TOLERANCE = 2e-2
#: The default ONNX opset: torch 2.13's exporter writes 18 and later; onnxruntime 1.20+ runs 20.
DEFAULT_OPSET = 20
MIN_OPSET = 18
#: Random patches of the parity check.
NUM_RANDOM = 1000
#: Low-contrast patches at the start of the random parity set (:func:`_check_sets`).
N_SPECIAL = 3
PATCH = 32


@dataclass
class ExportResult(JsonResult):
    """What :func:`export_model` wrote: the file, its format, the model, the descriptor width,
    the opset (ONNX), the parity measured (``parity``: per patch set ``{"patches", "max_abs"}``),
    the largest difference, the tolerance, the metadata stored in the file and the wall time (s)."""

    out: str
    format: str
    model: str
    arch: str | None
    dim: int
    opset: int | None
    fp16: bool
    max_abs_difference: float
    tolerance: float
    parity: dict[str, dict[str, float]]
    bytes: int
    seconds: float
    metadata: dict[str, Any]


class _Float16(nn.Module):
    """A network run in float16 with float32 input and output (ONNX ``fp16``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.half()).float()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' warnings and log lines (deprecations, missing torchvision ops)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _write_onnx(net: nn.Module, path: Path, metadata: dict[str, Any], opset: int | None, fp16: bool) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it, and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError:
        raise BadInputError("ONNX export needs onnx and onnxscript: pip install 'descbal[export]'") from None
    module = _Float16(net) if fp16 else net
    example = torch.zeros(2, 1, PATCH, PATCH)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(module, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                                    dynamo=True, verbose=False)
    proto = program.model_proto
    # the opset the file really has (the exporter may convert versions, with a warning only)
    written = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:
        raise DescbalError(f"the exporter wrote opset {written}, not the {opset} asked for; try another --opset")
    metadata["opset"] = written
    proto.producer_name, proto.producer_version = "descbal", metadata["descbal_version"]
    proto.doc_string = _summary(metadata)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    path.write_bytes(proto.SerializeToString())


def _write_torchscript(net: nn.Module, path: Path, metadata: dict[str, Any], opset: int | None, fp16: bool) -> None:
    example = torch.zeros(2, 1, PATCH, PATCH)
    with _quiet_exporter(), torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)  # no data-dependent control flow in the networks
    torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata, sort_keys=True)})


#: format -> writer ``(inference copy, path, metadata, opset, fp16)``.
EXPORTERS: dict[str, Callable[[nn.Module, Path, dict[str, Any], int | None, bool], None]] = {
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
}


def _summary(meta: dict[str, Any]) -> str:
    i, o = meta["input"], meta["output"]
    return (f"descbal {meta['arch']} descriptor: {i['name']} float32 (N, 1, 32, 32) = grey levels 0..255 x "
            f"{i['input_scale']:.10g} -> {o['name']} float32 (N, {o['shape'][1]})"
            f"{', L2-normalised' if o['l2_normalised'] else ''}")


def _check_options(fmt: str, fp16: bool, opset: int | None) -> int | None:
    """The opset to write (None for TorchScript); BadInputError for a bad combination."""
    if fmt not in EXPORTERS:
        raise BadInputError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORTERS)}")
    if fmt != "onnx":
        if fp16:
            raise BadInputError("--fp16 applies to ONNX only")
        if opset is not None:
            raise BadInputError("--opset applies to ONNX only")
        return None
    opset = DEFAULT_OPSET if opset is None else opset
    if opset < MIN_OPSET:
        raise BadInputError(f"--opset {opset}: torch's ONNX exporter writes opset {MIN_OPSET} or later")
    return opset


def _network(resolved: ResolvedModel) -> nn.Module:
    if resolved.network is None:
        raise BadInputError(f"{resolved.name!r} is a classical descriptor computed by OpenCV, not a network; "
                            f"only descriptor networks export")
    return resolved.network


def _check_sets(num_random: int, seed: int, check_patches: Path | None) -> dict[str, NDArray[np.uint8]]:
    """The parity patch sets: ``random`` (N, 32, 32) uint8 and, if given, ``check_patches``.

    The random set starts with patches uniform noise never gives: low-contrast ones (128 +- 2,
    4, 8 grey levels), where a per-patch standardisation's epsilon matters. Exactly flat patches
    are left out: their descriptor is the normalisation of rounding residue (an InstanceNorm of
    a constant) and differs between any two runtimes.
    """
    rng = np.random.default_rng(seed)
    random = rng.integers(0, 256, (num_random, PATCH, PATCH), dtype=np.uint8)
    special = [(128 + rng.integers(-k, k + 1, (PATCH, PATCH))).astype(np.uint8) for k in (2, 4, 8)]
    assert len(special) == N_SPECIAL
    for i, patch in enumerate(special[: num_random // 2]):
        random[i] = patch
    sets = {"random": random}
    if check_patches is not None:
        from descbal.data.hpatches_data import read_patch_column

        if not check_patches.is_file():
            raise DataMissingError("patch file not found", check_patches)
        sets["check_patches"] = resize_linear_u8(read_patch_column(check_patches))
    return sets


def max_abs_difference(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    """``max |a - b|`` over all entries (0 for empty arrays); inf when the shapes differ."""
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0.0))


def export_model(model: ModelSpec, out: str | Path, fmt: str = "onnx", *, fp16: bool = False, opset: int | None = None,
                 overwrite: bool = False, check_patches: str | Path | None = None, seed: int = 0,
                 num_random: int = NUM_RANDOM, tolerance: float | None = None) -> ExportResult:
    """Export a descriptor network to ``out`` and verify the written file (module docstring).

    Args:
        model: any model spec (:func:`descbal.models.resolve_model`) naming a network.
        out: the file to write (``.onnx`` for ONNX is the convention; any name is accepted).
        fmt: ``onnx`` or ``torchscript`` (:data:`EXPORTERS`).
        fp16: ONNX only: float16 weights and arithmetic, float32 input and output.
        opset: ONNX opset (default :data:`DEFAULT_OPSET`; at least :data:`MIN_OPSET`).
        overwrite: replace an existing ``out``.
        check_patches: an HPatches patch-column PNG (65 pixels wide) whose patches, resized to
            32x32 as :func:`~descbal.models.describe.describe` does, join the parity check.
        seed: seed of the random parity patches and of an architecture's untrained weights.
        num_random: random parity patches.
        tolerance: max abs difference allowed (default :data:`FP32_TOLERANCE`, or
            :data:`FP16_TOLERANCE` with ``fp16``).

    Returns:
        An :class:`ExportResult`.

    Raises:
        DataMissingError: the model or ``check_patches`` path does not exist (exit 3).
        BadInputError: a classical descriptor, ``out`` exists without ``overwrite``, ``fp16`` /
            ``opset`` with TorchScript, an opset below :data:`MIN_OPSET`, the export packages
            missing (exit 2).
        DescbalError: the written file differs from descbal's descriptors by more than the
            tolerance; nothing is written (exit 1).
    """
    from descbal import __version__

    t0 = time.perf_counter()
    out = Path(out)
    opset = _check_options(fmt, fp16, opset)
    tol = tolerance if tolerance is not None else (FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
    if out.is_dir():
        raise BadInputError("is a folder; --out names the file to write", out)
    if out.exists() and not overwrite:
        raise BadInputError("exists; pass --overwrite to replace it", out)
    resolved = resolve_model(model, seed=seed)
    net = inference_copy(_network(resolved), "cpu")
    scale = float(getattr(net, "input_scale", 1.0))
    sets = _check_sets(num_random, seed, None if check_patches is None else Path(check_patches))
    reference = {name: describe(net, patches) for name, patches in sets.items()}
    ref = reference["random"]
    dim = int(ref.shape[1])
    plain = ref[min(N_SPECIAL, len(ref) // 2):]  # judged on the noise patches
    l2 = bool(len(plain)) and bool(np.allclose(np.linalg.norm(plain, axis=1), 1.0, atol=1e-4))
    metadata = {
        "format": fmt,
        "input": {"name": INPUT_NAME, "shape": ["N", 1, PATCH, PATCH], "dtype": "float32", "input_scale": scale,
                  "range": [0.0, 255.0 * scale],
                  "units": "grey levels 0..255 times input_scale (the network's own normalisation is in the graph)"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", dim], "dtype": "float32", "l2_normalised": l2},
        "arch": resolved.arch, "model": resolved.name, "model_kind": resolved.kind,
        "weights_sha256": resolved.weights_sha256,
        "patch_geometry": None if resolved.geometry is None else resolved.geometry.to_dict(),
        "opset": opset, "fp16": fp16, "batchnorm_folded": True,
        "descbal_version": __version__, "torch_version": torch.__version__,
    }
    parity: dict[str, dict[str, float]] = {}
    with atomic_path(out) as tmp:  # a failure below removes the temporary file: nothing is written
        try:
            EXPORTERS[fmt](net, tmp, metadata, opset, fp16)
        except DescbalError:
            raise
        except Exception as e:  # the exporters' own errors: one line, exit 1
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise DescbalError(f"{fmt} export failed: {type(e).__name__}: {first}", out) from None
        try:
            exported = ExportedModel(tmp, fmt=fmt)
        except BadInputError as e:
            raise DescbalError(f"the written {fmt} file does not load back: {str(e).split(': ', 1)[-1]}; nothing "
                               "written", out) from None
        for name, patches in sets.items():
            got = exported(patch_tensor(patches, scale))
            parity[name] = {"patches": len(patches), "max_abs": max_abs_difference(got, reference[name])}
        worst = max(p["max_abs"] for p in parity.values())
        if not worst <= tol:  # (NaN fails too)
            shown = ", ".join(f"{k} {v['max_abs']:.3g}" for k, v in parity.items())
            raise DescbalError(f"parity check failed: max abs difference {worst:.3g} > tolerance {tol:g} ({shown}); "
                               f"nothing written", out)
        size = tmp.stat().st_size
    return ExportResult(out=str(out), format=fmt, model=resolved.name, arch=resolved.arch, dim=dim, opset=opset,
                        fp16=fp16, max_abs_difference=worst, tolerance=tol, parity=parity, bytes=size,
                        seconds=time.perf_counter() - t0, metadata=metadata)
