"""Memory-based contrastive loss (dml-seeds.md §2, §5.2): miner, loss, memory state, resume."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import embedded, objective
from train_fixtures import tiny_config, write_sets

import descbal.losses  # noqa: F401  (registers every loss)
from descbal.losses.memory import RANK_BASE, HardNegativePairMiner, MemoryContrastiveLoss, contrastive_pair_loss
from descbal.losses.registry import LOSSES
from descbal.losses.tuples import Reference
from descbal.train.config import LossConfig, ModelConfig
from descbal.train.trainer import resume_run, start_run


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


class Lin(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(10, 6, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.lin(x), dim=1)


def _ref_term(x: torch.Tensor, labels: list[int], ids: list[int], refs: list[tuple[torch.Tensor, int, int]],
              lam: float, reduction: str) -> float:
    """XBM's contrastive loss of the anchors against ``refs`` (a plain loop)."""
    total = 0.0
    for i in range(len(labels)):
        pos = [1 - float(x[i] @ f) for f, y, g in refs if y == labels[i] and g != ids[i]]
        neg = [float(x[i] @ f) for f, y, g in refs if y != labels[i] and float(x[i] @ f) > lam]
        if reduction == "sum":
            total += sum(pos) + sum(neg)
        else:
            total += (sum(pos) / len(pos) if pos else 0.0) + (sum(neg) / len(neg) if neg else 0.0)
    return total / len(labels)


def test_miner_valid_and_self_masked_by_id() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    x = _unit(6, 3, 0)
    x[5] = x[0]  # an exact duplicate of patch 0 (same label): a positive, not a self match
    pairs = HardNegativePairMiner(0.1)(x, labels)
    assert torch.all(labels[pairs.a1] == labels[pairs.p]) and torch.all(pairs.a1 != pairs.p)
    assert torch.all(labels[pairs.a2] != labels[pairs.n])
    s = x @ x.T
    assert torch.all(s[pairs.a2, pairs.n] > 0.1)
    pos = set(zip(pairs.a1.tolist(), pairs.p.tolist(), strict=True))
    assert (0, 5) in pos and (5, 0) in pos and (0, 0) not in pos
    assert len(pos) == 2 * (3 + 1)  # class 0: 3 x 2 ordered pairs; class 1: 2
    # against a reference with ids: the self match is the entry with the anchor's id
    ref = torch.cat([x, x[:2]])
    ref_labels = torch.cat([labels, labels[:2]])
    ids = torch.arange(6) + 100
    ref_ids = torch.cat([ids, torch.tensor([7, 8])])
    pairs = HardNegativePairMiner(0.1)(x, labels, Reference(ref, ref_labels, ref_ids, ids))
    pos = set(zip(pairs.a1.tolist(), pairs.p.tolist(), strict=True))
    assert (0, 0) not in pos and (0, 6) in pos and (1, 7) in pos  # older copies of a patch are positives


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_over_steps_equals_brute_force_memory(reduction: str) -> None:
    """Five batches of 6 into a memory of 15 (wraps mid-batch), memory term from call 2 on."""
    b, m, lam = 6, 15, 0.2
    loss = MemoryContrastiveLoss(neg_threshold=lam, memory_size=m, start_iter=2, memory_weight=0.7, reduction=reduction)
    slots: list[tuple[torch.Tensor, int, int] | None] = [None] * m
    ptr, seen = 0, 0
    for step in range(5):
        x = _unit(b, 4, step)
        labels = [step % 2, step % 2, 2, 2, 3, 4 + step]
        out = embedded(loss, x, torch.tensor(labels))
        ids = list(range(seen, seen + b))
        for k in range(b):  # the reference enqueues first, too
            slots[(ptr + k) % m] = (x[k], labels[k], ids[k])
        ptr, seen = (ptr + b) % m, seen + b
        batch_refs = [(x[k], labels[k], ids[k]) for k in range(b)]
        ref = _ref_term(x, labels, ids, batch_refs, lam, reduction)
        if step >= 2:
            ref += 0.7 * _ref_term(x, labels, ids, [s for s in slots if s is not None], lam, reduction)
        assert float(out.loss) == pytest.approx(ref, rel=1e-5, abs=1e-6), step
        assert out.stats["memory_on"] == float(step >= 2)
        assert int(loss.ptr) == ptr and int(loss.filled) == min(seen, m) and int(loss.seen) == seen
    mem, mem_labels, mem_ids = loss.memory()
    for k, s in enumerate(slots):
        assert s is not None
        torch.testing.assert_close(mem[k], s[0])
        assert int(mem_labels[k]) == s[1] and int(mem_ids[k]) == s[2]


