"""Mutual-nearest-neighbour matching of features files into hloc's matches schema.

Descriptors are compared by L2 distance after L2 normalisation (equivalently cosine
similarity, as hloc's ``nearest_neighbor`` matcher and D2-Net's benchmark do). A match
``i -> j`` is kept when ``j`` is ``i``'s nearest neighbour and ``i`` is ``j``'s; with a ratio
``r``, also when ``d(i, j) <= r * d(i, j2)`` for ``i``'s second nearest ``j2`` (Lowe's test).

Matches file (hloc): one group per pair, named ``names_to_pair(name0, name1)`` =
``name0.replace('/', '-') + '/' + name1.replace('/', '-')`` (so each pair is a group
``name0`` holding a subgroup ``name1``), with ``matches0 (N0,) int32`` (index into image 1's
keypoints, -1 when unmatched) and ``matching_scores0 (N0,) float32`` (cosine similarity of the
match, 0 when unmatched). Like hloc, a pair already stored in either order is skipped unless
``overwrite``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from numpy.typing import NDArray

from descbal.devices import resolve_device
from descbal.errors import BadInputError, DataMissingError, list_names
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult


@dataclass
class MatchResult(JsonResult):
    """What :func:`match_features` did: pairs listed, matched now and already in ``out``, the
    mean number of matches of the pairs matched now, wall time (s) and the ratio used.
    ``pairs`` is the pairs file (None when the pairs were given as a list)."""

    features: str
    pairs: str | None
    out: str
    num_pairs: int
    matched: int
    skipped_existing: int
    mean_matches: float
    seconds: float
    ratio: float | None


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's pair key: ``'/'`` in names becomes ``'-'``, names joined by ``separator``."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Image pairs, one ``name0 name1`` per line (blank lines and ``#`` comments skipped).

    Raises:
        DataMissingError: no such file.
        BadInputError: a line without exactly two names.
    """
    path = Path(path)
    if not path.is_file():
        raise DataMissingError("pairs file not found", path)
    pairs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise BadInputError(f"line {i}: expected 'name0 name1', got {line!r}", path)
        pairs.append((parts[0], parts[1]))
    return pairs


