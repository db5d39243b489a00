from __future__ import annotations

import numpy as np
import pytest

from hardneg.data.tokenized import (
    StoreSpec,
    TokenizedStore,
    build_store,
    open_or_build_store,
    texts_fingerprint,
)
from hardneg.errors import HardnegError, MismatchError
from hardneg.model.encoder import DualEncoder
from hardneg.model.fingerprints import tokenizer_fingerprint

RECORDS = [("a", "first text"), ("b", "a second, longer text " * 30), ("c", "third")]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DualEncoder.from_pretrained(tiny_model_dir)


def spec_for(model, max_length=16, content=None):
    return StoreSpec(tokenizer_fingerprint(model.tokenizer), max_length, "", content or texts_fingerprint(RECORDS))


def test_store_round_trip_equals_tokenizer(model, tmp_path):
    spec = spec_for(model)
    store = build_store(iter(RECORDS), model.tokenizer, spec, tmp_path / "s", show_progress=False, chunk=2)
    assert store.ids == ["a", "b", "c"]
    expected = model.tokenizer([t for _, t in RECORDS], truncation=True, max_length=16)["input_ids"]
    for i, seq in enumerate(expected):
        np.testing.assert_array_equal(store[i], seq)
    assert store.lengths.tolist() == [len(s) for s in expected]
    assert store.lengths[1] == 16  # truncated
    assert store.manifest["total_tokens"] == sum(len(s) for s in expected)


def test_store_is_reused_and_mismatches_refused(model, tmp_path):
    spec = spec_for(model)
    build_store(iter(RECORDS), model.tokenizer, spec, tmp_path / "s", show_progress=False)
    calls = []
    open_or_build_store(lambda: calls.append(1) or iter(RECORDS), model.tokenizer, spec, tmp_path / "s")
    assert not calls, "a matching store must be reused, not rebuilt"
    with pytest.raises(MismatchError, match="max_length"):
        TokenizedStore(tmp_path / "s", expect=spec_for(model, max_length=32))
    with pytest.raises(MismatchError, match="content"):
        TokenizedStore(tmp_path / "s", expect=spec_for(model, content="other-corpus"))
    other = StoreSpec("another-tokenizer", 16, "", spec.content)
    with pytest.raises(MismatchError, match="tokenizer"):
        TokenizedStore(tmp_path / "s", expect=other)


def test_interrupted_build_leaves_nothing(model, tmp_path):
    def records():
        yield from RECORDS
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_store(records(), model.tokenizer, spec_for(model), tmp_path / "s", show_progress=False, chunk=1)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(HardnegError, match="not a complete tokenized store"):
        TokenizedStore(tmp_path / "s")


def test_fingerprint_depends_on_ids_and_texts():
    assert texts_fingerprint(RECORDS) == texts_fingerprint(list(RECORDS))
    assert texts_fingerprint(RECORDS) != texts_fingerprint([("a", "first text")])
    assert texts_fingerprint([("a", "bc")]) != texts_fingerprint([("ab", "c")])
