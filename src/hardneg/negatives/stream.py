"""``hardneg mine`` in query chunks: bounded memory, resumable, the same bytes as one pass.

The training queries are taken in their dataset order, ``chunk_size`` at a time. For each chunk:
retrieval (BM25's search of that chunk; dense: a search of the chunk's query vectors), selection by
the rules (:func:`~hardneg.negatives.selection.select_negatives`; ``random`` sampling is keyed per query,
so a query's draw does not depend on its chunk), and the chunk's finished records are appended to
``<out>.partial/negatives.part``. After every chunk ``<out>.partial/progress.json`` is committed
(data fsync'ed first, then the progress file atomically replaced): the chunks done, the data file's
byte offset, the diagnostics counters so far and the settings' fingerprint. A rerun with the same
settings truncates the data to the recorded offset and continues with the next chunk; other
settings discard the partial state (logged) and start over. At the end the output is published by
an atomic rename (``tsv``) or an atomic write (``st``/``tevatron``) and the partial folder removed.

What stays in memory: one chunk's run and selections, the query ids, the dataset's own query and
qrels objects. The diagnostics' score lists go to ``<out>.partial/scores-*.f8`` (float64) and the
histogram is computed from them at the end, blockwise, exactly as
:meth:`~hardneg.negatives.diagnostics.Diagnostics.summary` does over lists in memory
(:class:`~hardneg.negatives.diagnostics.StreamDiagnostics`).

Byte parity with one pass
-------------------------
* BM25 scores each query on its own: chunking cannot change its run.
* Dense: query vectors are encoded once, in the same length-sorted batches (of
  :data:`~hardneg.negatives.sources.QUERY_BATCH`) as an un-chunked call, into
  ``<out>.partial/queries/embeddings.npy`` (resumable,
  :func:`~hardneg.negatives.sources.encode_query_vectors`), so every vector is bitwise the one a single
  call gives (a batch's padding and kernel shapes would otherwise differ); chunks are rounded up to a
  multiple of :data:`SEARCH_BLOCK`, the query block :meth:`FaissIndex.search` searches at once, so Faiss
  sees exactly the calls an un-chunked search makes.
* ``tsv`` records are the final lines. ``st``/``tevatron`` need document texts and (``st``) the
  longest list over all queries, so the partial file holds id records (``[qid, [docid, ...]]``
  JSON lines) and the final file is written from it at the end:
  :func:`hardneg.negatives.formats.writer.write_negative_file_streamed` (texts looked up through a
  temporary SQLite table filled by one pass over the corpus). A ``datasets`` folder (``st`` without a
  ``.jsonl`` suffix) is built from those rows at the end (``Dataset.from_list``: that last step holds the
  rows in memory).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardneg.errors import HardnegError
from hardneg.io import fsync_dir, read_json, write_json, writing
from hardneg.negatives.diagnostics import Diagnostics, StreamDiagnostics, write_diagnostics
from hardneg.negatives.formats.common import check_format, check_output
from hardneg.negatives.formats.tsv import tsv_records
from hardneg.negatives.formats.writer import write_negative_file_streamed
from hardneg.negatives.fusion import FusedScores, open_teacher
from hardneg.negatives.rules import NegativeRules
from hardneg.negatives.selection import max_positives, select_negatives
from hardneg.negatives.sources import QUERY_BATCH, bm25_positive_scorer, dense_chunk, encode_query_vectors, mining_index
from hardneg.negatives.teachers import TeacherScores, doc_texts

__all__ = ["CHUNK_SIZE", "SEARCH_BLOCK", "mine_streamed", "read_id_records"]

logger = logging.getLogger("hardneg")

#: queries per chunk (default of ``hardneg mine --chunk-size``)
CHUNK_SIZE = 4096
#: queries per Faiss search call (:meth:`hardneg.index.faiss_index.FaissIndex.search`'s default)
SEARCH_BLOCK = 4096
STATE_VERSION = 1
#: test hook: called with the number of chunks done after each chunk is committed
after_chunk: Callable[[int], None] | None = None


# ----------------------------------------------------------------------------- records and fingerprints
def _hash_queries(qids: Sequence[str], queries: Mapping, qrels: Mapping) -> str:
    h = hashlib.sha256()
    for q in qids:
        h.update(f"{q}\x00{queries[q].text}\x00".encode())
        h.update(json.dumps(list(qrels.get(q, {}).items())).encode())
    return h.hexdigest()[:32]


def _records_ids(chunk: dict[str, list[str]]) -> str:
    return "".join(json.dumps([qid, docs], ensure_ascii=False) + "\n" for qid, docs in chunk.items())


def read_id_records(path: Path) -> Iterator[tuple[str, list[str]]]:
    """The ``[qid, [docid, ...]]`` lines of a partial file, in order."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            qid, docs = json.loads(line)
            yield qid, docs


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- one mining job
@dataclass
class _Job:
    """What one ``hardneg mine`` run mines: its data, rules, depths and paths."""

    dataset: Any
    qrels: Mapping
    queries: Mapping
    model: str
    rules: NegativeRules
    topk: int
    out: Path
    file_format: str
    seed: int

    def __post_init__(self) -> None:
        self.qids = list(self.queries)
        self.max_pos = max_positives(self.qrels)
        self.n = self.rules.num_negatives or self.topk
        self.k = self.rules.retrieval_depth(self.topk, self.max_pos)
        self.partial = self.out.with_name(f"{self.out.name}.partial")
        self.progress_file = self.partial / "progress.json"
        self.data_file = self.partial / "negatives.part"

    def diagnostics(self) -> Diagnostics:
        diag = Diagnostics(self.rules, f"hardneg mine --model {self.model}", self.n)
        diag.on_short = "fewer negatives written for those queries"
        return diag


