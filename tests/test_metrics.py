"""Ranking metrics of descbal.eval.metrics: hand-computed values, the closed forms against the
curve primitives and the loop reference, and FPR95 (HardNet and HyNet definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference_hpatches import ref_pr, ref_roc, ref_tpfp

from descbal.eval import metrics

# --------------------------------------------------------------------------------------------
# tpfp / pr / roc by hand
# --------------------------------------------------------------------------------------------


def test_tpfp_ties_keep_input_order():
    # scores [3,2,2,1], labels [1,0,1,0]: stable descending order is 0,1,2,3 (the tied 2s keep
    # input order, the negative at index 1 first) -> labels 1,0,1,0.
    tp, fp, p, n, perm = metrics.tpfp([3, 2, 2, 1], [1, 0, 1, 0])
    assert perm.tolist() == [0, 1, 2, 3]
    assert tp.tolist() == [0, 1, 1, 2, 2]
    assert fp.tolist() == [0, 0, 1, 1, 2]
    assert (p, n) == (2, 2)
    # the same scores in another input order: [2,2,3,1] -> order 2,0,1,3
    _, _, _, _, perm = metrics.tpfp([2, 2, 3, 1], [0, 1, 1, 0])
    assert perm.tolist() == [2, 0, 1, 3]


def test_pr_with_ties_by_hand():
    # ranked labels 1,0,1,0 (see above); p = 2
    # recall    = [0, 1/2, 1/2, 1,   1  ]
    # precision = [1, 1/1, 1/2, 2/3, 2/4]   (first point: max(0,1e-10)/max(0,1e-10) = 1)
    # area = (1/2)(1+1)/2 + 0 + (1/2)(1/2+2/3)/2 + 0 = 1/2 + 7/24 = 19/24
    prec, rec, ap = metrics.pr([3, 2, 2, 1], [1, 0, 1, 0])
    np.testing.assert_allclose(rec, [0, 0.5, 0.5, 1, 1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(prec, [1, 1, 0.5, 2 / 3, 0.5], rtol=0, atol=1e-15)
    assert ap == pytest.approx(19 / 24, abs=1e-15)
    # [2,2,3,1] with labels [0,1,1,0] ranks the same labels 1,0,1,0 -> 19/24 again
    assert metrics.pr([2, 2, 3, 1], [0, 1, 1, 0])[2] == pytest.approx(19 / 24, abs=1e-15)
    # [2,2,3,1] with labels [1,0,1,0]: order 2(p),0(p),1(n),3(n) -> perfect ranking, area 1
    assert metrics.pr([2, 2, 3, 1], [1, 0, 1, 0])[2] == pytest.approx(1.0, abs=1e-15)


def test_roc_with_ties_by_hand():
    # ranked labels 1,0,1,0: tpr = [0,1/2,1/2,1,1], fpr = [0,0,1/2,1/2,1]
    # area = 0 + (1/2)(1/2+1/2)/2 + 0 + (1/2)(1+1)/2 = 1/4 + 1/2 = 3/4
    # (= sum over negatives of positives ranked before it / (n p) = (1 + 2) / 4)
    fpr, tpr, auc = metrics.roc([3, 2, 2, 1], [1, 0, 1, 0])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1], rtol=0, atol=1e-15)
    assert auc == pytest.approx(0.75, abs=1e-15)


def test_all_tied_scores_follow_input_order():
    # scores all 1, labels [1,0,0,1]: ranked as given.
    # tp = [0,1,1,1,2], fp = [0,0,1,2,2]
    # PR: recall [0,.5,.5,.5,1], precision [1,1,1/2,1/3,1/2]
    #     area = (1/2)(1+1)/2 + (1/2)(1/3+1/2)/2 = 1/2 + 5/24 = 17/24
    # ROC: tpr [0,.5,.5,.5,1], fpr [0,0,.5,1,1] -> area = (1/2)(1/2) = 1/2 (each negative has
    #      one positive before it: (1+1)/(2*2))
    assert metrics.pr([1, 1, 1, 1], [1, 0, 0, 1])[2] == pytest.approx(17 / 24, abs=1e-15)
    assert metrics.roc([1, 1, 1, 1], [1, 0, 0, 1])[2] == pytest.approx(0.5, abs=1e-15)


def test_numpos_padding_by_hand():
    # scores [.9,.8,.7], labels [1,0,1], numpos 4: two missing positives padded with -inf and
    # dropped again. n counts the given negatives only (1). Ranked: 1,0,1.
    # tp = [0,1,1,2], fp = [0,0,1,1]; recall = tp/4 = [0,.25,.25,.5]; precision = [1,1,1/2,2/3]
    # area = (1/4)(1+1)/2 + 0 + (1/4)(1/2+2/3)/2 = 1/4 + 7/48 = 19/48
    tp, fp, p, n, perm = metrics.tpfp([0.9, 0.8, 0.7], [1, 0, 1], numpos=4)
    assert tp.tolist() == [0, 1, 1, 2] and fp.tolist() == [0, 0, 1, 1]
    assert (p, n) == (4, 1)
    assert perm.tolist() == [0, 1, 2]
    prec, rec, ap = metrics.pr([0.9, 0.8, 0.7], [1, 0, 1], numpos=4)
    np.testing.assert_allclose(rec, [0, 0.25, 0.25, 0.5], rtol=0, atol=1e-15)
    assert ap == pytest.approx(19 / 48, abs=1e-15)
    # the maximum recall is sum(labels)/numpos, as in matching where it equals the success rate
    assert rec[-1] == 0.5


def test_explicit_minus_inf_scores_are_dropped():
    # scores [1,-inf,.5], labels [1,1,0]: ranked 1(p) .5(n), the -inf positive is never retrieved
    # tp = [0,1,1], fp = [0,0,1], p = 2: recall [0,.5,.5], precision [1,1,.5] -> area 1/2
    tp, fp, p, _, perm = metrics.tpfp([1, -np.inf, 0.5], [1, 1, 0])
    assert tp.tolist() == [0, 1, 1] and fp.tolist() == [0, 0, 1] and p == 2
    assert perm.tolist() == [0, 2]
    assert metrics.pr([1, -np.inf, 0.5], [1, 1, 0])[2] == pytest.approx(0.5, abs=1e-15)


def test_negative_ranked_first_gives_tiny_precision():
    # scores [2,1], labels [0,1]: precision after the negative is max(0,1e-10)/1 = 1e-10, so
    # area = (1)(1e-10 + 1/2)/2
    prec, _, ap = metrics.pr([2, 1], [0, 1])
    assert prec.tolist() == [1.0, 1e-10, 0.5]
    assert ap == pytest.approx((1e-10 + 0.5) / 2, abs=1e-17)


def test_no_positives_gives_zero_area():
    # p = 0: recall = 0/1e-10 = 0 everywhere, so the PR area is 0 (no error, as officially)
    prec, rec, ap = metrics.pr([3, 2, 1], [0, 0, 0])
    assert ap == 0.0 and rec.tolist() == [0, 0, 0, 0]
    assert prec[1] == pytest.approx(1e-10)


def test_tpfp_errors():
    with pytest.raises(ValueError):
        metrics.tpfp([1, 2, 3], [1, 1, 0], numpos=1)  # numpos below the positives present
    with pytest.raises(ValueError):
        metrics.tpfp([1, 2, 3], [1, 0])
    with pytest.raises(ValueError):
        metrics.pr([1, 2, 3], [1, 0])


# --------------------------------------------------------------------------------------------
# Primitives and closed forms against the loop reference on random inputs with ties
# --------------------------------------------------------------------------------------------


def _random_case(rng, m, levels):
    scores = rng.integers(0, levels, m).astype(np.float64)
    if rng.random() < 0.3:
        scores[rng.random(m) < 0.1] = -np.inf
    labels = (rng.random(m) < rng.uniform(0.1, 0.9)).astype(np.int64)
    if labels.sum() == 0:
        labels[0] = 1
    if labels.sum() == m:
        labels[-1] = 0
    return scores, labels


@pytest.mark.parametrize("seed", range(12))
def test_primitives_equal_reference(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 300))
    scores, labels = _random_case(rng, max(m, 2), int(rng.integers(1, 8)))
    numpos = None if seed % 2 else int(labels.sum() + rng.integers(0, 5))
    tp, fp, p, n, perm = metrics.tpfp(scores, labels.astype(bool), numpos)
    rtp, rfp, rp, rn, rorder = ref_tpfp(scores, labels, numpos)
    assert tp.tolist() == rtp and fp.tolist() == rfp and (p, n) == (rp, rn)
    assert perm.tolist() == rorder
    prec, rec, ap = metrics.pr(scores, labels, numpos)
    rprec, rrec, rap = ref_pr(scores, labels, numpos)
    np.testing.assert_allclose(prec, rprec, rtol=1e-15, atol=0)
    np.testing.assert_allclose(rec, rrec, rtol=1e-15, atol=0)
    assert ap == pytest.approx(rap, abs=1e-12)
    fpr, tpr, auc = metrics.roc(scores, labels, numpos)
    rfpr, rtpr, rauc = ref_roc(scores, labels, numpos)
    np.testing.assert_allclose(fpr, rfpr, rtol=1e-15, atol=0)
    np.testing.assert_allclose(tpr, rtpr, rtol=1e-15, atol=0)
    assert auc == pytest.approx(rauc, abs=1e-12)


def _positive_ranks(scores, labels):
    """1-based ranks of the retrieved positives in the reference's stable order."""
    _, _, _, _, order = ref_tpfp(scores, labels)
    return [r + 1 for r, i in enumerate(order) if labels[i] == 1]


