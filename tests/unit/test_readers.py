"""Unit tests for the hardneg.data readers and load_dataset on tiny files written to tmp_path."""

from __future__ import annotations

import json
import logging
import os
import sys
import types
from collections import namedtuple
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardneg.data import (
    Dataset,
    Doc,
    Qrel,
    QrelsStats,
    Query,
    load_dataset,
    parse_spec,
    read_beir_corpus,
    read_beir_queries,
    read_msmarco_collection,
    read_msmarco_queries,
    read_qrels,
    read_trec_topics,
)
from hardneg.errors import HardnegError, InputError


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def jsonl(*objs: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def expect_error(exc: pytest.ExceptionInfo[InputError], path: Path, line: int | None) -> str:
    err = exc.value
    assert err.path == str(path)
    assert err.line == line
    text = str(err)
    assert path.name in text
    if line is not None:
        assert f"{path.name}:{line}:" in text
    return text


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    root = tmp_path / "mini"
    write(
        root / "corpus.jsonl",
        jsonl(
            {"_id": "d1", "title": "Alpha", "text": "first doc"},
            {"_id": "d2", "title": "", "text": "second doc"},
            {"_id": "d3", "text": "no title field"},
        ),
    )
    write(
        root / "queries.jsonl",
        jsonl(
            {"_id": "q1", "text": "one"},
            {"_id": "q2", "text": "two"},
            {"_id": "q3", "text": "three"},
        ),
    )
    write(root / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\r\nq2\td1\t1\r\nq1\td2\t2\r\n")
    write(root / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\nq3\td3\t1\n")
    return root


# --------------------------------------------------------------------------- records


def test_beir_corpus_fields(tmp_path: Path) -> None:
    p = write(
        tmp_path / "corpus.jsonl",
        jsonl(
            {"_id": "a", "title": "T", "text": "x", "metadata": {}},
            {"_id": 7, "text": "int id"},
            {"_id": "c", "title": None, "text": "null title"},
            {"_id": "d", "title": "only title", "text": ""},
        ),
    )
    docs = list(read_beir_corpus(p))
    assert docs == [
        Doc("a", "x", "T"),
        Doc("7", "int id", ""),
        Doc("c", "null title", ""),
        Doc("d", "", "only title"),
    ]
    assert docs[0].full_text() == "T x"


def test_beir_corpus_fills_ids(tmp_path: Path) -> None:
    p = write(
        tmp_path / "corpus.jsonl", jsonl({"_id": "a", "text": "x"}, {"_id": "b", "text": "y"})
    )
    ids: set[str] = set()
    assert len(list(read_beir_corpus(p, ids=ids))) == 2
    assert ids == {"a", "b"}


def test_beir_queries(tmp_path: Path) -> None:
    p = write(tmp_path / "queries.jsonl", jsonl({"_id": "1", "text": "hi", "metadata": {}}))
    assert list(read_beir_queries(p)) == [Query("1", "hi")]


def test_msmarco_collection_and_queries_crlf(tmp_path: Path) -> None:
    c = write(tmp_path / "collection.tsv", "0\tzero text\r\n1\tone text\r\n")
    q = write(tmp_path / "queries.tsv", "5\t what is x\n6\twho\n")
    assert list(read_msmarco_collection(c)) == [Doc("0", "zero text"), Doc("1", "one text")]
    # query text is kept as written (MS MARCO has a few with a leading space)
    assert list(read_msmarco_queries(q)) == [Query("5", " what is x"), Query("6", "who")]


def test_trec_topics_tsv_and_sgml(tmp_path: Path) -> None:
    tsv = write(tmp_path / "topics.dl20.txt", "101\tfirst topic\r\n102\tsecond\r\n")
    assert [q.query_id for q in read_trec_topics(tsv)] == ["101", "102"]
    sgml = write(
        tmp_path / "topics.301.txt",
        "<top>\n<num> Number: 301\n<title> International Organized\nCrime\n\n"
        "<desc> Description:\nIdentify organizations.\n</top>\n\n"
        "<top>\n<num> Number: 302 <title> Poliomyelitis\n</top>\n",
    )
    assert list(read_trec_topics(sgml)) == [
        Query("301", "International Organized Crime"),
        Query("302", "Poliomyelitis"),
    ]


def test_trec_topics_unclosed(tmp_path: Path) -> None:
    p = write(tmp_path / "topics.txt", "<top>\n<num> Number: 1\n<title> a\n\n<top>\n")
    with pytest.raises(InputError) as exc:
        list(read_trec_topics(p))
    assert "never closed" in expect_error(exc, p, 1)


# --------------------------------------------------------------------------- qrels layouts


@pytest.mark.parametrize(
    ("content", "layout"),
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n", "beir"),
        ("query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\td2\t2\r\n", "beir"),
        ("q1\td1\t1\nq1\td2\t2\n", "beir"),
        ("q1 0 d1 1\nq1 0 d2 2\n", "trec"),
        ("q1 Q0 d1 1\nq1  Q0  d2  2\r\n", "trec"),
        ("q1\t0\td1\t1\nq1\t0\td2\t2\n", "trec"),
    ],
)
def test_qrels_layouts(tmp_path: Path, content: str, layout: str) -> None:
    p = write(tmp_path / "qrels.txt", content)
    stats = QrelsStats()
    assert list(read_qrels(p, stats=stats)) == [Qrel("q1", "d1", 1), Qrel("q1", "d2", 2)]
    assert stats.layout == layout
    assert stats.lines == 2


def test_qrels_msmarco_two_columns(tmp_path: Path) -> None:
    p = write(tmp_path / "qrels.train.tsv", "1\t10\n1\t11\n2\t20\n")
    assert list(read_qrels(p)) == [Qrel("1", "10", 1), Qrel("1", "11", 1), Qrel("2", "20", 1)]


def test_qrels_graded_and_negative(tmp_path: Path) -> None:
    p = write(tmp_path / "qrels", "1 0 a 3\n1 0 b 0\n1 0 c -1\n")
    assert [r.relevance for r in read_qrels(p)] == [3, 0, -1]


def test_qrels_duplicates(tmp_path: Path) -> None:
    same = write(tmp_path / "same.tsv", "q\td\t1\nq\td\t1\nq\te\t0\n")
    stats = QrelsStats()
    assert len(list(read_qrels(same, stats=stats))) == 2
    assert stats.duplicates == 1
    assert stats.zero_scores == 1
    conflict = write(tmp_path / "conflict.tsv", "q\td\t1\nq\te\t1\n\nq\td\t2\n")
    with pytest.raises(InputError) as exc:
        list(read_qrels(conflict))
    text = expect_error(exc, conflict, 4)
    assert "line 1" in text and "judged 2" in text


# --------------------------------------------------------------------------- tolerance


def test_bom_and_blank_lines(tmp_path: Path) -> None:
    c = write(
        tmp_path / "corpus.jsonl",
        b"\xef\xbb\xbf" + jsonl({"_id": "a", "text": "x"}).encode() + b"\n   \r\n" + b"{bad\n",
    )
    with pytest.raises(InputError) as exc:
        list(read_beir_corpus(c))
    expect_error(exc, c, 4)  # blank lines skipped but still counted
    q = write(tmp_path / "qrels.tsv", b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\r\n\r\nq\td\t1\r\n")
    assert list(read_qrels(q)) == [Qrel("q", "d", 1)]
    t = write(tmp_path / "queries.tsv", b"\xef\xbb\xbf1\tx\n")
    assert list(read_msmarco_queries(t)) == [Query("1", "x")]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("lines", "bad_line", "needle"),
    [
        (['{"_id": "a", "text": "x"}', '{"_id": "b", "text": '], 2, "not valid JSON"),
        (['{"_id": "a", "text": "x"}', '["b", "y"]'], 2, "not an object"),
        (['{"_id": "a", "text": "x"}', '{"text": "y"}'], 2, "no '_id'"),
        (['{"_id": "a", "text": "x"}', '{"_id": "", "text": "y"}'], 2, "'_id'"),
        (['{"_id": "a", "text": "x"}', '{"_id": "b", "title": "t"}'], 2, "no 'text'"),
        (['{"_id": "a", "text": 3}'], 1, "must be a string"),
        (['{"_id": "a", "text": "x"}', '{"_id": "b", "title": " ", "text": "\\n"}'], 2, "empty"),
        (['{"_id": "a", "text": "x"}', "", '{"_id": "a", "text": "y"}'], 3, "first on line 1"),
        (["[" * 100_000], 1, "not valid JSON"),
    ],
)
def test_corpus_errors(tmp_path: Path, lines: list[str], bad_line: int, needle: str) -> None:
    p = write(tmp_path / "corpus.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(InputError) as exc:
        list(read_beir_corpus(p))
    text = expect_error(exc, p, bad_line)
    assert needle in text
    assert exc.value.hint  # every error says what to do


@pytest.mark.parametrize(
    ("reader", "content", "bad_line", "needle"),
    [
        (read_beir_queries, jsonl({"_id": "q", "text": "a"}, {"_id": "q", "text": "b"}), 2, "dup"),
        (read_beir_queries, jsonl({"_id": "q", "text": "  "}), 1, "empty text"),
        (read_msmarco_queries, "1\ta\n2\n", 2, "found 1"),
        (read_msmarco_queries, "1\ta\n2\tb\tc\n", 2, "found 3"),
        (read_msmarco_queries, "1\ta\n1\tb\n", 2, "duplicate query id '1'"),
        (read_msmarco_queries, "1\ta\n2\t \n", 2, "empty text"),
        (read_msmarco_collection, "0\ta\n1\tb\tc\n", 2, "found 3"),
        (read_msmarco_collection, "0\ta\n\t b\n", 2, "empty id"),
        (read_msmarco_collection, "0\ta\n1\t\n", 2, "is empty"),
        (read_msmarco_collection, "0\ta\n1\tb\n0\tc\n", 3, "first on line 1"),
        (read_qrels, "q\td\t1\nq\te\tx\n", 2, "'x' is not an integer"),
        (read_qrels, "q\td\t1\nq\te\t1.0\n", 2, "not an integer"),
        (read_qrels, "q\td\t1\nq\te\n", 2, "expected 3 columns"),
        (read_qrels, "q 0 d 1\nq 0 e 1 extra\n", 2, "expected 4 columns"),
        (read_qrels, "q d 1 2 3\n", 1, "unrecognised qrels layout"),
        (read_qrels, "query-id\tcorpus-id\tscore\nq\t\t1\n", 2, "empty query id or document id"),
    ],
)
def test_other_errors(tmp_path: Path, reader, content: str, bad_line: int, needle: str) -> None:
    p = write(tmp_path / "input.txt", content)
    with pytest.raises(InputError) as exc:
        list(reader(p))
    assert needle in expect_error(exc, p, bad_line)


@pytest.mark.parametrize(
    "reader", [read_beir_corpus, read_beir_queries, read_msmarco_collection, read_qrels]
)
def test_undecodable_bytes(tmp_path: Path, reader) -> None:
    good = {
        read_beir_corpus: jsonl({"_id": "a", "text": "x"}),
        read_beir_queries: jsonl({"_id": "a", "text": "x"}),
        read_msmarco_collection: "0\tx\n",
        read_qrels: "q\td\t1\n",
    }[reader]
    p = write(tmp_path / "f.txt", good.encode() + b"\n1\tcaf\xe9\t1\n")
    with pytest.raises(InputError) as exc:
        list(reader(p))
    text = expect_error(exc, p, 3)
    assert "UTF-8" in text and "0xe9" in text


def test_file_not_found_and_empty_corpus(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(InputError) as exc:
        list(read_beir_corpus(missing))
    assert "file not found" in expect_error(exc, missing, None)
    empty = write(tmp_path / "corpus.jsonl", "\n\n")
    with pytest.raises(InputError) as exc:
        list(read_beir_corpus(empty))
    assert "no documents" in expect_error(exc, empty, None)
    empty_tsv = write(tmp_path / "collection.tsv", "")
    with pytest.raises(InputError):
        list(read_msmarco_collection(empty_tsv))


# --------------------------------------------------------------------------- spec parsing


def test_parse_spec(tmp_path: Path) -> None:
    assert parse_spec("data/scifact:test") == ("data/scifact", "test")
    assert parse_spec("data/scifact") == ("data/scifact", None)
    assert parse_spec("msmarco/passage-eval:dev.small") == ("msmarco/passage-eval", "dev.small")
    assert parse_spec("irds:beir/scifact/test") == ("irds:beir/scifact/test", None)
    assert parse_spec("host:dir/sub") == ("host:dir/sub", None)  # slash after colon: no split
    odd = tmp_path / "odd:name"
    odd.mkdir()
    assert parse_spec(str(odd)) == (str(odd), None)  # existing path wins
    with pytest.raises(InputError, match="names no split"):
        parse_spec("data/scifact:")


# --------------------------------------------------------------------------- BEIR folders


def test_beir_split(beir: Path) -> None:
    ds = load_dataset(f"{beir}:test")
    assert (ds.name, ds.split, ds.corpus_path) == ("mini", "test", beir / "corpus.jsonl")
    assert ds.doc_count() == 3
    assert [d.doc_id for d in ds.iter_docs()] == ["d1", "d2", "d3"]
    assert ds.docs() is ds.docs()
    assert ds.qrels() == {"q2": {"d1": 1}, "q1": {"d2": 2}}
    assert list(ds.queries()) == ["q1", "q2"]  # file order, only judged queries
    assert list(ds.all_queries()) == ["q1", "q2", "q3"]
    assert ds.warnings == []
    train = load_dataset(f"{beir}:train")
    assert list(train.queries()) == ["q3"]


def test_beir_without_split(beir: Path) -> None:
    ds = load_dataset(str(beir))
    assert ds.split is None and ds.qrels() == {}
    assert list(ds.queries()) == ["q1", "q2", "q3"]


def test_beir_missing_split_lists_available(beir: Path) -> None:
    with pytest.raises(InputError) as exc:
        load_dataset(f"{beir}:dev")
    text = str(exc.value)
    assert "qrels/dev.tsv" in text and "test, train" in text


def test_overrides(beir: Path, tmp_path: Path) -> None:
    qrels = write(tmp_path / "graded.txt", "q1 0 d1 3\nq1 0 d3 0\nq3 0 d2 1\n")
    queries = write(tmp_path / "extra.tsv", "q1\tonly one\nq3\tthree\n")
    ds = load_dataset(str(beir), qrels=qrels)
    assert ds.qrels() == {"q1": {"d1": 3, "d3": 0}, "q3": {"d2": 1}}
    assert list(ds.queries()) == ["q1", "q3"]
    # split given, its file replaced; queries replaced too
    ds = load_dataset(f"{beir}:nonexistent", qrels=qrels, queries=queries)
    assert ds.queries() == {"q1": Query("q1", "only one"), "q3": Query("q3", "three")}
    with pytest.raises(InputError, match="file not found"):
        load_dataset(str(beir), qrels=tmp_path / "missing.txt")


def test_qrels_only_folder(tmp_path: Path) -> None:
    root = tmp_path / "fiqa-qrels"
    write(root / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n8\t5\t1\n8\t6\t1\n9\t5\t1\n")
    ds = load_dataset(f"{root}:test")
    assert ds.qrels() == {"8": {"5": 1, "6": 1}, "9": {"5": 1}}
    assert ds.queries() == {} and ds.docs() == [] and ds.doc_count() == 0
    assert ds.warnings == []  # nothing to cross-check against
    with pytest.raises(InputError, match="no corpus") as exc:
        ds.iter_docs()
    assert str(root) in str(exc.value)
    with pytest.raises(InputError, match="no corpus"):
        ds.fingerprint()


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset path not found"):
        load_dataset(str(tmp_path / "absent"))
    write(tmp_path / "stuff" / "notes.md", "hi")
    with pytest.raises(InputError, match="not a dataset folder"):
        load_dataset(str(tmp_path / "stuff"))


# --------------------------------------------------------------------------- MS MARCO folders


@pytest.fixture
def marco(tmp_path: Path) -> Path:
    root = tmp_path / "marco"
    write(root / "collection.tsv", "0\tp zero\n1\tp one\n2\tp two\n")
    write(root / "queries.dev.tsv", "10\tq ten\n11\tq eleven\n12\tunjudged\n")
    write(root / "queries.train.tsv", "20\tq twenty\n")
    write(root / "qrels.dev.tsv", "10\t0\t1\t1\n11\t0\t2\t1\n")
    write(root / "qrels.train.tsv", "20\t0\n")
    return root


def test_msmarco_split(marco: Path) -> None:
    ds = load_dataset(f"{marco}:dev")
    assert ds.queries_path == marco / "queries.dev.tsv"
    assert ds.qrels_path == marco / "qrels.dev.tsv"
    assert ds.doc_count() == 3
    assert list(ds.queries()) == ["10", "11"]
    assert len(ds.all_queries()) == 3
    assert ds.qrels() == {"10": {"1": 1}, "11": {"2": 1}}
    assert load_dataset(f"{marco}:train").qrels() == {"20": {"0": 1}}


def test_msmarco_unknown_split_and_ambiguity(marco: Path) -> None:
    with pytest.raises(InputError) as exc:
        load_dataset(f"{marco}:eval")
    assert "available splits: dev, train" in str(exc.value)
    with pytest.raises(InputError, match="several queries files"):
        load_dataset(str(marco))


def test_msmarco_single_files(tmp_path: Path) -> None:
    root = tmp_path / "judged"
    write(root / "collection.tsv", "0\tzero\n7\tseven\n")
    write(root / "queries.tsv", "1\tone\n2\ttwo\n")
    write(root / "2019qrels-pass.txt", "1 Q0 7 3\n1 Q0 8 0\n2 Q0 9 0\n")
    ds = load_dataset(str(root))
    assert ds.qrels_path == root / "2019qrels-pass.txt"
    assert ds.qrels() == {"1": {"7": 3}}
    assert list(ds.queries()) == ["1"]
    assert len(ds.warnings) == 1 and "2 qrels lines (2 queries" in ds.warnings[0]


def test_msmarco_eval_folder_without_corpus(tmp_path: Path) -> None:
    root = tmp_path / "eval"
    write(root / "queries.dev.small.tsv", "1\tone\n2\ttwo\n")
    write(root / "qrels.dev.small.tsv", "1\t0\t5\t1\n")
    write(root / "topics.dl20.txt", "3\tthree\r\n4\tfour\r\n")
    write(root / "qrels.dl20-passage.txt", "4 0 9 2\n4 0 8 0\n")
    ds = load_dataset(f"{root}:dev.small")
    assert list(ds.queries()) == ["1"] and ds.qrels() == {"1": {"5": 1}}
    assert ds.docs() == []
    dl20 = load_dataset(f"{root}:dl20")  # topics.dl20.txt + qrels.dl20-passage.txt
    assert list(dl20.queries()) == ["4"] and dl20.qrels() == {"4": {"9": 2, "8": 0}}


def test_corpus_file_spec(tmp_path: Path) -> None:
    corpus = write(tmp_path / "c" / "corpus.jsonl", jsonl({"_id": "a", "text": "x"}))
    ds = load_dataset(str(corpus))
    assert ds.doc_count() == 1 and ds.qrels() == {} and ds.queries() == {}


# --------------------------------------------------------------------------- warnings


def test_warnings_counted_and_logged_once(
    beir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    qrels = write(
        tmp_path / "q.tsv",
        "q1\td1\t1\n"
        "q1\td1\t1\n"  # identical duplicate
        "q1\td2\t0\n"  # score 0: kept
        "q2\tgone\t1\n"  # absent doc
        "q2\tgone2\t0\n"  # absent doc
        "qX\td1\t1\n",  # absent query
    )
    ds = load_dataset(str(beir), qrels=qrels)
    with caplog.at_level(logging.WARNING, logger="hardneg"):
        assert ds.qrels() == {"q1": {"d1": 1, "d2": 0}}
        ds.qrels()
        ds.queries()
    assert list(ds.queries()) == ["q1"]
    joined = "\n".join(ds.warnings)
    assert len(ds.warnings) == 4
    assert "1 identical duplicate" in joined
    assert "2 qrels lines in" in joined and "score 0" in joined
    assert "2 qrels lines (1 queries, grades 0, 1)" in joined and "absent from the corpus" in joined
    assert "1 qrels lines (1 queries)" in joined and "'qX'" in joined
    records = [r for r in caplog.records if r.name == "hardneg"]
    assert len(records) == 4


def test_doc_ids_cached_after_streaming(beir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_dataset(f"{beir}:test")
    assert len(list(ds.iter_docs())) == 3
    import hardneg.data.dataset as dataset_mod

    def boom(*a, **k):
        raise AssertionError("corpus re-read")

    monkeypatch.setattr(dataset_mod, "read_corpus", boom)
    assert ds.qrels() and ds.doc_count() == 3


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_content_not_mtime(tmp_path: Path) -> None:
    a = write(tmp_path / "a" / "corpus.jsonl", jsonl({"_id": "1", "text": "x"}))
    b = write(tmp_path / "b" / "corpus.jsonl", jsonl({"_id": "1", "text": "x"}))
    os.utime(b, (1_000_000, 1_000_000))
    fa, fb = load_dataset(str(a.parent)).fingerprint(), load_dataset(str(b.parent)).fingerprint()
    assert fa == fb and len(fa) == 64
    write(b, jsonl({"_id": "1", "text": "y"}))
    assert load_dataset(str(b.parent)).fingerprint() != fa


def test_dataset_direct_construction(tmp_path: Path) -> None:
    c = write(tmp_path / "collection.tsv", "1\tx\n")
    ds = Dataset("custom", corpus_path=c)
    assert ds.docs() == [Doc("1", "x")] and ds.queries() == {} and ds.qrels() == {}


# --------------------------------------------------------------------------- ir_datasets


def test_irds_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ir_datasets", None)  # makes `import` raise ImportError
    with pytest.raises(HardnegError) as exc:
        load_dataset("irds:beir/scifact/test")
    assert "pip install 'hardneg[irds]'" in str(exc.value)


def test_irds_load_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("ir_datasets")

    def load(name: str):
        raise KeyError(f"{name} not found")

    fake.load = load  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ir_datasets", fake)
    with pytest.raises(HardnegError) as exc:
        load_dataset("irds:nope/x")
    text = str(exc.value)
    assert "nope/x not found" in text and "local" in text


def test_irds_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    D = namedtuple("D", "doc_id text title")
    B = namedtuple("B", "doc_id body")
    Q = namedtuple("Q", "query_id text")
    R = namedtuple("R", "query_id doc_id relevance iteration")

    class Handle:
        def has_docs(self) -> bool:
            return True

        def has_queries(self) -> bool:
            return True

        def has_qrels(self) -> bool:
            return True

        def docs_iter(self):
            return iter([D("1", "text one", "Title"), B("2", "body two")])

        def queries_iter(self):
            return iter([Q("a", "qa"), Q("b", "qb")])

        def qrels_iter(self):
            return iter([R("a", "1", 1, "0"), R("a", "9", 0, "0")])

    fake = types.ModuleType("ir_datasets")
    fake.load = lambda name: Handle()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ir_datasets", fake)
    ds = load_dataset("irds:beir/fake/test")
    assert ds.name == "beir_fake_test" and ds.irds_id == "beir/fake/test"
    assert ds.docs() == [Doc("1", "text one", "Title"), Doc("2", "body two", "")]
    assert ds.qrels() == {"a": {"1": 1}}  # doc 9 absent from the corpus: dropped, warned
    assert list(ds.queries()) == ["a"]
    assert len(ds.warnings) == 1
    assert len(ds.fingerprint()) == 64


def test_irds_iteration_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    class Handle:
        def has_docs(self) -> bool:
            return True

        def docs_iter(self):
            raise ConnectionError("offline")

    fake = types.ModuleType("ir_datasets")
    fake.load = lambda name: Handle()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ir_datasets", fake)
    with pytest.raises(HardnegError, match="offline"):
        load_dataset("irds:x").docs()


# --------------------------------------------------------------------------- property


_line = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda i, t, title: json.dumps({"_id": i, "text": t, "title": title}),
        st.one_of(st.text(max_size=5), st.integers(), st.none()),
        st.one_of(st.text(max_size=10), st.none(), st.integers()),
        st.one_of(st.text(max_size=5), st.none()),
    ),
    st.builds(
        lambda a, b, c: f"{a}\t{b}\t{c}",
        st.text(max_size=4),
        st.text(max_size=4),
        st.one_of(st.integers(-3, 3).map(str), st.text(max_size=3)),
    ),
    st.builds(lambda a, b: f"{a} 0 {b} 1", st.text("ab", max_size=3), st.text("xy", max_size=3)),
)
_content = st.one_of(
    st.binary(max_size=200),
    st.lists(_line, max_size=8).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),
    st.lists(_line, max_size=8).map(lambda ls: "\r\n".join(ls).encode("utf-8", "replace")),
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=_content)
def test_random_input_parses_or_raises_input_error(tmp_path: Path, content: bytes) -> None:
    for name, reader in [
        ("corpus.jsonl", read_beir_corpus),
        ("qrels.tsv", read_qrels),
        ("collection.tsv", read_msmarco_collection),
        ("topics.txt", read_trec_topics),
    ]:
        p = write(tmp_path / name, content)
        try:
            for _ in reader(p):
                pass
        except InputError as err:
            assert str(p) in str(err)
