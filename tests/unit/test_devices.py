"""Device resolution: --device auto|cpu|cuda|cuda:N, and a clear error where CUDA is missing."""

from __future__ import annotations

import pytest
import torch

from hardneg import devices
from hardneg.devices import DeviceError, faiss_placement, resolve_device


def test_cpu_and_auto_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("") == torch.device("cpu")  # empty means auto
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_cuda_says_what_was_found(monkeypatch, spec):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA device") as err:
        resolve_device(spec)
    assert err.value.exit_code == 2 and "--device cpu" in str(err.value)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cpu:0", "auto:1"])
def test_bad_spelling(monkeypatch, spec):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_cuda_present(monkeypatch):
    monkeypatch.setattr(devices, "_GPU_IN_USE", None)  # resolve_device remembers its GPU; restored afterwards
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake{i}")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"found 2 CUDA device\(s\): cuda:0 Fake0, cuda:1 Fake1"):
        resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun chose the rank's GPU
    assert resolve_device("auto") == torch.device("cuda", 1)


def test_faiss_placement_never_silent(monkeypatch, caplog):
    import faiss

    assert faiss_placement(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    with caplog.at_level("WARNING"):
        assert faiss_placement(torch.device("cuda", 0)) == "cpu"
    assert "no GPU support" in caplog.text
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    assert faiss_placement(torch.device("cuda", 0)) == "gpu"


def test_place_index_puts_the_index_beside_the_encoder(monkeypatch):
    """Which GPU(s) :func:`place_index` hands to ``FaissIndex.to_gpu``: none for a CPU encoder; every GPU
    (``None``) in one process; the encoder's own GPU under a multi-process launch; and a CPU-only Faiss is
    a warning, or an error when GPU search is required."""
    import faiss

    from hardneg.devices import place_index
    from hardneg.index import faiss_gpu

    calls = []

    class Index:
        def to_gpu(self, device=None, *, fp16=False, required=False, mode=None):
            calls.append((device, fp16, required))
            return True

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert place_index(Index(), torch.device("cpu")) is False and calls == []
    assert place_index(Index(), torch.device("cuda", 1), fp16=True) is True
    assert calls[-1] == (None, True, False)  # one process: every GPU
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert faiss_gpu.multi_process()
    place_index(Index(), torch.device("cuda", 1), required=True)
    assert calls[-1] == (torch.device("cuda", 1), False, True)  # torchrun: the rank's own GPU only
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    assert place_index(Index(), torch.device("cuda", 0)) is False and len(calls) == 2
    with pytest.raises(DeviceError, match="no GPU support"):
        place_index(Index(), torch.device("cuda", 0), required=True)


def test_peak_memory_is_the_blocks_own_and_leaves_the_process_peak_alone():
    """A block that holds 256 MiB reports at least that much above the memory in use before it, also after freeing
    it; the next block, which allocates nothing, reports less than the first. The process's own high-water mark
    (what ``/usr/bin/time`` and schedulers report) is never reset."""
    import numpy as np

    from hardneg.devices import PeakMemory, _proc_kb

    with PeakMemory() as first:
        before = _proc_kb("VmRSS") / 1024
        block = np.ones(256 * 2**20 // 8)  # 256 MiB, touched
        during = first.read()
        del block
        after = first.read()
    assert first.scope == "block" and during["peak_rss_scope"] == "block"
    assert during["peak_rss_mb"] >= before + 250 and after["peak_rss_mb"] >= during["peak_rss_mb"]
    with PeakMemory() as second:
        pass
    assert second.read()["peak_rss_mb"] < during["peak_rss_mb"] - 200
    assert "peak_gpu_mb" not in second.read()  # no CUDA in use
    assert _proc_kb("VmHWM") / 1024 >= during["peak_rss_mb"] - 1  # the process's peak still holds the first block's


def test_a_stages_peak_is_the_largest_over_its_attempts():
    from hardneg.experiment.execute import peaks

    assert peaks(None, {"peak_rss_mb": 10.0, "peak_rss_scope": "block"}) == {"peak_rss_mb": 10.0,
                                                                             "peak_rss_scope": "block"}
    earlier = {"status": "running", "peak_rss_mb": 30.0, "peak_rss_scope": "block", "peak_gpu_mb": 5.0}
    now = {"peak_rss_mb": 20.0, "peak_rss_scope": "block", "peak_gpu_mb": 7.0}
    assert peaks(earlier, now) == {"peak_rss_mb": 30.0, "peak_rss_scope": "block", "peak_gpu_mb": 7.0}
    assert peaks({**earlier, "peak_rss_scope": "process"}, now)["peak_rss_scope"] == "process"
    assert peaks({"status": "running"}, now) == now  # an attempt from before peaks were recorded


def test_the_gpu_a_stage_records_is_the_one_it_was_given_whichever_thread_asks(monkeypatch):
    """CUDA's current device is per thread (a heartbeat thread's is 0): the machine record and the GPU peak name the
    device resolve_device gave, cuda:1 here; before CUDA starts, no GPU and nothing is asked of CUDA."""
    import threading

    from hardneg.devices import PeakMemory, gpu_in_use, machine_record

    monkeypatch.setattr(devices, "_GPU_IN_USE", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # as in a thread that never set one
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: ["H100", "A100"][i])
    asked: list[int] = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda i: asked.append(i))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda i: (i + 1) * 2**30)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert gpu_in_use() is None and machine_record()["gpu"] is None  # CUDA not started yet
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    seen = {}
    thread = threading.Thread(target=lambda: seen.update(gpu=machine_record()["gpu"]))
    thread.start()
    thread.join()
    assert seen["gpu"] == "A100" and machine_record()["gpu"] == "A100"
    with PeakMemory() as peak:
        assert peak.read()["peak_gpu_mb"] == 2048.0
    assert asked == [1]


def test_one_machine_is_one_cpu_and_one_gpu():
    """A stage run on the CPU of a GPU host is another machine than a GPU stage there (their times do not
    compare); the same host is told by CPU, cache and cores alone."""
    from hardneg.devices import distinct_machines, same_host, same_machine

    cpu = {"cpu": "Xeon", "cpu_features": ["avx2"], "cache": "1 MB", "cores": 16, "gflops": 300.0}
    on_cpu, on_gpu = {**cpu, "gpu": None}, {**cpu, "gpu": "H100", "gflops": 310.0}
    assert not same_machine(on_cpu, on_gpu) and distinct_machines([on_cpu, on_gpu]) == [on_cpu, on_gpu]
    assert same_machine(on_gpu, {**on_gpu, "gflops": 1.0}) and distinct_machines([on_gpu, {**on_gpu, "gflops": 1}]) \
        == [on_gpu]
    assert same_host(on_cpu, on_gpu) and not same_host(on_cpu, {**on_cpu, "cores": 8}) and not same_host({}, {})
