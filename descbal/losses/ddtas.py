"""DDTAS: Dual Dynamic Threshold Adjustment Strategy (Jiang et al. 2024), both parts together.

dml-seeds.md §1 and §5.1, as the authors' code computes them, on cosine similarities
``S = f f^T`` of unit descriptors. Three separate objects:

* **miner** :class:`AsymmetricPairMiner` (ASMS, §1.3.2): for anchor i with hardest positive
  ``s+min_i`` and hardest negative ``s-max_i``, keep negatives with ``S_in > s+min_i - gamma_n``
  and positives with ``S_ip < s-max_i + gamma_p`` (``gamma_p = 0.1`` looser, ``gamma_n = 0.01``
  stricter). ``adaptive=True`` is AT-ASMS (§1.3.3): a counting pass with the static tolerances
  gives ``r = N_sel_neg / N_all_pos``; if ``r > 1``, ``t = sigmoid(r) / 2``,
  ``gamma_p = pos_tol (1 + t)``, ``gamma_n = neg_tol (1 - t)``; then the pairs are mined with
  those. ``ratio="normalised"`` is the spec's fix for large batches (§5.1), where ``r >> 1``
  always and the rule saturates at ``t = 0.5``: ``r' = (N_sel_neg / N_all_neg) /
  (N_sel_pos / N_all_pos)``. Nothing is carried across batches.
* **loss** :class:`SoftContrastiveLoss` ("SoftCon", §1.2): per anchor
  ``(2/beta) mean_p softplus(-beta (w S_ip - base)) + (2/alpha) mean_n softplus(alpha (w S_in - base))``
  over the mined pairs; anchors with no mined positive or no mined negative give 0 but still count
  in the mean (``reduction="all_anchors"``, the code's; ``"active_anchors"`` divides by the active
  ones instead). ``w`` are optional per-pair weights (1 without the meta step).
* **meta step** (OTG, §1.4): one *virtual* SGD step ``theta' = theta - eta grad_theta L_t(theta, w)``
  at pair weights ``w = 0`` (``create_graph``), the validation loss ``L_v(theta')`` (unmined
  multi-similarity loss, base 0.5, on a validation batch against itself), ``g = dL_v/dw``,
  ``w = relu(-g)`` normalised to a maximum of 1; the real loss then uses these weights on the same
  mined pairs. A weight ``w`` inside ``softplus(alpha (w S - base))`` is a per-pair threshold
  ``base / w`` (§1.4.2). ``meta="threshold"`` is the spec's literal alternative (§1.4.2, not the
  authors' code): the base itself is updated by one gradient step on ``L_v(theta'(base))`` and
  kept across batches (a buffer, so it is checkpointed).

The authors' release cannot run both parts at once (§1.4.3); :class:`DDTASLoss` does: AT-ASMS
mines the pairs and the meta step weights them, in one training step.

Choices where the spec leaves room (each has an option):

* validation batch: the trainer passes one batch, so by default the last ``meta_val_fraction`` of
  its classes (at least 2) are held out of the training loss and used as the validation batch
  (``meta_val_holdout=False``: they are trained on as well). From Python, pass ``val_x`` /
  ``val_labels`` to :meth:`DDTASLoss.forward` to use a separate batch, as the authors do.
* weight normalisation: at ``w = 0`` the negative term's slope is ``2 sigmoid(-alpha base)``
  (about 1e-12 for alpha 40, base 0.7) against ``2 sigmoid(beta base)`` for positives, so the
  authors' joint normalisation (``weight_norm="joint"``) leaves every negative weight ~1e-12 of
  the positive ones and the loss loses its negative term. The default ``"separate"`` normalises
  positive and negative weights each to a maximum of 1 (being invariant to a per-side step size,
  it computes the negatives' meta-gradient with a step scaled by the slope ratio, far from
  float32's floor).
* the meta pass runs the model in eval mode (BatchNorm statistics frozen, dropout off: §5.1
  pitfall i) through ``torch.func.functional_call``; the inner step size does not change the
  ``pair_weight`` result (at ``w = 0`` the weights are linear in it), only ``threshold``'s.
* if ``L_v = 0`` or no pair gets a positive weight, the step falls back to unit weights
  (statistic ``meta_active = 0``): the authors skip the iteration.
* self pairs are excluded by index; ``exclude_duplicates=True`` also drops positives with
  ``S >= 1 - 1e-6`` as the code does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from descbal.losses.distances import pair_similarities, similarity_matrix, zero_loss
from descbal.losses.grouping import class_split
from descbal.losses.pipeline import Embedded, Loss
from descbal.losses.reducers import AnchorReducer, PairTerms
from descbal.losses.registry import register_loss, register_miner
from descbal.losses.tuples import PairTuples, Reference
from descbal.models.registry import unwrap_model

DUPLICATE_SIM = 1.0 - 1e-6


def _log_sigmoid(v: float) -> float:
    return -math.log1p(math.exp(-v)) if v >= 0 else v - math.log1p(math.exp(v))


def adaptive_tolerances(ratio: float, pos_tol: float, neg_tol: float) -> tuple[float, float, float]:
    """AT-ASMS update (§1.3.3): ``(t, gamma_p, gamma_n)`` from the mined ratio.

    ``t = sigmoid(r) / 2`` if ``r > 1`` else 0; ``gamma_p = pos_tol (1 + t)``,
    ``gamma_n = neg_tol (1 - t)``.
    """
    t = 0.5 / (1.0 + math.exp(-ratio)) if ratio > 1.0 else 0.0
    return t, pos_tol * (1.0 + t), neg_tol * (1.0 - t)


@register_miner("asms")
class AsymmetricPairMiner:
    """ASMS / AT-ASMS pair miner (§1.3.2-1.3.3) on cosine similarity.

    Args:
        pos_tol: positive tolerance gamma_p (the spec's m; 0.1 in the shipped run).
        neg_tol: negative tolerance gamma_n (m / 10). ``pos_tol == neg_tol`` is the symmetric
            multi-similarity miner (§1.3.1).
        adaptive: AT-ASMS: move the tolerances by the ratio of a counting pass.
        ratio: ``"code"`` (``N_sel_neg / N_all_pos``, the authors') or ``"normalised"``
            (``(N_sel_neg / N_all_neg) / (N_sel_pos / N_all_pos)``, §5.1's fix for large batches).
        exclude_duplicates: also drop positives with ``S >= 1 - 1e-6`` (the code's filter; self
            pairs are always excluded by index).
        require_both: drop the pairs of anchors left with no positive or no negative (the
            code's ``continue``).

    ``miner(desc, labels)`` returns the pairs with their statistics, under ``no_grad`` in float32.
    """

    def __init__(self, pos_tol: float = 0.1, neg_tol: float = 0.01, adaptive: bool = False, ratio: str = "code",
                 exclude_duplicates: bool = False, require_both: bool = True) -> None:
        if ratio not in ("code", "normalised"):
            raise ValueError(f"ratio must be 'code' or 'normalised', got {ratio!r}")
        if pos_tol < 0 or neg_tol < 0:
            raise ValueError("tolerances must be >= 0")
        self.pos_tol, self.neg_tol = float(pos_tol), float(neg_tol)
        self.adaptive, self.ratio = bool(adaptive), ratio
        self.exclude_duplicates, self.require_both = bool(exclude_duplicates), bool(require_both)

    @torch.no_grad()
    def __call__(self, desc: torch.Tensor, labels: torch.Tensor, reference: Reference | None = None,
                 batch: Any = None) -> PairTuples:
        """Mine pairs of the batch.

        Args:
            desc: (N, D) unit descriptors (gradient ignored).
            labels: (N,) class ids.

        Returns:
            :class:`PairTuples` into the batch with statistics: ``ratio``, ``t``, ``gamma_p``,
            ``gamma_n``, ``mined_pos``, ``mined_neg`` (pair counts), ``active`` (fraction of
            anchors with pairs).
        """
        if reference is not None:
            raise ValueError("the 'asms' miner mines the batch only (no reference set)")
        if desc.ndim != 2 or labels.shape != (desc.shape[0],):
            raise ValueError(f"expected desc (N, D) and labels (N,), got {tuple(desc.shape)} and {tuple(labels.shape)}")
        n = desc.shape[0]
        s = similarity_matrix(desc.detach())
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(n, dtype=torch.bool, device=desc.device)
        pos_all = same & ~eye
        if self.exclude_duplicates:
            pos_all &= s < DUPLICATE_SIM
        neg_all = ~same
        inf = torch.tensor(float("inf"), device=desc.device)
        smin_pos = torch.where(pos_all, s, inf).amin(dim=1, keepdim=True)
        smax_neg = torch.where(neg_all, s, -inf).amax(dim=1, keepdim=True)

        def select(gp: float, gn: float) -> tuple[torch.Tensor, torch.Tensor]:
            return pos_all & (s < smax_neg + gp), neg_all & (s > smin_pos - gn)

        gp, gn, t, r = self.pos_tol, self.neg_tol, 0.0, 0.0
        if self.adaptive:
            pos0, neg0 = select(gp, gn)
            n_all_p, n_all_n = float(pos_all.sum()), float(neg_all.sum())
            n_sel_p, n_sel_n = float(pos0.sum()), float(neg0.sum())
            if self.ratio == "code":
                r = n_sel_n / n_all_p if n_all_p > 0 else 0.0
            else:
                frac_n = n_sel_n / n_all_n if n_all_n > 0 else 0.0
                frac_p = n_sel_p / n_all_p if n_all_p > 0 else 0.0
                r = frac_n / frac_p if frac_p > 0 else (math.inf if frac_n > 0 else 0.0)
            t, gp, gn = adaptive_tolerances(r, self.pos_tol, self.neg_tol)
        pos, neg = select(gp, gn)
        if self.require_both:
            both = pos.any(dim=1, keepdim=True) & neg.any(dim=1, keepdim=True)
            pos, neg = pos & both, neg & both
        a1, p = pos.nonzero(as_tuple=True)
        a2, nn_ = neg.nonzero(as_tuple=True)
        active = (pos.any(dim=1) & neg.any(dim=1)).float().mean() if n else torch.zeros(())
        stats = {"ratio": float(min(r, 1e30)), "t": t, "gamma_p": gp, "gamma_n": gn,
                 "mined_pos": float(a1.numel()), "mined_neg": float(a2.numel()), "active": float(active)}
        return PairTuples(a1, p, a2, nn_, stats=stats)


class SoftContrastiveLoss:
    """DDTAS's "SoftCon" loss (§1.2) on mined pairs: per-pair binomial deviance, per-anchor means.

    Args:
        alpha: negative scale (40). beta: positive scale (2). base: the threshold lambda (0.7,
            hard-coded in the authors' ``forward``).
        reduction: ``"all_anchors"`` (divide by every anchor of the batch, the code's) or
            ``"active_anchors"`` (by the anchors with both a positive and a negative pair).
    """

    def __init__(self, alpha: float = 40.0, beta: float = 2.0, base: float = 0.7,
                 reduction: str = "all_anchors") -> None:
        if reduction not in ("all_anchors", "active_anchors"):
            raise ValueError(f"reduction must be 'all_anchors' or 'active_anchors', got {reduction!r}")
        self.alpha, self.beta, self.base, self.reduction = float(alpha), float(beta), float(base), reduction

    def pair_losses(self, sim_pos: torch.Tensor, sim_neg: torch.Tensor, w_pos: torch.Tensor | None = None,
                    w_neg: torch.Tensor | None = None,
                    base: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair losses ``(2/beta) softplus(-beta (w S - base))`` and ``(2/alpha) softplus(alpha (w S - base))``.

        Shape: (Kp,), (Kn,) -> (Kp,), (Kn,); weights default to 1.
        """
        lam = self.base if base is None else base
        up = sim_pos if w_pos is None else w_pos * sim_pos
        un = sim_neg if w_neg is None else w_neg * sim_neg
        lp = (2.0 / self.beta) * F.softplus(-self.beta * (up - lam))
        ln = (2.0 / self.alpha) * F.softplus(self.alpha * (un - lam))
        return lp, ln

    @property
    def reducer(self) -> AnchorReducer:
        """Per-anchor means of the pair losses, summed; then the mean (see ``reduction``)."""
        return AnchorReducer(pair_mean=True, require_both=True, over="all" if self.reduction == "all_anchors" else "active")

    def terms(self, lp: torch.Tensor, ln: torch.Tensor, pairs: PairTuples, n: int) -> PairTerms:
        """Pair losses as the reducer's input, for a batch of ``n`` anchors."""
        return PairTerms(lp, ln, pairs.a1, pairs.a2, n)

    def __call__(self, desc: torch.Tensor, pairs: PairTuples, w_pos: torch.Tensor | None = None,
                 w_neg: torch.Tensor | None = None, base: torch.Tensor | float | None = None) -> torch.Tensor:
        """Scalar loss (float32) of descriptors ``desc`` (N, D) at ``pairs``; an exact 0 when
        nothing is mined. ``w_pos`` (Kp,), ``w_neg`` (Kn,): optional per-pair weights."""
        if len(pairs) == 0:
            return zero_loss(desc)
        sp = pair_similarities(desc, None, pairs.a1, pairs.p)
        sn = pair_similarities(desc, None, pairs.a2, pairs.n)
        lp, ln = self.pair_losses(sp, sn, w_pos, w_neg, base)
        return self.reducer(self.terms(lp, ln, pairs, desc.shape[0]))


def multi_similarity_loss(desc: torch.Tensor, labels: torch.Tensor, alpha: float = 40.0, beta: float = 2.0,
                          base: float = 0.5) -> torch.Tensor:
    """Unmined multi-similarity loss, the meta step's validation loss (§1.4.1 step 6, "Global_MS").

    ``mean_i [(2/beta) log(1 + sum_p exp(-beta (S_ip - base))) + (2/alpha) log(1 + sum_n exp(alpha (S_in - base)))]``
    over all positives (self excluded) and negatives of the batch, in float32.

    Shape: (N, D), (N,) -> scalar.
    """
    n = desc.shape[0]
    s = similarity_matrix(desc)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=desc.device)
    ninf = torch.tensor(float("-inf"), device=desc.device)
    zero = torch.zeros(n, 1, device=desc.device)
    pos = torch.logsumexp(torch.cat([zero, torch.where(same & ~eye, -beta * (s - base), ninf)], dim=1), dim=1)
    neg = torch.logsumexp(torch.cat([zero, torch.where(~same, alpha * (s - base), ninf)], dim=1), dim=1)
    return ((2.0 / beta) * pos + (2.0 / alpha) * neg).mean()


def virtual_step_loss(model: nn.Module, x_train: torch.Tensor, train_loss: Callable[[torch.Tensor], torch.Tensor],
                      x_val: torch.Tensor, val_loss: Callable[[torch.Tensor], torch.Tensor],
                      inner_lr: float) -> torch.Tensor:
    """``L_v(theta')`` with ``theta' = theta - inner_lr grad_theta L_t(theta)`` (one virtual SGD step).

    The model runs in eval mode (frozen normalisation statistics, no dropout) through
    ``torch.func.functional_call``; the step keeps its graph (``create_graph=True``), so the
    result can be differentiated with respect to anything ``train_loss`` depends on (pair
    weights, a threshold). The model's own parameters are not changed.

    Args:
        model: the descriptor network (a ``torch.compile`` wrapper is unwrapped).
        x_train: (N, ...) training inputs; ``train_loss`` maps their (N, D) descriptors to a scalar.
        x_val: (M, ...) validation inputs; ``val_loss`` maps their (M, D) descriptors to a scalar.
        inner_lr: the virtual step size eta.
    """
    net = unwrap_model(model)
    named = [(k, p) for k, p in net.named_parameters() if p.requires_grad]
    names = [k for k, _ in named]
    params = [p for _, p in named]
    buffers = dict(net.named_buffers())
    was_training = net.training
    net.eval()
    try:
        f_t = functional_call(net, {**dict(named), **buffers}, (x_train,))
        lt = train_loss(f_t.float())
        grads = torch.autograd.grad(lt, params, create_graph=True, allow_unused=True)
        stepped = {k: p if g is None else p - inner_lr * g for k, p, g in zip(names, params, grads, strict=True)}
        f_v = functional_call(net, {**stepped, **buffers}, (x_val,))
        return val_loss(f_v.float())
    finally:
        net.train(was_training)


def normalise_meta_weights(g: torch.Tensor, num_pos: int, mode: str = "separate") -> torch.Tensor | None:
    """``relu(-g)`` scaled to a maximum of 1 (§1.4.1 step 7); None if every entry is 0.

    ``mode="joint"``: one scale for all pairs (the authors'); ``"separate"``: positives (the
    first ``num_pos`` entries) and negatives each scaled to a maximum of 1 (a side with no
    positive entry stays 0). Shape: (K,) -> (K,).
    """
    w = torch.relu(-g.detach().float())
    if w.numel() == 0 or not bool(torch.isfinite(w).all()) or float(w.max()) <= 0.0:
        return None
    if mode == "joint":
        w = w / w.sum()  # the authors' two normalisations; the second alone gives the same result
        return w / w.max()
    out = torch.zeros_like(w)
    for sl in (slice(0, num_pos), slice(num_pos, w.numel())):
        part = w[sl]
        if part.numel() and float(part.max()) > 0:
            out[sl] = part / part.max()
    return out


def meta_pair_weights(model: nn.Module, x_train: torch.Tensor, pairs: PairTuples, x_val: torch.Tensor,
                      labels_val: torch.Tensor, loss: SoftContrastiveLoss, *, inner_lr: float = 1e-3,
                      val_alpha: float = 40.0, val_beta: float = 2.0, val_base: float = 0.5,
                      weight_norm: str = "separate") -> tuple[torch.Tensor, torch.Tensor] | None:
    """The OTG meta step (§1.4.1 steps 1-7): per-pair weights for the mined ``pairs``.

    Pair weights ``w`` (K,) start at 0 with gradient; one virtual step on ``loss`` with those
    weights; the validation multi-similarity loss after the step; ``w = relu(-dL_v/dw)``
    normalised (:func:`normalise_meta_weights`).

    Args:
        model: the network; x_train (N, ...) the inputs the pairs index; x_val (M, ...) and
            labels_val (M,) the validation batch.

    Returns:
        ``(w_pos, w_neg)`` shaped (Kp,), (Kn,), float32, no gradient; None when the validation
        loss is 0 or no pair gets a positive weight.
    """
    if len(pairs) == 0:
        return None
    w = torch.zeros(len(pairs), device=x_train.device, requires_grad=True)
    kp = pairs.num_pos
    # At w = 0 the train loss has zero gradient in theta, so theta' = theta and each weight's
    # meta-gradient is linear in its side's step size. With separate normalisation the result is
    # invariant to a per-side step, so the negative side's step is scaled by the ratio of the two
    # slopes at w = 0 (sigmoid(beta base) / sigmoid(-alpha base), ~1e12 for 40 / 2 / 0.7): the same
    # weights, without meta-gradients ~1e-12 smaller than the positives' near float32's floor.
    neg_scale = 1.0
    if weight_norm == "separate":
        lam = loss.base
        neg_scale = math.exp(_log_sigmoid(loss.beta * lam) - _log_sigmoid(-loss.alpha * lam))

    def train_loss(f: torch.Tensor) -> torch.Tensor:
        sp = pair_similarities(f, None, pairs.a1, pairs.p)
        sn = pair_similarities(f, None, pairs.a2, pairs.n)
        lp, ln = loss.pair_losses(sp, sn, w[:kp], w[kp:])
        return loss.reducer(loss.terms(lp, ln * neg_scale, pairs, f.shape[0]))

    def val_loss(f: torch.Tensor) -> torch.Tensor:
        return multi_similarity_loss(f, labels_val, val_alpha, val_beta, val_base)

    lv = virtual_step_loss(model, x_train, train_loss, x_val, val_loss, inner_lr)
    if float(lv.detach()) == 0.0 or not lv.requires_grad:
        return None
    (g,) = torch.autograd.grad(lv, [w], allow_unused=True)
    if g is None:
        return None
    ws = normalise_meta_weights(g, kp, weight_norm)
    return None if ws is None else (ws[:kp], ws[kp:])


def meta_threshold_step(model: nn.Module, x_train: torch.Tensor, pairs: PairTuples, x_val: torch.Tensor,
                        labels_val: torch.Tensor, loss: SoftContrastiveLoss, base: float, *, inner_lr: float = 1e-3,
                        meta_lr: float = 1e-2, val_alpha: float = 40.0, val_beta: float = 2.0,
                        val_base: float = 0.5) -> tuple[float, float]:
    """The literal-threshold meta step (§1.4.2 alternative; not the authors' code).

    ``base <- clamp(base - meta_lr dL_v(theta'(base))/dbase, 0, 0.999)`` with
    ``theta'(base) = theta - inner_lr grad_theta L_t(theta, base)``.

    Returns ``(new_base, dL_v/dbase)``.
    """
    if len(pairs) == 0:
        return base, 0.0
    lam = torch.tensor(float(base), device=x_train.device, requires_grad=True)

    def train_loss(f: torch.Tensor) -> torch.Tensor:
        return loss(f, pairs, base=lam)

    def val_loss(f: torch.Tensor) -> torch.Tensor:
        return multi_similarity_loss(f, labels_val, val_alpha, val_beta, val_base)

    lv = virtual_step_loss(model, x_train, train_loss, x_val, val_loss, inner_lr)
    (g,) = torch.autograd.grad(lv, [lam], allow_unused=True)
    grad = 0.0 if g is None else float(g)
    if not math.isfinite(grad):
        return base, 0.0
    return min(max(base - meta_lr * grad, 0.0), 0.999), grad


@register_loss("ddtas")
class DDTASLoss(Loss):
    """DDTAS: AT-ASMS mining + meta-learned pair thresholds + SoftCon loss (module docstring).

    Args:
        alpha, beta, base: SoftCon's negative scale, positive scale and threshold (40, 2, 0.7).
        pos_tol, neg_tol: the miner's tolerances (0.1, 0.01). adaptive: AT-ASMS on (True).
        ratio: ``"code"`` | ``"normalised"`` (AT-ASMS ratio, see :class:`AsymmetricPairMiner`).
        meta: ``"pair_weight"`` (the authors' OTG), ``"threshold"`` (literal alternative) or
            ``"none"`` (AT-ASMS + SoftCon only, the authors' shipped run).
        weight_norm: ``"separate"`` | ``"joint"`` (see the module docstring).
        meta_val_fraction: share of the batch's classes used as the validation batch.
        meta_val_holdout: keep those classes out of the training loss (True) or train on them too.
        meta_inner_lr: the virtual step size. meta_lr: the threshold's step (``meta="threshold"``).
        val_base: the validation loss's base (0.5). reduction: SoftCon's reduction (the default
            ``anchor`` reducer's ``over``).
        exclude_duplicates: see :class:`AsymmetricPairMiner`.

    The miner parameters build the default ``asms`` miner (``loss.miner`` replaces it). The
    meta step needs the batch's model and inputs and a validation batch (``Embedded.held``):
    :meth:`split` holds the last ``meta_val_fraction`` of the classes out, and the trainer
    passes them; from Python, set ``held`` to use a separate batch, as the authors do. Buffer
    ``meta_base`` holds the threshold of ``meta="threshold"`` (checkpointed with the run).
    """

    default_miner: ClassVar[str] = "asms"
    default_reducer: ClassVar[str] = "anchor"

    def __init__(self, alpha: float = 40.0, beta: float = 2.0, base: float = 0.7, pos_tol: float = 0.1,
                 neg_tol: float = 0.01, adaptive: bool = True, ratio: str = "code", meta: str = "pair_weight",
                 weight_norm: str = "separate", meta_val_fraction: float = 0.25, meta_val_holdout: bool = True,
                 meta_inner_lr: float = 1e-3, meta_lr: float = 1e-2, val_base: float = 0.5,
                 reduction: str = "all_anchors", exclude_duplicates: bool = False) -> None:
        super().__init__()
        if meta not in ("pair_weight", "threshold", "none"):
            raise ValueError(f"meta must be 'pair_weight', 'threshold' or 'none', got {meta!r}")
        if weight_norm not in ("separate", "joint"):
            raise ValueError(f"weight_norm must be 'separate' or 'joint', got {weight_norm!r}")
        if not 0.0 < meta_val_fraction < 1.0:
            raise ValueError("meta_val_fraction must be in (0, 1)")
        self.miner_args = (pos_tol, neg_tol, adaptive, ratio, exclude_duplicates)
        AsymmetricPairMiner(*self.miner_args)  # validate now
        self.softcon = SoftContrastiveLoss(alpha, beta, base, reduction)
        self.meta, self.weight_norm = meta, weight_norm
        self.meta_val_fraction, self.meta_val_holdout = float(meta_val_fraction), bool(meta_val_holdout)
        self.meta_inner_lr, self.meta_lr, self.val_base = float(meta_inner_lr), float(meta_lr), float(val_base)
        self.register_buffer("meta_base", torch.tensor(float(base)))

    def make_miner(self) -> AsymmetricPairMiner:
        return AsymmetricPairMiner(*self.miner_args)

    def make_reducer(self) -> AnchorReducer:
        return self.softcon.reducer

    def uses_inputs(self) -> bool:
        return self.meta != "none"

    def _base(self) -> float:
        return float(self.meta_base) if self.meta == "threshold" else self.softcon.base

    def split(self, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        if self.meta == "none":
            return None
        s = class_split(labels, self.meta_val_fraction)
        if s is None:
            return None
        keep, held = s
        return (keep if self.meta_val_holdout else None), held

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, tuples: PairTuples, reference: Reference | None,
                batch: Embedded | None = None) -> PairTerms:
        """SoftCon pair losses of ``embeddings`` (N, D) at the mined pairs, with the meta step's
        pair weights when it runs (statistics ``meta_active``, mean weights, ``base``)."""
        pairs = tuples
        w_pos = w_neg = None
        meta_active = 0.0
        extra: dict[str, Any] = {}
        held = None if batch is None else batch.held
        if (self.meta != "none" and held is not None and batch is not None and batch.model is not None
                and batch.inputs is not None and len(pairs) > 0):
            x_t, (x_v, y_v) = batch.inputs, held
            kwargs = {"inner_lr": self.meta_inner_lr, "val_alpha": self.softcon.alpha, "val_beta": self.softcon.beta,
                      "val_base": self.val_base}
            if self.meta == "pair_weight":
                ws = meta_pair_weights(batch.model, x_t, pairs, x_v, y_v, self.softcon, weight_norm=self.weight_norm,
                                       **kwargs)
                if ws is not None:
                    w_pos, w_neg = ws
                    meta_active = 1.0
                    extra = {"w_pos_mean": float(w_pos.mean()) if w_pos.numel() else 0.0,
                             "w_neg_mean": float(w_neg.mean()) if w_neg.numel() else 0.0}
            else:
                new_base, grad = meta_threshold_step(batch.model, x_t, pairs, x_v, y_v, self.softcon,
                                                     float(self.meta_base), meta_lr=self.meta_lr, **kwargs)
                self.meta_base.fill_(new_base)
                meta_active = 1.0
                extra = {"base_grad": grad}
        sp = pair_similarities(embeddings, None, pairs.a1, pairs.p)
        sn = pair_similarities(embeddings, None, pairs.a2, pairs.n)
        lp, ln = self.softcon.pair_losses(sp, sn, w_pos, w_neg, base=self._base())
        terms = self.softcon.terms(lp, ln, pairs, embeddings.shape[0])
        return PairTerms(terms.pos, terms.neg, terms.pos_anchors, terms.neg_anchors, terms.num_anchors,
                         stats={"meta_active": meta_active, "base": self._base(), **extra})
