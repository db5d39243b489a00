"""ADORE's pairs and weights (Zhan et al., SIGIR 2021, section 5): from one step's ranked lists to the
(positive, retrieved negative) pairs, each weighted by ``|ΔM|`` (LambdaLoss) or 1 (RankNet); the
negative-selection rules applied to those lists; and the training-side retrieval metrics.

Pure array code over index rows, with no model or index: :class:`~hardneg.train.methods.adore.Adore` calls it
every step, and the tests and benchmarks call it directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hardneg.errors import HardnegError
from hardneg.negatives.selection import select_one
from hardneg.train.losses import delta_mrr, delta_ndcg
from hardneg.train.methods.settings import parse_adore_metric

__all__ = ["AdorePairs", "build_pairs", "filter_ranked", "retrieval_metrics"]


@dataclass
class AdorePairs:
    """The (positive, negative) pairs of a batch of ranked lists, with their ΔM weights.

    Positives ``(B, P)``: each query's relevant documents, first the retrieved
    ones (their ranks in the list) then the appended ones (ranks ``K+1, K+2, …``),
    padded to the batch's largest count (``pos_valid`` False). Negatives
    ``(B, K)``: the retrieved list itself; ``neg_valid`` marks the retrieved
    non-relevant documents. ``mask[b, p, n]`` marks a valid pair and
    ``weights[b, p, n]`` its weight (0 wherever ``mask`` is False).
    """

    pos_rows: np.ndarray  # (B, P) int64, index rows (0 where padded)
    pos_ranks: np.ndarray  # (B, P) int64, 1-based
    pos_grades: np.ndarray  # (B, P) int64
    pos_valid: np.ndarray  # (B, P) bool
    neg_rows: np.ndarray  # (B, K) int64 (0 where the index returned no result)
    neg_valid: np.ndarray  # (B, K) bool
    relevant_retrieved: np.ndarray  # (B, K) bool: a relevant document at that rank
    weights: torch.Tensor  # (B, P, K) float
    mask: torch.Tensor  # (B, P, K) bool
    skipped: int  # queries with no pair (no positive in the corpus, or nothing non-relevant retrieved)

    @property
    def n_pairs(self) -> int:
        return int(self.mask.sum())


def build_pairs(
    retrieved: np.ndarray,
    relevant: Sequence[Mapping[int, int]],
    metric: str,
    *,
    idcg: Sequence[float] | None = None,
    weighting: str = "lambda",
    positives: str = "missing",
) -> AdorePairs:
    """Pairs and weights of ranked lists ``retrieved`` ``(B, K)`` (index rows, ``-1`` = no result).

    ``relevant[b]`` maps the index rows of query ``b``'s relevant documents
    (grade ≥ 1) to their grades, in the order non-retrieved ones are appended.
    ``metric`` is ``mrr@k`` (weights :func:`delta_mrr`) or ``ndcg@k``
    (:func:`delta_ndcg` with graded gains; ``idcg[b]`` is query ``b``'s IDCG@k
    from its qrels). ``weighting="ranknet"`` gives every valid pair weight 1.
    ``positives="missing"`` (DRhard) appends the non-retrieved relevant documents only
    to a query with no relevant document retrieved; ``"always"`` appends them to every query.
    """
    name, k = parse_adore_metric(metric)
    if positives not in ("missing", "always"):
        raise HardnegError(f"positives must be 'missing' or 'always', not {positives!r}")
    retrieved = np.asarray(retrieved, dtype=np.int64)
    if retrieved.ndim != 2 or retrieved.shape[0] != len(relevant):
        raise HardnegError(f"retrieved must be (B, K) with B = {len(relevant)}; got {retrieved.shape}")
    b, kk = retrieved.shape
    found = retrieved >= 0
    rel = np.zeros((b, kk), dtype=bool)
    p = max((len(r) for r in relevant), default=0)
    p = max(p, 1)
    pos_rows = np.zeros((b, p), dtype=np.int64)
    pos_ranks = np.full((b, p), kk + 1, dtype=np.int64)
    pos_grades = np.zeros((b, p), dtype=np.int64)
    pos_valid = np.zeros((b, p), dtype=bool)
    for i, grades in enumerate(relevant):  # label masks from qrels: a loop over queries, not pairs
        if not grades:
            continue
        rows = np.fromiter(grades.keys(), dtype=np.int64, count=len(grades))
        hit = np.isin(retrieved[i], rows) & found[i]
        rel[i] = hit
        hit_ranks = np.flatnonzero(hit)
        missing = rows[~np.isin(rows, retrieved[i][hit])]
        if positives == "missing" and hit.any():
            missing = missing[:0]
        n_hit, n_miss = len(hit_ranks), len(missing)
        all_rows = np.concatenate([retrieved[i][hit_ranks], missing])
        pos_rows[i, : n_hit + n_miss] = all_rows
        pos_ranks[i, :n_hit] = hit_ranks + 1
        pos_ranks[i, n_hit : n_hit + n_miss] = kk + 1 + np.arange(n_miss)
        pos_grades[i, : n_hit + n_miss] = [grades[int(r)] for r in all_rows]
        pos_valid[i, : n_hit + n_miss] = True
    neg_valid = found & ~rel
    neg_rows = np.where(found, retrieved, 0)
    mask = torch.from_numpy(pos_valid[:, :, None] & neg_valid[:, None, :])
    rp = torch.from_numpy(pos_ranks)[:, :, None]
    rn = torch.arange(1, kk + 1, dtype=torch.int64)[None, None, :]
    if weighting == "ranknet":
        weights = torch.ones(mask.shape, dtype=torch.get_default_dtype())
    elif weighting != "lambda":
        raise HardnegError(f"weighting must be 'lambda' or 'ranknet', not {weighting!r}")
    elif name == "mrr":
        weights = delta_mrr(rp, rn, k)
    else:
        if idcg is None or len(idcg) != b:
            raise HardnegError("ndcg weights need one IDCG@k per query")
        ideal = torch.tensor([v if v > 0 else 1.0 for v in idcg], dtype=torch.get_default_dtype())
        weights = delta_ndcg(rp, rn, torch.from_numpy(pos_grades)[:, :, None], 0, ideal[:, None, None], k)
    weights = torch.where(mask, weights.expand(mask.shape), torch.zeros((), dtype=weights.dtype))
    skipped = int((~mask.flatten(1).any(1)).sum())
    return AdorePairs(pos_rows, pos_ranks, pos_grades, pos_valid, neg_rows, neg_valid, rel,
                      weights, mask, skipped)


def filter_ranked(
    retrieved: np.ndarray,
    scores: np.ndarray,
    relevant: Sequence[Mapping[int, int]],
    positive_scores: Sequence[Sequence[float]],
    rules,
    *,
    rngs: Sequence[np.random.Generator | None] | None = None,
    diagnostics=None,
    qids: Sequence[str] | None = None,
) -> np.ndarray:
    """Retrieved lists ``(B, K)`` with the documents that fail ``rules`` removed (issue 16).

    The negative-selection rules (:class:`~hardneg.negatives.rules.NegativeRules`: margins against
    the query's positives' ``positive_scores``, ``max_score``, the window and ``num_negatives``, default
    the whole list) choose among each list's non-relevant documents by ``scores``. A document not
    chosen is *dropped* from the list: the rows after it move up and the end is padded with ``-1``
    (no result). :func:`build_pairs` then forms pairs and ranks from the shorter list, so a removed
    document (possibly an unjudged relevant one) is neither a negative nor an error counted above a
    positive by the ΔM weights. Relevant documents always stay.
    """
    retrieved = np.asarray(retrieved, dtype=np.int64)
    b, kk = retrieved.shape
    max_pos = max((len(r) for r in relevant), default=0)
    n, range_max = rules.resolve(kk, max_pos)
    out = np.full_like(retrieved, -1)
    for i in range(b):
        found = retrieved[i] >= 0
        rows = retrieved[i][found]
        keys = [str(int(r)) for r in rows]
        pos = [str(int(r)) for r in relevant[i]]
        sel = select_one(keys, np.asarray(scores[i])[found].tolist(), pos, list(positive_scores[i]), rules, n,
                         range_max, rngs[i] if rngs is not None else None)
        keep = set(sel.kept) | set(pos)
        kept_rows = [int(r) for r, key in zip(rows, keys, strict=True) if key in keep]
        out[i, : len(kept_rows)] = kept_rows
        if diagnostics is not None:
            diagnostics.add(qids[i] if qids is not None else str(i), sel, list(positive_scores[i]), None)
    return out


def retrieval_metrics(relevant_retrieved: np.ndarray, n_relevant: Sequence[int], cut: int = 10) -> dict[str, float]:
    """MRR@cut and R@cut of ranked lists, from their ``(B, K)`` relevance mask (``n_relevant``: per query)."""
    top = relevant_retrieved[:, :cut]
    any_hit = top.any(1)
    first = top.argmax(1)
    rr = np.where(any_hit, 1.0 / (first + 1), 0.0)
    n = np.maximum(np.asarray(n_relevant, dtype=np.float64), 1.0)
    return {f"train_mrr@{cut}": float(rr.mean()), f"train_r@{cut}": float((top.sum(1) / n).mean())}
