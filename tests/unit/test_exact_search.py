"""Chunked exact search (what the trainer's dev evaluation runs) and pairwise counts against a plain numpy
brute force / the dense functions, and memory bounds."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from conftest import write_tiny_train
from hardneg.evaluate.analysis import best_rank, pairwise_errors, pairwise_errors_chunked
from hardneg.evaluate.pairwise import pairwise_counts
from hardneg.retrieval.exact import TopKSearch


def integer_data(seed: int, n_queries: int, n_docs: int, dim: int, duplicates: int = 0):
    """Small-integer vectors: every inner product is exact in float32 (any summation order), and
    there are many equal scores; ``duplicates`` documents are copies of others (exact ties)."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-3, 4, size=(n_queries, dim)).astype(np.float32)
    d = rng.integers(-3, 4, size=(n_docs, dim)).astype(np.float32)
    if duplicates:
        d[rng.choice(n_docs, duplicates, replace=False)] = d[rng.choice(n_docs, duplicates)]
    return q, d


def dense_top(q, d, k):
    """The brute force: every score, a stable argsort (equal scores: the lower row first)."""
    scores = q @ d.T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, 1), rows


def chunked_top(q, d, k, *, parts=1, **chunks):
    """:class:`TopKSearch` fed the documents in ``parts`` consecutive pieces (as the trainer adds them)."""
    search = TopKSearch(q, k, **chunks)
    for piece in np.array_split(np.arange(len(d)), parts):
        search.add(d[piece[0] : piece[-1] + 1] if len(piece) else d[:0])
    assert search.rows_seen == len(d)
    return search.result()


def blocked_scores(q, d, query_chunk, doc_chunk):
    """The score matrix as the chunked code computes it (block by block)."""
    out = np.empty((len(q), len(d)), dtype=np.float32)
    for a in range(0, len(d), doc_chunk):
        for b in range(0, len(q), query_chunk):
            out[b : b + query_chunk, a : a + doc_chunk] = q[b : b + query_chunk] @ d[a : a + doc_chunk].T
    return out


@pytest.mark.parametrize(("k", "query_chunk", "doc_chunk", "parts"),
                         [(10, 512, 32768, 1), (10, 7, 13, 1), (25, 3, 4, 1), (1, 5, 1, 1), (40, 11, 29, 1),
                          (300, 64, 64, 1), (10, 7, 13, 3), (40, 11, 29, 5)])
def test_topk_equals_stable_argsort_with_ties(k, query_chunk, doc_chunk, parts):
    q, d = integer_data(0, 23, 257, 6, duplicates=60)
    want_s, want_r = dense_top(q, d, k)
    assert (np.diff(np.sort(q @ d.T, axis=1), axis=1) == 0).sum() > 1000  # plenty of ties to break
    got_s, got_r = chunked_top(q, d, k, parts=parts, query_chunk=query_chunk, doc_chunk=doc_chunk)
    assert got_r.shape == (23, min(k, 257)) and got_r.dtype == np.int64
    np.testing.assert_array_equal(got_r, want_r)
    np.testing.assert_array_equal(got_s, want_s)


def test_topk_on_float_data_and_memmap(tmp_path):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((40, 16)).astype(np.float32)
    d = np.lib.format.open_memmap(tmp_path / "d.npy", mode="w+", dtype=np.float32, shape=(1000, 16))
    d[:] = rng.standard_normal((1000, 16))
    d[500:520] = d[100:120]  # exact duplicates
    d = np.load(tmp_path / "d.npy", mmap_mode="r")
    s, r = chunked_top(q, d, 30, query_chunk=8, doc_chunk=97)
    want_s, want_r = dense_top(q, np.asarray(d), 30)
    # against the block-computed scores: identical; against one dense product: up to float32 rounding
    blocked = blocked_scores(q, np.asarray(d), 8, 97)
    np.testing.assert_array_equal(r, np.argsort(-blocked, axis=1, kind="stable")[:, :30])
    np.testing.assert_array_equal(s, np.take_along_axis(blocked, r, 1))
    np.testing.assert_allclose(s, want_s, rtol=1e-5, atol=1e-5)
    assert (r == want_r).mean() > 0.99


def rel_lists(rng, n_queries, n_docs, most=5):
    return [sorted(rng.choice(n_docs, rng.integers(1, most + 1), replace=False).tolist()) for _ in range(n_queries)]


