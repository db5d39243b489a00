"""WiSE-FT weight interpolation: known values at alpha 0, 1 and between; ADORE outputs keep their document
tower; mismatched models are refused; the CLI writes a loadable model."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from conftest import _tiny_bert
from hardneg.cli import app
from hardneg.errors import HardnegError
from hardneg.model.encoder import DualEncoder
from hardneg.model.encoding import encode_texts
from hardneg.model.merge import interpolate

TEXTS = ["glacier ice melt", "jazz saxophone solo in the evening"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    return (DualEncoder.from_pretrained(_tiny_bert(root / "a", seed=0)),
            DualEncoder.from_pretrained(_tiny_bert(root / "b", seed=3)))


def test_interpolation_is_the_weighted_mean_of_every_tensor(pair):
    a, b = pair
    sa, sb = a.doc_model.state_dict(), b.doc_model.state_dict()
    for alpha in (0.0, 0.3, 1.0):
        m = interpolate(a, b, alpha)
        assert m.config.shared and m.query_model is m.doc_model
        sm = m.doc_model.state_dict()
        for name, tensor in sm.items():
            if torch.is_floating_point(tensor):
                assert torch.allclose(tensor, 0.7 * sa[name] + 0.3 * sb[name], atol=1e-7) if alpha == 0.3 \
                    else torch.equal(tensor, (sa if alpha == 0.0 else sb)[name]), (alpha, name)
    assert torch.equal(torch.from_numpy(encode_texts(interpolate(a, b, 0.0), TEXTS, "doc")),
                       torch.from_numpy(encode_texts(a, TEXTS, "doc")))
    assert not torch.equal(a.doc_model.embeddings.word_embeddings.weight, b.doc_model.embeddings.word_embeddings.weight)


def test_adore_outputs_interpolate_the_query_towers_and_keep_the_document_tower(pair):
    start, other = pair
    adore = DualEncoder(start.doc_model, start.tokenizer, replace(start.config, shared=False),
                        query_model=copy.deepcopy(other.doc_model))  # trained query tower, start's doc tower
    m = interpolate(start, adore, 0.25)
    assert not m.config.shared
    for name, tensor in m.doc_model.state_dict().items():
        assert torch.equal(tensor, start.doc_model.state_dict()[name])  # bit for bit: cached index stays valid
    q, qa, qb = m.query_model.state_dict(), start.doc_model.state_dict(), other.doc_model.state_dict()
    name = "embeddings.word_embeddings.weight"
    assert torch.allclose(q[name], 0.75 * qa[name] + 0.25 * qb[name], atol=1e-7)
    with pytest.raises(HardnegError, match="document towers differ"):  # another fixed document encoder
        interpolate(other, adore, 0.5)


def test_mismatched_models_and_alpha_are_refused(pair, tmp_path):
    a, _ = pair
    wide = DualEncoder.from_pretrained(_tiny_bert(tmp_path / "wide", hidden=48))
    with pytest.raises(HardnegError, match=r"is \(30522, 32\) in A but \(30522, 48\) in B"):
        interpolate(a, wide, 0.5)
    with pytest.raises(HardnegError, match="alpha"):
        interpolate(a, a, 1.5)
    mean = DualEncoder.from_pretrained(_tiny_bert(tmp_path / "mean"), pooling="mean")
    with pytest.raises(HardnegError, match="pooling"):
        interpolate(a, mean, 0.5)


def test_merge_command_writes_a_loadable_model(tmp_path):
    a, b = _tiny_bert(tmp_path / "a", seed=0), _tiny_bert(tmp_path / "b", seed=3)
    result = CliRunner().invoke(app, ["merge", str(a), str(b), "--alpha", "0.5", "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    merged = DualEncoder.from_pretrained(tmp_path / "m")
    expected = interpolate(DualEncoder.from_pretrained(a), DualEncoder.from_pretrained(b), 0.5)
    assert torch.equal(torch.from_numpy(encode_texts(merged, TEXTS, "doc")),
                       torch.from_numpy(encode_texts(expected, TEXTS, "doc")))
