"""Pairwise errors, error concentration and the unseen-document stratum on hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from hardneg.evaluate.analysis import (
    best_rank,
    error_concentration,
    most_improved_query,
    pairwise_errors,
    unseen_queries,
)


def test_pairwise_errors_hand_computed():
    docs = ["a", "b", "c", "d", "e"]
    #                  a    b    c    d    e
    scores = np.array([[0.9, 0.5, 0.7, 0.1, 0.6],   # q1: relevant b (0.5) and d (0.1)
                       [0.2, 0.3, 0.3, 0.9, 0.1]])  # q2: relevant c (0.3); b ties with it (not an error)
    qrels = {"q1": {"b": 1, "d": 2, "a": 0}, "q2": {"c": 1}, "q3": {"a": 1}}
    res = pairwise_errors(scores, ["q1", "q2"], docs, qrels, topk=2)
    # q1 non-relevant: a .9, c .7, e .6 (a is judged 0: non-relevant). b is beaten by a, c, e (3); d by all 3 → 6
    # q2 non-relevant: a .2, b .3, d .9, e .1: only d beats c → 1
    assert res["total"] == {"q1": 6, "q2": 1}
    # top-2 of q1 = a, c (both non-relevant): b loses to both (2), d to both (2) → 4; top-2 of q2 = d, then b/c tie
    assert res["top"]["q1"] == 4 and res["top"]["q2"] == 1
    assert res["mean_total"] == pytest.approx(3.5) and res["queries"] == 2  # q3 has no scores: not counted


def test_top_k_errors_count_the_top_k_negatives_as_eq_6():
    """A query with relevant documents in its top K still has K negatives to lose against (Eq. 6)."""
    docs = ["r1", "r2", "n1", "n2", "n3"]
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.95]])  # n3 first, then both relevant, then n1, n2
    qrels = {"q": {"r1": 1, "r2": 1}}
    eq6 = pairwise_errors(scores, ["q"], docs, qrels, topk=2)
    # the top-2 negatives are n3 (.95) and n1 (.7): r1 and r2 each lose to n3 only → 2
    assert eq6["top"]["q"] == 2 and eq6["top_of"] == "negatives"
    # the top-2 retrieved are n3 and r1: one negative, n3 → r1 and r2 lose to it → 2 as well here …
    assert pairwise_errors(scores, ["q"], docs, qrels, topk=2, top_of="retrieved")["top"]["q"] == 2
    # … but at K=3, Eq. 6 sees n3, n1, n2 (r2 .8 and r1 .9 still lose to n3 only: 2), while the retrieved
    # top 3 (n3, r1, r2) hold one negative; with a low relevant document the two differ:
    scores = np.array([[0.9, 0.1, 0.7, 0.6, 0.95]])  # r2 is last: it loses to every negative
    assert pairwise_errors(scores, ["q"], docs, qrels, topk=3)["top"]["q"] == 1 + 3
    assert pairwise_errors(scores, ["q"], docs, qrels, topk=3, top_of="retrieved")["top"]["q"] == 1 + 2
    with pytest.raises(ValueError, match="top_of"):
        pairwise_errors(scores, ["q"], docs, qrels, top_of="top")


def test_error_concentration_curve():
    x, y = error_concentration({"q1": 6, "q2": 3, "q3": 1, "q4": 0})
    assert x.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert y.tolist() == pytest.approx([0.0, 0.6, 0.9, 1.0, 1.0])


def test_unseen_queries_need_every_relevant_document_unseen():
    train = {"t1": {"d1": 1, "d9": 0}, "t2": {"d2": 2}}
    test = {"a": {"d1": 1}, "b": {"d3": 1, "d2": 1}, "c": {"d4": 1, "d9": 1}, "d": {"d1": 0, "d5": 1}, "e": {"d6": 0}}
    # a: d1 seen; b: d2 seen; c: d9 only judged 0 in train → unseen;
    # d: d1 judged 0 here → only d5 counts; e: no relevant
    assert unseen_queries(test, train) == ["c", "d"]


def test_tsne_query_is_the_largest_reciprocal_rank_gain():
    # 6 documents; the relevant one is row 0 for q1, row 1 for q2
    before = np.array([[0.0, 1, 2, 3, 4, 5],        # q1: relevant at rank 5 (0-based)
                       [9.0, 0, 8, 7, 6, 5]])       # q2: relevant at rank 5
    after = np.array([[3.5, 1, 2, 3, 4, 5],         # q1: rank 5 -> 2 (3 positions, RR 1/6 -> 1/3)
                      [9.0, 8.5, 8, 7, 6, 5]])      # q2: rank 5 -> 1 (4 positions, RR 1/6 -> 1/2)
    rels = {"q1": [0], "q2": [1]}
    assert best_rank(before[0], [0]) == 5 and best_rank(after[0], [0]) == 2
    assert most_improved_query(["q1", "q2"], before, after, rels) == "q2"
    # a huge rise deep in the ranking loses to a small rise into the top
    deep_b, deep_a = np.arange(5000.0)[None, :], np.arange(5000.0)[None, :].copy()
    deep_a[0, 0] = 3000.5                           # rank 4999 -> 1999
    top_b = np.arange(5000.0)[None, :].copy()
    top_b[0, 0] = 4996.5                            # rank 3
    top_a = top_b.copy()
    top_a[0, 0] = 5000.0                            # rank 0
    assert most_improved_query(["deep", "top"], np.vstack([deep_b, top_b]), np.vstack([deep_a, top_a]),
                               {"deep": [0], "top": [0]}) == "top"
    with pytest.raises(ValueError):
        most_improved_query(["q"], before[:1], after[:1], {"q": []})
