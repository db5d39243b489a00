"""One place that decides where things run: the encoder, its inputs and Faiss.

``--device`` takes ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or
``cuda:N``. Asking for CUDA where there is none is a :class:`DeviceError`
(exit 2) that says what was found. Under torchrun the rank's GPU wins: the
launcher already chose it (``LOCAL_RANK``), so ``auto``/``cuda`` map to it; a process that sees only one
GPU (a per-process-GPU launcher) uses cuda:0 (:func:`hardneg.distributed.cuda_index_for`).
:func:`place_index` puts a Faiss index beside the encoder: on the rank's own GPU
under torchrun, on every GPU in one process. :class:`PeakMemory` measures the peak memory of a block of work
(host RAM and the CUDA allocator's).
"""

from __future__ import annotations

import logging
import math
import re
import resource
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from hardneg import distributed as dist
from hardneg.errors import HardnegError
from hardneg.index import faiss_gpu, faiss_index

log = logging.getLogger(__name__)

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


class DeviceError(HardnegError):
    """A device was asked for that this machine does not have."""


def _found() -> str:
    if not torch.cuda.is_available():
        return "this machine has no CUDA device (torch.cuda.is_available() is False" + (
            f"; torch {torch.__version__} was built without CUDA)" if torch.version.cuda is None else ")"
        )
    n = torch.cuda.device_count()
    names = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(n))
    return f"found {n} CUDA device(s): {names}"


#: the CUDA device :func:`resolve_device` last gave this process (:func:`gpu_in_use`)
_GPU_IN_USE: int | None = None


