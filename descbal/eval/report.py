"""Rich tables for evaluation results (printed on stderr by the CLI)."""

from __future__ import annotations

import numpy as np
from rich.table import Table

from descbal.eval.hpatches import POOL_SIZES
from descbal.eval.hpatches_io import NOISE_LEVELS

_NOISE_NAMES = {"e": "Easy", "h": "Hard", "t": "Tough"}


def _pct(x: float) -> str:
    return f"{100.0 * x:6.2f}"


def hpatches_tables(result: dict) -> list[Table]:
    """Per-noise tables for each task run, then the headline numbers (percentages)."""
    tables = []
    if "verification" in result:
        v = result["verification"]
        t = Table(title=f"Verification (split {result['split']}, {result['distance']})")
        t.add_column("noise")
        for col in ("bal. AUC inter", "bal. AUC intra", "imb. AP inter", "imb. AP intra"):
            t.add_column(col, justify="right")
        for n in NOISE_LEVELS:
            t.add_row(_NOISE_NAMES[n], _pct(v[n]["inter"]["balanced_auc"]), _pct(v[n]["intra"]["balanced_auc"]),
                      _pct(v[n]["inter"]["imbalanced_ap"]), _pct(v[n]["intra"]["imbalanced_ap"]))
        tables.append(t)
    if "matching" in result:
        rows = result["matching"]["per_image"]
        t = Table(title="Matching mAP (mean over sequences and images)")
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
    if "retrieval" in result:
        m = result["retrieval"]["map"]
        t = Table(title="Retrieval mAP by pool size")
        t.add_column("noise")
        for k in POOL_SIZES:
            t.add_column(str(k), justify="right")
        t.add_column("mean", justify="right")
        for n in NOISE_LEVELS:
            vals = [m[n][str(k)] for k in POOL_SIZES]
            t.add_row(_NOISE_NAMES[n], *(_pct(x) for x in vals), _pct(float(np.mean(vals))))
        tables.append(t)
    h = result.get("headline", {})
    if h:
        t = Table(title="HPatches headline (%)")
        for k in h:
            t.add_column(k, justify="right")
        t.add_row(*(_pct(x) for x in h.values()))
        tables.append(t)
    return tables


def brown_table(result: dict) -> Table:
    """One-row table of a Brown FPR95 result."""
    t = Table(title=f"Brown FPR95 ({result['definition']} definition)")
    for col in ("pairs", "matches", "non-matches", "FPR95 (%)"):
        t.add_column(col, justify="right")
    t.add_row(str(result["pairs"]), str(result["matches"]), str(result["non_matches"]), f"{100 * result['fpr95']:.4f}")
    return t
