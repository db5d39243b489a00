"""Per-step analysis during training (the paper's Fig. 4): how far the static negatives drift.

At every ``track_every`` steps the corpus is encoded with the *current* weights
(no gradient, in memory, never cached), a fixed seeded sample of training
queries is searched exactly, and two numbers are logged (``track`` records of
``train_log.jsonl``):

* ``overlap@K``: mean share of a query's current static negatives (its top-K
  non-positive candidates, K = ``topk``) that are still among the top-K
  non-positive documents the current model retrieves — the "dynamic hard
  negatives". Static methods start near 1 (the warm-up model mined them) and
  drift as the model changes; ANCE-style refresh resets it.
* ``train_RR@10``: the sampled training queries' MRR@10 over the whole corpus,
  i.e. how well the model ranks what it trains on.

It costs one corpus encoding per tracked step, so it is off by default.

``host`` is the training run (the trainer): its ``config`` (``topk``, ``seed``, ``track_queries``,
``batch_encode_size``), ``model``, ``store`` (the tokenized corpus), ``doc_ids``, ``queries``,
``train_qrels``, ``positives``, ``train_mode()`` and ``method`` (whose ``source``, when it is a
:class:`~hardneg.negatives.sampling.StaticNegatives`, holds the pools compared).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hardneg.evaluate.metrics import evaluate
from hardneg.index.faiss_index import FaissIndex
from hardneg.index.shards import sharded_encode_token_lists
from hardneg.negatives.sampling import StaticNegatives, mine_negatives
from hardneg.retrieval.dense import search

__all__ = ["track", "track_sample"]


def track_sample(host: Any) -> list[str]:
    """The fixed, seeded sample of training queries that is tracked (``track_queries``; 0 = all)."""
    qids = sorted(host.train_qrels)
    n = host.config.track_queries
    if n and n < len(qids):
        order = np.random.default_rng([host.config.seed, 11]).permutation(len(qids))[:n]
        qids = sorted(qids[i] for i in order)
    return qids


@torch.no_grad()
def track(host: Any, step: int) -> dict[str, float]:
    """The ``track`` record of ``step``: the sampled queries' train RR@10 and, for static negatives, the overlap
    of their pools with what the current model retrieves (see the module doc)."""
    cfg = host.config
    model = host.model
    was_training = model.training
    model.eval()
    try:
        vectors = sharded_encode_token_lists(model, host.store.rows(range(len(host.store))), "doc",
                                             batch_size=cfg.batch_encode_size, show_progress=False,
                                             precision=cfg.precision)
        index = FaissIndex.build(vectors, host.doc_ids, "flat")
        qids = track_sample(host)
        qrels = {q: host.train_qrels[q] for q in qids}
        k = cfg.topk + max(len(host.positives[q]) for q in qids)
        run = search(index, model, {q: host.queries[q] for q in qids}, k, precision=cfg.precision)
    finally:
        if was_training:
            host.train_mode()
    record: dict[str, float] = {"step": step, "queries": len(qids)}
    record["train_RR@10"] = evaluate(run, qrels, ["RR@10"])["RR@10"]
    static = getattr(host.method, "source", None)
    if isinstance(static, StaticNegatives):
        dynamic = mine_negatives(run, qrels, cfg.topk)
        shares = [len(set(static.pool(q)[: cfg.topk]) & set(dynamic.get(q, []))) / cfg.topk for q in qids]
        record[f"overlap@{cfg.topk}"] = float(np.mean(shares))
    return record
