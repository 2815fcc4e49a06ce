"""Speed and memory of ``descbal eval hpatches`` on a generated case the size of split ``a``.

The case (fixed seed): 40 sequences (20 ``i_``, 20 ``v_``) of 500-2000 patches, 128-d unit
descriptors written as official CSVs (``%10.5f``), three row-aligned verification files of
1,000,000 rows, 10,000 retrieval queries and 20,000 distractors.

Measured, each in a fresh process: all three tasks end to end from CSV (parsing included, which
also writes the binary cache), then again from the binary cache; wall time per stage and peak
RSS. Baseline in the same run: a loop-based implementation with the official code's structure
(``tests/reference_hpatches.py``: per-pair scipy ``euclidean``, a full ``cdist`` and one
``pr`` per query and pool size), timed on a sample of each task and extrapolated linearly to
the full size; the sample's numbers are also compared with descbal's.

Usage: ``python benchmarks/hpatches_eval.py [--work DIR] [--scale 1.0]``. Target on 2 cores:
all three tasks <= 20 s from the binary cache, peak RSS <= 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from descbal.data.hpatches_layout import TYPES
from descbal.data.taskgen import write_splits, write_verification_tasks
from descbal.eval.hpatches_io import write_descriptor_csv

SEED = 20240611
NOISE = {"e": 0.35, "h": 0.6, "t": 0.85}


def generate(work: Path, scale: float) -> None:
    """Write descriptors and tasks under ``work`` unless a previous run left the same case."""
    marker = work / "case.json"
    case = {"seed": SEED, "scale": scale, "version": 1}
    if marker.is_file() and json.loads(marker.read_text()) == case:
        print(f"reusing the generated case in {work}", file=sys.stderr)
        return
    rng = np.random.default_rng(SEED)
    names = [f"i_seq{k:02d}" for k in range(20)] + [f"v_seq{k:02d}" for k in range(20)]
    lengths = {n: int(rng.integers(500, 2001)) for n in names}
    t0 = time.time()
    for n in names:
        ref = rng.standard_normal((lengths[n], 128))
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        for t in TYPES:
            x = ref if t == "ref" else ref + NOISE[t[0]] * rng.standard_normal(ref.shape) / np.sqrt(128) * (
                1 + 0.1 * int(t[1]))
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            write_descriptor_csv(work / "descriptors" / n / f"{t}.csv", x.astype(np.float32))
    print(f"descriptors written in {time.time() - t0:.0f} s", file=sys.stderr)
    tasks = work / "tasks"
    write_splits(tasks, {"a": names})
    write_verification_tasks(tasks, "a", lengths, int(1_000_000 * scale), rng)
    pool = [(n, i) for n in names for i in range(lengths[n])]
    order = rng.permutation(len(pool))
    nq, nd = int(10_000 * scale), int(20_000 * scale)
    for kind, sel in (("queries", order[:nq]), ("distractors", order[nq : nq + nd])):
        with open(tasks / f"retr_{kind}_split-a.csv", "w") as f:
            f.write("s,idx\n")
            f.writelines(f"{pool[i][0]},{pool[i][1]}\n" for i in sel)
    marker.write_text(json.dumps(case))


def child(work: Path, use_cache: bool, out: Path) -> None:
    """One timed evaluation (run in a fresh process)."""
    from descbal.eval.distances import get_distance
    from descbal.eval.hpatches import FlatDescriptors, evaluate_matching, evaluate_retrieval, evaluate_verification
    from descbal.eval.hpatches_io import get_split, load_descriptors

    times = {}
    t0 = time.perf_counter()
    split = get_split(work / "tasks", "a")
    desc = load_descriptors(work / "descriptors", split["test"], use_cache=use_cache)
    times["load"] = time.perf_counter() - t0
    dist = get_distance("L2")
    t = time.perf_counter()
    flat = FlatDescriptors(desc, split["test"])
    res = {"verification": evaluate_verification(flat, work / "tasks", "a", dist)}
    times["verification"] = time.perf_counter() - t
    t = time.perf_counter()
    res["matching"] = evaluate_matching(desc, split["test"], dist)
    times["matching"] = time.perf_counter() - t
    t = time.perf_counter()
    res["retrieval"] = evaluate_retrieval(flat, work / "tasks", "a", dist)
    times["retrieval"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    out.write_text(json.dumps({"times": times, "peak_rss_gib": rss, "result": res}))


def run_child(work: Path, use_cache: bool) -> dict:
    out = work / f"child-{int(use_cache)}.json"
    subprocess.run([sys.executable, __file__, "--work", str(work), "--child", "cache" if use_cache else "csv",
                    "--child-out", str(out)], check=True)
    return json.loads(out.read_text())


def _official_style(desc: dict, seqs: list[str], pos: list, intra: list, inter: list, queries: list,
                    distractors: list) -> tuple[dict, dict]:
    """The official code's structure with its numerics: one scipy ``euclidean`` call per pair,
    ``cdist`` + ``argmin`` per image pair, a ``cdist`` row and one ``pr`` per query and pool size.
    Returns (results, seconds per task)."""
    from scipy.spatial import distance as spd

    from descbal.eval import metrics
    from descbal.eval.hpatches import POOL_SIZES
    from descbal.eval.hpatches_io import type_index

    secs, res = {}, {}
    t0 = time.perf_counter()
    ver = {}
    for noise in "eht":
        d = {}
        for name, rows in (("pos", pos), ("intra", intra), ("inter", inter)):
            d[name] = np.array([spd.euclidean(desc[s1][type_index(noise, t1)][i1], desc[s2][type_index(noise, t2)][i2])
                                for s1, t1, i1, s2, t2, i2 in rows])
        n = len(pos)
        lab = np.r_[np.zeros(n), np.ones(n)]
        ver[noise] = {}
        for name in ("intra", "inter"):
            sc = -np.r_[d[name], d["pos"]]
            n_imb = n + int(n * 0.2)
            ver[noise][name] = {"balanced_auc": metrics.roc(sc, lab)[2], "imbalanced_ap": metrics.pr(sc[:n_imb], lab[:n_imb])[2]}
    secs["verification"] = time.perf_counter() - t0
    res["verification"] = ver
    t0 = time.perf_counter()
    per = []
    for seq in seqs:
        ref = desc[seq][0]
        gt = np.arange(len(ref))
        for noise in "eht":
            for image in range(1, 6):
                dm = spd.cdist(ref, desc[seq][type_index(noise, image)], "euclidean")
                idx = np.argmin(dm, axis=1)
                ok = idx == gt
                per.append({"sequence": seq, "noise": noise, "image": image,
                            "ap": metrics.pr(-dm[gt, idx], ok, numpos=len(gt))[2], "sr": ok.mean()})
    secs["matching"] = time.perf_counter() - t0
    res["matching"] = per
    t0 = time.perf_counter()
    dmat = np.stack([desc[s][0][i] for s, i in distractors])
    dseq = np.array([s for s, _ in distractors])
    qmat = np.stack([desc[s][0][i] for s, i in queries])
    dall = spd.cdist(qmat, dmat, "euclidean")
    sums = {noise: np.zeros(len(POOL_SIZES)) for noise in "eht"}
    for qi, (s, i) in enumerate(queries):
        neg = dall[qi][dseq != s]
        for noise in "eht":
            pos_d = spd.cdist(qmat[qi : qi + 1], np.stack([desc[s][type_index(noise, k)][i] for k in range(1, 6)]))[0]
            lst = np.r_[pos_d, neg]
            gt = np.r_[np.ones(5), np.zeros(len(neg))]
            sums[noise] += [metrics.pr(-lst[:k], gt[:k])[2] for k in POOL_SIZES]
    secs["retrieval"] = time.perf_counter() - t0
    res["retrieval"] = {n: (v / len(queries)).tolist() for n, v in sums.items()}
    return res, secs


def _read_rows(path: Path, limit: int) -> list:
    with open(path) as f:
        next(f)
        rows = []
        for line in f:
            if len(rows) == limit:
                break
            p = line.strip().split(",")
            rows.append((p[0], *map(int, p[1:])) if len(p) == 2 else (p[0], int(p[1]), int(p[2]), p[3], int(p[4]), int(p[5])))
    return rows


def baseline(work: Path, fraction: float = 0.01, match_seqs: int = 4) -> dict:
    """Time the official-style baseline on samples, extrapolate, and compare with descbal on the
    same samples (sampled task files written to ``work/sample-tasks``)."""
    from descbal.data.taskgen import write_splits
    from descbal.eval.hpatches import evaluate_hpatches
    from descbal.eval.hpatches_io import get_split, load_descriptors

    tasks = work / "tasks"
    seqs = get_split(tasks, "a")["test"]
    desc_obj = load_descriptors(work / "descriptors", seqs)
    desc = desc_obj.data
    n_ver = sum(1 for _ in open(tasks / "verif_pos_split-a.csv")) - 1
    n_q = sum(1 for _ in open(tasks / "retr_queries_split-a.csv")) - 1
    k_ver, k_q = max(100, int(n_ver * fraction)), max(10, int(n_q * fraction))
    pos, intra, inter = (_read_rows(tasks / f"verif_{k}_split-a.csv", k_ver) for k in ("pos", "neg_intra", "neg_inter"))
    queries = _read_rows(tasks / "retr_queries_split-a.csv", k_q)
    distractors = _read_rows(tasks / "retr_distractors_split-a.csv", -1)
    mseqs = seqs[:: max(1, len(seqs) // match_seqs)][:match_seqs]
    base_res, secs = _official_style(desc, mseqs, pos, intra, inter, queries, distractors)
    # descbal on exactly the same samples
    st = work / "sample-tasks"
    write_splits(st, {"a": seqs, "m": mseqs})
    for kind, rows in (("verif_pos", pos), ("verif_neg_intra", intra), ("verif_neg_inter", inter)):
        with open(st / f"{kind}_split-a.csv", "w") as f:
            f.write("s1,t1,idx1,s2,t2,idx2\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    for kind, rows in (("retr_queries", queries), ("retr_distractors", distractors)):
        with open(st / f"{kind}_split-a.csv", "w") as f:
            f.write("s,idx\n" + "".join(f"{a},{b}\n" for a, b in rows))
    ours = evaluate_hpatches(desc_obj, st, "a", ("verification", "retrieval")).to_json()
    ours_m = evaluate_hpatches(desc_obj, st, "m", ("matching",)).to_json()
    diff_v = max(abs(ours["verification"][n][k][m] - base_res["verification"][n][k][m])
                 for n in "eht" for k in ("intra", "inter") for m in ("balanced_auc", "imbalanced_ap"))
    diff_m = max(max(abs(a["ap"] - b["ap"]), abs(a["sr"] - b["sr"]))
                 for a, b in zip(ours_m["matching"]["per_image"], base_res["matching"], strict=True))
    diff_r = max(abs(ours["retrieval"]["map"][n][str(k)] - base_res["retrieval"][n][j])
                 for n in "eht" for j, k in enumerate(ours["retrieval"]["pool_sizes"]))
    n2_all = sum(desc[s].shape[1] ** 2 for s in seqs)
    n2_sample = sum(desc[s].shape[1] ** 2 for s in mseqs)
    return {
        "verification": {"sample": f"{k_ver:,} of {n_ver:,} rows", "seconds": secs["verification"],
                         "estimate": secs["verification"] * n_ver / k_ver, "max_abs_diff": diff_v},
        "matching": {"sample": f"{len(mseqs)} of {len(seqs)} seqs", "seconds": secs["matching"],
                     "estimate": secs["matching"] * n2_all / n2_sample, "max_abs_diff": diff_m},
        "retrieval": {"sample": f"{k_q:,} of {n_q:,} queries", "seconds": secs["retrieval"],
                      "estimate": secs["retrieval"] * n_q / k_q, "max_abs_diff": diff_r},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "descbal-bench-hpatches")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the task-file sizes (1.0 = split a)")
    ap.add_argument("--child", choices=["csv", "cache"], help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--no-baseline", action="store_true", help="skip the loop-based baseline")
    args = ap.parse_args()
    if args.child:
        child(args.work, args.child == "cache", args.child_out)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    generate(args.work, args.scale)
    cache = args.work / "descriptors" / ".descbal-cache.h5"
    if cache.exists():
        cache.unlink()
    csv_run = run_child(args.work, use_cache=True)  # parses the CSVs and writes the cache
    cache_run = run_child(args.work, use_cache=True)  # reads the cache
    same = json.dumps(csv_run["result"], sort_keys=True) == json.dumps(cache_run["result"], sort_keys=True)
    print(f"\nHPatches evaluation, split-a-sized case (scale {args.scale}), {os.cpu_count()} CPU cores")
    print(f"{'stage':<14}{'from CSV (s)':>14}{'from cache (s)':>16}")
    for k in ("load", "verification", "matching", "retrieval", "total"):
        print(f"{k:<14}{csv_run['times'][k]:>14.2f}{cache_run['times'][k]:>16.2f}")
    print(f"{'peak RSS GiB':<14}{csv_run['peak_rss_gib']:>14.2f}{cache_run['peak_rss_gib']:>16.2f}")
    print(f"results identical from CSV and from cache: {same}")
    ok = cache_run["times"]["total"] <= 20 and max(csv_run["peak_rss_gib"], cache_run["peak_rss_gib"]) <= 4
    print(f"target (<= 20 s from cache, peak RSS <= 4 GB): {'met' if ok else 'NOT met'}")
    if not args.no_baseline:
        b = baseline(args.work)
        print("\nBaseline (official code's structure, loop-based; sampled and extrapolated):")
        print(f"{'task':<14}{'sample':>22}{'sample s':>10}{'full est. s':>13}{'descbal s':>11}{'speed-up':>10}{'max |diff|':>12}")
        for task in ("verification", "matching", "retrieval"):
            r = b[task]
            ours = cache_run["times"][task]
            print(f"{task:<14}{r['sample']:>22}{r['seconds']:>10.1f}{r['estimate']:>13.0f}{ours:>11.2f}"
                  f"{r['estimate'] / ours:>9.0f}x{r['max_abs_diff']:>12.1e}")
        total = sum(b[t]["estimate"] for t in ("verification", "matching", "retrieval"))
        print(f"{'all three':<14}{'':>22}{'':>10}{total:>13.0f}{cache_run['times']['total']:>11.2f}"
              f"{total / cache_run['times']['total']:>9.0f}x")


if __name__ == "__main__":
    main()
