"""Where candidate negatives come from: a negatives/run file, or a dense model's search of the corpus.

BM25's candidates are its run (:func:`hardneg.retrieval.bm25.cached_bm25`), its positives scored by
:func:`bm25_positive_scorer`; a dense model's are its search of
the corpus index together with a scorer of the query's positives under the same vectors (the margin rules
compare against those): for ``hardneg mine``'s chunks, :func:`dense_chunk` over query vectors encoded once
(:func:`encode_query_vectors`); for training's mining, :mod:`hardneg.train.methods.mining`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.data.records import Qrels
from hardneg.io import read_json
from hardneg.negatives.formats.files import read_negative_file
from hardneg.negatives.sampling import check_topk, positive_ids
from hardneg.retrieval.runs import Run, run_from_arrays

__all__ = ["QUERY_BATCH", "bm25_positive_scorer", "dense_chunk", "encode_query_vectors", "load_candidates",
           "mining_index", "positive_scorer"]

#: the query-encoding batch of :func:`hardneg.retrieval.dense.encode_queries` (what ``mine`` always used)
QUERY_BATCH = 128

#: ``(qid, docids) -> <q, v>`` of those documents under the vectors the index ranks with
PositiveScorer = Callable[[str, list[str]], np.ndarray]


# ----------------------------------------------------------------------------- a file
def load_candidates(
    path: str | Path, topk: int, positives: Qrels | None = None, dataset: Any = None
) -> dict[str, list[str]]:
    """Candidate lists from a negatives TSV (3 columns), a TREC run (6 columns), a Tevatron JSONL or
    sentence-transformers data (JSONL or a ``datasets`` folder; needs ``dataset``).

    The format is detected from the path and content (:func:`hardneg.negatives.formats.files.detect_format`;
    between TSV and TREC, from the first line's column count). With ``dataset`` every id is checked
    against it (``file:line`` errors). Each list keeps rank order; if ``positives`` is given they are
    removed *before* keeping the first ``topk`` (so the result is the top-``topk`` non-positives).
    """
    topk = check_topk(topk)
    lists = read_negative_file(path, dataset)
    out: dict[str, list[str]] = {}
    for qid, docs in lists.items():
        pos = positive_ids(positives, qid) if positives is not None else set()
        out[qid] = [d for d in docs if d not in pos][:topk]
    return out


# ----------------------------------------------------------------------------- a dense model
def mining_index(open_encoder: Callable[[], Any], dataset: Any, cache_dir: Path, batch_size: int,
                 show_progress: bool) -> tuple[Any, Any]:
    """``hardneg mine``'s dense retriever: the encoder and its flat corpus index (cached), searched on GPU
    Faiss by the rule training's mining follows (:func:`hardneg.devices.place_index`: on the encoder's GPU,
    with a warning when the installed Faiss has no GPUs)."""
    from hardneg.artifacts import corpus_index
    from hardneg.devices import place_index

    encoder = open_encoder()
    index = corpus_index(encoder, dataset, "flat", cache_dir, batch_size=batch_size, show_progress=show_progress)
    place_index(index, encoder.device, quiet=False)
    return encoder, index


def row_of(index: Any) -> dict[str, int]:
    """``docid -> row`` of ``index`` (kept on the index: it is asked for once per chunk)."""
    cached = getattr(index, "_hardneg_row_of", None)
    if cached is None:
        cached = {d: i for i, d in enumerate(index.ids)}
        index._hardneg_row_of = cached
    return cached


def positive_scorer(index: Any, qids: Sequence[str], vectors: np.ndarray) -> PositiveScorer:
    """``(qid, docids) -> <q, v>``: the query's vector (row ``i`` of ``vectors`` for ``qids[i]``) against the
    documents' vectors in ``index`` (what the run's scores are)."""
    rows = row_of(index)
    vec = dict(zip(qids, vectors, strict=True))

    def scores(qid: str, docids: list[str]) -> np.ndarray:
        return index.reconstruct(np.array([rows[d] for d in docids], dtype=np.int64)) @ vec[qid]

    return scores


def bm25_positive_scorer(bm25: Any, queries: Mapping[str, Any]) -> PositiveScorer:
    """``(qid, docids) -> BM25 scores`` of those documents for the query (retrieved or not: a positive BM25
    did not return scores 0; one not in the corpus has none), the scores a BM25 run's candidates have: the margin
    rules work with BM25."""

    def scores(qid: str, docids: list[str]) -> np.ndarray:
        known = bm25.positions()
        return bm25.score_docs(queries[qid].text, [d for d in docids if d in known])

    return scores


def dense_chunk(index: Any, vectors: np.ndarray, part: Sequence[str], start: int, k: int,
                search_block: int) -> tuple[Run, PositiveScorer]:
    """``(run, positive_scores)`` of the queries ``part``, whose vectors are rows ``start…`` of ``vectors``,
    searched ``search_block`` queries at a time (:func:`positive_scorer` scores documents under the same
    vectors)."""
    qv = np.ascontiguousarray(vectors[start:start + len(part)], dtype=np.float32)
    scores, rows = index.search(qv, k, batch_size=search_block)
    return run_from_arrays(part, index.ids, scores, rows), positive_scorer(index, part, qv)


# ----------------------------------------------------------------------------- query vectors, once
class _QueryTexts:
    """A store-like view (``rows(indices)`` -> token id lists) over query texts, tokenized on demand."""

    def __init__(self, encoder: Any, texts: Callable[[int], str]) -> None:
        self.encoder, self.texts = encoder, texts

    def rows(self, indices) -> list[list[int]]:
        return self.encoder.tokenize([self.texts(int(i)) for i in indices], "query")["input_ids"]


def _encode_checkpoint_seconds() -> float:
    """``encode_store``'s checkpoint interval (one setting for corpus and query encoding)."""
    import inspect

    import hardneg.index.encode as enc

    return float(inspect.unwrap(enc.encode_store).__kwdefaults__["checkpoint_seconds"])


def encode_query_vectors(folder: Path, encoder: Any, qids: Sequence[str], queries: Mapping, key: str,
                         show_progress: bool) -> np.ndarray:
    """The query vectors of ``qids`` in ``folder/embeddings.npy`` (memmap), encoded in the length-sorted batches
    (of :data:`QUERY_BATCH`) one :func:`~hardneg.retrieval.dense.encode_queries` call makes, so each vector is
    bitwise the one a single call gives; resumable (``key`` names the encoder and queries)."""
    import torch

    from hardneg.index.encode import encode_batches_resumable
    from hardneg.model.encoding import length_sorted_batches, progress_label

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
