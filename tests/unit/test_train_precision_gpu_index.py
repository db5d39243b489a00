"""Training's own encodes under ``--precision`` (ADORE's index, warm-up mining, dev) and ADORE's GPU index settings:
``--index-fp16`` and the refusal, before the corpus is encoded, of an index kind a GPU cannot search (issue 27).

No GPU here: the GPU decisions are tested with a fake CUDA device and a Faiss that says it has GPUs."""

from __future__ import annotations

import functools
import logging

import pytest
import torch

from conftest import train_config, write_tiny_train
from hardneg.errors import HardnegError
from hardneg.index import encode as encode_module
from hardneg.index import shards
from hardneg.index.encode import embeddings_key
from hardneg.model import encoding as encoding_module
from hardneg.train import dev
from hardneg.train.config import TrainConfig
from hardneg.train.methods import adore as adore_module
from hardneg.train.methods import mining
from hardneg.train.trainer import Trainer

adore_config = functools.partial(train_config, method="adore")


@pytest.fixture
def tiny_train(tmp_path):
    return write_tiny_train(tmp_path / "tiny-train")


@pytest.fixture
def forward_passes(monkeypatch):
    """``(side, precision)`` of every encoding loop run through :func:`hardneg.model.encoding.encode_batches` by the
    corpus, dev and mining encodes (a training step's own forward passes, train/steps.py, are not recorded)."""
    seen: list[tuple[str, str]] = []
    real = encoding_module.encode_batches

    def spy(model, rows_of, batches, side, **kw):
        seen.append((side, kw.get("precision", "fp32")))
        return real(model, rows_of, batches, side, **kw)

    for module in (encoding_module, encode_module, shards, dev, mining):  # the modules that call it (imported by name)
        monkeypatch.setattr(module, "encode_batches", spy)
    return seen


def test_a_bf16_adore_run_encodes_its_index_and_dev_under_autocast(tmp_path, tiny_train, tiny_model_dir,
                                                                   forward_passes):
    trainer = Trainer(adore_config(tmp_path, tiny_train, tiny_model_dir, precision="bf16"))
    trainer.setup()
    model = trainer.model
    # the index was built from bf16 forward passes, cached under the bf16 key (never an fp32 run's cache)
    assert ("doc", "bf16") in forward_passes and all(p == "bf16" for _, p in forward_passes)
    bf16_key = embeddings_key(model.side_identity("doc"), trainer.store.manifest, "doc", "bf16")
    assert trainer.method.embeddings_key == bf16_key
    assert bf16_key != embeddings_key(model.side_identity("doc"), trainer.store.manifest, "doc")
    forward_passes.clear()
    trainer.evaluate_dev()
    assert forward_passes and all(s == ("query", "bf16") for s in forward_passes)


def test_an_fp32_adore_run_keeps_its_fp32_cache_key(tmp_path, tiny_train, tiny_model_dir, forward_passes):
    trainer = Trainer(adore_config(tmp_path, tiny_train, tiny_model_dir))
    trainer.setup()
    assert forward_passes and all(p == "fp32" for _, p in forward_passes)
    assert trainer.method.embeddings_key == embeddings_key(trainer.model.side_identity("doc"),
                                                           trainer.store.manifest, "doc")


def test_star_warm_up_mining_and_dev_pool_encode_at_the_run_precision(tmp_path, tiny_train, tiny_model_dir,
                                                                      forward_passes):
    trainer = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, precision="bf16"))
    trainer.setup()  # mines the start model's negatives: corpus and training queries
    assert {("doc", "bf16"), ("query", "bf16")} <= set(forward_passes)
    assert all(p == "bf16" for _, p in forward_passes)
    forward_passes.clear()
    trainer.evaluate_dev()  # dev_pool 0: the whole corpus with the current weights, and the dev queries
    assert set(forward_passes) == {("doc", "bf16"), ("query", "bf16")}


# ----------------------------------------------------------------------------- --index-fp16 and the GPU check
def test_index_fp16_is_an_adore_setting_for_flat_indexes_left_out_of_old_fingerprints():
    with pytest.raises(HardnegError, match="--index-fp16 stores a flat index in float16; --index pq8 is not flat"):
        TrainConfig(method="adore", data="x", index="pq8", index_fp16=True).validate()
    with pytest.raises(HardnegError, match="--index-fp16: for the adore method"):
        TrainConfig(method="star", data="x", index_fp16=True).validate()
    TrainConfig(method="adore", data="x", index_fp16=True).validate()
    plain = TrainConfig(method="adore", data="x")
    assert plain.fingerprints() == ("430cb2ff142ffe93", "7d20e4ecf29516f0")  # the second: before the setting existed
    assert plain.replace(index_fp16=True).fingerprint() != plain.fingerprint()
    star = TrainConfig(method="star", data="x")
    assert TrainConfig(**star.to_dict()).fingerprint() == star.fingerprint()


