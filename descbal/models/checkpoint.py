"""Checkpoints: a file alone rebuilds the model.

descbal checkpoints are ``torch.save`` dictionaries holding only tensors and plain values
(``descbal_format``, ``arch``, ``config``, ``input_scale``, ``state_dict`` and optional extra
metadata), always read with ``torch.load(weights_only=True)``: no pickled code is executed.
A trained model's checkpoint also records the patch geometry it was trained with
(``patch_geometry``: :meth:`PatchGeometry.to_dict`, absent when unknown; ``mixed_geometry:
True`` when its training sets disagreed and the first one's is recorded), see
:func:`geometry_entries` and :func:`checkpoint_geometry`.

:func:`load` also reads published weights of other projects and recognises the architecture
from the state-dict keys: TFeat ``.params`` files, and the key layouts of the HardNet, HyNet and
SOSNet releases (optionally wrapped in ``{"state_dict": ...}`` and with DataParallel ``module.``
prefixes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

import descbal.models.hardnet  # noqa: F401  (registers hardnet, sosnet)
import descbal.models.hynet  # noqa: F401
import descbal.models.tfeat  # noqa: F401
from descbal.errors import BadInputError, DataMissingError
from descbal.fileio import atomic_path
from descbal.geometry import PatchGeometry
from descbal.models.registry import build_model

FORMAT = 1
_WRAPPERS = ("state_dict", "model_state_dict", "model", "S_state_dict", "net")


#: The checkpoint key of the training patches' geometry, and of the flag saying their sets disagreed.
GEOMETRY_KEY, MIXED_GEOMETRY_KEY = "patch_geometry", "mixed_geometry"


def geometry_entries(geometry: PatchGeometry | None, mixed: bool = False) -> dict[str, Any]:
    """The checkpoint entries recording a training geometry: none when it is unknown."""
    if geometry is None:
        return {}
    return {GEOMETRY_KEY: geometry.to_dict(), **({MIXED_GEOMETRY_KEY: True} if mixed else {})}


def checkpoint_geometry(doc: Mapping[str, Any], path: str | Path | None = None) -> PatchGeometry | None:
    """The training geometry a checkpoint dictionary records (None: none, as in checkpoints
    written before descbal recorded it).

    Raises:
        BadInputError: an unreadable ``patch_geometry`` entry.
    """
    raw = doc.get(GEOMETRY_KEY)
    if raw is None:
        return None
    try:
        return PatchGeometry.from_dict(dict(raw))
    except (ValueError, TypeError) as e:
        raise BadInputError(f"unreadable {GEOMETRY_KEY!r} entry ({e})", path) from None


def save_checkpoint(path: str | Path, model: nn.Module, **extra: Any) -> None:
    """Write ``model`` (a registered architecture) and ``extra`` metadata atomically (a trained
    model's geometry: ``**geometry_entries(geometry)``)."""
    doc = {
        "descbal_format": FORMAT,
        "arch": model.arch,  # type: ignore[attr-defined]
        "config": dict(model.config),  # type: ignore[attr-defined]
        "input_scale": float(model.input_scale),  # type: ignore[attr-defined]
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(doc, tmp)


def resolve_path(path: str | Path) -> Path:
    """A model file, or a run folder's ``model.pt`` (else its ``checkpoints/last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for cand in (path / "model.pt", path / "checkpoints" / "last.pt"):
            if cand.is_file():
                return cand
        raise DataMissingError("run folder holds neither model.pt nor checkpoints/last.pt", path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dictionary, read safely (``weights_only=True``)."""
    path = resolve_path(path)
    if not path.is_file():
        raise DataMissingError("model file not found", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or damaged files
        raise BadInputError(_load_failure(e), path) from None
    if not isinstance(obj, Mapping):
        raise BadInputError(f"expected a state dict or checkpoint dictionary, got {type(obj).__name__}", path)
    return dict(obj)


# the pickled global that torch's weights-only unpickler refused, as its messages name it
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _load_failure(e: Exception) -> str:
    """One line for a file that ``torch.load(weights_only=True)`` refused.

    torch's own message is a paragraph about the ``weights_only`` default; what the user needs is
    whether the file is no checkpoint at all, or one holding pickled Python objects (which are
    never unpickled here: that would run their code)."""
    refused = _REFUSED_GLOBAL.search(str(e))
    if refused is not None:
        return (f"not a weights file: it holds pickled Python objects ({refused.group(1)}), which descbal never "
                "unpickles; save model.state_dict() instead")
    return "not a PyTorch checkpoint (or not a weights file)"


def _unwrap(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    for key in _WRAPPERS:
        if key in obj and isinstance(obj[key], Mapping):
            return _unwrap(obj[key])
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def recognise(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """Architecture name and constructor config from a foreign state dict's keys.

    Raises:
        ValueError: the layout is none of TFeat, HardNet, HyNet, SOSNet.
    """
    keys = set(state_dict)
    if {"descr.0.weight", "features.1.weight", "features.4.weight"} <= keys:
        return "tfeat", {}
    if {"layer1.0.weight", "layer1.2.weight", "layer7.1.weight"} <= keys:
        return "hynet", {"dim": int(state_dict["layer7.1.weight"].shape[0])}
    if {"features.0.weight", "features.19.weight"} <= keys and state_dict["features.0.weight"].shape[-1] == 3:
        return "hardnet", {"dim": int(state_dict["features.19.weight"].shape[0])}
    if {"layers.1.weight", "layers.20.weight"} <= keys:
        return "sosnet", {"dim": int(state_dict["layers.20.weight"].shape[0])}
    sample = ", ".join(sorted(keys)[:4])
    raise ValueError(f"unrecognised state-dict layout (keys {sample}, ...)")


def load(path: str | Path) -> nn.Module:
    """Rebuild a model from a descbal checkpoint or run folder, or a published state dict.

    The model comes back in training mode (call ``.eval()`` to describe patches); its
    ``input_scale`` attribute is the multiplier for uint8 intensities. To name a model from the
    command line (paths, classical descriptors, architectures) use
    :func:`descbal.models.resolve.resolve_model`.
    """
    return load_weights(path)[0]


class LoadedWeights(NamedTuple):
    """What :func:`load_weights` read: the model, the file (:func:`resolve_path`), whether it is
    a descbal checkpoint (False: published weights recognised by their keys) and the patch
    geometry the checkpoint records (None: published weights, or none recorded)."""

    model: nn.Module
    file: Path
    is_descbal: bool
    geometry: PatchGeometry | None


def load_weights(path: str | Path) -> LoadedWeights:
    """:func:`load`, also returning the file read, its kind and its training geometry
    (:class:`LoadedWeights`)."""
    file = resolve_path(path)
    obj = read_checkpoint(file)
    is_descbal = obj.get("descbal_format") is not None
    if is_descbal:
        if obj["descbal_format"] > FORMAT:
            raise BadInputError(f"checkpoint format {obj['descbal_format']} is newer than this descbal", path)
        try:
            model = build_model(str(obj["arch"]), **dict(obj.get("config", {})))
        except (ValueError, TypeError) as e:
            raise BadInputError(str(e), path) from None
        state = obj["state_dict"]
        scale = obj.get("input_scale")
    else:
        state = _unwrap(obj)
        try:
            arch, config = recognise(state)
        except ValueError as e:
            raise BadInputError(str(e), path) from None
        model = build_model(arch, **config)
        scale = None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        first = str(e).split("\n")[1].strip() if "\n" in str(e) else str(e)
        raise BadInputError(f"weights do not fit {model.arch}: {first[:200]}", path) from None
    # BatchNorm's num_batches_tracked is absent from old releases; anything else is an error.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise BadInputError(f"weights do not fit {model.arch}: missing {missing[:3]}, unexpected {unexpected[:3]}", path)
    if scale is not None:
        model.input_scale = float(scale)  # type: ignore[assignment]
    return LoadedWeights(model, file, is_descbal, checkpoint_geometry(obj, file) if is_descbal else None)
