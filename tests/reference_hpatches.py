"""A slow, loop-based reference of the official HPatches Python benchmark, for tests only.

Written from the protocol description (``shared/spec/protocols.md`` §1.4 and §2), not from any
implementation: every ranking is a Python stable sort, every curve and every area is a plain
loop, every verification distance is one ``scipy.spatial.distance`` call on two float32 rows,
and matching/retrieval distances come from ``scipy.spatial.distance.cdist`` (float64).

It is deliberately simple and slow; use it only on small inputs. It shares no code with
``descbal.eval`` so that the fast engine can be pinned against it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from scipy.spatial import distance as spd

#: Image types in the order of the official loader (row 0 of a (16, N, D) array is ``ref``).
TYPES = ["ref"] + [f"{level}{k}" for level in "eht" for k in range(1, 6)]
NOISE_LEVELS = ["e", "h", "t"]
POOL_SIZES = [100, 500, 1000, 5000, 10000, 15000, 20000]
EPS = 1e-10


# ------------------------------------------------------------------------------------------
# Primitives (§2.1)
# ------------------------------------------------------------------------------------------


def _as_floats(values) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _as_ints(values) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


def ref_tpfp(scores, labels, numpos=None):
    """(tp, fp, p, n, order) as Python lists/ints, following §2.1 step by step."""
    s = _as_floats(scores)
    lab = _as_ints(labels)
    if len(s) != len(lab):
        raise ValueError("scores and labels differ in length")
    # 1. count positives and negatives among the given labels
    p = 0
    for v in lab:
        if v == 1:
            p += 1
    n = len(lab) - p
    # 2. pad with the missing positives, which get score -inf
    if numpos is not None:
        if numpos < p:
            raise ValueError("numpos smaller than the number of positives")
        for _ in range(numpos - p):
            s.append(-math.inf)
            lab.append(1)
        p = numpos
    # 3. stable sort on -score (Python's sort is stable: equal keys keep input order)
    order = sorted(range(len(s)), key=lambda i: -s[i])
    # 4. drop the -inf tail: keep up to the last position whose score is > -inf
    keep = 0
    for position, i in enumerate(order):
        if s[i] > -math.inf:
            keep = position + 1
    order = order[:keep]
    # 5. cumulative counts, both starting at 0
    tp = [0]
    fp = [0]
    for i in order:
        tp.append(tp[-1] + (1 if lab[i] == 1 else 0))
        fp.append(fp[-1] + (1 if lab[i] == 0 else 0))
    return tp, fp, p, n, order


def ref_trapz(y: list[float], x: list[float]) -> float:
    """Trapezoid rule as a plain loop."""
    area = 0.0
    for i in range(1, len(x)):
        area += (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2.0
    return area


def ref_pr(scores, labels, numpos=None):
    """(precision, recall, area) with precision = max(tp,eps)/max(tp+fp,eps), recall = tp/max(p,eps)."""
    tp, fp, p, _, _ = ref_tpfp(scores, labels, numpos)
    recall = []
    precision = []
    for t, f in zip(tp, fp, strict=True):
        recall.append(t / max(p, EPS))
        precision.append(max(t, EPS) / max(t + f, EPS))
    return precision, recall, ref_trapz(precision, recall)


def ref_roc(scores, labels, numpos=None):
    """(fpr, tpr, area) with tpr = tp/p and fpr = fp/n."""
    tp, fp, p, n, _ = ref_tpfp(scores, labels, numpos)
    tpr = [t / p for t in tp]
    fpr = [f / n for f in fp]
    return fpr, tpr, ref_trapz(tpr, fpr)


# ------------------------------------------------------------------------------------------
# Reading (independent of descbal's readers)
# ------------------------------------------------------------------------------------------


def ref_load_descriptors(root: str | Path, sequences) -> dict[str, np.ndarray]:
    """``{seq: (16, N, D) float32}`` from ``root/<seq>/<type>.csv`` (or ``.npy``).

    CSV values are parsed with Python's correctly rounded ``float`` and then cast to float32.
    """
    out = {}
    for seq in sequences:
        blocks = []
        for t in TYPES:
            csv_path = Path(root) / seq / f"{t}.csv"
            if csv_path.is_file():
                with open(csv_path, newline="") as f:
                    rows = [[float(x) for x in row] for row in csv.reader(f) if row]
                blocks.append(np.array(rows, dtype=np.float64).astype(np.float32))
            else:
                blocks.append(np.load(Path(root) / seq / f"{t}.npy").astype(np.float32))
        out[seq] = np.stack(blocks)
    return out


def _read_task_csv(path: Path) -> list[list[str]]:
    """Rows of a task CSV as lists of strings, the header row removed."""
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    return rows[1:]


def read_pairs(path: Path) -> list[tuple[str, int, int, str, int, int]]:
    return [(r[0].strip(), int(r[1]), int(r[2]), r[3].strip(), int(r[4]), int(r[5]))
            for r in _read_task_csv(path)]


def read_patches(path: Path) -> list[tuple[str, int]]:
    return [(r[0].strip(), int(r[1])) for r in _read_task_csv(path)]


def read_split(tasks_dir: Path, split: str) -> list[str]:
    with open(Path(tasks_dir) / "splits" / "splits.json") as f:
        return list(json.load(f)[split]["test"])


# ------------------------------------------------------------------------------------------
# Tasks (§2.3 - §2.5)
# ------------------------------------------------------------------------------------------


def image_type(image_id: int, noise: str) -> int:
    """Row of TYPES for a task-file image id: 0 is ref at every level, k is ek/hk/tk (§1.4)."""
    if image_id == 0:
        return 0
    return TYPES.index(f"{noise}{image_id}")


def _pair_distance(distance: str):
    if distance == "L2":
        return spd.euclidean
    if distance == "L1":
        return spd.cityblock
    raise ValueError(distance)


def _cdist_metric(distance: str) -> str:
    return {"L2": "euclidean", "L1": "cityblock"}[distance]


def ref_verification(desc, pos_rows, intra_rows, inter_rows, distance="L2") -> dict:
    """``{noise: {"intra"|"inter": {"balanced_auc", "imbalanced_ap"}}}`` (§2.3)."""
    fn = _pair_distance(distance)

    def dists(rows, noise):
        out = []
        for s1, t1, i1, s2, t2, i2 in rows:
            a = desc[s1][image_type(t1, noise)][i1]  # float32 rows, one scipy call per pair
            b = desc[s2][image_type(t2, noise)][i2]
            out.append(float(fn(a, b)))
        return out

    n = len(pos_rows)
    result = {}
    for noise in NOISE_LEVELS:
        d_pos = dists(pos_rows, noise)
        res = {}
        for name, rows in (("intra", intra_rows), ("inter", inter_rows)):
            d_neg = dists(rows, noise)
            scores = [-d for d in d_neg + d_pos]  # negatives first, then positives
            labels = [0] * len(d_neg) + [1] * n
            _, _, auc = ref_roc(scores, labels)
            n_imb = n + int(0.2 * n)
            _, _, ap = ref_pr(scores[:n_imb], labels[:n_imb])
            res[name] = {"balanced_auc": auc, "imbalanced_ap": ap}
        result[noise] = res
    return result


def ref_matching(desc, sequences, distance="L2") -> dict:
    """``{"per_image": [{"sequence", "noise", "image", "ap", "sr"}, ...]}`` (§2.4)."""
    metric = _cdist_metric(distance)
    per_image = []
    for seq in sequences:
        ref = desc[seq][0]
        n = ref.shape[0]
        for noise in NOISE_LEVELS:
            for image in range(1, 6):
                D = spd.cdist(ref, desc[seq][image_type(image, noise)], metric)
                idx = np.argmin(D, axis=1)
                correct = [int(idx[i] == i) for i in range(n)]
                sr = sum(correct) / n
                scores = [-D[i, idx[i]] for i in range(n)]
                _, _, ap = ref_pr(scores, correct, numpos=n)
                per_image.append({"sequence": seq, "noise": noise, "image": image, "ap": ap, "sr": sr})
    return {"per_image": per_image}


def ref_retrieval(desc, queries, distractors, split_test, distance="L2", pool_sizes=POOL_SIZES) -> dict:
    """``{"pool_sizes": [...], "map": {noise: {str(k): mean AP over queries}}}`` (§2.5)."""
    metric = _cdist_metric(distance)
    test = set(split_test)
    for s, _ in list(queries) + list(distractors):
        if s not in test:
            raise ValueError(f"{s} is not a test sequence of the split")
    dmat = np.stack([desc[s][0][i] for s, i in distractors])
    dseq = [s for s, _ in distractors]
    sums = {noise: {k: 0.0 for k in pool_sizes} for noise in NOISE_LEVELS}
    for s, idx in queries:
        q = desc[s][0][idx][None, :]
        to_distractors = spd.cdist(q, dmat, metric)[0]
        negatives = [float(to_distractors[j]) for j in range(len(distractors)) if dseq[j] != s]
        for noise in NOISE_LEVELS:
            pos = np.stack([desc[s][image_type(k, noise)][idx] for k in range(1, 6)])
            positives = [float(v) for v in spd.cdist(q, pos, metric)[0]]
            lst = positives + negatives
            gt = [1] * len(positives) + [0] * len(negatives)
            for k in pool_sizes:
                _, _, ap = ref_pr([-v for v in lst[:k]], gt[:k])
                sums[noise][k] += ap
    nq = len(queries)
    return {
        "pool_sizes": list(pool_sizes),
        "map": {noise: {str(k): sums[noise][k] / nq for k in pool_sizes} for noise in NOISE_LEVELS},
    }


def ref_headline(result: dict) -> dict:
    """Headline numbers per §2.9 (as fractions)."""
    out = {}
    if "verification" in result:
        v = result["verification"]
        vals = [v[t][k]["imbalanced_ap"] for t in NOISE_LEVELS for k in ("intra", "inter")]
        out["verification"] = sum(vals) / len(vals)
    if "matching" in result:
        by_seq = {}
        for r in result["matching"]["per_image"]:
            by_seq.setdefault((r["sequence"], r["noise"]), []).append(r["ap"])
        seq_mean = {key: sum(v) / len(v) for key, v in by_seq.items()}
        categories = []
        for prefix in ("i_", "v_"):
            levels = []
            for noise in NOISE_LEVELS:
                vals = [m for (s, t), m in seq_mean.items() if t == noise and s.startswith(prefix)]
                if vals:
                    levels.append(sum(vals) / len(vals))
            if levels:
                categories.append(sum(levels) / len(levels))
        out["matching"] = sum(categories) / len(categories)
    if "retrieval" in result:
        m = result["retrieval"]["map"]
        per_level = [sum(m[t].values()) / len(m[t]) for t in NOISE_LEVELS]
        out["retrieval"] = sum(per_level) / len(per_level)
    return out


def ref_evaluate(desc_dict, tasks_dir, split="a", distance="L2") -> dict:
    """The whole evaluation, shaped like ``descbal.eval.hpatches.evaluate_hpatches``'s result."""
    tasks_dir = Path(tasks_dir)
    sequences = read_split(tasks_dir, split)
    pos = read_pairs(tasks_dir / f"verif_pos_split-{split}.csv")
    intra = read_pairs(tasks_dir / f"verif_neg_intra_split-{split}.csv")
    inter = read_pairs(tasks_dir / f"verif_neg_inter_split-{split}.csv")
    queries = read_patches(tasks_dir / f"retr_queries_split-{split}.csv")
    distractors = read_patches(tasks_dir / f"retr_distractors_split-{split}.csv")
    result = {
        "split": split,
        "distance": distance,
        "sequences": sequences,
        "verification": ref_verification(desc_dict, pos, intra, inter, distance),
        "matching": ref_matching(desc_dict, sequences, distance),
        "retrieval": ref_retrieval(desc_dict, queries, distractors, sequences, distance),
    }
    result["headline"] = ref_headline(result)
    return result
