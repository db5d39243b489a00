"""Faiss on GPUs: which indexes a GPU can hold, with which cloner options, on which GPU(s).

Every decision is made here, before Faiss is called, so that a refusal names Faiss's limit and what to
use instead (:class:`GpuRefusal`), and the Faiss calls themselves are few (:func:`clone_to_gpus`).
What Faiss's GPU cloner (``faiss/gpu/GpuCloner.cpp``, ``GpuIndexIVFPQ.cu``) accepts, and what hardneg
does with each of its index kinds:

``flat``        ``IndexFlat`` → ``GpuIndexFlat``; ``fp16=True`` stores the vectors in float16
                (``GpuClonerOptions.useFloat16``; half the memory: 8.8M × 768 is 27 GB in fp32). An fp16
                flat is cloned empty and then filled with ``add``, which Faiss converts page by page;
                cloning a full index would first copy all fp32 vectors to the GPU.
``pq<M>``       ``IndexPQ`` has no GPU version. It is cloned as ``IVF1,PQ<M>`` (:func:`pq_as_ivf`): one
                inverted list whose centroid is the zero vector, holding the IndexPQ's codes and codebook
                unchanged, so its residuals are the vectors themselves and its scores are IndexPQ's.
``ivf…pq…``     ``IndexIVFPQ`` → ``GpuIndexIVFPQ``.
``hnsw``        no GPU version (refused).

GPU IVF-PQ limits (the classic Faiss kernels; ``use_cuvs`` is turned off so that these are the limits
that apply on cuVS builds too): 8-bit codes, residual encoding, no polysemous codes, ``M`` (bytes per
code) in :data:`GPU_PQ_BYTES`, and the per-query lookup table (``M × 256`` entries) must fit one
thread block's shared memory (48 KiB on NVIDIA GPUs): float32 tables hold ``M ≤ 48``, so larger ``M``
(56, 64, 96) get float16 lookup tables (``useFloat16LookupTables``, set through the cloner's
``useFloat16``). A GPU search returns at most :data:`GPU_MAX_K` neighbours and probes at most as many
lists.

Where: in one process the index is replicated on every GPU when it fits in one GPU's free memory, else
sharded (:func:`gpu_plan`); under a multi-process launch (torchrun) each rank puts its index on its own
GPU only (:func:`gpu_devices`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hardneg import distributed as dist
from hardneg.errors import HardnegError

#: bytes per code (= sub-quantizers M at 8 bits) that Faiss's GPU IVF-PQ implements (IVFPQ::isSupportedPQCodeLength)
GPU_PQ_BYTES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
#: shared memory per thread block that Faiss checks the IVF-PQ lookup table against (NVIDIA GPUs: 48 KiB)
GPU_SHARED_MEMORY = 48 * 1024
#: the most neighbours (and IVF lists probed) a Faiss GPU search returns (GPU_MAX_SELECTION_K)
GPU_MAX_K = 2048
#: environment variable forcing how an index is spread over several GPUs in one process
GPU_MODE_ENV = "HARDNEG_FAISS_GPU"
GPU_MODES = ("auto", "replicate", "shard")
#: share of a GPU's free memory an index may take (the rest: Faiss's scratch space, the encoder)
GPU_HEADROOM = 0.8
#: what to use instead, in every refusal
GPU_KINDS = "flat (fp16 storage halves its memory), pq<M> or ivf<L>pq<M> (M up to 96; docs/gpus.md lists them)"


class GpuRefusal(HardnegError):
    """An index that Faiss cannot search on a GPU (or that does not fit): the message names the limit."""


def _faiss():
    import faiss  # only reached with a Faiss index in hand, so Faiss is installed

    return faiss


# ---------------------------------------------------------------------------- what a GPU can hold
@dataclass(frozen=True)
class GpuSupport:
    """How an index goes onto a GPU: the cloner's ``useFloat16`` and the conversions on the way."""

    use_float16: bool  # GpuClonerOptions.useFloat16: flat -> fp16 storage; IVF-PQ -> fp16 lookup tables
    pq_as_ivf: bool = False  # an IndexPQ, cloned as IVF1,PQ<M> (pq_as_ivf)
    paged_flat: bool = False  # an fp16 IndexFlat: cloned empty, then filled page by page
    note: str = ""


def unwrap(index):
    """The innermost index under ``IDMap`` / ``PreTransform`` wrappers (downcast to its class)."""
    faiss = _faiss()

    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform | faiss.IndexIDMap | faiss.IndexIDMap2):
        index = faiss.downcast_index(index.index)
    return index


