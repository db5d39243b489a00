"""Indexes hardneg did not build: a Pyserini dense index folder, a Faiss file with an ids file, or an
embeddings array with an ids file, opened as a :class:`~hardneg.index.faiss_index.FaissIndex`.

Layouts (:func:`index_layout`):

``pyserini``    a folder holding a Faiss file named ``index`` and a ``docid`` file (one id per row),
                as Pyserini's dense indexes are written
``faiss``       a Faiss index file with ``ids`` (``--index-ids FILE``, one document id per row)
``embeddings``  a ``.npy`` array (float32 or float16, rows × dim) with ``ids``; hardneg builds a
                ``build`` index of it (default ``flat``, inner product), cached by the array's content

ADORE recomputes every retrieved document's score from the vectors the index ranks with, so the index must
give them back (``reconstruct``): flat, IVF-flat, IVF-PQ, PQ, HNSW-flat and SQ indexes (IVF ones get their
direct map in memory; the file is never written), with the inner-product or L2 metric (L2 scores are
``−‖q−d‖²``, as :meth:`FaissIndex.search` returns them). Anything else is refused with the reason.

Every opened index carries its identity in ``manifest["external"]``: layout, path, kind, ``ntotal``, metric,
dimension and a content hash of its files (:func:`content_hash`), which a model trained against it records
so that searching it with another index is refused.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from hardneg.errors import HardnegError, MismatchError
from hardneg.index.faiss_index import INDEX_VERSION, FaissIndex, import_faiss
from hardneg.io import file_lock, read_json

log = logging.getLogger(__name__)

#: Pyserini's dense index folder: the Faiss file and the ids file, by name
PYSERINI_INDEX, PYSERINI_IDS = "index", "docid"
#: the Faiss index types ADORE can train against (their vectors come back with ``reconstruct``), by kind name
KINDS = {
    "IndexFlatIP": "flat", "IndexFlatL2": "flat", "IndexFlat": "flat",
    "IndexIVFFlat": "ivf-flat", "IndexIVFPQ": "ivf-pq", "IndexIVFScalarQuantizer": "ivf-sq",
    "IndexPQ": "pq", "IndexHNSWFlat": "hnsw-flat", "IndexScalarQuantizer": "sq",
}
SUPPORTED = "flat, IVF-flat, IVF-PQ, PQ, HNSW-flat and SQ"


def index_layout(path: str | Path, ids: str | Path | None = None) -> tuple[str, Path, Path]:
    """``(layout, index or embeddings file, ids file)`` of an external index at ``path`` (see the module doc)."""
    path = Path(path)
    if path.is_dir():
        index_file, ids_file = path / PYSERINI_INDEX, Path(ids) if ids else path / PYSERINI_IDS
        if not index_file.is_file():
            raise HardnegError(f"{path}: not a Pyserini dense index folder (no Faiss file named "
                               f"'{PYSERINI_INDEX}'); give the folder, a Faiss file or an embeddings .npy")
        if not ids_file.is_file():
            raise HardnegError(f"{path}: no '{PYSERINI_IDS}' file (one document id per row) beside the Faiss "
                               "index; give one with --index-ids FILE")
        return "pyserini", index_file, ids_file
    if not path.is_file():
        raise HardnegError(f"{path}: no such index file or folder")
    if ids is None:
        raise HardnegError(f"{path}: give the document id of each row with --index-ids FILE (one id per row)")
    if not Path(ids).is_file():
        raise HardnegError(f"{ids}: no such ids file (--index-ids: one document id per row)")
    return ("embeddings" if path.suffix == ".npy" else "faiss"), path, Path(ids)


def read_ids(path: Path) -> list[str]:
    """Document ids, one per row of ``path`` (surrounding whitespace stripped); an empty row or a
    duplicate id is a HardnegError naming the line."""
    ids = path.read_text(encoding="utf-8").splitlines()
    for n, value in enumerate(ids, 1):
        if not value.strip():
            raise HardnegError(f"{path}:{n}: empty document id (one id per row, no blank rows)")
    ids = [value.strip() for value in ids]
    dupes = [d for d, c in Counter(ids).items() if c > 1]
    if dupes:
        first = ids.index(dupes[0]) + 1
        raise HardnegError(f"{path}: {len(dupes)} document ids occur more than once (e.g. {dupes[0]!r}, line "
                           f"{first} and line {ids.index(dupes[0], first) + 1}); each row needs its own id")
    return ids


def external_ids(path: str | Path, ids: str | Path | None = None) -> list[str]:
    """The document ids of the external index at ``path``, by row (read from its ids file alone)."""
    return read_ids(index_layout(path, ids)[2])


def content_hash(*files: Path, extra: str = "") -> str:
    """A sha256 of the files' bytes (in order; ``extra``, e.g. a build kind, added), 16 hex digits."""
    h = hashlib.sha256(extra.encode())
    for file in files:
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:16]


def kind_of(index) -> str:
    """The kind name of a Faiss index ADORE can train against (:data:`KINDS`), else a HardnegError saying why."""
    faiss = import_faiss()
    name = type(index).__name__
    if index.metric_type not in (faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2):
        raise HardnegError(f"{name} with Faiss metric {index.metric_type}: ADORE scores documents by inner product "
                           "or by -squared L2 distance; rebuild the index with METRIC_INNER_PRODUCT or METRIC_L2")
    if name not in KINDS:
        raise HardnegError(
            f"a {name} index: ADORE recomputes each retrieved document's score from the vectors the index ranks "
            f"with, which hardneg reads back from {SUPPORTED} indexes only (a wrapper such as IndexIDMap or "
            "IndexPreTransform, or binary codes, cannot give them back row by row); rebuild it as one of those, "
            "or give the embeddings .npy and let hardneg build the index")
    return KINDS[name]