def _positives_before_each_negative(scores, labels):
    _, _, _, _, order = ref_tpfp(scores, labels)
    seen, counts = 0, []
    for i in order:
        if labels[i] == 1:
            seen += 1
        else:
            counts.append(seen)
    return counts


def test_ap_from_ranks_by_hand():
    # ranks [1,3], numpos 4 is the padding example above: 1/4 + 7/48 = 19/48
    assert metrics.ap_from_ranks([1, 3], 4) == pytest.approx(19 / 48, abs=1e-15)
    # ranks [2,3,5,6,8] of 5 positives:
    #   (1/5)[(1/2 + 1e-10)/2 + (2/3+1/2)/2 + (3/5+2/4)/2 + (4/6+3/5)/2 + (5/8+4/7)/2]
    want = 1 / 20 + 1e-11 + 7 / 60 + 11 / 100 + 19 / 150 + 67 / 560
    assert metrics.ap_from_ranks([2, 3, 5, 6, 8], 5) == pytest.approx(want, abs=1e-15)
    # no retrieved positive at all -> 0
    assert float(metrics.ap_from_ranks(np.zeros(0), 3)) == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_ap_from_ranks_equals_pr(seed):
    rng = np.random.default_rng(100 + seed)
    scores, labels = _random_case(rng, int(rng.integers(2, 400)), int(rng.integers(1, 10)))
    scores[np.isinf(scores)] = 0.0  # finite scores: every positive is ranked
    numpos = int(labels.sum()) + int(rng.integers(0, 4))
    ranks = _positive_ranks(scores, labels)
    got = float(metrics.ap_from_ranks(np.array(ranks), numpos))
    assert got == pytest.approx(metrics.pr(scores, labels, numpos)[2], abs=1e-12)
    assert got == pytest.approx(ref_pr(scores, labels, numpos)[2], abs=1e-12)