def pq_tables(m: int, nbits: int, *, fp16: bool = False, shared_memory: int = GPU_SHARED_MEMORY) -> bool:
    """Whether Faiss's GPU IVF-PQ with ``m`` sub-quantizers of ``nbits`` needs (or, with ``fp16``, is
    given) float16 lookup tables; :class:`GpuRefusal` where it cannot hold the codes at all."""
    if nbits != 8:
        raise GpuRefusal(f"Faiss's GPU IVF-PQ needs 8-bit codes, not {nbits}-bit (PQ{m}x{nbits}); use {GPU_KINDS}")
    if m not in GPU_PQ_BYTES:
        raise GpuRefusal(
            f"Faiss's GPU IVF-PQ holds {', '.join(map(str, GPU_PQ_BYTES))} bytes per code, not {m} (PQ{m}); "
            f"use pq48 or pq96 where the dimension allows, or search this index on the CPU (--device cpu)"
        )
    entries = m * 2**nbits
    if not fp16 and 4 * entries <= shared_memory:
        return False
    if 2 * entries > shared_memory:
        raise GpuRefusal(f"PQ{m}'s lookup table ({2 * entries} bytes in float16) is larger than the GPU's "
                         f"{shared_memory} bytes of shared memory per block; use fewer sub-quantizers")
    return True


def gpu_support(index, *, fp16: bool = False, shared_memory: int = GPU_SHARED_MEMORY) -> GpuSupport:
    """How ``index`` goes onto a GPU, or :class:`GpuRefusal` naming Faiss's limit and what to use instead.

    ``fp16``: float16 storage for a flat index (and float16 lookup tables for IVF-PQ, which some ``M``
    need anyway); it does not change IVF-Flat or IVF-SQ storage (Faiss ignores it there)."""
    faiss = _faiss()

    top = faiss.downcast_index(index)
    base = unwrap(index)
    wrapped = type(base) is not type(top)
    name = type(base).__name__
    if isinstance(base, faiss.IndexHNSW):
        raise GpuRefusal(f"HNSW has no GPU version in Faiss ({name}); use {GPU_KINDS}, or search this index on "
                         "the CPU (--device cpu)")
    if isinstance(base, faiss.IndexFlat):
        return GpuSupport(fp16, paged_flat=fp16 and not wrapped,
                          note="float16 vectors" if fp16 else "float32 vectors")
    if type(base) is faiss.IndexPQ:
        if wrapped:
            raise GpuRefusal("a plain PQ index (IndexPQ) under a transform has no GPU version in Faiss; build "
                             "factory:<transform>,IVF1,PQ<M> instead, or search on the CPU (--device cpu)")
        half = pq_tables(base.pq.M, base.pq.nbits, fp16=fp16, shared_memory=shared_memory)
        return GpuSupport(half, pq_as_ivf=True,
                          note=f"IndexPQ as IVF1,PQ{base.pq.M} (same codes and scores), "
                               f"{'float16' if half else 'float32'} lookup tables")
    if type(base) is faiss.IndexIVFPQ:
        if not base.by_residual or base.polysemous_ht != 0:
            raise GpuRefusal("Faiss's GPU IVF-PQ needs residual encoding without polysemous codes; build it with "
                             f"hardneg's ivf<L>pq<M> kinds (which use PQ<M>np), or use {GPU_KINDS}")
        half = pq_tables(base.pq.M, base.pq.nbits, fp16=fp16, shared_memory=shared_memory)
        return GpuSupport(half, note=f"{'float16' if half else 'float32'} lookup tables")
    if isinstance(base, faiss.IndexIVFFlat | faiss.IndexIVFScalarQuantizer):
        return GpuSupport(False, note="fp16 does not apply to IVF storage" if fp16 else "")
    if isinstance(base, faiss.IndexScalarQuantizer) and base.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        return GpuSupport(True, note="an fp16 scalar quantizer, held as a float16 flat index")
    raise GpuRefusal(f"Faiss has no GPU version of {name} (its GPU cloner takes IndexFlat, IndexIVFFlat, "
                     f"IndexIVFPQ and IndexIVFScalarQuantizer); use {GPU_KINDS}")


def gpu_unsupported(index, *, fp16: bool = False, shared_memory: int = GPU_SHARED_MEMORY) -> str | None:
    """Why Faiss cannot search ``index`` on a GPU (``None`` when it can)."""
    try:
        gpu_support(index, fp16=fp16, shared_memory=shared_memory)
    except GpuRefusal as exc:
        return str(exc)
    return None


