"""Ranking metrics with the exact semantics of the official HPatches Python code.

The official ``python/utils/metrics.py`` of ``hpatches/hpatches-benchmark`` is a port of VLFeat's
``vl_tpfp``/``vl_pr``/``vl_roc``; the functions here reproduce it step for step, vectorised:

* items are ranked by *descending* score with a **stable** sort, so exact ties keep input order;
* ``numpos`` pads the list with missing positives of score ``-inf``; the ``-inf`` tail is dropped;
* ``pr`` returns the trapezoidal area under the precision/recall curve that starts at
  (recall 0, precision 1) -- VLFeat's ``info.auc``, *not* its non-interpolated ``info.ap``;
* ``roc`` returns the trapezoidal area under the ROC curve.

The closed forms at the bottom (``ap_from_ranks``, ``roc_auc_from_counts``) give the same values
from counts and ranks, without materialising the curves; the evaluation engine uses them on
million-row inputs, and the tests pin them against the primitives.

FPR95 follows HardNet's ``ErrorRateAt95Recall`` by default; HyNet's variant is an option.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: The official code clamps denominators and the first precision with this constant.
SMALL = 1e-10

FloatArray = NDArray[np.float64]


def _trapz(y: NDArray[np.floating], x: NDArray[np.floating]) -> float:
    """Trapezoid rule exactly as ``numpy.trapz(y, x)`` computes it (removed in numpy 2)."""
    if len(x) < 2:
        return 0.0
    d = np.diff(x)
    return float(np.add.reduce(d * (y[1:] + y[:-1]) / 2.0))


def tpfp(
    scores: ArrayLike, labels: ArrayLike, numpos: int | None = None
) -> tuple[NDArray[np.int64], NDArray[np.int64], int, int, NDArray[np.int64]]:
    """Cumulative true/false positive counts along the ranking by descending score.

    Args:
        scores: (M,) scores, larger is better; ``-inf`` means "never retrieved".
        labels: (M,) binary labels (1 positive, 0 negative; booleans accepted).
        numpos: total number of positives, ``>= sum(labels)``. The missing ones are appended
            with score ``-inf``, so they are never retrieved but count in the recall.

    Returns:
        ``(tp, fp, p, n, perm)``: ``tp``/``fp`` of shape (K+1,) starting at 0, where K is the
        number of items with a finite score; ``p`` positives (``numpos`` if given); ``n``
        negatives among the *given* labels; ``perm`` (K,) the ranking as indices into the
        (padded) input.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    if s.shape != lab.shape:
        raise ValueError(f"scores {s.shape} and labels {lab.shape} differ in length")
    p = int(lab.sum())
    n = len(lab) - p
    if numpos is not None:
        if numpos < p:
            raise ValueError("numpos smaller than the number of positives in labels")
        extra = int(numpos) - p
        p = int(numpos)
        s = np.concatenate([s, np.full(extra, -np.inf)])
        lab = np.concatenate([lab, np.ones(extra, dtype=np.int64)])
    perm = np.argsort(-s, kind="stable")
    finite = np.flatnonzero(s[perm] > -np.inf)
    stop = int(finite[-1]) + 1 if len(finite) else 0
    perm = perm[:stop]
    ranked = lab[perm]
    tp = np.concatenate([[0], np.cumsum(ranked == 1)]).astype(np.int64)
    fp = np.concatenate([[0], np.cumsum(ranked == 0)]).astype(np.int64)
    return tp, fp, p, n, perm


def pr(
    scores: ArrayLike, labels: ArrayLike, numpos: int | None = None
) -> tuple[FloatArray, FloatArray, float]:
    """Precision/recall curve and its trapezoidal area (the official HPatches "AP").

    Returns:
        ``(precision, recall, ap)``; the curves have shape (K+1,) and start at (1, 0).
    """
    tp, fp, p, _, _ = tpfp(scores, labels, numpos)
    recall = tp / float(max(p, SMALL))
    precision = np.maximum(tp, SMALL) / np.maximum(tp + fp, SMALL)
    return precision, recall, _trapz(precision, recall)


def roc(
    scores: ArrayLike, labels: ArrayLike, numpos: int | None = None
) -> tuple[FloatArray, FloatArray, float]:
    """ROC curve and its trapezoidal area.

    Returns:
        ``(fpr, tpr, auc)``; the curves have shape (K+1,) and start at (0, 0).
    """
    tp, fp, p, n, _ = tpfp(scores, labels, numpos)
    tpr = tp / float(max(p, SMALL))
    fpr = fp / float(max(n, SMALL))
    return fpr, tpr, _trapz(tpr, fpr)


