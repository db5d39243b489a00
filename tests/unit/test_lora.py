"""LoRA adapters (peft) on the trained towers: only adapters train, merged and adapter-only saves, ADORE's query
tower with its document tower untouched, exact resume, export, WiSE-FT merge and the flags' checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import train_config, write_tiny_train
from hardneg.errors import HardnegError
from hardneg.model.encoder import DualEncoder
from hardneg.model.fingerprints import weights_fingerprint
from hardneg.model.lora import LORA_FILE, LoraSettings, apply_lora, transformer_of
from hardneg.model.merge import interpolate
from hardneg.train.config import TrainConfig
from hardneg.train.trainer import Trainer

TEXTS = ["tell me about apple orchard harvest", "quantum spin chains fact 1", "glacier ice melt fact 0 fact 0",
         "a text about nothing in particular"]


@pytest.fixture
def tiny_train(tmp_path):
    return write_tiny_train(tmp_path / "tiny-train")


def base_name(name: str) -> str:
    """A wrapped tower's parameter name as the plain transformer names it."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def encode(model: DualEncoder, side: str = "doc") -> np.ndarray:
    model.eval()
    return model.encode(TEXTS, side, batch_size=2)


def trained(tmp_path, data, model, method="inbatch", **kw) -> Trainer:
    trainer = Trainer(train_config(tmp_path, data, model, method, lora_r=4, **kw))
    trainer.setup()
    trainer.train()
    return trainer


# ----------------------------------------------------------------------------- training
def test_only_the_adapters_train_and_the_merged_save_encodes_like_the_adapted_model(tmp_path, tiny_train,
                                                                                 tiny_model_dir):
    start = DualEncoder.from_pretrained(tiny_model_dir).doc_model.state_dict()
    trainer = trained(tmp_path, tiny_train, tiny_model_dir, dev_every=4, dev_at_start=False)  # saved at step 4
    tower = trainer.model.doc_model
    assert trainer.model.query_model is tower  # one shared encoder, one adapter
    named = dict(tower.named_parameters())
    adapters = {n for n in named if "lora_" in n}
    assert adapters and {n for n, p in named.items() if p.requires_grad} == adapters
    # BERT's default targets (peft's): the attention query and value projections
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in adapters} == {"query", "value"}
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(named[n]) for n in adapters}
    for name, param in named.items():  # every base weight exactly as it started
        if name not in adapters:
            assert torch.equal(param.detach(), start[base_name(name)]), name
    assert any(named[n].detach().abs().sum() > 0 for n in adapters if "lora_B" in n)  # B starts at 0: it moved
    # OUT/model: the trained adapters merged into plain weights, the same vectors as the adapted model
    out = tmp_path / "out-inbatch"
    merged = DualEncoder.from_pretrained(out / "model")
    assert not (out / "model" / "adapter_config.json").exists()
    keys = set(merged.doc_model.state_dict())
    assert keys == set(start) and not any("lora" in k for k in keys)  # the usual layout
    from transformers import AutoModel

    plain = AutoModel.from_pretrained(str(out / "model")).state_dict()  # plain transformers loads it
    assert all(torch.equal(v, plain[k]) for k, v in merged.doc_model.state_dict().items())
    record = json.loads((out / "model" / LORA_FILE).read_text())
    assert record["lora"]["r"] == 4 and record["lora"]["lora_alpha"] == 8.0
    assert record["lora"]["resolved_targets"] == ["query", "value"]
    assert 0 < record["trainable_share"] < 0.05
    assert record["trainable_params"] == sum(named[n].numel() for n in adapters)
    np.testing.assert_allclose(encode(merged), encode(trainer.model), atol=1e-5)


