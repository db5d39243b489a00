"""Faiss indexes at scale: building from a memory map in batches, nprobe/efSearch, GPU placement."""

from __future__ import annotations

import json
import logging
import os
import tracemalloc
import weakref
from types import SimpleNamespace

import faiss
import numpy as np
import pytest
import torch

from hardneg.errors import HardnegError
from hardneg.index import faiss_gpu as fg
from hardneg.index import faiss_index as fi
from hardneg.index.faiss_gpu import gpu_plan
from hardneg.index.faiss_index import FaissIndex

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
    monkeypatch.delenv(fg.GPU_MODE_ENV, raising=False)
    assert gpu_plan(10 * GIB, [80 * GIB, 80 * GIB])[0] == "replicate"
    plan, why = gpu_plan(100 * GIB, [80 * GIB, 80 * GIB])
    assert plan == "shard" and "does not fit in one GPU" in why and "50.00 GiB per GPU over 2" in why
    assert gpu_plan(100 * GIB, [80 * GIB])[0] == "none"  # one GPU, too small
    assert gpu_plan(200 * GIB, [80 * GIB, 80 * GIB])[0] == "none"  # 100 GiB per GPU > 0.8 x 80
    assert gpu_plan(60 * GIB, [80 * GIB, 40 * GIB])[0] == "shard"  # the smallest GPU decides
    assert gpu_plan(5 * GIB, None)[0] == "replicate"  # free memory unknown
    assert gpu_plan(5 * GIB, [80 * GIB, 80 * GIB], "shard")[0] == "shard"
    assert gpu_plan(5 * GIB, [80 * GIB], "shard")[0] == "replicate"  # nothing to shard on one GPU
    monkeypatch.setenv(fg.GPU_MODE_ENV, "replicate")
    assert gpu_plan(100 * GIB, [80 * GIB, 80 * GIB]) == ("replicate", f"{fg.GPU_MODE_ENV}=replicate")
    monkeypatch.setenv(fg.GPU_MODE_ENV, "sideways")
    with pytest.raises(HardnegError, match="HARDNEG_FAISS_GPU='sideways'"):
        gpu_plan(1, [GIB])


class _ClonerOptions:  # GpuClonerOptions' defaults (a cuVS build: use_cuvs on)
    def __init__(self) -> None:
        self.useFloat16, self.use_cuvs, self.indicesOptions = False, True, 1


class _MultipleClonerOptions(_ClonerOptions):
    def __init__(self) -> None:
        super().__init__()
        self.shard = False


def _faiss_gpu_cloner_check(index) -> None:
    """What Faiss's GpuCloner accepts (faiss/gpu/GpuCloner.cpp); anything else: its error."""
    base = faiss.downcast_index(index)
    if not isinstance(base, faiss.IndexFlat | faiss.IndexIVFFlat | faiss.IndexIVFPQ | faiss.IndexIVFScalarQuantizer):
        raise RuntimeError("Error in virtual faiss::Index* faiss::gpu::ToGpuCloner::clone_Index at "
                           "GpuCloner.cpp:244: Error: 'This index type is not implemented on GPU.'")
    if isinstance(base, faiss.IndexIVFPQ) and (not base.by_residual or base.pq.nbits != 8 or base.polysemous_ht):
        raise RuntimeError("Error in GpuIndexIVFPQ::copyFrom: Error: 'GPU: only by_residual = true is supported'")


@pytest.fixture
def fake_gpus(monkeypatch):
    """Faiss's GPU API on the CPU: ``state.ngpu`` GPUs with ``state.free`` bytes each. Every clone is
    recorded (function, GPUs, cloner options, the CPU index handed over) and returns a CPU copy."""
    for name in ("GPU_MODE_ENV", "LOCAL_WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(getattr(fg, name, name), raising=False)
    state = SimpleNamespace(ngpu=2, free=40 * GIB, calls=[])

    def record(fn, index, devices, co):
        _faiss_gpu_cloner_check(index)
        base = faiss.downcast_index(index)
        state.calls.append({"fn": fn, "devices": list(devices), "fp16": co.useFloat16, "cuvs": co.use_cuvs,
                            "shard": getattr(co, "shard", None), "type": type(base).__name__,
                            "ntotal": int(index.ntotal), "nlist": getattr(base, "nlist", None)})
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: state.ngpu, raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", SimpleNamespace, raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", _ClonerOptions, raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", _MultipleClonerOptions, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu",
                        lambda res, device, index, co=None: record("index_cpu_to_gpu", index, [device], co),
                        raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpus_list",
                        lambda index, co=None, gpus=None, ngpu=-1: record("index_cpu_to_gpus_list", index, gpus, co),
                        raising=False)
    monkeypatch.setattr(fg, "gpu_free_memory", lambda devices: [state.free] * len(devices))
    return state


