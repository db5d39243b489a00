"""Mining hard negatives with a dense model (the start model, or the current weights)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from hardneg import distributed as dist


def _searched(index, model, queries: Mapping, k: int):
    """``(run, positive_scores)``: the run of ``queries`` and a scorer ``(qid, docids) -> <q, v>`` over the
    vectors the index ranks with (what the run's scores are)."""
    from hardneg.retrieval.dense import encode_queries
    from hardneg.retrieval.runs import run_from_arrays

    qids, qv = encode_queries(model, queries)  # search()'s own call: the same vectors as before
    scores, rows = index.search(qv, k)
    run = run_from_arrays(qids, index.ids, scores, rows)
    row_of = {d: i for i, d in enumerate(index.ids)}
    vec = dict(zip(qids, qv, strict=True))

    def positive_scores(qid: str, docids: list[str]) -> np.ndarray:
        return index.reconstruct(np.array([row_of[d] for d in docids], dtype=np.int64)) @ vec[qid]

    return run, positive_scores


def mine_with_model(ctx, model, folder: Path | None = None, selector=None, step: int = 0) -> dict[str, list[str]]:
    """Top-``topk`` non-positive documents of every training query under ``model`` (dense, exact).

    ``ctx``: a :class:`~hardneg.train.methods.base.MethodContext` (or the trainer, which has the
    same fields: ``config``, ``queries``, ``train_qrels``, ``positives``, ``dataset``, ``cache_dir``,
    ``store``, ``doc_ids``). With the current weights (``folder`` given) under torchrun, the corpus
    encoding is shared out over the ranks (every rank then holds the whole index), each rank searches
    its share of the queries, and the mined lists are exchanged, so every rank returns all of them.

    ``selector`` (a :class:`~hardneg.train.selection.TrainSelector`): the negatives are chosen by its
    rules (teacher, margins, window, sampling; :mod:`hardneg.train.selection`) and diagnosed; without
    it, the first ``topk`` non-positives. ``step`` keys ``random`` sampling and names the event.

    Encoding runs on ``model``'s device (the trainer moved it to ``--device``); one process with the
    encoder on CUDA searches on GPU Faiss when the installed Faiss has GPUs."""
    from hardneg.artifacts import corpus_index
    from hardneg.devices import faiss_placement
    from hardneg.index.faiss_index import FaissIndex
    from hardneg.index.shards import sharded_encode_token_lists
    from hardneg.train.negatives import mine_negatives

    cfg = ctx.config
    train_queries = {q: ctx.queries[q] for q in ctx.train_qrels}
    k = selector.depth() if selector is not None else cfg.topk + max(len(p) for p in ctx.positives.values())
    where = "start model" if folder is None else f"refresh at step {step}"

    def choose(run, qrels, positive_scores) -> dict[str, list[str]]:
        if selector is None:
            return mine_negatives(run, qrels, cfg.topk)
        return selector.select(run, where, positive_scores=positive_scores, step=step)

    if folder is None:  # the start model: cached like any retrieval, reused across runs
        index = corpus_index(model, ctx.dataset, "flat", ctx.cache_dir,
                             batch_size=cfg.batch_encode_size, show_progress=not cfg.quiet)
    else:  # the current weights: encoded in memory, never cached
        with torch.no_grad():
            vectors = sharded_encode_token_lists(
                model, ctx.store.rows(range(len(ctx.store))), "doc", batch_size=cfg.batch_encode_size,
                show_progress=not cfg.quiet)
        index = FaissIndex.build(vectors, ctx.doc_ids, "flat")
        if dist.is_distributed():  # each rank searches its share of the queries; the lists are exchanged
            qids = sorted(train_queries)[dist.rank() :: dist.world_size()]
            run, pos_scores = _searched(index, model, {q: train_queries[q] for q in qids}, k)
            mined = choose(run, {q: ctx.train_qrels[q] for q in qids}, pos_scores)
            merged: dict[str, list[str]] = {}
            for part in dist.all_gather_object(mined):
                merged.update(part)
            return {q: merged[q] for q in train_queries if q in merged}
    # one process only: FaissIndex.to_gpu puts the index on every GPU, from every rank under torchrun
    if not dist.is_distributed() and faiss_placement(model.device, quiet=True) == "gpu":
        index.to_gpu()  # (the trainer's setup warned once when a GPU run has only CPU Faiss)
    run, pos_scores = _searched(index, model, train_queries, k)
    return choose(run, ctx.train_qrels, pos_scores)


def select_from_lists(ctx, model, lists: Mapping[str, Sequence[str]], selector) -> dict[str, list[str]]:
    """Apply ``selector``'s rules to given candidate lists (a ``--negatives`` file, BM25's run): the
    candidates are scored by the teacher, or else by ``model`` (the start model) over its cached index."""
    from hardneg.artifacts import corpus_index

    if selector.rules.teacher is not None:
        return selector.select({q: [(d, 0.0) for d in docs] for q, docs in lists.items()}, "given candidates")
    cfg = ctx.config
    index = corpus_index(model, ctx.dataset, "flat", ctx.cache_dir, batch_size=cfg.batch_encode_size,
                         show_progress=not cfg.quiet)
    queries = {q: ctx.queries[q] for q in lists if q in ctx.queries}
    _run, scorer = _searched(index, model, queries, 1)
    scored = {q: list(zip(docs, scorer(q, list(docs)).tolist(), strict=True)) for q, docs in lists.items()
              if q in queries and docs}
    return selector.select(scored, "given candidates", positive_scores=scorer)