def test_merged_and_unmerged_towers_agree(tiny_model_dir):
    model = DualEncoder.from_pretrained(tiny_model_dir)
    apply_lora(model, LoraSettings(r=4, dropout=0.0, targets=("query", "key", "value", "dense")), str(tiny_model_dir))
    with torch.no_grad():  # adapters away from their zero start
        for name, param in model.doc_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.2)
    adapted = encode(model)
    plain = DualEncoder.from_pretrained(tiny_model_dir)
    assert np.abs(adapted - encode(plain)).max() > 1e-3  # the adapters change the vectors
    from hardneg.model.lora import merged_copy

    merged = merged_copy(model.doc_model)
    assert type(merged) is type(plain.doc_model)
    plain.doc_model = plain.query_model = merged
    np.testing.assert_allclose(encode(plain), adapted, atol=1e-5)
    assert type(transformer_of(model.doc_model)).__name__ == "PeftModel"  # the copy merged, not the model


def test_adapter_save_reloads_to_the_same_vectors_and_merges_with_wise_ft(tmp_path, tiny_train, tiny_st_dir):
    trainer = trained(tmp_path, tiny_train, tiny_st_dir, lora_save="adapter", lora_targets="query,key,value",
                      lora_alpha=16.0, dev_every=4, dev_at_start=False)
    folder = tmp_path / "out-inbatch" / "model"
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert not (folder / "model.safetensors").exists()  # the adapters alone, not the base weights
    assert json.loads((folder / LORA_FILE).read_text())["base_model"] == str(tiny_st_dir.resolve())
    reloaded = DualEncoder.from_pretrained(folder)
    assert reloaded.config.pooling == "mean" and reloaded.config.normalize  # the base's sentence-transformers setup
    np.testing.assert_allclose(encode(reloaded, "query"), encode(trainer.model, "query"), atol=1e-5)
    # peft alone loads the adapter folder onto the base transformer: the same adapted weights
    from peft import PeftModel
    from transformers import AutoModel

    by_peft = PeftModel.from_pretrained(AutoModel.from_pretrained(str(tiny_st_dir)), str(folder)).merge_and_unload()
    for name, value in by_peft.state_dict().items():
        torch.testing.assert_close(value, reloaded.doc_model.state_dict()[name], atol=1e-6, rtol=0)
    # the command line takes the adapter folder as --model: the same run as a merged save of it
    reloaded.save(tmp_path / "merged")
    for name, model in (("adapter", folder), ("merged", tmp_path / "merged")):
        result = CliRunner().invoke(_app(), ["-q", "retrieve", f"{tiny_train}:train", "--model", str(model), "--k", "5",
                                             "--out", str(tmp_path / f"run-{name}"), "--cache-dir",
                                             str(tmp_path / "cache")])
        assert result.exit_code == 0, result.output
    runs = [(tmp_path / f"run-{n}" / "run.trec").read_text().splitlines() for n in ("adapter", "merged")]
    assert runs[0] and [r.split()[:3] for r in runs[0]] == [r.split()[:3] for r in runs[1]]
    # WiSE-FT between the start model and the LoRA-trained one: alpha 1 is the trained model, 0.5 halfway
    start = DualEncoder.from_pretrained(tiny_st_dir)
    whole = interpolate(start, DualEncoder.from_pretrained(folder), 1.0)
    np.testing.assert_allclose(encode(whole), encode(reloaded), atol=1e-6)
    half = interpolate(start, DualEncoder.from_pretrained(folder), 0.5).doc_model.state_dict()
    end, begin = reloaded.doc_model.state_dict(), start.doc_model.state_dict()
    name = "encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(half[name], (begin[name] + end[name]) / 2)
    result = CliRunner().invoke(_app(), ["merge", str(tiny_st_dir), str(folder), "--alpha", "0.5",
                                         "--out", str(tmp_path / "wise")])
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(DualEncoder.from_pretrained(tmp_path / "wise").doc_model.state_dict()[name],
                               half[name])


def _app():
    from hardneg.cli import app

    return app


