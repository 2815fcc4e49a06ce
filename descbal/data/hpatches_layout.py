"""The HPatches patch-image layout shared by the data writers and the evaluation readers."""

from __future__ import annotations

#: Image types in the order of the official loader; index 0 is ``ref``.
TYPES: tuple[str, ...] = ("ref",) + tuple(f"{n}{i}" for n in "eht" for i in range(1, 6))
#: Geometric noise levels of the benchmark: easy, hard, tough.
NOISE_LEVELS: tuple[str, ...] = ("e", "h", "t")