def gpu_in_use() -> int | None:
    """The index of the CUDA device this process works on, once it has started CUDA (None before, and for work on
    the CPU: CUDA is not started to ask). It is the one :func:`resolve_device` last gave, whichever thread asks:
    CUDA's current device is per thread, and a heartbeat thread's is device 0."""
    if not torch.cuda.is_initialized():
        return None
    return _GPU_IN_USE if _GPU_IN_USE is not None else torch.cuda.current_device()


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a ``--device`` value into a :class:`torch.device`, or explain why not (a CUDA one is remembered:
    :func:`gpu_in_use`)."""
    device = _resolve(spec)
    if device.type == "cuda":
        global _GPU_IN_USE
        _GPU_IN_USE = device.index
    return device


def _resolve(spec: str | torch.device | None) -> torch.device:
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    match = _SPEC.match(text)
    if not match or (match.group(1) != "cuda" and match.group(2) is not None):
        raise DeviceError(f"--device {spec!r} is not a device; use {DEVICE_CHOICES}")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", dist.local_cuda_index())
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {spec} was asked for, but {_found()}; use --device cpu or auto")
    if index is None:  # the rank's GPU (LOCAL_RANK, or the only one a per-process-GPU launcher shows)
        return torch.device("cuda", dist.local_cuda_index())
    i = int(index)
    if i >= torch.cuda.device_count():
        raise DeviceError(f"--device {spec} was asked for, but {_found()}; pick an index below "
                          f"{torch.cuda.device_count()}")
    return torch.device("cuda", i)


def faiss_gpus() -> int:
    """How many GPUs the installed Faiss can use (0 for faiss-cpu)."""
    return faiss_index.gpu_count()


def faiss_placement(device: torch.device, *, quiet: bool = False) -> str:
    """``"gpu"`` when searches can run on GPU Faiss for this device, else ``"cpu"``.

    A CUDA device with a CPU-only Faiss build is not an error (search is
    correct, only slower), but it is said once, never silently.
    """
    if device.type != "cuda":
        return "cpu"
    if faiss_gpus() > 0:
        return "gpu"
    if not quiet:
        log.warning("the encoder runs on %s but the installed Faiss has no GPU support, so searches run "
                    "on the CPU (pip install faiss-gpu-cu12 for GPU search)", device)
    return "cpu"


def place_index(index: faiss_index.FaissIndex, device: torch.device, *, fp16: bool = False,
                required: bool = False, quiet: bool = True) -> bool:
    """Search ``index`` on GPU Faiss when the encoder's ``device`` is CUDA and the installed Faiss has GPUs;
    returns whether it does. The one call for every caller that holds an encoder and an index.

    Under a multi-process launch (torchrun) the index goes on ``device``, the rank's own GPU, so that
    ranks never stack copies on one GPU; in one process on every GPU (replicated, or sharded when it does
    not fit one: :meth:`FaissIndex.to_gpu`). ``fp16``: a flat index stored in float16 (``--index-fp16``).
    ``required``: a refusal (HNSW, a PQ size Faiss's GPU kernels lack, too big) or a CPU-only Faiss is a
    :class:`HardnegError` rather than a warning. ``quiet``: the CPU-only-Faiss warning is left to
    :func:`faiss_placement` called once elsewhere."""
    if device.type != "cuda":
        return False
    if faiss_placement(device, quiet=quiet) != "gpu":
        if required:
            raise DeviceError(f"GPU search was asked for on {device}, but the installed Faiss has no GPU support "
                              "(faiss-cpu); pip install faiss-gpu-cu12, or search on the CPU")
        return False
    target = device if faiss_gpu.multi_process() else None
    return index.to_gpu(target, fp16=fp16, required=required)


_STATUS = Path("/proc/self/status")
#: how often :class:`PeakMemory` samples the resident memory between the kernel's high-water marks
SAMPLE_SECONDS = 0.1


def _proc_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``); None where there is no such file (not Linux)."""
    try:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _process_peak_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    hwm = _proc_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class PeakMemory:
    """The peak memory of the block it wraps, in this process: ``with PeakMemory() as peak: ...; peak.read()``.

    ``peak_rss_mb``: resident host memory (RAM). The process's high-water mark is never reset (``/usr/bin/time``, a
    scheduler's accounting and the next block still see the whole process's peak): when the block raises it, the
    block's peak is that mark, exactly; otherwise a thread samples the resident memory every
    :data:`SAMPLE_SECONDS` while the block runs and its largest sample is the block's peak (a spike shorter than
    that can be missed). Where ``/proc`` is missing (not Linux) it is the process's peak so far and
    ``peak_rss_scope`` says ``process`` instead of ``block``. ``peak_gpu_mb`` (when CUDA is in use): the PyTorch
    caching allocator's peak reserved memory on the current device since the block started; Faiss's GPU indexes
    allocate outside it and are not counted. :meth:`read` can be called while the block runs (the peak so far)."""

    def __enter__(self) -> PeakMemory:
        self._start_hwm = _proc_kb("VmHWM")
        self.scope = "block" if self._start_hwm is not None else "process"
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.scope == "block":
            self._sample()
            self._thread = threading.Thread(target=self._run, name="hardneg-peak-memory", daemon=True)
            self._thread.start()
        if (gpu := gpu_in_use()) is not None:
            torch.cuda.reset_peak_memory_stats(gpu)
        return self

    def _sample(self) -> None:
        self._sampled = max(self._sampled, _proc_kb("VmRSS") or 0)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return None

    def read(self) -> dict[str, Any]:
        if self.scope == "block":
            self._sample()
            hwm = _proc_kb("VmHWM") or 0
            if hwm > self._start_hwm:  # the block set the process's record: that is its peak
                self._sampled = max(self._sampled, hwm)
            peak_kb = self._sampled
            peak: dict[str, Any] = {"peak_rss_mb": round(peak_kb / 1024, 1), "peak_rss_scope": "block"}
        else:
            peak = {"peak_rss_mb": round(_process_peak_mb(), 1), "peak_rss_scope": "process"}
        if (gpu := gpu_in_use()) is not None:
            peak["peak_gpu_mb"] = round(torch.cuda.max_memory_reserved(gpu) / 2**20, 1)
        return peak


# ----------------------------------------------------------------------------- the machine a stage ran on
#: the CPU features that change how fast the same code runs (vector width, matrix units)
_CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
#: a square fp32 matmul of this size, timed to give :func:`machine_record`'s ``gflops``
_CALIBRATION_N = 512
_MACHINES: dict[int, dict[str, Any]] = {}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _gflops() -> float:
    """Single-precision matmul speed with torch's current threads (GFLOP/s, the best of five timings of a few
    matmuls): a calibration that tells two machines apart and shows how much slower one is, not a benchmark.
    Constant inputs: the global random generator is left as it was."""
    import time

    a = torch.full((_CALIBRATION_N, _CALIBRATION_N), 0.5)
    b = torch.full((_CALIBRATION_N, _CALIBRATION_N), 0.25)
    torch.mm(a, b)  # warm-up: thread pool, allocator
    best = math.inf
    for _ in range(5):
        tic = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - tic) / 4)
    return round(2 * _CALIBRATION_N ** 3 / best / 1e9, 1)


