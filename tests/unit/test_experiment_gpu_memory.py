"""Memory between experiment stages: a stage's trainer, method and ADORE index die when the stage returns
(no reference cycle keeps them, so on a GPU the next stage finds the memory free), and the runner releases
what is left after every stage it ran."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from conftest import write_tiny_train
from hardneg.experiment import Experiment, Recipe, execute
from hardneg.experiment import runner as runner_module
from hardneg.index import faiss_index
from hardneg.train.methods.base import MethodContext, WeakCall

ADORE = {"max_steps": 1, "batch_size": 4, "adore_topk": 8, "dev_fraction": 0.25, "dev_every": 1, "save_every": 1,
         "query_max_length": 16, "doc_max_length": 32, "lr": 1e-3, "metric": "mrr@10", "warmup_ratio": 0.0}


def _recipe(tmp_path, model, systems: list[dict]) -> dict:
    data = write_tiny_train(tmp_path / "data", filler=20)
    (data / "qrels" / "test.tsv").write_text("q0\td0-0\t1\nq1\td1-0\t1\n")
    return {"name": "tiny", "data": str(data), "model": str(model), "cache_dir": str(tmp_path / "cache"),
            "adore": dict(ADORE), "eval": {"max_length": 32, "query_max_length": 16, "k": 10}, "systems": systems}


def test_adore_stage_leaves_no_reference_to_its_index(tmp_path, tiny_model_dir, monkeypatch):
    """Refcount-freed, not collected: the automatic collector is off while the stage runs, this test never
    calls ``gc.collect()``, and the runner's own :func:`release_memory` (which collects) is replaced by a probe
    that looks at the index the moment the stage has returned, before any collection. A reference cycle
    (Trainer ↔ MethodContext.train_mode, as before the fix) would leave the index alive there."""
    exp = Experiment(Recipe.from_dict(_recipe(tmp_path, tiny_model_dir, [{"name": "adore", "method": "adore"}])),
                     tmp_path / "out", quiet=True)
    indexes: list[weakref.ref] = []
    trainers: list[weakref.ref] = []
    init_index, init_trainer = faiss_index.FaissIndex.__init__, runner_module.Trainer.__init__

    def record_index(self, *args, **kwargs):
        init_index(self, *args, **kwargs)
        indexes.append(weakref.ref(self))

    def record_trainer(self, *args, **kwargs):
        init_trainer(self, *args, **kwargs)
        trainers.append(weakref.ref(self))

    alive_at_release: list[int] = []
    monkeypatch.setattr(faiss_index.FaissIndex, "__init__", record_index)
    monkeypatch.setattr(runner_module.Trainer, "__init__", record_trainer)
    monkeypatch.setattr(execute, "release_memory",
                        lambda: alive_at_release.append(sum(r() is not None for r in indexes + trainers)))
    gc.collect()  # garbage of earlier tests, before the collector is switched off
    gc.disable()
    try:
        outcome = exp.run(only=["train-adore"])
        alive_after = [r() for r in indexes + trainers if r() is not None]
    finally:
        gc.enable()
    assert outcome == {"train-adore": "done"}
    assert len(trainers) == 1 and indexes, "the stage built ADORE's index (FaissIndex) through its trainer"
    assert alive_at_release == [0], "the stage's trainer or index outlived it (a reference cycle)"
    assert alive_after == []


def test_runner_releases_memory_after_every_stage_it_runs(tmp_path, tiny_model_dir, monkeypatch):
    """After each stage that ran (not a cached one): ``gc.collect()``, and ``torch.cuda.empty_cache()`` when
    CUDA is present (faked here; the stage, BM25, touches no GPU)."""
    raw = _recipe(tmp_path, tiny_model_dir, [{"name": "bm25", "kind": "bm25"}])
    exp = Experiment(Recipe.from_dict(raw), tmp_path / "out", quiet=True)  # resolved on the CPU, before the fakes
    calls: list[str] = []
    collect = gc.collect
    monkeypatch.setattr(execute.gc, "collect", lambda *a: calls.append("collect") or collect(*a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    assert exp.run(only=["test-bm25"]) == {"test-bm25": "done"}
    assert calls == ["collect", "empty_cache"]
    calls.clear()
    assert exp.run(only=["test-bm25"]) == {"test-bm25": "cached"}
    assert calls == []  # nothing ran, nothing to release
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (exp.stage_dir("test-bm25") / "stage.json").unlink()
    assert exp.run(only=["test-bm25"]) == {"test-bm25": "done"}
    assert calls == ["collect"]  # no CUDA: no cache to empty


def test_runner_releases_memory_when_a_stage_fails(tmp_path, tiny_model_dir, monkeypatch):
    raw = _recipe(tmp_path, tiny_model_dir, [{"name": "bm25", "kind": "bm25"}])
    exp = Experiment(Recipe.from_dict(raw), tmp_path / "out", quiet=True)
    calls: list[int] = []
    monkeypatch.setattr(execute, "release_memory", lambda: calls.append(1))

    def fail(folder):
        raise RuntimeError("stage failed")

    exp.stages["test-bm25"].fn = fail
    with pytest.raises(RuntimeError, match="stage failed"):
        exp.run(only=["test-bm25"])
    assert calls == [1]


class _Host:
    def __init__(self) -> None:
        self.calls = 0

    def train_mode(self) -> None:
        self.calls += 1


def _context(train_mode) -> MethodContext:
    return MethodContext(config=None, model=None, dataset=None, cache_dir=None, store=None, doc_ids=[], queries={},
                         query_tokens={}, train_qrels={}, dev_qrels={}, positives={}, scale=1.0,
                         train_mode=train_mode)


def test_method_context_holds_its_hosts_train_mode_weakly():
    host = _Host()
    ctx = _context(host.train_mode)
    host.context = ctx  # the trainer keeps the context (through its method): with a strong bound method, a cycle
    assert isinstance(ctx.train_mode, WeakCall)
    ctx.train_mode()
    assert host.calls == 1
    ref = weakref.ref(host)
    gc.disable()
    try:
        del host
        assert ref() is None, "the context kept its host alive"
    finally:
        gc.enable()
    with pytest.raises(RuntimeError, match="train_mode: the training run this method belonged to is gone"):
        ctx.train_mode()


def test_method_context_keeps_a_plain_function_as_given():
    seen: list[int] = []

    def switch() -> None:
        seen.append(1)

    ctx = _context(switch)
    assert ctx.train_mode is switch
    ctx.train_mode()
    assert seen == [1]
