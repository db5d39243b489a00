"""Faiss indexes over embeddings: build, save (with a manifest), load, search, reconstruct.

Kinds (inner-product metric throughout, as dense retrieval scores are dot products):

``flat``        exact search (``IndexFlatIP``)
``pq<M>``       product quantisation with ``M`` sub-vectors of 8 bits (``pq48``, ``pq96``; Faiss ``PQ<M>np``);
                ``M`` must divide the dimension
``ivfpq``       inverted lists + PQ (``ivfpq`` = IVF√n lists with PQ dim/8; or ``ivf<L>pq<M>``,
                e.g. ``ivf4096pq96``); searches visit ``nprobe`` lists (default min(lists, 32))
``hnsw``        graph search over full vectors (``hnsw`` = 32 links; or ``hnsw<L>``); ``efSearch``
                sets the search breadth
``factory:…``   any Faiss factory string, e.g. ``factory:OPQ48,IVF256,PQ48``

Building reads the vectors in batches of :data:`ADD_BATCH` rows, so a memory-mapped
embeddings file is never copied whole into RAM: quantisers train on a seeded sample
(``train_size`` rows, gathered in sorted row order) and the rows are then added batch
by batch; peak memory is the index's own storage plus one batch.

``nprobe`` / ``efSearch`` (:meth:`FaissIndex.set_search_params`) are applied with Faiss's
``ParameterSpace`` (through ``IDMap``/``PreTransform`` wrappers); an index without the
parameter is refused. Defaults given at build time are kept in the manifest (``search``).

Rows keep the embeddings' order; original ids are stored beside the index
(``ids.json``) and searches return them. :meth:`FaissIndex.to_gpu` moves search to the
GPUs of a GPU Faiss build: the index is replicated on every GPU when it fits in one
GPU's free memory, else sharded across them (:func:`gpu_plan`;
``HARDNEG_FAISS_GPU=replicate|shard`` forces either). A failed move is never silent.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hardneg.errors import HardnegError, MismatchError
from hardneg.io import commit_dir, read_json, write_json, writing

INDEX_VERSION = 1

#: rows converted to float32 and added to an index at a time
ADD_BATCH = 65_536
#: environment variable forcing how :meth:`FaissIndex.to_gpu` spreads an index over several GPUs
GPU_MODE_ENV = "HARDNEG_FAISS_GPU"
GPU_MODES = ("auto", "replicate", "shard")
#: share of a GPU's free memory an index may take (the rest: Faiss's scratch space, the encoder)
GPU_HEADROOM = 0.8
#: hardneg's names of Faiss's search parameters (CLI flag, Faiss name, which kinds have it)
SEARCH_PARAMS = {
    "nprobe": ("--nprobe", "nprobe", "IVF indexes (ivfpq, ivf<L>pq<M>, factory:...IVF...)"),
    "ef_search": ("--ef-search", "efSearch", "HNSW indexes (hnsw, hnsw<L>)"),
}

log = logging.getLogger(__name__)

FAISS_MISSING = ("Faiss is not installed: pip install 'hardneg[cpu]' (faiss-cpu) or 'hardneg[gpu]' "
                 "(faiss-gpu-cu12), or make install")


def import_faiss():
    """The ``faiss`` module, or a HardnegError saying which extra installs it (it is not a hard dependency,
    so that faiss-cpu and faiss-gpu never undo each other)."""
    try:
        import faiss
    except ImportError as exc:
        raise HardnegError(FAISS_MISSING) from exc
    return faiss


def set_threads(n: int | None = None) -> int:
    """Use ``n`` (default: all) cores for Faiss and torch."""
    faiss = import_faiss()
    n = n or os.cpu_count() or 1
    faiss.omp_set_num_threads(n)
    torch.set_num_threads(n)
    return n


def factory_string(kind: str, dim: int, n: int) -> str:
    """Translate a hardneg index kind into a Faiss factory string."""
    kind = kind.strip()
    low = kind.lower()
    if low.startswith("factory:"):
        return kind.split(":", 1)[1]
    if low == "flat":
        return "Flat"
    if m := re.fullmatch(r"pq(\d+)", low):
        sub = int(m.group(1))
        _check_pq(sub, dim)
        # "np": no polysemous training (Faiss's IndexPQ default reorders the codes for Hamming search, which
        # hardneg never uses; the same codebooks and search scores, ~90x faster to build)
        return f"PQ{sub}np"
    if m := re.fullmatch(r"ivf(\d*)pq(\d*)", low):
        lists = int(m.group(1)) if m.group(1) else max(1, int(math.sqrt(n)))
        sub = int(m.group(2)) if m.group(2) else max(1, dim // 8)
        _check_pq(sub, dim)
        return f"IVF{lists},PQ{sub}np"  # no polysemous training either (~60x faster to build, same scores)
    if m := re.fullmatch(r"hnsw(\d*)", low):
        return f"HNSW{int(m.group(1)) if m.group(1) else 32},Flat"
    raise HardnegError(
        f"unknown index kind {kind!r}: use flat, pq<M> (e.g. pq48), ivfpq, ivf<L>pq<M>, "
        "hnsw, hnsw<L> or factory:<faiss factory string>"
    )


def _check_pq(sub: int, dim: int) -> None:
    if sub < 1 or dim % sub:
        raise HardnegError(
            f"pq{sub}: the number of sub-vectors must divide the embedding dimension {dim} "
            f"(e.g. {', '.join(f'pq{d}' for d in (8, 16, 32, 48, 64, 96) if dim % d == 0)})"
        )


def gpu_count() -> int:
    """How many GPUs the installed Faiss can use (0 for faiss-cpu)."""
    get = getattr(import_faiss(), "get_num_gpus", None)
    return int(get()) if get is not None else 0


class FaissIndex:
    """A Faiss index plus the original ids of its rows and a manifest."""

    def __init__(self, index, ids: list[str], manifest: dict) -> None:
        self.index = index
        self.ids = ids
        self.manifest = manifest
        self._search_index = index
        self.folder: Path | None = None  # where it was saved or loaded from

    # ---------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: list[str],
        kind: str = "flat",
        *,
        source: dict | None = None,
        seed: int = 0,
        train_size: int | None = 262_144,
        nprobe: int | None = None,
        ef_search: int | None = None,
        show_progress: bool = False,
    ) -> FaissIndex:
        """Index ``vectors`` (any 2-d array, e.g. a read-only memory map; never copied whole).

        The quantisers (PQ, IVF) train on ``train_size`` rows drawn with ``seed`` (all rows when
        fewer); rows are then converted to float32 and added :data:`ADD_BATCH` at a time.
        ``nprobe``/``ef_search`` become the index's search defaults (stored in the manifest)."""
        faiss = import_faiss()

        vectors = np.asarray(vectors)  # a memmap stays a memmap
        if vectors.ndim != 2:
            raise HardnegError(f"vectors to index must be a 2-d array (rows x dim), not shape {vectors.shape}")
        n, dim = vectors.shape
        if n != len(ids):
            raise HardnegError(f"{n} vectors but {len(ids)} ids")
        spec = factory_string(kind, dim, n)
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            if train_size and n > train_size:
                rng = np.random.default_rng(seed)
                train = vectors[np.sort(rng.choice(n, train_size, replace=False))]
            else:
                train = vectors
            train = np.ascontiguousarray(train, dtype=np.float32)
            try:
                index.train(train)
            except RuntimeError as exc:  # e.g. fewer vectors than a PQ/IVF codebook needs
                raise HardnegError(
                    f"cannot train a {kind!r} index ({spec}) on {len(train)} vectors: "
                    f"{str(exc).splitlines()[-1].split('Error: ')[-1]}; use a flat index or a smaller "
                    "codebook for a corpus this small"
                ) from None
            del train
        starts = range(0, n, ADD_BATCH)
        if show_progress and len(starts) > 1:
            starts = tqdm(starts, desc=f"index {kind}", unit="batch")
        for start in starts:
            index.add(np.ascontiguousarray(vectors[start : start + ADD_BATCH], dtype=np.float32))
        if hasattr(index, "nprobe"):
            index.nprobe = min(getattr(index, "nlist", 1), 32)
        manifest = {
            "kind": "faiss-index",
            "version": INDEX_VERSION,
            "index_kind": kind,
            "factory": spec,
            "dim": dim,
            "count": n,
            "metric": "inner_product",
            "source": source or {},
            "train_seed": seed,
        }
        built = cls(index, list(ids), manifest)
        if nprobe is not None or ef_search is not None:
            built.set_search_params(nprobe=nprobe, ef_search=ef_search)
            manifest["search"] = {k: v for k, v in (("nprobe", nprobe), ("ef_search", ef_search)) if v is not None}
        return built

    @classmethod
    def from_embeddings(cls, emb, kind: str = "flat", **kw) -> FaissIndex:
        """Build from a :class:`hardneg.index.encode.Embeddings` folder object."""
        source = {"embeddings": str(emb.folder), "key": emb.manifest.get("key"),
                  "encoder": emb.manifest.get("encoder"), "content": emb.manifest.get("content")}
        return cls.build(emb.vectors, emb.ids, kind, source=source, **kw)

    # ---------------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> Path:
        faiss = import_faiss()

        folder = Path(folder)
        with writing(folder, "index"):
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            with writing(folder, "index"):
                faiss.write_index(self.index, str(tmp / "index.faiss"))
                with open(tmp / "ids.json", "w", encoding="utf-8") as fh:
                    json.dump(self.ids, fh)
                manifest = dict(self.manifest)
                manifest["bytes"] = (tmp / "index.faiss").stat().st_size
                write_json(tmp / "manifest.json", manifest)
                commit_dir(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.manifest = manifest
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path, expect_key: str | None = None) -> FaissIndex:
        faiss = import_faiss()

        folder = Path(folder)
        if not (folder / "manifest.json").is_file():
            raise HardnegError(f"{folder}: no finished index here (no manifest.json); build it with 'hardneg index'")
        manifest = read_json(folder / "manifest.json")
        if expect_key is not None and manifest.get("source", {}).get("key") != expect_key:
            raise MismatchError(
                f"{folder}: this index was built from other embeddings (another model or corpus); "
                "rebuild it or pass the matching --model"
            )
        index = faiss.read_index(str(folder / "index.faiss"))
        with open(folder / "ids.json", encoding="utf-8") as fh:
            ids = json.load(fh)
        if index.ntotal != len(ids):
            raise HardnegError(f"{folder}: index.faiss and ids.json disagree; rebuild the index")
        loaded = cls(index, ids, manifest)
        loaded.folder = folder
        defaults = manifest.get("search") or {}
        if defaults:
            loaded.set_search_params(**{k: v for k, v in defaults.items() if k in SEARCH_PARAMS})
        return loaded

    # ---------------------------------------------------------------- search
    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set Faiss search parameters (``None``: leave as is) on the index and its GPU copy; an index
        kind without the parameter (``nprobe`` on a flat index) is a :class:`HardnegError`."""
        faiss = import_faiss()

        for key, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is None:
                continue
            flag, name, kinds = SEARCH_PARAMS[key]
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise HardnegError(f"{flag} must be a whole number of at least 1, not {value!r}")
            try:
                faiss.ParameterSpace().set_index_parameter(self.index, name, int(value))
            except RuntimeError:
                raise HardnegError(
                    f"{flag} {value}: the {self.manifest.get('index_kind', '?')!r} index "
                    f"({self.manifest.get('factory', type(self.index).__name__)}) has no {name} parameter; "
                    f"{flag} is for {kinds}"
                ) from None
            if self._search_index is not self.index:  # the GPU copy: GPU indexes have their own classes
                space = getattr(faiss, "GpuParameterSpace", faiss.ParameterSpace)()
                space.set_index_parameter(self._search_index, name, int(value))

    def search_params(self) -> dict[str, int]:
        """The index's current ``nprobe`` / ``ef_search`` (only those it has)."""
        faiss = import_faiss()

        out = {}
        base = _unwrap(self.index)
        ivf = faiss.try_extract_index_ivf(self.index) if hasattr(faiss, "try_extract_index_ivf") else None
        if ivf is not None:
            out["nprobe"] = int(ivf.nprobe)
        if isinstance(base, faiss.IndexHNSW):
            out["ef_search"] = int(base.hnsw.efSearch)
        return out

    def nbytes(self) -> int:
        """Bytes the index takes (its saved size when known, else an estimate from its codes)."""
        if self.manifest.get("bytes"):
            return int(self.manifest["bytes"])
        return index_nbytes(self.index)

    def to_gpu(self, *, required: bool = False, mode: str | None = None) -> bool:
        """Move search to the GPUs of a GPU Faiss build; returns whether it did.

        Several GPUs: the index is replicated on each when it fits in one GPU's free memory, else sharded
        (:func:`gpu_plan`; ``mode`` or ``$HARDNEG_FAISS_GPU`` = ``replicate``/``shard`` forces either), and
        the choice is logged. No GPU Faiss: ``False``, or a :class:`HardnegError` when ``required``. A move
        that fails (HNSW and plain PQ have no GPU version; too big) warns naming the reason and leaves
        search on the CPU, or raises when ``required``."""
        faiss = import_faiss()

        ngpu = gpu_count()
        kind = self.manifest.get("index_kind", "?")

        def fail(reason: str) -> bool:
            if required:
                raise HardnegError(f"cannot search the {kind!r} index on the GPU: {reason}")
            log.warning("faiss: the %r index is searched on the CPU, not the GPU: %s", kind, reason)
            return False

        if ngpu == 0:
            if required:
                raise HardnegError("GPU search was asked for, but the installed Faiss has no GPU support "
                                   "(faiss-cpu); pip install faiss-gpu-cu12, or search on the CPU")
            return False
        reason = gpu_unsupported(self.index)
        if reason:
            return fail(reason)
        size = self.nbytes()
        plan, why = gpu_plan(size, gpu_free_memory(ngpu), mode)
        if plan == "none":
            return fail(why)
        try:
            options = faiss.GpuMultipleClonerOptions()
            options.shard = plan == "shard"
            self._search_index = faiss.index_cpu_to_all_gpus(self.index, co=options)
        except Exception as exc:  # noqa: BLE001 - Faiss raises RuntimeError, SWIG sometimes others
            self._search_index = self.index
            return fail(f"Faiss could not move it ({_faiss_message(exc)})")
        log.info("faiss: %s the %r index (%s) on %d GPU(s): %s",
                 "sharding" if plan == "shard" else "replicating", kind, _size(size), ngpu, why)
        return True

    def search(self, queries: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, row_indices)`` per query, searched in query batches."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise MismatchError(
                f"query vectors have shape {queries.shape} but the index dimension is {self.dim}: "
                "were they made by the model that built the index?"
            )
        k = max(1, min(k, len(self)))
        scores = np.empty((len(queries), k), dtype=np.float32)
        rows = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), batch_size):
            s, i = self._search_index.search(queries[start : start + batch_size], k)
            scores[start : start + len(s)] = s
            rows[start : start + len(i)] = i
        return scores, rows

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """The vectors the index scores with (decoded PQ codes for a PQ index)."""
        rows = np.asarray(rows, dtype=np.int64)
        flat = rows.reshape(-1)
        out = np.empty((len(flat), self.dim), dtype=np.float32)
        try:
            out[:] = self.index.reconstruct_batch(flat)
        except RuntimeError:
            if hasattr(self.index, "make_direct_map"):
                self.index.make_direct_map()
                out[:] = self.index.reconstruct_batch(flat)
            else:
                raise
        return out.reshape(*rows.shape, self.dim)