@dataclass
class _Retriever:
    """BM25 (``bm25``), or a dense encoder with its corpus index; ``identity`` names it in the fingerprint."""

    identity: Any
    bm25: Any = None
    encoder: Any = None
    index: Any = None

    @classmethod
    def open(cls, job: _Job, cache_dir: Path, open_encoder: Callable[[], Any], batch_size: int,
             show_progress: bool) -> _Retriever:
        if job.model == "bm25":
            from hardneg.retrieval.bm25 import cached_bm25

            return cls({"bm25": "default"}, bm25=cached_bm25(job.dataset, cache_dir))
        encoder, index = mining_index(open_encoder, job.dataset, cache_dir, batch_size, show_progress)
        return cls({"query": encoder.side_identity("query"), "doc": encoder.side_identity("doc")},
                   encoder=encoder, index=index)

    def chunk(self, job: _Job, part: list[str], start: int, vectors: Any):
        """``(run, positive_scores)`` of the queries ``part`` (rows ``start…`` of the dense ``vectors``)."""
        if self.bm25 is not None:
            return (self.bm25.search({q: job.queries[q] for q in part}, k=job.k, show_progress=False),
                    bm25_positive_scorer(self.bm25, job.queries))
        return dense_chunk(self.index, vectors, part, start, job.k, SEARCH_BLOCK)


def _fingerprint(job: _Job, retriever: _Retriever, queries_key: str, chunk_size: int, settings: dict | None) -> str:
    return _digest({
        "version": STATE_VERSION, "model": job.model, "retriever": retriever.identity,
        "corpus": job.dataset.fingerprint(), "queries": queries_key, "rules": job.rules.describe(),
        "topk": job.topk, "k": job.k, "format": job.file_format, "chunk": chunk_size, "seed": job.seed,
        "settings": settings or {}, "search_block": SEARCH_BLOCK, "query_batch": QUERY_BATCH,
    })


# ----------------------------------------------------------------------------- the partial state
def _saved_state(job: _Job, fingerprint: str) -> dict | None:
    """The committed progress of an earlier run with the same settings, or ``None`` (start over)."""
    if not job.progress_file.is_file():
        return None
    saved = None
    with contextlib.suppress(OSError, ValueError):
        saved = read_json(job.progress_file)
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        logger.warning("%s: the partial mining there was made with other settings (model, data, rules, "
                       "format or chunk size); discarding it and starting over", job.partial)
        return None
    if not job.data_file.is_file() or job.data_file.stat().st_size < saved["offset"]:
        logger.warning("%s: the partial negatives file is missing or short; starting over", job.partial)
        return None
    return saved


