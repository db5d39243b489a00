"""A training run's negatives: its selection rules and mining with a dense model (the start model, or the
current weights), over :mod:`hardneg.negatives`.

This is the adapter between a method's :class:`~hardneg.train.methods.base.MethodContext` and the
negatives package, which knows nothing of training: :class:`TrainSelector` (the run's rules, teacher cache
and diagnostics file), :func:`mine_with_model` (exact search of the corpus, shared out under torchrun) and
:func:`select_from_lists` (the rules over given candidate lists).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hardneg import distributed as dist
from hardneg.artifacts import corpus_index
from hardneg.devices import faiss_placement
from hardneg.index.faiss_index import FaissIndex
from hardneg.index.shards import sharded_encode_token_lists
from hardneg.negatives.diagnostics import DIAGNOSTICS_FILE, Diagnostics, write_diagnostics
from hardneg.negatives.rules import NegativeRules
from hardneg.negatives.sampling import mine_negatives
from hardneg.negatives.selection import select_negatives
from hardneg.negatives.sources import searched
from hardneg.negatives.teachers import TeacherScores, doc_texts, load_teacher

__all__ = ["TrainSelector", "mine_with_model", "select_from_lists"]


class TrainSelector:
    """The rules, teacher cache and diagnostics of one training run (static, star, ance, adore).

    ``ctx``: a :class:`~hardneg.train.methods.base.MethodContext`. The teacher is loaded on first use
    (a separate copy even when it names the start model, so it stays fixed while the model trains);
    its scores are cached under ``ctx.cache_dir``. Diagnostics go to ``OUT/negatives_diagnostics.json``.
    """

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.rules = NegativeRules.from_config(ctx.config)
        self.events: list[Diagnostics | dict] = []
        self._teacher: TeacherScores | None = None
        self._texts: dict[str, str] = {}

    @property
    def teacher(self) -> TeacherScores | None:
        if self.rules.teacher is None:
            return None
        if self._teacher is None:
            ctx = self.ctx
            t = load_teacher(self.rules.teacher, device=str(ctx.model.device),
                             batch_size=ctx.config.batch_encode_size)
            self._teacher = TeacherScores.under(t, ctx.cache_dir, ctx.dataset.fingerprint())
        return self._teacher

    def query_text(self) -> dict[str, str]:
        return {q: self.ctx.queries[q].text for q in self.ctx.train_qrels if q in self.ctx.queries}

    def doc_text(self, ids: Sequence[str]) -> dict[str, str]:
        missing = [d for d in ids if d not in self._texts]
        if missing:
            self._texts.update(doc_texts(self.ctx.dataset)(missing))
        return {d: self._texts[d] for d in ids}

    def _max_positives(self) -> int:
        return max(map(len, self.ctx.positives.values()), default=0)

    def select(self, candidates: Mapping[str, Sequence[tuple[str, float]]], where: str, *,
               positive_scores: Callable[[str, list[str]], Sequence[float]] | None = None, step: int = 0,
               default_n: int | None = None) -> dict[str, list[str]]:
        """The negatives of ``candidates`` under the run's rules; records one diagnostics event."""
        ctx = self.ctx
        n = default_n or ctx.config.topk
        diag = Diagnostics(self.rules, where, self.rules.num_negatives or n)
        diag.on_short = ("fewer in the pool; each training draw that needs more fills up with uniform random "
                         "negatives (StaticNegatives' fallback)")
        out = select_negatives(candidates, ctx.train_qrels, self.rules, default_n=n,
                               positive_scores=positive_scores, teacher=self.teacher,
                               query_text=self.query_text() if self.rules.teacher else None,
                               doc_text=self.doc_text, corpus=set(ctx.doc_ids) if self.rules.teacher else None,
                               seed=ctx.config.seed, step=step, diagnostics=diag, max_pos=self._max_positives())
        self.events.append(diag)
        self.write()
        return out

    def depth(self) -> int:
        """Documents to retrieve per query."""
        cfg = self.ctx.config
        if not self.rules.active:  # today's depth: the first n non-positives are all that is kept
            return (self.rules.num_negatives or cfg.topk) + self._max_positives()
        return self.rules.depth(cfg.topk, self._max_positives())

    @property
    def path(self) -> Path:
        return Path(self.ctx.config.out) / DIAGNOSTICS_FILE

    def write(self, extra: Sequence[Diagnostics] = ()) -> None:
        if dist.is_main():
            write_diagnostics(self.path, [*self.events, *extra])

    def state_files(self) -> dict[str, Path]:
        """The diagnostics so far, kept by every checkpoint (so a resumed run's file equals a straight run's)."""
        return {DIAGNOSTICS_FILE: self.path} if self.path.is_file() else {}

    def restore(self, checkpoint: Path) -> None:
        """The events recorded up to ``checkpoint`` replace those of this process (its setup's mining is
        among them), and the file is rewritten from them."""
        saved = Path(checkpoint) / DIAGNOSTICS_FILE
        if saved.is_file():
            self.events = list(json.loads(saved.read_text(encoding="utf-8"))["events"])
            self.write()


