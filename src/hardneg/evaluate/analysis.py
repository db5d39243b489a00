"""The paper's analyses over a model's exact scores: pairwise errors, seen/unseen strata, t-SNE points.

Pairwise errors (Zhan et al. 2021, Table 1 and Fig. 3). For a query with
relevant set R (grade >= 1) and the model's score ``s`` over the whole corpus,
a *pairwise error* is a pair (r, d) with r in R, d not in R and ``s_d > s_r``
(ties are not errors). The *total* count (Eq. 5) sums over every non-relevant
document of the corpus; the *top-K* count (Eq. 6) over the K highest-scored
non-relevant documents, the query's top-K *negatives* (``top_of="negatives"``,
the default). ``top_of="retrieved"`` counts instead the non-relevant documents
among the top-K retrieved, which has fewer than K negatives for a query with
relevant documents in its top K and so undercounts multi-relevant queries (the
count reported before Eq. 6 was followed). Random-negative training minimises the
total; what ranking metrics see is mostly the top-K.

At corpus scale nothing here builds a queries × corpus score matrix: :func:`model_pairwise_errors`,
:func:`pairwise_errors_chunked` and :func:`tsne_points` go through the chunked counts of
:mod:`hardneg.evaluate.pairwise` over the cached (memory-mapped) corpus embeddings. :func:`score_matrix`
and the dense :func:`pairwise_errors` remain for small inputs and as the reference in tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.artifacts import corpus_embeddings
from hardneg.data.records import Qrels
from hardneg.evaluate.pairwise import TOP_OF, pairwise_counts
from hardneg.retrieval.dense import encode_queries


def score_matrix(model, dataset, cache_dir: Path | None = None, *, show_progress: bool = False,
                 queries: Sequence[str] | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """``(query ids, doc ids, scores[q, d])``: exact inner products over the whole corpus (cached embeddings).

    A dense matrix (``queries × documents × 4`` bytes): for small corpora only; see :func:`model_pairwise_errors`."""
    emb = corpus_embeddings(model, dataset, cache_dir, show_progress=show_progress)
    all_queries = dataset.queries()
    wanted = {q: all_queries[q] for q in (queries if queries is not None else all_queries)}
    qids, qv = encode_queries(model, wanted)
    docs = np.asarray(emb.vectors, dtype=np.float32)
    return qids, list(emb.ids), qv.astype(np.float32) @ docs.T


def pairwise_errors(scores: np.ndarray, qids: Sequence[str], doc_ids: Sequence[str], qrels: Qrels,
                    topk: int = 200, top_of: str = "negatives") -> dict[str, Any]:
    """Per-query total and top-``topk`` pairwise errors, and their means over the judged queries.

    ``top_of``: ``negatives`` (Eq. 6: the ``topk`` highest-scored non-relevant documents) or
    ``retrieved`` (the non-relevant documents among the ``topk`` retrieved)."""
    if top_of not in TOP_OF:
        raise ValueError(f"top_of must be one of {TOP_OF}, not {top_of!r}")
    row = {d: i for i, d in enumerate(doc_ids)}
    total: dict[str, int] = {}
    top: dict[str, int] = {}
    k = min(topk, len(doc_ids))
    for i, qid in enumerate(qids):
        rel = [row[d] for d, g in qrels.get(qid, {}).items() if g >= 1 and d in row]
        if not rel:
            continue
        s = scores[i]
        is_rel = np.zeros(len(doc_ids), dtype=bool)
        is_rel[rel] = True
        neg = np.sort(s[~is_rel])
        rel_scores = s[rel]
        # non-relevant documents scoring strictly above each relevant one
        total[qid] = int(sum(len(neg) - np.searchsorted(neg, r, side="right") for r in rel_scores))
        if top_of == "negatives":  # neg is sorted ascending: its last k are the top-k negatives
            top_neg = neg[-k:] if k < len(neg) else neg
        else:
            top_rows = np.argsort(-s, kind="stable")[:k]  # equal scores: the lower row is retrieved first
            top_neg = np.sort(s[top_rows[~is_rel[top_rows]]])
        top[qid] = int(sum(len(top_neg) - np.searchsorted(top_neg, r, side="right") for r in rel_scores))
    n = max(1, len(total))
    return {"topk": k, "top_of": top_of, "queries": len(total), "mean_total": sum(total.values()) / n,
            "mean_topk": sum(top.values()) / n, "total": total, "top": top}


def _rel_rows(qids: Sequence[str], doc_ids: Sequence[str], qrels: Qrels) -> list[list[int]]:
    row = {d: i for i, d in enumerate(doc_ids)}
    return [[row[d] for d, g in qrels.get(q, {}).items() if g >= 1 and d in row] for q in qids]


def pairwise_errors_chunked(query_vectors: np.ndarray, doc_vectors, qids: Sequence[str], doc_ids: Sequence[str],
                            qrels: Qrels, topk: int = 200, top_of: str = "negatives", *,
                            show_progress: bool = False, **chunks: int) -> dict[str, Any]:
    """:func:`pairwise_errors` from the vectors (``doc_vectors`` may be a memmap), in bounded memory.

    The same result as ``pairwise_errors(query_vectors @ doc_vectors.T, …)`` (up to float32 rounding
    of near-ties, see :mod:`hardneg.retrieval.exact`); ``chunks``: ``query_chunk`` / ``doc_chunk``."""
    if top_of not in TOP_OF:
        raise ValueError(f"top_of must be one of {TOP_OF}, not {top_of!r}")
    rels = _rel_rows(qids, doc_ids, qrels)
    k = min(topk, len(doc_ids))
    total: dict[str, int] = {}
    top: dict[str, int] = {}
    if any(rels):  # every query, as in the dense matrix (the same blocks), counted where judged
        counts = pairwise_counts(query_vectors, doc_vectors, rels, topk, top_of, show_progress=show_progress,
                                 **chunks)
        for i, q in enumerate(qids):
            if rels[i]:
                total[q], top[q] = int(counts["total"][i]), int(counts["top"][i])
    n = max(1, len(total))
    return {"topk": k, "top_of": top_of, "queries": len(total), "mean_total": sum(total.values()) / n,
            "mean_topk": sum(top.values()) / n, "total": total, "top": top}


def model_pairwise_errors(model, dataset, cache_dir: Path | None = None, topk: int = 200,
                          top_of: str = "negatives", *, qrels: Qrels | None = None,
                          show_progress: bool = False) -> dict[str, Any]:
    """:func:`pairwise_errors` of ``model`` on ``dataset`` (all its queries, the whole corpus), chunked.

    ``qrels``: the dataset's (read again when not given)."""
    emb = corpus_embeddings(model, dataset, cache_dir, show_progress=show_progress)
    qids, qv = encode_queries(model, dataset.queries())
    qrels = dataset.qrels() if qrels is None else qrels
    return pairwise_errors_chunked(qv, emb.vectors, qids, emb.ids, qrels, topk, top_of,
                                   show_progress=show_progress)


