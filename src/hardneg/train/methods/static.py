"""``static`` and ``bm25neg``: hard negatives sampled from a fixed top-k list per query."""

from __future__ import annotations

from hardneg.train.losses import pairwise_loss
from hardneg.train.methods.base import Method, MethodContext


class StaticNeg(Method):
    """Hard negatives sampled from a fixed top-k list per query (a file, or mined once)."""

    name = "static"

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        from hardneg.train.negatives import StaticNegatives

        self.n_negatives = self.config.n_negatives
        candidates = self.initial_candidates()
        self.source = StaticNegatives(candidates, ctx.train_qrels, ctx.doc_ids,
                                      topk=self.config.topk, seed=self.config.seed)
        self.source.validate(self.n_negatives)

    def initial_candidates(self) -> dict[str, list[str]]:
        from hardneg.train.negatives import load_candidates

        if self.config.negatives:
            return load_candidates(self.config.negatives, self.config.topk, positives=self.ctx.train_qrels)
        return self.ctx.mine(self.ctx.model)

    def negatives(self, examples, start: int) -> list[list[str]]:
        return [self.source.sample(e.qid, self.n_negatives, start + i) for i, e in enumerate(examples)]

    def loss(self, scores, batch):
        pos = self.positive_scores(scores, batch)
        own, _other = self.masks(scores, batch)
        return pairwise_loss(pos, scores, own, loss=self.config.loss), {"pairs": float(own.sum())}


class BM25Neg(StaticNeg):
    """Static hard negatives from BM25's top-``topk``."""

    name = "bm25neg"

    def initial_candidates(self) -> dict[str, list[str]]:
        from hardneg.retrieval.bm25 import cached_bm25
        from hardneg.train.negatives import mine_negatives

        ctx = self.ctx
        bm25 = cached_bm25(ctx.dataset, ctx.cache_dir)
        train_queries = {q: ctx.queries[q] for q in ctx.train_qrels}
        k = self.config.topk + max(len(p) for p in ctx.positives.values())
        run = bm25.search(train_queries, k=k, show_progress=False)
        return mine_negatives(run, ctx.train_qrels, self.config.topk)
