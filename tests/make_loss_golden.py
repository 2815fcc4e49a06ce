"""Record the golden values that pin every registered loss across refactors: ``tests/data/loss_golden.npz``.

Run from the repository root: ``python tests/make_loss_golden.py``. It was first run on the code
before the loss pipeline was split into miner / loss / reducer (the objectives then ran the
network themselves); ``tests/test_loss_golden.py`` checks that the current code reproduces it.

Recorded, for each case of :data:`CASES` (a loss name and its parameters) on three seeded
batches of a tiny network (Linear + BatchNorm1d without affine + L2 normalisation, so its
eval-mode output (the teacher) differs from its train-mode output):

* the scalar loss of each batch (batches run in order through one loss object, so stateful
  losses carry their memory from one batch to the next);
* the gradient of that loss with respect to the train-mode embeddings (N, D);
* the inputs, labels and network weights of each batch (so the test needs no random draws).

And, for two shipped recipes shortened to 50 CPU steps on a generated patch set
(``self-tnet-small``: 30 balance steps then two annealing cycles of 10; ``triplet``: 50 steps of
64 classes), the sha256 of the final weights plus per-tensor float64 sums, with the torch
version and CPU capability they were measured on.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
OUT = HERE / "data" / "loss_golden.npz"
DIM, IN_DIM, CLASSES, NPOS = 32, 64, 8, 3

#: (case name, loss name, loss params). Memory cases start their memory term at once.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("triplet", "triplet", {}),
    ("triplet_m05", "triplet", {"margin": 0.5}),
    ("balance", "balance", {}),
    ("balance_noteacher", "balance", {"teacher": "none"}),
    ("balance_fixedB", "balance", {"boundary": 4.0}),
    ("anneal", "anneal", {}),
    ("ddtas", "ddtas", {}),
    ("ddtas_threshold", "ddtas", {"meta": "threshold"}),
    ("ddtas_nometa", "ddtas", {"meta": "none", "ratio": "normalised"}),
    ("memory_fifo", "memory_contrastive", {"start_iter": 0, "memory_batches": 2}),
    ("memory_ema_bank", "memory_contrastive", {"start_iter": 0, "memory_batches": 2, "update": "ema_bank"}),
    ("memory_ema_encoder", "memory_contrastive", {"start_iter": 1, "memory_batches": 2, "update": "ema_encoder",
                                                  "reduction": "mean"}),
    ("osm_caa", "osm_caa", {}),
    ("osm_classifier", "osm_caa", {"attention": "classifier", "num_classes": 40, "embedding_size": DIM}),
    ("osm_none_caffe", "osm_caa", {"attention": "none", "caffe_scale": True}),
]
BATCH_SEEDS = (0, 1, 2)

#: (run name, recipe, overrides) of the 50-step training checks.
RUNS: list[tuple[str, str, list[str]]] = [
    ("self-tnet-small", "self-tnet-small", ["loop.epochs=1", "loop.iters_per_epoch=30", "phases.anneal.cycles.iters=10"]),
    ("triplet", "triplet", ["loop.epochs=1", "loop.iters_per_epoch=50", "loop.classes_per_batch=64"]),
]
RUN_DATA = {"seed": 3, "num_classes": 200, "per_class": 3}


class TinyNet(nn.Module):
    """(N, 1, 8, 8) -> (N, 32) unit rows; BatchNorm makes eval mode differ from train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(IN_DIM, DIM)
        self.bn = nn.BatchNorm1d(DIM, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.bn(self.fc(x.flatten(1))), dim=1)


def batch(seed: int) -> tuple[TinyNet, torch.Tensor, torch.Tensor]:
    """The network (seeded weights), inputs (24, 1, 8, 8) and labels (24,) of one golden batch."""
    g = torch.Generator().manual_seed(1000 + seed)
    net = TinyNet()
    with torch.no_grad():
        net.fc.weight.copy_(torch.randn(DIM, IN_DIM, generator=g) / 8.0)
        net.fc.bias.copy_(torch.randn(DIM, generator=g) / 10.0)
        net.bn.running_mean.copy_(torch.randn(DIM, generator=g) / 10.0)
        net.bn.running_var.copy_(torch.rand(DIM, generator=g) + 0.5)
    centres = torch.randn(CLASSES, IN_DIM, generator=g)
    x = (centres.repeat_interleave(NPOS, 0) + 1.2 * torch.randn(CLASSES * NPOS, IN_DIM, generator=g)).view(-1, 1, 8, 8)
    labels = (torch.arange(CLASSES).repeat_interleave(NPOS) * 3 + 5).long()
    return net, x, labels


def weights_digest(model: nn.Module) -> tuple[str, dict[str, float]]:
    """sha256 of the state dict's bytes (sorted keys) and each tensor's float64 sum."""
    h = hashlib.sha256()
    sums = {}
    for k, v in sorted(model.state_dict().items()):
        a = v.detach().cpu().contiguous().numpy()
        h.update(k.encode())
        h.update(a.tobytes())
        sums[k] = float(a.astype(np.float64).sum())
    return h.hexdigest(), sums


def platform_key() -> str:
    """What bit-exactness of CPU training depends on: torch's version and the CPU kernels it picks."""
    return f"torch {torch.__version__}, cpu {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}"


def record_case(loss_name: str, params: dict[str, Any]) -> list[tuple[float, np.ndarray]]:
    """(loss, d loss / d embeddings) of each golden batch with the current code."""
    sys.path.insert(0, str(HERE))
    from golden_api import case_step  # the one place the test and this script call the library

    return case_step(loss_name, params, [batch(s) for s in BATCH_SEEDS])


def record_runs() -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from golden_api import run_steps

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe, overrides in RUNS:
            model = run_steps(Path(tmp), name, recipe, overrides, RUN_DATA, steps=50)
            digest, sums = weights_digest(model)
            out[name] = {"sha256": digest, "sums": sums}
    return out


def main() -> None:
    torch.set_num_threads(1)
    arrays: dict[str, np.ndarray] = {}
    for s in BATCH_SEEDS:
        net, x, labels = batch(s)
        arrays[f"batch{s}/x"] = x.numpy()
        arrays[f"batch{s}/labels"] = labels.numpy()
    for case, loss_name, params in CASES:
        for s, (value, grad) in zip(BATCH_SEEDS, record_case(loss_name, params), strict=True):
            arrays[f"{case}/{s}/loss"] = np.asarray(value, dtype=np.float64)
            arrays[f"{case}/{s}/grad"] = grad.astype(np.float32)
    runs = record_runs()
    meta = {"platform": platform_key(), "runs": runs, "cases": [c[0] for c in CASES]}
    arrays["meta"] = np.asarray(json.dumps(meta))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) on {meta['platform']}")


if __name__ == "__main__":
    main()