# ----------------------------------------------------------------------------- ADORE
def test_adore_lora_trains_the_query_tower_resumes_exactly_and_exports(tmp_path, tiny_train, tiny_model_dir,
                                                                      kill_and_resume):
    def make(name):
        return Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, "adore", lora_r=4,
                                    out=str(tmp_path / name)))

    start = DualEncoder.from_pretrained(tiny_model_dir)
    straight, resumed = kill_and_resume(make)
    for model in (straight.model, resumed.model):
        assert weights_fingerprint(model.doc_model) == weights_fingerprint(start.doc_model)  # untouched
        assert not any(p.requires_grad for p in model.doc_model.parameters())
        assert type(transformer_of(model.query_model)).__name__ == "PeftModel"
    reference = dict(straight.model.query_model.named_parameters())
    assert any(v.abs().sum() > 0 for k, v in reference.items() if "lora_B" in k)  # the adapters trained
    for name, value in resumed.model.query_model.named_parameters():
        assert torch.equal(value, reference[name]), name
    # a checkpoint holds the query tower's adapters alone
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "b" / "checkpoints" / "step-0000004" / "model.safetensors"))
    assert saved and all(k.startswith("query.") and "lora_" in k for k in saved)
    # OUT/model (merged): the document tower bit for bit the start's, the query tower merged
    out = DualEncoder.from_pretrained(tmp_path / "b" / "model")
    assert weights_fingerprint(out.doc_model) == weights_fingerprint(start.doc_model)
    # the adapter-only form of the same model: the query tower's adapter alone, reloaded onto the start model
    resumed.model.lora = dataclasses.replace(resumed.model.lora, save="adapter")
    resumed.model.save(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir() if p.suffix == ".safetensors") == []
    assert (tmp_path / "adapter" / "query_tower" / "adapter_model.safetensors").is_file()
    from_adapter = DualEncoder.from_pretrained(tmp_path / "adapter")
    assert not from_adapter.config.shared
    assert weights_fingerprint(from_adapter.doc_model) == weights_fingerprint(start.doc_model)
    np.testing.assert_allclose(encode(from_adapter, "query"), encode(resumed.model, "query"), atol=1e-5)
    # export: sentence-transformers encodes queries and documents as hardneg does
    result = CliRunner().invoke(_app(), ["export", str(tmp_path / "b" / "model"), "--out", str(tmp_path / "st")])
    assert result.exit_code == 0, result.output
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    np.testing.assert_allclose(st.encode_query(TEXTS), encode(out, "query"), atol=1e-5)
    np.testing.assert_allclose(st.encode_document(TEXTS), encode(out, "doc"), atol=1e-5)
    card = (tmp_path / "st" / "README.md").read_text()
    assert "LoRA" in card and "r=4" in card and "alpha=8" in card and "query, value" in card


# ----------------------------------------------------------------------------- settings
def test_lora_settings_checks_and_fingerprint(tmp_path, tiny_train, tiny_model_dir):
    cfg = train_config(tmp_path, tiny_train, tiny_model_dir, "inbatch")
    assert cfg.replace(lora_r=8).fingerprint() != cfg.fingerprint()
    assert cfg.replace(lora_r=8).fingerprint() != cfg.replace(lora_r=8, lora_targets="all-linear").fingerprint()
    assert cfg.replace(lora_r=0).fingerprint() == cfg.fingerprint()  # off: the old fingerprint
    with pytest.raises(HardnegError, match="--lora-alpha.*need --lora-r"):
        cfg.replace(lora_alpha=16.0).validate()
    with pytest.raises(HardnegError, match="lora_save must be one of merged, adapter"):
        cfg.replace(lora_r=4, lora_save="both")
    with pytest.raises(HardnegError, match="lora_r"):
        TrainConfig(data="x", lora_r=-1)
    with pytest.raises(HardnegError, match="all-linear stands alone"):
        cfg.replace(lora_r=4, lora_targets="all-linear,query").validate()
    assert cfg.replace(lora_r=4, lora_targets=["query", "value"]).lora_targets == "query,value"  # a YAML list
    settings = LoraSettings.from_config(cfg.replace(lora_r=4, lora_targets=" query , value "))
    assert settings.targets == ("query", "value") and settings.lora_alpha == 8.0