def _clear_partial(partial: Path) -> None:
    """Empty the partial folder, keeping its query vectors (they carry their own key: kept if it still fits)."""
    queries_dir = partial / "queries"
    keep = None
    if queries_dir.is_dir():
        keep = partial.with_name(f"{partial.name}.keep-{os.getpid()}")
        os.replace(queries_dir, keep)
    shutil.rmtree(partial)
    partial.mkdir(parents=True)
    if keep is not None:
        os.replace(keep, queries_dir)


def _open_partial(job: _Job, fingerprint: str, chunks: int) -> tuple[dict, StreamDiagnostics]:
    """The state to continue from (a saved one, its data truncated to the committed offset) or a fresh one."""
    saved = _saved_state(job, fingerprint)
    if saved is None and job.partial.exists():
        _clear_partial(job.partial)
    with writing(job.partial, "partial negatives"):
        job.partial.mkdir(parents=True, exist_ok=True)
        diag = StreamDiagnostics(job.diagnostics(), job.partial)
        if saved is None:
            job.data_file.write_bytes(b"")
            diag.restore({}, fresh=True)
            state = {"fingerprint": fingerprint, "chunks_done": 0, "offset": 0, "queries": 0, "negatives": 0,
                     "longest": 0, "teacher": {"scored": 0, "hits": 0}, "diagnostics": diag.counts}
            write_json(job.progress_file, state)
        else:
            state = saved
            with open(job.data_file, "r+b") as fh:
                fh.truncate(state["offset"])
            diag.restore(state["diagnostics"], fresh=False)
            logger.info("%s: resuming after %d of %d chunks", job.out, state["chunks_done"], chunks)
    return state, diag


def _commit_chunk(job: _Job, state: dict, diag: StreamDiagnostics, chunk_diag: Diagnostics,
                  selected: dict[str, list[str]], done: int) -> None:
    """Append the chunk's records (fsync'ed), then commit the progress that counts them."""
    records = tsv_records if job.file_format == "tsv" else _records_ids
    blob = records(selected).encode("utf-8")
    with writing(job.out, "negatives"):
        with open(job.data_file, "ab") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        diag.add(chunk_diag)
        state["chunks_done"] = done
        state["offset"] += len(blob)
        state["queries"] += len(selected)
        state["negatives"] += sum(map(len, selected.values()))
        state["longest"] = max([state["longest"], *map(len, selected.values())])
        state["diagnostics"] = diag.counts
        write_json(job.progress_file, state)


# ----------------------------------------------------------------------------- the run
def _mine_chunks(job: _Job, retriever: _Retriever, state: dict, diag: StreamDiagnostics, chunk_size: int,
                 vectors: Any, teacher: TeacherScores | FusedScores | None, show_progress: bool) -> None:
    """Mine, select and commit every chunk not done yet."""
    from tqdm.auto import tqdm

    corpus = job.dataset.doc_ids() if teacher is not None else None
    doc_text = doc_texts(job.dataset)
    chunks = range(0, len(job.qids), chunk_size)
    with tqdm(total=len(chunks), initial=state["chunks_done"], desc="mine", unit="chunk",
              disable=not show_progress, mininterval=1.0) as bar:
        for c in range(state["chunks_done"], len(chunks)):
            part = job.qids[chunks[c]:chunks[c] + chunk_size]
            run, positive_scores = retriever.chunk(job, part, chunks[c], vectors)
            chunk_diag = Diagnostics(job.rules, diag.template.where, job.n)
            hits, scored = (teacher.hits, teacher.scored) if teacher is not None else (0, 0)
            selected = select_negatives(run, job.qrels, job.rules, default_n=job.topk,
                                        positive_scores=positive_scores, teacher=teacher,
                                        query_text={q: job.queries[q].text for q in run}, doc_text=doc_text,
                                        corpus=corpus, seed=job.seed, diagnostics=chunk_diag, max_pos=job.max_pos)
            if teacher is not None:  # this chunk's pairs are never asked for again in this run
                state["teacher"]["hits"] += teacher.hits - hits
                state["teacher"]["scored"] += teacher.scored - scored
                teacher.forget(run)
            _commit_chunk(job, state, diag, chunk_diag, selected, c + 1)
            bar.update(1)
            del run, selected
            if after_chunk is not None:
                after_chunk(c + 1)


