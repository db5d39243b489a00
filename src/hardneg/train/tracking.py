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
"""

from __future__ import annotations

import numpy as np
import torch


def track_sample(trainer) -> list[str]:
    """The fixed, seeded sample of training queries that is tracked (``track_queries``; 0 = all)."""
    qids = sorted(trainer.train_qrels)
    n = trainer.config.track_queries
    if n and n < len(qids):
        order = np.random.default_rng([trainer.config.seed, 11]).permutation(len(qids))[:n]
        qids = sorted(qids[i] for i in order)
    return qids


@torch.no_grad()
def track(trainer, step: int) -> dict[str, float]:
    from hardneg.evaluate.metrics import evaluate
    from hardneg.index.faiss_index import FaissIndex
    from hardneg.index.shards import sharded_encode_token_lists
    from hardneg.retrieval.dense import search
    from hardneg.train.negatives import mine_negatives

    cfg = trainer.config
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        vectors = sharded_encode_token_lists(model, trainer.store.rows(range(len(trainer.store))), "doc",
                                             batch_size=cfg.batch_encode_size, show_progress=False)
        index = FaissIndex.build(vectors, trainer.doc_ids, "flat")
        qids = track_sample(trainer)
        qrels = {q: trainer.train_qrels[q] for q in qids}
        k = cfg.topk + max(len(trainer.positives[q]) for q in qids)
        run = search(index, model, {q: trainer.queries[q] for q in qids}, k)
    finally:
        if was_training:
            trainer.train_mode()
    record: dict[str, float] = {"step": step, "queries": len(qids)}
    record["train_RR@10"] = evaluate(run, qrels, ["RR@10"])["RR@10"]
    static = getattr(trainer.method, "source", None)
    pools = getattr(static, "_pools", None)
    if pools is not None:
        dynamic = mine_negatives(run, qrels, cfg.topk)
        shares = [len(set(pools.get(q, [])[: cfg.topk]) & set(dynamic.get(q, []))) / cfg.topk for q in qids]
        record[f"overlap@{cfg.topk}"] = float(np.mean(shares))
    return record
