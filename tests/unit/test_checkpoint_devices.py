"""Checkpoints across devices and ranks: every RNG saved and restored (CUDA's through fakes: no GPU here),
every file loaded onto the CPU whatever device wrote it, and the GPU a process picks under launchers that
show it all of a node's GPUs or only its own."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch

import hardneg.distributed as hdist
from conftest import train_config, write_tiny_train
from hardneg.devices import resolve_device
from hardneg.errors import HardnegError
from hardneg.train.checkpoint import CHECKPOINT_VERSION, MAP_LOCATION, load_checkpoint, save_checkpoint
from hardneg.train.trainer import Trainer

# ----------------------------------------------------------------------------- helpers
#: the trainer_state.json the checkpoint tests write (``load_checkpoint``'s fingerprint: "f")
STATE = {"version": CHECKPOINT_VERSION, "config_fingerprint": "f"}


class Towers(torch.nn.Module):
    """The two attributes a checkpoint reads from a model: one shared tower with dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.doc_model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
        self.query_model = self.doc_model


def trained_objects():
    torch.manual_seed(0)
    model = Towers()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    for _ in range(2):
        scaler.scale(model.doc_model(torch.randn(3, 4)).square().sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler, scaler


def draws() -> tuple:
    """One draw from every CPU-side RNG a training step may use."""
    return random.random(), random.gauss(0, 1), np.random.random_sample(3).tolist(), torch.rand(3).tolist()


class FakeCuda:
    """Stands in for ``torch.cuda``'s RNG calls: ``n`` GPUs with 16-byte generator states."""

    def __init__(self, monkeypatch, n: int = 2, current: int = 1) -> None:
        self.states = [torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(n)]
        self.set_all: list[list[torch.Tensor]] = []
        self.set_one: list[tuple[torch.Tensor, int]] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self._set_all)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self._set_one)

    def _set_all(self, states) -> None:
        states = list(states)
        self.set_all.append(states)
        self.states = [s.clone() for s in states]

    def _set_one(self, state, device=None) -> None:
        self.set_one.append((state, device))
        self.states[device] = state.clone()


# ----------------------------------------------------------------------------- which GPU a process takes
@pytest.mark.parametrize("local_rank, visible, gpu", [(0, 8, 0), (3, 8, 3), (7, 8, 7), (0, 1, 0), (3, 1, 0)])
def test_a_process_takes_gpu_local_rank_or_its_only_gpu(local_rank, visible, gpu):
    assert hdist.cuda_index_for(local_rank, visible) == gpu


@pytest.mark.parametrize("local_rank, visible, says", [(3, 2, "sees 2 GPUs"), (0, 0, "no CUDA device")])
def test_an_ambiguous_or_empty_gpu_layout_is_refused(local_rank, visible, says):
    with pytest.raises(HardnegError, match=says):
        hdist.cuda_index_for(local_rank, visible)


@pytest.mark.parametrize("visible, gpu", [(1, 0), (4, 3)])
def test_resolve_device_under_a_per_process_gpu_launcher(monkeypatch, visible, gpu):
    """SLURM ``--gpus-per-task=1``: LOCAL_RANK 3 sees one GPU, cuda:0 (set_device(3) would fail)."""
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert resolve_device("auto") == torch.device("cuda", gpu)
    assert resolve_device("cuda") == torch.device("cuda", gpu)


def test_init_from_env_sets_the_only_visible_gpu(monkeypatch):
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("gpu", i))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, timeout: calls.setdefault("backend", backend))
    assert hdist.init_from_env()
    assert calls == {"gpu": 0, "backend": "nccl"}


# ----------------------------------------------------------------------------- RNG states
def test_every_cpu_rng_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    torch.save(hdist.rng_state(torch.device("cpu")), tmp_path / "rng.pt")
    expected = draws()
    draws()
    hdist.set_rng_state(torch.load(tmp_path / "rng.pt", map_location="cpu", weights_only=True), "cpu")
    assert draws() == expected


def test_cuda_rng_states_of_every_gpu_are_saved_and_restored(tmp_path, monkeypatch):
    cuda = FakeCuda(monkeypatch, n=2, current=1)
    model, optimizer, scheduler, scaler = trained_objects()
    saved = [s.clone() for s in cuda.states]
    save_checkpoint(tmp_path / "ck", model, optimizer, scheduler, STATE, {}, scaler=scaler)
    rng = torch.load(tmp_path / "ck" / "rng.pt", weights_only=True)
    assert [s.tolist() for s in rng["cuda"]] == [s.tolist() for s in saved] and rng["cuda_current"] == 1
    cuda.states = [torch.zeros(16, dtype=torch.uint8) for _ in range(2)]  # training went on
    load_checkpoint(tmp_path / "ck", model, optimizer, scheduler, "f", scaler=scaler)
    assert len(cuda.set_all) == 1
    assert [s.tolist() for s in cuda.states] == [s.tolist() for s in saved]