# --------------------------------------------------------------------------------------------
# Closed forms used by the fast evaluation paths.
# --------------------------------------------------------------------------------------------


def ap_from_ranks(ranks: ArrayLike, numpos: int) -> NDArray[np.float64]:
    """The trapezoidal PR area of :func:`pr` from the ranks of the retrieved positives.

    Recall moves only at positives, so the area is
    ``sum_i (i/p - (i-1)/p) * (prec(i, r_i) + prec(i-1, r_i - 1)) / 2`` with
    ``prec(tp, r) = max(tp, 1e-10) / max(r, 1e-10)``; positives that are never retrieved add 0.

    Args:
        ranks: (..., m) 1-based ranks of the retrieved positives, ascending along the last
            axis (the i-th entry is the rank of the i-th retrieved positive).
        numpos: p, the total number of positives (``>= m``).

    Returns:
        (...,) float64 areas.
    """
    r = np.asarray(ranks, dtype=np.float64)
    m = r.shape[-1]
    i = np.arange(1, m + 1, dtype=np.float64)
    p = float(max(numpos, SMALL))
    dr = i / p - (i - 1) / p
    prec = np.maximum(i, SMALL) / np.maximum(r, SMALL)
    prec_before = np.maximum(i - 1, SMALL) / np.maximum(r - 1, SMALL)
    return np.sum(dr * (prec + prec_before) / 2.0, axis=-1)


def roc_auc_from_counts(pos_before_each_negative: ArrayLike, p: int, n: int) -> float:
    """The trapezoidal ROC area of :func:`roc` from, for every negative, the number of
    positives ranked before it: ``sum_j c_j / (n p)``.

    Args:
        pos_before_each_negative: (n,) integer counts.
        p: number of positives; n: number of negatives.
    """
    c = np.asarray(pos_before_each_negative, dtype=np.int64)
    return float(c.sum()) / float(max(n, SMALL)) / float(max(p, SMALL))


# --------------------------------------------------------------------------------------------
# FPR at 95 % recall (Brown / UBC PhotoTour).
# --------------------------------------------------------------------------------------------

Fpr95Definition = Literal["hardnet", "hynet"]


def fpr95(
    distances: ArrayLike, labels: ArrayLike, definition: Fpr95Definition = "hardnet", recall: float = 0.95
) -> float:
    """False positive rate at 95 % recall of matching pairs ranked by ascending distance.

    ``hardnet`` (default), HardNet's ``ErrorRateAt95Recall``: the distances go through HardNet's
    float32 round trip ``1 / (1 / (d + 1e-8) + 1e-8)``, pairs are sorted by ascending distance
    (stable: exact ties keep input order; HardNet's quicksort leaves them unspecified), the
    threshold is the position of the ``ceil(0.95 P)``-th matching pair, and the result is the
    fraction of non-matching pairs ranked strictly before it.

    ``hynet``, HyNet's ``cal_fpr95``: ``thr = sorted(d_pos)[ceil(0.95 P)]`` (0-based, i.e. the
    next positive; clamped to the last one), and the result is ``mean(d_neg <= thr)``.

    Args:
        distances: (M,) pair distances (any unit; smaller means more similar).
        labels: (M,) 1 for a matching pair, 0 for a non-matching pair.
        definition: ``"hardnet"`` or ``"hynet"``.
        recall: the recall level, 0.95 for FPR95.

    Returns:
        The rate as a fraction in [0, 1].
    """
    d = np.asarray(distances).reshape(-1)
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    if d.shape != lab.shape:
        raise ValueError(f"distances {d.shape} and labels {lab.shape} differ in length")
    npos = int(lab.sum())
    nneg = len(lab) - npos
    if npos == 0 or nneg == 0:
        raise ValueError("FPR95 needs both matching and non-matching pairs")
    if not np.all(np.isfinite(d)):
        raise ValueError("distances contain NaN or inf")
    if definition == "hardnet":
        d32 = d.astype(np.float32)
        eps = np.float32(1e-8)
        scores = np.float32(1.0) / (d32 + eps)
        back = np.float32(1.0) / (scores + eps)
        ranked = lab[np.argsort(back, kind="stable")]
        threshold_index = int(np.argmax(np.cumsum(ranked) >= recall * npos))
        fp = int(np.sum(ranked[:threshold_index] == 0))
        return fp / nneg
    if definition == "hynet":
        dpos = np.sort(d[lab == 1].astype(np.float64))
        k = min(math.ceil(recall * npos), npos - 1)
        thr = dpos[k]
        return float(np.mean(d[lab == 0] <= thr))
    raise ValueError(f"unknown FPR95 definition {definition!r}; use 'hardnet' or 'hynet'")
