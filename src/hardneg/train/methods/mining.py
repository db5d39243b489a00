"""A training run's negatives: its selection rules and mining with a dense model (the start model, or the
current weights), over :mod:`hardneg.negatives`.

This is the adapter between a method's :class:`~hardneg.train.methods.base.MethodContext` and the
negatives package, which knows nothing of training: :class:`TrainSelector` (the run's rules, teacher cache
and diagnostics file), :func:`mine_with_model` (exact search of the corpus) and :func:`select_from_lists`
(the rules over given candidate lists).

Under torchrun the work is shared by the ranks and nobody waits in a collective on another rank's long work:
the corpus is encoded shard by shard (:func:`hardneg.index.shards.encode_over_ranks`), the training queries
are cut into search units (:func:`query_units`: whole length-sorted encoding batches, the same in any number
of processes) and rank ``r`` encodes, searches (on its own GPU where Faiss has GPUs) and selects units
``r, r + N, …``; each rank writes its share to a file, a barrier waits for the other shares (equal work) and
every rank reads them all, in rank order. Every query's list is therefore bit for bit the one a single process
finds. The start model's negatives are written once, to ``OUT/warmup/negatives.tsv`` (by rank 0), and a rerun or
``--resume`` of the same run reads them back instead of mining again.

With ``--sampling-strategy simans`` or ``balanced`` the mining scores of every kept negative and of the positives
are kept too (:attr:`TrainSelector.scores`; exchanged with the lists, written next to them as ``scores.json``):
the weighted training draws use them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hardneg import distributed as dist
from hardneg.artifacts import corpus_index
from hardneg.devices import place_index
from hardneg.index.encode import embeddings_key
from hardneg.index.faiss_index import FaissIndex
from hardneg.index.shards import encode_over_ranks
from hardneg.io import atomic_write, read_json, write_json
from hardneg.model.encoding import encode_batches, encode_token_lists, length_sorted_batches
from hardneg.negatives.diagnostics import DIAGNOSTICS_FILE, Diagnostics, write_diagnostics
from hardneg.negatives.formats.files import write_negatives
from hardneg.negatives.formats.tsv import read_negatives
from hardneg.negatives.fusion import FusedScores, open_teacher
from hardneg.negatives.rules import NegativeRules
from hardneg.negatives.sampling import mine_negatives
from hardneg.negatives.selection import select_negatives
from hardneg.negatives.sources import QUERY_BATCH, positive_scorer
from hardneg.negatives.teachers import TeacherScores, doc_texts
from hardneg.retrieval.runs import run_from_arrays

__all__ = ["SEARCH_QUERIES", "TrainSelector", "WARMUP_DIR", "mine_with_model", "query_units", "select_from_lists"]

#: queries per search call, in whole query-encoding batches of :data:`~hardneg.negatives.sources.QUERY_BATCH`: the
#: units are the same in any number of processes, so each query's vector and list are those of one process
SEARCH_QUERIES = 4096
#: ``OUT/warmup/``: the start model's mined negatives (``negatives.tsv``) and what made them (``manifest.json``)
WARMUP_DIR = "warmup"
#: ``OUT/.mining/``: each rank's share of a mining under torchrun, exchanged through files (removed once read)
PARTS_DIR = ".mining"
#: SimANS' mining scores next to a negatives file (``qid -> {docid: score}``: kept negatives and positives)
SCORES_FILE = "scores.json"


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
        self._teacher: TeacherScores | FusedScores | None = None
        self._texts: dict[str, str] = {}
        self._corpus: set[str] | None = None  # the corpus's ids, for the teacher's positives (made once)
        self._query_text: dict[str, str] | None = None
        #: ``qid -> {docid: mining score}`` of the latest selection's kept negatives and positives (SimANS only)
        self.scores: dict[str, dict[str, float]] = {}

    @property
    def teacher(self) -> TeacherScores | FusedScores | None:
        if self.rules.teacher is None:
            return None
        if self._teacher is None:
            ctx = self.ctx
            self._teacher = open_teacher(self.rules.teacher, dataset=ctx.dataset, cache_dir=ctx.cache_dir,
                                         device=str(ctx.model.device), batch_size=ctx.config.batch_encode_size)
        return self._teacher

    def query_text(self) -> dict[str, str]:
        if self._query_text is None:
            self._query_text = {q: self.ctx.queries[q].text for q in self.ctx.train_qrels if q in self.ctx.queries}
        return self._query_text

    def doc_text(self, ids: Sequence[str]) -> dict[str, str]:
        missing = [d for d in ids if d not in self._texts]
        if missing:
            self._texts.update(doc_texts(self.ctx.dataset)(missing))
        return {d: self._texts[d] for d in ids}

    def _max_positives(self) -> int:
        return max(map(len, self.ctx.positives.values()), default=0)

    def new_diagnostics(self, where: str, default_n: int | None = None) -> Diagnostics:
        """An empty diagnostics event for :meth:`select` calls that are recorded as one (:meth:`record`)."""
        n = default_n or self.ctx.config.topk
        diag = Diagnostics(self.rules, where, self.rules.num_negatives or n)
        diag.on_short = ("fewer in the pool; each training draw that needs more fills up with uniform random "
                         "negatives (StaticNegatives' fallback)")
        return diag

    def select(self, candidates: Mapping[str, Sequence[tuple[str, float]]], where: str, *,
               positive_scores: Callable[[str, list[str]], Sequence[float]] | None = None, step: int = 0,
               default_n: int | None = None, diagnostics: Diagnostics | None = None,
               scores_out: dict[str, dict[str, float]] | None = None) -> dict[str, list[str]]:
        """The negatives of ``candidates`` under the run's rules; records one diagnostics event, or adds to
        ``diagnostics`` (from :meth:`new_diagnostics`; the caller records it). ``scores_out``: filled with the
        kept negatives' and positives' scores (:func:`~hardneg.negatives.selection.select_negatives`)."""
        ctx = self.ctx
        n = default_n or ctx.config.topk
        diag = diagnostics if diagnostics is not None else self.new_diagnostics(where, default_n)
        teacher = self.rules.teacher is not None
        if teacher and self._corpus is None:
            self._corpus = set(ctx.doc_ids)
        out = select_negatives(candidates, ctx.train_qrels, self.rules, default_n=n,
                               positive_scores=positive_scores, teacher=self.teacher,
                               query_text=self.query_text() if teacher else None,
                               doc_text=self.doc_text, corpus=self._corpus if teacher else None,
                               seed=ctx.config.seed, step=step, diagnostics=diag, max_pos=self._max_positives(),
                               scores_out=scores_out)
        if diagnostics is None:
            self.record(diag)
        return out

    def record(self, event: Diagnostics | dict) -> None:
        """Add one diagnostics event (a summary read back is a dict) and rewrite the file (rank 0)."""
        self.events.append(event)
        self.write()

    def depth(self) -> int:
        """Documents to retrieve per query."""
        return self.rules.retrieval_depth(self.ctx.config.topk, self._max_positives())

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


# ----------------------------------------------------------------------------- queries, shared out
def query_units(model: Any, texts: Sequence[str]) -> tuple[list[list[int]], list[list[np.ndarray]]]:
    """The query tower's token ids of ``texts`` and the search units over them: the length-sorted encoding
    batches of :data:`~hardneg.negatives.sources.QUERY_BATCH` (those one ``encode_queries`` call makes, so each
    vector is bit for bit its own), :data:`SEARCH_QUERIES` queries (whole batches) per unit."""
    tokens = model.tokenize(list(texts), "query")["input_ids"] if len(texts) else []
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    batches = length_sorted_batches(lengths, QUERY_BATCH)
    per = max(1, SEARCH_QUERIES // QUERY_BATCH)
    return tokens, [batches[i : i + per] for i in range(0, len(batches), per)]


def _my_vectors(model: Any, qids: Sequence[str], texts: Sequence[str], desc: str,
                show_progress: bool, precision: str = "fp32") -> Iterator[tuple[list[str], np.ndarray]]:
    """``(query ids, their vectors)`` of this rank's search units (units ``r, r + N, …``; all of them in one
    process), encoded batch by batch in eval mode, the forward passes at ``precision``."""
    tokens, units = query_units(model, texts)
    model.eval()
    mine = units[dist.rank() :: dist.world_size()]
    for unit in tqdm(mine, desc=desc, unit="unit", disable=not show_progress or len(mine) < 2):
        with torch.inference_mode():
            parts = [emb.float().cpu().numpy() for _, emb in encode_batches(
                model, lambda rows: [tokens[i] for i in rows], unit, "query", precision=precision)]
        yield [qids[i] for i in np.concatenate(unit)], np.concatenate(parts)


def _diagnostics_state(diag: Diagnostics | None) -> dict | None:
    if diag is None:
        return None
    return {"queries": diag.queries, "candidates": diag.candidates, "kept": diag.kept, "removed": dict(diag.removed),
            "short": dict(diag.short), "no_positive_score": diag.no_positive_score,
            "scores": {k: [float(x) for x in v] for k, v in diag.scores.items()}}


def _merge_diagnostics(into: Diagnostics, states: Sequence[dict]) -> Diagnostics:
    """``into`` (empty) holding every rank's share: the counts add up, the score lists are joined, so its summary
    is that of one pass over every query (the histograms do not depend on the order)."""
    for state in states:
        into.queries += state["queries"]
        into.candidates += state["candidates"]
        into.kept += state["kept"]
        for rule, v in state["removed"].items():
            into.removed[rule] += v
        into.short.update(state["short"])
        into.no_positive_score += state["no_positive_score"]
        for key, v in state["scores"].items():
            into.scores[key].extend(v)
    return into


def _exchange(folder: Path, mine: dict[str, list[str]], diag: Diagnostics | None,
              scores: dict[str, dict[str, float]] | None = None) -> tuple[dict[str, list[str]], list[dict]]:
    """Every rank's share, on every rank: ``(lists of all queries, diagnostics states)``, the states on rank 0
    only. Each rank writes its share to ``folder``; a barrier waits for the others' shares (the same number
    of search units, so roughly the same work), then every rank reads them all in rank order; rank 0 removes
    the files once everyone has read them. ``scores`` (SimANS): this rank's, updated in place with every rank's."""
    if not dist.is_distributed():
        return mine, []
    n, me = dist.world_size(), dist.rank()
    # JSON, not pickle: nothing read back can run code; floats round-trip exactly (repr)
    with atomic_write(folder / f"part-{me}-of-{n}.json", "w") as fh:
        json.dump({"lists": mine, "diagnostics": _diagnostics_state(diag), "scores": scores}, fh)
    dist.barrier()
    merged: dict[str, list[str]] = {}
    states: list[dict] = []
    for r in range(n):
        with open(folder / f"part-{r}-of-{n}.json", encoding="utf-8") as fh:
            part = json.load(fh)  # written just now by this run's rank r
        merged.update(part["lists"])
        if scores is not None:
            scores.update(part["scores"])
        if part["diagnostics"] is not None and dist.is_main():
            states.append(part["diagnostics"])
    dist.barrier()  # every rank has read every part
    if dist.is_main():
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # OUT/.mining, when no other mining's parts are in it
    return merged, states


def _shared_selection(ctx: Any, qids: Sequence[str], mine: dict[str, list[str]], diag: Diagnostics | None,
                      selector: TrainSelector | None, tag: str,
                      scores: dict[str, dict[str, float]] | None = None) -> dict[str, list[str]]:
    """Every query's list (in ``qids`` order) from this rank's ``mine``; the diagnostics of all ranks recorded
    as one event (rank 0); ``scores`` (SimANS) of all ranks become ``selector.scores``."""
    merged, states = _exchange(Path(ctx.config.out) / PARTS_DIR / tag, mine, diag, scores)
    if selector is not None and scores is not None:
        selector.scores = {q: scores[q] for q in qids if q in scores}
    if selector is not None and diag is not None:
        if dist.is_distributed():
            diag = _merge_diagnostics(selector.new_diagnostics(diag.where), states) if dist.is_main() else diag
        selector.record(diag)
    return {q: merged[q] for q in qids if q in merged}


# ----------------------------------------------------------------------------- the corpus
def _current_index(ctx: Any, model: Any, folder: Path) -> FaissIndex:
    """The corpus encoded with the current weights, never cached: in memory in one process; under torchrun
    shard by shard into ``folder`` (removed after the refresh), merged once, every rank indexing the result."""
    cfg = ctx.config
    if not dist.is_distributed():
        vectors = encode_token_lists(model, ctx.store.rows(range(len(ctx.store))), "doc",
                                     batch_size=cfg.batch_encode_size, show_progress=not cfg.quiet,
                                     precision=cfg.precision)
        return FaissIndex.build(vectors, ctx.doc_ids, "flat")
    key = embeddings_key(model.side_identity("doc"), ctx.store.manifest, "doc", cfg.precision)
    emb = encode_over_ranks(model, ctx.store, "doc", folder / key, batch_size=cfg.batch_encode_size,
                            show_progress=not cfg.quiet, precision=cfg.precision)
    return FaissIndex.from_embeddings(emb, "flat")


def _start_index(ctx: Any, model: Any) -> FaissIndex:
    """The start model's flat corpus index: cached like any retrieval, its encoding shared out over the ranks."""
    cfg = ctx.config
    return corpus_index(model, ctx.dataset, "flat", ctx.cache_dir, batch_size=cfg.batch_encode_size,
                        show_progress=not cfg.quiet, over_ranks=True, precision=cfg.precision)