def test_a_rank_whose_gpu_index_changed_continues_its_own_cuda_stream(monkeypatch):
    """Written by rank 1 on cuda:1 of a 2-GPU node; resumed under a launcher that shows it one GPU."""
    writer = FakeCuda(monkeypatch, n=2, current=1)
    state = hdist.rng_state(torch.device("cuda", 1))
    assert state["device_type"] == "cuda"
    reader = FakeCuda(monkeypatch, n=1, current=0)
    hdist.set_rng_state(state, torch.device("cuda", 0))
    assert reader.set_all == [] and len(reader.set_one) == 1
    assert reader.states[0].tolist() == writer.states[1].tolist()


def test_a_gpu_checkpoint_resumes_on_a_cpu_machine_and_says_dropout_differs(monkeypatch, caplog):
    FakeCuda(monkeypatch)
    random.seed(5)
    state = hdist.rng_state(torch.device("cuda", 1))
    expected = draws()
    monkeypatch.undo()  # this machine: no CUDA
    assert not torch.cuda.is_available()
    draws()
    with caplog.at_level(logging.WARNING, logger="hardneg.distributed"):
        hdist.set_rng_state(state, torch.device("cpu"))
    assert draws() == expected  # the CPU-side streams continue exactly
    assert "written on cuda" in caplog.text and "dropout" in caplog.text


def test_a_checkpoint_without_cuda_states_resumed_on_a_gpu_says_so(monkeypatch, caplog):
    """What a single-process GPU checkpoint of older hardneg holds: the CPU generator only."""
    old = {"torch": torch.get_rng_state(), "python": random.getstate()[1]}
    cuda = FakeCuda(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="hardneg.distributed"):
        hdist.set_rng_state(old, torch.device("cuda", 0))
    assert "no CUDA RNG state" in caplog.text and cuda.set_all == cuda.set_one == []


def test_each_rank_restores_its_own_streams(tmp_path, monkeypatch):
    model, optimizer, scheduler, scaler = trained_objects()
    ranks, expected = [], []
    for seed in (10, 11):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        ranks.append(hdist.rng_state(torch.device("cpu")))
        expected.append(draws())
    save_checkpoint(tmp_path / "ck", model, optimizer, scheduler, STATE, {}, rng_extra={"ranks": ranks})
    monkeypatch.setattr(hdist, "rank", lambda: 1)
    monkeypatch.setattr(hdist, "world_size", lambda: 2)
    load_checkpoint(tmp_path / "ck", model, optimizer, scheduler, "f")
    assert draws() == expected[1]


# ----------------------------------------------------------------------------- map_location
def test_every_checkpoint_file_is_loaded_onto_the_cpu_weights_only(tmp_path, monkeypatch):
    model, optimizer, scheduler, scaler = trained_objects()
    save_checkpoint(tmp_path / "ck", model, optimizer, scheduler, STATE, {}, scaler=scaler)
    seen, real_load = {}, torch.load

    def recording_load(path, **kw):
        seen[path.name] = (kw.get("map_location"), kw.get("weights_only"))
        return real_load(path, **kw)

    monkeypatch.setattr(torch, "load", recording_load)
    load_checkpoint(tmp_path / "ck", model, optimizer, scheduler, "f", scaler=scaler)
    assert MAP_LOCATION == "cpu"
    assert seen == {name: ("cpu", True) for name in ("optimizer.pt", "scheduler.pt", "rng.pt", "scaler.pt")}


def _as_if_written_on_a_gpu(folder, monkeypatch) -> None:
    """Rewrite a checkpoint's torch files so that every tensor says cuda:0 (what a GPU run writes), and give
    ``rng.pt`` a GPU run's CUDA generator state."""
    contents = {}
    for path in sorted(folder.glob("*.pt")):
        contents[path] = torch.load(path, weights_only=True)
    rng = contents[folder / "rng.pt"]
    rng.update(device_type="cuda", cuda=[torch.zeros(16, dtype=torch.uint8)], cuda_current=0)
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        for path, obj in contents.items():
            torch.save(obj, path)
    with pytest.raises(RuntimeError, match="CUDA"):  # the files now really name a GPU
        torch.load(folder / "optimizer.pt", weights_only=True)


def test_a_gpu_written_checkpoint_resumes_on_the_cpu_bit_for_bit(tmp_path, tiny_model_dir, kill_and_resume,
                                                                 monkeypatch, caplog):
    """Kill after the step-2 checkpoint, retag that checkpoint's files as cuda:0, resume here (no CUDA):
    with dropout on, the weights equal an uninterrupted run's."""
    data = write_tiny_train(tmp_path / "tiny-train")
    made: list[str] = []

    def make(name):
        made.append(name)
        if made.count("b") == 2:  # the resume
            _as_if_written_on_a_gpu(tmp_path / "b" / "checkpoints" / "step-0000002", monkeypatch)
        return Trainer(train_config(tmp_path, data, tiny_model_dir, out=str(tmp_path / name)))

    with caplog.at_level(logging.WARNING, logger="hardneg.distributed"):
        straight, resumed = kill_and_resume(make)
    assert made == ["a", "b", "b"]
    assert json.loads((tiny_model_dir / "config.json").read_text())["hidden_dropout_prob"] > 0  # dropout on
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert "written on cuda" in caplog.text