def test_to_gpu_replicates_or_shards_by_size_and_says_so(vectors, fake_gpus, caplog):
    index = FaissIndex.build(vectors[:500], IDS[:500], "flat")  # 32 000 bytes
    with caplog.at_level(logging.INFO, logger=fi.__name__):
        assert index.to_gpu() is True
        fake_gpus.free = 25_000  # 0.8 x 25 000 < 32 000 <= 2 x 0.8 x 25 000
        assert index.to_gpu() is True
    assert [(c["fn"], c["devices"], c["shard"]) for c in fake_gpus.calls] == [
        ("index_cpu_to_gpus_list", [0, 1], False), ("index_cpu_to_gpus_list", [0, 1], True)]
    assert index.placement.shard and index.placement.devices == (0, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert "replicated on cuda:0, cuda:1" in messages[0] and "fits in one GPU" in messages[0]
    assert "sharded over" in messages[1] and "does not fit in one GPU" in messages[1]


def test_to_gpu_never_falls_back_silently(vectors, fake_gpus, caplog, monkeypatch):
    hnsw = FaissIndex.build(vectors[:300], IDS[:300], "hnsw16")
    with caplog.at_level(logging.WARNING, logger=fi.__name__):
        assert hnsw.to_gpu() is False
    assert "HNSW has no GPU version in Faiss" in caplog.text and "ivf<L>pq<M>" in caplog.text
    assert fake_gpus.calls == [] and not hnsw.on_gpu
    with pytest.raises(HardnegError, match="HNSW has no GPU version.*use flat"):
        hnsw.to_gpu(required=True)
    flat = FaissIndex.build(vectors[:500], IDS[:500], "flat")
    fake_gpus.free = 1_000  # too big for both GPUs together
    with pytest.raises(HardnegError, match="does not fit in GPU memory.*fp16 storage takes half"):
        flat.to_gpu(required=True)

    def broken(index, co=None, gpus=None, ngpu=-1):
        raise RuntimeError("Error in foo at bar.cpp:1: Error: 'x' failed: out of device memory")

    fake_gpus.free = 40 * GIB
    monkeypatch.setattr(faiss, "index_cpu_to_gpus_list", broken, raising=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=fi.__name__):
        assert flat.to_gpu() is False
    assert "searched on the CPU" in caplog.text and "out of device memory" in caplog.text
    assert flat._search_index is flat.index and flat.placement is None
    fake_gpus.ngpu = 0
    assert flat.to_gpu() is False  # faiss-cpu: nothing to move to, and said by faiss_placement
    with pytest.raises(HardnegError, match="no GPU support"):
        flat.to_gpu(required=True)


def test_pq_as_ivf_searches_exactly_like_index_pq(vectors):
    """IVF1,PQ<M> with a zero centroid: IndexPQ's codebook and codes, so the same ids and the same scores
    (real Faiss on the CPU), and the IndexPQ itself untouched."""
    index = FaissIndex.build(vectors, IDS, "pq8", train_size=1200)
    pq = faiss.downcast_index(index.index)
    before = faiss.vector_to_array(pq.codes).copy()
    ivf = fg.pq_as_ivf(index.index)
    assert type(ivf) is faiss.IndexIVFPQ and ivf.nlist == 1 and ivf.ntotal == N and ivf.by_residual
    assert ivf.pq.M == 8 and np.array_equal(faiss.vector_to_array(ivf.pq.centroids),
                                            faiss.vector_to_array(pq.pq.centroids))
    list_codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(0), N * 8)
    list_ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(0), N)
    assert np.array_equal(list_codes, before) and np.array_equal(list_ids, np.arange(N))
    queries = np.random.default_rng(5).standard_normal((100, DIM)).astype(np.float32)
    s_pq, r_pq = pq.search(queries, 50)
    s_ivf, r_ivf = ivf.search(queries, 50)
    assert np.array_equal(r_pq, r_ivf) and np.array_equal(s_pq, s_ivf)
    # the codes IVF1 would encode itself (residual = vector - 0) are IndexPQ's too
    fresh = fg.pq_as_ivf(faiss.index_factory(DIM, "PQ8np", faiss.METRIC_INNER_PRODUCT))
    fresh.pq = pq.pq
    fresh.add(vectors)
    assert np.array_equal(faiss.rev_swig_ptr(fresh.invlists.get_codes(0), N * 8), before)
    assert np.array_equal(faiss.vector_to_array(pq.codes), before)


