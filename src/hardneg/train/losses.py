"""Training losses on score tensors (Zhan et al., SIGIR 2021: STAR and ADORE).

Every function here takes *scores* (``s = <q, d>``), never embeddings, except
the two score builders :func:`inbatch_scores` and :func:`star_scores`, which
turn embeddings into the ``(pos, neg, mask)`` layout the losses take.

Conventions
-----------
* ``pos`` holds the positive score of each query, ``(B,)`` (or ``(B, P)`` for
  :func:`lambda_pairwise`); ``neg`` holds negative scores, ``(B, N)``.
* ``mask`` is a bool tensor shaped like ``neg``: ``True`` marks a *valid*
  negative. A masked entry contributes nothing to the loss and receives a
  gradient of exactly 0, whatever its value (even ``inf``/``nan``).
* Pairwise losses are means over *valid pairs*; with no valid pair at all the
  loss is ``0`` (still attached to the graph), never ``nan``.

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
* STAR (Eq. 13): ``L = L_static + alpha * L_random``.
* ADORE's LambdaLoss weights each pair by ``|Delta M|``, the change in the
  metric ``M`` (MRR@k or nDCG@k) when the two documents swap ranks
  (:func:`delta_mrr`, :func:`delta_ndcg`, :func:`lambda_pairwise`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.errors import HardnegError

__all__ = [
    "StarScores",
    "collision_mask",
    "delta_mrr",
    "delta_ndcg",
    "ideal_dcg",
    "inbatch_scores",
    "lambda_pairwise",
    "lambda_pairwise_sum",
    "ranknet_pairwise",
    "ranknet_pairwise_sum",
    "softmax_ce",
    "softmax_ce_sum",
    "star_loss",
    "star_scores",
]

Mixing = Literal["alpha", "pairmean"]


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
    the graph, zero gradient), not ``nan``.
    """
    total, count = ranknet_pairwise_sum(pos, neg, mask)
    return total / count.clamp(min=1.0)


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
    masked contributes ``0``.
    """
    return _softmax_ce_rows(pos, neg, mask, temperature).mean()


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
    pos: Tensor, neg: Tensor, weights: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(Σ_valid w · softplus(s⁻ − s⁺), number of valid pairs)``; see :func:`lambda_pairwise`."""
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
        count = torch.tensor(float(diff.numel()), device=diff.device, dtype=diff.dtype)
        return (w * F.softplus(diff)).sum(), count
    zero = torch.zeros((), dtype=diff.dtype, device=diff.device)
    diff = torch.where(mask, diff, zero)
    w = torch.where(mask, w, zero)
    return (w * F.softplus(diff)).sum(), mask.sum().to(diff.dtype)


