"""Faiss indexes at scale: building from a memory map in batches, nprobe/efSearch, GPU placement."""

from __future__ import annotations

import json
import logging
import tracemalloc

import faiss
import numpy as np
import pytest

from hardneg.errors import HardnegError
from hardneg.index import faiss_index as fi
from hardneg.index.faiss_index import FaissIndex, gpu_plan

N, DIM = 2000, 16
IDS = [f"d{i}" for i in range(N)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Faiss's OpenMP threads spin when other processes hold the cores: one thread is faster here."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def memmap(vectors, tmp_path):
    mm = np.lib.format.open_memmap(tmp_path / "emb.npy", mode="w+", dtype=np.float32, shape=vectors.shape)
    mm[:] = vectors
    mm.flush()
    return np.load(tmp_path / "emb.npy", mmap_mode="r")


def reference_index(x: np.ndarray, spec: str, train_size: int, seed: int = 0):
    """Today's recipe in plain Faiss: train on the sorted seeded sample, add every row at once."""
    index = faiss.index_factory(x.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), train_size, replace=False))
        index.train(np.ascontiguousarray(x[rows]))
    index.add(x)
    if hasattr(index, "nprobe"):
        index.nprobe = min(index.nlist, 32)
    return index


@pytest.mark.parametrize(("kind", "spec"), [("flat", "Flat"), ("pq4", "PQ4np"), ("ivf16pq4", "IVF16,PQ4np")])
def test_memmap_build_in_batches_equals_in_ram_build_and_plain_faiss(kind, spec, vectors, memmap, monkeypatch):
    monkeypatch.setattr(fi, "ADD_BATCH", 700)  # several batches, the last one short
    from_ram = FaissIndex.build(vectors, IDS, kind, train_size=1200)
    from_map = FaissIndex.build(memmap, IDS, kind, train_size=1200)
    assert from_ram.manifest["factory"] == spec
    ram_bytes = faiss.serialize_index(from_ram.index)
    assert np.array_equal(ram_bytes, faiss.serialize_index(from_map.index))
    assert np.array_equal(ram_bytes, faiss.serialize_index(reference_index(vectors, spec, 1200)))
    s1, r1 = from_ram.search(vectors[:50], 20)
    s2, r2 = from_map.search(vectors[:50], 20)
    assert np.array_equal(r1, r2) and np.array_equal(s1, s2)


