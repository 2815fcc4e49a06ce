"""Self-TNet's balance loss (stage 1) and its annealing variant (stage 2).

self-tnet.md §3 and §4.2, as the authors' code computes them. Per class c of the batch, with
the hardest positive distance a_c and hardest negative distance b_c mined on the student
(``descbal.losses.mining``):

* **self-supervised weight** (§3.1): the same network in eval mode, without gradient, gives the
  teacher descriptors; the teacher margin ``m_c = bT_c - aT_c`` is measured at the
  *student-mined* indices, and ``w_c = teacher_weight(m_c)`` is 0 at or below ``lo``, the
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

from pathlib import Path
from typing import Any

import torch
from torch import nn

from descbal.losses.mining import ClassTuples, hardest_per_class, pair_distances
from descbal.losses.registry import register_loss
from descbal.losses.triplet import StepOutput, mean_reduce


def teacher_weight(margin: torch.Tensor, lo: float = -0.55, hi: float = 0.10) -> torch.Tensor:
    """Confidence weight of a teacher margin ``bT - aT`` (§3.1). Shape: any -> same.

    0 at or below ``lo``, ``1 - ((m - hi) / (lo - hi))^2`` in between, 1 at or above ``hi``;
    identically 1 when ``lo == hi``.
    """
    m = torch.as_tensor(margin, dtype=torch.float32)
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


def balance_terms(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, B: torch.Tensor | float, R: float = 1.0) -> torch.Tensor:
    """Per-class ``w (R a^2 + b~^2 - B b~)`` with ``b~ = min(b, B/2)``. Shape: (C,) x3 -> (C,)."""
    B_t = torch.as_tensor(B, dtype=a.dtype, device=a.device)
    bt = torch.minimum(b, B_t / 2)
    return w * (R * a * a + bt * bt - B_t * bt)


def _distances(x: torch.Tensor, t: ClassTuples) -> tuple[torch.Tensor, torch.Tensor]:
    return pair_distances(x, t.pos_a, t.pos_b), pair_distances(x, t.neg_a, t.neg_b)


def balance_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, *, lo: float = -0.55,
                 hi: float = 0.10, A: float = 1.05, R: float = 1.0) -> torch.Tensor:
    """Self-TNet's stage-1 balance loss (§3.2, without the constant +5).

    Args:
        student: (N, D) unit descriptors with gradient (train mode).
        teacher: (N, D) unit descriptors of the same batch from the teacher (no gradient).
        labels: (N,) class ids.

    Returns:
        Scalar loss (float32); an exact 0 for an empty batch.
    """
    per, _ = _balance_per_class(student, teacher, labels, lo=lo, hi=hi, A=A, R=R, boundary=None)
    return mean_reduce(per)


def _balance_per_class(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, *, lo: float,
                       hi: float, A: float, R: float, boundary: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    t = hardest_per_class(student, labels)
    a, b = _distances(student, t)
    with torch.no_grad():
        if teacher is None:
            w = torch.ones_like(a)
            margin = None
        else:
            at, bt = _distances(teacher.detach(), t)
            margin = bt - at
            w = teacher_weight(margin, lo, hi)
        w = w * t.valid
    B = dynamic_boundary(a, b, A) if boundary is None else torch.tensor(float(boundary), device=a.device)
    per = balance_terms(a, b, w, B, R)
    stats = {"pos_dist": float(a.detach().mean()), "neg_dist": float(b.detach().mean()), "B": float(B),
             "weight_mean": float(w.mean()), "zero_weight": float((w == 0).float().mean())}
    return per, stats


@register_loss("balance")
class BalanceLoss:
    """Stage-1 objective: teacher pass, student pass, mining, balance loss.

    Args:
        lo, hi: the weight ramp (§3.1). A, R: boundary and positive factors (§3.2).
        teacher: ``"self"`` (the same network in eval mode, the paper's), ``"none"`` (no
            weighting: w = 1, an ablation), or the path of a frozen model (external teacher).
        boundary: ``"dynamic"`` (median-based B) or a fixed value of B (ablation).
    """

    def __init__(self, lo: float = -0.55, hi: float = 0.10, A: float = 1.05, R: float = 1.0,
                 teacher: str = "self", boundary: str | float = "dynamic") -> None:
        self.lo, self.hi, self.A, self.R = lo, hi, A, R
        if boundary != "dynamic" and not isinstance(boundary, int | float):
            raise ValueError(f"boundary must be 'dynamic' or a number, got {boundary!r}")
        self.boundary = None if boundary == "dynamic" else float(boundary)
        self.teacher = teacher
        self._external: nn.Module | None = None
        if teacher not in ("self", "none"):
            from descbal.models import load

            if not Path(teacher).exists():
                raise ValueError(f"teacher must be 'self', 'none' or a model path; {teacher!r} does not exist")
            self._external = load(teacher).eval()
            for p in self._external.parameters():
                p.requires_grad_(False)

    def teacher_descriptors(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """The teacher's view of the batch (eval mode, no gradient), or None without weighting."""
        if self.teacher == "none":
            return None
        with torch.no_grad():
            if self._external is not None:
                ext = self._external.to(x.device)
                return ext(x).float()
            was_training = model.training
            model.eval()
            try:
                return model(x).float()
            finally:
                model.train(was_training)

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        teacher = self.teacher_descriptors(model, x)
        student = model(x).float()
        per, stats = _balance_per_class(student, teacher, labels, lo=self.lo, hi=self.hi, A=self.A, R=self.R,
                                        boundary=self.boundary)
        return StepOutput(mean_reduce(per), stats)


@register_loss("anneal")
class AnnealLoss:
    """Stage-2 objective (§4.2): hard weight ``[b - a > threshold]`` on the current margin,
    fixed boundary ``B`` (4.25), no teacher."""

    def __init__(self, threshold: float = -0.10, B: float = 4.25, R: float = 1.0) -> None:
        self.threshold, self.B, self.R = threshold, B, R

    def per_class(self, desc: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """(C,) losses and statistics for unit descriptors ``desc`` (N, D)."""
        t = hardest_per_class(desc, labels)
        a, b = _distances(desc, t)
        w = ((b.detach() - a.detach()) > self.threshold).float() * t.valid
        per = balance_terms(a, b, w, self.B, self.R)
        return per, {"pos_dist": float(a.detach().mean()), "neg_dist": float(b.detach().mean()),
                     "kept": float(w.mean())}

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        per, stats = self.per_class(model(x).float(), labels)
        return StepOutput(mean_reduce(per), stats)
