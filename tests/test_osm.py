"""OSM + CAA (dml-seeds.md §3, §5.3): soft miner, attention, weighted contrastive loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import embedded, objective

import descbal.losses  # noqa: F401  (registers every loss)
from descbal.losses import LossPipeline
from descbal.losses.osm import OSMCAALoss, OSMSoftMiner, batch_centroid_attention, osm_pair_loss, soft_weights
from descbal.losses.registry import LOSSES

LABELS = [0, 0, 0, 1, 1, 2, 2, 3]


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def _ref_attention(x: torch.Tensor, labels: list[int], sigma: float) -> list[float]:
    out = []
    for i in range(len(labels)):
        others = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        if not others:
            out.append(1.0)
            continue
        c = F.normalize(sum(x[j] for j in others), dim=0)
        out.append(math.exp(-((1 - float(x[i] @ c)) ** 2) / (2 * sigma**2)))
    return out


def _ref_loss(x: torch.Tensor, labels: list[int], att: list[float] | None, margin: float = 1.2, sigma: float = 0.8,
              lam: float = 0.5, pair: str = "min") -> torch.Tensor:
    """§3.4 as a loop over i < j; weights are Python floats (no gradient), distances are tensors."""
    pos, neg = [], []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            d = torch.sqrt(torch.clamp(2 - 2 * (x[i] @ x[j]), min=1e-6))
            dv = float(d.detach())
            a = 1.0 if att is None else (min(att[i], att[j]) if pair == "min" else att[i] * att[j])
            if labels[i] == labels[j]:
                pos.append((math.exp(-dv**2 / (2 * sigma**2)) * a, d))
            elif dv < margin:
                neg.append(((margin - dv) * a, d))
    sp = sum(w for w, _ in pos) + 1e-12
    sn = sum(w for w, _ in neg) + 1e-12
    total = torch.zeros(())
    for w, d in pos:
        total = total + (1 - lam) * w / sp * d**2
    for w, d in neg:
        total = total + lam * w / sn * (margin - d) ** 2
    return total


def test_batch_centroid_attention_equals_brute_force() -> None:
    x = _unit(len(LABELS), 5, 0)
    got = batch_centroid_attention(x, torch.tensor(LABELS), 0.68)
    torch.testing.assert_close(got, torch.tensor(_ref_attention(x, LABELS, 0.68)))
    assert float(got[-1]) == 1.0  # a lone patch


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("attention", "pair"), [("none", "min"), ("batch_centroid", "min"), ("batch_centroid", "product")])
def test_loss_and_gradient_equal_brute_force(seed: int, attention: str, pair: str) -> None:
    x = _unit(len(LABELS), 3, seed).requires_grad_()
    labels = torch.tensor(LABELS)
    loss = OSMCAALoss(attention=attention, pair_attention=pair)
    out = embedded(loss, x, labels)
    att = None if attention == "none" else _ref_attention(x.detach(), LABELS, 0.68)
    xr = x.detach().clone().requires_grad_()
    ref = _ref_loss(xr, LABELS, att, pair=pair)
    assert float(out.loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    out.loss.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-6)  # the weights carry no gradient


def test_soft_miner_pairs_and_balance() -> None:
    x = _unit(len(LABELS), 3, 7)
    labels = torch.tensor(LABELS)
    p = OSMSoftMiner(margin=1.2)(x, labels)
    w_pos, w_neg = soft_weights(p, None)
    assert torch.all(labels[p.a1] == labels[p.p]) and torch.all(p.a1 < p.p)
    assert torch.all(labels[p.a2] != labels[p.n]) and torch.all(p.a2 < p.n)
    assert p.num_pos == 3 + 1 + 1  # every positive pair once
    d = torch.sqrt(torch.clamp(2 - 2 * (x @ x.T), min=1e-6))
    assert p.num_neg > 0 and torch.all(d[p.a2, p.n] < 1.2)  # only active negatives
    assert float(w_pos.sum()) == pytest.approx(0.5, abs=1e-6) and float(w_neg.sum()) == pytest.approx(0.5, abs=1e-6)
    # closer positives weigh more; harder negatives weigh more
    dp, dn = d[p.a1, p.p], d[p.a2, p.n]
    assert torch.equal(torch.argsort(w_pos), torch.argsort(-dp))
    assert torch.equal(torch.argsort(w_neg, stable=True), torch.argsort(-dn, stable=True))
    assert not w_pos.requires_grad and p.w_pos is not None
    torch.testing.assert_close(p.w_pos, torch.exp(-(dp * dp) / (2 * 0.8**2)))  # the miner's raw OSM weights


def test_exact_zero_when_nothing_mined() -> None:
    x = torch.eye(5, 8).requires_grad_()  # distinct labels, d = sqrt(2) > 1.2 everywhere
    out = embedded(OSMCAALoss(), x, torch.arange(5))
    assert float(out.loss.detach()) == 0.0 and not torch.isnan(out.loss.detach())
    assert out.stats["pos_pairs"] == 0 and out.stats["neg_active"] == 0
    out.loss.backward()
    assert x.grad is not None and torch.all(x.grad == 0)
    soft = OSMSoftMiner()(x, torch.arange(5))
    assert float(osm_pair_loss(x, soft, *soft_weights(soft, None)).detach()) == 0.0


def test_caffe_scale() -> None:
    x = _unit(len(LABELS), 3, 2)
    labels = torch.tensor(LABELS)
    plain = float(embedded(OSMCAALoss(attention="none"), x, labels).loss)
    scaled = float(embedded(OSMCAALoss(attention="none", caffe_scale=True), x, labels).loss)
    assert scaled == pytest.approx(plain / (2 * 28), rel=1e-6)  # N_pair = 8 * 7 / 2


def test_classifier_attention_head() -> None:
    x = _unit(len(LABELS), 6, 3).requires_grad_()
    labels = torch.tensor(LABELS)
    loss = OSMCAALoss(attention="classifier", num_classes=4, embedding_size=6, classifier_weight=0.5)
    head = [p for p in loss.parameters() if p.requires_grad]
    assert len(head) == 2  # weight and bias: the trainer adds them to the optimiser
    out = embedded(loss, x, labels)
    with torch.no_grad():
        logits = loss.classifier(x)
        p = torch.softmax(logits, 1)[torch.arange(8), labels]
        ce = F.cross_entropy(logits, labels)
    att = torch.exp(-((1 - p) ** 2) / (2 * 0.68**2))
    ref = _ref_loss(x.detach(), LABELS, att.tolist())
    assert float(out.loss.detach()) == pytest.approx(float(ref) + 0.5 * float(ce), rel=1e-5)
    assert out.stats["loss_cls"] == pytest.approx(float(ce), rel=1e-5)
    out.loss.backward()
    assert loss.classifier.weight.grad is not None and loss.classifier.weight.grad.abs().sum() > 0
    # detached by default: the cross-entropy does not reach the descriptors
    x2 = x.detach().clone().requires_grad_()
    only_ce = OSMCAALoss(attention="classifier", num_classes=4, embedding_size=6)
    only_ce.class_attention(x2, labels)[1].backward()
    assert x2.grad is None
    with pytest.raises(ValueError, match="labels"):
        embedded(loss, x.detach(), torch.tensor([0, 0, 1, 1, 2, 2, 3, 9]))
    with pytest.raises(ValueError):
        OSMCAALoss(attention="classifier")


def test_bf16_autocast_gives_float32() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 6), torch.nn.Identity())
    labels = torch.arange(5).repeat_interleave(2)
    x = torch.randn(10, 10)
    for params in ({}, {"attention": "none"}, {"attention": "classifier", "num_classes": 5, "embedding_size": 6}):
        loss = LOSSES.build("osm_caa", **params)

        def net(v: torch.Tensor) -> torch.Tensor:
            return F.normalize(model(v), dim=1)

        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert net(x).dtype == torch.bfloat16
            out = objective(LossPipeline(loss), net, x, labels)
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
        out.loss.backward()
        assert torch.isfinite(model[0].weight.grad).all()