# ---------------------------------------------------------------------------- GPU placement
def _unwrap(index):
    """The innermost index under ``IDMap`` / ``PreTransform`` wrappers (downcast to its class)."""
    faiss = import_faiss()

    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform | faiss.IndexIDMap | faiss.IndexIDMap2):
        index = faiss.downcast_index(index.index)
    return index


def gpu_unsupported(index) -> str | None:
    """Why Faiss has no GPU version of ``index`` (``None`` when it has one, as far as known)."""
    faiss = import_faiss()

    base = _unwrap(index)
    if isinstance(base, faiss.IndexHNSW):
        return "HNSW has no GPU version in Faiss (use flat or ivfpq for GPU search)"
    if isinstance(base, faiss.IndexPQ):
        return "a plain PQ index (IndexPQ) has no GPU version in Faiss (use ivfpq for GPU search)"
    return None


def index_nbytes(index) -> int:
    """An estimate of the memory ``index`` takes: its codes (and IVF ids and centroids)."""
    faiss = import_faiss()

    ivf = faiss.try_extract_index_ivf(index) if hasattr(faiss, "try_extract_index_ivf") else None
    if ivf is not None:
        return int(ivf.ntotal) * (int(ivf.code_size) + 8) + int(ivf.nlist) * int(ivf.d) * 4
    try:
        per_row = int(index.sa_code_size())
    except RuntimeError:
        per_row = int(index.d) * 4
    return int(index.ntotal) * per_row