def lambda_pairwise(
    pos: Tensor, neg: Tensor, weights: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Metric-weighted RankNet (ADORE's LambdaLoss).

    ``L = (1 / |V|) Σ_{(i,p,n) ∈ V} w_ipn · log(1 + exp(s⁻_in − s⁺_ip))``

    ``pos``: ``(B, P)`` positive scores, ``neg``: ``(B, N)`` negative scores,
    ``weights``: ``(B, P, N)`` (e.g. :func:`delta_mrr` of the pair's ranks),
    ``mask``: ``(B, P, N)`` bool, True = valid pair (use it to drop padded
    positives/negatives). Normalisation: the weighted sum is divided by the
    number of *valid pairs* ``|V|`` (not by ``Σ w``), so the loss scale follows
    the weights' scale, as in DRhard's ADORE. Weights are constants: they are
    detached. No valid pair gives ``0`` (not ``nan``).
    """
    total, count = lambda_pairwise_sum(pos, neg, weights, mask)
    return total / count.clamp(min=1.0)


# --------------------------------------------------------------------------- score builders


def collision_mask(
    query_positives: Sequence[Set[str]],
    doc_ids: Sequence[str],
    device: torch.device | str | None = None,
) -> Tensor:
    """``(B, M)`` bool: True where ``doc_ids[j]`` is a known positive of query ``i``.

    Those pairs must never be used as negatives (pass ``~collisions`` as part of
    a mask). ``query_positives[i]`` is the set of positive doc ids of the i-th
    example's query (grade ≥ 1). Cost is ``O(M + Σ|positives|)``.
    """
    columns: dict[str, list[int]] = {}
    for j, docid in enumerate(doc_ids):
        columns.setdefault(docid, []).append(j)
    out = torch.zeros((len(query_positives), len(doc_ids)), dtype=torch.bool)
    for i, positives in enumerate(query_positives):
        for docid in positives:
            for j in columns.get(docid, ()):
                out[i, j] = True
    return out.to(device) if device is not None else out


def inbatch_scores(
    q: Tensor, docs: Tensor, positive_index: Tensor, collisions: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Score every query against every doc in the batch.

    ``q``: ``(B, d)``, ``docs``: ``(M, d)``, ``positive_index``: ``(B,)`` long, the
    column of each query's positive in ``docs``; ``collisions``: ``(B, M)`` bool
    (see :func:`collision_mask`), True where doc ``j`` is a known positive of
    query ``i``.

    Returns ``(pos, neg, mask)``: ``pos = s[i, positive_index[i]]`` ``(B,)``,
    ``neg = q @ docs.T`` ``(B, M)`` (all columns) and ``mask`` ``(B, M)`` with the
    own positive column and every collision set to False. Used for in-batch
    negatives, random negatives appended to the batch and STAR.
    """
    if q.dim() != 2 or docs.dim() != 2 or q.shape[1] != docs.shape[1]:
        raise HardnegError(
            f"inbatch_scores: expected q (B, d) and docs (M, d); "
            f"got {tuple(q.shape)} and {tuple(docs.shape)}"
        )
    b, m = q.shape[0], docs.shape[0]
    positive_index = torch.as_tensor(positive_index, device=q.device)
    if positive_index.shape != (b,) or positive_index.is_floating_point():
        raise HardnegError(
            f"inbatch_scores: positive_index must be an integer tensor of shape ({b},); "
            f"got {tuple(positive_index.shape)} {positive_index.dtype}"
        )
    if b and (int(positive_index.min()) < 0 or int(positive_index.max()) >= m):
        raise HardnegError(f"inbatch_scores: positive_index must lie in [0, {m})")
    scores = q @ docs.T
    pos = scores.gather(1, positive_index.long()[:, None]).squeeze(1)
    cols = torch.arange(m, device=q.device)
    mask = cols[None, :] != positive_index.long()[:, None]
    if collisions is not None:
        if tuple(collisions.shape) != (b, m) or collisions.dtype != torch.bool:
            raise HardnegError(
                f"inbatch_scores: collisions must be a bool tensor of shape ({b}, {m}); "
                f"got {tuple(collisions.shape)} {collisions.dtype}"
            )
        mask = mask & ~collisions.to(q.device)
    return pos, scores, mask


@dataclass(frozen=True)
class StarScores:
    """Scores for :func:`star_loss`, built by :func:`star_scores`.

    ``pos`` ``(B,)``; ``hard`` ``(B, H)`` each query vs its own hard negatives;
    ``rand`` ``(B, M)`` each query vs *every* doc of the batch, columns laid out
    as ``rand_doc_ids`` = ``[positives (B) | hard negatives (B*H, grouped by
    query) | extra random docs (R)]``; ``rand_mask`` masks the query's own
    positive, its own hard negatives (they are in ``hard``) and collisions.
    """

    pos: Tensor
    hard: Tensor
    rand: Tensor
    hard_mask: Tensor
    rand_mask: Tensor
    rand_doc_ids: tuple[str, ...]

    def loss(self, alpha: float = 1.0, mixing: Mixing = "alpha") -> Tensor:
        return star_loss(
            self.pos,
            self.hard,
            self.rand,
            self.hard_mask,
            self.rand_mask,
            alpha=alpha,
            mixing=mixing,
        )


def star_scores(
    q: Tensor,
    pos_docs: Tensor,
    hard_docs: Tensor,
    *,
    pos_doc_ids: Sequence[str],
    hard_doc_ids: Sequence[Sequence[str]] | Sequence[str],
    query_positives: Sequence[Set[str]],
    rand_docs: Tensor | None = None,
    rand_doc_ids: Sequence[str] | None = None,
) -> StarScores:
    """Build STAR's score tensors and masks from a batch of embeddings.

    * ``q`` ``(B, d)``: query embeddings (already multiplied by the score scale
      if the encoder is normalised).
    * ``pos_docs`` ``(B, d)`` with ids ``pos_doc_ids`` (B): each example's positive.
    * ``hard_docs`` ``(B, H, d)`` or ``(B*H, d)`` (rows ``i*H … i*H+H-1`` belong
      to example ``i``) with ids ``hard_doc_ids`` as ``B`` lists of ``H`` or a flat
      list of ``B*H``: each example's static hard negatives.
    * ``query_positives`` (B): every known positive doc id of example ``i``'s
      query (the example's own ``pos_doc_ids[i]`` is added if missing).
    * ``rand_docs`` ``(R, d)`` / ``rand_doc_ids`` (R): optional extra random docs.

    Layout: ``hard[i]`` = query ``i`` vs its own hard negatives; ``rand[i]`` =
    query ``i`` vs all ``B + B*H + R`` docs of the batch, i.e. other queries'
    positives and other queries' hard negatives (the in-batch random negatives)
    plus the extra random docs. The own positive column and own hard-negative
    columns are masked out of ``rand``; any doc that is a known positive of query
    ``i`` is masked out of both. With this layout ``star_loss(mixing="pairmean")``
    equals DRhard's STAR loss exactly.
    """
    b = q.shape[0]
    if hard_docs.dim() == 3:
        if hard_docs.shape[0] != b:
            raise HardnegError(
                f"star_scores: hard_docs (B, H, d) has B={hard_docs.shape[0]}, expected {b}"
            )
        h = hard_docs.shape[1]
        hard_flat = hard_docs.reshape(b * h, hard_docs.shape[2])
    elif hard_docs.dim() == 2:
        if b == 0 or hard_docs.shape[0] % b:
            raise HardnegError(
                f"star_scores: {hard_docs.shape[0]} hard-negative rows cannot be split "
                f"evenly over {b} queries"
            )
        h = hard_docs.shape[0] // b
        hard_flat = hard_docs
    else:
        raise HardnegError(
            f"star_scores: hard_docs must be (B, H, d) or (B*H, d); got {tuple(hard_docs.shape)}"
        )
    if pos_docs.shape[0] != b or len(pos_doc_ids) != b or len(query_positives) != b:
        raise HardnegError(
            f"star_scores: {b} queries but {pos_docs.shape[0]} positive docs, "
            f"{len(pos_doc_ids)} positive ids and {len(query_positives)} positive sets"
        )
    flat_hard_ids: list[str] = []
    if hard_doc_ids and not isinstance(hard_doc_ids[0], str):
        for i, ids in enumerate(hard_doc_ids):
            if len(ids) != h:
                raise HardnegError(
                    f"star_scores: example {i} has {len(ids)} hard-negative ids, expected {h}"
                )
            flat_hard_ids.extend(ids)  # type: ignore[arg-type]
    else:
        flat_hard_ids = list(hard_doc_ids)  # type: ignore[arg-type]
    if len(flat_hard_ids) != b * h:
        raise HardnegError(
            f"star_scores: {len(flat_hard_ids)} hard-negative ids for {b * h} hard-negative rows"
        )
    extra_ids: list[str] = []
    docs = [pos_docs, hard_flat]
    if rand_docs is not None:
        if rand_doc_ids is None or len(rand_doc_ids) != rand_docs.shape[0]:
            raise HardnegError("star_scores: rand_doc_ids must give one id per row of rand_docs")
        docs.append(rand_docs)
        extra_ids = list(rand_doc_ids)
    elif rand_doc_ids:
        raise HardnegError("star_scores: rand_doc_ids given without rand_docs")

    all_ids = [*pos_doc_ids, *flat_hard_ids, *extra_ids]
    positives = [set(p) | {pid} for p, pid in zip(query_positives, pos_doc_ids, strict=True)]
    collisions = collision_mask(positives, all_ids, device=q.device)
    pos, scores, mask = inbatch_scores(
        q, torch.cat(docs, dim=0), torch.arange(b, device=q.device), collisions
    )
    # columns of query i's own hard negatives: b + i*h + [0, h)
    own_hard = b + torch.arange(b, device=q.device)[:, None] * h + torch.arange(h, device=q.device)
    hard = scores.gather(1, own_hard)
    hard_mask = mask.gather(1, own_hard)
    rand_mask = mask.scatter(1, own_hard, False)
    return StarScores(pos, hard, scores, hard_mask, rand_mask, tuple(all_ids))


def star_loss(
    pos: Tensor,
    hard: Tensor,
    rand: Tensor,
    hard_mask: Tensor | None = None,
    rand_mask: Tensor | None = None,
    *,
    alpha: float = 1.0,
    mixing: Mixing = "alpha",
) -> Tensor:
    """STAR's loss: RankNet over static hard negatives and random negatives.

    ``pos`` ``(B,)``, ``hard`` ``(B, H)``, ``rand`` ``(B, R)`` with bool masks
    (True = valid). Let ``S_h, n_h`` / ``S_r, n_r`` be the RankNet sums and valid
    pair counts of :func:`ranknet_pairwise_sum` over ``hard`` / ``rand``.

    * ``mixing="alpha"`` (paper Eq. 13): ``L = S_h / n_h + alpha · S_r / n_r``
      (each term a mean over its own valid pairs; 0 when it has none).
    * ``mixing="pairmean"`` (DRhard's code): ``L = (S_h + S_r) / (n_h + n_r)``,
      one mean over all valid pairs; ``alpha`` is ignored. With the layout of
      :func:`star_scores` (hard = own hard negatives; rand = other queries'
      positives and other queries' hard negatives) this is DRhard's
      ``(first_loss + second_loss) / (first_num + second_num)``, since
      ``−log_softmax([s⁺, s⁻])[0] = softplus(s⁻ − s⁺)``.
    """
    s_h, n_h = ranknet_pairwise_sum(pos, hard, hard_mask)
    s_r, n_r = ranknet_pairwise_sum(pos, rand, rand_mask)
    if mixing == "alpha":
        if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
            raise HardnegError(f"star_loss: alpha must be a non-negative number; got {alpha!r}")
        return s_h / n_h.clamp(min=1.0) + alpha * (s_r / n_r.clamp(min=1.0))
    if mixing == "pairmean":
        return (s_h + s_r) / (n_h + n_r).clamp(min=1.0)
    raise HardnegError(f"star_loss: mixing must be 'alpha' or 'pairmean'; got {mixing!r}")
