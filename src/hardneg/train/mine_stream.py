"""``hardneg mine`` in query chunks: bounded memory, resumable, the same bytes as one pass.

The training queries are taken in their dataset order, ``chunk_size`` at a time. For each chunk:
retrieval (BM25's search of that chunk; dense: a search of the chunk's query vectors), selection by
the rules (:func:`~hardneg.train.selection.select_negatives`; ``random`` sampling is keyed per query,
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
:meth:`~hardneg.train.selection.Diagnostics.summary` does over lists in memory.

Byte parity with one pass
-------------------------
* BM25 scores each query on its own: chunking cannot change its run.
* Dense: query vectors are encoded once, in the same length-sorted batches (of
  :data:`QUERY_BATCH`) as an un-chunked call, into ``<out>.partial/queries/embeddings.npy``
  (resumable, :func:`hardneg.index.encode.encode_batches_resumable`), so every vector is bitwise the
  one a single call gives (a batch's padding and kernel shapes would otherwise differ); chunks are
  rounded up to a multiple of :data:`SEARCH_BLOCK`, the query block :meth:`FaissIndex.search` searches
  at once, so Faiss sees exactly the calls an un-chunked search makes.
* ``tsv`` records are the final lines. ``st``/``tevatron`` need document texts and (``st``) the
  longest list over all queries, so the partial file holds id records (``[qid, [docid, ...]]``
  JSON lines) and the final file is written from it at the end:
  :func:`hardneg.train.negative_files.write_negative_file_streamed` (texts looked up through a
  temporary SQLite table filled by one pass over the corpus). A ``datasets`` folder (``st`` without a
  ``.jsonl`` suffix) is built from those rows at the end (``Dataset.from_list``, as before: that last
  step holds the rows in memory).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.errors import HardnegError
from hardneg.io import _fsync_dir, read_json, write_json, writing

__all__ = ["CHUNK_SIZE", "SEARCH_BLOCK", "StreamDiagnostics", "mine_streamed"]

logger = logging.getLogger("hardneg")

#: queries per chunk (default of ``hardneg mine --chunk-size``)
CHUNK_SIZE = 4096
#: queries per Faiss search call (:meth:`hardneg.index.faiss_index.FaissIndex.search`'s default)
SEARCH_BLOCK = 4096
#: the query-encoding batch of :func:`hardneg.retrieval.dense.encode_queries` (what ``mine`` always used)
QUERY_BATCH = 128
STATE_VERSION = 1
SCORE_KEYS = ("positive", "kept", "removed")
#: test hook: called with the number of chunks done after each chunk is committed
after_chunk: Callable[[int], None] | None = None


# ----------------------------------------------------------------------------- diagnostics
class StreamDiagnostics:
    """:class:`~hardneg.train.selection.Diagnostics` over many chunks: counters in memory, the score lists
    appended to files; :meth:`summary` equals ``Diagnostics.summary()`` of one pass over every query."""

    def __init__(self, template, folder: Path) -> None:
        self.template = template  # a Diagnostics: rules, where, n, on_short
        self.folder = folder
        self.counts: dict[str, Any] = {"queries": 0, "candidates": 0, "kept": 0,
                                       "removed": dict(template.removed), "short": 0, "short_examples": {},
                                       "no_positive_score": 0, "low": None, "high": None,
                                       "offsets": dict.fromkeys(SCORE_KEYS, 0)}

    def _file(self, key: str) -> Path:
        return self.folder / f"scores-{key}.f8"

    def restore(self, counts: dict, fresh: bool) -> None:
        """Continue from saved ``counts`` (score files truncated to their offsets); or start the files."""
        if fresh:
            for key in SCORE_KEYS:
                self._file(key).write_bytes(b"")
            return
        self.counts = counts
        for key in SCORE_KEYS:
            with open(self._file(key), "r+b") as fh:
                fh.truncate(counts["offsets"][key])

    def add(self, diag) -> None:
        c = self.counts
        c["queries"] += diag.queries
        c["candidates"] += diag.candidates
        c["kept"] += diag.kept
        for rule, v in diag.removed.items():
            c["removed"][rule] += v
        c["short"] += len(diag.short)
        c["short_examples"] = dict(sorted({**c["short_examples"], **diag.short}.items())[:20])
        c["no_positive_score"] += diag.no_positive_score
        for key in SCORE_KEYS:
            values = np.asarray(diag.scores[key], dtype="<f8")
            finite = values[np.isfinite(values)]
            if len(finite):
                lo, hi = float(finite.min()), float(finite.max())
                c["low"] = lo if c["low"] is None else min(c["low"], lo)
                c["high"] = hi if c["high"] is None else max(c["high"], hi)
            with open(self._file(key), "ab") as fh:
                fh.write(values.tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            c["offsets"][key] += values.nbytes

    def summary(self, bins: int = 20) -> dict[str, Any]:
        c, t = self.counts, self.template
        if c["low"] is not None:
            edges = np.linspace(c["low"], c["high"], bins + 1)
            if edges[0] == edges[-1]:
                edges = np.linspace(edges[0] - 0.5, edges[0] + 0.5, bins + 1)
        else:
            edges = np.linspace(0, 1, bins + 1)
        hist = {}
        for key in SCORE_KEYS:
            counts = np.zeros(bins, dtype=np.int64)
            if c["offsets"][key]:
                values = np.memmap(self._file(key), dtype="<f8", mode="r", shape=(c["offsets"][key] // 8,))
                for start in range(0, len(values), 1 << 20):
                    counts += np.histogram(np.asarray(values[start:start + (1 << 20)]), bins=edges)[0]
                del values
            hist[key] = counts.tolist()
        return {
            "where": t.where, "rules": t.rules.describe(), "num_negatives": t.n,
            "queries": c["queries"], "candidates": c["candidates"], "kept": c["kept"],
            "removed": dict(c["removed"]),
            "queries_short": c["short"], "short_examples": dict(c["short_examples"]),
            "what_was_done_when_short": t.on_short,
            "queries_without_positive_score": c["no_positive_score"],
            "histogram": {"edges": edges.tolist(), **hist,
                          "note": "removed = removed by a score or rank rule (margins, max_score, range_min)"},
        }


# ----------------------------------------------------------------------------- fingerprints
def _hash_queries(qids: Sequence[str], queries, qrels) -> str:
    h = hashlib.sha256()
    for q in qids:
        h.update(f"{q}\x00{queries[q].text}\x00".encode())
        h.update(json.dumps(list(qrels.get(q, {}).items())).encode())
    return h.hexdigest()[:32]


def _records_tsv(chunk: dict[str, list[str]]) -> str:
    from hardneg.retrieval.runs import _check_id

    lines = []
    for qid, docs in chunk.items():
        if not docs:
            continue
        _check_id("query id", qid)
        for rank, d in enumerate(docs, start=1):
            _check_id("doc id", d)
            lines.append(f"{qid}\t{d}\t{rank}\n")
    return "".join(lines)


def _records_ids(chunk: dict[str, list[str]]) -> str:
    return "".join(json.dumps([qid, docs], ensure_ascii=False) + "\n" for qid, docs in chunk.items())


def read_id_records(path: Path) -> Iterator[tuple[str, list[str]]]:
    """The ``[qid, [docid, ...]]`` lines of a partial file, in order."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            qid, docs = json.loads(line)
            yield qid, docs