def test_enqueued_before_the_loss() -> None:
    """First call: the memory holds exactly the current batch, so the two terms agree."""
    x = _unit(8, 5, 1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    stats = embedded(MemoryContrastiveLoss(neg_threshold=0.0, start_iter=0), x, labels).floats()
    assert stats["memory_on"] == 1.0 and stats["memory_fill"] == pytest.approx(1 / 8)
    assert stats["loss_memory"] == pytest.approx(stats["loss_batch"], rel=1e-6)
    assert stats["pos_memory"] == stats["pos_batch"] == 1.0  # self masked by id, partner kept


def test_exact_zero_when_nothing_mined() -> None:
    x = torch.eye(5, 6).requires_grad_()  # orthogonal, all labels distinct: no positive, no hard negative
    loss = MemoryContrastiveLoss(start_iter=0)
    out = embedded(loss, x, torch.arange(5))
    assert float(out.loss.detach()) == 0.0 and not torch.isnan(out.loss.detach())
    out.loss.backward()
    assert x.grad is not None and torch.all(x.grad == 0)
    per, _ = contrastive_pair_loss(x, HardNegativePairMiner()(x, torch.arange(5)))
    assert float(per.detach()) == 0.0


def test_state_dict_round_trip_continues_identically() -> None:
    g = torch.Generator().manual_seed(3)
    batches = [(F.normalize(torch.randn(6, 4, generator=g), dim=1), torch.randint(0, 4, (6,), generator=g))
               for _ in range(7)]
    a = MemoryContrastiveLoss(neg_threshold=0.1, memory_batches=2, start_iter=3)
    for x, y in batches[:4]:
        embedded(a, x, y)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert {"mem_feats", "mem_labels", "mem_ids", "ptr", "filled", "seen", "iteration"} <= set(state)
    assert state["mem_feats"].shape == (12, 4) and int(state["iteration"]) == 4
    b = MemoryContrastiveLoss(neg_threshold=0.1, memory_batches=2, start_iter=3)  # fresh: unsized buffers
    b.load_state_dict(state)
    for x, y in batches[4:]:
        la, lb = embedded(a, x, y), embedded(b, x, y)
        assert torch.equal(la.loss, lb.loss) and la.stats == lb.stats
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_ema_bank_updates_entries_by_point_and_rank() -> None:
    loss = MemoryContrastiveLoss(update="ema_bank", momentum=0.9, memory_size=10, start_iter=0)
    labels = torch.tensor([4, 4, 9])
    x1, x2 = _unit(3, 4, 1), _unit(3, 4, 2)
    embedded(loss, x1, labels)
    assert int(loss.filled) == 3
    assert sorted(loss.mem_ids[:3].tolist()) == [4 * RANK_BASE, 4 * RANK_BASE + 1, 9 * RANK_BASE]
    out = embedded(loss, x2, labels)
    assert int(loss.filled) == 3  # the same keys: updated in place, nothing inserted
    torch.testing.assert_close(loss.mem_feats[:3], F.normalize(0.9 * x1 + 0.1 * x2, dim=1))
    assert out.stats["pos_memory"] == pytest.approx(2 / 3)  # each 4 sees the other rank; 9 has only itself
    embedded(loss, x2, torch.tensor([5, 5, 9]))
    assert int(loss.filled) == 5
    with pytest.raises(ValueError):
        embedded(loss, x2, torch.tensor([1, 2, 3]), ids=torch.tensor([1, 1, 2]))


def test_ema_encoder_tracks_the_parameters() -> None:
    model = Lin(seed=4)
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = MemoryContrastiveLoss(update="ema_encoder", momentum=0.5, start_iter=0)
    objective(loss, model, x, labels)
    w0 = model.lin.weight.detach().clone()
    torch.testing.assert_close(loss.ema_params, w0.reshape(-1))
    with torch.no_grad():
        torch.testing.assert_close(loss.mem_feats[:6], model(x))
        model.lin.weight.add_(1.0)
    objective(loss, model, x, labels)
    ema = 0.5 * w0 + 0.5 * (w0 + 1.0)
    torch.testing.assert_close(loss.ema_params, ema.reshape(-1))
    with torch.no_grad():
        torch.testing.assert_close(loss.mem_feats[6:12], F.normalize(x @ ema.T, dim=1))


def test_bf16_autocast_and_memory_dtype() -> None:
    model = Lin(seed=6)
    x = torch.randn(12, 10, generator=torch.Generator().manual_seed(7))
    labels = torch.arange(6).repeat_interleave(2)
    for update, dtype in (("fifo", "float32"), ("fifo", "bfloat16"), ("ema_bank", "float32"), ("ema_encoder", "float32")):
        loss = MemoryContrastiveLoss(neg_threshold=-1.0, start_iter=0, update=update, memory_dtype=dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x).dtype == torch.bfloat16
            out = objective(loss, model, x, labels)
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss), update
        assert out.stats["neg_memory"] > 0
        out.loss.backward()


