"""DDTAS (dml-seeds.md §1): ASMS / AT-ASMS miner, SoftCon loss, the meta step, both together."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import embedded, mine, objective

import descbal.losses  # noqa: F401  (registers every loss)
from descbal.losses.ddtas import (
    AsymmetricPairMiner,
    DDTASLoss,
    SoftContrastiveLoss,
    adaptive_tolerances,
    meta_pair_weights,
    multi_similarity_loss,
    normalise_meta_weights,
    virtual_step_loss,
)
from descbal.losses.grouping import class_split
from descbal.losses.registry import LOSSES
from descbal.losses.tuples import PairTuples

LABELS = [0, 0, 0, 1, 1, 2, 2, 3, 3, 4]  # class 4 has no positive


class Lin(torch.nn.Module):
    """A tiny descriptor network: normalise(W x)."""

    def __init__(self, din: int = 10, dout: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(din, dout, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.lin(x), dim=1)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def _ref_mine(x: torch.Tensor, labels: list[int], pos_tol: float, neg_tol: float, adaptive: bool,
              ratio: str) -> tuple[set, set, float]:
    """A plain loop over §1.3.2-1.3.3 (per anchor, Python floats)."""
    n = len(labels)
    s = [[float(x[i] @ x[j]) for j in range(n)] for i in range(n)]

    def select(gp: float, gn: float) -> dict[int, tuple[list[int], list[int]]]:
        out = {}
        for i in range(n):
            pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
            neg = [j for j in range(n) if labels[j] != labels[i]]
            if not pos or not neg:
                out[i] = ([], [])
                continue
            smin = min(s[i][j] for j in pos)
            smax = max(s[i][j] for j in neg)
            out[i] = ([j for j in pos if s[i][j] < smax + gp], [j for j in neg if s[i][j] > smin - gn])
        return out

    gp, gn, t = pos_tol, neg_tol, 0.0
    if adaptive:
        first = select(gp, gn)
        all_p = sum(1 for i in range(n) for j in range(n) if j != i and labels[j] == labels[i])
        all_n = sum(1 for i in range(n) for j in range(n) if labels[j] != labels[i])
        sel_p = sum(len(v[0]) for v in first.values())
        sel_n = sum(len(v[1]) for v in first.values())
        r = sel_n / all_p if ratio == "code" else (sel_n / all_n) / (sel_p / all_p)
        if r > 1:
            t = 0.5 / (1 + math.exp(-r))
        gp, gn = pos_tol * (1 + t), neg_tol * (1 - t)
    mined = select(gp, gn)
    pos, neg = set(), set()
    for i, (ps, ns) in mined.items():
        if ps and ns:
            pos |= {(i, j) for j in ps}
            neg |= {(i, j) for j in ns}
    return pos, neg, t


def test_adaptive_rule_table() -> None:
    assert adaptive_tolerances(0.5, 0.1, 0.01) == (0.0, 0.1, 0.01)
    assert adaptive_tolerances(1.0, 0.1, 0.01) == (0.0, 0.1, 0.01)
    t, gp, gn = adaptive_tolerances(2.0, 0.1, 0.01)
    assert t == pytest.approx(0.5 / (1 + math.exp(-2)))
    assert gp == pytest.approx(0.1 * (1 + t)) and gn == pytest.approx(0.01 * (1 - t))
    t, gp, gn = adaptive_tolerances(10.0, 0.1, 0.01)  # saturated (§1.3.3)
    assert t == pytest.approx(0.5, abs=1e-4) and gp == pytest.approx(0.15, abs=1e-5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("adaptive", "ratio"), [(False, "code"), (True, "code"), (True, "normalised")])
def test_miner_equals_brute_force(seed: int, adaptive: bool, ratio: str) -> None:
    x = _unit(len(LABELS), 4, seed)
    labels = torch.tensor(LABELS)
    pairs, stats = mine(AsymmetricPairMiner(0.1, 0.01, adaptive, ratio), x, labels)
    ref_pos, ref_neg, t = _ref_mine(x, LABELS, 0.1, 0.01, adaptive, ratio)
    assert set(zip(pairs.a1.tolist(), pairs.p.tolist(), strict=True)) == ref_pos
    assert set(zip(pairs.a2.tolist(), pairs.n.tolist(), strict=True)) == ref_neg
    assert stats["t"] == pytest.approx(t)
    assert torch.all(labels[pairs.a1] == labels[pairs.p]) and torch.all(pairs.a1 != pairs.p)
    assert torch.all(labels[pairs.a2] != labels[pairs.n])
    assert not torch.any(pairs.a1 == 9) and not torch.any(pairs.a2 == 9)  # no positive: anchor skipped


def test_asymmetric_tolerances_and_duplicates() -> None:
    # anchor 0: positive at S = 0.80, negatives at S = 0.85 and 0.785.
    x = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.85, 0.0, math.sqrt(1 - 0.85**2)],
                                  [0.785, 0.0, -math.sqrt(1 - 0.785**2)]]), dim=1)
    labels = torch.tensor([0, 0, 1, 2])
    p = AsymmetricPairMiner(0.1, 0.01)(x, labels)
    assert set(zip(p.a2.tolist(), p.n.tolist(), strict=True)) >= {(0, 2)}
    assert (0, 3) not in set(zip(p.a2.tolist(), p.n.tolist(), strict=True))  # 0.785 < 0.80 - 0.01: not mined
    sym = AsymmetricPairMiner(0.1, 0.1)(x, labels)  # the symmetric MS rule keeps it
    assert (0, 3) in set(zip(sym.a2.tolist(), sym.n.tolist(), strict=True))
    # an exact duplicate positive (S = 1) with a negative at S = 0.995 (> 1 - 0.01): both mined
    dup = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.995, 0.0, math.sqrt(1 - 0.995**2)],
                                    [0.0, 1.0, 0.0]]), dim=1)
    kept = AsymmetricPairMiner()(dup, labels)
    assert (0, 1) in set(zip(kept.a1.tolist(), kept.p.tolist(), strict=True))  # self excluded by index only
    dropped = AsymmetricPairMiner(exclude_duplicates=True)(dup, labels)
    assert (0, 1) not in set(zip(dropped.a1.tolist(), dropped.p.tolist(), strict=True))


def test_normalised_ratio_avoids_saturation() -> None:
    g = torch.Generator().manual_seed(5)
    labels = torch.arange(150).repeat_interleave(2)
    centres = F.normalize(torch.randn(150, 16, generator=g), dim=1).repeat_interleave(2, 0)
    x = F.normalize(centres + 0.5 * torch.randn(300, 16, generator=g), dim=1)
    code = mine(AsymmetricPairMiner(adaptive=True), x, labels)[1]
    norm = mine(AsymmetricPairMiner(adaptive=True, ratio="normalised"), x, labels)[1]
    assert code["ratio"] > 4 and code["t"] > 0.49  # N_sel_neg / N_all_pos >> 1 with many classes
    assert norm["ratio"] < code["ratio"] / 10


def _ref_softcon(x: torch.Tensor, pos: list, neg: list, wp: list, wn: list, n: int, alpha: float, beta: float,
                 base: float, active_only: bool) -> float:
    total, active = 0.0, 0
    for i in range(n):
        ps = [(k, j) for k, (a, j) in enumerate(pos) if a == i]
        ns = [(k, j) for k, (a, j) in enumerate(neg) if a == i]
        if not ps or not ns:
            continue
        active += 1
        lp = sum(2 / beta * math.log1p(math.exp(-beta * (wp[k] * float(x[i] @ x[j]) - base))) for k, j in ps) / len(ps)
        ln = sum(2 / alpha * math.log1p(math.exp(alpha * (wn[k] * float(x[i] @ x[j]) - base))) for k, j in ns) / len(ns)
        total += lp + ln
    return total / (active if active_only else n)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("reduction", ["all_anchors", "active_anchors"])
def test_softcon_equals_brute_force(seed: int, reduction: str) -> None:
    x = _unit(len(LABELS), 4, seed)
    pairs = mine(AsymmetricPairMiner(adaptive=True), x, torch.tensor(LABELS))[0]
    g = torch.Generator().manual_seed(seed + 10)
    wp, wn = torch.rand(pairs.num_pos, generator=g), torch.rand(pairs.num_neg, generator=g)
    loss = SoftContrastiveLoss(40.0, 2.0, 0.5, reduction)
    got = loss(x, pairs, wp, wn)
    pos = list(zip(pairs.a1.tolist(), pairs.p.tolist(), strict=True))
    neg = list(zip(pairs.a2.tolist(), pairs.n.tolist(), strict=True))
    ref = _ref_softcon(x, pos, neg, wp.tolist(), wn.tolist(), len(LABELS), 40.0, 2.0, 0.5, reduction == "active_anchors")
    assert float(got) == pytest.approx(ref, rel=1e-5)
    unweighted = _ref_softcon(x, pos, neg, [1.0] * len(pos), [1.0] * len(neg), len(LABELS), 40.0, 2.0, 0.5,
                              reduction == "active_anchors")
    assert float(loss(x, pairs)) == pytest.approx(unweighted, rel=1e-5)


def test_multi_similarity_equals_brute_force() -> None:
    x = _unit(len(LABELS), 5, 3)
    n = len(LABELS)
    ref = 0.0
    for i in range(n):
        sp = sum(math.exp(-2 * (float(x[i] @ x[j]) - 0.5)) for j in range(n) if j != i and LABELS[j] == LABELS[i])
        sn = sum(math.exp(40 * (float(x[i] @ x[j]) - 0.5)) for j in range(n) if LABELS[j] != LABELS[i])
        ref += 2 / 2 * math.log(1 + sp) + 2 / 40 * math.log(1 + sn)
    assert float(multi_similarity_loss(x, torch.tensor(LABELS), 40.0, 2.0, 0.5)) == pytest.approx(ref / n, rel=1e-5)


def test_exact_zero_when_nothing_mined() -> None:
    x = _unit(6, 4, 0).requires_grad_()
    labels = torch.arange(6)  # no positive anywhere
    out = embedded(DDTASLoss(meta="none"), x, labels)
    assert float(out.loss.detach()) == 0.0 and out.stats["mined_pos"] == 0
    out.loss.backward()
    assert x.grad is not None and torch.all(x.grad == 0)
    model = Lin()
    full = objective(DDTASLoss(), model, torch.randn(6, 10), labels)  # meta step on: still an exact 0
    assert float(full.loss.detach()) == 0.0 and not torch.isnan(full.loss.detach())
    full.loss.backward()


def test_virtual_step_meta_gradient_equals_closed_form() -> None:
    """At w = 0, dL_v/dw_k = -eta c_k <grad L_v(theta), grad S_k(theta)> (c_k: the pair's slope)."""
    model = Lin(seed=1)
    g = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    x, xv = torch.randn(10, 10, generator=g), torch.randn(6, 10, generator=g)
    yv = torch.tensor([5, 5, 6, 6, 7, 7])
    loss = SoftContrastiveLoss(alpha=4.0, beta=2.0, base=0.3)  # a small alpha keeps both sides comparable
    with torch.no_grad():
        pairs = mine(AsymmetricPairMiner(adaptive=True), model(x), labels)[0]
    kp, eta = pairs.num_pos, 0.05
    w = torch.zeros(len(pairs), requires_grad=True)
    lv = virtual_step_loss(model, x, lambda f: loss(f, pairs, w[:kp], w[kp:]), xv,
                           lambda f: multi_similarity_loss(f, yv, 4.0, 2.0, 0.5), eta)
    (got,) = torch.autograd.grad(lv, [w])
    # brute force
    params = [model.lin.weight]
    gv = torch.autograd.grad(multi_similarity_loss(model(xv), yv, 4.0, 2.0, 0.5), params)[0]
    n = len(labels)
    cp = torch.bincount(pairs.a1, minlength=n)
    cn = torch.bincount(pairs.a2, minlength=n)
    ref = []
    for k, (a, b) in enumerate(list(zip(pairs.a1.tolist(), pairs.p.tolist(), strict=True))
                               + list(zip(pairs.a2.tolist(), pairs.n.tolist(), strict=True))):
        f = model(x)
        gs = torch.autograd.grad(f[a] @ f[b], params)[0]
        if k < kp:
            c = -2 / (1 + math.exp(-2.0 * 0.3)) / (n * int(cp[a]))
        else:
            c = 2 / (1 + math.exp(4.0 * 0.3)) / (n * int(cn[a]))
        ref.append(-eta * c * float((gv * gs).sum()))
    torch.testing.assert_close(got, torch.tensor(ref), rtol=1e-3, atol=1e-7)
    # the production path (separate normalisation, per-side step scaling) gives relu(-g) / max per side
    ws = meta_pair_weights(model, x, pairs, xv, yv, loss, inner_lr=eta, val_alpha=4.0, val_beta=2.0, val_base=0.5)
    assert ws is not None
    r = torch.relu(-torch.tensor(ref))
    torch.testing.assert_close(ws[0], r[:kp] / r[:kp].max(), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(ws[1], r[kp:] / r[kp:].max(), rtol=1e-3, atol=1e-4)


def test_weight_normalisation_modes() -> None:
    g = torch.tensor([-2.0, 1.0, -1.0, -1e-12, -3e-12, 5.0])
    joint = normalise_meta_weights(g, 3, "joint")
    sep = normalise_meta_weights(g, 3, "separate")
    assert joint is not None and sep is not None
    torch.testing.assert_close(joint, torch.tensor([1.0, 0.0, 0.5, 5e-13, 1.5e-12, 0.0]))
    torch.testing.assert_close(sep, torch.tensor([1.0, 0.0, 0.5, 1 / 3, 1.0, 0.0]))
    assert normalise_meta_weights(torch.tensor([1.0, 2.0]), 1) is None


def test_both_parts_active_in_one_training_step() -> None:
    """AT-ASMS moves the tolerances and the meta step weights the pairs, in one optimiser step."""
    model = Lin(seed=3)
    g = torch.Generator().manual_seed(4)
    labels = torch.arange(8).repeat_interleave(3)
    x = torch.randn(24, 10, generator=g)
    loss = LOSSES.build("ddtas")
    miner = loss.make_miner()
    assert miner.adaptive and loss.meta == "pair_weight"
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.lin.weight.detach().clone()
    out = objective(loss, model, x, labels)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    s = out.stats
    assert s["ratio"] > 1 and s["t"] > 0 and s["gamma_p"] > 0.1 and s["gamma_n"] < 0.01  # AT-ASMS acted
    assert s["meta_active"] == 1.0 and 0 < s["w_pos_mean"] < 1  # the meta weights are not all 1
    assert not torch.equal(before, model.lin.weight)
    # the loss is SoftCon at the AT-ASMS pairs of the training classes with the meta weights
    model.lin.weight.data.copy_(before)
    keep, held = class_split(labels, 0.25)
    assert len(held) == 6 and len(keep) == 18
    desc = model(x[keep])
    pairs = miner(desc, labels[keep])
    ws = meta_pair_weights(model, x[keep], pairs, x[held], labels[held], loss.softcon)
    assert ws is not None
    assert float(loss.softcon(desc, pairs, *ws).detach()) == pytest.approx(float(out.loss.detach()), rel=1e-5)
    assert float(loss.softcon(desc, pairs).detach()) != pytest.approx(float(out.loss.detach()), rel=1e-3)  # weights matter


def test_explicit_validation_batch_and_no_holdout() -> None:
    model = Lin(seed=5)
    g = torch.Generator().manual_seed(6)
    labels = torch.arange(6).repeat_interleave(2)
    x = torch.randn(12, 10, generator=g)
    held = (torch.randn(6, 10, generator=g), torch.tensor([0, 0, 1, 1, 2, 2]))  # a separate validation batch
    out = embedded(DDTASLoss(), model(x), labels, model=model, inputs=x, held=held)
    assert out.stats["meta_active"] == 1.0
    assert out.stats["mined_pos"] + out.stats["mined_neg"] > 0
    overlap = objective(DDTASLoss(meta_val_holdout=False), model, x, labels)
    assert overlap.stats["meta_active"] == 1.0
    tiny = objective(DDTASLoss(), model, x[:6], labels[:6])  # 3 classes: too few to split, no meta step
    assert tiny.stats["meta_active"] == 0.0


def test_threshold_mode_is_a_checkpointed_buffer() -> None:
    model = Lin(seed=7)
    g = torch.Generator().manual_seed(8)
    labels = torch.arange(8).repeat_interleave(2)
    x = torch.randn(16, 10, generator=g)
    loss = DDTASLoss(meta="threshold", meta_lr=10.0, meta_inner_lr=0.5)
    out = objective(loss, model, x, labels)
    assert out.stats["meta_active"] == 1.0 and out.stats["base_grad"] != 0.0
    assert float(loss.meta_base) != 0.7 and 0.0 <= float(loss.meta_base) <= 0.999
    fresh = DDTASLoss(meta="threshold")
    fresh.load_state_dict(loss.state_dict())
    assert float(fresh.meta_base) == float(loss.meta_base)


def test_bf16_autocast_gives_float32() -> None:
    model = Lin(seed=9)
    labels = torch.arange(8).repeat_interleave(3)
    x = torch.randn(24, 10, generator=torch.Generator().manual_seed(10))
    for meta in ("pair_weight", "threshold", "none"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x).dtype == torch.bfloat16
            out = objective(DDTASLoss(meta=meta), model, x, labels)
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
        out.loss.backward()
        assert torch.isfinite(model.lin.weight.grad).all()


def test_validation_of_arguments() -> None:
    with pytest.raises(ValueError):
        DDTASLoss(meta="both")
    with pytest.raises(ValueError):
        AsymmetricPairMiner(ratio="other")
    with pytest.raises(ValueError):
        SoftContrastiveLoss(reduction="sum")
    assert len(PairTuples.empty()) == 0


def _seed_rows() -> dict[str, list[str]]:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "seeds_rows.py"
    spec = importlib.util.spec_from_file_location("seeds_rows", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.seed_method_overrides()


@pytest.mark.parametrize(("recipe", "loss_name"), [("ddtas", "ddtas"), ("memory-contrastive", "memory_contrastive"),
                                                   ("osm-caa", "osm_caa")])
def test_recipes_and_ablation_rows_build(recipe: str, loss_name: str) -> None:
    """Each seed loss: its recipe and its ablation row (on self-tnet-small) resolve and build."""
    from descbal.config import load_config
    from descbal.recipes import recipe_names, recipe_text
    from descbal.train.config import RunConfig
    from descbal.train.trainer import build_phases

    assert recipe in recipe_names()
    cfg = load_config(RunConfig, [recipe_text(recipe)])
    assert cfg.loss.name == loss_name
    assert type(build_phases(cfg)[0].pipeline.loss).name == loss_name  # type: ignore[attr-defined]
    rows = [r for r in _seed_rows().values() if f'loss.name="{loss_name}"' in r]
    assert len(rows) == 1
    common = ["loop.classes_per_batch=64", "loop.device=cpu", "loop.epochs=4", "loop.iters_per_epoch=75",
              "phases.anneal.enabled=false"]
    cfg = load_config(RunConfig, [recipe_text("self-tnet-small")], common + rows[0] + ['data.train="x.h5"'])
    phases = build_phases(cfg)
    assert len(phases) == 1 and type(phases[0].pipeline.loss).name == loss_name  # type: ignore[attr-defined]
    assert phases[0].steps == 300