# ----------------------------------------------------------------------------- dense queries
class _QueryTexts:
    """A store-like view (``rows(indices)`` -> token id lists) over query texts, tokenized on demand."""

    def __init__(self, encoder, texts: Callable[[int], str]) -> None:
        self.encoder, self.texts = encoder, texts

    def rows(self, indices) -> list[list[int]]:
        return self.encoder.tokenize([self.texts(int(i)) for i in indices], "query")["input_ids"]


def _encode_queries_to(folder: Path, encoder, qids: Sequence[str], queries, key: str, show_progress: bool):
    """The query vectors of ``qids`` in ``folder/embeddings.npy`` (memmap), encoded in the batches one
    :func:`~hardneg.retrieval.dense.encode_queries` call makes (resumable)."""
    import torch

    from hardneg.index.encode import encode_batches_resumable, length_sorted_batches, progress_label

    texts = _QueryTexts(encoder, lambda i: queries[qids[i]].text)
    lengths = np.zeros(len(qids), dtype=np.int64)
    for start in range(0, len(qids), 8192):  # lengths only: the token lists are made again per batch
        rows = texts.rows(range(start, min(start + 8192, len(qids))))
        lengths[start:start + len(rows)] = [len(r) for r in rows]
    batches = length_sorted_batches(lengths, QUERY_BATCH)
    state = {"key": key, "rows": len(qids), "batch": QUERY_BATCH}
    progress_file = folder / "progress.json"
    if progress_file.is_file() and (folder / "embeddings.npy").is_file():
        saved = read_json(progress_file)
        if all(saved.get(k) == v for k, v in state.items()) and saved.get("done") == len(batches):
            return np.load(folder / "embeddings.npy", mmap_mode="r")
    with torch.inference_mode():
        encode_batches_resumable(encoder, texts, "query", batches, batches, len(qids), folder, state,
                                 desc=progress_label("query"), show_progress=show_progress,
                                 checkpoint_seconds=_encode_checkpoint_seconds())
    return np.load(folder / "embeddings.npy", mmap_mode="r")