def pq_as_ivf(index):
    """An ``IndexIVFPQ`` with one inverted list whose centroid is the zero vector, holding ``index``'s
    (an ``IndexPQ``) codebook and codes unchanged: each residual is the vector itself, so the codes
    are IndexPQ's and every score is ``<q, 0> + <q, decoded code>``, IndexPQ's score (CPU Faiss gives
    the same ids and scores; ``test_pq_as_ivf_searches_exactly_like_index_pq``). Faiss's GPU IVF-PQ
    accepts it (residual encoding is all it implements); copies the codes (``M`` bytes per vector)."""
    faiss = _faiss()

    pq = faiss.downcast_index(index)
    d, n = int(pq.d), int(pq.ntotal)
    quantizer = faiss.IndexFlat(d, pq.metric_type)
    quantizer.add(np.zeros((1, d), dtype=np.float32))
    ivf = faiss.IndexIVFPQ(quantizer, d, 1, int(pq.pq.M), int(pq.pq.nbits), pq.metric_type)
    ivf.pq = pq.pq  # a copy of the trained codebook
    ivf.by_residual = True
    ivf.polysemous_ht = 0
    ivf.is_trained = True
    ivf.nprobe = 1
    if n:
        codes = faiss.vector_to_array(pq.codes)
        ids = np.arange(n, dtype=np.int64)
        ivf.invlists.add_entries(0, n, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
        ivf.ntotal = n
    return ivf


def index_nbytes(index, *, float16: bool = False) -> int:
    """Memory ``index`` takes (its codes, IVF ids and centroids); ``float16``: a flat index in fp16."""
    faiss = _faiss()

    ivf = faiss.try_extract_index_ivf(index) if hasattr(faiss, "try_extract_index_ivf") else None
    if ivf is not None:
        return int(ivf.ntotal) * (int(ivf.code_size) + 8) + int(ivf.nlist) * int(ivf.d) * 4
    try:
        per_row = int(index.sa_code_size())
    except RuntimeError:
        per_row = int(index.d) * 4
    if float16 and isinstance(unwrap(index), faiss.IndexFlat):
        per_row = int(index.d) * 2
    return int(index.ntotal) * per_row


# ---------------------------------------------------------------------------- which GPUs
def multi_process() -> bool:
    """Several processes share this machine's GPUs (torchrun: a process group of more than one rank, or
    ``LOCAL_WORLD_SIZE`` > 1): each then uses its own GPU only."""
    return dist.is_distributed() or int(os.environ.get("LOCAL_WORLD_SIZE") or 1) > 1


def rank_gpu(ngpu: int) -> int:
    """This rank's GPU: torch's current device once the process group set it (``init_from_env``), else
    ``LOCAL_RANK`` when that GPU is visible, else GPU 0 (a launcher that shows each process one GPU)."""
    if dist.is_initialized() and torch.cuda.is_available():
        return int(torch.cuda.current_device())
    local = dist.local_rank()
    return local if 0 <= local < ngpu else 0


def cuda_index(device: int | str | torch.device) -> int:
    """The CUDA ordinal of ``device`` (``3``, ``"cuda:3"``, ``torch.device("cuda", 3)``; ``"cuda"``: the
    current device); a CPU device is a :class:`HardnegError`."""
    if isinstance(device, bool) or not isinstance(device, int | str | torch.device):
        raise HardnegError(f"a GPU for Faiss must be an index or a CUDA device, not {device!r}")
    if isinstance(device, int):
        return device
    dev = torch.device(device)
    if dev.type != "cuda":
        raise HardnegError(f"Faiss GPU search was asked for on {dev}, which is not a CUDA device")
    return int(dev.index) if dev.index is not None else int(torch.cuda.current_device())


def gpu_devices(device: int | str | torch.device | None, ngpu: int) -> list[int]:
    """The GPUs an index goes on: ``device`` alone when given; else this rank's GPU under a multi-process
    launch (:func:`rank_gpu`), else all ``ngpu`` GPUs."""
    if device is None:
        return [rank_gpu(ngpu)] if multi_process() else list(range(ngpu))
    i = cuda_index(device)
    if not 0 <= i < ngpu:
        raise HardnegError(f"GPU {i} was asked for Faiss, but the installed Faiss sees {ngpu} GPU(s)")
    return [i]


def gpu_free_memory(devices: Sequence[int]) -> list[int] | None:
    """Free bytes on each of ``devices`` (torch's view), or ``None`` when unknown."""
    try:
        if not torch.cuda.is_available():
            return None
        return [int(torch.cuda.mem_get_info(i)[0]) for i in devices if i < torch.cuda.device_count()] or None
    except Exception:  # noqa: BLE001 - a broken CUDA set-up: the plan falls back to replicating
        return None


def gpu_shared_memory(devices: Sequence[int]) -> int:
    """Shared memory per thread block on the smallest of ``devices`` (torch's view; else 48 KiB)."""
    try:
        if torch.cuda.is_available():
            return min(int(getattr(torch.cuda.get_device_properties(i), "shared_memory_per_block",
                                   GPU_SHARED_MEMORY)) for i in devices)
    except Exception:  # noqa: BLE001 - unknown: Faiss's own check still runs when it clones
        pass
    return GPU_SHARED_MEMORY


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
        return "replicate", f"{size_text(index_bytes)} fits in one GPU ({size_text(smallest)} free)"
    if ngpu > 1 and index_bytes / ngpu <= headroom * smallest:
        return "shard", (f"{size_text(index_bytes)} does not fit in one GPU ({size_text(smallest)} free); "
                         f"{size_text(index_bytes / ngpu)} per GPU over {ngpu}")
    return "none", (f"{size_text(index_bytes)} does not fit in GPU memory ({ngpu} GPU(s), "
                    f"{size_text(smallest)} free on the smallest)")


# ---------------------------------------------------------------------------- the move
@dataclass
class GpuMove:
    """A decided move: the CPU index handed to Faiss's cloner, the GPUs and the options."""

    source: Any  # the CPU index to clone (an IndexPQ's IVF1,PQ form)
    devices: tuple[int, ...]
    shard: bool
    support: GpuSupport
    nbytes: int
    why: str

    def describe(self) -> str:
        how = "sharded over" if self.shard else ("replicated on" if len(self.devices) > 1 else "on")
        gpus = ", ".join(f"cuda:{i}" for i in self.devices)
        note = f"; {self.support.note}" if self.support.note else ""
        return f"{how} {gpus} ({size_text(self.nbytes)}{note}): {self.why}"


def plan_move(index, *, ngpu: int, device: int | str | torch.device | None = None, fp16: bool = False,
              mode: str | None = None) -> GpuMove:
    """Decide where and how ``index`` goes onto the GPUs (:func:`gpu_devices`, :func:`gpu_support`,
    :func:`gpu_plan`); :class:`GpuRefusal` when it cannot. Converts an IndexPQ (:func:`pq_as_ivf`)."""
    devices = gpu_devices(device, ngpu)
    support = gpu_support(index, fp16=fp16, shared_memory=gpu_shared_memory(devices))
    source = pq_as_ivf(index) if support.pq_as_ivf else index
    nbytes = index_nbytes(source, float16=support.use_float16)
    plan, why = gpu_plan(nbytes, gpu_free_memory(devices), mode)
    if plan == "none":
        flat32 = not support.use_float16 and isinstance(unwrap(index), _faiss().IndexFlat)
        raise GpuRefusal(why + ("; a flat index in fp16 storage takes half" if flat32 else ""))
    if device is None and len(devices) == 1 and multi_process():
        why = f"this rank's own GPU; {why}"
    return GpuMove(source, tuple(devices), plan == "shard" and len(devices) > 1, support, nbytes, why)


def cloner_options(options, move: GpuMove):
    """Set ``options`` (a ``GpuClonerOptions`` or ``GpuMultipleClonerOptions``) for ``move``."""
    options.useFloat16 = bool(move.support.use_float16)
    if hasattr(options, "use_cuvs"):
        options.use_cuvs = False  # Faiss's own kernels: the limits checked above are theirs
    if hasattr(options, "shard"):
        options.shard = bool(move.shard)
    return options


def _clone_one(faiss, resources, device: int, move: GpuMove):
    options = cloner_options(faiss.GpuClonerOptions(), move)
    if not move.support.paged_flat:
        return faiss.index_cpu_to_gpu(resources, device, move.source, options)
    # an fp16 flat: clone it empty, then add the vectors (GpuIndexFlat.add reserves once and converts
    # page by page; cloning the full index would first copy every fp32 vector to the GPU)
    flat = faiss.downcast_index(move.source)  # IndexFlat's get_xb (move.source keeps the object alive)
    gpu = faiss.index_cpu_to_gpu(resources, device, faiss.IndexFlat(int(flat.d), flat.metric_type), options)
    n, d = int(flat.ntotal), int(flat.d)
    if n:
        gpu.add(faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d))
    return gpu


def clone_to_gpus(move: GpuMove) -> tuple[Any, list]:
    """Run ``move``: the GPU index and the GPU resources it uses (keep both while searching)."""
    faiss = _faiss()

    if len(move.devices) == 1:
        resources = faiss.StandardGpuResources()
        return _clone_one(faiss, resources, move.devices[0], move), [resources]
    if move.support.paged_flat and not move.shard:  # fp16 replicas, each filled page by page
        replicas = faiss.IndexReplicas(int(move.source.d))
        resources = []
        for device in move.devices:
            resources.append(faiss.StandardGpuResources())
            replicas.addIndex(_clone_one(faiss, resources[-1], device, move))
        return replicas, resources
    options = cloner_options(faiss.GpuMultipleClonerOptions(), move)
    return faiss.index_cpu_to_gpus_list(move.source, co=options, gpus=list(move.devices)), []


def size_text(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def faiss_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1].split("Error: ")[-1].strip() if text else type(exc).__name__
