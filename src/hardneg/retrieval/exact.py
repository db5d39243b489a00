"""Exact inner-product search over a corpus too large for a queries × corpus score matrix.

The documents are a 2-D array or ``np.memmap`` (e.g. the artifact cache's embeddings, see
:class:`hardneg.index.encode.Embeddings`) read ``doc_chunk`` rows at a time and converted to float32
chunk by chunk (a float32 memmap is read in place, never copied whole); the queries are processed
``query_chunk`` at a time. The corpus is read once, in row order (documents are the outer loop).

Memory bound: one block of scores is ``query_chunk × doc_chunk × 4`` bytes (default 512 × 32,768:
64 MiB), with at most a few temporaries of that size (a copy for the selection in the first chunk,
boolean masks of a quarter of it); the running state is ``k`` (score, row) pairs per query, i.e.
``n_queries × k × 12`` bytes. Nothing grows with the corpus except the per-query results.
The same blocks feed the pairwise-error counts of :mod:`hardneg.evaluate.pairwise`.

Ties: :class:`TopK` returns exactly ``np.argsort(-scores, kind="stable")[:, :k]`` of the block
scores (for equal scores the lower row comes first). Scores must not be NaN.

Rounding: a block is ``queries[chunk] @ docs[chunk].T`` in float32. BLAS rounds an entry differently
depending on the matrix shapes (OpenBLAS: a 1-row product or a sub-block differs in the last bit from
the same entries of one big product), so the results equal a dense ``queries @ docs.T`` computation
bit for bit when the scores are exact (e.g. small-integer vectors) or when a single block covers
everything, and otherwise up to near-ties within float32 rounding. Whatever one pass computes from
the blocks (a search here, the counts of :mod:`hardneg.evaluate.pairwise`) sees the same scores, so
ranks and counts are consistent.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from tqdm.auto import tqdm

QUERY_CHUNK = 512
DOC_CHUNK = 32768
_NO_ROW = np.iinfo(np.int64).max


def query_matrix(queries) -> np.ndarray:
    """``queries`` as a float32 C-contiguous 2-D array (what :func:`iter_blocks` takes)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"queries must be a 2-D array, not shape {q.shape}")
    return q


def check_sizes(k: int, query_chunk: int, doc_chunk: int) -> None:
    """A ValueError for a non-positive ``k`` or chunk size."""
    if k < 1:
        raise ValueError(f"k must be positive, not {k}")
    if query_chunk < 1 or doc_chunk < 1:
        raise ValueError(f"chunk sizes must be positive, not {query_chunk} / {doc_chunk}")


def chunk_spans(n: int, chunk: int) -> list[tuple[int, int]]:
    """``[(start, end), …]`` of ``n`` rows in chunks of ``chunk``."""
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def iter_blocks(queries: np.ndarray, docs, *, query_chunk: int = QUERY_CHUNK, doc_chunk: int = DOC_CHUNK,
                row0: int = 0, show_progress: bool = False) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(query chunk number, first doc row, scores[query chunk, doc chunk])``, documents outermost.

    ``queries`` is float32 C-contiguous (see :func:`query_matrix`); ``row0`` is the row of ``docs[0]``."""
    if docs.ndim != 2 or docs.shape[1] != queries.shape[1]:
        raise ValueError(f"documents of shape {docs.shape} do not match queries of dimension {queries.shape[1]}")
    qparts = chunk_spans(len(queries), query_chunk)
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
        check_sizes(k, query_chunk, 1)
        self.k = k
        self.parts = chunk_spans(n_queries, query_chunk)
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
        check_sizes(k, query_chunk, doc_chunk)
        self.queries = query_matrix(queries)
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
        """``(scores, rows)`` of every query's best documents so far (see :meth:`TopK.result`)."""
        return self.top.result()