def _encode_checkpoint_seconds() -> float:
    """``encode_store``'s checkpoint interval (one setting for corpus and query encoding)."""
    import inspect

    import hardneg.index.encode as enc

    return float(inspect.unwrap(enc.encode_store).__kwdefaults__["checkpoint_seconds"])


# ----------------------------------------------------------------------------- the run
def mine_streamed(dataset, qrels, queries, model: str, rules, topk: int, cache_dir: Path, out: str | Path,
                  file_format: str = "tsv", *, open_encoder: Callable[[], Any], batch_size: int = 64,
                  show_progress: bool = False, device: str | None = None, seed: int = 0,
                  diagnostics_path: str | Path | None = None, chunk_size: int = CHUNK_SIZE,
                  settings: dict | None = None) -> dict[str, Any]:
    """Mine, select and write the negatives of every query of ``queries`` to ``out`` (see the module doc).

    ``settings``: anything else that shapes the output (e.g. the model's max length), part of the
    fingerprint a resumed run must match. Returns ``{"queries", "negatives", "stats"}`` (``stats``: the
    st/tevatron writer's counts, ``None`` for tsv)."""
    from hardneg.train.negative_files import check_format
    from hardneg.train.selection import (
        Diagnostics,
        TeacherScores,
        doc_texts,
        load_teacher,
        max_positives,
        select_negatives,
        write_diagnostics,
    )

    check_format(file_format)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise HardnegError(f"--chunk-size must be a whole number >= 1, not {chunk_size!r}")
    out = Path(out)
    if file_format != "tsv":
        from hardneg.data.lines import COMPRESSED_SUFFIXES

        if out.suffix.lower() in COMPRESSED_SUFFIXES:
            raise HardnegError(f"{out}: compressed output is not written; give a .jsonl path")
    partial = out.with_name(f"{out.name}.partial")
    qids = list(queries)
    max_pos = max_positives(qrels)
    n = rules.num_negatives or topk
    k = rules.depth(topk, max_pos) if rules.active else n + max_pos

    # the retriever (and what identifies it)
    encoder = index = bm25 = None
    if model == "bm25":
        from hardneg.retrieval.bm25 import cached_bm25

        bm25 = cached_bm25(dataset, cache_dir)
        retriever_id: Any = {"bm25": "default"}
    else:
        from hardneg.train.selection import mining_index

        encoder, index = mining_index(open_encoder, dataset, cache_dir, batch_size, show_progress)
        retriever_id = {"query": encoder.side_identity("query"), "doc": encoder.side_identity("doc")}
        if chunk_size % SEARCH_BLOCK:  # Faiss must see the calls one search makes (module doc)
            chunk_size = -(-chunk_size // SEARCH_BLOCK) * SEARCH_BLOCK
            logger.info("dense mining: chunks of %d queries (a multiple of the search block)", chunk_size)
    queries_key = _hash_queries(qids, queries, qrels)
    vectors_key = hashlib.sha256(json.dumps([retriever_id, queries_key, QUERY_BATCH], sort_keys=True,
                                            default=str).encode()).hexdigest()
    fingerprint = hashlib.sha256(json.dumps({
        "version": STATE_VERSION, "model": model, "retriever": retriever_id, "corpus": dataset.fingerprint(),
        "queries": queries_key, "rules": rules.describe(), "topk": topk, "k": k,
        "format": file_format, "chunk": chunk_size, "seed": seed, "settings": settings or {},
        "search_block": SEARCH_BLOCK, "query_batch": QUERY_BATCH,
    }, sort_keys=True, default=str).encode()).hexdigest()

    # the partial state: continue it, or start over
    progress_file = partial / "progress.json"
    data_file = partial / "negatives.part"
    template = Diagnostics(rules, f"hardneg mine --model {model}", n)
    template.on_short = "fewer negatives written for those queries"
    saved = None
    if progress_file.is_file():
        with contextlib.suppress(OSError, ValueError):
            saved = read_json(progress_file)
        if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
            logger.warning("%s: the partial mining there was made with other settings (model, data, rules, "
                           "format or chunk size); discarding it and starting over", partial)
            saved = None
        elif not data_file.is_file() or data_file.stat().st_size < saved["offset"]:
            logger.warning("%s: the partial negatives file is missing or short; starting over", partial)
            saved = None
    if saved is None and partial.exists():
        queries_dir = partial / "queries"
        keep = None
        if queries_dir.is_dir():  # the query vectors carry their own key (model, queries): kept if it still fits
            keep = partial.with_name(f"{partial.name}.keep-{os.getpid()}")
            os.replace(queries_dir, keep)
        shutil.rmtree(partial)
        partial.mkdir(parents=True)
        if keep is not None:
            os.replace(keep, queries_dir)
    with writing(partial, "partial negatives"):
        partial.mkdir(parents=True, exist_ok=True)
        diag = StreamDiagnostics(template, partial)
        if saved is None:
            data_file.write_bytes(b"")
            diag.restore({}, fresh=True)
            state = {"fingerprint": fingerprint, "chunks_done": 0, "offset": 0, "queries": 0, "negatives": 0,
                     "longest": 0, "teacher": {"scored": 0, "hits": 0}, "diagnostics": diag.counts}
            write_json(progress_file, state)
        else:
            state = saved
            with open(data_file, "r+b") as fh:
                fh.truncate(state["offset"])
            diag.restore(state["diagnostics"], fresh=False)
            logger.info("%s: resuming after %d of %d chunks", out, state["chunks_done"],
                        -(-len(qids) // chunk_size))

    vectors = None
    if encoder is not None and state["chunks_done"] * chunk_size < len(qids):
        vectors = _encode_queries_to(partial / "queries", encoder, qids, queries, vectors_key, show_progress)
    teacher = None
    if rules.teacher is not None:
        teacher = TeacherScores.under(load_teacher(rules.teacher, device=device, batch_size=batch_size),
                                      cache_dir, dataset.fingerprint())
    corpus = dataset.doc_ids() if teacher is not None else None
    doc_text = doc_texts(dataset)
    records = _records_tsv if file_format == "tsv" else _records_ids
    chunks = range(0, len(qids), chunk_size)

    from tqdm.auto import tqdm

    with tqdm(total=len(chunks), initial=state["chunks_done"], desc="mine", unit="chunk",
              disable=not show_progress, mininterval=1.0) as bar:
        for c in range(state["chunks_done"], len(chunks)):
            part = qids[chunks[c]:chunks[c] + chunk_size]
            positive_scores = None
            if bm25 is not None:
                run = bm25.search({q: queries[q] for q in part}, k=k, show_progress=False)
            else:
                run, positive_scores = _dense_chunk(index, vectors, part, chunks[c], k)
            chunk_diag = Diagnostics(rules, template.where, n)
            hits, scored = (teacher.hits, teacher.scored) if teacher is not None else (0, 0)
            selected = select_negatives(run, qrels, rules, default_n=topk, positive_scores=positive_scores,
                                        teacher=teacher, query_text={q: queries[q].text for q in run},
                                        doc_text=doc_text, corpus=corpus, seed=seed, diagnostics=chunk_diag,
                                        max_pos=max_pos)
            if teacher is not None:  # this chunk's pairs are never asked for again in this run
                state["teacher"]["hits"] += teacher.hits - hits
                state["teacher"]["scored"] += teacher.scored - scored
                teacher.forget(run)
            blob = records(selected).encode("utf-8")
            with writing(out, "negatives"):
                with open(data_file, "ab") as fh:
                    fh.write(blob)
                    fh.flush()
                    os.fsync(fh.fileno())
                diag.add(chunk_diag)
                state["chunks_done"] = c + 1
                state["offset"] += len(blob)
                state["queries"] += len(selected)
                state["negatives"] += sum(map(len, selected.values()))
                state["longest"] = max([state["longest"], *map(len, selected.values())])
                state["diagnostics"] = diag.counts
                write_json(progress_file, state)
            bar.update(1)
            del run, selected, blob
            if after_chunk is not None:
                after_chunk(c + 1)
    del vectors

    # publish
    if diagnostics_path is not None:
        summary = diag.summary()
        if teacher is not None:
            summary["teacher"] = {"name": rules.teacher, "kind": teacher.teacher.kind,
                                  "fingerprint": teacher.teacher.fingerprint, "scored": state["teacher"]["scored"],
                                  "cache_hits": state["teacher"]["hits"]}
        write_diagnostics(diagnostics_path, [summary])
    stats = None
    if file_format == "tsv":
        with writing(out, "negatives"):
            with open(data_file, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(data_file, out)
        _fsync_dir(out.parent)
    else:
        from hardneg.train.negative_files import write_negative_file_streamed

        stats = write_negative_file_streamed(out, lambda: read_id_records(data_file), file_format,
                                             dataset=dataset, qrels=qrels, longest=state["longest"],
                                             work_dir=partial)
    shutil.rmtree(partial, ignore_errors=True)
    return {"queries": state["queries"], "negatives": state["negatives"], "stats": stats}


def _dense_chunk(index, vectors, part: Sequence[str], start: int, k: int):
    """``(run, positive_scores)`` of the queries ``part`` (rows ``start…`` of ``vectors``), as
    :func:`hardneg.train.methods.mining._searched` computes them for all queries."""
    from hardneg.retrieval.runs import run_from_arrays

    qv = np.ascontiguousarray(vectors[start:start + len(part)], dtype=np.float32)
    scores, rows = index.search(qv, k, batch_size=SEARCH_BLOCK)
    run = run_from_arrays(part, index.ids, scores, rows)
    row_of = _row_of(index)
    vec = dict(zip(part, qv, strict=True))

    def positive_scores(qid: str, docids: list[str]) -> np.ndarray:
        return index.reconstruct(np.array([row_of[d] for d in docids], dtype=np.int64)) @ vec[qid]

    return run, positive_scores


def _row_of(index) -> dict[str, int]:
    cached = getattr(index, "_hardneg_row_of", None)
    if cached is None:
        cached = {d: i for i, d in enumerate(index.ids)}
        index._hardneg_row_of = cached
    return cached
