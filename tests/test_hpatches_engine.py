"""The fast HPatches engine (descbal.eval.hpatches) pinned to the slow loop reference.

Each case is a synthetic split written in the official layout by ``hpatches_fixtures``; the
engine reads it with descbal's loaders, the reference with its own, and every number of the
result document must agree within 1e-9. The tie-heavy cases (coarse quantisation, copied
patches, duplicated task rows) are where a ranking implementation can silently differ from the
official one.
"""

from __future__ import annotations

import numpy as np
import pytest
from hpatches_fixtures import make_hpatches_case
from reference_hpatches import (
    NOISE_LEVELS,
    POOL_SIZES,
    image_type,
    read_pairs,
    read_patches,
    ref_evaluate,
    ref_load_descriptors,
    ref_pr,
    ref_roc,
)
from scipy.spatial.distance import cdist

from descbal.eval import hpatches as engine
from descbal.eval.distances import get_distance
from descbal.eval.hpatches_io import HPatchesDescriptors, load_descriptors, type_index

TOL = 1e-9

FOUR = {"i_ajuntament": 120, "i_fog": 90, "v_azzola": 150, "v_yard": 100}

CASES = {
    "l2-csv-continuous": dict(distance="L2", seed=11, sequences=FOUR, dim=16, n_pairs=1000, n_queries=80,
                              quantize=None, fmt="csv", duplicates=False, copies=0),
    "l1-csv-continuous-dups": dict(distance="L1", seed=12, sequences=FOUR, dim=12, n_pairs=1000, n_queries=80,
                                   quantize=None, fmt="csv", duplicates=True, copies=8),
    "l2-npy-q0.5-ties-dups": dict(distance="L2", seed=13, sequences=FOUR, dim=4, n_pairs=1000, n_queries=80,
                                  quantize=0.5, fmt="npy", duplicates=True, copies=25),
    "l1-npy-q1-ties": dict(distance="L1", seed=14, sequences=FOUR, dim=3, n_pairs=1000, n_queries=80,
                           quantize=1.0, fmt="npy", duplicates=False, copies=25),
    "l2-csv-q0.5-ties-dups": dict(distance="L2", seed=15, sequences=FOUR, dim=5, n_pairs=800, n_queries=60,
                                  quantize=0.5, fmt="csv", duplicates=True, copies=25),
    "l1-csv-q0.25-dups": dict(distance="L1", seed=16, sequences=FOUR, dim=6, n_pairs=800, n_queries=60,
                              quantize=0.25, fmt="csv", duplicates=True, copies=10),
    # ~700 distractors per query: pools 100 and 500 truncate the list, 1000+ cover it all
    "l2-npy-q0.5-large-pool": dict(distance="L2", seed=17,
                                   sequences={"i_a": 250, "i_b": 250, "v_c": 250, "v_d": 250},
                                   dim=8, n_pairs=600, n_queries=50, quantize=0.5, fmt="npy",
                                   duplicates=False, copies=15),
    # one category only (headline uses it alone), a tiny sequence, few verification rows
    "l2-npy-view-only-tiny": dict(distance="L2", seed=18, sequences={"v_x": 5, "v_y": 40, "v_z": 60},
                                  dim=6, n_pairs=9, n_queries=20, quantize=0.5, fmt="npy",
                                  duplicates=False, copies=5),
}

TIE_CASES = [k for k, v in CASES.items() if v["quantize"] is not None and v["copies"] >= 15]


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def evaluated(request, tmp_path_factory):
    cfg = dict(CASES[request.param])
    distance = cfg.pop("distance")
    case = make_hpatches_case(tmp_path_factory.mktemp(request.param), **cfg)
    loaded = load_descriptors(case.descriptors_dir, case.sequences)
    got = engine.evaluate_hpatches(loaded, case.tasks_dir, case.split, distance=distance).to_json()
    ref_desc = ref_load_descriptors(case.descriptors_dir, case.sequences)
    want = ref_evaluate(ref_desc, case.tasks_dir, case.split, distance)
    return {"name": request.param, "case": case, "distance": distance, "loaded": loaded,
            "ref_desc": ref_desc, "got": got, "want": want}


