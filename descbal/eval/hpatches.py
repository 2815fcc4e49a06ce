"""HPatches verification, matching and retrieval with the official protocol's exact numbers.

Semantics are those of ``hpatches/hpatches-benchmark`` ``python/utils/tasks.py`` (see
``descbal.eval.metrics`` for the ranking metrics):

* **verification** -- per noise level e/h/t, the distances of the positive, intra-sequence
  negative and inter-sequence negative pair files (duplicate rows kept); *balanced*: ROC AUC of
  ``[negatives; positives]``; *imbalanced*: PR area of all negatives plus the first 20 % of
  positives in file order. Ties rank negatives first (they come first in the list).
* **matching** -- for every sequence, noise level and target image 1..5, the nearest neighbour
  of every reference patch (first index on ties), no ratio test; ``sr`` is the fraction of
  correct neighbours and ``ap`` the PR area with the neighbour distance as score and recall
  over all N reference patches.
* **retrieval** -- for every query (a reference patch), its 5 positives followed by the
  distractors of *other* sequences in file order; for each pool size k the list is truncated to
  its first k entries (not a rank cut-off) and scored with the PR area over the 5 positives.
  Ties rank the positives first.

The headline numbers are those of the figure code the maintainers point to (protocols.md §2.9).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from descbal.errors import BadInputError
from descbal.eval import metrics
from descbal.eval.distances import Distance, get_distance
from descbal.eval.hpatches_io import (
    NOISE_LEVELS,
    HPatchesDescriptors,
    PatchRefs,
    get_split,
    read_pair_file,
    read_patch_list,
    task_file,
    type_index,
)
from descbal.progress import NO_PROGRESS, Progress, or_no_progress
from descbal.results import JsonResult

TASKS: tuple[str, ...] = ("verification", "matching", "retrieval")
POOL_SIZES: tuple[int, ...] = (100, 500, 1000, 5000, 10000, 15000, 20000)



@dataclass
class HPatchesResult(JsonResult):
    """The HPatches evaluation document (README, "JSON schema"); all values are fractions.

    ``verification``: ``{noise: {"intra"|"inter": {"balanced_auc", "imbalanced_ap"}}}``;
    ``matching``: ``{"per_image": [{"sequence", "noise", "image", "ap", "sr"}]}``;
    ``retrieval``: ``{"pool_sizes": [...], "map": {noise: {str(k): mean AP}}}``; a task not
    run is None and absent from ``to_json()``. ``headline``: see :func:`headline`.
    ``model``: the display name of the model that made the descriptors (``eval hpatches --model``,
    ``eval example``), else None and absent.
    """

    OMIT_NONE = ("verification", "matching", "retrieval", "model")

    split: str
    distance: str
    sequences: list[str]
    verification: dict[str, Any] | None = None
    matching: dict[str, Any] | None = None
    retrieval: dict[str, Any] | None = None
    headline: dict[str, float] = field(default_factory=dict)
    model: str | None = None


class FlatDescriptors:
    """All descriptors of the split stacked into one (sum_s 16 N_s, D) float32 matrix."""

    def __init__(self, descriptors: HPatchesDescriptors, sequences: Sequence[str]) -> None:
        self.sequences = list(sequences)
        self.index = {s: i for i, s in enumerate(self.sequences)}
        self.lengths = np.array([descriptors.num_patches(s) for s in self.sequences], dtype=np.int64)
        blocks = [descriptors.data[s].reshape(-1, descriptors.dim) for s in self.sequences]
        sizes = np.array([len(b) for b in blocks], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.matrix = np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)

    def rows(self, refs: PatchRefs, noise: str) -> NDArray[np.int64]:
        """Global row of every reference in ``refs`` for one noise level."""
        type_row = np.zeros_like(refs.image)
        nz = refs.image > 0
        type_row[nz] = 1 + NOISE_LEVELS.index(noise) * 5 + (refs.image[nz] - 1)
        return self.offsets[refs.seq] + type_row * self.lengths[refs.seq] + refs.idx


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def verification_scores(
    d_pos: NDArray[np.floating], d_neg: NDArray[np.floating], pos_sorted: NDArray[np.floating] | None = None
) -> tuple[float, float]:
    """Balanced ROC AUC and imbalanced PR area of one (positives, negatives) distance pair.

    Equal to ``roc(-[d_neg; d_pos], [0]*N + [1]*N).auc`` and to ``pr`` on the first
    ``N + int(0.2 N)`` rows of the same lists, computed from counts instead of curves.

    Args:
        d_pos, d_neg: (N,) distances of the row-aligned positive and negative files.
        pos_sorted: ``np.sort(d_pos)`` when the caller already has it.
    """
    n = len(d_neg)
    p = len(d_pos)
    if pos_sorted is None:
        pos_sorted = np.sort(d_pos)
    neg_sorted = np.sort(d_neg)
    # A positive precedes a negative only when strictly closer (negatives come first on ties):
    # count, for every negative, the positives below it.
    below = np.searchsorted(pos_sorted, neg_sorted, side="left")
    auc = metrics.roc_auc_from_counts(below, p, n)
    m = p + int(p * 0.2) - n  # positives kept by the official N_imb cut of [neg; pos]
    if m <= 0:
        return auc, 0.0
    sub = np.sort(d_pos[:m])
    ranks = np.arange(1, m + 1) + np.searchsorted(neg_sorted, sub, side="right")
    ap = float(metrics.ap_from_ranks(ranks, m))
    return auc, ap


def evaluate_verification(
    flat: FlatDescriptors, tasks_dir: Path, split: str, dist: Distance, progress: Progress = NO_PROGRESS
) -> dict:
    """``{noise: {"intra"|"inter": {"balanced_auc", "imbalanced_ap"}}}`` for the split."""
    files = {k: task_file(tasks_dir, f"verif_{k}", split) for k in ("pos", "neg_intra", "neg_inter")}
    with ThreadPoolExecutor(2) as pool:  # numpy releases the GIL in the vectorised parsing
        parsed = list(pool.map(lambda f: read_pair_file(f, flat.index, flat.lengths), files.values()))
    refs = dict(zip(files, parsed, strict=True))
    n_pos = len(refs["pos"][0].idx)
    for k in ("neg_intra", "neg_inter"):
        if len(refs[k][0].idx) != n_pos:
            raise BadInputError(
                f"{len(refs[k][0].idx)} rows, but {files['pos'].name} has {n_pos}: the three "
                "verification files must be row-aligned", files[k])
    out: dict = {}
    total = 3 * len(NOISE_LEVELS)
    done = 0
    for noise in NOISE_LEVELS:
        d = {}
        for k, (a, b) in refs.items():
            d[k] = dist.rows_indexed(flat.matrix, flat.rows(a, noise), flat.rows(b, noise))
            done += 1
            progress("verification", done, total)
        pos_sorted = np.sort(d["pos"])
        res = {}
        for neg, name in (("neg_intra", "intra"), ("neg_inter", "inter")):
            auc, ap = verification_scores(d["pos"], d[neg], pos_sorted)
            res[name] = {"balanced_auc": auc, "imbalanced_ap": ap}
        out[noise] = res
    return out


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


def evaluate_matching(
    descriptors: HPatchesDescriptors, sequences: Sequence[str], dist: Distance, progress: Progress = NO_PROGRESS
) -> dict:
    """``{"per_image": [{"sequence", "noise", "image", "ap", "sr"}, ...]}`` in split order."""
    per_image = []
    total = len(sequences) * len(NOISE_LEVELS) * 5
    done = 0
    for seq in sequences:
        data = descriptors.data[seq]
        ref = np.ascontiguousarray(data[0])
        n = ref.shape[0]
        gt = np.arange(n)
        for noise in NOISE_LEVELS:
            for image in range(1, 6):
                tgt = np.ascontiguousarray(data[type_index(noise, image)])
                idx, dmin = dist.nearest(ref, tgt)
                correct = idx == gt
                sr = np.count_nonzero(correct) / float(n)
                _, _, ap = metrics.pr(-dmin, correct, numpos=n)
                per_image.append({"sequence": seq, "noise": noise, "image": image, "ap": ap, "sr": sr})
                done += 1
                progress("matching", done, total)
    return {"per_image": per_image}


# --------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------


def retrieval_ap(
    queries: NDArray[np.float32],
    positives: NDArray[np.float32],
    query_seq: NDArray[np.int64],
    distractors: NDArray[np.float32],
    distractor_seq: NDArray[np.int64],
    dist: Distance,
    pool_sizes: Sequence[int] = POOL_SIZES,
    chunk: int = 256,
    progress: Progress | None = None,
) -> NDArray[np.float64]:
    """PR area of every query, noise level and pool size, by per-query rank counting.

    Instead of sorting every truncated list, the rank of each positive in the list truncated to
    k is ``i + #{distractors among the first k-5 with a smaller distance}``; these counts are
    histograms of the distractors' positions among the query's sorted positive distances,
    accumulated over the pool prefixes. Comparisons whose approximate distance lies within the
    distance's error bound of a positive distance are decided with the exact formula.

    Args:
        queries: (Q, D) reference descriptors of the queries.
        positives: (Q, L, 5, D) the query's patch in images 1..5 for each of L noise levels.
        query_seq: (Q,) sequence ids; distractor_seq: (M,) sequence ids, file order.
        distractors: (M, D) reference descriptors of the distractors.

    Returns:
        (Q, L, len(pool_sizes)) float64 PR areas.
    """
    nq, nl, npos, _ = positives.shape
    pools = np.asarray(pool_sizes, dtype=np.int64)
    npools = len(pools)
    pos_d = dist.exact(np.repeat(queries, nl * npos, axis=0), positives.reshape(nq * nl * npos, -1))
    pos_d = pos_d.reshape(nq, nl * npos)
    out = np.empty((nq, nl, npools), dtype=np.float64)
    nt = nl * npos
    nseg = npools + 1
    nb = nt + 1
    done = 0
    for s in np.unique(query_seq):
        q_rows = np.flatnonzero(query_seq == s)
        cols = np.flatnonzero(distractor_seq != s)
        xs = np.ascontiguousarray(distractors[cols])
        m = len(cols)
        lens = np.minimum(pools - npos, m)
        # Segment of each position of the masked distractor list: pool p holds segments <= p.
        seg = np.searchsorted(lens, np.arange(m), side="right").astype(np.int64)
        for c0 in range(0, len(q_rows), chunk):
            rows = q_rows[c0 : c0 + chunk]
            c = len(rows)
            t = pos_d[rows]  # (c, nt) exact positive distances
            order = np.argsort(t, axis=1, kind="stable")
            t_sorted = np.take_along_axis(t, order, axis=1)
            position = np.argsort(order, axis=1)  # position of each threshold once sorted
            tk = dist.key(t_sorted)
            keys, shift, tol = dist.approx_keys(queries[rows], xs)
            tol = tol + dist.key_tol(t_sorted[:, -1])
            # Only distractors that may be closer than the farthest positive count for anything.
            lim = np.nextafter((tk[:, -1] - shift + tol).astype(keys.dtype), np.inf)
            r, j = np.nonzero(keys <= lim[:, None])
            hist = np.zeros(c * nseg * nb, dtype=np.int64)
            for k0 in range(0, len(r), 1 << 20):
                rr, jj = r[k0 : k0 + (1 << 20)], j[k0 : k0 + (1 << 20)]
                v = keys[rr, jj].astype(np.float64) + shift[rr]
                tr = tk[rr]
                tl = tol[rr][:, None]
                b = np.count_nonzero(tr <= v[:, None] + tl, axis=1)
                amb = np.flatnonzero(np.any(np.abs(tr - v[:, None]) <= tl, axis=1))
                if len(amb):
                    d_exact = dist.exact(queries[rows[rr[amb]]], xs[jj[amb]])
                    b[amb] = np.count_nonzero(t_sorted[rr[amb]] <= d_exact[:, None], axis=1)
                hist += np.bincount((rr * nseg + seg[jj]) * nb + b, minlength=c * nseg * nb)
            # less[r, p, k]: distractors in pool p strictly closer than sorted threshold k.
            hist = hist.reshape(c, nseg, nb)
            less = hist.cumsum(axis=1)[:, :npools, :].cumsum(axis=2)[:, :, :nt]
            for lvl in range(nl):
                tl_ = t[:, lvl * npos : (lvl + 1) * npos]
                o = np.argsort(tl_, axis=1, kind="stable")
                pos_in_sorted = np.take_along_axis(position[:, lvl * npos : (lvl + 1) * npos], o, axis=1)
                idx = np.broadcast_to(pos_in_sorted[:, None, :], (c, npools, npos))
                ranks = np.arange(1, npos + 1)[None, None, :] + np.take_along_axis(less, idx, axis=2)
                out[rows, lvl, :] = metrics.ap_from_ranks(ranks, npos)
            done += c
            if progress is not None:
                progress("retrieval", done, len(queries))
    return out


def evaluate_retrieval(
    flat: FlatDescriptors, tasks_dir: Path, split: str, dist: Distance, progress: Progress = NO_PROGRESS
) -> dict:
    """``{"pool_sizes": [...], "map": {noise: {str(k): mean AP}}}`` for the split."""
    q = read_patch_list(task_file(tasks_dir, "retr_queries", split), flat.index, flat.lengths)
    d = read_patch_list(task_file(tasks_dir, "retr_distractors", split), flat.index, flat.lengths)
    queries = flat.matrix[flat.rows(q, "e")]  # image 0: ref at every noise level
    distractors = flat.matrix[flat.rows(d, "e")]
    pos_rows = []
    for noise in NOISE_LEVELS:
        per_img = []
        for image in range(1, 6):
            refs = PatchRefs(q.seq, np.full_like(q.idx, image), q.idx)
            per_img.append(flat.rows(refs, noise))
        pos_rows.append(np.stack(per_img, axis=1))
    positives = flat.matrix[np.stack(pos_rows, axis=1)]  # (Q, 3, 5, D)
    ap = retrieval_ap(queries, positives, q.seq, distractors, d.seq, dist, progress=progress)
    mean = ap.mean(axis=0)
    return {
        "pool_sizes": list(POOL_SIZES),
        "map": {noise: {str(k): float(mean[i, j]) for j, k in enumerate(POOL_SIZES)}
                for i, noise in enumerate(NOISE_LEVELS)},
    }


# --------------------------------------------------------------------------------------------
# Headline numbers and the whole evaluation
# --------------------------------------------------------------------------------------------


def headline(results: Mapping[str, Any]) -> dict[str, float]:
    """Paper-style headline numbers (fractions): verification = mean of the 6 imbalanced APs;
    matching = mean of the illumination and viewpoint averages (each the mean over e/h/t of the
    mean over sequences of the mean over images; a split with one category uses that one);
    retrieval = mean over e/h/t of the mean over the pool sizes."""
    out: dict[str, float] = {}
    if results.get("verification") is not None:
        v = results["verification"]
        out["verification"] = float(np.mean([v[t][k]["imbalanced_ap"] for t in NOISE_LEVELS for k in ("intra", "inter")]))
    if results.get("matching") is not None:
        per_seq: dict[tuple[str, str], list[float]] = {}
        for r in results["matching"]["per_image"]:
            per_seq.setdefault((r["sequence"], r["noise"]), []).append(r["ap"])
        cats = []
        for prefix in ("i_", "v_"):
            levels = []
            for noise in NOISE_LEVELS:
                vals = [np.mean(a) for (s, t), a in per_seq.items() if t == noise and s.startswith(prefix)]
                if vals:
                    levels.append(np.mean(vals))
            if levels:
                cats.append(np.mean(levels))
        if not cats:  # sequences named neither i_* nor v_*: plain mean over everything
            cats = [np.mean([np.mean(a) for a in per_seq.values()])]
        out["matching"] = float(np.mean(cats))
    if results.get("retrieval") is not None:
        m = results["retrieval"]["map"]
        out["retrieval"] = float(np.mean([np.mean(list(m[t].values())) for t in NOISE_LEVELS]))
    return out


def evaluate_hpatches(
    descriptors: HPatchesDescriptors,
    tasks_dir: str | Path,
    split: str = "a",
    tasks: Sequence[str] = TASKS,
    distance: str = "L2",
    progress: Progress | None = None,
) -> HPatchesResult:
    """Run the HPatches tasks on loaded descriptors.

    Args:
        descriptors: must contain every test sequence of the split.
        tasks_dir: folder with ``splits/splits.json`` and the task CSVs.
        split: split name (``a``, ``b``, ``c``, ``full``, ``illum``, ``view`` or a custom one).
        tasks: any of ``verification``, ``matching``, ``retrieval``.
        distance: ``L2`` or ``L1``.

    Returns:
        The :class:`HPatchesResult`; tasks not run are None.
    """
    tasks_dir = Path(tasks_dir)
    spl = get_split(tasks_dir, split)
    sequences = list(spl["test"])
    missing = [s for s in sequences if s not in descriptors]
    if missing:
        raise BadInputError(f"descriptors lack split {split!r} sequence(s) {', '.join(missing[:5])}")
    for t in tasks:
        if t not in TASKS:
            raise BadInputError(f"unknown task {t!r}; choose from {', '.join(TASKS)}")
    try:
        dist = get_distance(distance)
    except ValueError as e:
        raise BadInputError(str(e)) from None
    progress = or_no_progress(progress)
    result = HPatchesResult(split, distance, sequences)
    flat = FlatDescriptors(descriptors, sequences) if {"verification", "retrieval"} & set(tasks) else None
    if "verification" in tasks:
        result.verification = evaluate_verification(flat, tasks_dir, split, dist, progress)
    if "matching" in tasks:
        result.matching = evaluate_matching(descriptors, sequences, dist, progress)
    if "retrieval" in tasks:
        result.retrieval = evaluate_retrieval(flat, tasks_dir, split, dist, progress)
    result.headline = headline(result.to_json())
    return result
