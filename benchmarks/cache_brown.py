"""Speed of ``cache_brown`` and ``load_patchset`` on a generated Brown set the size of liberty.

The case (fixed seed, written once to ``--work`` and reused): 450,092 patches in 1,759 tiles of
1024x1024 8-bit BMP (random pixels; BMP is uncompressed, so content does not change the cost),
``info.txt`` with 3D point ids in runs of 2-7 patches, and an ``m50_100000_100000_0.txt`` of
100,000 pairs (half matching).

Measured in one process: ``cache_brown`` end to end (read tiles + info + pairs, write the HDF5
file) with the raw files in the page cache ("warm") and after evicting them with
``posix_fadvise(DONTNEED)`` ("cold"); the idempotent re-run (skipped); ``load_patchset`` of the
result from the page cache; peak RSS. Baseline in the same run: torchvision PhotoTour's
structure, one crop per patch (``PIL.Image.open`` + ``crop`` + ``np.array(getdata())`` when
Pillow is importable, else ``cv2.imread`` + one array slice copy per patch), plus its line-by-line
``info.txt`` / pairs parsing; the tile loop is timed on ``--baseline-tiles`` tiles and
extrapolated linearly to all tiles, which the output says.

Usage: ``python benchmarks/cache_brown.py [--work DIR] [--baseline-tiles 200]``. Targets on 2
cores: ``cache_brown`` <= 60 s, ``load_patchset`` <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from descbal.data.brown import PAIRS_FILE, cache_brown, list_tiles, read_brown_folder
from descbal.data.patchset import load_patchset

SEED = 20240612
NUM_PATCHES = 450_092  # liberty
NUM_PAIRS = 100_000


def generate(raw: Path) -> None:
    """Write the raw folder unless a previous run left the same case."""
    marker = raw / "case.json"
    case = {"seed": SEED, "num_patches": NUM_PATCHES, "num_pairs": NUM_PAIRS, "version": 2}
    if marker.is_file() and json.loads(marker.read_text()) == case:
        print(f"reusing the generated case in {raw}", file=sys.stderr)
        return
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    t0 = time.perf_counter()
    n_tiles = -(-NUM_PATCHES // 256)
    for t in range(n_tiles):
        tile = rng.integers(0, 256, (1024, 1024), dtype=np.uint8)
        if not cv2.imwrite(str(raw / f"patches{t:04d}.bmp"), tile):
            raise OSError("cannot write tile")
    # 3D points seen in 2-7 patches each, in file order like the real sets.
    runs = rng.integers(2, 8, size=NUM_PATCHES)
    point = np.repeat(np.arange(NUM_PATCHES), runs)[:NUM_PATCHES]
    (raw / "info.txt").write_text("".join(f"{p} 0\n" for p in point.tolist()))
    half = NUM_PAIRS // 2
    same = np.flatnonzero(point[1:] == point[:-1])
    a = rng.choice(same, half, replace=False)
    pos = np.stack([a, a + 1], axis=1)
    neg = rng.integers(0, NUM_PATCHES, size=(2 * (NUM_PAIRS - half), 2))
    neg = neg[point[neg[:, 0]] != point[neg[:, 1]]][: NUM_PAIRS - half]
    pairs = np.concatenate([pos, neg])[rng.permutation(len(pos) + len(neg))]
    (raw / PAIRS_FILE).write_text("".join(f"{i} {point[i]} 0 {j} {point[j]} 0 0\n" for i, j in pairs.tolist()))
    marker.write_text(json.dumps(case))
    print(f"generated {n_tiles} tiles in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def evict(paths: list[Path]) -> None:
    """Drop ``paths`` from the page cache (clean pages only, hence the sync first)."""
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def baseline(raw: Path, n_tiles: int) -> dict:
    """torchvision PhotoTour's reading structure, one crop per patch, on the first ``n_tiles``
    tiles; label and pair parsing line by line on the whole files."""
    try:
        from PIL import Image
    except ImportError:
        Image = None
    tiles = list_tiles(raw)[:n_tiles]
    t0 = time.perf_counter()
    patches = []
    for path in tiles:
        if Image is not None:
            img = Image.open(path)
            for y in range(0, 1024, 64):
                for x in range(0, 1024, 64):
                    patch = img.crop((x, y, x + 64, y + 64))
                    patches.append(np.array(patch.getdata(), dtype=np.uint8).reshape(64, 64))
        else:
            img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            for y in range(0, 1024, 64):
                for x in range(0, 1024, 64):
                    patches.append(np.array(img[y : y + 64, x : x + 64]))
    stacked = np.array(patches)
    tile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(raw / "info.txt") as f:
        labels = [int(line.split()[0]) for line in f]
    matches = []
    with open(raw / PAIRS_FILE) as f:
        for line in f:
            p = line.split()
            matches.append((int(p[0]), int(p[3]), int(p[1] == p[4])))
    text_s = time.perf_counter() - t0
    return {"reader": "PIL crop + getdata" if Image is not None else "cv2.imread + per-patch slice copy (Pillow absent)",
            "tiles": len(tiles), "tile_seconds": tile_s, "text_seconds": text_s, "patches": stacked,
            "labels": len(labels), "pairs": len(matches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "descbal-bench-brown")
    ap.add_argument("--baseline-tiles", type=int, default=200, help="tiles the per-patch baseline reads")
    args = ap.parse_args()
    raw = args.work / "liberty"
    out = args.work / "liberty.h5"
    generate(raw)
    inputs = list_tiles(raw) + [raw / "info.txt", raw / PAIRS_FILE]
    n_tiles = len(list_tiles(raw))
    rows = []
    os.sync()  # the generated files are not written back during the timings

    evict(inputs + ([out] if out.exists() else []))
    cold = cache_brown("liberty", args.work, raw=raw, out=out, overwrite=True)
    rows.append(("cache_brown, raw files not in page cache", cold.seconds, cold.num_patches))
    os.sync()
    warm = cache_brown("liberty", args.work, raw=raw, out=out, overwrite=True)
    rows.append(("cache_brown, raw files in page cache", warm.seconds, warm.num_patches))
    os.sync()
    t = time.perf_counter()
    read_brown_folder(raw)
    rows.append(("  of which read_brown_folder (no write)", time.perf_counter() - t, NUM_PATCHES))
    skip = cache_brown("liberty", args.work, raw=raw, out=out)
    assert skip.skipped
    t = time.perf_counter()
    ps = load_patchset(out)
    load_s = time.perf_counter() - t
    rows.append(("load_patchset (page cache)", load_s, len(ps)))

    b = baseline(raw, args.baseline_tiles)
    per_tile = b["tile_seconds"] / b["tiles"]
    base_total = per_tile * n_tiles + b["text_seconds"]
    same = np.array_equal(b["patches"], ps.patches[: len(b["patches"])])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    print(f"\nBrown cache, liberty-sized case: {NUM_PATCHES:,} patches, {n_tiles} tiles, "
          f"{warm.num_pairs:,} pairs; {os.cpu_count()} CPU cores")
    print(f"{'step':<42}{'seconds':>9}{'patches/s':>12}{'speed-up':>10}")
    for name, s, n in rows:
        speedup = f"{base_total / s:>9.1f}x" if not name.startswith("load") else ""
        print(f"{name:<42}{s:>9.2f}{n / s:>12,.0f}{speedup}")
    print(f"{'idempotent re-run (skipped)':<42}{skip.seconds:>9.3f}")
    print(f"{'baseline (per-patch loop, no write)':<42}{base_total:>9.1f}{NUM_PATCHES / base_total:>12,.0f}{1.0:>9.1f}x")
    print(f"  baseline reader: {b['reader']}")
    print(f"  baseline timed on {b['tiles']} of {n_tiles} tiles ({b['tile_seconds']:.2f} s) and extrapolated "
          f"linearly; + {b['text_seconds']:.2f} s parsing info.txt and pairs in full; no file written")
    print(f"baseline patches identical to the cache's first {len(b['patches']):,}: {same}")
    print(f"peak RSS {rss:.2f} GiB")
    worst = max(warm.seconds, cold.seconds)
    print(f"target cache_brown <= 60 s on 2 cores: {'met' if worst <= 60 else 'NOT met'} ({worst:.1f} s worst case); "
          f"load_patchset <= 5 s: {'met' if load_s <= 5 else 'NOT met'} ({load_s:.2f} s)")


if __name__ == "__main__":
    main()
