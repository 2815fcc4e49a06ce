"""CPU speed of a descriptor network as descbal runs it and as exported by ``descbal export``.

For HyNet and HardNet (untrained, seeded: speed does not depend on the weights), one batch of
``--batch`` random 32x32 patches (model units) described by:

* **descbal**: the :func:`~descbal.models.inference.inference_copy` (BatchNorm folded, in-place
  activations, channels-last input), under ``torch.inference_mode``;
* **TorchScript**: the file ``descbal export --format torchscript`` writes, ``torch.jit.load``;
* **ONNX (onnxruntime)**: the ``.onnx`` file, onnxruntime's CPU provider with as many intra-op
  threads as torch uses.

All on the same threads (``--threads``, default torch's), median of ``--repeats`` timed runs
after ``--warmup`` untimed ones. Prints patches/s per runtime, the max abs difference of each
file's descriptors from descbal's on the timed batch, and which runtime is fastest and by how
much over the next one.

Usage: ``python benchmarks/export.py [--batch 1024] [--repeats 5] [--threads N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from descbal.export import export_model  # noqa: E402
from descbal.models import resolve_model  # noqa: E402
from descbal.models.exported import ExportedModel  # noqa: E402
from descbal.models.inference import inference_copy, prepare_input  # noqa: E402

ARCHS = ("hynet", "hardnet")


def _median_s(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(batch: int, repeats: int, warmup: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, 1, 32, 32)).astype(np.float32)) / 255.0
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            net = inference_copy(resolve_model(arch).network, "cpu")
            with torch.inference_mode():
                ref = net(prepare_input(x)).numpy()
            runtimes: dict[str, Callable[[], np.ndarray]] = {}

            def descbal_forward(net: torch.nn.Module = net) -> np.ndarray:
                with torch.inference_mode():
                    return net(prepare_input(x)).numpy()

            runtimes["descbal"] = descbal_forward
            for fmt, suffix in (("torchscript", ".ts"), ("onnx", ".onnx")):
                path = Path(tmp) / f"{arch}{suffix}"
                export_model(arch, path, fmt, num_random=64)
                exported = ExportedModel(path)
                runtimes["ONNX (onnxruntime)" if fmt == "onnx" else "TorchScript"] = lambda m=exported: m(x)
            for name, fn in runtimes.items():
                diff = float(np.abs(fn() - ref).max())
                secs = _median_s(fn, warmup, repeats)
                rows.append({"arch": arch, "runtime": name, "patches_per_s": batch / secs, "ms_per_batch": secs * 1e3,
                             "max_abs_vs_descbal": diff})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.batch, args.repeats, args.warmup)
    print(f"CPU, {torch.get_num_threads()} thread(s), batch {args.batch}, median of {args.repeats} "
          f"(torch {torch.__version__})")
    print(f"{'model':8} {'runtime':20} {'patches/s':>10} {'ms/batch':>9} {'max abs vs descbal':>19}")
    for r in rows:
        print(f"{r['arch']:8} {r['runtime']:20} {r['patches_per_s']:10.0f} {r['ms_per_batch']:9.1f} "
              f"{r['max_abs_vs_descbal']:19.2e}")
    for arch in ARCHS:
        ranked = sorted((r for r in rows if r["arch"] == arch), key=lambda r: -float(r["patches_per_s"]))  # type: ignore[arg-type]
        best, second = ranked[0], ranked[1]
        print(f"{arch}: fastest is {best['runtime']}, {float(best['patches_per_s']) / float(second['patches_per_s']):.2f}x "
              f"{second['runtime']} ({float(best['patches_per_s']) / float(ranked[-1]['patches_per_s']):.2f}x "
              f"{ranked[-1]['runtime']})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
