"""Training losses on score tensors (Zhan et al., SIGIR 2021: STAR and ADORE).

Every function here takes *scores* (``s = <q, d>``), never embeddings; the
batch layout and its masks (:func:`~hardneg.train.layout.layout_masks`) and the
score builders that turn embeddings into the ``(pos, neg, mask)`` layout the
losses take are in :mod:`hardneg.train.layout`.

Conventions
-----------
* ``pos`` holds the positive score of each query, ``(B,)`` (or ``(B, P)`` for
  :func:`lambda_pairwise`); ``neg`` holds negative scores, ``(B, N)``.
* ``mask`` is a bool tensor shaped like ``neg``: ``True`` marks a *valid*
  negative. A masked entry contributes nothing to the loss and receives a
  gradient of exactly 0, whatever its value (even ``inf``/``nan``).
* Pairwise losses are means over *valid pairs*; with no valid pair at all the
  loss is ``0`` (still attached to the graph), never ``nan``.
* These are the losses training runs (:mod:`hardneg.train.methods`, ADORE), in
  their global-mean form: each mean is a ``*_sum`` pair ``(sum, count)`` reduced
  by :func:`hardneg.distributed.global_mean`, which in one process is
  exactly ``sum / max(count, 1)`` and under torchrun divides this rank's sum by
  the count of the whole global batch.

Score scale
-----------
Losses take raw tensors. Encoders that L2-normalise their outputs produce
cosines in ``[-1, 1]``, far too flat for a softmax/RankNet loss; the trainer
multiplies those scores by a scale (e.g. 20, sentence-transformers' default)
*before* calling a loss. Scores are linear in the query embedding, so scaling
``q`` by ``c`` before :func:`star_scores` / :func:`inbatch_scores` is the same
as scaling every score by ``c``. Unnormalised dot-product models (the paper's
RoBERTa STAR/ADORE) use scale 1.

Paper equations
---------------
* RankNet pairwise loss (Eq. 14): ``l(s+, s-) = log(1 + exp(s- - s+))``.
* STAR (Eq. 13): ``L = L_static + alpha * L_random``; DRhard's code mixes
  them as one pair mean, ``(first_loss + second_loss) / (first_num + second_num)``
  (:func:`star_loss`, ``mixing="pairmean"``).
* ADORE's LambdaLoss weights each pair by ``|Delta M|``, the change in the
  metric ``M`` (MRR@k or nDCG@k) when the two documents swap ranks
  (:func:`delta_mrr`, :func:`delta_ndcg`, :func:`lambda_pairwise`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.distributed import global_mean
from hardneg.errors import HardnegError

__all__ = [
    "delta_mrr",
    "delta_ndcg",
    "ideal_dcg",
    "lambda_pairwise",
    "lambda_pairwise_sum",
    "pairwise_loss",
    "ranknet_pairwise",
    "ranknet_pairwise_sum",
    "softmax_ce",
    "softmax_ce_sum",
    "star_loss",
]

Mixing = Literal["alpha", "pairmean"]
Reduction = Literal["global", "query"]
Pairwise = Literal["ranknet", "softmax"]


# --------------------------------------------------------------------------- checks


def _check_k(k: object) -> int:
    """``k`` must be a positive int; ``None`` is refused (it would zero every weight)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise HardnegError(
            f"the metric cut-off k must be a positive integer (e.g. 10 for MRR@10); got {k!r}. "
            "There is no 'no cut-off' default: with k=None every document would fall beyond "
            "the cut-off and every LambdaLoss weight would silently be 0"
        )
    return int(k)


def _check_pos_neg(pos: Tensor, neg: Tensor, mask: Tensor | None, what: str) -> None:
    if pos.dim() != 1 or neg.dim() != 2 or neg.shape[0] != pos.shape[0]:
        raise HardnegError(
            f"{what}: expected pos of shape (B,) and neg of shape (B, N); "
            f"got {tuple(pos.shape)} and {tuple(neg.shape)}"
        )
    if mask is not None:
        if mask.shape != neg.shape:
            raise HardnegError(
                f"{what}: mask shape {tuple(mask.shape)} differs from neg shape {tuple(neg.shape)}"
            )
        if mask.dtype != torch.bool:
            raise HardnegError(
                f"{what}: mask must be a bool tensor (True = valid); got {mask.dtype}"
            )


