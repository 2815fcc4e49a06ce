"""Synthetic HPatches cases in the official on-disk layout, for tests.

``make_hpatches_case`` writes a descriptor tree (``descriptors/<seq>/<type>.csv`` or ``.npy``)
and a task folder (``tasks/splits/splits.json``, the three row-aligned verification files and
the two retrieval files of split ``a``), with descriptors that are correlated like real ones
(target images are the reference plus noise that grows with the image number and from easy to
hard to tough), and optionally with many exact distance ties.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TYPES = ["ref"] + [f"{level}{k}" for level in "eht" for k in range(1, 6)]
LEVEL_SIGMA = {"e": 0.25, "h": 0.5, "t": 0.8}
SPLIT = "a"


@dataclass(frozen=True)
class HPatchesCase:
    """Paths of a generated case."""

    root: Path
    descriptors_dir: Path
    tasks_dir: Path
    split: str
    sequences: list[str]
    files: dict[str, Path] = field(default_factory=dict)


def _type_row(level: str, k: int) -> int:
    return TYPES.index(f"{level}{k}")


def make_hpatches_case(
    root: Path,
    seed: int,
    sequences: dict[str, int],
    dim: int,
    n_pairs: int,
    n_queries: int,
    quantize: float | None = None,
    fmt: str = "csv",
    duplicates: bool = False,
    copies: int = 0,
    n_distractors: int | None = None,
) -> HPatchesCase:
    """Write one synthetic case under ``root``.

    Args:
        root: output folder (created).
        seed: RNG seed; the same arguments give the same files.
        sequences: ``{name: number of patches}``; names should start with ``i_`` or ``v_``.
            All of them form the test set of split ``a``.
        dim: descriptor dimension (>= 2).
        n_pairs: rows of each verification file before duplicates are added.
        n_queries: retrieval queries (before duplicates).
        quantize: if given, descriptors are rounded to multiples of it, so that exact distance
            ties are frequent.
        fmt: ``csv`` (``np.savetxt`` ``%10.5f``, comma) or ``npy``.
        duplicates: repeat some task rows: positive rows whose ``(s1, t1, idx1, t2)`` repeat an
            earlier row (as in the shipped files), whole rows repeated in all three verification
            files, and repeated query and distractor rows.
        copies: number of deliberate exact coincidences of each kind: whole patches copied to
            another sequence (with inter-negative rows pointing at them, so a negative distance
            equals a positive one), retrieval distractors set equal to a positive or to the
            query, positives set equal to the query, and duplicated target rows for matching.
        n_distractors: retrieval distractors (default: every reference patch not a query).

    Returns:
        The paths of the case.
    """
    if fmt not in ("csv", "npy"):
        raise ValueError(fmt)
    rng = np.random.default_rng(seed)
    root = Path(root)
    names = list(sequences)
    desc: dict[str, np.ndarray] = {}
    for s in names:
        n = sequences[s]
        arr = np.empty((16, n, dim), dtype=np.float64)
        arr[0] = rng.normal(0.0, 1.0, (n, dim))
        for level in "eht":
            for k in range(1, 6):
                sigma = LEVEL_SIGMA[level] * (1.0 + 0.15 * (k - 1))
                arr[_type_row(level, k)] = arr[0] + sigma * rng.normal(0.0, 1.0, (n, dim))
        if quantize is not None:
            arr = np.round(arr / quantize) * quantize
        desc[s] = arr

    # Whole patches copied to another sequence (all 16 types).
    copied: list[tuple[str, int, str, int]] = []
    if len(names) > 1:
        for _ in range(copies):
            s, s2 = rng.choice(names, 2, replace=False)
            i, j = int(rng.integers(sequences[s])), int(rng.integers(sequences[s2]))
            desc[s2][:, j] = desc[s][:, i]
            copied.append((str(s), i, str(s2), j))

    # ---------------------------------------------------------------- verification files
    base = []  # (s1, t1, idx1, t2)
    for _ in range(n_pairs):
        s1 = str(rng.choice(names))
        t1, t2 = (int(v) for v in rng.choice(5, 2, replace=False))
        if rng.random() < 0.06:  # image 5 is legal in the files even if the generator never drew it
            if rng.random() < 0.5:
                t1 = 5
            else:
                t2 = 5
        base.append((s1, t1, int(rng.integers(sequences[s1])), t2))
    if duplicates and n_pairs > 1:
        # positives that repeat an earlier (s1, t1, idx1, t2): same pos row, fresh negatives
        for r in rng.choice(np.arange(1, n_pairs), max(1, n_pairs // 10), replace=False):
            base[r] = base[int(rng.integers(r))]
    pos, intra, inter = [], [], []
    for r, (s1, t1, i1, t2) in enumerate(base):
        n1 = sequences[s1]
        pos.append((s1, t1, i1, s1, t2, i1))
        intra.append((s1, t1, i1, s1, t2, (i1 + int(rng.integers(1, n1))) % n1))
        if copied and r % 7 == 3:
            # an inter-negative that is an exact copy of the positive's second patch
            cs, ci, cs2, cj = copied[int(rng.integers(len(copied)))]
            pos[-1] = (cs, t1, ci, cs, t2, ci)
            intra[-1] = (cs, t1, ci, cs, t2, (ci + 1) % sequences[cs])
            inter.append((cs, t1, ci, cs2, t2, cj))
        else:
            s2 = str(rng.choice(names))  # may equal s1, as in the official generator
            inter.append((s1, t1, i1, s2, t2, int(rng.integers(sequences[s2]))))
    if duplicates and n_pairs > 1:
        # whole rows repeated in all three files, inserted at random places
        for _ in range(max(1, n_pairs // 20)):
            src = int(rng.integers(len(pos)))
            dst = int(rng.integers(len(pos) + 1))
            for rows in (pos, intra, inter):
                rows.insert(dst, rows[src])

    # ---------------------------------------------------------------- retrieval files
    all_refs = [(s, i) for s in names for i in range(sequences[s])]
    order = rng.permutation(len(all_refs))
    if n_queries >= len(all_refs):
        raise ValueError("more queries than reference patches")
    queries = [all_refs[o] for o in order[:n_queries]]
    rest = [all_refs[o] for o in order[n_queries:]]
    distractors = rest if n_distractors is None else rest[:n_distractors]
    if copies and len(names) > 1:
        for c in range(copies):
            s, i = queries[int(rng.integers(len(queries)))]
            others = [d for d in distractors if d[0] != s]
            if not others:
                continue
            s2, j = others[int(rng.integers(len(others)))]
            kind = c % 3
            if kind == 0:  # distractor == one positive: equal distances at that level
                level, k = "eht"[int(rng.integers(3))], int(rng.integers(1, 6))
                desc[s2][0, j] = desc[s][_type_row(level, k), i]
            elif kind == 1:  # distractor == query: distance 0
                desc[s2][0, j] = desc[s][0, i]
            else:  # a positive == query and a distractor == query: a tie at distance 0
                level, k = "eht"[int(rng.integers(3))], int(rng.integers(1, 6))
                desc[s][_type_row(level, k), i] = desc[s][0, i]
                desc[s2][0, j] = desc[s][0, i]
        # matching: duplicated rows of a target image (argmin ties -> first index)
        for _ in range(copies):
            s = names[int(rng.integers(len(names)))]
            n = sequences[s]
            if n < 2:
                continue
            a, b = (int(v) for v in rng.choice(n, 2, replace=False))
            t = int(rng.integers(1, 16))
            desc[s][t, b] = desc[s][t, a]
    if duplicates:
        for _ in range(max(1, len(queries) // 10)):
            queries.insert(int(rng.integers(len(queries) + 1)), queries[int(rng.integers(len(queries)))])
        for _ in range(max(1, len(distractors) // 20)):
            distractors.insert(int(rng.integers(len(distractors) + 1)),
                               distractors[int(rng.integers(len(distractors)))])

    # ---------------------------------------------------------------- write
    ddir = root / "descriptors"
    tdir = root / "tasks"
    (tdir / "splits").mkdir(parents=True, exist_ok=True)
    for s in names:
        (ddir / s).mkdir(parents=True, exist_ok=True)
        for t, name in enumerate(TYPES):
            if fmt == "csv":
                np.savetxt(ddir / s / f"{name}.csv", desc[s][t], fmt="%10.5f", delimiter=",")
            else:
                np.save(ddir / s / f"{name}.npy", desc[s][t].astype(np.float32))
    test = sorted(names)
    with open(tdir / "splits" / "splits.json", "w") as f:
        json.dump({SPLIT: {"name": SPLIT, "test": test, "train": []}}, f)

    files = {}

    def write(kind: str, header: list[str], rows: list[tuple]) -> None:
        path = tdir / f"{kind}_split-{SPLIT}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
        files[kind] = path

    pair_header = ["s1", "t1", "idx1", "s2", "t2", "idx2"]
    write("verif_pos", pair_header, pos)
    write("verif_neg_intra", pair_header, intra)
    write("verif_neg_inter", pair_header, inter)
    write("retr_queries", ["s", "idx"], queries)
    write("retr_distractors", ["s", "idx"], distractors)
    return HPatchesCase(root=root, descriptors_dir=ddir, tasks_dir=tdir, split=SPLIT,
                        sequences=test, files=files)