def test_ap_from_ranks_batched():
    rng = np.random.default_rng(7)
    rows, want = [], []
    for _ in range(6):
        scores = rng.integers(0, 4, 40).astype(np.float64)
        labels = np.zeros(40, np.int64)
        labels[rng.choice(40, 5, replace=False)] = 1
        rows.append(_positive_ranks(scores, labels))
        want.append(ref_pr(scores, labels)[2])
    got = metrics.ap_from_ranks(np.array(rows).reshape(2, 3, 5), 5)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got.reshape(-1), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_roc_auc_from_counts_equals_roc(seed):
    rng = np.random.default_rng(200 + seed)
    scores, labels = _random_case(rng, int(rng.integers(2, 400)), int(rng.integers(1, 10)))
    scores[np.isinf(scores)] = 0.0
    counts = _positives_before_each_negative(scores, labels)
    p, n = int(labels.sum()), int(len(labels) - labels.sum())
    got = metrics.roc_auc_from_counts(counts, p, n)
    assert got == pytest.approx(metrics.roc(scores, labels)[2], abs=1e-12)
    assert got == pytest.approx(ref_roc(scores, labels)[2], abs=1e-12)


def test_roc_auc_from_counts_by_hand():
    # negatives preceded by 1 and 2 positives, p = n = 2 -> (1 + 2) / 4
    assert metrics.roc_auc_from_counts([1, 2], 2, 2) == 0.75


# --------------------------------------------------------------------------------------------
# FPR95
# --------------------------------------------------------------------------------------------

# 20 matching pairs at distances 1..19 and 30; 20 non-matching pairs.
POS = [float(v) for v in range(1, 20)] + [30.0]
NEG = [0.5, 2.5, 5.5, 18.5, 25.0, 26.0, 30.0] + [40.0 + v for v in range(13)]


def _pairs(rng=None):
    d = np.array(POS + NEG)
    lab = np.array([1] * len(POS) + [0] * len(NEG))
    if rng is not None:
        o = rng.permutation(len(d))
        d, lab = d[o], lab[o]
    return d, lab


