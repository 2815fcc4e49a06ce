"""Checkpoints: a file alone rebuilds the model.

descbal checkpoints are ``torch.save`` dictionaries holding only tensors and plain values
(``descbal_format``, ``arch``, ``config``, ``input_scale``, ``state_dict`` and optional extra
metadata), always read with ``torch.load(weights_only=True)``: no pickled code is executed.
A trained model's checkpoint also records the patch geometry it was trained with
(``patch_geometry``: :meth:`PatchGeometry.to_dict`, absent when unknown; ``mixed_geometry:
True`` when its training sets disagreed and the first one's is recorded), see
:func:`geometry_entries` and :func:`checkpoint_geometry`.

:func:`load` also reads published weights of other projects and recognises the architecture
from the state-dict keys (:data:`LAYOUTS`): TFeat ``.params`` files, the HardNet, HyNet and
SOSNet releases, kornia's HardNet8, and the Self-TNet authors' checkpoints. They may be wrapped
in ``{"state_dict": ...}`` (or one of :data:`_WRAPPERS`) and carry DataParallel ``module.``
prefixes; the Self-TNet checkpoints also store every HyNet tensor twice (see :func:`_drop_aliases`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

import descbal.models.hardnet  # noqa: F401  (registers hardnet, hardnet8, sosnet)
import descbal.models.hynet  # noqa: F401
import descbal.models.tfeat  # noqa: F401
from descbal.errors import BadInputError, DataMissingError
from descbal.fileio import atomic_path
from descbal.geometry import PatchGeometry
from descbal.models.registry import build_model

FORMAT = 1
# Where releases keep the weights. Self-TNet's checkpoints hold the student network under
# "S_state_dict" (what the authors' evaluation runs) and a teacher under "T_state_dict", which
# is ignored (with --teacher=self it is the same network again).
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
    """The tensors of a published file: inside a wrapper key, without ``module.`` prefixes and
    without Self-TNet's duplicate copies (:func:`_drop_aliases`)."""
    for key in _WRAPPERS:
        if key in obj and isinstance(obj[key], Mapping):
            return _unwrap(obj[key])
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return _drop_aliases(sd)


# Self-TNet's network registers layer1 .. layer7 and also features = Sequential(layer1 .. layer7),
# so its state dict holds each tensor under "layer<i+1>.<rest>" and again under "features.<i>.<rest>".
_ALIAS = re.compile(r"features\.(\d+)\.(.+)")


def _drop_aliases(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` without the ``features.<i>.*`` copies of ``layer<i+1>.*`` tensors.

    Only when every ``features.*`` key is such a copy (HardNet's own ``features.*`` keys stay).
    The copies are the same tensors in the authors' files; a file where they differ is refused
    rather than one of them chosen.

    Raises:
        ValueError: a copy that differs from its ``layer`` original.
    """
    copies = {k: m for k in sd if k.startswith("features.") and (m := _ALIAS.fullmatch(k)) is not None}
    originals = {k: f"layer{int(m.group(1)) + 1}.{m.group(2)}" for k, m in copies.items()}
    if not copies or len(copies) != sum(k.startswith("features.") for k in sd) or any(o not in sd for o in originals.values()):
        return sd
    for k, o in originals.items():
        if sd[k].shape != sd[o].shape or not torch.equal(sd[k], sd[o]):
            raise ValueError(f"the duplicate weights {k} and {o} differ (the Self-TNet layout stores each tensor twice)")
    return {k: v for k, v in sd.items() if k not in copies}


class Layout(NamedTuple):
    """A published state-dict layout: the keys that identify it and the model they build."""

    name: str  #: where such files come from, for messages
    keys: frozenset[str]  #: keys every file of this layout holds
    arch: str  #: the registered architecture
    config: Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]  #: constructor config from the tensors
    check: Callable[[Mapping[str, torch.Tensor]], bool] = lambda sd: True  #: tells apart layouts sharing keys


def _dim(key: str, axis: int = 0) -> Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]:
    return lambda sd: {"dim": int(sd[key].shape[axis])}


#: The layouts :func:`recognise` knows, tried in order.
LAYOUTS: tuple[Layout, ...] = (
    Layout("TFeat release", frozenset({"features.1.weight", "features.4.weight", "descr.0.weight"}), "tfeat",
           lambda sd: {}),
    Layout("HardNet8 (kornia)", frozenset({"features.0.weight", "features.22.weight", "components", "mean"}),
           "hardnet8", _dim("components", 1)),
    Layout("HyNet release / kornia / Self-TNet", frozenset({"layer1.0.weight", "layer1.2.weight", "layer7.1.weight"}),
           "hynet", _dim("layer7.1.weight")),
    Layout("HardNet release / kornia", frozenset({"features.0.weight", "features.19.weight"}), "hardnet",
           _dim("features.19.weight"), lambda sd: sd["features.0.weight"].shape[-1] == 3),
    Layout("SOSNet release / kornia", frozenset({"layers.1.weight", "layers.20.weight"}), "sosnet",
           _dim("layers.20.weight")),
)


def recognise(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """Architecture name and constructor config from a foreign state dict's keys (:data:`LAYOUTS`).

    Raises:
        ValueError: none of the layouts; one line with a sample of the keys and the known layouts.
    """
    keys = set(state_dict)
    for layout in LAYOUTS:
        if layout.keys <= keys and layout.check(state_dict):
            return layout.arch, layout.config(state_dict)
    sample = ", ".join(sorted(keys)[:6]) + (", ..." if len(keys) > 6 else "")
    known = "; ".join(f"{lay.name} ({', '.join(sorted(lay.keys))})" for lay in LAYOUTS)
    raise ValueError(f"unrecognised state-dict layout ({len(keys)} tensors: {sample or 'none'}); known layouts: {known}")


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
        try:
            state = _unwrap(obj)
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
