"""GradCache under torchrun (2 processes, gloo on CPU): the cross-device negatives keep their gradient.

* 2 processes × batch B with --grad-cache give the gradient of 1 process × batch 2B without it (dropout off:
  the ranks' dropout streams differ from one process's);
* with dropout on, 2-process GradCache gives the 2-process plain step's loss and gradient (the same streams).
"""

from __future__ import annotations

import json

import pytest
import torch
from test_distributed import WORKER, make_config, torchrun

from conftest import write_tiny_train
from hardneg.train.config import TrainConfig
from hardneg.train.trainer import Trainer

B = 3  # per rank


def _worst(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - g).abs().max()) for k, g in b.items())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("gc-ddp")
    data = write_tiny_train(tmp / "tiny-train", filler=20)
    reference, jobs = {}, []
    for name in ("inbatch", "star"):
        one = make_config(tmp, data, tiny_model_dir, name, 2 * B)
        one["train_chunk"] = 2
        trainer = Trainer(TrainConfig(**one))
        trainer.setup()  # also fills the cache the 2 processes then read
        trainer.model.eval()
        totals = trainer.step_gradients(1)
        reference[name] = {"totals": totals, "grads": {n: p.grad.detach().clone()
                                                       for n, p in trainer.model.named_parameters()
                                                       if p.grad is not None}}
        for variant, extra, dropout in (("gc", {"grad_cache": True}, False),
                                        ("gc-dropout", {"grad_cache": True}, True),
                                        ("plain-dropout", {}, True)):
            cfg = {**make_config(tmp, data, tiny_model_dir, name, B), "train_chunk": 2, **extra}
            cfg["out"] += f"-{variant}"
            jobs.append({"config": cfg, "step": 1, "dropout": dropout, "result": str(tmp / f"{name}-{variant}.pt")})
    args = tmp / "jobs.json"
    args.write_text(json.dumps(jobs))
    torchrun(str(WORKER), "step", str(args))
    two = {job["result"].rsplit("/", 1)[1][:-3]: torch.load(job["result"], weights_only=False) for job in jobs}
    return reference, two


@pytest.mark.parametrize("name", ["inbatch", "star"])
def test_two_process_grad_cache_equals_one_process_double_batch(runs, name):
    reference, two = runs
    one, gc = reference[name], two[f"{name}-gc"]
    for key, value in one["totals"].items():
        if not key.startswith("t_"):
            assert gc["totals"][key] == pytest.approx(value, abs=1e-5, rel=1e-5), key
    largest = max(float(g.abs().max()) for g in one["grads"].values())
    assert largest > 1e-4  # not trivially zero (the tiny model's in-batch gradients are small)
    assert _worst(gc["grads"], one["grads"]) <= 1e-5


@pytest.mark.parametrize("name", ["inbatch", "star"])
def test_two_process_grad_cache_equals_two_process_plain_with_dropout(runs, name):
    _, two = runs
    plain, gc, off = two[f"{name}-plain-dropout"], two[f"{name}-gc-dropout"], two[f"{name}-gc"]
    for key, value in plain["totals"].items():
        if not key.startswith("t_"):
            assert gc["totals"][key] == pytest.approx(value, abs=1e-6, rel=1e-6), key
    largest = max(float(g.abs().max()) for g in plain["grads"].values())
    assert _worst(gc["grads"], plain["grads"]) <= 1e-5
    assert _worst(off["grads"], plain["grads"]) > 0.1 * largest  # dropout was on, and it matters
