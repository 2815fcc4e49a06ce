"""Writing HPatches task files in the official format for new benchmarks.

Follows the official generators (``gen_verif``, ``gen_retrieval`` in the benchmark's
``python/utils/tasks.py``) in structure -- row-aligned positive / intra-negative /
inter-negative files sharing ``(s1, t1, idx1, t2)``; retrieval queries and distractors drawn from
reference patches with intensity standard deviation above 10, de-duplicated and disjoint -- but
draws from a ``numpy.random.Generator`` so that a seed gives the same files everywhere. (The
shipped task files of the real benchmark must be used as they are; this is for new data.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from descbal.fileio import atomic_path, write_text_atomic


def write_splits(tasks_dir: str | Path, splits: Mapping[str, Sequence[str]]) -> Path:
    """Write ``tasks_dir/splits/splits.json`` with ``{name: {"name", "test"}}`` entries."""
    doc = {name: {"name": name, "test": list(seqs)} for name, seqs in splits.items()}
    path = Path(tasks_dir) / "splits" / "splits.json"
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    return path


def _write_rows(path: Path, header: str, columns: Sequence[Sequence]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="ascii", newline="\n") as f:
        f.write(header + "\n")
        for row in zip(*columns, strict=True):
            f.write(",".join(str(v) for v in row) + "\n")


def write_verification_tasks(
    tasks_dir: str | Path, split: str, lengths: Mapping[str, int], num_pairs: int, rng: np.random.Generator
) -> list[Path]:
    """Write ``verif_{pos,neg_intra,neg_inter}_split-<split>.csv`` with ``num_pairs`` rows each.

    Every row draws a sequence, two distinct patch indices and two distinct images from 0..4
    (0 = ref), as the official generator does.
    """
    names = list(lengths)
    s = rng.choice(len(names), num_pairs)
    n = np.array([lengths[names[i]] for i in s])
    i1 = (rng.random(num_pairs) * n).astype(np.int64)
    i2 = (i1 + 1 + (rng.random(num_pairs) * (n - 1)).astype(np.int64)) % n
    t = np.argsort(rng.random((num_pairs, 5)), axis=1)[:, :2]
    s_inter = rng.choice(len(names), num_pairs)
    i_inter = (rng.random(num_pairs) * np.array([lengths[names[i]] for i in s_inter])).astype(np.int64)
    seq = [names[i] for i in s]
    seq_inter = [names[i] for i in s_inter]
    header = "s1,t1,idx1,s2,t2,idx2"
    tasks_dir = Path(tasks_dir)
    out = []
    for kind, cols in (
        ("pos", (seq, t[:, 0], i1, seq, t[:, 1], i1)),
        ("neg_intra", (seq, t[:, 0], i1, seq, t[:, 1], i2)),
        ("neg_inter", (seq, t[:, 0], i1, seq_inter, t[:, 1], i_inter)),
    ):
        path = tasks_dir / f"verif_{kind}_split-{split}.csv"
        _write_rows(path, header, cols)
        out.append(path)
    return out


def write_retrieval_tasks(
    tasks_dir: str | Path,
    split: str,
    ref_patches: Mapping[str, NDArray[np.uint8]],
    num_queries: int,
    num_distractors: int,
    rng: np.random.Generator,
    min_std: float = 10.0,
) -> list[Path]:
    """Write ``retr_{queries,distractors}_split-<split>.csv``.

    Candidates are reference patches whose intensity standard deviation exceeds ``min_std``;
    queries and distractors are disjoint, in random order. Fewer are written when the
    sequences do not hold enough patches.

    Args:
        ref_patches: sequence -> (N, 65, 65) uint8 reference patches.
    """
    cands = []
    for name, patches in ref_patches.items():
        std = patches.reshape(len(patches), -1).astype(np.float64).std(axis=1)
        cands.extend((name, int(i)) for i in np.flatnonzero(std > min_std))
    order = rng.permutation(len(cands))
    q = [cands[i] for i in order[:num_queries]]
    d = [cands[i] for i in order[num_queries : num_queries + num_distractors]]
    tasks_dir = Path(tasks_dir)
    paths = []
    for kind, rows in (("queries", q), ("distractors", d)):
        path = tasks_dir / f"retr_{kind}_split-{split}.csv"
        _write_rows(path, "s,idx", ([r[0] for r in rows], [r[1] for r in rows]))
        paths.append(path)
    return paths
