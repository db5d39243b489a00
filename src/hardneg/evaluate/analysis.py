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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.data.records import Qrels


def score_matrix(model, dataset, cache_dir: Path | None = None, *, show_progress: bool = False,
                 queries: Sequence[str] | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """``(query ids, doc ids, scores[q, d])``: exact inner products over the whole corpus (cached embeddings)."""
    from hardneg.artifacts import corpus_embeddings
    from hardneg.retrieval.dense import encode_queries

    emb = corpus_embeddings(model, dataset, cache_dir, show_progress=show_progress)
    all_queries = dataset.queries()
    wanted = {q: all_queries[q] for q in (queries if queries is not None else all_queries)}
    qids, qv = encode_queries(model, wanted)
    docs = np.asarray(emb.vectors, dtype=np.float32)
    return qids, list(emb.ids), qv.astype(np.float32) @ docs.T


TOP_OF = ("negatives", "retrieved")


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
            top_rows = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
            top_neg = np.sort(s[top_rows[~is_rel[top_rows]]])
        top[qid] = int(sum(len(top_neg) - np.searchsorted(top_neg, r, side="right") for r in rel_scores))
    n = max(1, len(total))
    return {"topk": k, "top_of": top_of, "queries": len(total), "mean_total": sum(total.values()) / n,
            "mean_topk": sum(top.values()) / n, "total": total, "top": top}


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
    best = None
    for i, q in enumerate(qids):
        rels = rel_rows.get(q) or []
        if not rels:
            continue
        rb, ra = best_rank(s_before[i], rels), best_rank(s_after[i], rels)
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
    comparable; for ADORE the document vectors are the same under both models.
    """
    from sklearn.manifold import TSNE

    qrels = dataset.qrels()
    qids_b, doc_ids, s_before = score_matrix(before, dataset, cache_dir)
    qids_a, doc_ids_a, s_after = score_matrix(after, dataset, cache_dir)
    assert qids_a == qids_b and doc_ids_a == doc_ids
    row = {d: i for i, d in enumerate(doc_ids)}

    if qid is None:
        rel_rows = {q: [row[d] for d, g in qrels.get(q, {}).items() if g >= 1 and d in row] for q in qids_b}
        qid = most_improved_query(qids_b, s_before, s_after, rel_rows)
    i = qids_b.index(qid)
    rels = [row[d] for d, g in qrels.get(qid, {}).items() if g >= 1 and d in row]
    top_b = list(np.argsort(-s_before[i], kind="stable")[:top])
    top_a = list(np.argsort(-s_after[i], kind="stable")[:top])
    rows = list(dict.fromkeys(rels + top_b + top_a))

    from hardneg.artifacts import corpus_embeddings
    from hardneg.retrieval.dense import encode_queries

    vecs = []
    for model in (before, after):
        emb = corpus_embeddings(model, dataset, cache_dir, show_progress=False)
        vecs.append(np.asarray(emb.vectors[rows], dtype=np.float32))
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
        "rank_before": best_rank(s_before[i], rels) + 1, "rank_after": best_rank(s_after[i], rels) + 1,
    }
