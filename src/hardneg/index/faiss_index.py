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
(``ids.json``) and searches return them. :meth:`FaissIndex.to_gpu` moves search to GPU
Faiss (:mod:`hardneg.index.faiss_gpu` decides how: ``pq<M>`` goes as ``IVF1,PQ<M>``, fp16
lookup tables where Faiss needs them, ``fp16`` storage for flat; one GPU per rank under
torchrun, else replicated or sharded over all GPUs). A failed move is never silent.
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
from hardneg.index import faiss_gpu
from hardneg.index.faiss_gpu import GPU_MAX_K, GpuMove, GpuRefusal, faiss_message, index_nbytes, unwrap
from hardneg.io import commit_dir, read_json, write_json, writing

INDEX_VERSION = 1

#: rows converted to float32 and added to an index at a time
ADD_BATCH = 65_536
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


def default_threads() -> int:
    """This process's share of the cores it may run on: all of them, divided by the processes a
    launcher started on this machine (torchrun's ``LOCAL_WORLD_SIZE``), so that ranks' OpenMP threads
    do not oversubscribe the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    return max(1, cores // local)


def set_threads(n: int | None = None) -> int:
    """Use ``n`` (default: :func:`default_threads`) cores for Faiss and torch."""
    faiss = import_faiss()
    n = n or default_threads()
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


def gpu_kind_problem(kind: str, dim: int, n: int = 1, *, fp16: bool = False) -> str | None:
    """Why an index of ``kind`` (``dim`` dimensions, ``n`` rows) could not be searched on a GPU, from the
    kind alone (an empty index; nothing is encoded or trained); ``None`` when it can. For callers that
    will need the GPU to refuse before encoding a corpus."""
    faiss = import_faiss()
    empty = faiss.index_factory(dim, factory_string(kind, dim, n), faiss.METRIC_INNER_PRODUCT)
    return faiss_gpu.gpu_unsupported(empty, fp16=fp16)


class FaissIndex:
    """A Faiss index plus the original ids of its rows and a manifest."""

    def __init__(self, index, ids: list[str], manifest: dict) -> None:
        self.index = index
        self.ids = ids
        self.manifest = manifest
        self._search_index = index
        self._gpu_resources: list = []  # Faiss's GPU resources, kept while the GPU copy is searched
        self.placement: GpuMove | None = None  # where and how the GPU copy was made (to_gpu)
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

    @property
    def l2(self) -> bool:
        """Whether the index ranks by L2 distance (an external index): :meth:`search` then returns
        ``−‖q−d‖²`` as scores, so higher is better for every index."""
        return int(self.index.metric_type) == int(import_faiss().METRIC_L2)

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
            if key == "nprobe" and value > GPU_MAX_K and self.on_gpu:
                raise HardnegError(f"{flag} {value}: a Faiss GPU search probes at most {GPU_MAX_K} lists; "
                                   "lower it or search on the CPU (--device cpu)")
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
        base = unwrap(self.index)
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

    @property
    def on_gpu(self) -> bool:
        """Whether searches run on a GPU copy (:meth:`to_gpu`)."""
        return self._search_index is not self.index

    def to_gpu(self, device: int | str | torch.device | None = None, *, fp16: bool = False,
               required: bool = False, mode: str | None = None) -> bool:
        """Move search to GPU Faiss; returns whether it did. The CPU index stays (``reconstruct`` reads it).

        ``device``: that GPU alone (``3``, ``"cuda:3"``, a torch device); ``None``: under a multi-process
        launch (torchrun) this rank's own GPU, else every GPU: replicated when the index fits in one GPU's
        free memory, else sharded (``mode`` or ``$HARDNEG_FAISS_GPU`` = ``replicate``/``shard`` forces
        either). ``fp16``: a flat index stored in float16 (half the memory), IVF-PQ with float16 lookup
        tables. ``pq<M>`` is searched as ``IVF1,PQ<M>`` (same codes and scores; :func:`faiss_gpu.pq_as_ivf`)
        with float16 lookup tables where Faiss needs them (``M`` > 48). Decisions:
        :func:`faiss_gpu.plan_move`, logged.

        No GPU Faiss: ``False``, or a :class:`HardnegError` when ``required``. An index that Faiss cannot
        hold on a GPU (HNSW; PQ with an ``M`` its kernels lack; too big) or a move that fails is never
        silent: a :class:`HardnegError` naming Faiss's limit and what to use instead when ``required``,
        else that message as a warning, with search left on the CPU."""
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
        self.release_gpu()  # a second move replaces the first (and never holds two GPU copies)
        try:
            move = faiss_gpu.plan_move(self.index, ngpu=ngpu, device=device, fp16=fp16, mode=mode)
        except GpuRefusal as exc:
            return fail(str(exc))
        try:
            self._search_index, self._gpu_resources = faiss_gpu.clone_to_gpus(move)
        except Exception as exc:  # noqa: BLE001 - Faiss raises RuntimeError, SWIG sometimes others
            self.release_gpu()
            return fail(f"Faiss could not move it ({faiss_message(exc)})")
        move.source = None  # an IndexPQ's IVF form: on the GPU now, not kept twice on the CPU
        self.placement = move
        log.info("faiss: the %r index %s", kind, move.describe())
        return True

    def release_gpu(self) -> bool:
        """Drop the GPU copy and its GPU resources (search goes back to the CPU index); whether there was one.
        Faiss frees the GPU memory once nothing else refers to the copy."""
        had = self.on_gpu
        self._search_index, self._gpu_resources, self.placement = self.index, [], None
        return had

    def search(self, queries: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, row_indices)`` per query, searched in query batches."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise MismatchError(
                f"query vectors have shape {queries.shape} but the index dimension is {self.dim}: "
                "were they made by the model that built the index?"
            )
        k = max(1, min(k, len(self)))
        if k > GPU_MAX_K and self.on_gpu:
            raise HardnegError(f"a Faiss GPU search returns at most {GPU_MAX_K} neighbours, not {k}; lower k or "
                               "search on the CPU (--device cpu)")
        scores = np.empty((len(queries), k), dtype=np.float32)
        rows = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), batch_size):
            s, i = self._search_index.search(queries[start : start + batch_size], k)
            scores[start : start + len(s)] = s
            rows[start : start + len(i)] = i
        if self.l2:  # Faiss gives squared distances (smaller is better); a score is their negative
            scores = -scores
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


