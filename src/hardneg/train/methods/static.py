"""``static`` and ``bm25neg``: hard negatives sampled from a fixed top-k list per query."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from hardneg.negatives.sampling import StaticNegatives, mine_negatives
from hardneg.negatives.sources import bm25_positive_scorer, load_candidates
from hardneg.retrieval.bm25 import cached_bm25
from hardneg.train.distill import Distiller
from hardneg.train.losses import pairwise_loss
from hardneg.train.methods.base import Method, MethodContext
from hardneg.train.methods.mining import TrainSelector, mine_with_model, select_from_lists


@contextmanager
def mining_lengths(model, config) -> Iterator[None]:
    """``model`` tokenizes at ``mine_query_max_length`` / ``mine_doc_max_length`` (where set) inside the block,
    at its own lengths again after it: the start model's mining may read longer texts than training does
    (DRhard mines with 32-token queries and 256/512-token documents, trains with 24/120). Cached corpus
    encodings are keyed by the length (``side_identity``), so the mining index is not the training one."""
    tower = getattr(model.doc_model, "config", None)
    limit = getattr(tower, "max_position_embeddings", None) or 1 << 30  # what the position embeddings hold
    limit -= 2 if getattr(tower, "model_type", "") in ("roberta", "xlm-roberta") else 0  # RoBERTa's pad offset
    lengths = {k: min(v, limit) for k, v in (("query_max_length", config.mine_query_max_length),
                                             ("doc_max_length", config.mine_doc_max_length)) if v is not None}
    if not lengths:
        yield
        return
    before = model.config
    model.config = replace(before, **lengths)
    try:
        yield
    finally:
        model.config = before


class StaticNeg(Method):
    """Hard negatives sampled from a fixed top-k list per query (a file, or mined once)."""

    name = "static"

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.n_negatives = self.config.n_negatives
        # the negative-selection rules (hardneg.negatives.rules): teacher, margins, window, sampling
        self.selector = TrainSelector(ctx)
        candidates = self.initial_candidates()
        rules = self.selector.rules
        self.source = StaticNegatives(candidates, ctx.train_qrels, ctx.doc_ids,
                                      topk=self.config.num_negatives or self.config.topk, seed=self.config.seed,
                                      law=rules.law)
        self.source.set_scores(self.selector.scores)  # SimANS: the mining scores of the pool and positives
        self.selector.scores = {}  # the source keeps them (compactly)
        self.source.validate(self.n_negatives)
        self.distiller: Distiller | None = None  # --distill: the teacher's scores of every pool, scored once
        if self.config.distill != "none":
            self.distiller = Distiller(self.config, self.selector, ctx.positives, ctx.doc_ids, pool=self.source.pool)
            self.distill_prepare()

    def distill_prepare(self) -> None:
        """The teacher scores every query's current pool and positives (cached: a rerun scores nothing)."""
        if self.distiller is not None:
            self.distiller.prepare({q: self.source.pool(q) for q in self.ctx.train_qrels})

    def state_files(self):
        return self.selector.state_files()

    def restore(self, checkpoint) -> None:
        self.selector.restore(checkpoint)

    def initial_candidates(self) -> dict[str, list[str]]:
        if self.config.negatives:
            if self.selector.rules.active:  # the file's lists (up to the window's depth) go through the rules
                lists = load_candidates(self.config.negatives, self.selector.depth(), dataset=self.ctx.dataset)
                with mining_lengths(self.ctx.model, self.config):  # the start model scores them as it mines
                    return select_from_lists(self.ctx, self.ctx.model, lists, self.selector)
            return load_candidates(self.config.negatives, self.config.topk, positives=self.ctx.train_qrels,
                                   dataset=self.ctx.dataset)
        return self.mine_start_model()

    def mine_start_model(self) -> dict[str, list[str]]:
        """The start model's top-``topk`` of every training query, mined at the mining lengths."""
        with mining_lengths(self.ctx.model, self.config):
            return mine_with_model(self.ctx, self.ctx.model, selector=self.selector)

    def negatives(self, examples, start: int) -> list[list[str]]:
        return [self.source.sample(e.qid, self.n_negatives, start + i, e.pos) for i, e in enumerate(examples)]

    def loss(self, scores, batch):
        own, _other = self.masks(scores, batch)
        if self.distiller is not None:  # the distillation loss replaces the ranking loss (hardneg.train.distill)
            distill = self.distiller.layout_loss(scores, batch, own, self.n_negatives)
            return self.distiller.weight * distill, {"pairs": float(own.sum()), "distill": float(distill.detach())}
        pos = self.positive_scores(scores, batch)
        return pairwise_loss(pos, scores, own, loss=self.config.loss), {"pairs": float(own.sum())}


class BM25Neg(StaticNeg):
    """Static hard negatives from BM25's top-``topk``."""

    name = "bm25neg"

    def initial_candidates(self) -> dict[str, list[str]]:
        ctx = self.ctx
        bm25 = cached_bm25(ctx.dataset, ctx.cache_dir)
        train_queries = {q: ctx.queries[q] for q in ctx.train_qrels}
        k = self.config.topk + max(len(p) for p in ctx.positives.values())
        if self.selector.rules.active:  # BM25 scores (or the teacher's) under the rules
            k = self.selector.depth()
        run = bm25.search(train_queries, k=k, show_progress=False)
        if self.selector.rules.active:  # the positives scored by BM25 too (margin rules and SimANS compare to them)
            kept: dict[str, dict[str, float]] | None = {} if self.selector.rules.weighted else None
            lists = self.selector.select(run, "bm25", positive_scores=bm25_positive_scorer(bm25, ctx.queries),
                                         scores_out=kept)
            self.selector.scores = kept or {}
            return lists
        return mine_negatives(run, ctx.train_qrels, self.config.topk)