def test_pq_goes_to_the_gpu_as_ivf1_with_the_index_pq_results(vectors, fake_gpus):
    index = FaissIndex.build(vectors, IDS, "pq8", train_size=1200)
    queries = vectors[:64] + 0.01
    cpu = index.search(queries, 30)
    fake_gpus.ngpu = 1
    assert index.to_gpu(required=True) is True
    (call,) = fake_gpus.calls
    assert call == {"fn": "index_cpu_to_gpu", "devices": [0], "fp16": False, "cuvs": False, "shard": None,
                    "type": "IndexIVFPQ", "ntotal": N, "nlist": 1}
    assert index.placement.support.pq_as_ivf and index.placement.source is None  # not kept twice
    gpu = index.search(queries, 30)
    assert np.array_equal(cpu[1], gpu[1]) and np.array_equal(cpu[0], gpu[0])
    assert type(faiss.downcast_index(index.index)) is faiss.IndexPQ  # reconstruct still reads the CPU IndexPQ
    assert index.reconstruct(np.array([3])).shape == (1, DIM)


@pytest.mark.parametrize(("m", "fp16", "shared", "expect"), [
    (48, False, fg.GPU_SHARED_MEMORY, False),  # 48 x 256 x 4 = 48 KiB: float32 tables fit exactly
    (56, False, fg.GPU_SHARED_MEMORY, True), (64, False, fg.GPU_SHARED_MEMORY, True),
    (96, False, fg.GPU_SHARED_MEMORY, True),  # 96 x 256 x 2 = 48 KiB: only in float16
    (8, True, fg.GPU_SHARED_MEMORY, True),  # asked for
    (32, False, 16 * 1024, True),  # a device with less shared memory
])
def test_pq_lookup_tables_go_float16_where_shared_memory_needs_it(m, fp16, shared, expect):
    assert fg.pq_tables(m, 8, fp16=fp16, shared_memory=shared) is expect


@pytest.mark.parametrize(("m", "nbits", "shared", "match"), [
    (6, 8, fg.GPU_SHARED_MEMORY, "bytes per code, not 6"), (128, 8, fg.GPU_SHARED_MEMORY, "not 128"),
    (16, 4, fg.GPU_SHARED_MEMORY, "8-bit codes"), (96, 8, 32 * 1024, "larger than the GPU's 32768 bytes"),
])
def test_pq_sizes_the_gpu_kernels_lack_are_refused(m, nbits, shared, match):
    with pytest.raises(fg.GpuRefusal, match=match):
        fg.pq_tables(m, nbits, shared_memory=shared)


def test_cloner_options_per_kind_and_refusals_by_kind(fake_gpus):
    x = np.random.default_rng(2).standard_normal((600, 192)).astype(np.float32)
    ids = [str(i) for i in range(600)]
    fake_gpus.ngpu = 1
    seen = {}
    for kind in ("pq48", "pq96", "ivf2pq96", "ivf2pq24"):
        index = FaissIndex.build(x, ids, kind)
        assert index.to_gpu(required=True)
        seen[kind] = (fake_gpus.calls[-1]["fp16"], fake_gpus.calls[-1]["type"], fake_gpus.calls[-1]["cuvs"])
    assert seen == {"pq48": (False, "IndexIVFPQ", False), "pq96": (True, "IndexIVFPQ", False),
                    "ivf2pq96": (True, "IndexIVFPQ", False), "ivf2pq24": (False, "IndexIVFPQ", False)}
    assert FaissIndex.build(x, ids, "pq48").to_gpu(fp16=True) and fake_gpus.calls[-1]["fp16"] is True
    calls = len(fake_gpus.calls)
    with pytest.raises(HardnegError, match=r"holds 1, 2, .* 96 bytes per code, not 192 \(PQ192\)"):
        FaissIndex.build(x, ids, "pq192").to_gpu(required=True)
    with pytest.raises(HardnegError, match="under a transform has no GPU version.*IVF1,PQ"):
        FaissIndex.build(x, ids, "factory:L2norm,PQ48np").to_gpu(required=True)
    assert len(fake_gpus.calls) == calls  # refused before Faiss was called
    assert fi.gpu_kind_problem("pq96", 192) is None and fi.gpu_kind_problem("flat", 192) is None
    assert "not 192" in fi.gpu_kind_problem("pq192", 192) and "HNSW" in fi.gpu_kind_problem("hnsw", 192)


