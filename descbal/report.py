"""What the CLI shows on stderr: every table and summary line, built from the typed results.

Each function takes a pipeline's result and returns rich renderables (tables, and strings with
rich markup) that :func:`descbal.console.show` prints; numbers shown as percentages are
``100 x`` the result's fractions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from rich.table import Table

from descbal.eval.hpatches import POOL_SIZES
from descbal.eval.hpatches_io import NOISE_LEVELS
from descbal.results import STRICT_EXIT_CODE, JsonResult

if TYPE_CHECKING:  # only for annotations: the report of a download need not import torch
    from descbal.data.download import FetchReport
    from descbal.data.make_benchmark import BenchmarkResult
    from descbal.data.selfsup import PoolResult
    from descbal.eval.brown import BrownResult
    from descbal.eval.hpatches import HPatchesResult
    from descbal.eval.sequences import SequencesResult
    from descbal.eval.stereo import StereoResult
    from descbal.export import ExportResult
    from descbal.extract.pipeline import ExtractResult
    from descbal.match import MatchResult
    from descbal.quickstart import QuickstartResult
    from descbal.sfm.colmap_db import ColmapResult
    from descbal.sfm.evaluate import SfmEvalResult
    from descbal.sfm.reconstruct import ReconstructResult
    from descbal.sfm.trainset import SfmSetResult
    from descbal.train.trainer import TrainSummary

Renderable = Table | str

_NOISE_NAMES = {"e": "Easy", "h": "Hard", "t": "Tough"}


def _pct(x: float) -> str:
    return f"{100.0 * x:6.2f}"


# ------------------------------------------------------------------------------ eval


def hpatches_tables(result: HPatchesResult) -> list[Table]:
    """Per-noise tables for each task run, then the headline numbers (percentages); titles name
    the model when the result has one."""
    tables = []
    who = f"{result.model}: " if result.model else ""
    if result.verification is not None:
        v = result.verification
        t = Table(title=f"{who}Verification (split {result.split}, {result.distance})")
        t.add_column("noise")
        for col in ("bal. AUC inter", "bal. AUC intra", "imb. AP inter", "imb. AP intra"):
            t.add_column(col, justify="right")
        for n in NOISE_LEVELS:
            t.add_row(_NOISE_NAMES[n], _pct(v[n]["inter"]["balanced_auc"]), _pct(v[n]["intra"]["balanced_auc"]),
                      _pct(v[n]["inter"]["imbalanced_ap"]), _pct(v[n]["intra"]["imbalanced_ap"]))
        tables.append(t)
    if result.matching is not None:
        rows = result.matching["per_image"]
        t = Table(title=f"{who}Matching mAP (mean over sequences and images)")
        t.add_column("noise")
        for col in ("illumination", "viewpoint", "all"):
            t.add_column(col, justify="right")
        for n in NOISE_LEVELS:
            cells = []
            for prefix in ("i_", "v_", ""):
                vals = [r["ap"] for r in rows if r["noise"] == n and r["sequence"].startswith(prefix)]
                cells.append(_pct(float(np.mean(vals))) if vals else "-")
            t.add_row(_NOISE_NAMES[n], *cells)
        tables.append(t)
    if result.retrieval is not None:
        m = result.retrieval["map"]
        t = Table(title=f"{who}Retrieval mAP by pool size")
        t.add_column("noise")
        for k in POOL_SIZES:
            t.add_column(str(k), justify="right")
        t.add_column("mean", justify="right")
        for n in NOISE_LEVELS:
            vals = [m[n][str(k)] for k in POOL_SIZES]
            t.add_row(_NOISE_NAMES[n], *(_pct(x) for x in vals), _pct(float(np.mean(vals))))
        tables.append(t)
    h = result.headline
    if h:
        t = Table(title=f"{who}HPatches headline (%)")
        for k in h:
            t.add_column(k, justify="right")
        t.add_row(*(_pct(x) for x in h.values()))
        tables.append(t)
    return tables


def example_report(result: HPatchesResult, out: Path | None) -> list[Renderable]:
    """``descbal eval example``: the HPatches tables, and where the example was kept."""
    lines: list[Renderable] = list(hpatches_tables(result))
    if out is not None:
        lines.append(f"example written to {out} (patches/, descriptors/{result.model}/, tasks/)")
    return lines


def brown_table(result: BrownResult) -> Table:
    """One-row table of a Brown FPR95 result."""
    t = Table(title=(f"{result.model}: " if result.model else "") + f"Brown FPR95 ({result.definition} definition)")
    for col in ("pairs", "matches", "non-matches", "FPR95 (%)"):
        t.add_column(col, justify="right")
    t.add_row(str(result.pairs), str(result.matches), str(result.non_matches), f"{100 * result.fpr95:.4f}")
    return t


def sequences_report(result: SequencesResult, plot: Path | None = None) -> list[Renderable]:
    """``descbal eval sequences``: MMA at 1/3/5/10 px, features, matches and homography accuracy
    per model and split (splits without sequences left out), and where the plot went."""
    t = Table(title=f"Sequences under {result.root} ({len(result.sequences)}; detector {result.detector})")
    for col in ("model", "split", "pairs", "MMA@1", "MMA@3", "MMA@5", "MMA@10", "features", "matches",
                "H@1", "H@3", "H@5"):
        t.add_column(col, justify="left" if col in ("model", "split") else "right")
    for m in result.models:
        for split in ("overall", "illumination", "viewpoint"):
            mma = m["mma"][split]
            if mma is None:
                continue
            h = m["homography_accuracy"][split]
            t.add_row(m["name"], split, str(m["num_pairs"][split]), *(f"{mma[i]:.3f}" for i in (0, 2, 4, 9)),
                      f"{m['num_features']:.0f}", f"{m['num_matches'][split]:.0f}", *(f"{h[e]:.3f}" for e in ("1", "3", "5")))
    lines: list[Renderable] = [t]
    if plot is not None:
        lines.append(f"plot written to {plot}")
    return lines


def stereo_report(result: StereoResult) -> list[Renderable]:
    """``descbal eval stereo``: MMA at 1/3/5/10 px (fractions), features and matches per model,
    and the correctness rule in one line."""
    w, h = result.image_size
    t = Table(title=f"Stereo pair {result.pair} ({w}x{h}, {100 * result.valid_disparity:.0f} % of pixels with "
                    f"disparity; detector {result.detector})")
    for col in ("model", "MMA@1", "MMA@3", "MMA@5", "MMA@10", "matches", "features L (valid)", "features R"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for i, m in enumerate(result.models):
        n = m["num_features"]
        t.add_row(m["name"], *(f"{result.mma_at(i, th):.3f}" for th in (1, 3, 5, 10)), str(m["num_matches"]),
                  f"{n['left']} ({n['left_valid']})", str(n["right"]))
    return [t, f"correct: the right keypoint within t px of (x_l - d, y_l), d the disparity at the left keypoint "
               f"({result.disparity_sampling} pixel); left keypoints without valid disparity are left out"]


# ------------------------------------------------------------------------------ extract, match


def extract_report(result: ExtractResult) -> list[Renderable]:
    """``descbal extract``: a warning when ``--compile`` fell back to eager, one line per failed
    image, then the summary line."""
    lines: list[Renderable] = []
    compiled = result.provenance.get("compile") or {}
    if compiled.get("requested") and compiled.get("reason"):
        lines.append(f"[yellow]warning:[/yellow] --compile: {compiled['reason']}")
    lines += [f"[yellow]skipped[/yellow] {f['name']}: {f['reason']}" for f in result.failed]
    lines.append(f"{result.out}: {result.extracted} image(s) extracted ({result.num_keypoints} keypoints, "
                 f"{result.images_per_s:.1f} images/s), {result.skipped_existing} already there, "
                 f"{len(result.failed)} failed")
    return lines


def export_report(result: ExportResult) -> list[Renderable]:
    """``descbal export``: the measured parity per patch set, then the summary line."""
    lines: list[Renderable] = [f"parity {name}: {p['patches']:.0f} patches, max abs difference {p['max_abs']:.3g}"
                               for name, p in result.parity.items()]
    opset = f", opset {result.opset}" if result.opset is not None else ""
    lines.append(f"{result.out}: {result.arch} {result.format}{opset}{', fp16' if result.fp16 else ''}, "
                 f"(N, 1, 32, 32) -> (N, {result.dim}); max abs difference {result.max_abs_difference:.3g} "
                 f"<= {result.tolerance:g} ({result.seconds:.1f} s)")
    return lines


def match_report(result: MatchResult) -> list[Renderable]:
    """``descbal match``: the summary line."""
    return [f"{result.out}: {result.matched} pair(s) matched ({result.mean_matches:.0f} matches on average), "
            f"{result.skipped_existing} already there"]


# ------------------------------------------------------------------------------ data


def download_report(report: FetchReport) -> list[Renderable]:
    """``descbal download``: one row per file (status, size in MB, sha256 prefix)."""
    t = Table(title=f"Downloads under {report.root}")
    for col in ("file", "status", "size (MB)", "sha256"):
        t.add_column(col)
    for r in report.files:
        status = "already downloaded" if r.skipped else ("resumed, verified" if r.resumed else "downloaded")
        if not r.verified:
            status += " (no known checksum: recorded in manifest.json)"
        t.add_row(r.key, status, f"{r.size / 1e6:.1f}", r.sha256[:16] + "...")
    lines: list[Renderable] = [t]
    if all(r.skipped for r in report.files):
        lines.append("Everything was already downloaded; nothing to do.")
    return lines


class CacheResult(Protocol):
    """What every cache result has (Brown, HPatches, sequences)."""

    path: str
    skipped: bool
    seconds: float


def cache_report(results: Sequence[CacheResult]) -> list[Renderable]:
    """``descbal cache brown|hpatches|sequences``: one line per cache file."""
    return [f"{r.path}: " + ("up to date, skipped" if r.skipped else f"written in {r.seconds:.1f} s") for r in results]


def pool_report(result: PoolResult) -> list[Renderable]:
    """``descbal cache images``: skipped photos and what the pool holds."""
    if result.skipped:
        return [f"{result.path}: up to date, skipped"]
    skipped = result.skipped_images or []
    lines: list[Renderable] = [f"skipped {s['path']}: {s['reason']}" for s in skipped]
    lines.append(f"{result.path}: {result.num_patches} patches of {result.num_classes} keypoints from "
                 f"{(result.images or 0) - len(skipped)} photos, {result.num_pairs} held-out pairs")
    return lines


def sfm_set_report(result: SfmSetResult) -> list[Renderable]:
    """``descbal cache sfm``: skipped images and what the training set holds."""
    if result.skipped:
        return [f"{result.path}: up to date, skipped"]
    lines: list[Renderable] = [f"skipped {s['path']}: {s['reason']}" for s in result.skipped_images or []]
    lines.append(f"{result.path}: {result.num_patches} patches of {result.num_classes} 3D points from {result.images} "
                 f"images of {', '.join(result.scenes or [])}; {result.num_near} near point pairs, {result.num_pairs} "
                 "held-out pairs")
    return lines


def benchmark_report(result: BenchmarkResult) -> list[Renderable]:
    """``descbal make-benchmark``: skipped sequences, and how to evaluate the benchmark."""
    lines: list[Renderable] = [f"skipped {s['sequence']}: {s['reason']}" for s in result.skipped]
    lines.append(f"benchmark written to {result.out}: {len(result.sequences)} sequences; evaluate with "
                 f"'descbal eval hpatches --descriptors DIR --tasks {result.tasks} --split {result.split}'")
    return lines


def skipped_summary(result: JsonResult, strict: bool = False) -> list[Renderable]:
    """The warning after a command that skipped inputs (see :mod:`descbal.results`): how many,
    where the JSON lists them, and what ``--strict`` does; nothing when none was skipped."""
    skipped = result.skipped_inputs()
    if not skipped:
        return []
    what = f"{len(skipped)} input(s) skipped (listed in the JSON's {result.SKIPPED_KEY!r})"
    if strict:
        return [f"[red]error:[/red] {what}; exit code {STRICT_EXIT_CODE} (--strict)"]
    return [f"[yellow]warning:[/yellow] {what}; --strict makes this exit {STRICT_EXIT_CODE}"]


# ------------------------------------------------------------------------------ train, quickstart


def train_start_line(run_dir: Path, device: Any, step: int, total_steps: int) -> str:
    """``descbal train``: the line before the first step."""
    return f"run folder {run_dir}; device {device}; step {step}/{total_steps}"


def train_report(summary: TrainSummary) -> list[Renderable]:
    """``descbal train``: validation FPR95 per epoch (%) and where the model went."""
    lines: list[Renderable] = [f"epoch {rec['epoch']}: validation FPR95 {100 * rec['val_fpr95']:.2f} %"
                               for rec in summary.validation or () if rec["val_fpr95"] is not None]
    lines.append(f"model written to {summary.model}")
    return lines


def quickstart_report(result: QuickstartResult) -> list[Renderable]:
    """``descbal quickstart``: the comparison table (%; the synthetic benchmark and, where
    evaluated, the real Motorcycle stereo pair) and how to use the trained model."""
    stereo = any(r.get("stereo_mma3") is not None for r in result.rows)
    t = Table(title="Quickstart: held-out synthetic benchmark (HPatches protocol, %)"
                    + (" and a real stereo pair (Middlebury Motorcycle)" if stereo else ""))
    cols = ["descriptor", "verification", "matching", "retrieval", "pool FPR95"]
    for col in cols + (["stereo MMA@3", "stereo matches"] if stereo else []):
        t.add_column(col, justify="right")
    for r in result.rows:
        fpr = "-" if r["fpr95"] is None else f"{100 * r['fpr95']:.2f}"
        cells = [r["descriptor"], f"{100 * r['verification']:.2f}", f"{100 * r['matching']:.2f}",
                 f"{100 * r['retrieval']:.2f}", fpr]
        if stereo:
            cells += [f"{100 * r['stereo_mma3']:.2f}", str(r["stereo_matches"])]
        t.add_row(*cells)
    lines: list[Renderable] = [t]
    if result.stages:
        lines.append("stages: " + ", ".join(f"{k} {v}" for k, v in result.stages.items()))
    lines.append(f"trained model: {result.model} (use it with 'descbal extract IMAGES --model {result.model}')")
    return lines


# ------------------------------------------------------------------------------ structure from motion


def colmap_report(result: ColmapResult) -> list[Renderable]:
    """``descbal colmap``: the summary line."""
    verified = (f", {result.verified_pairs} verified by two-view geometry ({result.inlier_matches} inlier matches)"
                if result.verified_pairs else ", not verified")
    return [f"{result.database}: {result.images} image(s), {result.cameras} camera(s), {result.keypoints} keypoints, "
            f"{result.pairs} pair(s) with {result.matches} matches{verified}"]


def reconstruct_report(result: ReconstructResult) -> list[Renderable]:
    """``descbal reconstruct``: seconds per stage, then the model's numbers and where it is."""
    t = Table(title=f"Reconstruction of {result.images_dir} ({result.pairing} pairs: {result.pairs})")
    for col in ("stage", "seconds", "note"):
        t.add_column(col, justify="right" if col == "seconds" else "left")
    for stage, secs in result.seconds.items():
        t.add_row(stage, f"{secs:.1f}", "already done" if stage in result.resumed else "")
    if result.model is None:
        line = f"[yellow]no model[/yellow]: pycolmap registered none of the {result.images} images"
    else:
        line = (f"{result.model}: {result.registered}/{result.images} images registered, {result.points3d} points, "
                f"track length {result.mean_track_length:.2f}, reprojection error {result.mean_reprojection_error:.2f} px")
    return [t, line]