def _close(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= TOL


def test_descriptors_read_identically(evaluated):
    loaded, ref_desc = evaluated["loaded"], evaluated["ref_desc"]
    assert list(loaded.data) == evaluated["case"].sequences
    for seq, arr in ref_desc.items():
        assert loaded.data[seq].dtype == np.float32
        np.testing.assert_array_equal(loaded.data[seq], arr)


def test_document_shape(evaluated):
    got, want = evaluated["got"], evaluated["want"]
    assert set(got) == set(want) == {"split", "distance", "sequences", "verification", "matching",
                                     "retrieval", "headline"}
    assert got["split"] == want["split"] == "a"
    assert got["distance"] == want["distance"] == evaluated["distance"]
    assert got["sequences"] == want["sequences"]
    assert list(got["retrieval"]["pool_sizes"]) == want["retrieval"]["pool_sizes"] == POOL_SIZES


def test_verification_equals_reference(evaluated):
    got, want = evaluated["got"]["verification"], evaluated["want"]["verification"]
    assert set(got) == set(NOISE_LEVELS)
    bad = []
    for noise in NOISE_LEVELS:
        for neg in ("intra", "inter"):
            for key in ("balanced_auc", "imbalanced_ap"):
                g, w = got[noise][neg][key], want[noise][neg][key]
                if not _close(g, w):
                    bad.append(f"{noise}/{neg}/{key}: engine {g!r} reference {w!r}")
    assert not bad, "\n".join(bad)


def test_matching_equals_reference(evaluated):
    got, want = evaluated["got"]["matching"]["per_image"], evaluated["want"]["matching"]["per_image"]
    assert len(got) == len(want) == 15 * len(evaluated["case"].sequences)
    bad = []
    for g, w in zip(got, want, strict=True):
        assert (g["sequence"], g["noise"], g["image"]) == (w["sequence"], w["noise"], w["image"])
        for key in ("ap", "sr"):
            if not _close(g[key], w[key]):
                bad.append(f"{w['sequence']}/{w['noise']}{w['image']}/{key}: engine {g[key]!r} "
                           f"reference {w[key]!r}")
    assert not bad, "\n".join(bad)


def test_retrieval_equals_reference(evaluated):
    got, want = evaluated["got"]["retrieval"]["map"], evaluated["want"]["retrieval"]["map"]
    bad = []
    for noise in NOISE_LEVELS:
        assert list(got[noise]) == list(want[noise]) == [str(k) for k in POOL_SIZES]
        for k, w in want[noise].items():
            if not _close(got[noise][k], w):
                bad.append(f"{noise}/{k}: engine {got[noise][k]!r} reference {w!r}")
    assert not bad, "\n".join(bad)


def test_headline_equals_reference(evaluated):
    got, want = evaluated["got"]["headline"], evaluated["want"]["headline"]
    assert set(got) == set(want) == {"verification", "matching", "retrieval"}
    for key, w in want.items():
        assert _close(got[key], w), f"{key}: engine {got[key]!r} reference {w!r}"


@pytest.mark.parametrize("name", TIE_CASES)
def test_tie_cases_really_have_ties(name, tmp_path):
    """Guard the fixture's purpose: the tie cases contain every kind of exact tie."""
    cfg = dict(CASES[name])
    distance = cfg.pop("distance")
    metric = {"L2": "euclidean", "L1": "cityblock"}[distance]
    case = make_hpatches_case(tmp_path, **cfg)
    desc = ref_load_descriptors(case.descriptors_dir, case.sequences)
    t = case.tasks_dir
    # verification: a negative distance equal to a positive distance
    pos, inter = read_pairs(t / "verif_pos_split-a.csv"), read_pairs(t / "verif_neg_inter_split-a.csv")
    fn = get_distance(distance).rows

    def d(rows):
        a = np.stack([desc[r[0]][image_type(r[1], "e")][r[2]] for r in rows])
        b = np.stack([desc[r[3]][image_type(r[4], "e")][r[5]] for r in rows])
        return fn(a, b)

    assert len(np.intersect1d(d(pos), d(inter))) > 0
    # matching: some reference patch with several nearest neighbours
    multi = 0
    for seq in case.sequences:
        for k in range(1, 16):
            D = cdist(desc[seq][0], desc[seq][k], metric)
            multi += int(np.sum(np.sum(D == D.min(axis=1, keepdims=True), axis=1) > 1))
    assert multi > 0
    # retrieval: a distractor of another sequence exactly as far as a positive (distance > 0)
    queries, distractors = read_patches(t / "retr_queries_split-a.csv"), read_patches(t / "retr_distractors_split-a.csv")
    hits = 0
    for s, i in queries:
        q = desc[s][0][i][None]
        dd = cdist(q, np.stack([desc[s2][0][j] for s2, j in distractors if s2 != s]), metric)[0]
        pp = cdist(q, desc[s][1:, i], metric)[0]
        hits += len(np.intersect1d(dd, pp[pp > 0]))
    assert hits > 0
    assert (len(queries) > len(set(queries))) == cfg["duplicates"]
    assert not set(queries) & set(distractors)


def test_fixture_files_are_row_aligned(tmp_path):
    case = make_hpatches_case(tmp_path, 5, {"i_a": 30, "v_b": 20}, dim=4, n_pairs=200, n_queries=10,
                              quantize=None, fmt="csv", duplicates=True, copies=3)
    t = case.tasks_dir
    assert (t / "verif_pos_split-a.csv").read_text().splitlines()[0] == "s1,t1,idx1,s2,t2,idx2"
    assert (t / "retr_queries_split-a.csv").read_text().splitlines()[0] == "s,idx"
    pos, intra, inter = (read_pairs(t / f"verif_{k}_split-a.csv") for k in ("pos", "neg_intra", "neg_inter"))
    assert len(pos) == len(intra) == len(inter) > 200
    for p, a, e in zip(pos, intra, inter, strict=True):
        assert p[0] == p[3] and p[2] == p[5] and p[1] != p[4]
        assert a[0] == a[3] == p[0] and a[2] != a[5]
        assert (a[1], a[4]) == (e[1], e[4]) == (p[1], p[4])
        assert a[:3] == p[:3]
    assert {p[1] for p in pos} | {p[4] for p in pos} <= set(range(6))
    assert len(set(pos)) < len(pos)  # duplicates present
    first = (case.descriptors_dir / "i_a" / "ref.csv").read_text().splitlines()[0]
    assert len(first.split(",")[0]) == 10  # %10.5f


# --------------------------------------------------------------------------------------------
# Hand-computed and edge cases of the building blocks
# --------------------------------------------------------------------------------------------


def test_retrieval_ties_by_hand():
    """One query at the origin, positives at distances 1..5 along x, distractors at 2, 0.5, 4.5.

    Full list (positives first, then distractors in file order), ranked by ascending distance
    with ties keeping list order: 0.5n 1p 2p 2n 3p 4p 4.5n 5p -> positive ranks 2,3,5,6,8, so
    AP = sum_i (1/5) (i/r_i + prec(r_i - 1)) / 2 with prec(1) = 1e-10/1 (a negative first):
      i=1 r=2: (1/2 + 1e-10)/10;  i=2 r=3: (2/3 + 1/2)/10 = 7/60;  i=3 r=5: (3/5 + 2/4)/10 = 11/100;
      i=4 r=6: (4/6 + 3/5)/10 = 19/150;  i=5 r=8: (5/8 + 4/7)/10 = 67/560.
    Pool 6 (positives plus the first distractor, at 2): 1p 2p 2n 3p 4p 5p -> ranks 1,2,4,5,6:
      1/5 + 1/5 + (3/4 + 2/3)/10 + (4/5 + 3/4)/10 + (5/6 + 4/5)/10 = 2/5 + 17/120 + 31/200 + 49/300.
    """
    q = np.zeros((1, 2), np.float32)
    positives = np.array([[[[k, 0.0] for k in range(1, 6)]]], np.float32)  # (1, 1, 5, 2)
    distractors = np.array([[0.0, 2.0], [0.0, 0.5], [4.5, 0.0]], np.float32)
    full = 1 / 20 + 1e-11 + 7 / 60 + 11 / 100 + 19 / 150 + 67 / 560
    pool6 = 2 / 5 + 17 / 120 + 31 / 200 + 49 / 300
    for name in ("L2", "L1"):
        ap = engine.retrieval_ap(q, positives, np.array([0]), distractors, np.array([1, 1, 1]),
                                 get_distance(name), pool_sizes=(6, 100))
        assert ap.shape == (1, 1, 2)
        assert ap[0, 0, 0] == pytest.approx(pool6, abs=1e-15)
        assert ap[0, 0, 1] == pytest.approx(full, abs=1e-15)
    # same-sequence distractors are removed: with the 0.5 one in the query's sequence
    ap = engine.retrieval_ap(q, positives, np.array([0]), distractors, np.array([1, 0, 1]),
                             get_distance("L2"), pool_sizes=(100,))
    lst = [1, 2, 3, 4, 5, 2, 4.5]
    _, _, want = ref_pr([-v for v in lst], [1] * 5 + [0] * 2)
    assert ap[0, 0, 0] == pytest.approx(want, abs=1e-15)


@pytest.mark.parametrize("n", [1, 2, 4, 5, 6, 9, 10, 37, 200])
def test_verification_scores_small_and_tied(n):
    """verification_scores against the reference on integer distances (many ties), including
    sizes where int(0.2 N) is 0 or 1."""
    rng = np.random.default_rng(n)
    for _ in range(5):
        d_pos = rng.integers(0, 4, n).astype(np.float64)
        d_neg = rng.integers(1, 5, n).astype(np.float64)
        auc, ap = engine.verification_scores(d_pos, d_neg)
        scores = list(-np.concatenate([d_neg, d_pos]))
        labels = [0] * n + [1] * n
        _, _, want_auc = ref_roc(scores, labels)
        n_imb = n + int(0.2 * n)
        _, _, want_ap = ref_pr(scores[:n_imb], labels[:n_imb])
        assert auc == pytest.approx(want_auc, abs=1e-12)
        assert ap == pytest.approx(want_ap, abs=1e-12)


def test_verification_identical_distances_rank_negatives_first():
    """All 10 negatives and 10 positives at the same distance: [neg; pos] keeps negatives first,
    so ROC AUC = 0 and the imbalanced list (10 negatives then 2 positives) has
    AP = (1/2)(1/11 + 1e-10/10)/2 + (1/2)(2/12 + 1/11)/2."""
    d = np.full(10, 3.0)
    auc, ap = engine.verification_scores(d, d)
    assert auc == 0.0
    assert ap == pytest.approx(0.25 * (1 / 11 + 1e-11) + 0.25 * (2 / 12 + 1 / 11), abs=1e-15)


def test_image_id_mapping_matches_reference():
    """Image id 0 is ref at every noise level; k is ek/hk/tk (protocols.md §1.4)."""
    for noise in NOISE_LEVELS:
        for image in range(6):
            assert type_index(noise, image) == image_type(image, noise)
    assert image_type(0, "h") == 0 and image_type(3, "h") == 8 and image_type(5, "t") == 15


def _nudge(v: np.ndarray, rng, direction: float) -> np.ndarray:
    """``v`` with one coordinate moved by one float32 ulp."""
    out = v.copy()
    j = int(rng.integers(len(v)))
    out[j] = np.nextafter(out[j], np.float32(direction), dtype=np.float32)
    return out


@pytest.mark.parametrize("distance", ["L2", "L1"])
def test_near_ties_are_decided_exactly(distance, tmp_path):
    """Distances that differ by an ulp, or only by float64 summation order (a permuted copy of a
    positive seen from a query at the origin), must be decided like scipy's cdist decides them.

    Descriptors are modified in memory (1-ulp changes would not survive the CSV format), so the
    engine gets them as an HPatchesDescriptors object.
    """
    seqs = {"i_a": 60, "i_b": 50, "v_c": 70, "v_d": 40}
    case = make_hpatches_case(tmp_path, 21, seqs, dim=24, n_pairs=400, n_queries=40,
                              quantize=None, fmt="npy", duplicates=False, copies=0)
    desc = {s: a.copy() for s, a in ref_load_descriptors(case.descriptors_dir, case.sequences).items()}
    rng = np.random.default_rng(3)
    queries = read_patches(case.tasks_dir / "retr_queries_split-a.csv")
    distractors = read_patches(case.tasks_dir / "retr_distractors_split-a.csv")
    for n, (s, i) in enumerate(queries[:30]):
        if n % 2 == 0:
            desc[s][0, i] = 0.0  # query at the origin: a permuted positive is "equally" far
        others = [d for d in distractors if d[0] != s]
        t = int(rng.integers(1, 16))
        p = desc[s][t, i]
        picks = rng.choice(len(others), 4, replace=False)
        variants = [p[rng.permutation(len(p))], _nudge(p, rng, np.inf), _nudge(p, rng, -np.inf), p.copy()]
        for k, v in zip(picks, variants, strict=True):
            s2, j = others[int(k)]
            desc[s2][0, j] = v
    for s in case.sequences:
        nseq = seqs[s]
        for t in range(1, 16):
            for _ in range(6):
                a, b = (int(v) for v in rng.choice(nseq, 2, replace=False))
                kind = int(rng.integers(3))
                if kind == 0:
                    desc[s][0, a] = 0.0
                    desc[s][t, b] = desc[s][t, a][rng.permutation(desc[s].shape[2])]
                else:
                    desc[s][t, b] = _nudge(desc[s][t, a], rng, np.inf if kind == 1 else -np.inf)
    got = engine.evaluate_hpatches(HPatchesDescriptors(desc), case.tasks_dir, "a", distance=distance).to_json()
    want = ref_evaluate(desc, case.tasks_dir, "a", distance)
    bad = []
    for g, w in zip(got["matching"]["per_image"], want["matching"]["per_image"], strict=True):
        for key in ("ap", "sr"):
            if not _close(g[key], w[key]):
                bad.append(f"matching {w['sequence']}/{w['noise']}{w['image']}/{key}: {g[key]!r} vs {w[key]!r}")
    for noise in NOISE_LEVELS:
        for k, w in want["retrieval"]["map"][noise].items():
            if not _close(got["retrieval"]["map"][noise][k], w):
                bad.append(f"retrieval {noise}/{k}: {got['retrieval']['map'][noise][k]!r} vs {w!r}")
        for neg in ("intra", "inter"):
            for key, w in want["verification"][noise][neg].items():
                if not _close(got["verification"][noise][neg][key], w):
                    bad.append(f"verification {noise}/{neg}/{key}: {got['verification'][noise][neg][key]!r} vs {w!r}")
    assert not bad, "\n".join(bad)
