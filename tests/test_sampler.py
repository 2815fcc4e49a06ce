"""Class-balanced batches (self-tnet.md §2.1): composition, determinism and uniformity."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from descbal.train.sampler import Batch, ClassBatchSampler

# class sizes: 1-patch classes, classes with 2..npos patches and bigger ones
SIZES = [1, 2, 3, 4, 6, 10, 1, 2, 5, 3, 7, 1]


def shuffled_labels(sizes: list[int], seed: int = 0) -> np.ndarray:
    """Labels (not 0..C-1: ids 11, 24, ...) in random patch order."""
    lab = np.repeat(13 * np.arange(len(sizes)) + 11, sizes)
    return lab[np.random.default_rng(seed).permutation(len(lab))]


def runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(label, start, stop) of each run of equal consecutive labels."""
    cut = np.flatnonzero(np.diff(labels)) + 1
    starts = np.r_[0, cut]
    stops = np.r_[cut, len(labels)]
    return [(int(labels[s]), int(s), int(e)) for s, e in zip(starts, stops, strict=True)]


def check_batch(b: Batch, labels: np.ndarray, num_classes: int, npos: int) -> None:
    assert b.indices.dtype == np.int64 and b.labels.dtype == np.int64 and b.classes.dtype == np.int64
    assert len(b.classes) == num_classes == len(np.unique(b.classes))  # distinct classes
    np.testing.assert_array_equal(labels[b.indices], b.labels)
    r = runs(b.labels)
    assert [lab for lab, _, _ in r] == b.classes.tolist()  # contiguous, in class order
    sizes = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    for lab, s, e in r:
        n = sizes[lab]
        idx = b.indices[s:e]
        if n == 1:
            assert e - s == 2 and idx[0] == idx[1]  # a lone patch taken twice
        else:
            assert e - s == min(n, npos)  # npos of a bigger class, all of a class of 2..npos
            assert len(np.unique(idx)) == e - s  # no repetition
        if 2 <= n <= npos:
            assert set(idx.tolist()) == set(np.flatnonzero(labels == lab).tolist())


@pytest.mark.parametrize("npos", [2, 3, 4])
def test_batch_composition(npos: int) -> None:
    labels = shuffled_labels(SIZES)
    s = ClassBatchSampler(labels, 7, npos, seed=5)
    for e in range(3):
        for i in range(40):
            check_batch(s.batch(e, i), labels, 7, npos)


def test_npos_1_is_rejected() -> None:
    # every class needs a positive pair; npos=1 would leave lone patches unpaired
    with pytest.raises(ValueError, match="npos must be >= 2"):
        ClassBatchSampler(shuffled_labels([1, 3, 2]), 3, 1, seed=0)


def test_batch_of_all_classes() -> None:
    labels = shuffled_labels(SIZES, 1)
    s = ClassBatchSampler(labels, len(SIZES), 3, seed=0)
    b = s.batch(0, 0)
    check_batch(b, labels, len(SIZES), 3)
    assert sorted(b.classes.tolist()) == sorted(np.unique(labels).tolist())
    assert len(b.indices) == sum(2 if n == 1 else min(n, 3) for n in SIZES)


def test_npos_2_gives_exactly_two_per_class() -> None:
    labels = shuffled_labels([2, 3, 5, 1, 8, 2, 4])
    s = ClassBatchSampler(labels, 5, 2, seed=3)
    for i in range(20):
        b = s.batch(1, i)
        assert len(b.indices) == 10
        check_batch(b, labels, 5, 2)


