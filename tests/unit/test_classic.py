"""SMART-format classic collections (MED/CISI layout)."""

from __future__ import annotations

import pytest

from hardneg.data import Query
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


# --------------------------------------------------------------------------- Cranfield, CACM, compressed SMART

CRAN_ALL = ".I 1\n.T\nwing flow\n.A\nsmith\n.W\nwing flow study\n.I 2\n.T\nheat slab\n.W\nheat in slabs\n.I 3\n.W\n"
CRAN_QRY = ".I 001\n.W\nwing flow ?\n.I 004\n.W\nheat conduction in slabs\n"
CRANQREL = "1 1 -1\n1 2 4\n2 2 1 \n2 1 3\n"


def test_cranfield_renumbers_queries_and_maps_grades(tmp_path):
    (tmp_path / "cran.all.1400").write_text(CRAN_ALL)
    (tmp_path / "cran.qry").write_text(CRAN_QRY)
    (tmp_path / "cranqrel").write_text(CRANQREL)
    ds = load_dataset(str(tmp_path))
    assert type(ds).__name__ == "CranfieldDataset"
    assert [d.doc_id for d in ds.docs()] == ["1", "2", "3"] and ds.docs()[2].text == ""  # empty doc kept
    # cran.qry numbers 001, 004; the qrels number the queries 1, 2 by position
    assert {q: x.text for q, x in ds.queries().items()} == {"1": "wing flow ?", "2": "heat conduction in slabs"}
    mapped = ds.qrels()
    assert mapped == {"1": {"1": 5, "2": 1}, "2": {"2": 4, "1": 2}}  # 5 - code; -1 (source doc) -> 5
    # the corrected TREC file shipped with Cranfield wins when present, and says the same
    (tmp_path / "QRelsCorrectedforTRECeval").write_text("1 0 1 5\n1 0 2 1\n2 0 2 4\n2 0 1 2\n")
    ds = load_dataset(str(tmp_path))
    assert ds.qrels_path.name == "QRelsCorrectedforTRECeval" and ds.qrels() == mapped
    (tmp_path / "QRelsCorrectedforTRECeval").unlink()
    (tmp_path / "cranqrel").write_text("1 1 7\n")
    with pytest.raises(InputError, match=r"cranqrel:1.*code 1-4 or -1"):
        load_dataset(str(tmp_path)).qrels()


def _html(title: str, body: str) -> bytes:
    return f"<html>\n<pre>\n\n\n{title}\n\n{body}\n\nCACM June, 1970\n\n12\t5\t12\n3\t6\t12\n</pre>\n</html>\n".encode()


def test_cacm_like_folder_html_archive_and_padded_ids(tmp_path):
    import io
    import tarfile

    with tarfile.open(tmp_path / "cacm.tar.gz", "w:gz") as tf:
        for name, data in [("CACM-0001.html", _html("Time Sharing", "A &amp; B systems.")),
                           ("CACM-0012.html", _html("Compilers", "Parsing for compilers."))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (tmp_path / "topics.cacm.txt").write_text("<DOC>\n<DOCNO> 1 </DOCNO>\n\n parsing compilers\n</DOC>\n"
                                              "<DOC>\n<DOCNO> 2 </DOCNO>\ntime sharing\n</DOC>\n")
    (tmp_path / "qrels.cacm.txt").write_text("1 Q0 CACM-12 1\n2 Q0 CACM-0001 1\n")
    ds = load_dataset(str(tmp_path))
    assert type(ds).__name__ == "TrecDataset"
    docs = {d.doc_id: d for d in ds.docs()}
    assert set(docs) == {"CACM-1", "CACM-12"}
    assert docs["CACM-1"].title == "Time Sharing"
    assert docs["CACM-1"].text == "A & B systems. CACM June, 1970"  # the citation table is dropped
    assert ds.queries() == {"1": Query("1", "parsing compilers"), "2": Query("2", "time sharing")}
    assert ds.qrels() == {"1": {"CACM-12": 1}, "2": {"CACM-1": 1}} and not ds.warnings
    fp = ds.fingerprint()
    assert fp == load_dataset(str(tmp_path)).fingerprint() and len(fp) == 64
    (tmp_path / "cacm.tar.gz").write_bytes((tmp_path / "cacm.tar.gz").read_bytes()[:40])
    with pytest.raises(InputError, match=r"cacm\.tar\.gz.*corrupt or truncated"):
        load_dataset(str(tmp_path)).docs()


def test_compressed_smart_folder(tmp_path):
    import gzip

    (tmp_path / "X.ALL.gz").write_bytes(gzip.compress(ALL.encode()))
    (tmp_path / "X.QRY").write_text(QRY)
    (tmp_path / "X.REL.gz").write_bytes(gzip.compress(b"1 0 2 1\n"))
    ds = load_dataset(str(tmp_path))
    assert len(ds.docs()) == 2 and ds.qrels() == {"1": {"2": 1}} and list(ds.queries()) == ["1"]
