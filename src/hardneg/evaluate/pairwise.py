"""Pairwise errors and best relevant ranks of every query over a whole corpus, in one chunked pass.

The scores are the blocks of :func:`hardneg.retrieval.exact.iter_blocks` (documents outermost,
never a queries × corpus matrix), so memory stays at a block plus a few numbers per (query, relevant
document) pair. The definitions (Eq. 5 and 6 of Zhan et al. 2021) are in :mod:`hardneg.evaluate.analysis`,
whose dense :func:`~hardneg.evaluate.analysis.pairwise_errors` is the reference these counts equal
on the block-computed scores.

A relevant document's score is known only once its chunk is scored, so every chunk is counted against
a float64 estimate ``e`` of it: documents above ``e + w`` are counted, those in ``(e - w, e + w]``
kept, with ``w`` twice the worst-case float32 rounding of an inner product (``2 (dim + 2) eps |q| |r|``);
the block score then lies in that window and the kept values finish the count exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hardneg.retrieval.exact import DOC_CHUNK, QUERY_CHUNK, TopK, check_sizes, chunk_spans, iter_blocks, query_matrix

#: what the top-k count is over: the k highest-scored non-relevant documents (Eq. 6), or the
#: non-relevant documents among the top k retrieved
TOP_OF = ("negatives", "retrieved")
#: above this many relevant documents a query's counts are taken from its sorted block row
SORT_ABOVE = 8
#: (query, relevant document) pairs whose estimates are computed at a time
_ESTIMATE_CHUNK = 65536


def _windows(qv: np.ndarray, docs, pq: np.ndarray, pr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``: float32 bounds around each pair's float64 score estimate that hold its block score."""
    est = np.empty(len(pq), dtype=np.float64)
    width = np.empty(len(pq), dtype=np.float64)
    eps = float(np.finfo(np.float32).eps)
    qnorm = np.linalg.norm(qv.astype(np.float64), axis=1)
    order_r = np.argsort(pr, kind="stable")  # documents read in row order
    for a in range(0, len(pq), _ESTIMATE_CHUNK):
        idx = order_r[a : a + _ESTIMATE_CHUNK]
        d64 = np.asarray(docs[pr[idx]], dtype=np.float64)
        est[idx] = np.einsum("ij,ij->i", qv[pq[idx]].astype(np.float64), d64)
        width[idx] = 2 * (qv.shape[1] + 2) * eps * qnorm[pq[idx]] * np.linalg.norm(d64, axis=1)
    width += np.finfo(np.float32).tiny
    lo = (est - width).astype(np.float32)
    hi = (est + width).astype(np.float32)
    # rounded outwards to float32
    lo = np.where(lo.astype(np.float64) > est - width, np.nextafter(lo, np.float32(-np.inf)), lo)
    hi = np.where(hi.astype(np.float64) < est + width, np.nextafter(hi, np.float32(np.inf)), hi)
    return lo, hi


@dataclass
class _ChunkPlan:
    """One query chunk's pairs: by slot (the comparison path), its many-relevant queries (the sorted
    path) and its pairs by relevant row (to pick their scores out of a block)."""

    by_slot: list[np.ndarray]
    many: np.ndarray
    by_row: np.ndarray
    rows_sorted: np.ndarray