def gpu_free_memory(ngpu: int) -> list[int] | None:
    """Free bytes on each of the first ``ngpu`` CUDA devices (torch's view), or ``None`` when unknown."""
    try:
        if not torch.cuda.is_available():
            return None
        return [int(torch.cuda.mem_get_info(i)[0]) for i in range(min(ngpu, torch.cuda.device_count()))] or None
    except Exception:  # noqa: BLE001 - a broken CUDA set-up: the plan falls back to replicating
        return None


def gpu_plan(index_bytes: int, free: list[int] | None, mode: str | None = None,
             *, headroom: float = GPU_HEADROOM) -> tuple[str, str]:
    """How to spread an index of ``index_bytes`` over GPUs with ``free`` bytes each:
    ``("replicate" | "shard" | "none", why)``.

    ``replicate`` (a full copy per GPU, queries split between them) when it fits in the smallest
    GPU's free memory (times ``headroom``), else ``shard`` (``IndexShards``: a slice per GPU, every
    query searched on all), else ``none``. ``mode`` (default ``$HARDNEG_FAISS_GPU``, else ``auto``)
    forces replicate or shard."""
    mode = (mode or os.environ.get(GPU_MODE_ENV) or "auto").strip().lower()
    if mode not in GPU_MODES:
        raise HardnegError(f"{GPU_MODE_ENV}={mode!r}: use one of {', '.join(GPU_MODES)}")
    ngpu = len(free) if free else 0
    if mode == "replicate":
        return "replicate", f"{GPU_MODE_ENV}=replicate"
    if mode == "shard":
        return ("shard", f"{GPU_MODE_ENV}=shard") if ngpu != 1 else ("replicate", "one GPU: nothing to shard")
    if not free:
        return "replicate", "free GPU memory unknown (torch sees no CUDA device)"
    smallest = min(free)
    if index_bytes <= headroom * smallest:
        return "replicate", f"{_size(index_bytes)} fits in one GPU ({_size(smallest)} free)"
    if ngpu > 1 and index_bytes / ngpu <= headroom * smallest:
        return "shard", (f"{_size(index_bytes)} does not fit in one GPU ({_size(smallest)} free); "
                         f"{_size(index_bytes / ngpu)} per GPU over {ngpu}")
    return "none", (f"{_size(index_bytes)} does not fit in GPU memory ({ngpu} GPU(s), "
                    f"{_size(smallest)} free on the smallest)")


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _faiss_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1].split("Error: ")[-1].strip() if text else type(exc).__name__