def _current_index(ctx: Any, model: Any) -> FaissIndex:
    """The corpus encoded with the current weights, in memory, never cached (shared out under torchrun)."""
    cfg = ctx.config
    with torch.no_grad():
        vectors = sharded_encode_token_lists(
            model, ctx.store.rows(range(len(ctx.store))), "doc", batch_size=cfg.batch_encode_size,
            show_progress=not cfg.quiet)
    return FaissIndex.build(vectors, ctx.doc_ids, "flat")


def mine_with_model(ctx: Any, model: Any, folder: Path | None = None, selector: TrainSelector | None = None,
                    step: int = 0) -> dict[str, list[str]]:
    """Top-``topk`` non-positive documents of every training query under ``model`` (dense, exact).

    ``ctx``: a :class:`~hardneg.train.methods.base.MethodContext` (or the trainer, which has the
    same fields: ``config``, ``queries``, ``train_qrels``, ``positives``, ``dataset``, ``cache_dir``,
    ``store``, ``doc_ids``). With the current weights (``folder`` given) under torchrun, the corpus
    encoding is shared out over the ranks (every rank then holds the whole index), each rank searches
    its share of the queries, and the mined lists are exchanged, so every rank returns all of them.

    ``selector``: the negatives are chosen by its rules (teacher, margins, window, sampling;
    :mod:`hardneg.negatives.rules`) and diagnosed; without it, the first ``topk`` non-positives. ``step``
    keys ``random`` sampling and names the event.

    Encoding runs on ``model``'s device (the trainer moved it to ``--device``); one process with the
    encoder on CUDA searches on GPU Faiss when the installed Faiss has GPUs."""
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
        index = _current_index(ctx, model)
        if dist.is_distributed():  # each rank searches its share of the queries; the lists are exchanged
            qids = sorted(train_queries)[dist.rank() :: dist.world_size()]
            run, pos_scores = searched(index, model, {q: train_queries[q] for q in qids}, k)
            mined = choose(run, {q: ctx.train_qrels[q] for q in qids}, pos_scores)
            merged: dict[str, list[str]] = {}
            for part in dist.all_gather_object(mined):
                merged.update(part)
            return {q: merged[q] for q in train_queries if q in merged}
    # one process only: FaissIndex.to_gpu puts the index on every GPU, from every rank under torchrun
    if not dist.is_distributed() and faiss_placement(model.device, quiet=True) == "gpu":
        index.to_gpu()  # (the trainer's setup warned once when a GPU run has only CPU Faiss)
    run, pos_scores = searched(index, model, train_queries, k)
    return choose(run, ctx.train_qrels, pos_scores)


def select_from_lists(ctx: Any, model: Any, lists: Mapping[str, Sequence[str]],
                      selector: TrainSelector) -> dict[str, list[str]]:
    """Apply ``selector``'s rules to given candidate lists (a ``--negatives`` file, BM25's run): the
    candidates are scored by the teacher, or else by ``model`` (the start model) over its cached index."""
    if selector.rules.teacher is not None:
        return selector.select({q: [(d, 0.0) for d in docs] for q, docs in lists.items()}, "given candidates")
    cfg = ctx.config
    index = corpus_index(model, ctx.dataset, "flat", ctx.cache_dir, batch_size=cfg.batch_encode_size,
                         show_progress=not cfg.quiet)
    queries = {q: ctx.queries[q] for q in lists if q in ctx.queries}
    _run, scorer = searched(index, model, queries, 1)
    scored = {q: list(zip(docs, scorer(q, list(docs)).tolist(), strict=True)) for q, docs in lists.items()
              if q in queries and docs}
    return selector.select(scored, "given candidates", positive_scores=scorer)
