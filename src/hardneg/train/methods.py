"""Training methods = a negative source + a loss over the batch's score matrix.

Every step the trainer encodes the batch's queries ``q`` (B) and the documents
``[positives (B); negatives of example 0; negatives of example 1; …]`` (M), and
hands the method ``scores = scale · q @ docs.T`` (B × M). Column ``i`` is query
``i``'s positive; columns ``B + i·n … B + (i+1)·n − 1`` are its own sampled
negatives; every other column is "someone else's document". A column holding a
known positive of query ``i`` (an in-batch collision, or a positive inside a
mined list) is never used as a negative for it.

=========  ================================================  ===========================
method     negatives of query i                              loss
=========  ================================================  ===========================
inbatch    the other queries' positives                      pairwise over them
rand       ``n`` random corpus docs per query, plus every     pairwise over all
           other document of the batch (all random)
bm25neg    ``n`` sampled from BM25's top-``topk``             pairwise over own negatives
static     ``n`` sampled from a run's top-``topk`` (a file,   pairwise over own negatives
           or mined once with the start model)
ance       like static, re-mined with the current model       pairwise over own negatives
           every ``refresh_every`` steps
star       static hard negatives (own) + every other          ``L_s + α·L_r`` (paper
           document of the batch reused as random negatives   Eq. 13) or DRhard's pairmean
adore      the non-relevant documents of the query's top-K    ΔM-weighted pairwise (paper
           in a fixed index, retrieved every step with the    section 5); only the query
           current query tower                                tower trains
=========  ================================================  ===========================

ADORE (:mod:`hardneg.train.adore`) computes the whole batch loss itself (hook
:meth:`Method.batch_loss`) and evaluates dev on its fixed index
(:meth:`Method.evaluate_dev`).

Under torchrun (:mod:`hardneg.train.distributed`) a rank's ``scores`` hold only
its own queries, rows ``trainer.row_offset …`` of the global batch, against
every document of the global batch (same column layout, with B the global batch
size ``trainer.global_batch``); losses are sums over the rank's rows divided by
counts over the global batch (:func:`~hardneg.train.distributed.global_mean`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from hardneg.errors import HardnegError
from hardneg.train import distributed as dist
from hardneg.train.losses import collision_mask, ranknet_pairwise_sum, softmax_ce_sum

logger = logging.getLogger("hardneg.train")


class Method:
    """Base: in-batch negatives only."""

    name = "inbatch"
    n_negatives = 0
    #: True: the trainer loads separate towers and freezes the document tower (ADORE)
    frozen_doc = False

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.config = trainer.config

    # negatives -----------------------------------------------------------------
    def negatives(self, examples, start: int) -> list[list[str]]:
        return [[] for _ in examples]

    def after_step(self, step: int) -> None:
        """Called after every optimiser step (ANCE re-mines here)."""

    def state_files(self) -> dict[str, Path]:
        """Files a checkpoint must keep to resume this method exactly."""
        return {}

    def restore(self, checkpoint: Path) -> None:
        """Restore from :meth:`state_files` copies in ``checkpoint``."""

    def train_examples(self, examples: list) -> list:
        """The examples the data order runs over (default: one per (query, positive) pair)."""
        return examples

    def batch_loss(self, examples, negatives) -> tuple[torch.Tensor, dict] | None:
        """``(loss, parts)`` to compute the whole step's loss here; ``None``: the trainer's default
        (encode queries and documents, then :meth:`loss` over the score matrix)."""
        return None

    def evaluate_dev(self) -> dict[str, float] | None:
        """Dev metrics computed by the method; ``None``: the trainer's default dev evaluation."""
        return None

    def after_save(self, folder: Path) -> None:
        """Called after the trainer saved the best model into ``folder``."""

    # loss ----------------------------------------------------------------------
    def positive_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """``(B,)``: each row's score of its own positive (column ``row_offset + i``)."""
        b = scores.shape[0]
        rows = torch.arange(b, device=scores.device)
        return scores[rows, rows + self.trainer.row_offset]

    def masks(self, scores: torch.Tensor, examples, doc_list: list[str]):
        """Boolean ``(B, M)`` masks: own negatives, other documents (both without collisions).

        Row ``i`` is example ``row_offset + i`` of the global batch of ``global_batch`` examples."""
        b, m = scores.shape
        bg = self.trainer.global_batch
        n = self.n_negatives
        col = torch.arange(m, device=scores.device)
        row = torch.arange(b, device=scores.device)[:, None] + self.trainer.row_offset
        own_neg = (col[None, :] >= bg + row * n) & (col[None, :] < bg + (row + 1) * n)
        own_pos = col[None, :] == row
        collisions = collision_mask([self.trainer.positives[e.qid] for e in examples], doc_list,
                                    device=scores.device)
        valid = ~collisions & ~own_pos
        return own_neg & valid, ~own_neg & valid

    def pairwise_sum(self, pos: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor):
        """``(sum, count)`` of the configured loss over this rank's rows: pairs (ranknet) or queries (softmax)."""
        if self.config.loss == "softmax":
            return softmax_ce_sum(pos, scores, mask)
        return ranknet_pairwise_sum(pos, scores, mask)

    def pairwise(self, pos: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The loss's mean over the global batch (one process: ranknet_pairwise / softmax_ce)."""
        return dist.global_mean(*self.pairwise_sum(pos, scores, mask))

    def loss(self, scores: torch.Tensor, examples, negatives, doc_list) -> tuple[torch.Tensor, dict]:
        pos = self.positive_scores(scores)
        own, other = self.masks(scores, examples, doc_list)
        return self.pairwise(pos, scores, other), {"pairs": float(other.sum())}


class InBatch(Method):
    name = "inbatch"


class RandNeg(Method):
    """Random corpus documents (and the rest of the batch, equally random) as negatives."""

    name = "rand"

    def __init__(self, trainer) -> None:
        super().__init__(trainer)
        from hardneg.train.negatives import RandomNegatives

        self.n_negatives = self.config.n_negatives
        self.source = RandomNegatives(trainer.doc_ids, trainer.train_qrels, seed=self.config.seed)

    def negatives(self, examples, start: int) -> list[list[str]]:
        return [self.source.sample(e.qid, self.n_negatives, start + i) for i, e in enumerate(examples)]

    def loss(self, scores, examples, negatives, doc_list):
        pos = self.positive_scores(scores)
        own, other = self.masks(scores, examples, doc_list)
        mask = own | other
        return self.pairwise(pos, scores, mask), {"pairs": float(mask.sum())}


class StaticNeg(Method):
    """Hard negatives sampled from a fixed top-k list per query (BM25, a file, or mined once)."""

    name = "static"

    def __init__(self, trainer) -> None:
        super().__init__(trainer)
        from hardneg.train.negatives import StaticNegatives

        self.n_negatives = self.config.n_negatives
        candidates = self.initial_candidates()
        self.source = StaticNegatives(candidates, trainer.train_qrels, trainer.doc_ids,
                                      topk=self.config.topk, seed=self.config.seed)
        self.source.validate(self.n_negatives)

    def initial_candidates(self) -> dict[str, list[str]]:
        from hardneg.train.negatives import load_candidates

        if self.config.negatives:
            return load_candidates(self.config.negatives, self.config.topk, positives=self.trainer.train_qrels)
        return mine_with_model(self.trainer, self.trainer.model)

    def negatives(self, examples, start: int) -> list[list[str]]:
        return [self.source.sample(e.qid, self.n_negatives, start + i) for i, e in enumerate(examples)]

    def loss(self, scores, examples, negatives, doc_list):
        pos = self.positive_scores(scores)
        own, _other = self.masks(scores, examples, doc_list)
        return self.pairwise(pos, scores, own), {"pairs": float(own.sum())}


class BM25Neg(StaticNeg):
    name = "bm25neg"

    def initial_candidates(self) -> dict[str, list[str]]:
        from hardneg.retrieval.bm25 import cached_bm25
        from hardneg.train.negatives import mine_negatives

        trainer = self.trainer
        bm25 = cached_bm25(trainer.dataset, trainer.cache_dir)
        train_queries = {q: trainer.queries[q] for q in trainer.train_qrels}
        k = self.config.topk + max(len(p) for p in trainer.positives.values())
        run = bm25.search(train_queries, k=k, show_progress=False)
        return mine_negatives(run, trainer.train_qrels, self.config.topk)


class Ance(StaticNeg):
    """ANCE-style: static negatives re-mined with the current model every ``refresh_every`` steps."""

    name = "ance"

    def __init__(self, trainer) -> None:
        super().__init__(trainer)
        self.refreshes = 0
        self._file = Path(trainer.config.out) / "refresh" / "negatives.tsv"

    def initial_candidates(self) -> dict[str, list[str]]:
        return mine_with_model(self.trainer, self.trainer.model)

    def after_step(self, step: int) -> None:
        from hardneg.train.negatives import write_negatives

        if step % self.config.refresh_every or step >= self.config.max_steps:
            return
        model = self.trainer.model
        was_training = model.training
        model.eval()
        candidates = mine_with_model(self.trainer, model, folder=Path(self.config.out) / "refresh" / "index")
        if was_training:
            model.train()
        self.source.replace(candidates)
        if dist.is_main():
            write_negatives(self._file, candidates)
        self.refreshes += 1
        logger.info("step %d: re-mined hard negatives with the current model", step)

    def state_files(self) -> dict[str, Path]:
        return {"negatives.tsv": self._file} if self._file.is_file() else {}

    def restore(self, checkpoint: Path) -> None:
        from hardneg.train.negatives import read_negatives

        saved = checkpoint / "negatives.tsv"
        if saved.is_file():
            if dist.is_main():
                self._file.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(saved, self._file)
            self.source.replace(read_negatives(saved))


class Star(StaticNeg):
    """STAR: static hard negatives + the batch's other documents as random negatives."""

    name = "star"

    def loss(self, scores, examples, negatives, doc_list):
        pos = self.positive_scores(scores)
        own, other = self.masks(scores, examples, doc_list)
        if self.config.star_mixing == "pairmean" and self.config.loss != "ranknet":
            raise HardnegError("--star-mixing pairmean reproduces DRhard's RankNet formula: use --loss ranknet")
        # hardneg.train.losses.star_loss, written as global means (equal to it in one process)
        s_h, n_h = self.pairwise_sum(pos, scores, own)
        s_r, n_r = self.pairwise_sum(pos, scores, other)
        if self.config.star_mixing == "pairmean":
            loss = dist.global_mean(s_h + s_r, n_h + n_r)
        else:
            loss = dist.global_mean(s_h, n_h) + self.config.alpha * dist.global_mean(s_r, n_r)
        return loss, {"hard_pairs": float(own.sum()), "random_pairs": float(other.sum())}


METHODS = {cls.name: cls for cls in (InBatch, RandNeg, StaticNeg, BM25Neg, Ance, Star)}
#: methods in their own modules (imported when asked for: they import this module)
LAZY_METHODS = {"adore": ("hardneg.train.adore", "Adore")}


def method_class(name: str) -> type[Method]:
    if name in METHODS:
        return METHODS[name]
    if name in LAZY_METHODS:
        import importlib

        module, attr = LAZY_METHODS[name]
        return getattr(importlib.import_module(module), attr)
    raise HardnegError(f"unknown method {name!r}; known: {', '.join([*METHODS, *LAZY_METHODS])}")


def make_method(name: str, trainer) -> Method:
    return method_class(name)(trainer)


def mine_with_model(trainer, model, folder: Path | None = None) -> dict[str, list[str]]:
    """Top-``topk`` non-positive documents of every training query under ``model`` (dense, exact).

    With the current weights (``folder`` given) under torchrun, the corpus encoding is shared out over
    the ranks (every rank then holds the whole index), each rank searches its share of the queries,
    and the mined lists are exchanged, so every rank returns all of them."""
    from hardneg.index.faiss_index import FaissIndex
    from hardneg.retrieval.dense import corpus_index, search
    from hardneg.train.negatives import mine_negatives

    cfg = trainer.config
    train_queries = {q: trainer.queries[q] for q in trainer.train_qrels}
    k = cfg.topk + max(len(p) for p in trainer.positives.values())
    if folder is None:  # the start model: cached like any retrieval, reused across runs
        index = corpus_index(model, trainer.dataset, "flat", trainer.cache_dir,
                             batch_size=cfg.batch_encode_size, show_progress=not cfg.quiet)
    else:  # the current weights: encoded in memory, never cached
        with torch.no_grad():
            vectors = dist.sharded_encode_token_lists(
                model, trainer.store.rows(range(len(trainer.store))), "doc", batch_size=cfg.batch_encode_size,
                show_progress=not cfg.quiet)
        index = FaissIndex.build(vectors, trainer.doc_ids, "flat")
        if dist.is_distributed():  # each rank searches its share of the queries; the lists are exchanged
            qids = sorted(train_queries)[dist.rank() :: dist.world_size()]
            run = search(index, model, {q: train_queries[q] for q in qids}, k)
            mined = mine_negatives(run, {q: trainer.train_qrels[q] for q in qids}, cfg.topk)
            merged: dict[str, list[str]] = {}
            for part in dist.all_gather_object(mined):
                merged.update(part)
            return {q: merged[q] for q in train_queries if q in merged}
    run = search(index, model, train_queries, k)
    return mine_negatives(run, trainer.train_qrels, cfg.topk)