def test_fp16_flat_is_cloned_empty_then_filled(vectors, fake_gpus):
    """fp16 storage: the cloner gets an empty IndexFlat with useFloat16, and every row is then added in
    order (Faiss converts page by page), so the GPU copy answers like the CPU index."""
    index = FaissIndex.build(vectors, IDS, "flat")
    fake_gpus.ngpu = 1
    assert index.to_gpu(fp16=True, required=True)
    (call,) = fake_gpus.calls
    assert call["fp16"] is True and call["type"] == "IndexFlat" and call["ntotal"] == 0
    assert index.placement.nbytes == N * DIM * 2 and "float16 vectors" in index.placement.describe()
    s_cpu, r_cpu = faiss.downcast_index(index.index).search(vectors[:40], 10)
    s_gpu, r_gpu = index.search(vectors[:40], 10)
    assert np.array_equal(r_cpu, r_gpu) and np.array_equal(s_cpu, s_gpu)
    fake_gpus.ngpu = 2  # two GPUs, one process: one fp16 replica per GPU, each filled the same way
    assert index.to_gpu(fp16=True)
    assert [(c["devices"], c["ntotal"], c["fp16"]) for c in fake_gpus.calls[1:]] == [([0], 0, True), ([1], 0, True)]
    assert isinstance(index._search_index, faiss.IndexReplicas) and len(index._gpu_resources) == 2
    assert np.array_equal(index.search(vectors[:40], 10)[1], r_cpu)
    index.to_gpu()  # fp32 flat: the cloner copies the full index
    assert fake_gpus.calls[-1]["fp16"] is False and fake_gpus.calls[-1]["ntotal"] == N


@pytest.mark.parametrize(("env", "ngpu", "device", "expect"), [
    ({}, 4, None, [0, 1, 2, 3]),  # one process: every GPU
    ({"LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "2"}, 4, None, [2]),  # torchrun: the rank's own GPU
    ({"LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "2"}, 1, None, [0]),  # a launcher showing each process one GPU
    ({}, 4, torch.device("cuda", 3), [3]), ({}, 4, "cuda:1", [1]), ({}, 4, 2, [2]),
])
def test_which_gpus_an_index_goes_on(monkeypatch, env, ngpu, device, expect):
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert fg.gpu_devices(device, ngpu) == expect


def test_each_rank_puts_its_index_on_its_own_gpu(vectors, fake_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    index = FaissIndex.build(vectors[:500], IDS[:500], "flat")
    assert index.to_gpu()
    assert fake_gpus.calls[-1]["fn"] == "index_cpu_to_gpu" and fake_gpus.calls[-1]["devices"] == [1]
    assert "this rank's own GPU" in index.placement.why
    with pytest.raises(HardnegError, match="GPU 5 was asked for Faiss.*sees 2"):
        index.to_gpu("cuda:5")
    with pytest.raises(HardnegError, match="not a CUDA device"):
        index.to_gpu(torch.device("cpu"))


def test_gpu_limits_on_k_and_nprobe_and_release(fake_gpus):
    x = np.random.default_rng(3).standard_normal((2100, 4)).astype(np.float32)
    index = FaissIndex.build(x, [str(i) for i in range(2100)], "flat")
    assert index.search(x[:2], 2100)[1].shape == (2, 2100)  # the CPU has no such limit
    assert index.to_gpu()
    with pytest.raises(HardnegError, match="at most 2048 neighbours, not 2049"):
        index.search(x[:2], 2049)
    copy = weakref.ref(index._search_index)
    assert index.release_gpu() is True and not index.on_gpu and index.placement is None
    assert copy() is None and index._gpu_resources == []  # nothing holds the GPU copy any more
    assert index.release_gpu() is False
    ivf = FaissIndex.build(x, [str(i) for i in range(2100)], "ivf8pq2")
    assert ivf.to_gpu()
    with pytest.raises(HardnegError, match="probes at most 2048 lists"):
        ivf.set_search_params(nprobe=3000)


def test_faiss_threads_are_shared_between_the_ranks_of_a_machine(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert fi.default_threads() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert fi.default_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert fi.default_threads() == 1
    before = (faiss.omp_get_max_threads(), torch.get_num_threads())
    try:
        assert fi.set_threads() == 1 and faiss.omp_get_max_threads() == 1 and torch.get_num_threads() == 1
    finally:
        faiss.omp_set_num_threads(before[0])
        torch.set_num_threads(before[1])


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