@pytest.mark.parametrize("top_of", ["negatives", "retrieved"])
@pytest.mark.parametrize(("topk", "query_chunk", "doc_chunk"), [(20, 512, 32768), (20, 4, 37), (500, 6, 50)])
def test_chunked_pairwise_errors_equal_dense(top_of, topk, query_chunk, doc_chunk):
    rng = np.random.default_rng(2)
    q, d = integer_data(3, 30, 400, 5, duplicates=40)
    rels = rel_lists(rng, 30, 400, most=12)  # some queries above SORT_ABOVE relevant documents
    rels[0] = list(range(395))  # nearly the whole corpus relevant: fewer negatives than topk
    doc_ids = [f"d{i}" for i in range(400)]
    qids = [f"q{i}" for i in range(31)]  # q30 has no vector row... and no qrels: skipped by both
    qrels = {qids[i]: {doc_ids[r]: 1 + (r % 2) for r in rel} for i, rel in enumerate(rels)}
    qrels["q1"][doc_ids[7]] = 0  # judged non-relevant
    qv = np.vstack([q, q[:1]])
    dense = pairwise_errors(qv @ d.T, qids, doc_ids, qrels, topk, top_of)
    chunked = pairwise_errors_chunked(qv, d, qids, doc_ids, qrels, topk, top_of,
                                      query_chunk=query_chunk, doc_chunk=doc_chunk)
    assert chunked == dense
    assert dense["queries"] == 30 and dense["mean_total"] > 0 and dense["mean_topk"] > 0


