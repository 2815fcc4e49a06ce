"""Distributed training (torch.distributed, gloo on the CPU, 2 processes): the same numbers as
one process on the same global batch, exact resume, and clean failures.

Tolerances. The losses compute in float32 whatever the network's dtype. With a float32
network the order of float sums differs between one process and two (and between thread
counts: one process on 1 vs 2 threads already differs by up to 3e-4 relative in its smallest
gradient tensors), so float32 gradients are compared as a whole (max difference / max value
over all parameters, 1e-5). With the network in float64 (``loop.dtype``) that rounding is gone
and every tensor must agree to 1e-6 (the losses then compute in float64 too); 20 training
steps end with the same weights to 1e-9.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dist_fixtures import (
    LOSS_CASES,
    all_loss_cases,
    loss_case_step,
    one_process_start,
    run_kwargs,
    tiny_run_args,
    trainer_scenarios,
)
from train_fixtures import make_patchset

from descbal.data.patchset import write_patchset
from descbal.errors import BadInputError, DataMissingError
from descbal.losses import LOSSES
from descbal.train import distributed
from descbal.train.distributed import BatchShard, DistContext
from descbal.train.global_layers import GlobalBatchNorm2d, ShardedDropout, distribute_layers, sharded_rows
from descbal.train.launch import check_launch, run_local
from descbal.train.trainer import open_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_h5(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("dist") / "train.h5"
    write_patchset(path, make_patchset(3, 60, 3, name="train"))
    return str(path)


def _rel(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[float, float]:
    """(over all tensors, worst tensor) of max |got - ref| / max |ref|."""
    keys = sorted(ref)
    assert keys == sorted(got) and keys
    ref = {k: v.astype(np.float64) for k, v in ref.items()}
    got = {k: v.astype(np.float64) for k, v in got.items()}
    a = np.concatenate([ref[k].ravel() for k in keys])
    b = np.concatenate([got[k].ravel() for k in keys])
    whole = float(np.abs(a - b).max() / np.abs(a).max())
    worst = max(float(np.abs(ref[k] - got[k]).max() / max(np.abs(ref[k]).max(), 1e-300)) for k in keys)
    return whole, worst


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def _weights_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max() / max(float(a[k].double().abs().max()), 1e-300))
               for k in a if a[k].is_floating_point())


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


# ---------------------------------------------------------------------------------- layers and shards


def test_shard_bounds_split_classes_in_order() -> None:
    class_pos = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])  # class 1 and 3 have two patches
    assert distributed.shard_bounds(class_pos, 4, 2).tolist() == [0, 5, 10]
    assert distributed.shard_bounds(class_pos, 4, 4).tolist() == [0, 3, 5, 8, 10]
    assert distributed.shard_bounds(class_pos, 4, 1).tolist() == [0, 10]
    ctx = DistContext(1, 2, 1, torch.device("cpu"), "gloo")
    sh = BatchShard(torch.zeros(10), (0, 5, 10), ctx)
    assert (sh.start, sh.stop, sh.counts()) == (5, 10, [5, 5])
    assert sh.counts(torch.tensor([0, 1, 4, 6])) == [3, 1]  # kept rows per rank


def test_check_divisible_names_the_phase() -> None:
    class Ph:
        def __init__(self, name: str, c: int) -> None:
            self.name, self.classes_per_batch = name, c

    distributed.check_divisible([Ph("main", 64), Ph("anneal00", 32)], 4)
    with pytest.raises(BadInputError, match="phase anneal01: a global batch of 30 classes does not divide over 4"):
        distributed.check_divisible([Ph("main", 64), Ph("anneal01", 30)], 4)


def test_sharded_dropout_keeps_the_global_mask() -> None:
    """Rows 5..9 of a 12-row batch get exactly the single-process dropout of those rows."""
    x = torch.randn(12, 4, 3, 3)
    torch.manual_seed(9)
    full = F.dropout(x, 0.3, True)
    drop = ShardedDropout(0.3)
    torch.manual_seed(9)
    with sharded_rows(5, 12):
        part = drop(x[5:10])
    assert torch.equal(part, full[5:10])
    torch.manual_seed(9)
    plain = drop(x[5:10])  # outside a distributed step: the plain layer (its own mask)
    assert not torch.equal(plain, full[5:10])
    assert torch.equal(drop.eval()(x), x)


def test_distribute_layers_keeps_state_dict_and_plain_forward() -> None:
    from descbal.models import build_model

    torch.manual_seed(0)
    a = build_model("hardnet")
    b = build_model("hardnet")
    b.load_state_dict(a.state_dict())
    distribute_layers(b)
    assert any(isinstance(m, GlobalBatchNorm2d) for m in b.modules())
    assert list(a.state_dict()) == list(b.state_dict())
    x = torch.randn(6, 1, 32, 32)
    torch.manual_seed(1)
    ya = a.train()(x)
    torch.manual_seed(1)
    yb = b.train()(x)  # no process group: torch's layers' forward
    assert torch.equal(ya, yb)


# ---------------------------------------------------------------------------------- one step, every loss


@pytest.fixture(scope="module")
def two_rank_cases() -> dict[int, dict]:
    return run_local(2, all_loss_cases, 2)


def test_every_registered_loss_has_a_case() -> None:
    shipped = {n for n in LOSSES if not n.startswith("test")}  # tests may register toy losses
    assert shipped <= {loss for loss, _ in LOSS_CASES.values()}


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_two_ranks_equal_one_process(name: str, two_rank_cases: dict[int, dict]) -> None:
    """The second of two steps (a memory holds the first): loss, statistics, model and head
    gradients, BatchNorm running statistics and the pipeline's state, on both ranks."""
    torch.set_num_threads(1)
    for dtype, tol_whole, tol_worst in ((torch.float64, 1e-6, 1e-6), (torch.float32, 1e-5, None)):
        ref = loss_case_step(name, None, 2, dtype)
        assert ref["loss"] != 0.0
        # the triplet-like losses score each rank's own anchors; the others run whole on every rank
        assert two_rank_cases[0][(name, "float32")]["sharded"] is (LOSS_CASES[name][0] in ("triplet", "balance",
                                                                                          "anneal"))
        key = (name, str(dtype).split(".")[-1])
        for rank in (0, 1):
            got = two_rank_cases[rank][key]
            assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6, abs=1e-7)
            assert got["stats"].keys() == ref["stats"].keys()
            for k, v in ref["stats"].items():
                assert got["stats"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
            whole, worst = _rel(ref["grads"], got["grads"])
            assert whole <= tol_whole, (dtype, whole)
            if tol_worst is not None:
                assert worst <= tol_worst, (dtype, worst)
            if ref["head"]:
                assert _rel(ref["head"], got["head"])[0] <= tol_whole
            for part in ("running", "state"):
                for k, v in ref[part].items():
                    np.testing.assert_allclose(got[part][k], v, rtol=1e-5, atol=1e-6, err_msg=f"{part} {k}")
        # the ranks hold the same values, bit for bit
        r0, r1 = two_rank_cases[0][key], two_rank_cases[1][key]
        assert r0["loss"] == r1["loss"] and r0["stats"] == r1["stats"]
        for k in r0["state"]:
            assert np.array_equal(r0["state"][k], r1["state"][k])


# ---------------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory, train_h5: str) -> tuple[Path, dict[int, dict]]:
    root = tmp_path_factory.mktemp("scenarios")
    torch.set_num_threads(1)
    one_process_start(str(root), train_h5)
    return root, run_local(2, trainer_scenarios, str(root), train_h5)


def test_twenty_steps_equal_one_process(scenarios: tuple[Path, dict], train_h5: str, tmp_path: Path) -> None:
    """20 self-tnet-small steps (balance, then two annealing cycles with smaller batches) on 2
    ranks end where one process ends: float64 network, weights to 1e-9, losses to 1e-12 (the
    ranks' shares of a triplet-like loss are added in another order)."""
    root, _ = scenarios
    torch.set_num_threads(1)
    one = tmp_path / "one"
    open_run(**run_kwargs(str(one), tiny_run_args(train_h5, "loop.dtype=float64"))).fit()
    assert _weights_rel(_weights(one), _weights(root / "A")) <= 1e-9
    assert _losses(one) == pytest.approx(_losses(root / "A"), rel=1e-12) and len(_losses(one)) == 20
    env = json.loads((root / "A" / "environment.json").read_text())
    assert env["distributed"] == {"world_size": 2, "backend": "gloo"}


def test_resumed_two_rank_run_equals_uninterrupted(scenarios: tuple[Path, dict]) -> None:
    root, _ = scenarios
    a, b = _weights(root / "A"), _weights(root / "B")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(root / "A") == _losses(root / "B")  # one line per step: rank 0 alone writes


def test_resume_on_another_world_size(scenarios: tuple[Path, dict], tmp_path: Path) -> None:
    """The 2-rank run's step-7 checkpoint, resumed by one process: the same run up to float
    rounding (sums over other groupings), here to 1e-9 in float64."""
    root, _ = scenarios
    torch.set_num_threads(1)
    import shutil

    run = tmp_path / "B7"
    shutil.copytree(root / "B7", run)
    open_run(resume=str(run)).fit()
    assert _weights_rel(_weights(root / "A"), _weights(run)) <= 1e-9


def test_one_process_checkpoint_resumed_on_two_ranks(scenarios: tuple[Path, dict]) -> None:
    """The other direction: one process's step-7 checkpoint continued by 2 ranks ends where the
    2-rank run ends (float64, 1e-9)."""
    root, _ = scenarios
    assert json.loads((root / "C" / "environment.json").read_text())["distributed"] is None
    assert _weights_rel(_weights(root / "A"), _weights(root / "C")) <= 1e-9


def test_memory_and_ddtas_threshold_identical_across_ranks(scenarios: tuple[Path, dict], train_h5: str,
                                                           tmp_path: Path) -> None:
    """After 10 steps the memory bank (descriptors, labels, ids, pointers) and DDTAS's learned
    threshold are the same on both ranks, bit for bit, and match one process's run (float64
    network: with float32 rounding, DDTAS's meta-gradients drift apart over 10 steps)."""
    _, states = scenarios
    torch.set_num_threads(1)
    for name in ("memory", "ddtas"):
        s0, s1 = states[0][name], states[1][name]
        assert s0.keys() == s1.keys() and s0
        for k in s0:
            assert np.array_equal(s0[k], s1[k]), (name, k)
    assert int(states[0]["memory"]["loss.iteration"]) == 10
    assert int(states[0]["memory"]["loss.filled"]) == 96  # 4 batches of 24
    assert float(states[0]["ddtas"]["loss.meta_base"]) != 0.7  # it moved
    loss = "loss={name='ddtas', params={meta='threshold', meta_lr=1.0}}"
    t = open_run(**run_kwargs(str(tmp_path / "one"), tiny_run_args(train_h5, "phases.anneal.enabled=false",
                                                                   "loop.dtype=float64", f"phases.main.{loss}")))
    t.fit()
    one = float(t.phases[0].pipeline.state_dict()["loss.meta_base"])
    assert one == pytest.approx(float(states[0]["ddtas"]["loss.meta_base"]), rel=1e-6)


def test_world_size_one_takes_the_distributed_path(train_h5: str, tmp_path: Path) -> None:
    from descbal.train.launch import train_processes

    run = tmp_path / "w1"
    kwargs = run_kwargs(str(run), tiny_run_args(train_h5, "loop.dtype=float64", "phases.anneal.enabled=false"))
    summary = train_processes(1, kwargs, quiet=True)
    assert summary.steps == 10 and not summary.stopped
    env = json.loads((run / "environment.json").read_text())
    assert env["distributed"] == {"world_size": 1, "backend": "gloo"}
    torch.set_num_threads(1)
    one = tmp_path / "plain"
    open_run(**run_kwargs(str(one), tiny_run_args(train_h5, "loop.dtype=float64", "phases.anneal.enabled=false"))).fit()
    assert json.loads((one / "environment.json").read_text())["distributed"] is None
    assert _weights_rel(_weights(one), _weights(run)) <= 1e-9


# ---------------------------------------------------------------------------------- the command, and failures


def _cli(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "descbal", "train", *args]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}
    return env


