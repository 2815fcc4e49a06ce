"""Self-TNet's balance loss (stage 1) and its annealing variant (stage 2).

self-tnet.md §3 and §4.2, as the authors' code computes them. Per class c of the batch, with
the hardest positive distance a_c and hardest negative distance b_c mined on the student
(``descbal.losses.miners``):

* **self-supervised weight** (§3.1): the same network in eval mode, without gradient, gives the
  teacher descriptors (the pipeline's teacher, ``descbal.losses.teachers``); the teacher margin
  ``m_c = bT_c - aT_c`` is measured at the *student-mined* indices, and ``w_c = teacher_weight(m_c)`` is 0 at or below ``lo``, the
  concave ramp ``1 - ((m - hi) / (lo - hi))^2`` between ``lo`` and ``hi``, 1 at or above ``hi``;
* **dynamic boundary** (§3.2): ``B = 2 (median(b) + A median(a))`` with the lower median, detached,
  and ``b~_c = min(b_c, B / 2)``;
* **loss**: ``mean_c w_c (R a_c^2 + b~_c^2 - B b~_c)`` over all classes, zero-weight ones included
  (the authors add a constant 5, which changes no gradient and is left out here).

Gradients (§3.3): ``dL/da_c = 2 R w_c a_c / C`` and ``dL/db_c = -2 w_c max(0, B/2 - b_c) / C``.

Stage 2 (§4.2) uses a hard weight ``w_c = [b_c - a_c > theta]`` on the current train-mode margin
and a fixed ``B = 4.25``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from descbal.losses.miners import hardest_per_class
from descbal.losses.pipeline import Embedded, Loss
from descbal.losses.reducers import ClassTerms, mean_reduce
from descbal.losses.registry import register_loss
from descbal.losses.sharding import AnchorShard, global_means
from descbal.losses.teachers import check_teacher
from descbal.losses.triplet import class_distances, shard_of
from descbal.losses.tuples import ClassTuples, Reference


def teacher_weight(margin: torch.Tensor, lo: float = -0.55, hi: float = 0.10) -> torch.Tensor:
    """Confidence weight of a teacher margin ``bT - aT`` (§3.1). Shape: any -> same.

    0 at or below ``lo``, ``1 - ((m - hi) / (lo - hi))^2`` in between, 1 at or above ``hi``;
    identically 1 when ``lo == hi``.
    """
    m = torch.as_tensor(margin)
    m = m.to(torch.promote_types(m.dtype, torch.float32))
    if lo == hi:
        return torch.ones_like(m)
    ramp = 1.0 - ((m.clamp(lo, hi) - hi) / (lo - hi)) ** 2
    return torch.where(m <= lo, torch.zeros_like(m), ramp)


def lower_median(x: torch.Tensor) -> torch.Tensor:
    """The lower of the two middle values for an even count (``torch.median``'s convention)."""
    return torch.median(x)


def dynamic_boundary(a: torch.Tensor, b: torch.Tensor, A: float = 1.05) -> torch.Tensor:
    """``B = 2 (median(b) + A median(a))``, detached (§3.2)."""
    return (2.0 * (lower_median(b.detach()) + A * lower_median(a.detach()))).detach()


def balance_values(a: torch.Tensor, b: torch.Tensor, B: torch.Tensor | float, R: float = 1.0) -> torch.Tensor:
    """Per-class ``R a^2 + b~^2 - B b~`` with ``b~ = min(b, B/2)`` (unweighted). Shape: (C,) x2 -> (C,)."""
    B_t = torch.as_tensor(B, dtype=a.dtype, device=a.device)
    bt = torch.minimum(b, B_t / 2)
    return R * a * a + bt * bt - B_t * bt


def balance_terms(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, B: torch.Tensor | float, R: float = 1.0) -> torch.Tensor:
    """Per-class ``w (R a^2 + b~^2 - B b~)``. Shape: (C,) x3 -> (C,)."""
    return w * balance_values(a, b, B, R)


def _balance_terms(student: torch.Tensor, teacher: torch.Tensor | None, t: ClassTuples, *, lo: float, hi: float,
                   A: float, R: float, boundary: float | None, anchors: AnchorShard | None = None,
                   count: int | None = None) -> ClassTerms:
    a, b = class_distances(student, t)
    with torch.no_grad():
        if teacher is None:
            w = torch.ones_like(a)
        else:
            at, bt = class_distances(teacher.detach(), t)
            w = teacher_weight(bt - at, lo, hi)
        w = w * t.valid
    if boundary is not None:
        B = torch.tensor(float(boundary), device=a.device)
    elif anchors is None:
        B = dynamic_boundary(a, b, A)
    else:  # the medians of every rank's classes
        ab = anchors.gather(torch.stack([a.detach(), b.detach()], dim=1))
        B = dynamic_boundary(ab[:, 0], ab[:, 1], A)
    stats = {"B": B, **global_means({"pos_dist": a, "neg_dist": b, "weight_mean": w,
                                            "zero_weight": (w == 0).to(w.dtype)}, anchors)}
    return ClassTerms(balance_values(a, b, B, R), w, stats, count=count)


def balance_loss(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, *, lo: float = -0.55,
                 hi: float = 0.10, A: float = 1.05, R: float = 1.0) -> torch.Tensor:
    """Self-TNet's stage-1 balance loss (§3.2, without the constant +5), for use in other loops.

    Args:
        student: (N, D) unit descriptors with gradient (train mode).
        teacher: (N, D) unit descriptors of the same batch from the teacher (no gradient), or
            None for no weighting.
        labels: (N,) class ids.

    Returns:
        Scalar loss (float32); an exact 0 for an empty batch.
    """
    terms = _balance_terms(student, teacher, hardest_per_class(student, labels), lo=lo, hi=hi, A=A, R=R, boundary=None)
    assert terms.weights is not None
    return mean_reduce(terms.weights * terms.values)


@register_loss("balance")
class BalanceLoss(Loss):
    """Stage-1 loss: balance terms of class tuples, weighted by the teacher's margins.

    Args:
        lo, hi: the weight ramp (§3.1). A, R: boundary and positive factors (§3.2).
        teacher: ``"self"`` (the same network in eval mode, the paper's), ``"none"`` (no
            weighting: w = 1, an ablation), or the path of a frozen model (external teacher).
        boundary: ``"dynamic"`` (median-based B) or a fixed value of B (ablation).
    """

    tuples: ClassVar[type] = ClassTuples
    shards_anchors: ClassVar[bool] = True
    fullgraph: ClassVar[bool] = True

    def __init__(self, lo: float = -0.55, hi: float = 0.10, A: float = 1.05, R: float = 1.0,
                 teacher: str = "self", boundary: str | float = "dynamic") -> None:
        super().__init__()
        self.lo, self.hi, self.A, self.R = lo, hi, A, R
        if boundary != "dynamic" and not isinstance(boundary, int | float):
            raise ValueError(f"boundary must be 'dynamic' or a number, got {boundary!r}")
        self.boundary = None if boundary == "dynamic" else float(boundary)
        check_teacher(teacher)
        self.teacher = teacher

    def teacher_spec(self) -> str | None:
        return None if self.teacher == "none" else self.teacher

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, tuples: ClassTuples, reference: Reference | None,
                batch: Embedded | None = None) -> ClassTerms:
        teacher = None if batch is None or self.teacher == "none" else batch.teacher
        anchors = shard_of(batch)
        return _balance_terms(embeddings, teacher, tuples, lo=self.lo, hi=self.hi, A=self.A, R=self.R,
                              boundary=self.boundary, anchors=anchors, count=None if anchors is None else anchors.num_classes)


@register_loss("anneal")
class AnnealLoss(Loss):
    """Stage-2 loss (§4.2): hard weight ``[b - a > threshold]`` on the current margin,
    fixed boundary ``B`` (4.25), no teacher."""

    tuples: ClassVar[type] = ClassTuples
    shards_anchors: ClassVar[bool] = True
    fullgraph: ClassVar[bool] = True

    def __init__(self, threshold: float = -0.10, B: float = 4.25, R: float = 1.0) -> None:
        super().__init__()
        self.threshold, self.B, self.R = threshold, B, R

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, tuples: ClassTuples, reference: Reference | None,
                batch: Embedded | None = None) -> ClassTerms:
        a, b = class_distances(embeddings, tuples)
        w = ((b.detach() - a.detach()) > self.threshold).to(a.dtype) * tuples.valid
        anchors = shard_of(batch)
        return ClassTerms(balance_values(a, b, self.B, self.R), w,
                          global_means({"pos_dist": a, "neg_dist": b, "kept": w}, anchors),
                          count=None if anchors is None else anchors.num_classes)
