"""SMART-format classic collections (MED/CISI layout)."""

from __future__ import annotations

import pytest

from hardneg.data.load import load_dataset
from hardneg.errors import InputError

ALL = """.I 1
.T
A title
.W
first   line
second line .
.I 2
.W
only text
"""
QRY = """.I 001
.W
what is
 text?
.I 2
.T
titled
.W
query
"""


def _folder(tmp_path, rel: str):
    (tmp_path / "X.ALL").write_text(ALL)
    (tmp_path / "X.QRY").write_text(QRY)
    (tmp_path / "X.REL").write_text(rel)
    return tmp_path


def test_smart_docs_queries_trec_qrels(tmp_path):
    ds = load_dataset(str(_folder(tmp_path, "1 0 2 1\n2 0 1 2\n")))
    docs = {d.doc_id: d for d in ds.docs()}
    assert docs["1"].title == "A title" and docs["1"].text == "first line second line ."
    assert docs["2"].text == "only text" and docs["2"].title == ""
    queries = ds.queries()
    assert queries["1"].text == "what is text?"  # '001' is query 1, as the qrels number it
    assert queries["2"].text == "titled query"
    assert ds.qrels() == {"1": {"2": 1}, "2": {"1": 2}}


def test_smart_cisi_layout_every_pair_relevant(tmp_path):
    ds = load_dataset(str(_folder(tmp_path, "     1     2\t0\t0.000000\n     2     1\t0\t0.000000\n")))
    assert ds.qrels() == {"1": {"2": 1}, "2": {"1": 1}}


def test_smart_errors_name_file_and_line(tmp_path):
    _folder(tmp_path, "1 0 2\n")
    with pytest.raises(InputError, match=r"X\.REL:1.*4 columns"):
        load_dataset(str(tmp_path)).qrels()
    (tmp_path / "X.ALL").write_text("stray text\n.I 1\n.W\nx\n")
    with pytest.raises(InputError, match=r"X\.ALL:1.*before the first"):
        load_dataset(str(tmp_path)).docs()
    (tmp_path / "X.ALL").write_text(".I 1\n.W\nx\n.I 1\n.W\ny\n")
    with pytest.raises(InputError, match=r"X\.ALL:4.*twice"):
        load_dataset(str(tmp_path)).docs()
    with pytest.raises(InputError, match="no splits"):
        load_dataset(f"{tmp_path}:test")
