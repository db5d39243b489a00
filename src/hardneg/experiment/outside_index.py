"""Indexes a recipe builds the way other tools build them (``indexes:``), for ADORE on an index hardneg did not make.

A recipe's ``indexes:`` names indexes built outside hardneg's own encoding and indexing code::

    indexes:
      st-hnsw: {model: minilm, factory: HNSW32}   # sentence-transformers encodes, plain Faiss indexes
    systems:
      - {name: adore-st-hnsw, method: adore, index: "@st-hnsw"}

Stage ``index-<name>`` encodes the corpus with ``SentenceTransformer.encode_document`` (the model's own
pooling, normalisation and document prompt), builds ``faiss.index_factory(dim, factory, metric)`` over the
vectors (trained on them when the factory needs training) and writes a Pyserini dense index folder (``index``
+ ``docid``), as a user of sentence-transformers and Faiss, or of Pyserini, would have it. An ADORE system whose
``index`` is ``"@<name>"`` trains against that folder (``hardneg train adore --index PATH``,
:mod:`hardneg.index.external`) and is tested by searching it with its trained query encoder, exactly as
``hardneg search PATH`` does. Such a system has no document tower of its own, so it has no transfer rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.data.dataset import Dataset
from hardneg.errors import HardnegError
from hardneg.experiment.schema import check_name
from hardneg.index.external import PYSERINI_IDS, PYSERINI_INDEX, check_dim, content_hash, open_external
from hardneg.index.faiss_index import import_faiss
from hardneg.retrieval.dense import search
from hardneg.retrieval.runs import Run

__all__ = ["INDEX_REF", "build_outside_index", "check_outside_indexes", "search_outside_index"]

#: the prefix of a system's ``index`` that names an entry of the recipe's ``indexes:``
INDEX_REF = "@"
EMBEDDINGS = "embeddings.npy"


def check_outside_indexes(recipe: Any) -> None:
    """A recipe's ``indexes:`` names, and the systems that train against one: ADORE's, every name known, no ``base``
    (the index is the document side), no role that needs a document tower (transfer, WiSE-FT, PQ, t-SNE)."""
    for name in recipe.indexes:
        check_name(name, "indexes: name")
    for i, s in enumerate(recipe.systems):
        name = s.outside_index
        if name is None:
            continue
        where = f"{recipe.source}: systems[{i}].index"
        if not s.frozen_doc:
            raise HardnegError(f"{where}: {INDEX_REF}{name} is an index built outside hardneg; only a method that "
                               "keeps the document side fixed (adore) trains against one")
        if name not in recipe.indexes:
            known = ", ".join(recipe.indexes) or "none: add an 'indexes:' section"
            raise HardnegError(f"{where}: no entry {name!r} in 'indexes:' (entries: {known})")
        if s.base is not None:
            raise HardnegError(f"{recipe.source}: systems[{i}].base: system {s.name!r} trains against the index "
                               f"{INDEX_REF}{name}, which is its document side: drop 'base' (its query tower "
                               "starts from 'model', default the recipe's)")
        if s.settings.get("track_every"):
            raise HardnegError(f"{recipe.source}: systems[{i}].track_every: system {s.name!r} has no document "
                               "encoder to re-encode the corpus with (index built outside hardneg)")
    uses = {s.name for s in recipe.systems if s.outside_index is not None}
    pq, tsne = recipe.analysis.pq, recipe.analysis.tsne
    roles = [("eval.transfer_systems", recipe.eval.transfer_systems),
             ("interpolate.systems", (recipe.interpolate.systems or []) if recipe.interpolate else []),
             ("analysis.pq.systems", (pq.systems or []) if pq else []),
             ("analysis.tsne", [tsne.before, tsne.after] if tsne else [])]
    for key, names in roles:
        bad = [n for n in names if n in uses]
        if bad:
            raise HardnegError(f"{recipe.source}: {key}: {', '.join(map(repr, bad))} trains against an index built "
                               "outside hardneg and has no document tower to encode another corpus or index "
                               "with: leave it out")


def build_outside_index(model: str, dataset: Dataset, folder: Path, *, factory: str = "Flat", metric: str = "ip",
                        max_seq_length: int | None = None, batch_size: int = 64, device: str = "cpu",
                        show_progress: bool = False) -> dict[str, Any]:
    """Encode ``dataset``'s corpus with sentence-transformers and write a Faiss ``factory`` index of it to
    ``folder`` in Pyserini's layout (:func:`encode_corpus_st` then :func:`write_faiss_index`). The vectors are
    kept in ``folder/embeddings.npy`` as soon as they are computed, so a stage killed while indexing does not
    encode again. Returns what was built."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = list(dataset.iter_docs())
    x = encode_corpus_st(model, docs, folder / EMBEDDINGS, max_seq_length=max_seq_length, batch_size=batch_size,
                         device=device, show_progress=show_progress)
    return write_faiss_index(x, [d.doc_id for d in docs], folder, factory=factory, metric=metric)