# ----------------------------------------------------------------------------- the warm-up's file
def _warmup_keys(ctx: Any, model: Any, k: int) -> list[str]:
    """What the start model's negatives depend on: the run's settings, both towers, the corpus, the training
    qrels, the search depth and the search units. The first key is written; the others (the settings' older
    fingerprint, :meth:`~hardneg.train.config.TrainConfig.fingerprints`) are accepted, so a run from before resumes
    with the negatives it mined."""
    qrels = sorted((q, sorted((d, int(g)) for d, g in docs.items())) for q, docs in ctx.train_qrels.items())
    keys = []
    for fingerprint in ctx.config.fingerprints():
        raw = json.dumps([fingerprint, model.side_identity("query"), model.side_identity("doc"),
                          ctx.dataset.fingerprint(), qrels, k, QUERY_BATCH, SEARCH_QUERIES], sort_keys=True,
                         default=str)
        keys.append(hashlib.sha256(raw.encode()).hexdigest()[:16])
    return keys


def _warmup_found(folder: Path, keys: list[str], scores: bool = False) -> bool:
    manifest = folder / "manifest.json"
    return (manifest.is_file() and (folder / "negatives.tsv").is_file() and read_json(manifest).get("key") in keys
            and (not scores or (folder / SCORES_FILE).is_file()))


