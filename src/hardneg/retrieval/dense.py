"""Dense retrieval: encode the queries, search the corpus index, a run with original ids.

The corpus side (tokenized store → embeddings → Faiss index) comes from the
artifact cache, :mod:`hardneg.artifacts`, so a second ``retrieve`` with the
same model and corpus reuses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hardneg.artifacts import corpus_index
from hardneg.data.records import Query
from hardneg.devices import place_index
from hardneg.index.faiss_index import FaissIndex
from hardneg.model.encoding import encode_texts
from hardneg.retrieval.runs import Run, run_from_arrays


def encode_queries(
    model, queries: Mapping[str, Query], *, batch_size: int = 128, show_progress: bool = False,
    precision: str = "fp32",
) -> tuple[list[str], np.ndarray]:
    """``(query ids, their vectors)``: ``queries`` encoded with the query tower (forward passes at
    ``precision``), in their order."""
    qids = list(queries)
    vectors = encode_texts(model, [queries[q].text for q in qids], "query", batch_size=batch_size,
                           show_progress=show_progress, precision=precision)
    return qids, vectors


def search(
    index: FaissIndex,
    model,
    queries: Mapping[str, Query],
    k: int = 1000,
    *,
    batch_size: int = 128,
    show_progress: bool = False,
    precision: str = "fp32",
) -> Run:
    """Encode ``queries`` with the query tower and search ``index``; a run with original ids."""
    qids, vectors = encode_queries(model, queries, batch_size=batch_size, show_progress=show_progress,
                                   precision=precision)
    scores, rows = index.search(vectors, k)
    return run_from_arrays(qids, index.ids, scores, rows)


def retrieve(
    model,
    dataset,
    *,
    index_kind: str = "flat",
    k: int = 1000,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    show_progress: bool = True,
    use_gpu: bool = True,
    nprobe: int | None = None,
    ef_search: int | None = None,
    gpu_required: bool = False,
    precision: str = "fp32",
) -> Run:
    """Encode + index + search in one: the run of ``dataset``'s queries over its corpus.

    ``nprobe`` / ``ef_search`` override the index's search parameters (refused by a kind without
    them); ``use_gpu``: search on GPU Faiss when ``model`` is on CUDA (:func:`hardneg.devices.place_index`);
    ``gpu_required``: a failed move of the search to GPU Faiss is an error, not a warning;
    ``precision``: of the corpus's and the queries' forward passes (a non-fp32 corpus encoding is cached apart)."""
    index = corpus_index(model, dataset, index_kind, cache_dir, batch_size=batch_size,
                         show_progress=show_progress, precision=precision)
    index.set_search_params(nprobe=nprobe, ef_search=ef_search)
    if use_gpu:  # on the encoder's GPU (under torchrun the rank's own); a CPU encoder's index stays on the CPU
        place_index(index, model.device, required=gpu_required)
    return search(index, model, dataset.queries(), k, show_progress=show_progress, precision=precision)
