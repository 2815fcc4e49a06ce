"""descbal.heap: freed memory kept for reuse (measured by page faults in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from train_fixtures import one_torch_thread, tiny_config, write_sets  # noqa: F401

from descbal import heap
from descbal.train.trainer import start_run

# A fresh process allocates, writes and frees a 64 MiB tensor 8 times and prints the minor page
# faults of each (16,384 pages of 4 KiB when the block is mapped anew). torch allocates with
# posix_memalign, which glibc's heap cannot always serve from the block just freed: the heap
# settles after a few blocks, so the last three count.
PROBE = """
import resource, sys, torch
from descbal.heap import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else "-")
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 * 2**20 // 4).sum()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 64 * 2**20 // 4096


def run_python(code: str, *args: str) -> str:
    """stdout of ``python -c code args`` in a fresh process (its stderr shown if it fails)."""
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1])
    assert res.returncode == 0, res.stderr
    return res.stdout


def probe(mode: str) -> tuple[str, list[int]]:
    out = run_python(PROBE, mode).split()
    return out[0], [int(v) for v in out[-3:]]


def glibc() -> bool:
    """This test's own answer (not descbal.heap's) to whether the process runs on glibc."""
    try:
        return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


def thp_always() -> bool:
    p = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return p.exists() and "[always]" in p.read_text()


@pytest.mark.skipif(not glibc(), reason="glibc's malloc")
def test_freed_block_reused_without_faults() -> None:
    applied, kept = probe("keep")
    assert applied == "True"
    assert max(kept) < PAGES // 20  # reused: a few pages of torch's own bookkeeping at most
    if not thp_always():  # with huge pages everywhere a fresh mapping faults 2 MiB at a time
        _, default = probe("default")
        assert min(default) >= PAGES * 9 // 10  # the control: glibc maps the block anew and faults every page


def test_idempotent_and_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(heap, "_kept", None)
    monkeypatch.setattr(heap, "_apply", lambda: calls.append(1) or True)
    assert heap.keep_freed_memory() is True
    assert heap.keep_freed_memory() is True
    assert calls == [1]


def test_nothing_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert heap._glibc_mallopt() is None
    assert heap._apply() is False


def test_mallopt_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def mallopt(param: int, value: int) -> int:
        seen.append((param, value))
        return 0  # glibc's answer to a value it does not take

    monkeypatch.setattr(heap, "_glibc_mallopt", lambda: mallopt)
    assert heap._apply() is False
    assert seen == [(heap.M_MMAP_MAX, 0)]


TRAIN = """
import sys, torch
from dataclasses import replace
sys.path.insert(0, sys.argv[3])
from train_fixtures import tiny_config
from descbal.train.trainer import start_run
torch.set_num_threads(1)  # as the parent test runs (one_torch_thread)
cfg = tiny_config(sys.argv[1], epochs=1, iters=3, classes=6)
cfg = replace(cfg, data=replace(cfg.data, val="none"), loop=replace(cfg.loop, keep_memory=True))
t = start_run(cfg, sys.argv[2])
t.fit()
torch.save(t.model.state_dict(), sys.argv[2] + "/weights.pt")
"""


@pytest.mark.usefixtures("one_torch_thread")
def test_trainer_keeps_freed_memory_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``loop.keep_memory`` applies it when the trainer is built and environment.json says so;
    a run in a process whose heap is kept trains the same weights as one whose heap is not."""
    train, _ = write_sets(tmp_path, num_classes=12)
    cfg = tiny_config(train, epochs=1, iters=3, classes=6)
    cfg = replace(cfg, data=replace(cfg.data, val="none"))
    calls = []
    monkeypatch.setattr(heap, "_kept", None)
    monkeypatch.setattr(heap, "_apply", lambda: calls.append(1) or True)
    default = start_run(cfg, tmp_path / "default")
    assert calls == [] and json.loads((tmp_path / "default" / "environment.json").read_text())["heap"] == "default"
    default.fit()

    start_run(replace(cfg, loop=replace(cfg.loop, keep_memory=True)), tmp_path / "asked")
    assert calls == [1]
    assert json.loads((tmp_path / "asked" / "environment.json").read_text())["heap"] == "kept"

    run = tmp_path / "kept"
    run_python(TRAIN, str(train), str(run), str(Path(__file__).parent))
    assert json.loads((run / "environment.json").read_text())["heap"] == ("kept" if glibc() else "default")
    kept = torch.load(run / "weights.pt", weights_only=True)
    for k, v in default.model.state_dict().items():
        assert torch.equal(v, kept[k]), k