def _write_warmup(folder: Path, key: str, lists: Mapping[str, Sequence[str]], diag: Diagnostics | None,
                  scores: Mapping[str, Mapping[str, float]] | None = None) -> None:
    """``negatives.tsv`` (and SimANS' ``scores.json``), then ``manifest.json`` (the mark that it is finished;
    removed first)."""
    (folder / "manifest.json").unlink(missing_ok=True)
    write_negatives(folder / "negatives.tsv", lists)
    if scores is not None:
        write_json(folder / SCORES_FILE, scores)
    write_json(folder / "manifest.json", {"key": key, "queries": len(lists),
                                          "diagnostics": diag.summary() if diag is not None else None})


# ----------------------------------------------------------------------------- mining
def mine_with_model(ctx: Any, model: Any, folder: Path | None = None, selector: TrainSelector | None = None,
                    step: int = 0) -> dict[str, list[str]]:
    """Top-``topk`` non-positive documents of every training query under ``model`` (dense, exact).

    ``ctx``: a :class:`~hardneg.train.methods.base.MethodContext` (or the trainer, which has the
    same fields: ``config``, ``queries``, ``train_qrels``, ``positives``, ``dataset``, ``cache_dir``,
    ``store``, ``doc_ids``). ``folder`` given: the current weights (ANCE's refresh; under torchrun their
    corpus encoding goes through ``folder``); else the start model, whose corpus index is cached and whose
    negatives are written to ``OUT/warmup/`` and read back by a rerun of the same run.

    Under torchrun every rank calls this: the corpus encoding and the queries are shared out over the ranks
    (see the module's docstring) and every rank returns all the lists, equal to one process's.

    ``selector``: the negatives are chosen by its rules (teacher, margins, window, sampling;
    :mod:`hardneg.negatives.rules`) and diagnosed; without it, the first ``topk`` non-positives. ``step``
    keys ``random`` sampling and names the event.

    Encoding runs on ``model``'s device (the trainer moved it to ``--device``); with the encoder on CUDA the
    index is searched on GPU Faiss when the installed Faiss has GPUs (:func:`hardneg.devices.place_index`:
    under torchrun each rank's index on its own GPU)."""
    cfg = ctx.config
    qids = list(ctx.train_qrels)
    k = selector.depth() if selector is not None else cfg.topk + max(len(p) for p in ctx.positives.values())
    where = "start model" if folder is None else f"refresh at step {step}"
    warmup = Path(cfg.out) / WARMUP_DIR
    keys = _warmup_keys(ctx, model, k) if folder is None else [""]
    key = keys[0]
    simans = selector is not None and selector.rules.weighted
    if folder is None and dist.broadcast_object(_warmup_found(warmup, keys, simans)):  # rank 0's view decides
        lists = read_negatives(warmup / "negatives.tsv")
        summary = read_json(warmup / "manifest.json").get("diagnostics")
        if selector is not None and summary is not None:
            selector.record(summary)
        if simans:
            assert selector is not None
            selector.scores = read_json(warmup / SCORES_FILE)
        return {q: lists.get(q, []) for q in qids}  # a query mined with no negative has no line in the file

    index = _start_index(ctx, model) if folder is None else _current_index(ctx, model, Path(folder))
    place_index(index, model.device)
    diag = selector.new_diagnostics(where) if selector is not None else None
    mine: dict[str, list[str]] = {}
    kept: dict[str, dict[str, float]] | None = {} if simans else None
    try:
        for unit_qids, qv in _my_vectors(model, qids, [ctx.queries[q].text for q in qids], "mine",
                                         not cfg.quiet and dist.is_main(), cfg.precision):
            scores, rows = index.search(qv, k)
            run = run_from_arrays(unit_qids, index.ids, scores, rows)
            if selector is None:
                mine.update(mine_negatives(run, ctx.train_qrels, cfg.topk))
            else:
                mine.update(selector.select(run, where, positive_scores=positive_scorer(index, unit_qids, qv),
                                            step=step, diagnostics=diag, scores_out=kept))
    finally:
        index.release_gpu()
    out = _shared_selection(ctx, qids, mine, diag, selector, "start" if folder is None else f"step-{step}", kept)
    if folder is not None and dist.is_distributed() and dist.is_main():
        shutil.rmtree(folder, ignore_errors=True)  # the refresh's embeddings (every rank has indexed them)
    if folder is None and dist.is_main():
        event = selector.events[-1] if selector is not None else None
        _write_warmup(warmup, key, out, event if isinstance(event, Diagnostics) else None,
                      selector.scores if simans and selector is not None else None)
    return out


