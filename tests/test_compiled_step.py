"""The compiled training step (``loop.compile``), ``loop.precision`` and ``loop.prefetch``.

Two tests compile with the real inductor (float64 against eager over 50 steps; a float32 run
stopped and resumed); the others use dynamo's ``eager`` backend, which traces exactly as
inductor's front end does (graph breaks, guards, recompilations) without generating code.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch._dynamo
from train_fixtures import one_torch_thread, tiny_config, write_sets  # noqa: F401

from descbal.compiling import CompilePath, compile_function, compiler_missing
from descbal.config import load_config
from descbal.errors import BadInputError
from descbal.losses import LOSSES, build_pipeline
from descbal.losses.miners import hardest_per_class
from descbal.losses.pipeline import StepOutput
from descbal.models import build_model
from descbal.train import compiled
from descbal.train.config import CyclesConfig, LossConfig, PhaseConfig, RunConfig
from descbal.train.trainer import resume_run, start_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The registered losses that trace into one graph, and those that cannot (descbal.train.compiled says why).
FULLGRAPH = {"triplet", "balance", "anneal"}
BREAKS = {"ddtas", "memory_contrastive", "osm_caa"}


@pytest.fixture(autouse=True, scope="module")
def fresh_dynamo() -> Iterator[None]:
    """Compiled frames of other modules' tests do not count here, nor ours there."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_sets(tmp_path_factory.mktemp("data"), seed=0, num_classes=40, per_class=3)


def _batch(c: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3 * c, 1, 32, 32, generator=g)
    classes = torch.arange(c) * 3 + 5
    return x, classes.repeat_interleave(3), classes


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- graph breaks


def test_the_fullgraph_list_is_the_registry_split() -> None:
    assert {n for n in LOSSES if build_pipeline(n).fullgraph} == FULLGRAPH
    assert set(LOSSES) == FULLGRAPH | BREAKS
    assert not build_pipeline("balance", {"teacher": "none"}, reducer="sum").fullgraph  # a part without the flag