def _publish(job: _Job, state: dict, diag: StreamDiagnostics, teacher: TeacherScores | FusedScores | None,
             diagnostics_path: str | Path | None) -> dict[str, int] | None:
    """Write the diagnostics, then the output (tsv: renamed into place; else written from the id records)."""
    if diagnostics_path is not None:
        summary = diag.summary()
        if teacher is not None:
            summary["teacher"] = {"name": job.rules.teacher, "kind": teacher.teacher.kind,
                                  "fingerprint": teacher.teacher.fingerprint, "scored": state["teacher"]["scored"],
                                  "cache_hits": state["teacher"]["hits"]}
        write_diagnostics(diagnostics_path, [summary])
    if job.file_format != "tsv":
        return write_negative_file_streamed(job.out, lambda: read_id_records(job.data_file), job.file_format,
                                            dataset=job.dataset, qrels=job.qrels, longest=state["longest"],
                                            work_dir=job.partial)
    with writing(job.out, "negatives"):
        with open(job.data_file, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(job.data_file, job.out)
    fsync_dir(job.out.parent)
    return None


def _check_chunk_size(chunk_size: Any) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise HardnegError(f"--chunk-size must be a whole number >= 1, not {chunk_size!r}")
    return chunk_size


def mine_streamed(dataset, qrels, queries, model: str, rules: NegativeRules, topk: int, cache_dir: Path,
                  out: str | Path, file_format: str = "tsv", *, open_encoder: Callable[[], Any],
                  batch_size: int = 64, show_progress: bool = False, device: str | None = None, seed: int = 0,
                  diagnostics_path: str | Path | None = None, chunk_size: int = CHUNK_SIZE,
                  settings: dict | None = None) -> dict[str, Any]:
    """Mine, select and write the negatives of every query of ``queries`` to ``out`` (see the module doc).

    ``model``: a dense model (opened by ``open_encoder``) or ``bm25``. ``settings``: anything else that shapes
    the output (e.g. the model's max length), part of the fingerprint a resumed run must match. Returns
    ``{"queries", "negatives", "stats"}`` (``stats``: the st/tevatron writer's counts, ``None`` for tsv)."""
    check_format(file_format)
    chunk_size = _check_chunk_size(chunk_size)
    out = Path(out)
    if file_format != "tsv":
        check_output(out)
    job = _Job(dataset, qrels, queries, model, rules, topk, out, file_format, seed)
    retriever = _Retriever.open(job, cache_dir, open_encoder, batch_size, show_progress)
    if retriever.encoder is not None and chunk_size % SEARCH_BLOCK:  # Faiss must see one search's calls
        chunk_size = -(-chunk_size // SEARCH_BLOCK) * SEARCH_BLOCK
        logger.info("dense mining: chunks of %d queries (a multiple of the search block)", chunk_size)
    queries_key = _hash_queries(job.qids, queries, qrels)
    state, diag = _open_partial(job, _fingerprint(job, retriever, queries_key, chunk_size, settings),
                                -(-len(job.qids) // chunk_size))
    vectors = None
    if retriever.encoder is not None and state["chunks_done"] * chunk_size < len(job.qids):
        vectors_key = _digest([retriever.identity, queries_key, QUERY_BATCH])
        vectors = encode_query_vectors(job.partial / "queries", retriever.encoder, job.qids, queries, vectors_key,
                                       show_progress)
    teacher = None
    if rules.teacher is not None:
        teacher = open_teacher(rules.teacher, dataset=dataset, cache_dir=cache_dir, device=device,
                               batch_size=batch_size)
    _mine_chunks(job, retriever, state, diag, chunk_size, vectors, teacher, show_progress)
    del vectors
    stats = _publish(job, state, diag, teacher, diagnostics_path)
    shutil.rmtree(job.partial, ignore_errors=True)
    return {"queries": state["queries"], "negatives": state["negatives"], "stats": stats}