def test_fpr95_hardnet_by_hand():
    # 0.95 * 20 = 19: the threshold is the 19th closest positive (distance 19). Negatives
    # ranked strictly before it: 0.5, 2.5, 5.5, 18.5 -> 4 / 20 = 0.2
    for seed in (None, 1, 2):
        d, lab = _pairs(None if seed is None else np.random.default_rng(seed))
        assert metrics.fpr95(d, lab) == pytest.approx(4 / 20, abs=1e-15)
        assert metrics.fpr95(d, lab, "hardnet") == pytest.approx(0.2, abs=1e-15)
    # recall 0.5 -> the 10th positive (distance 10): 0.5, 2.5, 5.5 -> 3/20
    d, lab = _pairs()
    assert metrics.fpr95(d, lab, recall=0.5) == pytest.approx(3 / 20, abs=1e-15)


def test_fpr95_hynet_by_hand():
    # thr = sorted(d_pos)[ceil(0.95*20)] = sorted(d_pos)[19] = 30 (the 20th positive);
    # negatives <= 30: 0.5, 2.5, 5.5, 18.5, 25, 26, 30 -> 7 / 20 = 0.35
    for seed in (None, 3):
        d, lab = _pairs(None if seed is None else np.random.default_rng(seed))
        assert metrics.fpr95(d, lab, "hynet") == pytest.approx(7 / 20, abs=1e-15)


def test_fpr95_definitions_differ_by_negatives_between_the_two_thresholds():
    # HyNet's threshold is the next positive and it counts <=: the difference is the negatives
    # in [19, 30] here: 25, 26, 30 -> 3/20
    d, lab = _pairs()
    assert metrics.fpr95(d, lab, "hynet") - metrics.fpr95(d, lab, "hardnet") == pytest.approx(3 / 20, abs=1e-15)
    # the same identity on random distinct distances (multiples of 1/64, exact in float32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        npos, nneg = int(rng.integers(20, 200)), int(rng.integers(20, 200))
        vals = rng.choice(np.arange(1, 4096), npos + nneg, replace=False) / 64.0
        lab = np.array([1] * npos + [0] * nneg)
        dpos = np.sort(vals[:npos])
        dneg = vals[npos:]
        k = math.ceil(0.95 * npos)  # 1-based rank of HardNet's threshold positive
        hard = np.sum(dneg < dpos[k - 1]) / nneg
        hy = np.sum(dneg <= dpos[min(k, npos - 1)]) / nneg
        assert metrics.fpr95(vals, lab, "hardnet") == pytest.approx(hard, abs=1e-15)
        assert metrics.fpr95(vals, lab, "hynet") == pytest.approx(hy, abs=1e-15)
        between = np.sum((dneg >= dpos[k - 1]) & (dneg <= dpos[min(k, npos - 1)])) / nneg
        assert hy - hard == pytest.approx(between, abs=1e-12)


def test_fpr95_hardnet_ties_keep_input_order_after_float32_round_trip():
    # A negative at 1 + 1e-12 and the only positive at 1.0 collapse to the same float32 value
    # in HardNet's 1/(1/(d+1e-8)+1e-8) round trip; the documented stable sort then keeps input
    # order, so the negative counts only when it comes first.
    d = np.array([1.0 + 1e-12, 1.0, 5.0])
    assert metrics.fpr95(d, np.array([0, 1, 0])) == 0.5
    assert metrics.fpr95(d[[1, 0, 2]], np.array([1, 0, 0])) == 0.0


def test_fpr95_hynet_threshold_clamped_to_last_positive():
    # P = 10: ceil(9.5) = 10 is past the last 0-based index 9 -> thr = largest positive (10)
    d = np.array([float(v) for v in range(1, 11)] + [9.5, 10.0, 11.0])
    lab = np.array([1] * 10 + [0] * 3)
    assert metrics.fpr95(d, lab, "hynet") == pytest.approx(2 / 3, abs=1e-15)
    # HardNet: cumsum >= 9.5 first at the 10th positive (distance 10): negatives before it: 9.5
    assert metrics.fpr95(d, lab, "hardnet") == pytest.approx(1 / 3, abs=1e-15)


def test_fpr95_errors():
    with pytest.raises(ValueError):
        metrics.fpr95([1.0, 2.0], [0, 0])  # no positives
    with pytest.raises(ValueError):
        metrics.fpr95([1.0, 2.0], [1, 1])  # no negatives
    with pytest.raises(ValueError):
        metrics.fpr95([1.0, 2.0], [1, 0, 1])
    with pytest.raises(ValueError):
        metrics.fpr95([1.0, np.nan], [1, 0])
    with pytest.raises(ValueError):
        metrics.fpr95([1.0, 2.0], [1, 0], definition="nope")
