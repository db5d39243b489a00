"""Compressed inputs, dataset archives, TREC SGML documents and topics, and empty-file errors."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from hardneg.data import Doc, Query, load_dataset, read_corpus, read_queries, read_trec_topics
from hardneg.data.formats import archive as archive_mod
from hardneg.data.formats.sgml import read_trec_doc_topics, read_trec_docs
from hardneg.data.formats.smart import read_smart_docs, read_smart_queries
from hardneg.data.lines import iter_text_lines
from hardneg.errors import InputError

COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


def jsonl(*objs: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    for suffix, compress in COMPRESS.items():
        if path.name.endswith(suffix):
            data = compress(data)
    path.write_bytes(data)
    return path


CORPUS = jsonl({"_id": "d1", "title": "Alpha", "text": "first doc"}, {"_id": "d2", "text": "second doc"})
QUERIES = jsonl({"_id": "q1", "text": "one"}, {"_id": "q2", "text": "two"})
QRELS = "query-id\tcorpus-id\tscore\r\nq1\td2\t1\r\nq2\td1\t2\r\n"


def beir_folder(root: Path, suffix: str = "") -> Path:
    write(root / f"corpus.jsonl{suffix}", CORPUS)
    write(root / f"queries.jsonl{suffix}", QUERIES)
    write(root / "qrels" / f"test.tsv{suffix}", QRELS)
    return root


def contents(ds):
    return ds.docs(), ds.queries(), ds.qrels()


# --------------------------------------------------------------------------- compressed files


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_compressed_beir_folder_equals_plain(tmp_path: Path, suffix: str) -> None:
    plain = load_dataset(f"{beir_folder(tmp_path / 'plain')}:test")
    packed = load_dataset(f"{beir_folder(tmp_path / 'packed', suffix)}:test")
    assert packed.corpus_path.name == f"corpus.jsonl{suffix}"
    assert contents(packed) == contents(plain)
    assert contents(plain)[2] == {"q1": {"d2": 1}, "q2": {"d1": 2}}
    with pytest.raises(InputError, match="available splits: test"):
        load_dataset(f"{tmp_path / 'packed'}:dev")


def test_compressed_msmarco_folder(tmp_path: Path) -> None:
    root = tmp_path / "marco"
    write(root / "collection.tsv.gz", "0\tzero text\n1\tone text\n")
    write(root / "queries.dev.tsv.bz2", "5\twhat is zero\n6\tone\n")
    write(root / "qrels.dev.tsv.xz", "5\t0\t0\t1\n6\t0\t1\t1\n")
    ds = load_dataset(f"{root}:dev")
    assert ds.docs() == [Doc("0", "zero text"), Doc("1", "one text")]
    assert ds.queries() == {"5": Query("5", "what is zero"), "6": Query("6", "one")}
    assert ds.qrels() == {"5": {"0": 1}, "6": {"1": 1}}


def test_compressed_errors_name_the_real_file_and_line(tmp_path: Path) -> None:
    bad_json = write(tmp_path / "a" / "corpus.jsonl.gz", CORPUS + "{oops\n")
    with pytest.raises(InputError) as exc:
        list(read_corpus(bad_json))
    assert exc.value.line == 3 and f"{bad_json}:3:" in str(exc.value) and "JSON" in str(exc.value)
    bad_utf8 = write(tmp_path / "b" / "collection.tsv.xz", b"1\tfine\n2\tcaf\xe9\n")
    with pytest.raises(InputError, match="UTF-8") as exc:
        list(read_corpus(bad_utf8))
    assert exc.value.line == 2 and exc.value.path == str(bad_utf8)
    # a truncated .gz: the first lines read, then a clear error, not an EOFError
    full = gzip.compress(("".join(f"{i}\tline {i}\n" for i in range(2000))).encode())
    truncated = tmp_path / "c" / "collection.tsv.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(InputError, match="cannot decompress") as exc:
        list(read_corpus(truncated))
    assert exc.value.path == str(truncated) and exc.value.line > 1
    not_gzip = write(tmp_path / "d" / "queries.tsv.gz", b"")
    not_gzip.write_bytes(b"1\tplain text, not gzip\n")
    with pytest.raises(InputError, match=r"queries\.tsv\.gz:1: cannot decompress"):
        list(read_queries(not_gzip))
    # a gzip file without the suffix: the error says what it is
    hidden = tmp_path / "e" / "collection.tsv"
    hidden.parent.mkdir()
    hidden.write_bytes(gzip.compress(b"1\tx\n"))
    with pytest.raises(InputError, match=r"\.gz compressed file"):
        list(read_corpus(hidden))


def test_compressed_keeps_line_guarantees(tmp_path: Path) -> None:
    path = write(tmp_path / "x.txt.bz2", b"\xef\xbb\xbffirst\r\n\n  \nsecond\n")
    assert list(iter_text_lines(path)) == [(1, "first"), (4, "second")]


# --------------------------------------------------------------------------- archives


def zip_folder(folder: Path, dest: Path, prefix: str) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{prefix}{p.relative_to(folder).as_posix()}")
    return dest


def test_zip_and_tar_archives_load_as_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARDNEG_CACHE_DIR", str(tmp_path / "cache"))
    folder = beir_folder(tmp_path / "mini")
    expected = contents(load_dataset(f"{folder}:test"))
    zipped = zip_folder(folder, tmp_path / "mini.zip", "mini/")
    ds = load_dataset(f"{zipped}:test")
    assert ds.name == "mini" and contents(ds) == expected
    assert str(tmp_path / "cache" / "archives") in str(ds.corpus_path)
    # unpacked once: a second load does not unpack again
    monkeypatch.setattr(archive_mod, "unpack_archive", lambda *a: pytest.fail("unpacked twice"))
    assert contents(load_dataset(f"{zipped}:test")) == expected
    monkeypatch.undo()
    monkeypatch.setenv("HARDNEG_CACHE_DIR", str(tmp_path / "cache"))
    tarred = tmp_path / "flat.tgz"
    with tarfile.open(tarred, "w:gz") as tf:  # files at the archive's top level
        for p in sorted(folder.rglob("*")):
            tf.add(p, p.relative_to(folder).as_posix(), recursive=False)
    ds = load_dataset(f"{tarred}:test")
    assert ds.name == "flat" and contents(ds) == expected
    leftovers = [p.name for p in (tmp_path / "cache" / "archives").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the temporary unpack folders are gone


def test_an_archive_unpacks_under_the_given_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--cache-dir X`` is where a zipped dataset is unpacked (the default cache folder stays untouched)."""
    from typer.testing import CliRunner

    from hardneg.cli import app

    default = tmp_path / "default-cache"
    monkeypatch.setenv("HARDNEG_CACHE_DIR", str(default))
    zipped = zip_folder(beir_folder(tmp_path / "mini"), tmp_path / "mini.zip", "mini/")
    given = tmp_path / "given-cache"
    result = CliRunner().invoke(app, ["--quiet", "bm25", f"{zipped}:test", "--k", "2", "--cache-dir", str(given),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    (unpacked,) = [p for p in (given / "archives").iterdir() if not p.name.startswith(".")]
    assert unpacked.name.startswith("mini-") and (unpacked / "mini" / "corpus.jsonl").is_file()
    assert (given / "bm25").is_dir()  # the index beside it, in the same cache
    assert not (default / "archives").exists()
    assert (tmp_path / "run" / "run.trec").is_file()
    # the loader the commands call: the same folder again (no second unpack), and another cache gets its own
    monkeypatch.setattr(archive_mod, "unpack_archive", lambda *a: pytest.fail("unpacked twice"))
    ds = load_dataset(f"{zipped}:test", cache_dir=given)
    assert ds.name == "mini" and Path(ds.corpus_path).is_relative_to(unpacked)
    monkeypatch.undo()
    ds = load_dataset(f"{zipped}:test", cache_dir=tmp_path / "other")
    assert Path(ds.corpus_path).is_relative_to(tmp_path / "other" / "archives")


def test_unsafe_and_corrupt_archives_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARDNEG_CACHE_DIR", str(tmp_path / "cache"))
    for i, name in enumerate(["../evil.txt", "/etc/evil.txt", "ok/../../evil.txt"]):
        bad = tmp_path / f"bad{i}.zip"
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("ds/corpus.jsonl", CORPUS)
            zf.writestr(name, "x")
        with pytest.raises(InputError, match="absolute path|climbs out") as exc:
            load_dataset(str(bad))
        assert exc.value.path == str(bad)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "cache" / "evil.txt").exists()
    linked = tmp_path / "link.tar"
    with tarfile.open(linked, "w") as tf:
        info = tarfile.TarInfo("ds/corpus.jsonl")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(InputError, match="link or special file"):
        load_dataset(str(linked))
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(InputError, match="corrupt or truncated") as exc:
        load_dataset(str(corrupt))
    assert exc.value.path == str(corrupt)
    good = tmp_path / "cut.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = os.urandom(50_000)
        info = tarfile.TarInfo("ds/blob.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    good.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_dataset(str(good))
    assert [p for p in (tmp_path / "cache" / "archives").iterdir() if p.is_dir()] == []


# --------------------------------------------------------------------------- TREC SGML documents

SGML = """<DOC>
<DOCNO> FT911-1 </DOCNO>
<HEADLINE>Markets &amp; trade</HEADLINE>
<DATE>910101</DATE>
<TEXT>
Prices rose&hyph;sharply <P>in the
city</P> &lt;today&gt;. <!-- a comment -->
</TEXT>
</DOC>
<DOC><DOCNO>2</DOCNO><TITLE>Short</TITLE><TEXT>body two</TEXT></DOC>
<doc>
<docno>plain-3</docno>
plain body text <F P=105>directly</F>
in the DOC
</doc>
"""


def test_sgml_fields_entities_and_plain_body(tmp_path: Path) -> None:
    path = write(tmp_path / "docs.trec", SGML)
    assert list(read_trec_docs(path)) == [
        Doc("FT911-1", "Prices rose-sharply in the city <today>.", "Markets & trade"),
        Doc("2", "body two", "Short"),
        Doc("plain-3", "plain body text directly in the DOC", ""),
    ]
    assert list(read_corpus(path)) == list(read_trec_docs(path))  # sniffed by its first line


def test_sgml_folder_of_files_and_gz(tmp_path: Path) -> None:
    folder = tmp_path / "coll"
    write(folder / "a" / "part1.gz", SGML)
    write(folder / "b.sgml", "<DOC>\n<DOCNO>b1</DOCNO>\nbee\n</DOC>\n")
    write(folder / "README", "not a collection file")
    docs = list(read_corpus(folder))
    assert [d.doc_id for d in docs] == ["FT911-1", "2", "plain-3", "b1"]
    ds = load_dataset(str(folder / "b.sgml"))
    assert ds.docs() == [Doc("b1", "bee")]


@pytest.mark.parametrize(("content", "line", "needle"), [
    ("<DOC>\n<DOCNO>1</DOCNO>\nx\n<DOC>\n<DOCNO>2</DOCNO>\ny\n</DOC>\n", 1, "never closed"),
    ("<DOC>\n<DOCNO>1</DOCNO>\nx\n", 1, "never closed"),
    ("<DOC>\n<DOCNO>1</DOCNO>x</DOC>\n\n<DOC>\ntext only\n</DOC>\n", 4, "no <DOCNO>"),
    ("<DOC><DOCNO>1</DOCNO>x</DOC>\n<DOC>\n<DOCNO> 1 </DOCNO>\ny</DOC>\n", 3,
     "duplicate document id '1' \\(first on line 1\\)"),
    ("stray\n<DOC><DOCNO>1</DOCNO>x</DOC>\n", 1, "outside a <DOC>"),
    ("<DOC><DOCNO>1</DOCNO>x</DOC>\n</DOC>\n", 2, "without a matching"),
    ("<DOC><DOCNO>a b</DOCNO>x</DOC>\n", 1, "has spaces"),
    ("<DOC><DOCNO>1</DOCNO><DOCNO>2</DOCNO>x</DOC>\n", 1, "second <DOCNO>"),
    ("<DOC><DOCNO>1</DOCNO><TEXT> </TEXT></DOC>\n", 1, "empty"),
    ("<DOC>\n<DOCNO>1\nx</DOC>\n", 2, "<DOCNO> is never closed"),
])
def test_sgml_errors_name_file_and_line(tmp_path: Path, content: str, line: int, needle: str) -> None:
    path = write(tmp_path / "docs.trec.gz", content)
    with pytest.raises(InputError, match=needle) as exc:
        list(read_trec_docs(path))
    assert exc.value.line == line and f"{path}:{line}:" in str(exc.value)


def test_sgml_duplicate_across_files(tmp_path: Path) -> None:
    write(tmp_path / "c" / "1.trec", "<DOC><DOCNO>x</DOCNO>a</DOC>\n")
    second = write(tmp_path / "c" / "2.trec", "<DOC><DOCNO>y</DOCNO>b</DOC>\n<DOC><DOCNO>x</DOCNO>c</DOC>\n")
    with pytest.raises(InputError, match=r"duplicate document id 'x' \(first on .*1\.trec:1\)") as exc:
        list(read_trec_docs(tmp_path / "c"))
    assert exc.value.path == str(second) and exc.value.line == 2
    with pytest.raises(InputError, match="no documents"):
        list(read_trec_docs(write(tmp_path / "empty.trec", "\n")))


# --------------------------------------------------------------------------- TREC topics

TOPICS = """<top>
<head> Tipster Topic Description
<num> Number: 051
<dom> Domain: International Economics
<title> Topic: Airbus Subsidies

<desc> Description:
Document will discuss government
assistance to Airbus.

<narr> Narrative:
A relevant document will cite aid.
<con> Concepts: 1. Airbus
</top>

<top>
<num>302</num><title>
POLIO
</title>
</top>
"""


@pytest.mark.parametrize(("field", "texts"), [
    ("title", ["Airbus Subsidies", "POLIO"]),
    ("title+desc", ["Airbus Subsidies Document will discuss government assistance to Airbus.", "POLIO"]),
    ("narr", ["A relevant document will cite aid.", None]),
])
def test_topic_fields_and_numbers(tmp_path: Path, field: str, texts: list) -> None:
    path = write(tmp_path / "topics.51-100.txt", TOPICS)
    if texts[-1] is None:
        with pytest.raises(InputError, match=r"topic '302' has no text in <narr>") as exc:
            list(read_trec_topics(path, topic_field=field))
        assert exc.value.line == 16
        return
    assert list(read_trec_topics(path, topic_field=field)) == [Query("51", texts[0]), Query("302", texts[1])]


def test_topic_field_through_load_dataset(tmp_path: Path) -> None:
    root = tmp_path / "trec"
    write(root / "docs.trec", "<DOC><DOCNO>d1</DOCNO>airbus aid</DOC>\n<DOC><DOCNO>d2</DOCNO>polio</DOC>\n")
    write(root / "topics.txt", TOPICS.replace("<narr> Narrative:\nA relevant document will cite aid.\n", ""))
    write(root / "qrels.txt", "51 0 d1 1\n302 0 d2 1\n")
    ds = load_dataset(str(root))
    assert type(ds).__name__ == "TrecDataset"
    assert ds.queries()["51"].text == "Airbus Subsidies"
    ds.topic_field = "desc"  # changing it re-reads the queries
    with pytest.raises(InputError, match="'302' has no text in <desc>"):
        ds.queries()
    ds = load_dataset(str(root), topic_field="title+desc")
    assert ds.queries()["51"].text.startswith("Airbus Subsidies Document will")
    assert ds.qrels() == {"51": {"d1": 1}, "302": {"d2": 1}} and ds.doc_count() == 2
    with pytest.raises(InputError, match="unknown topic field 'body'"):
        load_dataset(str(root), topic_field="body")
    with pytest.raises(InputError, match="no splits"):
        load_dataset(f"{root}:test")


def test_topics_written_as_docs_and_topic_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "topics.cacm.txt", "<DOC>\n<DOCNO> 1 </DOCNO>\n\n What articles\nexist?\n</DOC>\n")
    assert list(read_trec_topics(path)) == list(read_trec_doc_topics(path)) == [Query("1", "What articles exist?")]
    outside = write(tmp_path / "t1.txt", "<top><num>1</num><title>a</title></top>\nstray\n")
    with pytest.raises(InputError, match="outside a <top>") as exc:
        list(read_trec_topics(outside))
    assert exc.value.line == 2
    dup = write(tmp_path / "t2.txt",
                "<top><num>01</num><title>a</title></top>\n<top><num>1</num><title>b</title></top>\n")
    with pytest.raises(InputError, match="duplicate query id '1'") as exc:
        list(read_trec_topics(dup))
    assert exc.value.line == 2


# --------------------------------------------------------------------------- empty files


@pytest.mark.parametrize("name", ["queries.jsonl", "queries.tsv", "topics.txt", "queries.jsonl.gz", "X.QRY"])
def test_empty_queries_file_is_an_error(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "\n \n")
    reader = read_smart_queries if name == "X.QRY" else read_queries
    with pytest.raises(InputError, match="contains no queries") as exc:
        list(reader(path))
    assert exc.value.path == str(path)


def test_empty_queries_in_a_dataset_is_an_error_not_a_warning(tmp_path: Path) -> None:
    root = beir_folder(tmp_path / "ds")
    write(root / "queries.jsonl", "")
    ds = load_dataset(f"{root}:test")
    with pytest.raises(InputError, match=r"queries\.jsonl: queries file contains no queries"):
        ds.queries()
    assert ds.warnings == []


def test_empty_corpus_files_are_errors(tmp_path: Path) -> None:
    for name, reader in [("X.ALL", read_smart_docs), ("corpus.jsonl.xz", read_corpus), ("docs.trec", read_corpus)]:
        path = write(tmp_path / name, "")
        with pytest.raises(InputError, match="no documents") as exc:
            list(reader(path))
        assert exc.value.path == str(path)


def test_cli_topic_field_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from hardneg.cli import app

    monkeypatch.setenv("HARDNEG_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "trec"
    write(root / "docs.trec", "<DOC><DOCNO>d1</DOCNO>airbus government aid</DOC>\n"
          "<DOC><DOCNO>d2</DOCNO>polio vaccine</DOC>\n<DOC><DOCNO>d3</DOCNO>other words</DOC>\n")
    write(root / "topics.txt", "<top><num>1</num><title>polio</title><desc>airbus aid</desc></top>\n")
    write(root / "qrels.txt", "1 0 d1 1\n")
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["--quiet", "bm25", str(root), "--topic-field", "desc", "--out", str(out),
                                 "--k", "3"])
    assert result.exit_code == 0, result.output
    run_file = next(p for p in out.iterdir() if p.name.startswith("run"))
    first = run_file.read_text().split("\n")[0].split()
    assert first[:3] == ["1", "Q0", "d1"]  # the desc (airbus aid) was the query, not the title (polio)
    result = runner.invoke(app, ["--quiet", "bm25", str(root), "--topic-field", "bogus", "--out", str(out)])
    # (the console entry point turns the InputError into a message and exit 2)
    assert isinstance(result.exception, InputError) and "unknown topic field" in str(result.exception)