def test_pairwise_counts_float_data_near_ties():
    """Float data with documents within an ulp of relevant ones: counts equal the dense functions on the
    block-computed scores (the rounding window logic), and best ranks equal ``best_rank`` on them."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((25, 24)).astype(np.float32)
    d = rng.standard_normal((600, 24)).astype(np.float32)
    rels = rel_lists(rng, 25, 600, most=11)
    for i, rel in enumerate(rels):  # near-duplicates of relevant documents: scores within rounding
        for j, r in enumerate(rel[:3]):
            d[590 - 3 * i - j] = d[r] * np.float32(1 + 1e-7 * (j - 1))
    blocked = blocked_scores(q, d, 4, 64)
    for top_of in ("negatives", "retrieved"):
        counts = pairwise_counts(q, d, rels, 50, top_of, query_chunk=4, doc_chunk=64)
        ids = [str(i) for i in range(600)]
        qids = [f"q{i}" for i in range(25)]
        qrels = {qids[i]: {ids[r]: 1 for r in rel} for i, rel in enumerate(rels)}
        dense = pairwise_errors(blocked, qids, ids, qrels, 50, top_of)
        assert counts["total"].tolist() == [dense["total"][x] for x in qids]
        assert counts["top"].tolist() == [dense["top"][x] for x in qids]
        assert counts["best_rank"].tolist() == [best_rank(blocked[i], rel) for i, rel in enumerate(rels)]


def test_pairwise_counts_reject_bad_input():
    q, d = integer_data(0, 2, 10, 3)
    unjudged = pairwise_counts(q, d, [[1], []], 3, "retrieved")
    assert (unjudged["total"][1], unjudged["top"][1], unjudged["best_rank"][1]) == (0, 0, -1)
    np.testing.assert_array_equal(unjudged["top_rows"], dense_top(q, d, 3)[1])
    with pytest.raises(ValueError, match="outside"):
        pairwise_counts(q, d, [[1], [10]])
    with pytest.raises(ValueError, match="top_of"):
        pairwise_counts(q, d, [[1], [2]], top_of="top")


def test_memory_stays_far_below_the_score_matrix(tmp_path):
    rng = np.random.default_rng(5)
    n_docs, n_queries, dim = 150_000, 800, 32
    docs = np.lib.format.open_memmap(tmp_path / "docs.npy", mode="w+", dtype=np.float32, shape=(n_docs, dim))
    for a in range(0, n_docs, 50_000):
        docs[a : a + 50_000] = rng.standard_normal((50_000, dim), dtype=np.float32)
    docs.flush()
    del docs
    docs = np.load(tmp_path / "docs.npy", mmap_mode="r")
    q = rng.standard_normal((n_queries, dim), dtype=np.float32)
    rels = [[int(r)] for r in rng.integers(0, n_docs, n_queries)]
    matrix = n_queries * n_docs * 4  # 480 MB
    tracemalloc.start()
    try:
        s, r = chunked_top(q, docs, 100, query_chunk=256, doc_chunk=8192)
        _, peak_search = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        counts = pairwise_counts(q, docs, rels, 200, query_chunk=256, doc_chunk=8192)
        _, peak_pairs = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_search < matrix / 10 and peak_pairs < matrix / 10, (peak_search, peak_pairs)
    print(f"peak traced memory: search {peak_search / 2**20:.0f} MiB, pairwise {peak_pairs / 2**20:.0f} MiB, "
          f"score matrix {matrix / 2**20:.0f} MiB")
    # spot-check a few queries against their full score rows
    for i in (0, 555, 799):
        row = np.asarray(docs) @ q[i]
        assert np.allclose(s[i], np.sort(row)[::-1][:100], rtol=1e-5, atol=1e-5)
        assert abs(int(counts["best_rank"][i]) - int((row > row[rels[i][0]]).sum())) <= 1


# ----------------------------------------------------------------------------- the trainer's dev evaluation
def dense_dev_metrics(trainer):
    """The dev evaluation as it was: one dense dev queries × pool score matrix and a stable argsort."""
    from hardneg.evaluate.metrics import evaluate
    from hardneg.model.encoding import encode_token_lists
    from hardneg.retrieval.runs import run_from_arrays

    cfg, rows = trainer.config, trainer.dev_index.rows
    docs = encode_token_lists(trainer.model, trainer.store.rows(rows), "doc", batch_size=cfg.batch_encode_size)
    dev_qids = list(trainer.dev_qrels)
    qv = encode_token_lists(trainer.model, [trainer.query_tokens[x] for x in dev_qids], "query",
                            batch_size=cfg.batch_encode_size)
    scores = qv @ docs.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, : min(100, scores.shape[1])]
    run = run_from_arrays(dev_qids, [trainer.doc_ids[r] for r in rows], np.take_along_axis(scores, top, 1), top)
    ranked = -np.sort(-scores, axis=1)
    gap = float((ranked[:, :-1] - ranked[:, 1:]).min() / np.abs(scores).max())  # closest two scores, relative
    return evaluate(run, trainer.dev_qrels, list(dict.fromkeys([cfg.dev_metric, "RR@10", "nDCG@10", "R@100"]))), gap


@pytest.fixture(scope="module")
def spread_model_dir(tmp_path_factory):
    """A tiny random BERT whose vectors differ enough that no two dev scores are within float32 rounding
    (the default tiny model scores every document within 1e-6 of 32, so rankings there are rounding)."""
    from conftest import _tiny_bert

    return _tiny_bert(tmp_path_factory.mktemp("spread-bert"), init_range=0.5)


@pytest.mark.parametrize("dev_pool", [0, 20])
def test_evaluate_dev_chunked_equals_dense(dev_pool, tmp_path, spread_model_dir, monkeypatch):
    from hardneg.train.config import TrainConfig
    from hardneg.train.dev import DevPool
    from hardneg.train.trainer import Trainer

    data = write_tiny_train(tmp_path / "tiny-train", filler=60)
    cfg = TrainConfig(method="inbatch", data=str(data), model=str(spread_model_dir), out=str(tmp_path / "out"),
                      max_steps=1, batch_size=4, lr=1e-3, topk=8, dev_fraction=0.5, dev_pool=dev_pool,
                      cache_dir=str(tmp_path / "cache"), quiet=True, query_max_length=16, doc_max_length=32,
                      batch_encode_size=16)
    trainer = Trainer(cfg)
    trainer.setup()
    (tmp_path / "out").mkdir()
    in_memory = trainer.evaluate_dev()  # one block: the same product as the dense code
    want, gap = dense_dev_metrics(trainer)
    assert gap > 1e-5  # the precondition of comparing rankings computed with other matrix shapes
    assert in_memory == want
    if dev_pool == 0:
        assert len(trainer.dev_index.rows) == len(trainer.doc_ids) == 108
    # a temporary memmap and small chunks
    monkeypatch.setattr(DevPool, "ram_bytes", 4 * trainer.model.dim * 50)
    monkeypatch.setattr(DevPool, "chunks", {"query_chunk": 2, "doc_chunk": 7})
    assert trainer.evaluate_dev() == want
    assert list((tmp_path / "out").iterdir()) == []  # the temporary embeddings are gone
    if dev_pool == 0:  # a killed run's memmap is removed when the next run in the folder starts
        stale = tmp_path / "out" / ".dev-embeddings-killed"
        stale.mkdir()
        (stale / "docs.npy").write_bytes(b"\0" * 64)
        trainer.train()
        assert not stale.exists() and not list((tmp_path / "out").glob(".dev-embeddings-*"))