def _as_rank_tensor(ranks: Tensor | Sequence[int] | int, name: str) -> Tensor:
    t = torch.as_tensor(ranks)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise HardnegError(f"{name} must hold integer ranks (1 = top); got dtype {t.dtype}")
    if t.numel() and bool((t < 1).any()):
        raise HardnegError(
            f"{name} must hold 1-based ranks (>= 1); got a minimum of {int(t.min())}"
        )
    return t


# --------------------------------------------------------------------------- RankNet / softmax


def ranknet_pairwise_sum(
    pos: Tensor, neg: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Sum of the RankNet loss over valid pairs, and the number of valid pairs.

    ``sum = Σ_{i,j: mask_ij} log(1 + exp(neg_ij - pos_i))`` (paper Eq. 14), computed
    as ``softplus(neg - pos[:, None])``. ``count`` is a float tensor on ``pos``'s
    device. Masked entries are replaced by 0 *before* the softplus, so their
    gradient is exactly 0 even for non-finite scores.
    """
    _check_pos_neg(pos, neg, mask, "ranknet_pairwise")
    diff = neg - pos[:, None]
    if mask is None:
        losses = F.softplus(diff)
        count = torch.tensor(float(diff.numel()), device=diff.device, dtype=diff.dtype)
        return losses.sum(), count
    diff = torch.where(mask, diff, torch.zeros((), dtype=diff.dtype, device=diff.device))
    losses = F.softplus(diff) * mask.to(diff.dtype)
    return losses.sum(), mask.sum().to(diff.dtype)


def ranknet_pairwise(pos: Tensor, neg: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean RankNet loss over valid pairs (paper Eq. 14).

    ``L = (1 / |V|) Σ_{(i,j) ∈ V} log(1 + exp(s⁻_ij − s⁺_i))``, ``V = {(i, j): mask_ij}``.

    ``pos``: ``(B,)``, ``neg``: ``(B, N)``, ``mask``: ``(B, N)`` bool (True = valid)
    or ``None`` (all valid). With no valid pair the result is ``0`` (attached to
    the graph, zero gradient), not ``nan``. Under torchrun ``|V|`` counts the
    global batch's pairs (:func:`~hardneg.distributed.global_mean`).
    """
    return global_mean(*ranknet_pairwise_sum(pos, neg, mask))


def softmax_ce_sum(
    pos: Tensor, neg: Tensor, mask: Tensor | None = None, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Sum of :func:`softmax_ce`'s per-query losses, and the number of queries (a float tensor).

    ``softmax_ce = sum / count``; the pair lets a data-parallel run divide by the global count.
    """
    per_query = _softmax_ce_rows(pos, neg, mask, temperature)
    return per_query.sum(), torch.tensor(float(per_query.numel()), device=pos.device, dtype=per_query.dtype)


def softmax_ce(
    pos: Tensor, neg: Tensor, mask: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """InfoNCE / softmax cross-entropy with the positive as the target class.

    ``L = (1/B) Σ_i −log( exp(s⁺_i/τ) / (exp(s⁺_i/τ) + Σ_{j valid} exp(s⁻_ij/τ)) )``

    Masked negatives are set to ``-inf`` before the logsumexp (so they drop out
    of the denominator and get a zero gradient). A query whose negatives are all
    masked contributes ``0``. Under torchrun ``B`` is the global batch size.
    """
    return global_mean(*softmax_ce_sum(pos, neg, mask, temperature))


def pairwise_loss(
    pos: Tensor, neg: Tensor, mask: Tensor | None = None, *, loss: Pairwise = "ranknet"
) -> Tensor:
    """The training loss ``loss`` over ``(pos, neg, mask)``: :func:`ranknet_pairwise` (a mean over
    valid pairs) or :func:`softmax_ce` (a mean over queries)."""
    return global_mean(*_pairwise_sum(pos, neg, mask, loss))


def _pairwise_sum(pos: Tensor, neg: Tensor, mask: Tensor | None, loss: Pairwise) -> tuple[Tensor, Tensor]:
    if loss == "ranknet":
        return ranknet_pairwise_sum(pos, neg, mask)
    if loss == "softmax":
        return softmax_ce_sum(pos, neg, mask)
    raise HardnegError(f"loss must be 'ranknet' or 'softmax'; got {loss!r}")


def _softmax_ce_rows(pos: Tensor, neg: Tensor, mask: Tensor | None, temperature: float) -> Tensor:
    _check_pos_neg(pos, neg, mask, "softmax_ce")
    if not (
        isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0
    ):
        raise HardnegError(
            f"softmax_ce: temperature must be a positive number; got {temperature!r}"
        )
    logits = torch.cat([pos[:, None], neg], dim=1) / temperature
    if mask is not None:
        keep = torch.cat(
            [torch.ones_like(mask[:, :1]), mask], dim=1
        )  # the positive column is always kept
        logits = logits.masked_fill(~keep, float("-inf"))
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


# --------------------------------------------------------------------------- LambdaLoss weights


def delta_mrr(rank_pos: Tensor, rank_neg: Tensor, k: int) -> Tensor:
    """``|ΔMRR@k|`` of swapping a positive at rank ``r⁺`` with a negative at ``r⁻``.

    ``ΔMRR = | 1/r⁺ − 1/r⁻ |`` where ``1/r := 0`` for ``r > k``. Ranks are 1-based
    integers (any shapes that broadcast). Equal ranks, or both beyond ``k``, give 0.

    ``k`` must be a positive int: ``None`` raises :class:`HardnegError` (DRhard's
    default ``metric_cut=None`` silently made every weight 0).
    """
    k = _check_k(k)
    rp = _as_rank_tensor(rank_pos, "rank_pos")
    rn = _as_rank_tensor(rank_neg, "rank_neg")
    dtype = torch.get_default_dtype()

    def recip(r: Tensor) -> Tensor:
        rf = r.to(dtype)
        return torch.where(r <= k, 1.0 / rf, torch.zeros((), dtype=dtype, device=r.device))

    return (recip(rp) - recip(rn)).abs()


def _gain(grades: Tensor) -> Tensor:
    """``2^g − 1`` with negative grades treated as 0 (non-relevant)."""
    return torch.exp2(grades.clamp(min=0)) - 1.0


def ideal_dcg(grades: Sequence[int] | Tensor, k: int) -> float:
    """``IDCG@k = Σ_{r=1}^{min(k, n)} (2^{g_(r)} − 1) / log2(1 + r)``, grades sorted desc.

    Negative grades count as 0 (no gain). An empty list or all-zero grades give 0.
    """
    k = _check_k(k)
    g = torch.as_tensor(grades, dtype=torch.float64).flatten()
    if g.numel() == 0:
        return 0.0
    top = torch.sort(g, descending=True).values[:k]
    ranks = torch.arange(1, top.numel() + 1, dtype=torch.float64)
    return float((_gain(top) / torch.log2(1.0 + ranks)).sum())


def delta_ndcg(
    rank_pos: Tensor,
    rank_neg: Tensor,
    grade_pos: Tensor,
    grade_neg: Tensor,
    idcg: Tensor | float,
    k: int,
) -> Tensor:
    """``|ΔnDCG@k|`` of swapping a positive (rank ``r⁺``, grade ``g⁺``) and a negative.

    ``ΔnDCG = | (2^{g⁺} − 2^{g⁻}) · (D(r⁺) − D(r⁻)) | / IDCG@k`` with
    ``D(r) = 1 / log2(1 + r)`` for ``r ≤ k`` and ``D(r) = 0`` beyond ``k``.

    ``grade_*`` are relevance *grades* ``g`` (the gain is ``2^g − 1``; the ``− 1``
    cancels in the difference; negative grades count as 0). ``idcg`` is a float
    or a tensor broadcastable to the result (one value per query, e.g. from
    :func:`ideal_dcg`); it must be positive (a query with no relevant document
    has no positive and so no pair to weight). All arguments broadcast.
    """
    k = _check_k(k)
    rp = _as_rank_tensor(rank_pos, "rank_pos")
    rn = _as_rank_tensor(rank_neg, "rank_neg")
    dtype = torch.get_default_dtype()
    ideal = torch.as_tensor(idcg, dtype=dtype, device=rp.device)
    if ideal.numel() and bool((ideal <= 0).any()):
        raise HardnegError(
            "delta_ndcg: IDCG@k must be positive; a query with no relevant document "
            "has no pairs to weight (drop it before computing the loss)"
        )

    def discount(r: Tensor) -> Tensor:
        rf = r.to(dtype)
        return torch.where(
            r <= k, 1.0 / torch.log2(1.0 + rf), torch.zeros((), dtype=dtype, device=r.device)
        )

    gp = torch.as_tensor(grade_pos, device=rp.device).to(dtype)
    gn = torch.as_tensor(grade_neg, device=rp.device).to(dtype)
    gain_diff = _gain(gp) - _gain(gn)
    return (gain_diff * (discount(rp) - discount(rn))).abs() / ideal


def lambda_pairwise_sum(
    pos: Tensor,
    neg: Tensor,
    weights: Tensor,
    mask: Tensor | None = None,
    *,
    reduction: Reduction = "global",
) -> tuple[Tensor, Tensor]:
    """``(total, count)`` of :func:`lambda_pairwise`'s mean, ``total / count``.

    ``reduction="global"``: ``(Σ_valid w · softplus(s⁻ − s⁺), number of valid pairs)``.
    ``reduction="query"``: ``(Σ_i mean_i, number of queries with ≥ 1 valid pair)``, ``mean_i``
    the mean of query ``i``'s valid pair losses (DRhard's ADORE). Either count is summed over
    ranks by :func:`global_mean`.
    """
    if reduction not in ("global", "query"):
        raise HardnegError(f"lambda_pairwise: reduction must be 'global' or 'query', not {reduction!r}")
    if pos.dim() != 2 or neg.dim() != 2 or pos.shape[0] != neg.shape[0]:
        raise HardnegError(
            "lambda_pairwise: expected pos (B, P) and neg (B, N); "
            f"got {tuple(pos.shape)} and {tuple(neg.shape)}"
        )
    shape = (pos.shape[0], pos.shape[1], neg.shape[1])
    if tuple(weights.shape) != shape:
        raise HardnegError(
            f"lambda_pairwise: weights must have shape (B, P, N) = {shape}; got {tuple(weights.shape)}"
        )
    if mask is not None and (tuple(mask.shape) != shape or mask.dtype != torch.bool):
        raise HardnegError(
            f"lambda_pairwise: mask must be a bool tensor of shape {shape}; "
            f"got {tuple(mask.shape)} {mask.dtype}"
        )
    diff = neg[:, None, :] - pos[:, :, None]
    w = weights.detach().to(diff.dtype)
    if mask is None:
        mask = torch.ones(shape, dtype=torch.bool, device=diff.device)
    zero = torch.zeros((), dtype=diff.dtype, device=diff.device)
    diff = torch.where(mask, diff, zero)
    w = torch.where(mask, w, zero)
    losses = w * F.softplus(diff)
    if reduction == "global":
        return losses.sum(), mask.sum().to(diff.dtype)
    per_query_pairs = mask.flatten(1).sum(1).to(diff.dtype)  # (B,)
    per_query = losses.flatten(1).sum(1) / per_query_pairs.clamp(min=1.0)  # 0 for a query without pairs
    return per_query.sum(), (per_query_pairs > 0).sum().to(diff.dtype)


def lambda_pairwise(
    pos: Tensor,
    neg: Tensor,
    weights: Tensor,
    mask: Tensor | None = None,
    *,
    reduction: Reduction = "global",
) -> Tensor:
    """Metric-weighted RankNet (ADORE's LambdaLoss).

    ``L = (1 / |V|) Σ_{(i,p,n) ∈ V} w_ipn · log(1 + exp(s⁻_in − s⁺_ip))``

    ``pos``: ``(B, P)`` positive scores, ``neg``: ``(B, N)`` negative scores,
    ``weights``: ``(B, P, N)`` (e.g. :func:`delta_mrr` of the pair's ranks),
    ``mask``: ``(B, P, N)`` bool, True = valid pair (use it to drop padded
    positives/negatives). Normalisation: the weighted sum is divided by the
    number of *valid pairs* ``|V|`` (not by ``Σ w``), so the loss scale follows
    the weights' scale, as in DRhard's ADORE. Weights are constants: they are
    detached. No valid pair gives ``0`` (not ``nan``). Under torchrun ``|V|``
    counts the global batch's pairs (each rank scores its own queries).

    ``reduction="query"`` (DRhard's normalisation) instead averages each query's
    valid pair losses, then averages those means over the queries with at least
    one valid pair (of the global batch under torchrun), so a query with many
    positives weighs as much as a query with one.
    """
    return global_mean(*lambda_pairwise_sum(pos, neg, weights, mask, reduction=reduction))


# --------------------------------------------------------------------------- STAR


def star_loss(
    pos: Tensor,
    hard: Tensor,
    rand: Tensor,
    hard_mask: Tensor | None = None,
    rand_mask: Tensor | None = None,
    *,
    alpha: float = 1.0,
    mixing: Mixing = "alpha",
    loss: Pairwise = "ranknet",
) -> Tensor:
    """STAR's loss: RankNet over static hard negatives and random negatives.

    ``pos`` ``(B,)``, ``hard`` ``(B, H)``, ``rand`` ``(B, R)`` with bool masks
    (True = valid). Let ``S_h, n_h`` / ``S_r, n_r`` be the RankNet sums and valid
    pair counts of :func:`ranknet_pairwise_sum` over ``hard`` / ``rand``.

    * ``mixing="alpha"`` (paper Eq. 13): ``L = S_h / n_h + alpha · S_r / n_r``
      (each term a mean over its own valid pairs; 0 when it has none).
    * ``mixing="pairmean"`` (DRhard's code): ``L = (S_h + S_r) / (n_h + n_r)``,
      one mean over all valid pairs; ``alpha`` is ignored. With the layout of
      :func:`~hardneg.train.layout.star_scores` (hard = own hard negatives; rand = other queries'
      positives and other queries' hard negatives) this is DRhard's
      ``(first_loss + second_loss) / (first_num + second_num)``, since
      ``−log_softmax([s⁺, s⁻])[0] = softplus(s⁻ − s⁺)``.

    ``loss="softmax"`` (``mixing="alpha"`` only) makes each term a
    :func:`softmax_ce` over its negatives instead. Training calls this function
    with ``hard = rand =`` the batch's whole score matrix and the two masks of
    :func:`~hardneg.train.layout.layout_masks`; means are global means under torchrun.
    """
    if mixing not in ("alpha", "pairmean"):
        raise HardnegError(f"star_loss: mixing must be 'alpha' or 'pairmean'; got {mixing!r}")
    if mixing == "pairmean" and loss != "ranknet":
        raise HardnegError("--star-mixing pairmean reproduces DRhard's RankNet formula: use --loss ranknet")
    s_h, n_h = _pairwise_sum(pos, hard, hard_mask, loss)
    s_r, n_r = _pairwise_sum(pos, rand, rand_mask, loss)
    if mixing == "pairmean":
        return global_mean(s_h + s_r, n_h + n_r)
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
        raise HardnegError(f"star_loss: alpha must be a non-negative number; got {alpha!r}")
    return global_mean(s_h, n_h) + alpha * global_mean(s_r, n_r)