def test_cli_nproc_and_json(train_h5: str, tmp_path: Path) -> None:
    run = tmp_path / "cli"
    p = subprocess.run(_cli("--out", str(run), *tiny_run_args(train_h5, "phases.anneal.enabled=false"), "--nproc", "2",
                            "--json", "-"), capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["steps"] == 10 and doc["model"] == str(run / "model.pt")
    assert (run / "model.pt").is_file()
    assert p.stderr.count("phase main: 10 steps") == 1  # rank 0 speaks for the run


def test_torchrun_runs_descbal_train_unchanged(train_h5: str, tmp_path: Path) -> None:
    run = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "descbal", "train", "--out", str(run), *tiny_run_args(train_h5, "phases.anneal.enabled=false")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((run / "environment.json").read_text())["distributed"]["world_size"] == 2
    assert len(_losses(run)) == 10


def test_batch_not_divisible_is_refused_before_launch(train_h5: str, tmp_path: Path) -> None:
    args = tiny_run_args(train_h5, "loop.classes_per_batch=7", "phases.anneal.enabled=false")
    with pytest.raises(BadInputError, match="phase main: a global batch of 7 classes does not divide over 2"):
        check_launch(2, run_kwargs(str(tmp_path / "r"), args))
    t0 = time.monotonic()
    p = subprocess.run(_cli("--out", str(tmp_path / "r"), *args, "--nproc", "2"), capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert p.returncode == 2 and "does not divide over 2" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists() and time.monotonic() - t0 < 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ranks(args_of: list[list[str]], tmp_path: Path, **env: str) -> list[subprocess.Popen]:
    """Start ``descbal train`` as ranks 0..N-1 by hand, the way SLURM or a cluster script would."""
    port = str(_free_port())
    procs = []
    for rank, args in enumerate(args_of):
        e = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(len(args_of)), MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=port, **env)
        procs.append(subprocess.Popen(_cli(*args), env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def test_ranks_with_different_configs_are_refused(train_h5: str, tmp_path: Path) -> None:
    base = ["--out", str(tmp_path / "r"), *tiny_run_args(train_h5, "phases.anneal.enabled=false")]
    procs = _ranks([[*base, "--seed", "1"], [*base, "--seed", "2"]], tmp_path)
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 2, err
        assert "ranks were started with different configuration or training data" in err and "Traceback" not in err


def _wait_for_steps(run: Path, n: int, timeout: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (run / "metrics.jsonl").is_file() and len(_losses(run)) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {n} steps in {timeout} s")


def test_a_killed_rank_stops_the_others(train_h5: str, tmp_path: Path) -> None:
    """Ranks started by hand: rank 1 is killed after a few steps; rank 0 stops with one line
    naming the lost contact (exit 1) instead of hanging (the timeout bounds the wait)."""
    run = tmp_path / "killed"
    args = ["--out", str(run), *tiny_run_args(train_h5, "loop.iters_per_epoch=100000", "phases.anneal.enabled=false",
                                              "loop.dist_timeout_s=30")]
    procs = _ranks([args, args], tmp_path)
    try:
        _wait_for_steps(run, 3, 120)
        t0 = time.monotonic()
        procs[1].send_signal(signal.SIGKILL)
        _, err = procs[0].communicate(timeout=60)
        assert time.monotonic() - t0 < 45
        assert procs[0].returncode == 1, err
        assert "rank 0 of 2: lost contact with the other ranks" in err and "Traceback" not in err
    finally:
        for p in procs:
            p.kill()
            p.communicate()


def _worker_pids(marker: str) -> list[int]:
    """PIDs of the rank processes the launcher spawned for this test (their environment holds
    ``marker``; spawn workers run ``multiprocessing.spawn``)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if f"DESCBAL_TEST_MARK={marker}".encode() in env and b"spawn_main" in cmd:
            out.append(int(d.name))
    return sorted(out)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find the rank processes")
def test_nproc_run_with_a_killed_rank_exits_nonzero(train_h5: str, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    marker = f"mark-{os.getpid()}-{time.monotonic_ns()}"
    args = ["--out", str(run), *tiny_run_args(train_h5, "loop.iters_per_epoch=100000", "phases.anneal.enabled=false"),
            "--nproc", "2"]
    p = subprocess.Popen(_cli(*args), env=_env(DESCBAL_TEST_MARK=marker), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_steps(run, 3, 120)
        pids = _worker_pids(marker)
        assert len(pids) == 2
        t0 = time.monotonic()
        os.kill(pids[-1], signal.SIGKILL)
        _, err = p.communicate(timeout=90)
        assert time.monotonic() - t0 < 60
        assert p.returncode == 1, err
        assert re.search(r"rank [01] of 2 was killed by signal SIGKILL; the run stopped", err), err
    finally:
        p.kill()
        p.communicate()


def test_a_rank_error_under_nproc_exits_with_its_code(tmp_path: Path) -> None:
    """An error inside the ranks (here: the training set is missing) is printed once per rank
    with its rank, and the run exits with its code (3), not a hang or a traceback."""
    p = subprocess.run(_cli("--out", str(tmp_path / "r"), *tiny_run_args(str(tmp_path / "none.h5")), "--nproc", "2"),
                       capture_output=True, text=True, env=_env(), timeout=180)
    assert p.returncode == 3, p.stderr
    assert "rank 0: " in p.stderr and "none.h5" in p.stderr
    assert "stopped on the error above" in p.stderr and "Traceback" not in p.stderr


def test_bad_options_are_refused_before_launch(tmp_path: Path) -> None:
    """What the parent can check it checks before any process starts (the same checks as open_run)."""
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (run / "config.toml").write_text("")
    with pytest.raises(BadInputError, match="--resume continues a run with its own config"):
        check_launch(2, {"resume": str(run), "seed": 3})
    with pytest.raises(DataMissingError, match="run folder not found"):
        check_launch(2, {"resume": str(tmp_path / "none")})