@torch.inference_mode()
def mutual_nn(desc0: NDArray[np.floating] | torch.Tensor, desc1: NDArray[np.floating] | torch.Tensor,
              ratio: float | None = None, device: str | torch.device = "cpu") -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Mutual nearest neighbours (optionally with Lowe's ratio test) of L2-normalised descriptors.

    Args:
        desc0, desc1: (N0, D) and (N1, D) descriptors (one per row).
        ratio: keep a match only if its distance is <= ratio x the second-nearest distance.

    Returns:
        ``(matches0 (N0,) int32, -1 when unmatched; scores0 (N0,) float32 cosine similarity,
        0 when unmatched)``.

    Shape: (N0, D), (N1, D) -> (N0,), (N0,).
    """
    a = torch.as_tensor(np.asarray(desc0, np.float32) if not isinstance(desc0, torch.Tensor) else desc0).float()
    b = torch.as_tensor(np.asarray(desc1, np.float32) if not isinstance(desc1, torch.Tensor) else desc1).float()
    n0, n1 = a.shape[0], b.shape[0]
    matches = np.full(n0, -1, np.int32)
    scores = np.zeros(n0, np.float32)
    if n0 == 0 or n1 == 0:
        return matches, scores
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"descriptor dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    a = torch.nn.functional.normalize(a.to(device), dim=1)
    b = torch.nn.functional.normalize(b.to(device), dim=1)
    sim = a @ b.T
    best, nn01 = sim.max(dim=1)
    nn10 = sim.argmax(dim=0)
    keep = nn10[nn01] == torch.arange(n0, device=sim.device)
    if ratio is not None and n1 >= 2:
        top2 = sim.topk(2, dim=1).values
        dist = torch.sqrt(torch.clamp(2.0 - 2.0 * top2, min=0.0))
        keep &= dist[:, 0] <= ratio * dist[:, 1]
    keep_np = keep.cpu().numpy()
    matches[keep_np] = nn01.cpu().numpy()[keep_np].astype(np.int32)
    scores[keep_np] = best.cpu().numpy()[keep_np]
    return matches, scores


def _find_pair(h5: h5py.File, name0: str, name1: str) -> bool:
    return names_to_pair(name0, name1) in h5 or names_to_pair(name1, name0) in h5


def match_features(features: str | Path, pairs: str | Path | list[tuple[str, str]], out: str | Path, *,
                   ratio: float | None = None, overwrite: bool = False, device: str | torch.device = "cpu",
                   progress: Progress | None = None) -> MatchResult:
    """Match every pair of images of an hloc features file into an hloc matches file.

    Every name in the pairs is checked before anything is matched. ``out`` is written through a
    temporary copy renamed into place (see :class:`descbal.extract.writers.AtomicH5`).

    ``progress("pairs", done, total)`` counts the pairs to match.

    Returns:
        A :class:`MatchResult`.

    Raises:
        DataMissingError: the features or pairs file is absent.
        BadInputError: no pairs at all (nothing is written), names of the pairs file that the features file does not hold (all of
            them listed), or an unreadable file.
    """
    from descbal.extract.writers import AtomicH5, h5_feature_names

    t0 = time.perf_counter()
    device = resolve_device(device)
    features = Path(features)
    pair_list = list(pairs) if isinstance(pairs, list) else read_pairs(pairs)
    if not features.is_file():
        raise DataMissingError("features file not found", features)
    if not pair_list:  # an empty matches file would look like a finished run
        raise BadInputError("no image pairs (the file is empty or holds only blank lines and # comments)",
                            None if isinstance(pairs, list) else pairs)
    try:
        feats = h5py.File(features, "r", locking=False)
    except OSError as e:
        raise BadInputError(f"not a readable HDF5 file ({e})", features) from None
    progress = or_no_progress(progress)
    with feats:
        have = set(h5_feature_names(feats))
        wanted = list(dict.fromkeys(n for p in pair_list for n in p))
        missing = [n for n in wanted if n not in have or "descriptors" not in feats[n]]
        if missing:
            raise BadInputError(f"{len(missing)} image name(s) of the pairs file are not in the features file "
                                f"(names must be exact, e.g. {sorted(have)[:1]}):{list_names(missing)}", features)
        out = Path(out)
        fresh = overwrite or not out.is_file()
        tx = AtomicH5(out, fresh=fresh)
        h5 = tx.open()
        cache: dict[str, NDArray[np.float32]] = {}

        def desc(name: str) -> NDArray[np.float32]:
            if name not in cache:
                if len(cache) > 256:
                    cache.clear()
                cache[name] = np.asarray(feats[name]["descriptors"][...], np.float32).T
            return cache[name]

        done = total_matches = 0
        current: str | None = None
        try:
            h5.attrs["descbal_provenance"] = json.dumps({"matcher": "mutual_nn", "ratio": ratio,
                                                        "features": str(features)}, sort_keys=True)
            unique = list(dict.fromkeys(pair_list))
            todo = [p for p in unique if not _find_pair(h5, *p)]
            skipped = len(pair_list) - len(todo)
            progress("pairs", 0, len(todo))
            for i, (n0, n1) in enumerate(todo):
                if _find_pair(h5, n0, n1):  # the same pair in the other order, earlier in this run
                    skipped += 1
                    continue
                m, s = mutual_nn(desc(n0), desc(n1), ratio, device)
                current = names_to_pair(n0, n1)
                g = h5.create_group(current)
                g.create_dataset("matches0", data=m)
                g.create_dataset("matching_scores0", data=s)
                current = None
                done += 1
                total_matches += int((m >= 0).sum())
                progress("pairs", i + 1, len(todo))
        finally:  # keep every complete pair, also on Ctrl-C or an error
            if current is not None and current in h5:
                del h5[current]
            if done == 0 and not fresh:  # nothing new: the file stays as it was (mtime included)
                tx.discard()
            else:
                try:
                    tx.commit()
                except BaseException:
                    tx.discard()
                    raise
    secs = time.perf_counter() - t0
    return MatchResult(features=str(features), pairs=str(pairs) if not isinstance(pairs, list) else None, out=str(out),
                       num_pairs=len(pair_list), matched=done, skipped_existing=skipped,
                       mean_matches=total_matches / done if done else 0.0, seconds=secs, ratio=ratio)