def test_the_gpu_check_refuses_what_a_gpu_cannot_search(monkeypatch, caplog):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    check = adore_module.check_gpu_index
    hnsw = TrainConfig(method="adore", data="x", index="hnsw")
    fp16 = TrainConfig(method="adore", data="x", index_fp16=True)
    monkeypatch.setattr(adore_module, "faiss_gpus", lambda: 0)
    check(hnsw, cuda, 64, 1000)  # a CPU-only Faiss: searched on the CPU, nothing to refuse
    with pytest.raises(HardnegError, match="--index-fp16: the installed Faiss has no GPU support"):
        check(fp16, cuda, 64, 1000)
    with caplog.at_level(logging.WARNING, logger="hardneg.train"):
        check(fp16, cpu, 64, 1000)  # on the CPU the flag does nothing, and says so
    assert "--index-fp16" in caplog.text
    monkeypatch.setattr(adore_module, "faiss_gpus", lambda: 1)
    check(hnsw, cpu, 64, 1000)  # a CPU run never asks
    with pytest.raises(HardnegError, match="--index hnsw: ADORE searches its index on cuda:0 every step, but HNSW"):
        check(hnsw, cuda, 64, 1000)
    with pytest.raises(HardnegError, match=r"--index pq192: .* not 192 \(PQ192\)"):
        check(TrainConfig(method="adore", data="x", index="pq192"), cuda, 192, 1000)
    check(fp16, cuda, 64, 1000)
    check(TrainConfig(method="adore", data="x", index="pq16"), cuda, 64, 1000)


def test_adore_refuses_a_gpu_less_index_before_encoding_the_corpus(tmp_path, tiny_train, tiny_model_dir, monkeypatch,
                                                                   forward_passes):
    """On a CUDA run (faked: the check sees cuda:0 and a Faiss with GPUs) an HNSW index is refused before any
    corpus encoding; a flat one goes on with ``--index-fp16`` handed to the placement, as a requirement."""
    real = adore_module.check_gpu_index
    monkeypatch.setattr(adore_module, "check_gpu_index",
                        lambda cfg, device, dim, n: real(cfg, torch.device("cuda", 0), dim, n))
    monkeypatch.setattr(adore_module, "faiss_gpus", lambda: 1)
    placed: list[dict] = []
    monkeypatch.setattr(adore_module, "place_index", lambda index, device, **kw: placed.append(kw) or False)
    with pytest.raises(HardnegError, match="--index hnsw: ADORE searches its index on cuda:0 every step"):
        Trainer(adore_config(tmp_path, tiny_train, tiny_model_dir, index="hnsw")).setup()
    assert forward_passes == [] and placed == []
    Trainer(adore_config(tmp_path, tiny_train, tiny_model_dir, index_fp16=True,
                         out=str(tmp_path / "out-fp16"))).setup()
    assert ("doc", "fp32") in forward_passes and placed == [{"fp16": True, "required": True}]


def test_index_fp16_keys_an_experiment_stage_only_when_set(tmp_path):
    """An ADORE stage's key is unchanged by the setting's existence; set, it keys the stage."""
    from hardneg.experiment.runner import Experiment, Recipe

    text = ("name: t\ndata: /data\nsystems:\n  - {name: zeroshot, kind: zeroshot}\n  - {name: star, method: star}\n"
            "  - {name: adore+star, method: adore, base: star}\n")
    (tmp_path / "plain.yaml").write_text(text)
    (tmp_path / "fp16.yaml").write_text(text.replace("base: star}", "base: star, index_fp16: true}"))
    plain, fp16 = (Experiment(Recipe.from_yaml(tmp_path / f"{n}.yaml"), "/nonexistent/out").stages["train-adore+star"]
                   for n in ("plain", "fp16"))
    assert "index_fp16" not in plain.settings and plain.legacy_key == "d68ecd1bc8832b23"  # before the setting existed
    assert fp16.settings["index_fp16"] is True and fp16.key != plain.key
