"""Brown / UBC PhotoTour patch verification: FPR at 95 % recall over a pairs list.

Pairs come from the protocol's ``m50_<n>_<n>_0.txt`` files (7 whitespace-separated columns:
``patchID1 3DpointID1 unused patchID2 3DpointID2 unused unused``; a pair matches when the two
3D point ids are equal) or from a descbal Brown cache (HDF5 dataset ``pairs`` of shape (M, 3) =
(patch_id_1, patch_id_2, is_match)). Per-patch descriptors come from a ``.npy`` (N, D) array or an
HDF5 file with a ``descriptors`` dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import NDArray

from descbal.data.brown import read_pairs_file
from descbal.errors import BadInputError, DataMissingError
from descbal.eval.metrics import Fpr95Definition, fpr95
from descbal.results import JsonResult


@dataclass
class BrownResult(JsonResult):
    """FPR95 of descriptors on a Brown pairs list: numbers of pairs, matching and non-matching
    pairs, the FPR95 definition, ``fpr95`` (a fraction) and, for a model, its display name."""

    OMIT_NONE = ("model",)

    pairs: int
    matches: int
    non_matches: int
    definition: str
    fpr95: float
    model: str | None = None


def read_pairs(path: str | Path) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Pairs as ``(patch_id_1, patch_id_2, is_match)``, each (M,) int64.

    Accepts an ``m50_*.txt`` file or an HDF5 file with a ``pairs`` (M, 3) dataset.
    """
    path = Path(path)
    if not path.is_file():
        raise DataMissingError("pairs file not found", path)
    if h5py.is_hdf5(path):
        with h5py.File(path, "r", locking=False) as h5:
            if "pairs" not in h5:
                raise BadInputError("HDF5 file has no 'pairs' dataset", path)
            pairs = np.asarray(h5["pairs"][...], dtype=np.int64)
        if pairs.ndim != 2 or pairs.shape[1] != 3:
            raise BadInputError(f"'pairs' must have shape (M, 3), got {pairs.shape}", path)
        return pairs[:, 0].copy(), pairs[:, 1].copy(), (pairs[:, 2] != 0).astype(np.int64)
    pairs = read_pairs_file(path)
    if len(pairs) == 0:
        raise BadInputError("empty pairs file", path)
    return pairs[:, 0].copy(), pairs[:, 1].copy(), pairs[:, 2].copy()


def load_patch_descriptors(path: str | Path) -> NDArray[np.float32]:
    """Per-patch descriptors (N, D) float32 from ``.npy`` or HDF5 (dataset ``descriptors``)."""
    path = Path(path)
    if not path.is_file():
        raise DataMissingError("descriptor file not found", path)
    if h5py.is_hdf5(path):
        with h5py.File(path, "r", locking=False) as h5:
            if "descriptors" not in h5:
                raise BadInputError("HDF5 file has no 'descriptors' dataset", path)
            arr = h5["descriptors"][...]
    else:
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInputError(f"neither .npy nor HDF5 ({e})", path) from None
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise BadInputError(f"expected an (N, D) array with D >= 2, got shape {arr.shape}", path)
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        row = int(np.flatnonzero(~np.all(np.isfinite(arr), axis=1))[0])
        raise BadInputError(f"NaN or inf in descriptor {row}", path)
    return arr


def pair_distances(desc: NDArray[np.float32], id1: NDArray[np.int64], id2: NDArray[np.int64]) -> NDArray[np.float32]:
    """HardNet's test distance ``sqrt(sum((a - b)^2))`` in float32. Shape: (M,)."""
    out = np.empty(len(id1), dtype=np.float32)
    step = 1 << 16
    for s in range(0, len(id1), step):
        diff = desc[id1[s : s + step]] - desc[id2[s : s + step]]
        out[s : s + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def evaluate_brown(
    descriptors: NDArray[np.float32],
    id1: NDArray[np.int64],
    id2: NDArray[np.int64],
    labels: NDArray[np.int64],
    definition: Fpr95Definition = "hardnet",
    source: str | Path | None = None,
) -> BrownResult:
    """FPR95 of per-patch descriptors on a pairs list (see :class:`BrownResult`)."""
    n = len(descriptors)
    bad = np.flatnonzero((id1 < 0) | (id1 >= n) | (id2 < 0) | (id2 >= n))
    if len(bad):
        b = int(bad[0])
        raise BadInputError(f"pair {b + 1} refers to patch {max(id1[b], id2[b])}, but there are {n} descriptors",
                            source)
    d = pair_distances(descriptors, id1, id2)
    try:
        value = fpr95(d, labels, definition)
    except ValueError as e:
        raise BadInputError(str(e), source) from None
    return BrownResult(pairs=int(len(labels)), matches=int(labels.sum()), non_matches=int(len(labels) - labels.sum()),
                       definition=definition, fpr95=float(value))
