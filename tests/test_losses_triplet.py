"""Hardest-in-batch mining per class (self-tnet.md §2.2) and the triplet margin loss, against
hand-computed cases and a brute-force reference loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from loss_fixtures import objective, per_class
from torch import nn
from train_fixtures import one_torch_thread  # noqa: F401

from descbal.losses.distances import distance_matrix, pair_distances
from descbal.losses.miners import NEAR_DUPLICATE, hardest_per_class
from descbal.losses.reducers import mean_reduce
from descbal.losses.registry import LOSSES
from descbal.losses.triplet import TripletMargin
from descbal.registry import Registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def on_circle(*angles: float) -> torch.Tensor:
    """2-D unit vectors at the given angles (radians), float32. Shape: (N, 2)."""
    a = torch.tensor(angles, dtype=torch.float64)
    return torch.stack([a.cos(), a.sin()], dim=1).float()


def lab(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.int64)


def tuples(x: torch.Tensor, labels: torch.Tensor) -> dict[str, list]:
    t = hardest_per_class(x, labels)
    return {k: getattr(t, k).tolist() for k in ("pos_a", "pos_b", "neg_a", "neg_b", "valid")}


# ---------------------------------------------------------------------------- distances


def test_distance_matrix_formula() -> None:
    x = on_circle(0.0, 0.5, 2.0)
    d = distance_matrix(x)
    want = torch.sqrt(torch.clamp(2 - 2 * x.double() @ x.double().T, min=1e-6))
    off = ~torch.eye(3, dtype=torch.bool)
    torch.testing.assert_close(d.double()[off], want[off], atol=1e-6, rtol=0)
    assert d.dtype == torch.float32
    # self: the floor, sqrt(1e-6) = 0.001 (float32 rounding of |x|^2 stays below it)
    torch.testing.assert_close(torch.diagonal(d), torch.full((3,), 1e-3), atol=3e-4, rtol=0)
    # between unit vectors at angle t the distance is the chord 2 sin(t / 2)
    assert d[0, 2].item() == pytest.approx(2 * math.sin(1.0), abs=1e-5)


def test_pair_distances_plain_l2_in_float32_at_least() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]], dtype=torch.bfloat16)
    d = pair_distances(x, lab(0, 2), lab(1, 1))
    assert d.dtype == torch.float32  # half types are widened
    torch.testing.assert_close(d, torch.tensor([5.0, math.sqrt(13.0)]))
    d64 = pair_distances(x.double(), lab(0, 2), lab(1, 1))
    assert d64.dtype == torch.float64  # float64 stays (exactness checks)
    torch.testing.assert_close(d64, torch.tensor([5.0, math.sqrt(13.0)], dtype=torch.float64))


# ---------------------------------------------------------------------------- mining


def test_hand_built_batch() -> None:
    """Three classes on the unit circle, interleaved. Every distance is monotone in the angle
    difference, so each choice can be read off the angles:

    index:  0     1     2     3     4     5     6
    label:  7     3     7     9     7     3     9
    angle:  0.45  2.0   0.0  -1.0   1.2   2.2  -1.4
    """
    x = on_circle(0.45, 2.0, 0.0, -1.0, 1.2, 2.2, -1.4)
    t = tuples(x, lab(7, 3, 7, 9, 7, 3, 9))
    # classes in ascending id order: 3, 7, 9
    assert t["pos_a"] == [1, 2, 3] and t["pos_b"] == [5, 4, 6]
    # class 7: the member holding the farthest positive (index 2, angle 0 <-> 1.2) is not the one
    # holding the closest negative (index 4, angle 1.2 <-> 2.0)
    assert t["neg_a"] == [1, 4, 3] and t["neg_b"] == [4, 1, 2]
    assert t["valid"] == [True, True, True]


def test_near_duplicate_negatives_are_skipped() -> None:
    """Index 2 (class 2) is 0.004 rad from index 0 (class 1): D ~ 0.0041 <= 0.008, a probable
    false negative. Without the cut the class-1 negative would be (0, 2)."""
    x = on_circle(0.0, -0.5, 0.004, 0.6)
    labels = lab(1, 1, 2, 2)
    d = distance_matrix(x)
    assert d[0, 2] <= NEAR_DUPLICATE < d[1, 2]
    t = tuples(x, labels)
    assert t["neg_a"] == [1, 2] and t["neg_b"] == [2, 1]
    assert t["valid"] == [True, True]
    # the same batch with the cut disabled picks the near-duplicate
    t0 = hardest_per_class(x, labels, near_duplicate=0.0)
    assert (t0.neg_a.tolist(), t0.neg_b.tolist()) == ([0, 2], [2, 0])


@pytest.mark.parametrize("angle, skipped", [(0.0075, True), (0.0085, False)])
def test_near_duplicate_threshold(angle: float, skipped: bool) -> None:
    x = on_circle(0.0, -2.0, angle, 1.5)
    t = tuples(x, lab(1, 1, 2, 2))
    assert (t["neg_a"][0], t["neg_b"][0]) == ((0, 3) if skipped else (0, 2))


def test_hardest_positive_includes_self() -> None:
    """A lone patch taken twice (identical descriptors): the positive distance is the self/duplicate
    distance ~0.001; a class with a single entry pairs the entry with itself."""
    x = on_circle(0.3, 0.3, 1.0, 1.3, -1.0)
    labels = lab(4, 4, 8, 8, 6)
    t = hardest_per_class(x, labels)
    d = distance_matrix(x)
    # classes 4, 6, 8
    assert t.pos_a[0] == 0 and t.pos_b[0] in (0, 1)
    assert d[t.pos_a[0], t.pos_b[0]].item() == pytest.approx(1e-3, abs=3e-4)
    assert (t.pos_a[1].item(), t.pos_b[1].item()) == (4, 4)
    assert (t.pos_a[2].item(), t.pos_b[2].item()) == (2, 3)
    assert t.valid.all()


def test_ties_go_to_the_lowest_index() -> None:
    """One-hot vectors: every cross distance is exactly sqrt(2 + 1e-6)."""
    x = torch.eye(4)[[0, 2, 1, 3]]
    t = tuples(x, lab(5, 6, 5, 6))
    assert t["pos_a"] == [0, 1] and t["pos_b"] == [2, 3]
    assert t["neg_a"] == [0, 1] and t["neg_b"] == [1, 0]


def test_class_without_usable_negative_is_invalid() -> None:
    x = on_circle(0.0, 0.5, 0.003, 2.0)
    t = tuples(x, lab(1, 1, 2, 3))  # class 2 has a near-duplicate negative (index 0), but others too
    assert t["valid"] == [True, True, True]
    t = tuples(on_circle(0.0, 0.5, 1.0), lab(1, 1, 1))  # one class: nothing to compare with
    assert t["valid"] == [False]
    t = tuples(on_circle(0.0, 0.004, 0.001), lab(1, 2, 2))  # only near-duplicates
    assert t["valid"] == [False, False]


def test_mining_runs_without_gradient() -> None:
    x = torch.nn.functional.normalize(torch.randn(6, 4), dim=1).requires_grad_(True)
    t = hardest_per_class(x, lab(0, 0, 1, 1, 2, 2))
    for v in (t.pos_a, t.pos_b, t.neg_a, t.neg_b):
        assert v.dtype == torch.int64 and not v.requires_grad
    assert len(t) == 3


# ---------------------------------------------------------------------------- brute force


def brute_force(x: np.ndarray, labels: np.ndarray, margin: float) -> tuple[np.ndarray, list, list]:
    """Per-class losses, written as plain loops in float64 from the §2.2 definitions."""
    n = len(x)
    d = np.sqrt(np.abs(2 - 2 * x @ x.T) + 1e-6)
    p, pd, ng, nd = [0] * n, [0.0] * n, [-1] * n, [math.inf] * n
    for j in range(n):
        for k in range(n):
            if labels[k] == labels[j] and d[j, k] > pd[j]:
                p[j], pd[j] = k, d[j, k]
            if labels[k] != labels[j] and d[j, k] > NEAR_DUPLICATE and d[j, k] < nd[j]:
                ng[j], nd[j] = k, d[j, k]
    losses, pos, neg = [], [], []
    for c in sorted(set(labels.tolist())):
        members = [j for j in range(n) if labels[j] == c]
        ip = max(members, key=lambda j: (pd[j], -j))
        im = min(members, key=lambda j: (nd[j], j))
        a = np.linalg.norm(x[ip] - x[p[ip]])
        if ng[im] < 0:
            losses.append(0.0)
        else:
            b = np.linalg.norm(x[im] - x[ng[im]])
            losses.append(max(0.0, margin + a - b))
        pos.append({ip, p[ip]})
        neg.append({im, ng[im]})
    return np.array(losses), pos, neg


@pytest.mark.parametrize("seed", range(6))
def test_loss_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, 7)
    labels = np.repeat(rng.permutation(100)[:7], sizes)
    labels = labels[rng.permutation(len(labels))]
    x = rng.normal(size=(len(labels), 16))
    if seed % 2:  # correlated classes, so some margins are violated and some are not
        centres = rng.normal(size=(labels.max() + 1, 16))
        x = centres[labels] * 1.0 + 0.8 * x
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xt = torch.from_numpy(x).float()
    margin = 1.0 if seed < 3 else 0.4
    loss = TripletMargin(margin)
    per, stats = per_class(loss, xt, torch.from_numpy(labels))
    want, pos, neg = brute_force(xt.double().numpy(), labels, margin)
    np.testing.assert_allclose(per.detach().numpy(), want, atol=2e-5)
    t = hardest_per_class(xt, torch.from_numpy(labels))
    assert [{a, b} for a, b in zip(t.pos_a.tolist(), t.pos_b.tolist(), strict=True)] == pos
    assert [{a, b} for a, b in zip(t.neg_a.tolist(), t.neg_b.tolist(), strict=True)] == neg
    a = pair_distances(xt, t.pos_a, t.pos_b)
    b = pair_distances(xt, t.neg_a, t.neg_b)
    torch.testing.assert_close(per, torch.clamp(margin + a - b, min=0) * t.valid)
    assert stats["pos_dist"] == pytest.approx(float(a.mean()), abs=1e-6)
    assert stats["neg_dist"] == pytest.approx(float(b.mean()), abs=1e-6)
    if seed % 2:
        assert 0 < (want > 0).sum() < len(want)  # the case mixes active and inactive classes


def test_loss_value_by_hand() -> None:
    """Two classes of two patches on the circle: a = chord(0.4), b = chord(0.5)."""
    x = on_circle(0.0, 0.4, 0.9, 1.6)
    per, _ = per_class(TripletMargin(), x, lab(0, 0, 1, 1))
    chord = lambda t: 2 * math.sin(t / 2)  # noqa: E731
    want = [1 + chord(0.4) - chord(0.5), 1 + chord(0.7) - chord(0.5)]
    np.testing.assert_allclose(per.numpy(), want, atol=1e-6)


def test_exact_zero_not_nan() -> None:
    x = on_circle(0.0, 0.1, math.pi, math.pi + 0.1).requires_grad_(True)
    out = objective(TripletMargin(), nn.Identity(), x, lab(0, 0, 1, 1))
    assert out.loss.item() == 0.0 and not torch.isnan(out.loss)
    out.loss.backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))
    empty = mean_reduce(torch.zeros(0, requires_grad=True))
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()


def test_gradient_flows_only_through_the_recomputed_distances() -> None:
    torch.manual_seed(0)
    raw = torch.randn(12, 8)
    labels = lab(0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4)
    x = torch.nn.functional.normalize(raw, dim=1).requires_grad_(True)
    per, _ = per_class(TripletMargin(margin=1.0), x, labels)
    per.mean().backward()
    got = x.grad.clone()
    # reference: the same mined indices as constants, distances recomputed in float64
    t = hardest_per_class(x, labels)
    y = x.detach().double().requires_grad_(True)
    a = (y[t.pos_a] - y[t.pos_b]).norm(dim=1)
    b = (y[t.neg_a] - y[t.neg_b]).norm(dim=1)
    (torch.clamp(1.0 + a - b, min=0) * t.valid).mean().backward()
    torch.testing.assert_close(got.double(), y.grad, atol=1e-6, rtol=1e-5)
    active = (1.0 + a - b > 0).detach()
    used = torch.cat([t.pos_a[active], t.pos_b[active], t.neg_a[active], t.neg_b[active]]).unique()
    unused = torch.ones(12, dtype=torch.bool)
    unused[used] = False
    assert unused.any() and torch.equal(got[unused], torch.zeros_like(got[unused]))
    assert (got[used].abs().sum(dim=1) > 0).all()


def test_call_runs_the_loss_in_float32_at_least() -> None:
    torch.manual_seed(1)
    half = nn.Sequential(nn.Flatten(), nn.Linear(16, 8, dtype=torch.bfloat16), _Normalise())
    labels = lab(1, 1, 2, 2, 3, 3)
    out16 = objective(TripletMargin(), half, torch.randn(6, 1, 4, 4, dtype=torch.bfloat16), labels)
    assert out16.loss.dtype == torch.float32  # a bfloat16 network's loss is computed in float32
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8, dtype=torch.float64), _Normalise())
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    out = objective(TripletMargin(), model, x, labels)
    assert out.loss.dtype == torch.float64 and out.loss.requires_grad  # float64 stays (exactness checks)
    per, stats = per_class(TripletMargin(), model(x).float(), labels)
    assert out.loss.item() == pytest.approx(per.mean().item())
    assert set(out.stats) >= {"pos_dist", "neg_dist"}
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


class _Normalise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=1)


def test_registry() -> None:
    assert LOSSES["triplet"] is TripletMargin
    loss = LOSSES.build("triplet", margin=2.5)
    assert isinstance(loss, TripletMargin) and loss.margin == 2.5
    with pytest.raises(ValueError, match="triplet"):
        LOSSES.build("no-such-loss")
    assert isinstance(LOSSES, Registry)


# ---------------------------------------------------------------------------- known bug


def test_identical_class_members_give_finite_gradients() -> None:
    x = on_circle(0.3, 0.3, 1.0, 1.2).requires_grad_(True)  # class 4: one patch taken twice
    out = objective(TripletMargin(), nn.Identity(), x, lab(4, 4, 8, 8))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(x.grad).all()


def test_masked_class_gives_finite_gradients() -> None:
    x = on_circle(0.0, 0.5, 1.0).requires_grad_(True)
    out = objective(TripletMargin(), nn.Identity(), x, lab(1, 1, 1))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.isfinite(x.grad).all()
