"""Exact inner-product search and counting over a corpus too large for a queries × corpus score matrix.

The documents are a 2-D array or ``np.memmap`` (e.g. the artifact cache's embeddings, see
:class:`hardneg.index.encode.Embeddings`) read ``doc_chunk`` rows at a time and converted to float32
chunk by chunk (a float32 memmap is read in place, never copied whole); the queries are processed
``query_chunk`` at a time. The corpus is read once, in row order (documents are the outer loop).

Memory bound: one block of scores is ``query_chunk × doc_chunk × 4`` bytes (default 512 × 32,768:
64 MiB), with at most a few temporaries of that size (a copy for the selection in the first chunk,
boolean masks of a quarter of it); the running state is ``k`` (score, row) pairs per query, i.e.
``n_queries × k × 12`` bytes, and the pairwise counts hold a few numbers per (query, relevant
document) pair. Nothing grows with the corpus except the per-query results.

Ties: :class:`TopK` returns exactly ``np.argsort(-scores, kind="stable")[:, :k]`` of the block
scores (for equal scores the lower row comes first). Scores must not be NaN.

Rounding: a block is ``queries[chunk] @ docs[chunk].T`` in float32. BLAS rounds an entry differently
depending on the matrix shapes (OpenBLAS: a 1-row product or a sub-block differs in the last bit from
the same entries of one big product), so the results equal a dense ``queries @ docs.T`` computation
bit for bit when the scores are exact (e.g. small-integer vectors) or when a single block covers
everything, and otherwise up to near-ties within float32 rounding. Within this module every score
(a relevant document's included) comes from the same blocks, so ranks and counts are consistent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

QUERY_CHUNK = 512
DOC_CHUNK = 32768
#: above this many relevant documents a query's counts are taken from its sorted block row
SORT_ABOVE = 8
_NO_ROW = np.iinfo(np.int64).max


def _queries(queries) -> np.ndarray:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"queries must be a 2-D array, not shape {q.shape}")
    return q


def _check(k: int, query_chunk: int, doc_chunk: int) -> None:
    if k < 1:
        raise ValueError(f"k must be positive, not {k}")
    if query_chunk < 1 or doc_chunk < 1:
        raise ValueError(f"chunk sizes must be positive, not {query_chunk} / {doc_chunk}")


def _starts(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def iter_blocks(queries: np.ndarray, docs, *, query_chunk: int = QUERY_CHUNK, doc_chunk: int = DOC_CHUNK,
                row0: int = 0, show_progress: bool = False) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(query chunk number, first doc row, scores[query chunk, doc chunk])``, documents outermost.

    ``queries`` is float32 C-contiguous (see :func:`_queries`); ``row0`` is the row of ``docs[0]``."""
    from tqdm.auto import tqdm

    if docs.ndim != 2 or docs.shape[1] != queries.shape[1]:
        raise ValueError(f"documents of shape {docs.shape} do not match queries of dimension {queries.shape[1]}")
    qparts = _starts(len(queries), query_chunk)
    n = docs.shape[0]
    for a in tqdm(range(0, n, doc_chunk), desc="exact search", unit="chunk", disable=not show_progress,
                  mininterval=1.0):
        chunk = np.asarray(docs[a : a + doc_chunk], dtype=np.float32)  # a float32 memmap: a view
        for c, (q0, q1) in enumerate(qparts):
            yield c, row0 + a, queries[q0:q1] @ chunk.T