@pytest.mark.parametrize("name", sorted(FULLGRAPH | BREAKS))
def test_declared_pipelines_trace_whole_and_give_the_eager_values(name: str) -> None:
    """``fullgraph=True`` succeeds exactly for the pipelines that declare it, with the eager
    loss, statistics and gradients; the others stop at their data-dependent shapes."""
    torch.manual_seed(0)
    model = build_model("hynet", dropout=0.0)
    twin = copy.deepcopy(model)
    x, labels, classes = _batch()
    fn, path = compile_function(compiled.step_forward, torch.device("cpu"), fullgraph=True, backend="eager")
    assert path == CompilePath(True, True, backend="eager") and path.name == "dynamo-eager"
    if name not in FULLGRAPH:
        with pytest.raises(torch._dynamo.exc.UserError, match="data-dependent"):
            fn(twin, build_pipeline(name), x, labels, classes, False)
        return
    loss, stats = compiled.step_forward(model, build_pipeline(name), x, labels, classes, False)
    loss.backward()
    loss2, stats2 = fn(twin, build_pipeline(name), x, labels, classes, False)
    loss2.backward()
    assert torch.equal(loss, loss2)
    assert StepOutput(loss, stats).floats() == StepOutput(loss2, stats2).floats()
    assert all(isinstance(v, torch.Tensor) for v in stats2.values())  # no host sync inside the graph
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_known_classes_mine_as_unique_does() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(15, 8, generator=g), dim=1)
    labels = torch.tensor([9, 9, 9, 2, 2, 2, 7, 7, 7, 4, 4, 4, 11, 11, 11])
    a = hardest_per_class(x, labels)
    b = hardest_per_class(x, labels, classes=torch.tensor([2, 4, 7, 9, 11]))
    for f in ("pos_a", "pos_b", "neg_a", "neg_b", "valid"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_step_output_floats_in_one_read() -> None:
    out = StepOutput(torch.tensor(1.5), {"a": torch.tensor(0.25), "b": 3.0, "c": torch.tensor([2.0])})
    assert out.floats() == {"a": 0.25, "b": 3.0, "c": 2.0} and list(out.floats()) == ["a", "b", "c"]
    assert out.report() == {"loss": 1.5, "a": 0.25, "b": 3.0, "c": 2.0}
    out.total = 7.0  # a distributed rank's share: the global loss is reported
    assert out.report() == {"loss": 7.0, "a": 0.25, "b": 3.0, "c": 2.0}


# ---------------------------------------------------------------------------- recompilations


def _annealing_config(sets: tuple[Path, Path], cycles: int) -> RunConfig:
    """Stage 1 (balance, 12 classes, 2 steps) then ``cycles`` annealing cycles of 11, 10, ... classes and
    rising thresholds, one step each (batches of 16 patches or more: the CPU convolution's
    kernel choice guards on that size, a further recompilation only tiny batches meet)."""
    cfg = tiny_config(*sets, epochs=1, iters=1, classes=12, compile=True)
    anneal = CyclesConfig(start_batch=12, min_batch=12 - cycles, step=1, iters=1)
    return replace(cfg, data=replace(cfg.data, val="none"), phases={
        "stage1": PhaseConfig(loss=LossConfig(name="balance"), epochs=1, iters_per_epoch=2),
        "anneal": PhaseConfig(loss=LossConfig(name="anneal"), cycles=anneal)})


def test_annealing_phases_compile_at_most_three_times(sets: tuple[Path, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch dimension is symbolic; the new loss compiles once and the changing threshold
    once more: at most 3 graphs after stage 1 and 2 cycles (3 phases, 3 batch sizes), and none
    more in 2 further cycles (Self-TNet's 15 the same)."""
    monkeypatch.setattr(compiled, "BACKEND", "eager")
    torch._dynamo.reset()
    trainer = start_run(_annealing_config(sets, 4), tmp_path / "run")
    assert [p.classes_per_batch for p in trainer.phases] == [12, 11, 10, 9, 8]
    assert len({p.pipeline.loss.threshold for p in trainer.phases[1:]}) == 4
    lines: list[str] = []
    trainer.fit(log=lines.append, stop_after=4)  # stage 1 (2 steps) and the first 2 cycles
    assert trainer.global_step == 4 and trainer.compiler is not None
    after_three = trainer.compiler.compiles
    assert 1 <= after_three <= 3
    trainer.fit(log=lines.append)
    assert trainer.compiler.compiles == after_three
    compiled_lines = [x for x in lines if x.startswith("compiled the training step")]
    assert len(compiled_lines) == after_three  # one log line per step that compiled
    assert compiled_lines[-1].startswith(f"compiled the training step: {after_three} graph(s)")


def test_losses_with_graph_breaks_compile_the_network_alone(sets: tuple[Path, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """DDTAS's step cannot trace whole: its network alone is compiled, the run says so and
    gives the eager run's weights (dynamo's eager backend: exactly)."""
    monkeypatch.setattr(compiled, "BACKEND", "eager")
    cfg = replace(tiny_config(*sets, epochs=1, iters=2, classes=8), loss=LossConfig(name="ddtas"))
    runs = {}
    for comp in (False, True):
        lines: list[str] = []
        t = start_run(replace(cfg, loop=replace(cfg.loop, compile=comp)), tmp_path / str(comp))
        t.fit(log=lines.append)
        runs[comp] = (_weights(t.model), lines)
    assert any("loss ddtas does not trace into one graph; the network alone is compiled" in x for x in runs[True][1])
    assert not any("does not trace" in x for x in runs[False][1])
    env = json.loads((tmp_path / "True" / "environment.json").read_text())["compile"]
    assert env == {"requested": True, "path": "dynamo-eager", "reason": None, "scope": {"main": "network"}}
    for k, v in runs[False][0].items():
        assert torch.equal(v, runs[True][0][k]), k


# ---------------------------------------------------------------------------- inductor exactness


def test_compiled_float64_run_equals_eager_after_50_steps(sets: tuple[Path, Path], tmp_path: Path) -> None:
    """inductor against eager over 50 balance-loss steps in float64, where rounding cannot hide
    a wrong graph: the weights agree to 1e-11 after 10 steps and to 1e-4 after 50.

    The growth is the training's own sensitivity to rounding (hardest-pair mining, TLU's kinks,
    Adam's normalisation). Measured here: two eager float64 runs on 1 and on 2 threads differ by
    5.5e-15 after 10 steps and 5.4e-8 after 50; compiled and eager, whose fused kernels round
    differently in many more places, by 8.8e-15 and 3.9e-6. (In float32 the same tiny run is
    chaotic: 1 and 2 threads differ by 2e-2 after 10 steps and by 4.5 after 50, compiled and
    eager by 7e-4 and 2.8, so float32 weights are no test of the graph.)
    """
    if compiler_missing(torch.device("cpu")):
        pytest.skip("no C++ compiler: inductor cannot run here")
    base = replace(tiny_config(*sets, epochs=1, iters=50, classes=6, dtype="float64"), loss=LossConfig(name="balance"))
    base = replace(base, data=replace(base.data, val="none"))
    trainers = {comp: start_run(replace(base, loop=replace(base.loop, compile=comp)), tmp_path / str(comp))
                for comp in (False, True)}
    start = _weights(trainers[False].model)

    def worst() -> float:
        a, b = _weights(trainers[False].model), _weights(trainers[True].model)
        return max(float((a[k] - b[k]).abs().max()) for k in a)

    for t in trainers.values():
        t.fit(stop_after=10)
    assert worst() < 1e-11
    for t in trainers.values():
        t.fit()
    assert worst() < 1e-4
    moved = max(float((start[k] - v).abs().max()) for k, v in _weights(trainers[False].model).items())
    assert moved > 1e-2  # the run did train: the tolerance is not trivially met
    for comp in (False, True):
        env = json.loads((tmp_path / str(comp) / "environment.json").read_text())
        assert env["compile"] == {"requested": comp, "path": "inductor" if comp else "eager", "reason": None,
                                  "scope": {"main": "step"}}


def test_compiled_run_resumes_exactly_across_annealing_cycles(sets: tuple[Path, Path], tmp_path: Path) -> None:
    """Within the compiled path (float32, inductor) a run of 3 annealing cycles (new batch size
    and threshold each), stopped inside the second and resumed in a fresh compiler state (a new
    process's: ``torch._dynamo.reset``), ends with the uninterrupted run's weights, bit for bit:
    the resumed run compiles its graphs anew, from other shapes and constants first, and they
    compute the same."""
    if compiler_missing(torch.device("cpu")):
        pytest.skip("no C++ compiler: inductor cannot run here")
    cfg = tiny_config(*sets, epochs=1, iters=2, classes=8, compile=True)
    cycles = CyclesConfig(start_batch=9, min_batch=6, step=1, threshold=-1.0, threshold_step=0.05, lr=1e-3, iters=2)
    cfg = replace(cfg, data=replace(cfg.data, val="none"),
                  phases={"anneal": PhaseConfig(loss=LossConfig(name="anneal"), cycles=cycles)})
    whole = start_run(cfg, tmp_path / "whole")
    assert [p.classes_per_batch for p in whole.phases] == [8, 7, 6]
    start = _weights(whole.model)
    whole.fit()
    first = start_run(cfg, tmp_path / "parts")
    assert first.fit(stop_after=3).stopped
    torch._dynamo.reset()
    second = resume_run(tmp_path / "parts")
    assert (second.phase, second.iteration) == (1, 1) and second.compile_path.compiled
    second.fit()
    assert second.compiler is not None and second.compiler.compiles >= 1  # it did compile afresh
    ref = _weights(whole.model)
    assert max(float((start[k] - v).abs().max()) for k, v in ref.items()) > 1e-3  # it trained
    for k, v in _weights(second.model).items():
        assert torch.equal(v, ref[k]), k


# ---------------------------------------------------------------------------- fallback, precision, prefetch


def test_without_a_compiler_the_run_goes_on_eager_with_one_warning(sets: tuple[Path, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.config as inductor_config

    monkeypatch.delenv("CXX", raising=False)
    cfg = replace(tiny_config(*sets, epochs=1, iters=2, classes=6, compile=True), data=replace(
        tiny_config(*sets).data, val="none"))
    lines: list[str] = []
    # (inductor's config.patch, not monkeypatch: monkeypatch's undo deletes a config entry)
    with inductor_config.patch({"cpp.cxx": ("no-such-cxx-descbal",)}):
        assert "no C++ compiler" in (compiler_missing(torch.device("cpu")) or "")
        t = start_run(cfg, tmp_path / "run")
        t.fit(log=lines.append)
    assert compiler_missing(torch.device("cpu")) is None
    warnings = [x for x in lines if x.startswith("warning:")]
    assert len(warnings) == 1 and "running eager" in warnings[0] and "no C++ compiler" in warnings[0]
    env = json.loads((tmp_path / "run" / "environment.json").read_text())["compile"]
    assert env["requested"] is True and env["path"] == "eager" and "no C++ compiler" in env["reason"]
    eager = start_run(replace(cfg, loop=replace(cfg.loop, compile=False)), tmp_path / "eager")
    eager.fit()
    ref = _weights(eager.model)
    for k, v in _weights(t.model).items():
        assert torch.equal(v, ref[k]), k


def test_a_broken_toolchain_is_caught_before_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiler on PATH that inductor cannot build with (here: the probe function itself fails)
    is reported as one line, and compile_function hands back the eager function."""
    from descbal import compiling

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("fatal error: Python.h: No such file or directory\ncompilation terminated.")

    monkeypatch.setattr(compiling, "_probe", broken)
    compiling._inductor_probe.cache_clear()
    try:
        reason = compiler_missing(torch.device("cpu"))
        assert reason is not None and reason.endswith("(RuntimeError: fatal error: Python.h: No such file or directory)")
        fn, path = compile_function(compiling._probe, torch.device("cpu"))
        assert fn is broken and not path.compiled and path.reason and "cannot build" in path.reason
    finally:
        compiling._inductor_probe.cache_clear()


def test_precision(sets: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = tiny_config(*sets, epochs=1, iters=2, classes=6)
    cfg = replace(cfg, data=replace(cfg.data, val="none"))
    auto = start_run(cfg, tmp_path / "auto")
    assert not auto.bf16 and auto.execution()["precision"] == "fp32"  # "auto" keeps fp32 on the CPU
    bf = start_run(replace(cfg, loop=replace(cfg.loop, precision="bf16")), tmp_path / "bf16")
    assert bf.bf16 and json.loads((tmp_path / "bf16" / "environment.json").read_text())["precision"] == "bf16"
    auto.fit()
    bf.fit()
    a, b = _weights(auto.model), _weights(bf.model)
    assert all(torch.isfinite(v).all() for v in b.values())
    assert any(not torch.equal(a[k], b[k]) for k in a)  # bf16 really ran: other numbers
    with pytest.raises(BadInputError, match="loop.precision must be one of auto, fp32, bf16"):
        replace(cfg, loop=replace(cfg.loop, precision="fp16"))
    old = tmp_path / "old.toml"
    old.write_text("[loop]\nbf16 = true\n")
    with pytest.raises(BadInputError, match="loop.bf16 became loop.precision"):
        load_config(RunConfig, old)


def test_prefetch_gives_the_same_run(sets: tuple[Path, Path], tmp_path: Path) -> None:
    """Batches prefetched in the thread are the batches of the position: the same weights and
    metrics, also across a stop and resume and across epochs and phases."""
    cfg = tiny_config(*sets, epochs=2, iters=3, classes=6)
    cfg = replace(cfg, data=replace(cfg.data, val="none"), phases={
        "a": PhaseConfig(epochs=2, iters_per_epoch=2), "b": PhaseConfig(epochs=1, iters_per_epoch=2, classes_per_batch=5)})
    plain = start_run(cfg, tmp_path / "plain")
    plain.fit()
    pre = replace(cfg, loop=replace(cfg.loop, prefetch=True))
    first = start_run(pre, tmp_path / "pre")
    first.fit(stop_after=3)
    assert first._prefetcher is None  # fit closed the thread
    second = resume_run(tmp_path / "pre")
    second.fit()
    ref = _weights(plain.model)
    for k, v in _weights(second.model).items():
        assert torch.equal(v, ref[k]), k

    def records(run: Path) -> list[dict]:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "patches_per_s"} for r in rows]

    assert records(tmp_path / "pre") == records(tmp_path / "plain")