@dataclass
class _Pairs:
    """The (query, relevant row) pairs, query by query, and what the pass has counted for them."""

    pq: np.ndarray  # query of each pair
    pr: np.ndarray  # relevant row of each pair
    n_rel: np.ndarray  # relevant rows per query
    lo: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))
    hi: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))

    def __post_init__(self) -> None:
        n = len(self.pq)
        self.first = np.concatenate([[0], np.cumsum(self.n_rel)])  # the first pair of each query
        self.slot = np.arange(n) - np.repeat(self.first[:-1], self.n_rel)  # a pair's place in its query
        self.above = np.zeros(n, dtype=np.int64)  # documents scoring above hi
        self.window: list[list[np.ndarray]] = [[] for _ in range(n)]  # scores in (lo, hi]
        self.seen = np.full(n, np.nan, dtype=np.float32)  # the block score of the relevant document

    def plan(self, q0: int, q1: int) -> _ChunkPlan:
        pairs = np.arange(self.first[q0], self.first[q1])
        few = pairs[self.n_rel[self.pq[pairs]] <= SORT_ABOVE]
        by_slot = [few[self.slot[few] == j] for j in range(int(self.slot[few].max()) + 1 if few.size else 0)]
        many = np.flatnonzero(self.n_rel[q0:q1] > SORT_ABOVE)
        by_row = pairs[np.argsort(self.pr[pairs], kind="stable")]
        return _ChunkPlan(by_slot, many, by_row, self.pr[by_row])

    def count_few(self, block: np.ndarray, q0: int, plan: _ChunkPlan) -> None:
        """Few relevant documents: one comparison pass over the block per relevant document."""
        row_max = block.max(axis=1) if plan.by_slot else None
        for pairs in plan.by_slot:
            lq = self.pq[pairs] - q0
            active = row_max[lq] > self.lo[pairs]  # rows with a document above the window's bottom
            if not active.any():
                continue
            pairs, lq = pairs[active], lq[active]
            sub = block if len(lq) == len(block) else block[lq]
            n_hi = np.count_nonzero(sub > self.hi[pairs, None], axis=1)
            n_lo = np.count_nonzero(sub > self.lo[pairs, None], axis=1)
            self.above[pairs] += n_hi
            for i in np.flatnonzero(n_lo > n_hi):
                p, row = pairs[i], sub[i]
                self.window[p].append(row[(row > self.lo[p]) & (row <= self.hi[p])])

    def count_many(self, block: np.ndarray, q0: int, plan: _ChunkPlan) -> None:
        """Many relevant documents: the block row sorted once, every relevant document looked up in it."""
        for lq in plan.many:
            row = np.sort(block[lq])
            pairs = np.arange(self.first[q0 + lq], self.first[q0 + lq + 1])
            i_hi = np.searchsorted(row, self.hi[pairs], side="right")
            i_lo = np.searchsorted(row, self.lo[pairs], side="right")
            self.above[pairs] += len(row) - i_hi
            for p, a, b in zip(pairs, i_lo, i_hi, strict=True):
                if b > a:
                    self.window[p].append(row[a:b])

    def take_scores(self, block: np.ndarray, q0: int, row0: int, plan: _ChunkPlan) -> tuple[np.ndarray, np.ndarray]:
        """Record the block scores of the relevant documents in this chunk; their (block row, column)."""
        a, b = np.searchsorted(plan.rows_sorted, [row0, row0 + block.shape[1]])
        here = plan.by_row[a:b]
        lq, col = self.pq[here] - q0, self.pr[here] - row0
        self.seen[here] = block[lq, col]
        return lq, col

    def counts(self) -> np.ndarray:
        """Per pair: the documents (relevant ones included) scoring strictly above its relevant document."""
        if np.isnan(self.seen).any():
            raise ValueError("a relevant document's score is NaN")
        if not ((self.seen > self.lo) & (self.seen <= self.hi)).all():
            raise RuntimeError("exact pairwise counts: a score fell outside its rounding window (NaN or inf inputs?)")
        return self.above + np.array([sum(int((v > self.seen[p]).sum()) for v in self.window[p])
                                      for p in range(len(self.pq))], dtype=np.int64)


def _pairs(rel_rows: Sequence[Sequence[int]], nq: int, n_docs: int) -> tuple[_Pairs, list[np.ndarray]]:
    if len(rel_rows) != nq:
        raise ValueError(f"{len(rel_rows)} relevant-row lists for {nq} queries")
    rels = [np.asarray(r, dtype=np.int64).reshape(-1) for r in rel_rows]
    n_rel = np.array([len(r) for r in rels], dtype=np.int64)
    pr = np.concatenate([np.empty(0, dtype=np.int64), *rels])
    if pr.size and (pr.min() < 0 or pr.max() >= n_docs):
        raise ValueError(f"a relevant row is outside the corpus of {n_docs} documents")
    return _Pairs(np.repeat(np.arange(nq), n_rel), pr, n_rel), rels


