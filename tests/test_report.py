"""The CLI's summary lines and tables, built from typed results (descbal.report): exact text."""

from __future__ import annotations

import io

from rich.console import Console

from descbal.data.brown import BrownCacheResult
from descbal.data.download import FetchedFile, FetchReport
from descbal.data.make_benchmark import BenchmarkResult
from descbal.data.selfsup import PoolResult
from descbal.eval.brown import BrownResult
from descbal.extract.pipeline import ExtractResult
from descbal.match import MatchResult
from descbal.report import (
    benchmark_report,
    brown_table,
    cache_report,
    download_report,
    extract_report,
    match_report,
    pool_report,
    train_report,
)
from descbal.train.trainer import TrainSummary  # noqa: E402


def rendered(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=False).print(renderable)
    return out.getvalue()


def test_summary_lines() -> None:
    ext = ExtractResult(images_dir="imgs", out="f.h5", format="hloc", images=3, extracted=2, skipped_existing=1,
                        failed=[{"name": "bad.jpg", "reason": "empty file"}], num_keypoints=40, seconds=2.0,
                        images_per_s=1.04, provenance={})
    assert extract_report(ext) == ["[yellow]skipped[/yellow] bad.jpg: empty file",
                                   "f.h5: 2 image(s) extracted (40 keypoints, 1.0 images/s), 1 already there, 1 failed"]
    m = MatchResult(features="f.h5", pairs="p.txt", out="m.h5", num_pairs=3, matched=2, skipped_existing=1,
                    mean_matches=7.5, seconds=0.5, ratio=None)
    assert match_report(m) == ["m.h5: 2 pair(s) matched (8 matches on average), 1 already there"]
    caches = [BrownCacheResult("liberty", "b/liberty.h5", 612, 9, 1.25, False, "ab"),
              BrownCacheResult("yosemite", "b/yosemite.h5", 612, 9, 0.0, True, "cd")]
    assert cache_report(caches) == ["b/liberty.h5: written in 1.2 s", "b/yosemite.h5: up to date, skipped"]
    assert pool_report(PoolResult(path="p.h5", skipped=True, source_sha256="aa")) == ["p.h5: up to date, skipped"]
    built = PoolResult(path="p.h5", skipped=False, source_sha256="aa", images=4,
                       skipped_images=[{"path": "x.png", "reason": "unreadable"}], num_patches=300, num_classes=100,
                       num_pairs=50, holdout_patches=30, seconds=0.5)
    assert pool_report(built) == ["skipped x.png: unreadable",
                                  "p.h5: 300 patches of 100 keypoints from 3 photos, 50 held-out pairs"]
    bench = BenchmarkResult(out="b", split="full", sequences={"v_a": 60}, skipped=[{"sequence": "v_z", "reason": "r"}],
                            patches="b/patches", tasks="b/tasks")
    assert benchmark_report(bench) == ["skipped v_z: r", "benchmark written to b: 1 sequences; evaluate with "
                                       "'descbal eval hpatches --descriptors DIR --tasks b/tasks --split full'"]
    summary = TrainSummary(False, 6, 1.0, ({"epoch": 1, "val_fpr95": 0.12345}, {"epoch": 2, "val_fpr95": None}), "r/model.pt")
    assert train_report(summary) == ["epoch 1: validation FPR95 12.35 %", "model written to r/model.pt"]


def test_tables() -> None:
    text = rendered(brown_table(BrownResult(pairs=4, matches=2, non_matches=2, definition="hardnet", fpr95=0.5)))
    assert "Brown FPR95 (hardnet definition)" in text and "50.0000" in text
    f = FetchedFile(key="brown/liberty", path="r/brown/liberty", url="u", size=2_500_000, sha256="0123456789abcdef99",
                    skipped=True, resumed=False, verified=False)
    table, line = download_report(FetchReport(root="r", files=[f]))
    text = rendered(table)
    assert "Downloads under r" in text and "already downloaded (no known checksum: recorded in manifest.json)" in text
    assert "2.5" in text and "0123456789abcdef..." in text
    assert line == "Everything was already downloaded; nothing to do."