def prepare(index) -> None:
    """Make an IVF index's direct map (in memory) so that ``reconstruct`` reads rows back; check it can."""
    faiss = import_faiss()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()
    if index.ntotal:
        try:
            index.reconstruct(0)
        except RuntimeError as exc:
            raise HardnegError(f"a {type(index).__name__} index cannot give back its vectors: "
                               f"{str(exc).strip().splitlines()[-1]}") from None


def open_external(path: str | Path, ids: str | Path | None = None, *, build: str = "flat",
                  cache_dir: Path | None = None) -> FaissIndex:
    """The external index at ``path`` (see :func:`index_layout`), checked and ready to search and reconstruct."""
    faiss = import_faiss()
    layout, file, ids_file = index_layout(path, ids)
    doc_ids = read_ids(ids_file)
    if layout == "embeddings":
        index, digest = _built_from_embeddings(file, doc_ids, ids_file, build, cache_dir)
        kind = build
    else:
        try:
            index = faiss.read_index(str(file))
        except RuntimeError as exc:
            raise HardnegError(f"{file}: not a Faiss index Faiss can read ({str(exc).strip().splitlines()[-1]}); "
                               "binary indexes are not supported") from None
        kind = kind_of(index)
        digest = content_hash(file, ids_file)
    if index.ntotal != len(doc_ids):
        raise HardnegError(f"{ids_file}: {len(doc_ids)} document ids, but the index {file} holds {index.ntotal} "
                           "vectors; the ids file needs one id per index row, in row order")
    prepare(index)
    metric = "l2" if index.metric_type == faiss.METRIC_L2 else "inner_product"
    identity = {"layout": layout, "path": str(Path(path).resolve()), "file": str(file.resolve()),
                "ids": str(ids_file.resolve()), "hash": digest, "kind": kind, "ntotal": int(index.ntotal),
                "metric": metric, "dim": int(index.d), **({"build": build} if layout == "embeddings" else {})}
    manifest = {"kind": "faiss-index", "version": INDEX_VERSION, "index_kind": kind, "factory": type(index).__name__,
                "dim": int(index.d), "count": int(index.ntotal), "metric": metric, "source": {},
                "external": identity}
    opened = FaissIndex(index, doc_ids, manifest)
    opened.folder = Path(path)
    return opened


def _built_from_embeddings(file: Path, ids: list[str], ids_file: Path, build: str,
                           cache_dir: Path | None) -> tuple[object, str]:
    """``(faiss index, content hash)`` of a ``build`` index over the ``.npy`` array ``file`` (cached under
    ``cache_dir/indexes`` by the array's, the ids' and the kind's hash)."""
    try:
        vectors = np.load(file, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise HardnegError(f"{file}: not a .npy array numpy can read ({exc})") from None
    if vectors.dtype not in (np.float32, np.float16) or vectors.ndim != 2:
        raise HardnegError(f"{file}: embeddings must be a 2-d float32 or float16 array (rows x dim), not "
                           f"{vectors.dtype} of shape {vectors.shape}")
    if len(vectors) != len(ids):
        raise HardnegError(f"{ids_file}: {len(ids)} document ids, but {file} holds {len(vectors)} vectors; "
                           "the ids file needs one id per row, in row order")
    digest = content_hash(file, ids_file, extra=f"build={build}")
    if cache_dir is None:
        return FaissIndex.build(vectors, ids, build).index, digest
    folder = Path(cache_dir) / "indexes" / f"external-{digest}"
    with file_lock(f"{folder}.lock"):
        if (folder / "manifest.json").is_file():
            return FaissIndex.load(folder).index, digest
        built = FaissIndex.build(vectors, ids, build, source={"embeddings": str(file), "hash": digest})
        built.save(folder)
        return built.index, digest


def check_dim(index: FaissIndex, dim: int, model: str) -> None:
    """A HardnegError when ``model``'s vectors (``dim``) cannot be searched in ``index``."""
    if index.dim != dim:
        where = index.manifest.get("external", {}).get("path", index.folder)
        raise HardnegError(f"{where}: the index holds {index.dim}-dimensional vectors, but {model} encodes "
                           f"queries as {dim}-dimensional ones; give the query encoder that belongs to this index")


#: the file in a model folder that names the index its query encoder was trained against (ADORE's ``adore.json``)
TRAINED_FILE = "adore.json"


def check_trained_index(model_folder: Path, index: FaissIndex, where: str | Path) -> None:
    """A :class:`~hardneg.errors.MismatchError` when the model at ``model_folder`` is a query encoder trained
    against an external index (its ``adore.json``) and ``index`` is another one (both content hashes named)."""
    info_file = Path(model_folder) / TRAINED_FILE
    if not info_file.is_file():
        return
    trained = (read_json(info_file).get("external_index") or {})
    if not trained:
        return
    mine = (index.manifest.get("external") or {}).get("hash")
    if mine != trained.get("hash"):
        raise MismatchError(
            f"{where}: {model_folder} is a query encoder trained against the {trained.get('kind')} index "
            f"{trained.get('path')} (content hash {trained.get('hash')}); this index's content hash is "
            f"{mine or 'none (an index hardneg built)'}: search the index it was trained against")
