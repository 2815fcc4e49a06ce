"""Typed results: every ``to_json()`` is exactly the documented / previous JSON document."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from descbal.data.brown import BrownCacheResult
from descbal.data.download import FetchedFile, FetchReport
from descbal.data.hpatches_data import HPatchesCacheResult
from descbal.data.make_benchmark import BenchmarkResult
from descbal.data.selfsup import PoolResult
from descbal.data.sequences import SequencesCacheResult
from descbal.eval.brown import BrownResult, evaluate_brown
from descbal.eval.hpatches import HPatchesResult
from descbal.eval.sequences import SequencesResult
from descbal.extract.pipeline import ExtractResult
from descbal.match import MatchResult
from descbal.quickstart import QuickstartResult


def round_trip(result: Any) -> Any:
    """The document as ``--json`` writes and a reader loads it."""
    return json.loads(json.dumps(result.to_json(), allow_nan=False))


def test_hpatches_document_omits_tasks_not_run() -> None:
    full = HPatchesResult("a", "L2", ["i_a", "v_b"],
                          verification={"e": {"intra": {"balanced_auc": 0.5, "imbalanced_ap": 0.25}}},
                          matching={"per_image": [{"sequence": "i_a", "noise": "e", "image": 1, "ap": 0.75, "sr": 1.0}]},
                          retrieval={"pool_sizes": [100], "map": {"e": {"100": 0.125}}},
                          headline={"verification": 0.25, "matching": 0.75, "retrieval": 0.125})
    doc = round_trip(full)
    assert doc == {"split": "a", "distance": "L2", "sequences": ["i_a", "v_b"],
                   "verification": {"e": {"intra": {"balanced_auc": 0.5, "imbalanced_ap": 0.25}}},
                   "matching": {"per_image": [{"sequence": "i_a", "noise": "e", "image": 1, "ap": 0.75, "sr": 1.0}]},
                   "retrieval": {"pool_sizes": [100], "map": {"e": {"100": 0.125}}},
                   "headline": {"verification": 0.25, "matching": 0.75, "retrieval": 0.125}}
    assert list(doc) == ["split", "distance", "sequences", "verification", "matching", "retrieval", "headline"]
    only = HPatchesResult("view", "L1", ["v_b"], matching={"per_image": []}, headline={"matching": 0.5},
                          model="sift")
    assert round_trip(only) == {"split": "view", "distance": "L1", "sequences": ["v_b"], "matching": {"per_image": []},
                                "headline": {"matching": 0.5}, "model": "sift"}


def test_brown_document_from_a_hand_computed_case() -> None:
    # 2 matching pairs at distances 0 and 1, 2 non-matching at 2 and 0.5: FPR95 (hardnet) = 1/2
    desc = np.array([[0, 0], [0, 0], [1, 0], [0, 0], [2, 0], [0.5, 0]], np.float32)
    id1, id2 = np.array([0, 0, 0, 0]), np.array([1, 2, 4, 5])
    labels = np.array([1, 1, 0, 0])
    result = evaluate_brown(desc, id1, id2, labels)
    assert isinstance(result, BrownResult)
    assert round_trip(result) == {"pairs": 4, "matches": 2, "non_matches": 2, "definition": "hardnet", "fpr95": 0.5}


def test_sequences_document() -> None:
    model = {"name": "sift", "provenance": {"model": "sift"}, "thresholds": [1, 2], "num_features": 10.0,
             "mma": {"overall": [0.5, 1.0], "illumination": None, "viewpoint": [0.5, 1.0]},
             "num_matches": {"overall": 4.0, "illumination": None, "viewpoint": 4.0},
             "homography_accuracy": {"overall": {"1": 0.0, "3": 1.0, "5": 1.0}, "illumination": None,
                                     "viewpoint": {"1": 0.0, "3": 1.0, "5": 1.0}},
             "num_pairs": {"overall": 1, "illumination": 0, "viewpoint": 1},
             "pairs": [{"sequence": "v_x", "k": 2, "num_matches": 4, "mma": [0.5, 1.0], "corner_error": None}],
             "seconds": 0.25}
    result = SequencesResult(root="seqs", sequences=["v_x"], thresholds=[1, 2], homography_eps=[1, 3, 5], detector="sift",
                             max_keypoints=100, geometry={"mag": 5.0, "upright": False}, ratio=None, models=[model])
    assert round_trip(result) == {"root": "seqs", "sequences": ["v_x"], "thresholds": [1, 2], "homography_eps": [1, 3, 5],
                                  "detector": "sift", "max_keypoints": 100, "geometry": {"mag": 5.0, "upright": False},
                                  "ratio": None, "models": [model]}


def test_extract_and_match_documents() -> None:
    ext = ExtractResult(images_dir="imgs", out="f.h5", format="hloc", images=3, extracted=2, skipped_existing=0,
                        failed=[{"name": "bad.jpg", "reason": "empty file"}], num_keypoints=40, seconds=2.0,
                        images_per_s=1.0, provenance={"detector": {"name": "sift", "max_keypoints": 20}})
    assert round_trip(ext) == {"images_dir": "imgs", "out": "f.h5", "format": "hloc", "images": 3, "extracted": 2,
                               "skipped_existing": 0, "failed": [{"name": "bad.jpg", "reason": "empty file"}],
                               "num_keypoints": 40, "seconds": 2.0, "images_per_s": 1.0,
                               "provenance": {"detector": {"name": "sift", "max_keypoints": 20}}}
    m = MatchResult(features="f.h5", pairs=None, out="m.h5", num_pairs=3, matched=2, skipped_existing=1,
                    mean_matches=7.5, seconds=0.5, ratio=0.8)
    assert round_trip(m) == {"features": "f.h5", "pairs": None, "out": "m.h5", "num_pairs": 3, "matched": 2,
                             "skipped_existing": 1, "mean_matches": 7.5, "seconds": 0.5, "ratio": 0.8}


def test_cache_documents() -> None:
    assert round_trip(BrownCacheResult("liberty", "b/liberty.h5", 612, 9, 1.5, False, "ab")) == {
        "name": "liberty", "path": "b/liberty.h5", "num_patches": 612, "num_pairs": 9, "seconds": 1.5,
        "skipped": False, "source_sha256": "ab"}
    assert round_trip(HPatchesCacheResult("hpatches", "h.h5", 3, 15, None, 0, 0.5, True, "cd")) == {
        "name": "hpatches", "path": "h.h5", "num_sequences": 3, "num_patches": 15, "tasks": None, "tasks_copied": 0,
        "seconds": 0.5, "skipped": True, "source_sha256": "cd"}
    assert round_trip(SequencesCacheResult("sequences", "s.h5", 2, 12, 0.25, False, "ef")) == {
        "name": "sequences", "path": "s.h5", "num_sequences": 2, "num_images": 12, "seconds": 0.25, "skipped": False,
        "source_sha256": "ef"}


def test_pool_document_when_skipped_and_when_built() -> None:
    assert round_trip(PoolResult(path="p.h5", skipped=True, source_sha256="aa")) == {
        "path": "p.h5", "skipped": True, "source_sha256": "aa"}
    built = PoolResult(path="p.h5", skipped=False, source_sha256="aa", images=4, skipped_images=[], num_patches=0,
                       num_classes=0, num_pairs=0, holdout_patches=0, seconds=0.5)
    assert round_trip(built) == {"path": "p.h5", "skipped": False, "source_sha256": "aa", "images": 4,
                                 "skipped_images": [], "num_patches": 0, "num_classes": 0, "num_pairs": 0,
                                 "holdout_patches": 0, "seconds": 0.5}  # zeros are kept, only None is left out


def test_benchmark_quickstart_and_download_documents() -> None:
    bench = BenchmarkResult(out="b", split="full", sequences={"v_a": 60}, skipped=[{"sequence": "v_z", "reason": "r"}],
                            patches="b/patches", tasks="b/tasks")
    assert round_trip(bench) == {"out": "b", "split": "full", "sequences": {"v_a": 60},
                                 "skipped": [{"sequence": "v_z", "reason": "r"}], "patches": "b/patches",
                                 "tasks": "b/tasks"}
    row = {"descriptor": "SIFT", "verification": 0.5, "matching": 0.25, "retrieval": 0.125, "fpr95": None}
    qs = QuickstartResult(rows=[row], model="q/run/model.pt", benchmark="q/benchmark", pool="q/pool.h5",
                          sequences=["v_a"])
    assert round_trip(qs) == {"rows": [row], "model": "q/run/model.pt", "benchmark": "q/benchmark", "pool": "q/pool.h5",
                              "sequences": ["v_a"]}
    f = FetchedFile(key="brown/liberty", path="r/brown/liberty", url="http://h/liberty.zip", size=10, sha256="ff",
                    skipped=False, resumed=True, verified=True)
    assert round_trip(FetchReport(root="r", files=[f])) == {
        "root": "r", "files": [{"key": "brown/liberty", "path": "r/brown/liberty", "url": "http://h/liberty.zip",
                                "size": 10, "sha256": "ff", "skipped": False, "resumed": True, "verified": True}]}