def test_unknown_target_modules_are_a_clear_error(tmp_path, tiny_train, tiny_model_dir):
    trainer = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, "inbatch", lora_r=4,
                                   lora_targets="query,q_proj"))
    with pytest.raises(HardnegError, match=r"--lora-targets query,q_proj: no module named 'q_proj'.*"
                                           r"linear layers are named .*query.*value"):
        trainer.setup()
    result = CliRunner().invoke(_app(), ["train", "inbatch", "--data", str(tiny_train), "--model",
                                         str(tiny_model_dir), "--lora-r", "4", "--lora-targets", "qkv",
                                         "--out", str(tmp_path / "cli"), "--cache-dir", str(tmp_path / "cache")])
    # a HardnegError, which the console entry point prints without a traceback (exit 2)
    assert isinstance(result.exception, HardnegError) and "--lora-targets qkv" in str(result.exception)


def test_all_linear_adapts_every_linear_layer(tiny_model_dir):
    model = DualEncoder.from_pretrained(tiny_model_dir)
    apply_lora(model, LoraSettings(r=2, targets="all-linear"), "x")
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.doc_model.named_parameters()
               if ".lora_A." in n}
    assert {"query", "key", "value", "dense"} <= wrapped


def _randomise_adapters(model: DualEncoder) -> None:
    with torch.no_grad():  # adapters away from their zero start, as after training
        for name, param in model.doc_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.2)


@pytest.mark.parametrize("save", ["merged", "adapter"])
def test_a_head_tower_keeps_its_frozen_head_and_saves_in_both_forms(save, tmp_path):
    """DRhard's RobertaDot (transformer + Dense + LayerNorm head): the adapters go on the transformer."""
    from test_drhard import _minilm, _robertadot_state, _write_checkpoint

    from hardneg.model.drhard import HeadTower

    folder = _write_checkpoint(tmp_path / "star", _robertadot_state(0))
    model = DualEncoder.from_pretrained(folder, tokenizer=_minilm())
    apply_lora(model, LoraSettings(r=4, save=save), str(folder))
    assert isinstance(model.doc_model, HeadTower)
    assert {n for n, p in model.doc_model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.doc_model.named_parameters() if "lora_" in n}  # the head is frozen
    _randomise_adapters(model)
    model.save(tmp_path / "saved")
    reloaded = DualEncoder.from_pretrained(tmp_path / "saved", tokenizer=_minilm())
    assert isinstance(reloaded.doc_model, HeadTower) and reloaded.dim == model.dim
    np.testing.assert_allclose(encode(reloaded), encode(model), atol=1e-5)


def test_gradient_checkpointing_still_trains_the_adapters(tiny_model_dir):
    model = DualEncoder.from_pretrained(tiny_model_dir)
    apply_lora(model, LoraSettings(r=4, dropout=0.0), str(tiny_model_dir), input_grads=True)
    model.doc_model.activation_checkpointing_enable()
    model.train()
    batch = model.tokenize(TEXTS, "doc", padding=True)
    out = model(torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"]))
    out.sum().backward()
    grads = {n: p.grad for n, p in model.doc_model.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_default_targets_are_the_attention_projections_also_where_peft_has_none():
    from transformers import DistilBertConfig, DistilBertModel, MPNetConfig, MPNetModel

    from hardneg.model.lora import default_targets

    small = dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    assert default_targets(MPNetModel(MPNetConfig(**small))) == ["q", "v"]
    distil = DistilBertModel(DistilBertConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    assert default_targets(distil) == ["q_lin", "v_lin"]
    from transformers import BertConfig, BertModel

    assert default_targets(BertModel(BertConfig(**small))) is None  # peft's own: query, value
