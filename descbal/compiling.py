"""``torch.compile`` for descbal's hot paths (the training step, the inference copy), with the
eager fallback when the machine cannot compile.

inductor turns a traced graph into C++ on the CPU and into Triton kernels on CUDA; without a
working C++ compiler (or without Triton on CUDA) it fails at the first call, deep inside torch.
:func:`compile_function` checks first and returns the eager function with a one-line reason
instead, so a run asked to compile still runs, and says which path it took
(:class:`CompilePath`, written into a training run's ``environment.json`` and an extraction's
provenance).

Random ops in compiled code use torch's own generator (inductor's ``fallback_random``): a
dropout mask is then the one the eager op draws from the same seed, so compiled and eager
runs see the same masks and differ only by float rounding.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CompilePath:
    """What a request to compile came to.

    ``requested``: compiling was asked for; ``compiled``: the function is compiled (by
    ``backend``); ``reason``: why it was not, when requested (one line; None otherwise).
    """

    requested: bool
    compiled: bool
    reason: str | None = None
    backend: str = "inductor"

    @property
    def name(self) -> str:
        """The path that runs: ``"inductor"``, ``"eager"`` (not compiled), or for another dynamo
        backend (tests) ``"dynamo-NAME"``."""
        if not self.compiled:
            return "eager"
        return self.backend if self.backend == "inductor" else f"dynamo-{self.backend}"

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "path": self.name, "reason": self.reason}


def compiler_missing(device: torch.device) -> str | None:
    """Why inductor cannot compile for ``device`` here (one line), or None when it can.

    The CPU needs a C++ compiler (``torch._inductor.config.cpp.cxx``, or ``$CXX``) with which
    inductor builds and runs a one-line test function (checked once per process); CUDA needs
    Triton.
    """
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed (inductor needs it on CUDA)"
        return None
    if device.type != "cpu":
        return f"inductor does not compile for {device.type}"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        cxx = get_cpp_compiler()
    except Exception as e:  # torch raises its own InvalidCxxCompiler, or import errors on odd builds
        return f"no C++ compiler found ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if shutil.which(cxx) is None:
        return f"no C++ compiler found ({cxx!r} is not on PATH)"
    return _inductor_probe(cxx)


def _probe(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0 + 1.0


@functools.cache
def _inductor_probe(cxx: str) -> str | None:
    """None when inductor compiles and runs a one-line function with ``cxx``, else why not: a
    compiler can be there and the toolchain still broken (no Python headers, no OpenMP), which
    would otherwise fail deep inside the first training step. Once per process and compiler."""
    try:
        out = torch.compile(_probe, backend="inductor")(torch.arange(4.0))
        if not torch.equal(out, torch.tensor([1.0, 3.0, 5.0, 7.0])):
            return "inductor's test function computed a wrong result"
    except Exception as e:  # whatever the toolchain throws: the run goes on eager and says why
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return f"inductor cannot build with {cxx!r} ({type(e).__name__}: {first})"
    return None


def compile_function(fn: F, device: torch.device, requested: bool = True, *, dynamic: bool | None = None,
                     fullgraph: bool = False, backend: str = "inductor") -> tuple[F, CompilePath]:
    """``torch.compile(fn)`` for ``device``, or ``fn`` itself when not ``requested`` or when the
    machine cannot compile (:func:`compiler_missing`); returns the function to call and the
    :class:`CompilePath` taken.

    ``dynamic``/``fullgraph``: as ``torch.compile`` takes them. ``backend``: ``"inductor"`` (the
    default), or another registered dynamo backend (tests use ``"eager"``, which traces the same
    graphs without generating code). Every graph compiled through here counts in
    :func:`compile_count`.
    """
    if not requested:
        return fn, CompilePath(False, False)
    if backend == "inductor":
        missing = compiler_missing(device)
        if missing is not None:
            return fn, CompilePath(True, False, f"compiling skipped, running eager: {missing}")
    compiled = torch.compile(fn, backend=_counted_backend(backend), dynamic=dynamic, fullgraph=fullgraph)
    return compiled, CompilePath(True, True, backend=backend)  # type: ignore[return-value]


_COMPILES = [0]


def compile_count() -> int:
    """Graphs compiled through :func:`compile_function` in this process so far (a caller
    measures its own as the difference around its calls)."""
    return _COMPILES[0]


@functools.cache
def _counted_backend(name: str) -> Callable[..., Any]:
    """One backend object per name for the whole process: dynamo keeps a function's compiled
    graphs per backend, so a new wrapper per trainer would add entries until its recompile
    limit (8 per function) and then run eager without saying so."""
    if name == "inductor":
        from torch._inductor.compile_fx import compile_fx

        def inner(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
            return compile_fx(gm, example_inputs, config_patches={"fallback_random": True})
    else:
        from torch._dynamo.backends.registry import lookup_backend

        inner = lookup_backend(name)

    def counted(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        _COMPILES[0] += 1
        return inner(gm, example_inputs)

    counted.__name__ = f"descbal_{name}"
    return counted
