"""One way to name a model: every command that takes ``--model`` resolves it here.

A model spec is, in this order of precedence:

1. ``NAME=SPEC``: ``SPEC`` resolved as below, shown as ``NAME`` in tables and JSON (a path that
   exists as written, ``=`` included, is a path and not a name);
2. an existing path: a descbal checkpoint or run folder (kind ``checkpoint``), or published
   weights of TFeat, HardNet, HardNet8, HyNet, SOSNet or Self-TNet (kind ``published``; the
   layouts of :data:`descbal.models.checkpoint.LAYOUTS`), read by
   :func:`descbal.models.checkpoint.load_weights`;
3. a classical descriptor of :data:`descbal.classical.CLASSICAL` (``sift``, ``rootsift``; kind
   ``classical``): commands on patches use its patch form, ``extract`` and ``eval sequences``
   its keypoint form (:data:`descbal.extract.describers.KEYPOINT_DESCRIPTORS`);
4. a registered architecture of :data:`descbal.models.MODELS` (``hynet``, ``hardnet``, ...;
   kind ``architecture``): built untrained with its default config, its weights drawn after
   ``torch.manual_seed(seed)`` (the global torch RNG is left as it was).

Library callers may also pass an ``nn.Module`` (kind ``module``) or a :class:`ResolvedModel`.

Display names (:func:`display_name`) are short: the ``NAME`` given, else a run folder's name, a
weights file's stem (the run folder's name for a run's ``model.pt`` or ``checkpoints/last.pt``),
or the descriptor / architecture name; never a path cut short.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from descbal.classical import CLASSICAL
from descbal.errors import BadInputError, DataMissingError
from descbal.fileio import sha256_file, sha256_hex
from descbal.geometry import PatchGeometry
from descbal.models.checkpoint import load_weights
from descbal.models.registry import MODELS, build_model

ModelKind = Literal["checkpoint", "published", "architecture", "classical", "module"]
#: Weights-file stems that name a run's file rather than the model: the run folder names it.
_RUN_FILE_STEMS = ("model", "last")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".params", ".ckpt", ".bin", ".safetensors")


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec resolved.

    Attributes:
        name: the display name (tables, JSON, plot legends, provenance ``model``).
        kind: checkpoint | published | architecture | classical | module.
        network: the descriptor network ((B, 1, 32, 32) -> (B, D), its ``input_scale`` the
            multiplier for uint8 intensities), in training mode; None for a classical descriptor.
        classical: the classical descriptor's registry name; None for a network.
        source: the weights file read (checkpoint, published), else None.
        weights_sha256: hex SHA-256 of the weights file (checkpoint, published) or of the
            state dict (architecture, :func:`state_dict_sha256`); None otherwise.
        seed: the torch seed of an architecture's weights, else None.
        geometry: the patch geometry a descbal checkpoint's model was trained with (its
            ``patch_geometry``); None for published weights, architectures, classical
            descriptors, modules and checkpoints that record none.
    """

    name: str
    kind: ModelKind
    network: nn.Module | None = None
    classical: str | None = None
    source: Path | None = None
    weights_sha256: str | None = None
    seed: int | None = None
    geometry: PatchGeometry | None = None

    @property
    def arch(self) -> str | None:
        """The network's registered architecture name (None for a classical descriptor)."""
        if self.network is None:
            return None
        return getattr(self.network, "arch", type(self.network).__name__)

    def provenance(self) -> dict[str, Any]:
        """What identifies the model in outputs: ``{"model", "model_kind", "arch", "source",
        "weights_sha256", "seed"}`` (JSON-ready)."""
        return {"model": self.name, "model_kind": self.kind, "arch": self.arch,
                "source": None if self.source is None else str(self.source), "weights_sha256": self.weights_sha256,
                "seed": self.seed}


#: What a model argument of a library function may be.
ModelSpec = str | Path | nn.Module | ResolvedModel


def split_name(spec: str) -> tuple[str | None, str]:
    """``"NAME=SPEC"`` -> ``("NAME", "SPEC")``; anything else (and a path that exists as written)
    -> ``(None, spec)``.

    Raises:
        BadInputError: an empty NAME or SPEC around the ``=``.
    """
    if "=" not in spec or Path(spec).exists():
        return None, spec
    name, target = (part.strip() for part in spec.split("=", 1))
    if not name or not target:
        raise BadInputError(f"model {spec!r}: NAME=SPEC needs a name and a model on both sides of '='")
    return name, target


def display_name(path: str | Path) -> str:
    """The short name of a weights path: a folder's name, a file's stem, or the run folder's name
    for a run's ``model.pt`` / ``checkpoints/last.pt``."""
    path = Path(path)
    if path.is_dir() or path.stem not in _RUN_FILE_STEMS:
        return path.name if path.is_dir() else path.stem
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return run.resolve().name or path.stem


def state_dict_sha256(model: nn.Module) -> str:
    """Hex SHA-256 of a model's state dict: every entry's name, dtype, shape and bytes, by name."""

    def chunks() -> Iterator[bytes]:
        for key, t in sorted(model.state_dict().items()):
            t = t.detach().cpu().contiguous()
            yield f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode()
            yield t.reshape(-1).view(torch.uint8).numpy().tobytes()

    return sha256_hex(chunks())


def accepted_models() -> str:
    """One line saying what a model spec may be (for error messages and help)."""
    return (f"a checkpoint or run folder, published weights (TFeat/HardNet/HyNet/SOSNet), a classical descriptor "
            f"({', '.join(CLASSICAL)}), an architecture, untrained ({', '.join(sorted(MODELS))}), or NAME=one of these")


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or Path(text).suffix.lower() in _WEIGHT_SUFFIXES


def resolve_model(spec: ModelSpec, *, seed: int = 0, name: str | None = None) -> ResolvedModel:
    """Resolve a model spec (see the module docstring).

    Args:
        spec: ``NAME=SPEC``, a path, a classical descriptor or architecture name, an nn.Module
            or an already resolved model.
        seed: torch seed of an architecture's untrained weights.
        name: display name overriding the derived one (and a ``NAME=`` prefix).

    Raises:
        DataMissingError: a path (it has a ``/`` or a weights suffix) that does not exist, or a
            run folder without a model (exit 3).
        BadInputError: an unknown name (the message lists what is accepted), or a file that is
            not usable weights (exit 2).
    """
    if isinstance(spec, ResolvedModel):
        return spec if name is None else dataclasses.replace(spec, name=name)
    if isinstance(spec, nn.Module):
        return ResolvedModel(name or getattr(spec, "arch", type(spec).__name__), "module", network=spec)
    given, target = split_name(str(spec))
    name = name or given
    path = Path(target)
    if path.exists():
        net, file, is_descbal, geometry = load_weights(path)
        try:
            sha = sha256_file(file)
        except OSError as e:
            raise BadInputError(f"cannot read weights ({e})", file) from None
        return ResolvedModel(name or display_name(path), "checkpoint" if is_descbal else "published", network=net,
                             source=file, weights_sha256=sha, geometry=geometry)
    if target in CLASSICAL:
        return ResolvedModel(name or target, "classical", classical=target)
    if target in MODELS:
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is not consumed
            torch.manual_seed(seed)
            net = build_model(target)
        return ResolvedModel(name or target, "architecture", network=net, weights_sha256=state_dict_sha256(net),
                             seed=seed)
    if _looks_like_path(target):
        raise DataMissingError(f"model not found (give {accepted_models()})", path)
    raise BadInputError(f"unknown model {target!r}; give {accepted_models()}")