def test_deterministic_in_seed_epoch_index() -> None:
    labels = shuffled_labels(SIZES, 2)
    a = ClassBatchSampler(labels, 6, 3, seed=9)
    b = ClassBatchSampler(labels.copy(), 6, 3, seed=9)
    for e, i in [(0, 0), (0, 5), (3, 17)]:
        x, y = a.batch(e, i), b.batch(e, i)
        for f in ("indices", "labels", "classes"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
    a.batch(0, 1)  # order of calls does not matter (no hidden generator state)
    np.testing.assert_array_equal(a.batch(0, 5).indices, b.batch(0, 5).indices)
    ref = a.batch(0, 0).indices
    others = [a.batch(0, 1), a.batch(1, 0), ClassBatchSampler(labels, 6, 3, seed=10).batch(0, 0)]
    for o in others:
        assert not np.array_equal(o.indices, ref)
    # many different indices give many different batches
    distinct = {tuple(a.batch(0, i).indices.tolist()) for i in range(50)}
    assert len(distinct) == 50


def test_within_class_draw_is_uniform() -> None:
    """Every patch of a 6-patch class is drawn with frequency 3/6, every pair with 4/20 (each
    3-subset equally likely), and a class joins a batch with frequency classes/total."""
    labels = shuffled_labels([6, 5, 2, 1, 3, 4, 6, 2], 4)
    big = 11  # the first class, 6 patches
    members = np.flatnonzero(labels == big)
    s = ClassBatchSampler(labels, 4, 3, seed=1)
    n = 6000
    seen = np.zeros(len(labels))
    pairs = dict.fromkeys(combinations(members.tolist(), 2), 0)
    with_big = 0
    class_hits = dict.fromkeys(np.unique(labels).tolist(), 0)
    for i in range(n):
        b = s.batch(i % 3, i)
        for c in b.classes.tolist():
            class_hits[c] += 1
        idx = b.indices[b.labels == big]
        if len(idx) == 0:
            continue
        with_big += 1
        seen[idx] += 1
        for p in combinations(sorted(idx.tolist()), 2):
            pairs[p] += 1
    freq = seen[members] / with_big
    assert np.all(np.abs(freq - 0.5) < 0.035), freq
    pf = np.array(list(pairs.values())) / with_big
    assert np.all(np.abs(pf - 0.2) < 0.03), pf
    cf = np.array(list(class_hits.values())) / n
    assert np.all(np.abs(cf - 4 / 8) < 0.03), cf


def test_invalid_arguments() -> None:
    labels = shuffled_labels([2, 3])
    with pytest.raises(ValueError, match="only 2"):
        ClassBatchSampler(labels, 3, 2, seed=0)
    with pytest.raises(ValueError, match="npos"):
        ClassBatchSampler(labels, 2, 0, seed=0)


def test_unusable_patches_are_never_drawn() -> None:
    """Held-out patches (``usable`` False) are skipped; a class left with one usable patch takes it
    twice, a class with none is never drawn."""
    labels = shuffled_labels([4, 3, 2, 5], 6)
    usable = np.ones(len(labels), bool)
    ids = np.unique(labels)
    usable[np.flatnonzero(labels == ids[0])[:3]] = False  # 1 usable patch left
    usable[labels == ids[2]] = False  # the whole class held out
    usable[np.flatnonzero(labels == ids[3])[0]] = False
    s = ClassBatchSampler(labels, 3, 3, seed=2, usable=usable)
    sub = np.where(usable, labels, -1)
    for i in range(50):
        b = s.batch(0, i)
        assert usable[b.indices].all()
        assert ids[2] not in b.classes
        np.testing.assert_array_equal(labels[b.indices], b.labels)
        for lab, start, stop in runs(b.labels):
            n = int((sub == lab).sum())
            assert stop - start == (2 if n == 1 else min(n, 3))
    with pytest.raises(ValueError, match="only 3"):
        ClassBatchSampler(labels, 4, 3, seed=2, usable=usable)


# ------------------------------------------------------------------------------ near classes kept apart

NEAR_LABELS = np.repeat(np.arange(6) * 10 + 3, [2, 3, 1, 4, 2, 3])  # classes 3, 13, ..., 53


def test_without_a_near_table_the_draws_are_the_plain_ones() -> None:
    # recorded with the sampler before it knew near tables (seed 11, 3 classes x 2)
    expected = {(0, 0): ([0, 1, 12, 13, 10, 11], [3, 53, 43]), (0, 1): ([5, 5, 10, 11, 3, 2], [23, 43, 13]),
                (2, 5): ([0, 1, 14, 13, 2, 4], [3, 53, 13])}
    for near in (None, np.zeros((0, 2), np.int64), np.array([[3, 999]])):  # 999: no such class, ignored
        s = ClassBatchSampler(NEAR_LABELS, 3, 2, seed=11, near=near)
        for (e, i), (idx, cls) in expected.items():
            b = s.batch(e, i)
            assert b.indices.tolist() == idx and b.classes.tolist() == cls, (near, e, i)


def test_near_classes_are_never_drawn_together() -> None:
    near = np.array([[3, 13], [23, 33]])  # classes 0-1 and 2-3 (by position) are near
    s = ClassBatchSampler(NEAR_LABELS, 3, 2, seed=4, near=near)
    seen = set()
    for i in range(200):
        b = s.batch(0, i)
        check_batch(b, NEAR_LABELS, 3, 2)
        cls = set(b.classes.tolist())
        assert not {3, 13} <= cls and not {23, 33} <= cls, cls
        seen |= cls
    assert seen == set(np.unique(NEAR_LABELS).tolist())  # every class still takes part


def test_the_greedy_draw_by_hand() -> None:
    s = ClassBatchSampler(NEAR_LABELS, 3, 2, seed=0, near=np.array([[13, 3], [23, 33]]))
    # order 1, 0, 2, 4, ...: 1 taken (0 now blocked), 0 skipped, 2 taken (3 blocked), 4 taken
    assert s._take_apart(np.array([1, 0, 2, 4, 3, 5])).tolist() == [1, 2, 4]
    assert s._take_apart(np.array([3, 2, 5, 0])).tolist() == [3, 5, 0]


def test_a_near_table_that_cannot_fill_a_batch_is_refused() -> None:
    lab = np.repeat([0, 1, 2, 3], 2)
    with pytest.raises(ValueError, match="only 2 of the 4 classes could be drawn with none near another"):
        ClassBatchSampler(lab, 3, 2, seed=0, near=np.array([[0, 1], [2, 3]]))


def test_an_unlucky_order_completes_its_batch_instead_of_failing() -> None:
    # class 4 is near all others: the constructor's class order (0, 1, 2, 3) fills a batch of
    # 4 apart, but an order starting with 4 blocks everything else
    lab = np.repeat(np.arange(5), 2)
    s = ClassBatchSampler(lab, 4, 2, seed=0, near=np.array([[4, 0], [4, 1], [4, 2], [4, 3]]))
    # 4 taken, 0..3 skipped (blocked): the batch is 4 and then the first three skipped, in order
    assert s._take_apart(np.array([4, 2, 0, 3, 1])).tolist() == [4, 2, 0, 3]
    with pytest.raises(ValueError, match="only 1 of the 5 classes"):
        s._take_apart(np.array([4, 2, 0, 3, 1]), strict=True)
    sizes = {len(s.batch(0, i).classes) for i in range(60)}  # some orders start with 4: none fails
    assert sizes == {4}


def test_near_and_holdout_together() -> None:
    usable = np.ones(len(NEAR_LABELS), bool)
    usable[NEAR_LABELS == 53] = False  # class 53 held out: a near pair naming it is ignored
    s = ClassBatchSampler(NEAR_LABELS, 2, 2, seed=1, usable=usable, near=np.array([[3, 13], [13, 53]]))
    for i in range(50):
        b = s.batch(1, i)
        assert usable[b.indices].all() and not {3, 13} <= set(b.classes.tolist())