def _opt(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def sfm_table(result: SfmEvalResult) -> list[Renderable]:
    """``descbal eval sfm``: one row per scene and model, then the overall rows; the plots.
    Relative-pose accuracy and AUC cells are ``5 / 10 / 20`` degrees."""
    t = Table(title="Structure from motion against ground-truth cameras (centre error in scene units, rotation in deg)")
    cols = ("scene", "model", "reg.", "points", "track", "reproj px", "centre mean", "centre med", "rot mean", "rot med",
            "acc 5/10/20", "AUC 5/10/20")
    for col in cols:
        t.add_column(col, justify="left" if col in ("scene", "model") else "right")
    for r in result.rows:
        t.add_row(r.scene, r.model, f"{r.registered}/{r.images}", str(r.points3d), f"{r.mean_track_length:.2f}",
                  f"{r.mean_reprojection_error:.2f}", _opt(r.centre_error_mean, ".4f"), _opt(r.centre_error_median, ".4f"),
                  _opt(r.rotation_error_mean, ".2f"), _opt(r.rotation_error_median, ".2f"),
                  "/".join(f"{r.pose_accuracy[k]:.2f}" for k in ("5", "10", "20")),
                  "/".join(f"{r.pose_auc[k]:.3f}" for k in ("5", "10", "20")))
    return [t, *(f"plot written to {p}" for p in result.plots)]
