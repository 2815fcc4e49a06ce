"""OSM + CAA: online soft mining and class-aware attention (Wang et al., AAAI 2019).

dml-seeds.md §3 and §5.3, as the authors' Caffe layer (``DistanceWeightedValidPairLossV5``)
computes it: a weighted contrastive loss over **all** unordered pairs ``i < j`` of the batch, with
Euclidean distances ``d_ij`` of unit descriptors and stop-gradient weights:

* OSM positive weight ``w+_ij = exp(-d_ij^2 / (2 sigma_osm^2))`` (closer positives weigh more;
  the code's Gaussian pdf, whose constant cancels);
* OSM negative weight ``w-_ij = [margin - d_ij]_+`` (only negatives closer than the margin);
* CAA per-sample attention ``a_i`` and pair attention ``a_ij = min(a_i, a_j)``;
* 50/50 normalisation: ``omega+ = (1 - lambda) w+ a / (sum_pos w+ a + 1e-12)``,
  ``omega- = lambda w- a / (sum_neg w- a + 1e-12)``, lambda = 0.5;
* ``L = sum_pos omega+ d^2 + sum_neg omega- [margin - d]_+^2`` (times ``1 / (2 N_pair)`` with
  ``caffe_scale=True``, the factor the Caffe gradients carry).

The OSM weights come from a separate **soft miner** (:class:`OSMSoftMiner`, registered ``osm``,
under ``no_grad``): it returns the pairs with non-zero weight and their OSM weights. The loss
multiplies them by the pair attention, normalises them 50/50, evaluates the per-pair terms at
those pairs, and the ``sum`` reducer adds them up with those weights. With another miner the
OSM weights are 1.

CAA options (``attention``), §5.3:

* ``"batch_centroid"`` (default for patch batches, proxy-free): ``a_i = exp(-(1 - S_ic)^2 /
  (2 sigma_caa^2))`` with ``S_ic`` the cosine similarity of i to the normalised mean of its *other*
  same-label patches in the batch (``a_i = 1`` when it has none). With 2 patches per point this
  is a function of the positive's similarity, which OSM's positive weight already uses; the spec
  calls ``"none"`` the honest choice there.
* ``"classifier"``: the paper's form, ``a_i = exp(-(1 - p_i)^2 / (2 sigma_caa^2))`` with ``p_i`` the
  true-class probability of a linear softmax head on the descriptor (``num_classes`` outputs;
  labels must lie in ``[0, num_classes)``). The head is a parameter of this loss (the trainer
  optimises it) and is trained by cross-entropy (weight ``classifier_weight``) on detached
  descriptors unless ``classifier_joint=True``. The authors' three auxiliary weighted-softmax
  heads are not part of the loss and are left out.
* ``"none"``: ``a_i = 1`` (OSM alone).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from descbal.losses.distances import pair_similarities, similarity_matrix, unit_distance, zero_loss
from descbal.losses.pipeline import Embedded, Loss
from descbal.losses.reducers import PairTerms, SumReducer
from descbal.losses.registry import register_loss, register_miner
from descbal.losses.tuples import PairTuples, Reference

NORM_EPS = 1e-12


def gaussian_attention(score: torch.Tensor, sigma: float) -> torch.Tensor:
    """``exp(-(1 - score)^2 / (2 sigma^2))``: the CAA Gaussian centred at 1. Shape: any -> same."""
    return torch.exp(-((1.0 - score.float()) ** 2) / (2.0 * sigma * sigma))


@torch.no_grad()
def batch_centroid_attention(desc: torch.Tensor, labels: torch.Tensor, sigma: float = 0.68) -> torch.Tensor:
    """Proxy-free CAA (§5.3 b): attention of each sample from its similarity to the normalised
    mean of the other same-label samples of the batch; 1 for a sample without one.

    Shape: (N, D), (N,) -> (N,) float32.
    """
    x = desc.detach().float()
    uniq, inv = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(uniq.numel(), x.shape[1], device=x.device).index_add(0, inv, x)
    counts = torch.bincount(inv, minlength=uniq.numel())
    others = sums[inv] - x
    has = counts[inv] > 1
    centre = F.normalize(others, dim=1, eps=1e-12)
    s = (x * centre).sum(dim=1)
    return torch.where(has, gaussian_attention(s, sigma), torch.ones_like(s))


@register_miner("osm")
class OSMSoftMiner:
    """Online soft mining (§3.2 points 1, 2, 4): all pairs ``i < j`` of the batch with their OSM weights.

    Args:
        margin: alpha, the negative margin on Euclidean distance (1.2).
        sigma_osm: the positive weight's Gaussian width on distance (0.8, the code's form).

    Returns :class:`PairTuples` (``a < b``; negatives only where the weight is non-zero) with
    ``w_pos = exp(-d^2 / (2 sigma^2))`` and ``w_neg = [margin - d]_+``, under ``no_grad`` in float32.
    """

    def __init__(self, margin: float = 1.2, sigma_osm: float = 0.8) -> None:
        self.margin, self.sigma_osm = float(margin), float(sigma_osm)

    @torch.no_grad()
    def __call__(self, desc: torch.Tensor, labels: torch.Tensor, reference: Reference | None = None,
                 batch: Any = None) -> PairTuples:
        if reference is not None:
            raise ValueError("the 'osm' miner mines the batch only (no reference set)")
        n = desc.shape[0]
        d = unit_distance(similarity_matrix(desc.detach()))
        same = labels[:, None] == labels[None, :]
        upper = torch.ones(n, n, dtype=torch.bool, device=desc.device).triu(1)
        wpos = torch.exp(-(d * d) / (2.0 * self.sigma_osm ** 2))
        wneg = torch.clamp(self.margin - d, min=0.0)
        pairs = PairTuples.from_masks(same & upper, ~same & upper & (wneg > 0))
        return PairTuples(pairs.a1, pairs.p, pairs.a2, pairs.n, wpos[pairs.a1, pairs.p], wneg[pairs.a2, pairs.n])


def soft_weights(pairs: PairTuples, attention: torch.Tensor | None, pos_neg_balance: float = 0.5,
                 pair_attention: str = "min") -> tuple[torch.Tensor, torch.Tensor]:
    """OSM x CAA pair weights normalised 50/50 (§3.2 point 5): ``(1 - lambda) w+ a / sum`` and
    ``lambda w- a / sum``, with pair attention ``a = min(a_i, a_j)`` (or the product).

    Shape: pairs (Kp,) + (Kn,), attention (N,) or None -> (Kp,), (Kn,) float32; OSM weights of 1
    when the tuples carry none.
    """
    wp = pairs.w_pos if pairs.w_pos is not None else torch.ones(pairs.num_pos, device=pairs.a1.device)
    wn = pairs.w_neg if pairs.w_neg is not None else torch.ones(pairs.num_neg, device=pairs.a2.device)
    if attention is not None:
        a = attention.detach().float()
        comb = torch.minimum if pair_attention == "min" else torch.mul
        wp = wp * comb(a[pairs.a1], a[pairs.p])
        wn = wn * comb(a[pairs.a2], a[pairs.n])
    wp = (1.0 - pos_neg_balance) * wp / (wp.sum() + NORM_EPS)
    wn = pos_neg_balance * wn / (wn.sum() + NORM_EPS)
    return wp, wn


def osm_terms(desc: torch.Tensor, pairs: PairTuples, w_pos: torch.Tensor, w_neg: torch.Tensor,
              margin: float = 1.2) -> PairTerms:
    """Per-pair terms ``d^2`` (positives) and ``[margin - d]_+^2`` (negatives) with their weights."""
    dp = unit_distance(pair_similarities(desc, None, pairs.a1, pairs.p))
    dn = unit_distance(pair_similarities(desc, None, pairs.a2, pairs.n))
    return PairTerms(dp * dp, torch.clamp(margin - dn, min=0.0) ** 2, pairs.a1, pairs.a2, desc.shape[0], w_pos, w_neg)


def osm_pair_loss(desc: torch.Tensor, pairs: PairTuples, w_pos: torch.Tensor, w_neg: torch.Tensor,
                  margin: float = 1.2) -> torch.Tensor:
    """Weighted contrastive loss ``sum omega+ d^2 + sum omega- [margin - d]_+^2`` (the ``sum`` reducer).

    Shape: (N, D) unit descriptors with gradient -> scalar float32; an exact 0 without pairs.
    """
    if len(pairs) == 0:
        return zero_loss(desc)
    return SumReducer()(osm_terms(desc, pairs, w_pos, w_neg, margin))


@register_loss("osm_caa")
class OSMCAALoss(Loss):
    """OSM + CAA weighted contrastive loss on all pairs of the batch (module docstring).

    Args:
        margin, sigma_osm, pos_neg_balance, pair_attention: see :class:`OSMSoftMiner`
            (1.2, 0.8, 0.5, "min").
        sigma_caa: the attention's Gaussian width (0.68).
        attention: ``"batch_centroid"`` | ``"classifier"`` | ``"none"``.
        caffe_scale: multiply by ``1 / (2 N_pair)`` as the Caffe gradients do (False: tune the lr).
        num_classes, embedding_size: the classifier head's shape (``attention="classifier"``).
        classifier_weight: weight of the head's cross-entropy in the returned loss.
        classifier_joint: let the cross-entropy reach the descriptor network too.

    Default miner ``osm`` (from ``margin``, ``sigma_osm``); default reducer ``sum`` (with the Caffe
    scale when ``caffe_scale``). The head is a submodule (the trainer optimises it; checkpointed).
    """

    default_miner: ClassVar[str] = "osm"
    default_reducer: ClassVar[str] = "sum"
    suffix_stats: ClassVar[bool] = False

    def __init__(self, margin: float = 1.2, sigma_osm: float = 0.8, sigma_caa: float = 0.68,
                 pos_neg_balance: float = 0.5, attention: str = "batch_centroid", pair_attention: str = "min",
                 caffe_scale: bool = False, num_classes: int = 0, embedding_size: int = 128,
                 classifier_weight: float = 1.0, classifier_joint: bool = False) -> None:
        super().__init__()
        if attention not in ("batch_centroid", "classifier", "none"):
            raise ValueError(f"attention must be 'batch_centroid', 'classifier' or 'none', got {attention!r}")
        if attention == "classifier" and num_classes < 2:
            raise ValueError("attention='classifier' needs num_classes >= 2 (labels must lie in [0, num_classes))")
        if pair_attention not in ("min", "product"):
            raise ValueError(f"pair_attention must be 'min' or 'product', got {pair_attention!r}")
        if not 0.0 <= pos_neg_balance <= 1.0:
            raise ValueError("pos_neg_balance must be in [0, 1]")
        self.margin, self.sigma_osm = float(margin), float(sigma_osm)
        self.pos_neg_balance, self.pair_attention = float(pos_neg_balance), pair_attention
        self.sigma_caa, self.attention, self.caffe_scale = float(sigma_caa), attention, bool(caffe_scale)
        self.classifier_weight, self.classifier_joint = float(classifier_weight), bool(classifier_joint)
        self.classifier = nn.Linear(embedding_size, num_classes) if attention == "classifier" else None

    def class_attention(self, desc: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-sample attention (N,) (None for ``"none"``) and the head's cross-entropy (or None)."""
        if self.attention == "none":
            return None, None
        if self.attention == "batch_centroid":
            return batch_centroid_attention(desc, labels, self.sigma_caa), None
        assert self.classifier is not None
        k = self.classifier.out_features
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"classifier attention needs labels in [0, {k}); got {int(labels.min())}..{int(labels.max())}")
        with torch.autocast(device_type=desc.device.type, enabled=False):
            feats = desc.float() if self.classifier_joint else desc.detach().float()
            logits = self.classifier(feats)
            ce = F.cross_entropy(logits, labels)
            p = torch.softmax(logits.detach(), dim=1).gather(1, labels[:, None]).squeeze(1)
        return gaussian_attention(p, self.sigma_caa), ce

    def make_miner(self) -> OSMSoftMiner:
        return OSMSoftMiner(self.margin, self.sigma_osm)

    def make_reducer(self) -> SumReducer:
        return SumReducer(pair_scale=self.caffe_scale)

    def references(self, batch: Embedded) -> list[tuple[str, Reference | None, float]]:
        return [("osm", None, 1.0)]  # the OSM term's value is logged as loss_osm

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, tuples: PairTuples, reference: Reference | None,
                batch: Embedded | None = None) -> PairTerms:
        """OSM terms of ``embeddings`` (N, D) with CAA-weighted normalised weights; the head's
        weighted cross-entropy as ``extra``. Statistics ``pos_pairs``, ``neg_active``,
        ``attention_mean``/``attention_min``, ``loss_cls``."""
        if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
            raise ValueError(f"expected desc (N, D) and labels (N,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
        desc = embeddings.float()
        att, ce = self.class_attention(desc, labels)
        wp, wn = soft_weights(tuples, att, self.pos_neg_balance, self.pair_attention)
        stats = {"pos_pairs": float(tuples.num_pos), "neg_active": float(tuples.num_neg)}
        if att is not None and att.numel():
            stats.update(attention_mean=float(att.mean()), attention_min=float(att.min()))
        extra = None
        if ce is not None:
            extra = self.classifier_weight * ce
            stats["loss_cls"] = float(ce.detach())
        t = osm_terms(desc, tuples, wp, wn, self.margin)
        return PairTerms(t.pos, t.neg, t.pos_anchors, t.neg_anchors, t.num_anchors, t.w_pos, t.w_neg, stats, extra)
