"""Mining hard negatives with a dense model (the start model, or the current weights)."""

from __future__ import annotations

from pathlib import Path

import torch

from hardneg import distributed as dist


def mine_with_model(ctx, model, folder: Path | None = None) -> dict[str, list[str]]:
    """Top-``topk`` non-positive documents of every training query under ``model`` (dense, exact).

    ``ctx``: a :class:`~hardneg.train.methods.base.MethodContext` (or the trainer, which has the
    same fields: ``config``, ``queries``, ``train_qrels``, ``positives``, ``dataset``, ``cache_dir``,
    ``store``, ``doc_ids``). With the current weights (``folder`` given) under torchrun, the corpus
    encoding is shared out over the ranks (every rank then holds the whole index), each rank searches
    its share of the queries, and the mined lists are exchanged, so every rank returns all of them.

    Encoding runs on ``model``'s device (the trainer moved it to ``--device``); one process with the
    encoder on CUDA searches on GPU Faiss when the installed Faiss has GPUs."""
    from hardneg.artifacts import corpus_index
    from hardneg.devices import faiss_placement
    from hardneg.index.faiss_index import FaissIndex
    from hardneg.index.shards import sharded_encode_token_lists
    from hardneg.retrieval.dense import search
    from hardneg.train.negatives import mine_negatives

    cfg = ctx.config
    train_queries = {q: ctx.queries[q] for q in ctx.train_qrels}
    k = cfg.topk + max(len(p) for p in ctx.positives.values())
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
            run = search(index, model, {q: train_queries[q] for q in qids}, k)
            mined = mine_negatives(run, {q: ctx.train_qrels[q] for q in qids}, cfg.topk)
            merged: dict[str, list[str]] = {}
            for part in dist.all_gather_object(mined):
                merged.update(part)
            return {q: merged[q] for q in train_queries if q in merged}
    # one process only: FaissIndex.to_gpu puts the index on every GPU, from every rank under torchrun
    if not dist.is_distributed() and faiss_placement(model.device, quiet=True) == "gpu":
        index.to_gpu()  # (the trainer's setup warned once when a GPU run has only CPU Faiss)
    run = search(index, model, train_queries, k)
    return mine_negatives(run, ctx.train_qrels, cfg.topk)