def error_concentration(per_query: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Fig. 3: queries sorted by their errors (most first) → (cumulative share of queries, share of errors)."""
    values = np.sort(np.asarray(list(per_query.values()), dtype=np.float64))[::-1]
    if values.size == 0 or values.sum() == 0:
        return np.zeros(1), np.zeros(1)
    x = np.arange(1, values.size + 1) / values.size
    y = np.cumsum(values) / values.sum()
    return np.concatenate([[0.0], x]), np.concatenate([[0.0], y])


def unseen_queries(test_qrels: Qrels, train_qrels: Qrels) -> list[str]:
    """Test queries none of whose relevant documents is relevant to any training query."""
    seen = {d for docs in train_qrels.values() for d, g in docs.items() if g >= 1}
    return sorted(q for q, docs in test_qrels.items()
                  if any(g >= 1 for g in docs.values()) and not any(g >= 1 and d in seen for d, g in docs.items()))


def best_rank(scores: np.ndarray, rels: list[int]) -> int:
    """0-based rank of the best-scored of the rows ``rels`` (ties counted in its favour)."""
    return int(min((scores > scores[r]).sum() for r in rels))


def most_improved_query(qids: list[str], s_before: np.ndarray, s_after: np.ndarray,
                        rel_rows: dict[str, list[int]]) -> str:
    """The query whose best relevant document gains most in reciprocal rank from ``before`` to ``after``.

    Reciprocal rank, not raw positions: a relevant document rising from rank 40 to 1 is the change a
    reader should see, not one moving from 3,000 to 1,700. Ties go to the larger rise in positions.
    """
    ranks = {}
    for i, q in enumerate(qids):
        rels = rel_rows.get(q) or []
        if rels:
            ranks[q] = (best_rank(s_before[i], rels), best_rank(s_after[i], rels))
    return most_improved_of_ranks(ranks)


def most_improved_of_ranks(ranks: Mapping[str, tuple[int, int]]) -> str:
    """:func:`most_improved_query` from each query's ``(best rank before, best rank after)``, 0-based."""
    best = None
    for q, (rb, ra) in ranks.items():
        key = (1.0 / (ra + 1) - 1.0 / (rb + 1), rb - ra, q)
        if best is None or key > best:
            best = key
    if best is None:
        raise ValueError("no query with a relevant document among the scored documents")
    return best[2]


def tsne_points(before, after, dataset, cache_dir: Path | None = None, *, top: int = 30,
                qid: str | None = None, seed: int = 42) -> dict[str, Any]:
    """Fig. 6: one query under two models with its relevant and top-retrieved documents, in 2-D (t-SNE).

    The query is ``qid`` or, by default, :func:`most_improved_query`. Every point (the documents under
    both models and the two query vectors) goes through one t-SNE so the pictures are
    comparable; for ADORE the document vectors are the same under both models. ``best_ranks``: every judged
    query's best relevant rank (1 = top) over the whole corpus under ``[before, after]``.
    """
    from sklearn.manifold import TSNE  # heavy (seconds): only for this figure

    qrels = dataset.qrels()
    queries = dataset.queries()
    embs = [corpus_embeddings(m, dataset, cache_dir, show_progress=False) for m in (before, after)]
    doc_ids = embs[0].ids
    assert len(embs[1]) == len(doc_ids) and embs[1].ids == doc_ids
    qids, qv_b = encode_queries(before, queries)
    qv_a = encode_queries(after, queries)[1]
    rel_rows = _rel_rows(qids, doc_ids, qrels)
    # one chunked pass per model over the memory-mapped embeddings (no queries × corpus matrix): every
    # query's best relevant rank and top rows, from the same blocks of scores
    b, a = (pairwise_counts(qv, e.vectors, rel_rows, top, "retrieved") for qv, e in ((qv_b, embs[0]), (qv_a, embs[1])))
    if qid is None:
        qid = most_improved_of_ranks({q: (int(b["best_rank"][i]), int(a["best_rank"][i]))
                                      for i, q in enumerate(qids) if rel_rows[i]})
    i = qids.index(qid)
    rels = rel_rows[i]
    if not rels:
        raise ValueError(f"query {qid!r} has no relevant document in the corpus")
    rank_b, rank_a = int(b["best_rank"][i]), int(a["best_rank"][i])
    top_b = [int(r) for r in b["top_rows"][i]]
    top_a = [int(r) for r in a["top_rows"][i]]
    rows = list(dict.fromkeys(rels + top_b + top_a))

    vecs = [np.asarray(emb.vectors[rows], dtype=np.float32) for emb in embs]
    same_docs = bool(np.array_equal(vecs[0], vecs[1]))
    q_vecs = [encode_queries(m, {qid: dataset.queries()[qid]})[1][0] for m in (before, after)]
    points = np.vstack(([vecs[0]] if same_docs else vecs) + [np.stack(q_vecs)])
    perplexity = float(min(30, max(2, (len(points) - 1) // 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
    n = len(rows)
    docs_b = xy[:n]
    docs_a = xy[:n] if same_docs else xy[n:2 * n]
    labels = ["relevant" if r in rels else ("top" if r in top_b or r in top_a else "other") for r in rows]
    return {
        "query_id": qid, "query": dataset.queries()[qid].text, "same_docs": same_docs,
        "doc_ids": [doc_ids[r] for r in rows], "labels": labels,
        "in_top_before": [r in top_b for r in rows], "in_top_after": [r in top_a for r in rows],
        "docs_before": docs_b.tolist(), "docs_after": docs_a.tolist(),
        "query_before": xy[-2].tolist(), "query_after": xy[-1].tolist(),
        "rank_before": rank_b + 1, "rank_after": rank_a + 1,
        # every judged query's best relevant rank over the whole corpus, before and after (Fig. 6's scatter;
        # kept with the points, so a report from records alone, without the test runs, still draws it)
        "best_ranks": {q: [int(b["best_rank"][j]) + 1, int(a["best_rank"][j]) + 1]
                       for j, q in enumerate(qids) if rel_rows[j]},
    }
