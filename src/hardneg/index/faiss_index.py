"""Faiss indexes over embeddings: build, save (with a manifest), load, search, reconstruct.

Kinds (inner-product metric throughout, as dense retrieval scores are dot products):

``flat``        exact search (``IndexFlatIP``)
``pq<M>``       product quantisation with ``M`` sub-vectors of 8 bits (``pq48``, ``pq96``; Faiss ``PQ<M>np``);
                ``M`` must divide the dimension
``ivfpq``       inverted lists + PQ (``ivfpq`` = IVF√n lists with PQ dim/8; or ``ivf<L>pq<M>``)
``hnsw``        graph search over full vectors (``hnsw`` = 32 links; or ``hnsw<L>``)
``factory:…``   any Faiss factory string, e.g. ``factory:OPQ48,IVF256,PQ48``

Rows keep the embeddings' order; original ids are stored beside the index
(``ids.json``) and searches return them. A GPU is used for search when
``faiss`` has GPU support and one is present.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from hardneg.errors import HardnegError, MismatchError
from hardneg.io import commit_dir, read_json, write_json, writing

INDEX_VERSION = 1

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
    import os

    faiss = import_faiss()
    import torch

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
        return f"IVF{lists},PQ{sub}"
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
    ) -> FaissIndex:
        faiss = import_faiss()

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        if n != len(ids):
            raise HardnegError(f"{n} vectors but {len(ids)} ids")
        spec = factory_string(kind, dim, n)
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            train = vectors
            if train_size and n > train_size:
                rng = np.random.default_rng(seed)
                train = vectors[np.sort(rng.choice(n, train_size, replace=False))]
            try:
                index.train(train)
            except RuntimeError as exc:  # e.g. fewer vectors than a PQ/IVF codebook needs
                raise HardnegError(
                    f"cannot train a {kind!r} index ({spec}) on {len(train)} vectors: "
                    f"{str(exc).splitlines()[-1].split('Error: ')[-1]}; use a flat index or a smaller "
                    "codebook for a corpus this small"
                ) from None
        step = 65_536
        for start in range(0, n, step):
            index.add(vectors[start : start + step])
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
        return cls(index, list(ids), manifest)

    @classmethod
    def from_embeddings(cls, emb, kind: str = "flat", **kw) -> FaissIndex:
        """Build from a :class:`hardneg.index.encode.Embeddings` folder object."""
        source = {"embeddings": str(emb.folder), "key": emb.manifest.get("key"),
                  "encoder": emb.manifest.get("encoder"), "content": emb.manifest.get("content")}
        return cls.build(np.asarray(emb.vectors), emb.ids, kind, source=source, **kw)

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
        return loaded

    # ---------------------------------------------------------------- search
    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def to_gpu(self) -> bool:
        """Move search to all GPUs when Faiss has GPU support; returns whether it did."""
        faiss = import_faiss()

        if gpu_count() == 0:
            return False
        try:
            self._search_index = faiss.index_cpu_to_all_gpus(self.index)
        except Exception:  # e.g. HNSW has no GPU version
            return False
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