def encode_corpus_st(model: str, docs: list, vectors_file: Path, *, max_seq_length: int | None = None,
                     batch_size: int = 64, device: str = "cpu", show_progress: bool = False) -> np.ndarray:
    """``docs``' ``title text`` encoded by sentence-transformers' ``encode_document`` (the model's own pooling,
    normalisation and document prompt), float32; cached in ``vectors_file`` (read back when it is there)."""
    if vectors_file.is_file():
        x = np.load(vectors_file)
    else:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model, device=device)
        if max_seq_length is not None:
            st.max_seq_length = int(max_seq_length)
        x = np.ascontiguousarray(st.encode_document([d.full_text() for d in docs], batch_size=batch_size,
                                                    convert_to_numpy=True, show_progress_bar=show_progress),
                                 dtype=np.float32)
        vectors_file.parent.mkdir(parents=True, exist_ok=True)
        _atomic(vectors_file, lambda tmp: np.save(tmp, x))
    if len(x) != len(docs):
        raise HardnegError(f"{vectors_file}: {len(x)} vectors for {len(docs)} documents; delete the file and rerun")
    return x


def write_faiss_index(x: np.ndarray, ids: list[str], folder: Path, *, factory: str = "Flat",
                      metric: str = "ip") -> dict[str, Any]:
    """``faiss.index_factory(dim, factory, metric)`` trained (when it needs training) and filled with ``x``,
    written with ``ids`` to ``folder`` in Pyserini's dense-index layout (``index`` + ``docid``). An IVF index
    searches ``min(lists, 32)`` lists, hardneg's own default (stored in the file). Returns what was built."""
    faiss = import_faiss()
    folder.mkdir(parents=True, exist_ok=True)
    faiss_metric = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}[metric]
    try:
        index = faiss.index_factory(int(x.shape[1]), factory, faiss_metric)
    except RuntimeError as exc:
        raise HardnegError(f"indexes: factory {factory!r} is not a Faiss index_factory string Faiss accepts "
                           f"({str(exc).strip().splitlines()[-1]}); e.g. Flat, HNSW32, IVF64,PQ48") from None
    if not index.is_trained:
        index.train(x)
    index.add(x)
    if hasattr(index, "nprobe"):
        index.nprobe = min(int(index.nlist), 32)
    _atomic(folder / PYSERINI_IDS, lambda tmp: tmp.write_text("".join(i + "\n" for i in ids)))
    _atomic(folder / PYSERINI_INDEX, lambda tmp: faiss.write_index(index, str(tmp)))
    return {"documents": len(ids), "dim": int(x.shape[1]), "factory": factory, "metric": metric,
            "type": type(index).__name__, "hash": content_hash(folder / PYSERINI_INDEX, folder / PYSERINI_IDS)}


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` then rename onto ``path``: a killed stage never leaves half a file under the final name."""
    tmp = path.with_name(path.name + ".tmp" + (path.suffix if path.suffix == ".npy" else ""))
    write(tmp)
    os.replace(tmp, path)


def search_outside_index(folder: Path, encoder, queries, k: int, *, show_progress: bool = False) -> Run:
    """Search the index at ``folder`` (Pyserini layout) with ``encoder``'s query tower, as ``hardneg search``."""
    index = open_external(folder)
    check_dim(index, encoder.dim, str(folder))
    return search(index, encoder, queries, k, show_progress=show_progress)
