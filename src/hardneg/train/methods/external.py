"""ADORE on an index hardneg did not build (``--index PATH``; issue 29).

The index (:func:`hardneg.index.external.open_external`: a Pyserini folder, a Faiss file with ``--index-ids``,
an embeddings ``.npy`` with ``--index-ids``) stands in for the document side: no document tower is loaded and
no corpus is tokenized; the corpus's ids are the index's rows. The query encoder (``--model``) must be the one
that belongs to the index, which :func:`check_encoder` tests before the first step: the median rank of the
training positives in the index under the start query encoder and the start dev metric are logged, and a
near-random retrieval (median rank past ``--index-check`` of the index, or a dev metric ~0 where BM25 scores far
higher) stops the run with the likely mismatch named.

The saved query encoder records the index it was trained against (``adore.json``: content hash, kind,
``ntotal``, metric) and says so in its model card (``README.md``), so that ``hardneg search`` refuses to search
another index with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from hardneg.errors import HardnegError
from hardneg.evaluate.metrics import evaluate
from hardneg.index.external import check_dim, open_external
from hardneg.index.faiss_index import FaissIndex
from hardneg.io import atomic_write
from hardneg.model.encoding import encode_token_lists
from hardneg.retrieval.bm25 import cached_bm25
from hardneg.retrieval.runs import Run
from hardneg.train.dev import evaluate_dev

logger = logging.getLogger("hardneg.train")

#: index rows the positives' rank is measured against (all of them in a smaller index, else a seeded sample)
RANK_SAMPLE = 20_000
#: training queries the positives' rank is measured over (a seeded sample of more)
RANK_QUERIES = 1_000
#: a start dev metric below this is "~0"; it stops the run when BM25 scores at least ``BM25_FACTOR`` times more
NEAR_ZERO, BM25_FACTOR, BM25_FLOOR = 0.01, 10.0, 0.05


def open_index(ctx) -> FaissIndex:
    """The run's external index (``ctx.config.index``), checked against the query encoder's dimension; counts
    the training qrels whose documents the index lacks (a warning: their queries are skipped)."""
    cfg = ctx.config
    index = open_external(cfg.index, cfg.index_ids, build=cfg.index_build, cache_dir=ctx.cache_dir)
    check_dim(index, ctx.model.dim, cfg.model)
    in_index = set(index.ids)
    lost = {q: [d for d, g in docs.items() if g >= 1 and d not in in_index] for q, docs in ctx.train_qrels.items()}
    n_lost = sum(map(len, lost.values()))
    if n_lost:
        gone = sum(1 for q, docs in ctx.train_qrels.items()
                   if not any(g >= 1 and d in in_index for d, g in docs.items()))
        logger.warning("adore: %d relevant documents of the training qrels are not in the index %s (e.g. %r); "
                       "%d training queries have no relevant document left and are skipped", n_lost, cfg.index,
                       next(d for ds in lost.values() for d in ds), gone)
    return index


def vector_scores(q: np.ndarray | torch.Tensor, v, l2: bool):
    """Scores of query rows ``q`` ``(..., d)`` against vectors ``v`` ``(..., n, d)`` as the index ranks them:
    ``<q, v>``, or ``−‖q−v‖²`` for an L2 index (numpy or torch, with gradients through ``q``)."""
    if isinstance(q, torch.Tensor):
        dots = torch.einsum("...d,...nd->...n", q, v)
        if not l2:
            return dots
        return 2 * dots - (q * q).sum(-1, keepdim=True) - (v * v).sum(-1)
    dots = np.einsum("...d,...nd->...n", q, v)
    return dots if not l2 else 2 * dots - (q * q).sum(-1, keepdims=True) - (v * v).sum(-1)


def positive_ranks(index: FaissIndex, qv: np.ndarray, relevant: list[np.ndarray], *, sample: int = RANK_SAMPLE,
                   seed: int = 0) -> np.ndarray:
    """Each query's best-placed relevant document's rank among the index's vectors (1 = top), by the scores the
    index ranks with; over a seeded sample of ``sample`` rows in a larger index (then an estimate)."""
    n = len(index)
    rng = np.random.default_rng(seed)
    pool = np.arange(n) if n <= sample else np.sort(rng.choice(n, sample, replace=False))
    vectors = index.reconstruct(pool)
    best = np.array([vector_scores(q, index.reconstruct(rows), index.l2).max()
                     for q, rows in zip(qv, relevant, strict=True)])
    above = np.empty(len(qv), dtype=np.int64)
    for a in range(0, len(qv), 256):  # one matrix product per chunk of queries
        scores = qv[a : a + 256] @ vectors.T
        if index.l2:
            scores = 2 * scores - (qv[a : a + 256] ** 2).sum(1, keepdims=True) - (vectors**2).sum(1)
        margin = 1e-5 * np.maximum(1.0, np.abs(best[a : a + 256, None]))  # the positive itself never outranks itself
        above[a : a + 256] = (scores > best[a : a + 256, None] + margin).sum(1)
    return 1 + above * n / len(pool)


def check_encoder(ctx, index: FaissIndex, relevant: dict[str, dict[int, int]]) -> dict:
    """The start query encoder against the index: the training positives' median rank and the start dev metric
    (logged, returned as a record); a HardnegError naming the likely mismatch when retrieval is near random and
    ``--index-check`` is on."""
    cfg, model = ctx.config, ctx.model
    qids = sorted(q for q, rows in relevant.items() if rows)
    if len(qids) > RANK_QUERIES:
        qids = sorted(np.random.default_rng(cfg.seed).choice(qids, RANK_QUERIES, replace=False).tolist())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        qv = encode_token_lists(model, [ctx.query_tokens[q] for q in qids], "query",
                                batch_size=cfg.batch_encode_size, precision=cfg.precision)
    if was_training:
        ctx.train_mode()
    ranks = positive_ranks(index, qv, [np.fromiter(relevant[q], dtype=np.int64) for q in qids], seed=cfg.seed)
    median = float(np.median(ranks)) if len(ranks) else 0.0
    record = {"positives_median_rank": median, "ntotal": len(index), "queries": len(qids),
              "exact": len(index) <= RANK_SAMPLE}
    if ctx.dev_qrels:
        record["dev"] = {cfg.dev_metric: evaluate_dev(ctx, index)[cfg.dev_metric]}
    logger.info("adore: start query encoder against the index: training positives' median rank %.0f of %d; %s",
                median, len(index), ", ".join(f"dev {k} {v:.4f}" for k, v in record.get("dev", {}).items()))
    if not cfg.index_check:
        return record
    problem = None
    if median > cfg.index_check * len(index):
        problem = (f"the training positives' median rank is {median:.0f} of {len(index)} (past --index-check "
                   f"{cfg.index_check} of the index: near-random retrieval)")
    elif record.get("dev") and record["dev"][cfg.dev_metric] < NEAR_ZERO:
        bm25 = bm25_dev(ctx)
        record["bm25_dev"] = bm25
        if bm25 is not None and bm25 >= max(BM25_FLOOR, BM25_FACTOR * record["dev"][cfg.dev_metric]):
            problem = (f"dev {cfg.dev_metric} is {record['dev'][cfg.dev_metric]:.4f} at the start, where BM25 scores "
                       f"{bm25:.4f}")
    if problem:
        raise HardnegError(f"--index {cfg.index}: the query encoder {cfg.model} does not seem to belong to this "
                           f"index: {problem}. Likely a mismatch with the encoder that built the index: pooling "
                           f"({model.config.pooling} here; --pooling), normalisation ({model.config.normalize} "
                           f"here; --normalize / --no-normalize), the query prefix or prompt "
                           f"({model.config.query_prefix!r} here; e5's 'query: ', bge's instruction: a "
                           "sentence-transformers folder's prompts), or the wrong model. --index-check 0 trains "
                           "anyway")
    return record


def bm25_dev(ctx) -> float | None:
    """BM25's dev ``--dev-metric`` over the dataset's corpus (cached), or None when the data has no corpus."""
    cfg = ctx.config
    if not getattr(ctx.dataset, "has_corpus", False):
        return None
    bm25 = cached_bm25(ctx.dataset, ctx.cache_dir)
    run: Run = bm25.search({q: ctx.queries[q] for q in ctx.dev_qrels}, k=100, show_progress=False)
    return float(evaluate(run, ctx.dev_qrels, [cfg.dev_metric])[cfg.dev_metric])


def write_card(folder: Path, info: dict) -> Path:
    """A model card (``README.md``, sentence-transformers' front matter) naming the index the query encoder was
    trained against."""
    ext = info["external_index"]
    text = "\n".join([
        "---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
        "tags:", "- sentence-transformers", "- hardneg", "- adore", "- query-encoder",
        "---", "", "# ADORE query encoder", "",
        f"The query encoder of an ADORE run (hardneg, method adore) trained from `{info['start_model']}` against a "
        "fixed document index it did not build. Only the query side is here: search it in that index.", "",
        "## Index", "",
        "| | |", "|---|---|",
        f"| content hash | `{ext['hash']}` |", f"| layout | {ext['layout']} |", f"| kind | {ext['kind']} |",
        f"| ntotal | {ext['ntotal']} |", f"| metric | {ext['metric']} |", f"| dimension | {ext['dim']} |",
        f"| path | `{ext['path']}` |", "",
        "## Usage", "", "```bash", f"hardneg search {ext['path']} DATA --model THIS_FOLDER", "```", "",
        "`hardneg search` refuses an index with another content hash.", "",
    ])
    path = Path(folder) / "README.md"
    with atomic_write(path) as fh:
        fh.write(text)
    return path
