"""slice_beir: a BEIR folder cut to n documents, relevant ones first, qrels and queries restricted to them."""

from __future__ import annotations

import pytest

from conftest import write_tiny_train
from hardneg.data import load_dataset
from hardneg.data.slice import slice_beir
from hardneg.errors import HardnegError


def test_slice_keeps_the_first_relevant_documents_and_restricts_qrels(tmp_path):
    src = write_tiny_train(tmp_path / "src")
    out = slice_beir(src, tmp_path / "out", n_docs=10, n_relevant=4)
    full, cut = load_dataset(f"{src}:train"), load_dataset(f"{out}:train")
    first_relevant = list(dict.fromkeys(d for q in full.qrels() for d in full.qrels()[q]))[:4]
    ids = [d.doc_id for d in cut.docs()]
    assert len(ids) == 10 and set(ids[:4]) == set(first_relevant)
    # every kept qrel points into the slice, every query kept has one, and no qrel into the slice was lost
    kept = {(q, d) for q, docs in cut.qrels().items() for d in docs}
    assert kept == {(q, d) for q, docs in full.qrels().items() for d in docs if d in set(ids)}
    assert set(cut.queries()) == {q for q, _ in kept}


def test_slice_names_a_missing_split(tmp_path):
    src = write_tiny_train(tmp_path / "src")
    with pytest.raises(HardnegError, match=r"qrels/test\.tsv"):
        slice_beir(src, tmp_path / "out", n_docs=10, n_relevant=4, splits=("train", "test"))