def test_build_never_converts_a_memmap_whole(tmp_path, monkeypatch):
    """A float16 memmap must be converted to float32 batch by batch (the old code made one float32 copy of
    it all: 2x its size). numpy allocations are visible to tracemalloc; a PQ index keeps only codes."""
    n, dim = 40_000, 32
    mm = np.lib.format.open_memmap(tmp_path / "e16.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    rng = np.random.default_rng(1)
    for start in range(0, n, 10_000):
        mm[start : start + 10_000] = rng.standard_normal((10_000, dim)).astype(np.float16)
    mm.flush()
    mm = np.load(tmp_path / "e16.npy", mmap_mode="r")
    monkeypatch.setattr(fi, "ADD_BATCH", 2048)
    whole_float32 = n * dim * 4  # 5 MB
    ids = [str(i) for i in range(n)]
    tracemalloc.start()
    try:
        index = FaissIndex.build(mm, ids, "pq4", train_size=2048)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == n
    assert peak < whole_float32 / 5, f"peak {peak} bytes: the memmap was copied whole"


def test_nprobe_is_set_through_wrappers_kept_in_the_manifest_and_overridable(vectors, tmp_path):
    index = FaissIndex.build(vectors, IDS, "ivf16pq4", train_size=1200, nprobe=3)
    assert faiss.extract_index_ivf(index.index).nprobe == 3
    assert index.manifest["search"] == {"nprobe": 3} and index.search_params() == {"nprobe": 3}
    index.save(tmp_path / "ivf")
    loaded = FaissIndex.load(tmp_path / "ivf")
    assert loaded.search_params() == {"nprobe": 3}
    # nprobe = every list: exactly raw Faiss's exhaustive IVF search, and at least as close to flat as nprobe 1
    queries = vectors[:200]
    raw = faiss.deserialize_index(faiss.serialize_index(index.index))
    faiss.extract_index_ivf(raw).nprobe = 16
    loaded.set_search_params(nprobe=16)
    s_all, r_all = loaded.search(queries, 10)
    s_raw, r_raw = raw.search(queries, 10)
    assert np.array_equal(r_all, r_raw) and np.array_equal(s_all, s_raw)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    loaded.set_search_params(nprobe=1)
    _, r_one = loaded.search(queries, 10)

    def recall(rows):
        return np.mean([len(set(a) & set(b)) for a, b in zip(rows, exact, strict=True)])

    assert recall(r_all) > recall(r_one)
    # through an IndexPreTransform wrapper too
    opq = FaissIndex.build(vectors, IDS, "factory:L2norm,IVF16,PQ4np", train_size=1200, nprobe=7)
    assert faiss.extract_index_ivf(opq.index).nprobe == 7


def test_ef_search_on_hnsw_and_refusals(vectors):
    hnsw = FaissIndex.build(vectors[:500], IDS[:500], "hnsw16", ef_search=77)
    assert faiss.downcast_index(hnsw.index).hnsw.efSearch == 77 and hnsw.search_params() == {"ef_search": 77}
    flat = FaissIndex.build(vectors[:500], IDS[:500], "flat")
    with pytest.raises(HardnegError, match=r"--nprobe 4: the 'flat' index \(Flat\) has no nprobe.*IVF"):
        flat.set_search_params(nprobe=4)
    with pytest.raises(HardnegError, match="--ef-search .* has no efSearch.*HNSW"):
        FaissIndex.build(vectors, IDS, "ivf16pq4", train_size=1200, ef_search=32)
    with pytest.raises(HardnegError, match="has no nprobe"):
        hnsw.set_search_params(nprobe=2)
    with pytest.raises(HardnegError, match="at least 1"):
        hnsw.set_search_params(ef_search=0)


# ----------------------------------------------------------------------------- GPU placement
GIB = 2**30


def test_gpu_plan_replicates_when_it_fits_else_shards_else_none(monkeypatch):
    monkeypatch.delenv(fi.GPU_MODE_ENV, raising=False)
    assert gpu_plan(10 * GIB, [80 * GIB, 80 * GIB])[0] == "replicate"
    plan, why = gpu_plan(100 * GIB, [80 * GIB, 80 * GIB])
    assert plan == "shard" and "does not fit in one GPU" in why and "50.00 GiB per GPU over 2" in why
    assert gpu_plan(100 * GIB, [80 * GIB])[0] == "none"  # one GPU, too small
    assert gpu_plan(200 * GIB, [80 * GIB, 80 * GIB])[0] == "none"  # 100 GiB per GPU > 0.8 x 80
    assert gpu_plan(60 * GIB, [80 * GIB, 40 * GIB])[0] == "shard"  # the smallest GPU decides
    assert gpu_plan(5 * GIB, None)[0] == "replicate"  # free memory unknown
    assert gpu_plan(5 * GIB, [80 * GIB, 80 * GIB], "shard")[0] == "shard"
    assert gpu_plan(5 * GIB, [80 * GIB], "shard")[0] == "replicate"  # nothing to shard on one GPU
    monkeypatch.setenv(fi.GPU_MODE_ENV, "replicate")
    assert gpu_plan(100 * GIB, [80 * GIB, 80 * GIB]) == ("replicate", f"{fi.GPU_MODE_ENV}=replicate")
    monkeypatch.setenv(fi.GPU_MODE_ENV, "sideways")
    with pytest.raises(HardnegError, match="HARDNEG_FAISS_GPU='sideways'"):
        gpu_plan(1, [GIB])


class _Options:
    def __init__(self) -> None:
        self.shard = False


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two fake GPUs with ``free[0]`` bytes each; records the cloner options each move used."""
    monkeypatch.delenv(fi.GPU_MODE_ENV, raising=False)
    calls, free = [], [40 * GIB]

    def clone(index, co=None, ngpu=-1):
        calls.append(co.shard)
        return index

    monkeypatch.setattr(fi, "gpu_count", lambda: 2)
    monkeypatch.setattr(fi, "gpu_free_memory", lambda n: [free[0]] * n)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", _Options, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", clone, raising=False)
    return calls, free


def test_to_gpu_replicates_or_shards_by_size_and_says_so(vectors, fake_gpus, caplog):
    calls, free = fake_gpus
    index = FaissIndex.build(vectors[:500], IDS[:500], "flat")  # 32 000 bytes
    with caplog.at_level(logging.INFO, logger=fi.__name__):
        assert index.to_gpu() is True
        free[0] = 25_000  # 0.8 x 25 000 < 32 000 <= 2 x 0.8 x 25 000
        assert index.to_gpu() is True
    assert calls == [False, True]
    messages = [r.getMessage() for r in caplog.records]
    assert "replicating" in messages[0] and "fits in one GPU" in messages[0]
    assert "sharding" in messages[1] and "does not fit in one GPU" in messages[1]


def test_to_gpu_never_falls_back_silently(vectors, fake_gpus, caplog, monkeypatch):
    calls, free = fake_gpus
    hnsw = FaissIndex.build(vectors[:300], IDS[:300], "hnsw16")
    with caplog.at_level(logging.WARNING, logger=fi.__name__):
        assert hnsw.to_gpu() is False
    assert "HNSW has no GPU version" in caplog.text and calls == []
    with pytest.raises(HardnegError, match="HNSW has no GPU version"):
        hnsw.to_gpu(required=True)
    flat = FaissIndex.build(vectors[:500], IDS[:500], "flat")
    free[0] = 1_000  # too big for both GPUs together
    with pytest.raises(HardnegError, match="does not fit in GPU memory"):
        flat.to_gpu(required=True)

    def broken(index, co=None, ngpu=-1):
        raise RuntimeError("Error in foo at bar.cpp:1: Error: 'x' failed: out of device memory")

    free[0] = 40 * GIB
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", broken, raising=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=fi.__name__):
        assert flat.to_gpu() is False
    assert "searched on the CPU" in caplog.text and "out of device memory" in caplog.text
    assert flat._search_index is flat.index
    monkeypatch.setattr(fi, "gpu_count", lambda: 0)
    assert flat.to_gpu() is False  # faiss-cpu: nothing to move to, and said by faiss_placement
    with pytest.raises(HardnegError, match="no GPU support"):
        flat.to_gpu(required=True)


def test_cli_index_stores_ef_search_and_refuses_nprobe_on_flat(tiny_beir, tiny_st_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hardneg.cli import app

    monkeypatch.setenv("HARDNEG_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, ["--quiet", *map(str, args)])

    assert invoke("encode", tiny_beir, "--model", tiny_st_dir, "--out", tmp_path / "emb").exit_code == 0
    result = invoke("index", tmp_path / "emb", "--kind", "hnsw8", "--ef-search", "40", "--out", tmp_path / "h")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "h" / "manifest.json").read_text())["search"] == {"ef_search": 40}
    result = invoke("search", tmp_path / "h", f"{tiny_beir}:test", "--model", tiny_st_dir, "--out",
                    tmp_path / "s", "--k", "5", "--ef-search", "64")
    assert result.exit_code == 0, result.output
    result = invoke("index", tmp_path / "emb", "--kind", "flat", "--nprobe", "4", "--out", tmp_path / "f")
    assert isinstance(result.exception, HardnegError)  # the CLI's entry point turns it into exit 2
    assert "--nprobe 4: the 'flat' index (Flat) has no nprobe parameter" in str(result.exception)
    assert not (tmp_path / "f").exists()