def _select_top(s: np.ndarray, k: int) -> np.ndarray:
    """Columns of the top ``k`` scores of every row, best first; equal scores keep their column order."""
    if s.shape[1] > k:
        neg = -s
        neg.partition(k - 1, axis=1)
        kth = -neg[:, k - 1]
        del neg
        keep = s >= kth[:, None]
        extra = np.count_nonzero(keep, axis=1) - k
        for i in np.flatnonzero(extra):  # ties at the k-th score: the first columns win
            eq = np.flatnonzero(s[i] == kth[i])
            keep[i, eq[len(eq) - extra[i]:]] = False
        cols = (np.flatnonzero(keep) % s.shape[1]).reshape(len(s), k)  # row-major: columns ascending
    else:
        cols = np.broadcast_to(np.arange(s.shape[1]), s.shape)
    order = np.argsort(-np.take_along_axis(s, cols, 1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, 1)


def _merge(s: np.ndarray, r: np.ndarray, cand_s: np.ndarray, cand_r, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of the held ``(s, r)`` and the candidates (columns after the held ones)."""
    both = np.concatenate([s, cand_s], axis=1) if s.shape[1] else cand_s
    cols = _select_top(both, k)
    held = s.shape[1]
    old = np.take_along_axis(r, np.minimum(cols, held - 1), 1) if held else 0
    new = cand_r(cols - held) if callable(cand_r) else np.take_along_axis(cand_r, np.maximum(cols - held, 0), 1)
    return np.take_along_axis(both, cols, 1), np.where(cols < held, old, new)


class TopK:
    """Running top-``k`` (score, row) of every query over score blocks fed in increasing row order.

    State per query chunk: its best so far, sorted by (score descending, row ascending). A block's
    columns are in row order and every row of a new block is above every row held, so a stable
    selection over ``[held | block]`` breaks ties by row, as a stable argsort of all scores does."""

    def __init__(self, n_queries: int, k: int, query_chunk: int = QUERY_CHUNK) -> None:
        _check(k, query_chunk, 1)
        self.k = k
        self.parts = _starts(n_queries, query_chunk)
        self._s = [np.empty((q1 - q0, 0), dtype=np.float32) for q0, q1 in self.parts]
        self._r = [np.empty((q1 - q0, 0), dtype=np.int64) for q0, q1 in self.parts]

    def add_block(self, c: int, block: np.ndarray, row0: int) -> None:
        """Scores of query chunk ``c`` against the documents ``row0, row0 + 1, …``."""
        s, r = self._s[c], self._r[c]
        if s.shape[1] >= self.k:  # full: only scores above the k-th held one can enter
            flat = np.flatnonzero(block > s[:, -1:])  # row-major: columns ascending within a row
            if flat.size == 0:
                return
            qi, cols = np.divmod(flat, block.shape[1])
            counts = np.bincount(qi, minlength=len(s))
            hit = np.flatnonzero(counts)  # only the queries with a candidate change
            width = int(counts.max())
            pos = np.arange(len(qi)) - np.repeat(np.cumsum(counts) - counts, counts)
            slot = np.cumsum(counts > 0) - 1  # a query's row among the hit ones
            cand_s = np.full((len(hit), width), -np.inf, dtype=np.float32)
            cand_r = np.full((len(hit), width), _NO_ROW, dtype=np.int64)
            cand_s[slot[qi], pos] = block[qi, cols]
            cand_r[slot[qi], pos] = row0 + cols
            s[hit], r[hit] = _merge(s[hit], r[hit], cand_s, cand_r, self.k)
            return
        self._s[c], self._r[c] = _merge(s, r, block, lambda cols: (row0 + cols).astype(np.int64), self.k)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``, each ``(n_queries, min(k, documents seen))``, best first."""
        if not self.parts:
            return np.empty((0, 0), dtype=np.float32), np.empty((0, 0), dtype=np.int64)
        return np.concatenate(self._s), np.concatenate(self._r)


class TopKSearch:
    """Exact top-``k`` of ``queries`` over documents added in row order, possibly in several parts."""

    def __init__(self, queries, k: int, *, query_chunk: int = QUERY_CHUNK, doc_chunk: int = DOC_CHUNK) -> None:
        _check(k, query_chunk, doc_chunk)
        self.queries = _queries(queries)
        self.query_chunk, self.doc_chunk = query_chunk, doc_chunk
        self.top = TopK(len(self.queries), k, query_chunk)
        self.rows_seen = 0

    def add(self, docs, *, show_progress: bool = False) -> None:
        """The next ``len(docs)`` documents (rows ``rows_seen …``)."""
        for c, row0, block in iter_blocks(self.queries, docs, query_chunk=self.query_chunk,
                                          doc_chunk=self.doc_chunk, row0=self.rows_seen,
                                          show_progress=show_progress):
            self.top.add_block(c, block, row0)
        self.rows_seen += int(docs.shape[0])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.top.result()


def topk_search(queries, docs, k: int, *, query_chunk: int = QUERY_CHUNK, doc_chunk: int = DOC_CHUNK,
                show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)`` of the ``min(k, len(docs))`` best documents of every query, best first.

    Equal to ``np.argsort(-(queries @ docs.T), kind="stable")[:, :k]`` (see the module's note on rounding)."""
    search = TopKSearch(queries, k, query_chunk=query_chunk, doc_chunk=doc_chunk)
    search.add(docs, show_progress=show_progress)
    return search.result()


def score_row(query, docs, *, doc_chunk: int = DOC_CHUNK) -> np.ndarray:
    """One query's float32 scores over every document (``len(docs)`` floats)."""
    q = _queries(np.asarray(query).reshape(1, -1))
    return np.concatenate([b[0] for _, _, b in iter_blocks(q, docs, query_chunk=1, doc_chunk=doc_chunk)]
                          or [np.empty(0, dtype=np.float32)])


def pairwise_counts(queries, docs, rel_rows: Sequence[Sequence[int]], topk: int = 200,
                    top_of: str | None = "negatives", *, query_chunk: int = QUERY_CHUNK,
                    doc_chunk: int = DOC_CHUNK, show_progress: bool = False) -> dict[str, np.ndarray | int]:
    """Per query: pairwise errors and the best relevant rank (a query without relevant rows: 0, 0, -1).

    ``total``: pairs (r, d), r relevant, d not, ``s_d > s_r`` over the whole corpus (Eq. 5);
    ``top``: the same over the ``k = min(topk, len(docs))`` highest-scored non-relevant documents
    (``top_of="negatives"``, Eq. 6) or the non-relevant ones among the top ``k`` retrieved
    (``"retrieved"``; ``None`` skips it); ``best_rank``: the number of documents (relevant ones
    included) scoring strictly above the best relevant one, as
    :func:`hardneg.evaluate.analysis.best_rank`; with ``"retrieved"`` also ``top_rows``, the top ``k``
    rows of every query (best first, ties by row).

    One pass over the corpus. A relevant document's score is known only once its chunk is scored,
    so every chunk is counted against a float64 estimate ``e`` of it: documents above
    ``e + w`` are counted, those in ``(e - w, e + w]`` kept, with ``w`` twice the worst-case float32
    rounding of an inner product (``2 (dim + 2) eps |q| |r|``); the block score then lies in that
    window and the kept values finish the count exactly.
    """
    if top_of not in ("negatives", "retrieved", None):
        raise ValueError(f"top_of must be 'negatives', 'retrieved' or None, not {top_of!r}")
    _check(max(1, topk), query_chunk, doc_chunk)
    qv = _queries(queries)
    nq, n_docs = len(qv), int(docs.shape[0])
    if len(rel_rows) != nq:
        raise ValueError(f"{len(rel_rows)} relevant-row lists for {nq} queries")
    rels = [np.asarray(r, dtype=np.int64).reshape(-1) for r in rel_rows]
    n_rel = np.array([len(r) for r in rels], dtype=np.int64)
    pq = np.repeat(np.arange(nq), n_rel)  # the (query, relevant row) pairs, query by query
    pr = np.concatenate([np.empty(0, dtype=np.int64), *rels])
    if pr.size and (pr.min() < 0 or pr.max() >= n_docs):
        raise ValueError(f"a relevant row is outside the corpus of {n_docs} documents")
    slot = np.arange(len(pq)) - np.repeat(np.cumsum(n_rel) - n_rel, n_rel)

    # float64 estimates and windows (rounded outwards to float32)
    est = np.empty(len(pq), dtype=np.float64)
    width = np.empty(len(pq), dtype=np.float64)
    eps = float(np.finfo(np.float32).eps)
    qnorm = np.linalg.norm(qv.astype(np.float64), axis=1)
    order_r = np.argsort(pr, kind="stable")
    for a in range(0, len(pq), 65536):
        idx = order_r[a : a + 65536]
        d64 = np.asarray(docs[pr[idx]], dtype=np.float64)
        est[idx] = np.einsum("ij,ij->i", qv[pq[idx]].astype(np.float64), d64)
        width[idx] = 2 * (qv.shape[1] + 2) * eps * qnorm[pq[idx]] * np.linalg.norm(d64, axis=1)
    width += np.finfo(np.float32).tiny
    lo = (est - width).astype(np.float32)
    hi = (est + width).astype(np.float32)
    lo = np.where(lo.astype(np.float64) > est - width, np.nextafter(lo, np.float32(-np.inf)), lo)
    hi = np.where(hi.astype(np.float64) < est + width, np.nextafter(hi, np.float32(np.inf)), hi)

    above = np.zeros(len(pq), dtype=np.int64)  # documents scoring above hi
    window: list[list[np.ndarray]] = [[] for _ in range(len(pq))]  # scores in (lo, hi]
    seen = np.full(len(pq), np.nan, dtype=np.float32)  # the block score of the relevant document

    qparts = _starts(nq, query_chunk)
    first_pair = np.concatenate([[0], np.cumsum(n_rel)])
    plan = []  # per query chunk: its pairs by slot (comparison path), its sorted-path queries, its pairs by row
    for q0, q1 in qparts:
        p0, p1 = first_pair[q0], first_pair[q1]
        pairs = np.arange(p0, p1)
        few = pairs[n_rel[pq[pairs]] <= SORT_ABOVE]
        by_slot = [few[slot[few] == j] for j in range(int(slot[few].max()) + 1 if few.size else 0)]
        many = np.flatnonzero(n_rel[q0:q1] > SORT_ABOVE)
        by_row = pairs[np.argsort(pr[pairs], kind="stable")]
        plan.append((by_slot, many, by_row, pr[by_row]))
    k = min(topk, n_docs)
    top = TopK(nq, k, query_chunk) if top_of is not None and k >= 1 else None

    for c, row0, block in iter_blocks(qv, docs, query_chunk=query_chunk, doc_chunk=doc_chunk,
                                      show_progress=show_progress):
        q0 = qparts[c][0]
        by_slot, many, by_row, rows_sorted = plan[c]
        row_max = block.max(axis=1) if by_slot else None
        for pairs in by_slot:  # few relevant documents: one comparison pass per relevant document
            lq = pq[pairs] - q0
            active = row_max[lq] > lo[pairs]  # rows with a document above the window's bottom
            if not active.any():
                continue
            pairs, lq = pairs[active], lq[active]
            sub = block if len(lq) == len(block) else block[lq]
            n_hi = np.count_nonzero(sub > hi[pairs, None], axis=1)
            n_lo = np.count_nonzero(sub > lo[pairs, None], axis=1)
            above[pairs] += n_hi
            for i in np.flatnonzero(n_lo > n_hi):
                p, row = pairs[i], sub[i]
                window[p].append(row[(row > lo[p]) & (row <= hi[p])])
        for lq in many:  # many relevant documents: sort the block row once
            row = np.sort(block[lq])
            pairs = np.arange(first_pair[q0 + lq], first_pair[q0 + lq + 1])
            i_hi = np.searchsorted(row, hi[pairs], side="right")
            i_lo = np.searchsorted(row, lo[pairs], side="right")
            above[pairs] += len(row) - i_hi
            for p, a, b in zip(pairs, i_lo, i_hi, strict=True):
                if b > a:
                    window[p].append(row[a:b])
        a, b = np.searchsorted(rows_sorted, [row0, row0 + block.shape[1]])
        here = by_row[a:b]  # pairs whose relevant document is in this chunk
        lq, col = pq[here] - q0, pr[here] - row0
        seen[here] = block[lq, col]
        if top is not None:
            if top_of == "negatives":
                block[lq, col] = -np.inf  # the block is ours: mask the relevant documents out
            top.add_block(c, block, row0)

    if np.isnan(seen).any():
        raise ValueError("a relevant document's score is NaN")
    if not ((seen > lo) & (seen <= hi)).all():
        raise RuntimeError("exact pairwise counts: a score fell outside its rounding window (NaN or inf inputs?)")
    count = above + np.array([sum(int((v > seen[p]).sum()) for v in window[p]) for p in range(len(pq))],
                             dtype=np.int64)
    total = np.zeros(nq, dtype=np.int64)
    best = np.full(nq, -1, dtype=np.int64)
    top_errors = np.zeros(nq, dtype=np.int64)
    top_s, top_r = top.result() if top is not None else (None, None)
    for i in range(nq):
        p = np.arange(first_pair[i], first_pair[i + 1])
        if not len(p):
            continue
        s = seen[p]
        rel_above = (s[None, :] > s[:, None]).sum(axis=1)  # other relevant documents above each
        total[i] = int((count[p] - rel_above).sum())
        best[i] = int(count[p].min())
        if top_s is not None:
            values = top_s[i] if top_of == "negatives" else top_s[i][~np.isin(top_r[i], rels[i])]
            values = np.sort(values)
            top_errors[i] = int((len(values) - np.searchsorted(values, s, side="right")).sum())
    out = {"k": k, "total": total, "top": top_errors, "best_rank": best}
    if top_of == "retrieved":
        out["top_rows"] = top_r if top_r is not None else np.empty((nq, 0), dtype=np.int64)
    return out


def best_ranks(queries, docs, rel_rows: Sequence[Sequence[int]], *, query_chunk: int = QUERY_CHUNK,
               doc_chunk: int = DOC_CHUNK, show_progress: bool = False) -> np.ndarray:
    """Per query, the 0-based rank of its best relevant row (documents scoring strictly above it)."""
    return pairwise_counts(queries, docs, rel_rows, top_of=None, query_chunk=query_chunk, doc_chunk=doc_chunk,
                           show_progress=show_progress)["best_rank"]