def select_from_lists(ctx: Any, model: Any, lists: Mapping[str, Sequence[str]],
                      selector: TrainSelector) -> dict[str, list[str]]:
    """Apply ``selector``'s rules to given candidate lists (a ``--negatives`` file, BM25's run): the
    candidates are scored by the teacher, or else by ``model`` (the start model) over its cached index.
    Under torchrun every rank calls this and selects its share of the queries."""
    where = "given candidates"
    diag = selector.new_diagnostics(where)
    mine: dict[str, list[str]] = {}
    kept: dict[str, dict[str, float]] | None = {} if selector.rules.weighted else None
    if selector.rules.teacher is not None:
        qids = list(lists)
        share = qids[dist.rank() :: dist.world_size()]
        mine = selector.select({q: [(d, 0.0) for d in lists[q]] for q in share}, where, diagnostics=diag,
                               scores_out=kept)
        return _shared_selection(ctx, qids, mine, diag, selector, "given", kept)
    cfg = ctx.config
    index = _start_index(ctx, model)
    qids = [q for q in lists if q in ctx.queries]
    for unit_qids, qv in _my_vectors(model, qids, [ctx.queries[q].text for q in qids], "score candidates",
                                     not cfg.quiet and dist.is_main(), cfg.precision):
        scorer = positive_scorer(index, unit_qids, qv)
        scored = {q: list(zip(lists[q], scorer(q, list(lists[q])).tolist(), strict=True))
                  for q in unit_qids if lists[q]}
        mine.update(selector.select(scored, where, positive_scores=scorer, diagnostics=diag, scores_out=kept))
    return _shared_selection(ctx, [q for q in qids if lists[q]], mine, diag, selector, "given", kept)