def test_arguments_and_capacity() -> None:
    with pytest.raises(ValueError):
        MemoryContrastiveLoss(update="momentum")
    with pytest.raises(ValueError):
        MemoryContrastiveLoss(memory_dtype="int8")
    loss = MemoryContrastiveLoss(memory_size=4)
    with pytest.raises(ValueError, match="does not fit"):
        embedded(loss, _unit(6, 3, 0), torch.zeros(6, dtype=torch.long))
    assert isinstance(LOSSES.build("memory_contrastive", memory_batches=16), MemoryContrastiveLoss)
    loss = MemoryContrastiveLoss(memory_size=8)
    embedded(loss, _unit(6, 3, 0), torch.zeros(6, dtype=torch.long))
    loss.reset_memory()
    assert int(loss.filled) == 0 and int(loss.ptr) == 0 and loss.capacity == 8 and loss.memory()[0].shape == (0, 3)


def test_trainer_checkpoint_resume_keeps_the_memory(tmp_path: Path) -> None:
    """Stopped mid-run and resumed with descbal's trainer: the same memory, weights and log."""
    train, _ = write_sets(tmp_path / "data", seed=0, num_classes=30, per_class=3)
    cfg = tiny_config(train, None, epochs=2, iters=2, classes=4)
    cfg = replace(cfg, model=ModelConfig("tfeat", {"normalize": True}),  # a light network: the memory is the point
                  loss=LossConfig("memory_contrastive", {"neg_threshold": 0.0, "memory_batches": 2, "start_iter": 2}))
    ref = start_run(cfg, tmp_path / "ref")
    ref.fit()
    run = tmp_path / "run"
    start_run(cfg, run).fit(stop_after=3)  # mid epoch 1, memory on
    resumed = resume_run(run)
    loss = resumed.phases[0].pipeline.loss
    assert int(loss.iteration) == 3 and loss.capacity == 24  # restored before the first resumed step
    resumed.fit()
    for k, v in ref.phases[0].pipeline.loss.state_dict().items():
        assert torch.equal(v, loss.state_dict()[k]), k
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k

    def records(p: Path) -> list[dict]:
        lines = [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "patches_per_s"} for r in lines]

    recs = records(run)
    assert recs == records(tmp_path / "ref")
    assert [r.get("memory_on") for r in recs if "loss" in r] == [0.0, 0.0, 1.0, 1.0]
