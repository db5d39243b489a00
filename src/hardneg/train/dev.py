"""THE dev evaluation every method shares: the dev queries through the current query tower, ranked as deep as
the dev metric needs, in the run's dev index.

The dev index is the method's own when it has one (:meth:`~hardneg.train.methods.base.Method.dev_index`:
ADORE searches its fixed index of the frozen document tower, so training on a PQ index is evaluated on that
PQ index), else the current model's :class:`DevPool`: the whole corpus (``dev_pool`` 0) or BM25's
top-``dev_pool`` of each dev query plus its positives, encoded with the current weights at every evaluation
and searched exactly by chunks (:mod:`hardneg.retrieval.exact`: no dev queries × pool score matrix).

Either way the ranking is :func:`dev_depth` deep: the largest cut-off among the logged measures
(``--dev-metric R@1000`` ranks 1000 deep, ``nDCG@200`` 200), at least 100 (``R@100`` is always logged).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Container, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from hardneg import distributed as dist
from hardneg.evaluate.metrics import evaluate
from hardneg.index.shards import sharded_encode_token_lists
from hardneg.model.encoding import encode_batches, encode_token_lists, length_sorted_batches
from hardneg.retrieval.bm25 import cached_bm25
from hardneg.retrieval.exact import TopKSearch
from hardneg.retrieval.runs import run_from_arrays

if TYPE_CHECKING:
    from hardneg.train.methods.base import MethodContext

#: measures every dev evaluation logs besides ``--dev-metric``
DEV_MEASURES = ("RR@10", "nDCG@10", "R@100")
#: the shallowest dev ranking (``R@100`` is always logged); a measure without a cut-off (``AP``) sees this deep
MIN_DEPTH = 100


def dev_measures(dev_metric: str) -> list[str]:
    """The measures of a dev evaluation: ``dev_metric`` first, then :data:`DEV_MEASURES` (no repeats)."""
    return list(dict.fromkeys([dev_metric, *DEV_MEASURES]))


def dev_depth(measures: Sequence[str]) -> int:
    """How deep dev is ranked for ``measures``: their largest cut-off (``R@1000`` → 1000), at least
    :data:`MIN_DEPTH`."""
    return max([MIN_DEPTH, *(int(c) for m in measures for c in re.findall(r"@(\d+)", m))])


class DevIndex(Protocol):
    """What dev is ranked in: document ids by row, a size, and an exact or approximate top-``k`` search
    (a :class:`~hardneg.index.faiss_index.FaissIndex` is one)."""

    ids: Sequence[str]

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@torch.no_grad()
def evaluate_dev(ctx: MethodContext, index: DevIndex) -> dict[str, float]:
    """Dev metrics of the current model: the dev queries encoded by the query tower, ranked
    :func:`dev_depth` deep in ``index`` (capped at its size), scored on the dev qrels. The model is left in
    the mode it was in (:attr:`MethodContext.train_mode` restores training mode)."""
    cfg, model = ctx.config, ctx.model
    was_training = model.training
    model.eval()
    dev_qids = list(ctx.dev_qrels)
    qv = encode_token_lists(model, [ctx.query_tokens[q] for q in dev_qids], "query",
                            batch_size=cfg.batch_encode_size, precision=cfg.precision)
    measures = dev_measures(cfg.dev_metric)
    scores, rows = index.search(qv, min(dev_depth(measures), len(index)))
    run = run_from_arrays(dev_qids, index.ids, scores, rows)
    if was_training:
        ctx.train_mode()
    return evaluate(run, ctx.dev_qrels, measures)


def dev_pool_ids(dataset: Any, queries: Mapping[str, Any], dev_qrels: Mapping[str, Mapping[str, int]], depth: int,
                 cache_dir: Any, known: Container[str]) -> set[str]:
    """The documents ranked at dev time with ``dev_pool`` ``depth`` > 0: BM25's top-``depth`` of each dev query
    (BM25 over ``dataset``, cached under ``cache_dir``) plus its relevant documents that are in ``known``."""
    run = cached_bm25(dataset, cache_dir).search({q: queries[q] for q in dev_qrels}, k=depth, show_progress=False)
    pool = {d for results in run.values() for d, _ in results}
    return pool | {d for q in dev_qrels for d in dev_qrels[q] if d in known}


def dev_pool_rows(ctx: MethodContext, doc_row: dict[str, int]) -> list[int]:
    """Corpus rows ranked at dev time: all of them (``dev_pool`` 0), or BM25's top-``dev_pool`` of each
    dev query plus its positives (:func:`dev_pool_ids`)."""
    cfg = ctx.config
    if cfg.dev_pool <= 0:
        return list(range(len(ctx.doc_ids)))
    pool = dev_pool_ids(ctx.dataset, ctx.queries, ctx.dev_qrels, cfg.dev_pool, ctx.cache_dir, doc_row)
    return sorted(doc_row[d] for d in pool)


class DevPool:
    """The current model's dev index: corpus ``rows`` of the tokenized store, encoded with the current
    weights at every search and searched exactly (:class:`~hardneg.retrieval.exact.TopKSearch`)."""

    #: pools whose embeddings take at most this many bytes are encoded in memory (one process) or in
    #: one piece (torchrun); larger ones into a temporary float32 memmap / in pieces of this size
    ram_bytes = 1 << 30
    #: chunk sizes of the exact search (``query_chunk``, ``doc_chunk``; the defaults when empty)
    chunks: dict[str, int] = {}

    def __init__(self, rows: list[int], ctx: MethodContext) -> None:
        self.rows = rows
        self.ctx = ctx
        self.ids = ctx.doc_ids if len(rows) == len(ctx.doc_ids) else [ctx.doc_ids[r] for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(scores, positions in rows)`` of the top ``k`` of the pool for every query, by chunks.

        The pool's embeddings are those of ``encode_token_lists`` over the whole pool (the same
        length-sorted batches), held in memory when small, else written to a temporary float32
        memmap (in the run's folder, deleted afterwards). Under torchrun the batches are shared out
        over the ranks and every rank gets all rows (bit-identical to one process) for a pool up to
        :attr:`ram_bytes`; a larger pool is encoded and searched in row pieces of that size (each
        piece batched on its own), so no rank holds the whole pool's embeddings."""
        cfg, model, store, rows = self.ctx.config, self.ctx.model, self.ctx.store, self.rows
        search = TopKSearch(queries, k, **self.chunks)
        piece = max(1, self.ram_bytes // (4 * model.dim))
        progress = not cfg.quiet and dist.is_main() and len(rows) > piece
        if dist.is_distributed():
            for a in range(0, len(rows), piece):
                search.add(sharded_encode_token_lists(model, store.rows(rows[a : a + piece]), "doc",
                                                      batch_size=cfg.batch_encode_size, show_progress=progress,
                                                      precision=cfg.precision),
                           show_progress=progress)
            return search.result()
        if len(rows) <= piece:
            search.add(encode_token_lists(model, store.rows(rows), "doc", batch_size=cfg.batch_encode_size,
                                          precision=cfg.precision))
            return search.result()
        # encode_token_lists's batches, written into a memmap; token rows are read batch by batch
        model.eval()
        pool = np.asarray(rows, dtype=np.int64)
        batches = length_sorted_batches(store.lengths[pool], cfg.batch_encode_size)
        out = Path(cfg.out)
        with tempfile.TemporaryDirectory(prefix=DEV_EMBEDDINGS, dir=out if out.is_dir() else None) as tmp:
            docs = np.lib.format.open_memmap(Path(tmp) / "docs.npy", mode="w+", dtype=np.float32,
                                             shape=(len(rows), model.dim))
            for b, emb in encode_batches(model, lambda idx: store.rows(pool[idx]), batches, "doc",
                                         desc="encode dev pool", show_progress=progress, precision=cfg.precision):
                docs[batches[b]] = emb.float().cpu().numpy()
            search.add(docs, show_progress=progress)
            del docs
        return search.result()


#: prefix of the temporary folders that hold a large dev pool's embeddings in the run's folder
DEV_EMBEDDINGS = ".dev-embeddings-"