def pairwise_counts(queries, docs, rel_rows: Sequence[Sequence[int]], topk: int = 200,
                    top_of: str = "negatives", *, query_chunk: int = QUERY_CHUNK,
                    doc_chunk: int = DOC_CHUNK, show_progress: bool = False) -> dict[str, np.ndarray | int]:
    """Per query: pairwise errors and the best relevant rank (a query without relevant rows: 0, 0, -1).

    ``total``: pairs (r, d), r relevant, d not, ``s_d > s_r`` over the whole corpus (Eq. 5);
    ``top``: the same over the ``k = min(topk, len(docs))`` highest-scored non-relevant documents
    (``top_of="negatives"``, Eq. 6) or the non-relevant ones among the top ``k`` retrieved
    (``"retrieved"``); ``best_rank``: the number of documents (relevant ones included) scoring
    strictly above the best relevant one, as :func:`hardneg.evaluate.analysis.best_rank`; with
    ``"retrieved"`` also ``top_rows``, the top ``k`` rows of every query (best first, ties by row).
    One pass over the corpus.
    """
    if top_of not in TOP_OF:
        raise ValueError(f"top_of must be one of {TOP_OF}, not {top_of!r}")
    check_sizes(max(1, topk), query_chunk, doc_chunk)
    qv = query_matrix(queries)
    nq, n_docs = len(qv), int(docs.shape[0])
    pairs, rels = _pairs(rel_rows, nq, n_docs)
    pairs.lo, pairs.hi = _windows(qv, docs, pairs.pq, pairs.pr)
    qparts = chunk_spans(nq, query_chunk)
    plans = [pairs.plan(q0, q1) for q0, q1 in qparts]
    k = min(topk, n_docs)
    top = TopK(nq, k, query_chunk) if k >= 1 else None
    for c, row0, block in iter_blocks(qv, docs, query_chunk=query_chunk, doc_chunk=doc_chunk,
                                      show_progress=show_progress):
        q0 = qparts[c][0]
        pairs.count_few(block, q0, plans[c])
        pairs.count_many(block, q0, plans[c])
        lq, col = pairs.take_scores(block, q0, row0, plans[c])
        if top is not None:
            if top_of == "negatives":
                block[lq, col] = -np.inf  # the block is ours: mask the relevant documents out
            top.add_block(c, block, row0)
    return {"k": k, **_per_query(pairs, pairs.counts(), rels, top, top_of)}


def _per_query(pairs: _Pairs, count: np.ndarray, rels: list[np.ndarray], top: TopK | None,
               top_of: str) -> dict[str, np.ndarray | int]:
    """The pairs' counts summed per query (relevant documents above a relevant one are no errors)."""
    nq = len(rels)
    total = np.zeros(nq, dtype=np.int64)
    best = np.full(nq, -1, dtype=np.int64)
    top_errors = np.zeros(nq, dtype=np.int64)
    top_s, top_r = top.result() if top is not None else (None, None)
    for i in range(nq):
        p = np.arange(pairs.first[i], pairs.first[i + 1])
        if not len(p):
            continue
        s = pairs.seen[p]
        rel_above = (s[None, :] > s[:, None]).sum(axis=1)  # other relevant documents above each
        total[i] = int((count[p] - rel_above).sum())
        best[i] = int(count[p].min())
        if top_s is not None:
            values = top_s[i] if top_of == "negatives" else top_s[i][~np.isin(top_r[i], rels[i])]
            values = np.sort(values)
            top_errors[i] = int((len(values) - np.searchsorted(values, s, side="right")).sum())
    out: dict[str, np.ndarray | int] = {"total": total, "top": top_errors, "best_rank": best}
    if top_of == "retrieved":
        out["top_rows"] = top_r if top_r is not None else np.empty((nq, 0), dtype=np.int64)
    return out


__all__ = ["SORT_ABOVE", "TOP_OF", "pairwise_counts"]