def machine_record() -> dict[str, Any]:
    """The machine this process runs on, for a stage's ``stage.json`` (``machines``): ``cpu`` (model name),
    ``cpu_features`` (those of :data:`_CPU_FEATURES` it has), ``cache`` (its cache size), ``cores`` (the cores
    this process may use), ``gpu`` (the name of the CUDA device this process uses, once it has used one; None
    for work on the CPU, even on a machine with GPUs: CUDA is not started to ask) and ``gflops`` (:func:`_gflops`,
    at torch's current thread count; lower while other work shares the cores). The CPU part is measured once per
    process and thread count. Everything but ``gflops`` is the machine's identity (:func:`machine_identity`)."""
    threads = torch.get_num_threads()
    if threads not in _MACHINES:
        import os
        import platform

        info = _cpuinfo()
        flags = set(info.get("flags", "").split())
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        _MACHINES[threads] = {
            "cpu": info.get("model name") or platform.processor() or platform.machine(),
            "cpu_features": [f for f in _CPU_FEATURES if f in flags],
            "cache": info.get("cache size"),
            "cores": cores,
            "gflops": _gflops(),
        }
    gpu = gpu_in_use()
    return {**_MACHINES[threads], "gpu": torch.cuda.get_device_name(gpu) if gpu is not None else None}


def machine_identity(record: dict[str, Any]) -> tuple[Any, ...]:
    """What tells machines apart in a :func:`machine_record` (its speed measure aside, which varies with load)."""
    return (record.get("cpu"), tuple(record.get("cpu_features") or ()), record.get("cache"), record.get("cores"),
            record.get("gpu"))


def same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`machine_record` s are one machine (:func:`machine_identity`): the same CPU, cache and cores
    and the same GPU, or both none (a stage run on the CPU of a GPU host is another machine than a GPU stage there:
    their times do not compare)."""
    return machine_identity(a) == machine_identity(b)


def same_host(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two recorded :func:`machine_record` s have the same CPU, cache and cores, whatever their GPUs."""
    return bool(a) and bool(b) and machine_identity(a)[:-1] == machine_identity(b)[:-1]


def distinct_machines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` without repeats of a machine (:func:`same_machine`), in order."""
    out: list[dict[str, Any]] = []
    for record in records:
        if not any(same_machine(record, m) for m in out):
            out.append(record)
    return out


def machine_label(record: dict[str, Any]) -> str:
    """A :func:`machine_record` in words (``Intel Xeon (avx2, avx512f), cache 1024 KB, 2 cores, 95 GFLOP/s fp32
    matmul, no GPU``); an empty one (an attempt from before hardneg recorded it): ``not recorded``."""
    if not record:
        return "not recorded"
    features = f" ({', '.join(record['cpu_features'])})" if record.get("cpu_features") else ""
    cache = f", cache {record['cache']}" if record.get("cache") else ""
    speed = f", {record['gflops']:g} GFLOP/s fp32 matmul" if isinstance(record.get("gflops"), int | float) else ""
    gpu = f"GPU {record['gpu']}" if record.get("gpu") else "no GPU"
    return f"{record.get('cpu')}{features}{cache}, {record.get('cores')} cores{speed}, {gpu}"
