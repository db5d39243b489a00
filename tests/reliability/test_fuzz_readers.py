"""Property-based fuzzing of every reader: random bytes, truncated lines, wrong column counts, invalid
UTF-8, enormous lines, duplicate and dangling ids.

Every input either parses (and the records are sound: unique non-empty ids, text a UTF-8 file can
hold) or ends with the project's own error (:class:`~hardneg.errors.HardnegError`) naming the file and,
for a problem on a line, ``file:line`` -- never another exception, never a hang (each input runs under
an alarm). The number of inputs tried per reader is printed at the end of the session (the
"reliability" section) and written to ``$HARDNEG_RELIABILITY_REPORT`` when set.

``HARDNEG_FUZZ_EXAMPLES`` raises the number of examples per reader (default 150).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import lzma
import os
import signal
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hardneg.data.ids as ids_mod
import hardneg.data.lines as lines_mod
from conftest import FUZZ_COUNTS
from hardneg.data import (
    load_dataset,
    read_beir_corpus,
    read_beir_queries,
    read_corpus,
    read_msmarco_collection,
    read_msmarco_queries,
    read_qrels,
    read_queries,
    read_trec_topics,
)
from hardneg.data.formats import beir, sgml, smart
from hardneg.errors import HardnegError, InputError
from hardneg.negatives.formats.tsv import read_negatives
from hardneg.retrieval.runs import read_run

EXAMPLES = int(os.environ.get("HARDNEG_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: the line limit while fuzzing (patched down from 64 MiB so "enormous" lines stay cheap)
LINE_LIMIT = 4096
#: an input taking longer than this is a hang
HANG_SECONDS = 20
#: errors about the file as a whole carry no line number
WHOLE_FILE = ("corpus contains no documents", "file not found", "has no documents", "not a dataset folder",
              "dataset has no corpus", "contains no queries")

# --------------------------------------------------------------------------- strategies
IDS = st.sampled_from(["1", "2", "3", "d1", "q1", "007", "7", " ", "", "a b", "x\ty", "é", "1.0", "-1"])
WORDS = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
GRADES = st.sampled_from(["0", "1", "2", "-1", "1.5", "x", "", "99999999999999999999", "１"])


def _json_line(draw, fields: dict) -> str:
    obj = {k: draw(v) for k, v in fields.items() if draw(st.booleans()) or k == "_id"}
    raw = draw(st.sampled_from(["obj", "obj", "obj", "list", "str", "surrogate", "deep"]))
    if raw == "list":
        return json.dumps(list(obj.values()))
    if raw == "str":
        return json.dumps(draw(WORDS))
    if raw == "surrogate":
        return json.dumps(obj)[:-1] + ', "text": "bad \\ud800 escape"}'
    if raw == "deep":
        depth = draw(st.integers(1, 3000))
        return "[" * depth + "]" * depth
    return json.dumps(obj)


@st.composite
def beir_line(draw):
    value = st.one_of(WORDS, st.integers(), st.none(), st.booleans(), st.floats(allow_nan=True))
    return _json_line(draw, {"_id": st.one_of(IDS, st.integers(-5, 5), st.none(), st.floats()),
                             "text": value, "title": value})


@st.composite
def tsv_line(draw):
    n = draw(st.sampled_from([1, 2, 2, 2, 3, 4]))
    cols = [draw(IDS)] + [draw(WORDS) for _ in range(n - 1)]
    return "\t".join(cols)


@st.composite
def qrels_line(draw):
    layout = draw(st.sampled_from(["beir", "trec", "msmarco", "header", "other"]))
    if layout == "beir":
        return f"{draw(IDS)}\t{draw(IDS)}\t{draw(GRADES)}"
    if layout == "trec":
        return f"{draw(IDS)} 0 {draw(IDS)} {draw(GRADES)}"
    if layout == "msmarco":
        return f"{draw(IDS)}\t{draw(IDS)}"
    if layout == "header":
        return "query-id\tcorpus-id\tscore"
    return " ".join(draw(st.lists(WORDS, max_size=6)))


@st.composite
def topics_line(draw):
    kind = draw(st.sampled_from(["<top>", "</top>", "num", "title", "desc", "text", "tsv"]))
    if kind == "num":
        return f"<num> Number: {draw(IDS)}"
    if kind == "title":
        return f"<title> {draw(WORDS)}"
    if kind == "desc":
        return f"<desc> Description: {draw(WORDS)}"
    if kind == "text":
        return draw(WORDS)
    if kind == "tsv":
        return draw(tsv_line())
    return kind


@st.composite
def sgml_line(draw):
    """A line of a TREC SGML collection: DOC/DOCNO/TITLE/TEXT tags (some on one line), entities, stray tags."""
    kind = draw(st.sampled_from(["<DOC>", "</DOC>", "docno", "docno", "title", "<TEXT>", "</TEXT>", "text",
                                 "text", "oneline", "odd"]))
    if kind == "docno":
        return f"<DOCNO> {draw(IDS)} </DOCNO>"
    if kind == "title":
        return f"<{draw(st.sampled_from(['TITLE', 'HEADLINE', 'HEAD']))}>{draw(WORDS)}</TITLE>"
    if kind == "text":
        return draw(st.one_of(WORDS, st.sampled_from(["a &amp; b &hyph; c", "&#xD800; &#0; &bogus;", "<P>x</P>",
                                                      "<F P=105>y", "<!-- c -->", "a < b > c"])))
    if kind == "oneline":
        return f"<DOC><DOCNO>{draw(IDS)}</DOCNO>{draw(WORDS)}</DOC>"
    if kind == "odd":
        return draw(st.sampled_from(["<DOCNO>", "</DOCNO>", "<doc>", "<DOC", "<>", "</>", "<DOCNO></DOCNO>"]))
    return kind


@st.composite
def trec_topics_line(draw):
    """Classic and Vaswani-style topic lines: closing tags, extra fields, padded numbers, labels."""
    kind = draw(st.sampled_from(["plain", "plain", "num", "close", "extra"]))
    if kind == "plain":
        return draw(topics_line())
    if kind == "num":
        return f"<num>{draw(st.sampled_from(['051', '1', 'Number: 007', '', 'a b', '²']))}</num><title>"
    if kind == "close":
        return draw(st.sampled_from(["</title>", "</desc>", "</num>", "<narr> Narrative:", "<top><num>1</num>"]))
    return f"<{draw(st.sampled_from(['dom', 'con', 'smry', 'head']))}> {draw(WORDS)}"


@st.composite
def compressed(draw, inner):
    """File bytes gzip/bz2/xz-compressed, sometimes truncated or with a flipped byte."""
    data = draw(inner)
    kind = draw(st.sampled_from([".gz", ".bz2", ".xz"]))
    packed = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}[kind](data)
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if damage == "truncate":
        packed = packed[: draw(st.integers(0, max(0, len(packed) - 1)))]
    elif damage == "flip" and packed:
        i = draw(st.integers(0, len(packed) - 1))
        packed = packed[:i] + bytes([packed[i] ^ 0x55]) + packed[i + 1 :]
    return kind, packed


@st.composite
def smart_line(draw):
    kind = draw(st.sampled_from([".I", ".T", ".W", ".A", ".X", "text", "text", "odd"]))
    if kind == ".I":
        return f".I {draw(st.one_of(IDS, st.sampled_from(['²', '12', '0012'])))}"
    if kind == "text":
        return draw(WORDS)
    if kind == "odd":
        return draw(st.sampled_from([".I", ".I 1 2", ".", ". x", ".IX 3"]))
    return kind


@st.composite
def smart_qrels_line(draw):
    parts = [draw(st.one_of(IDS, st.sampled_from(["12", "0", "²", "0.0", "1.5"]))) for _ in range(draw(
        st.sampled_from([4, 4, 4, 3, 5])))]
    return " ".join(parts)


@st.composite
def run_line(draw):
    if draw(st.booleans()):
        return " ".join([draw(IDS), "Q0", draw(IDS), draw(st.sampled_from(["1", "2", "0", "-1", "x"])),
                         draw(st.sampled_from(["1.5", "nan", "inf", "-2", "x", "1e400"])), "tag"])
    return "\t".join([draw(IDS), draw(IDS), draw(st.sampled_from(["1", "2", "3", "0", "x", "1.0"]))])


def _mutate(draw, line: str) -> bytes:
    """One line, perhaps damaged: truncated, columns added, bad bytes, enormous, NULs."""
    data = line.encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["keep"] * 6 + ["truncate", "tab", "badbyte", "huge", "nul", "cr", "lone-cr"]))
    if how == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "tab":
        data += b"\textra"
    elif how == "badbyte":
        pos = draw(st.integers(0, len(data)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe9", b"\xf8\x88\x80\x80\x80", b"\x80"]))
        data = data[:pos] + bad + data[pos:]
    elif how == "huge":
        data += b"x" * draw(st.integers(LINE_LIMIT - len(data) - 8, 3 * LINE_LIMIT))
    elif how == "nul":
        data += b"\x00"
    elif how == "cr":
        data += b"\r"
    elif how == "lone-cr":
        data = data.replace(b"\t", b"\r", 1)
    return data


@st.composite
def files(draw, line_strategy):
    """The bytes of a file: pure random bytes, or lines of the format with damage here and there."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    lines = [_mutate(draw, draw(line_strategy)) for _ in range(draw(st.integers(0, 8)))]
    if lines and draw(st.booleans()):  # a duplicated line (duplicate id)
        lines.insert(draw(st.integers(0, len(lines))), lines[draw(st.integers(0, len(lines) - 1))])
    sep = draw(st.sampled_from([b"\n", b"\n", b"\r\n", b"\n\n"]))
    out = sep.join(lines)
    if draw(st.booleans()):
        out += sep
    if draw(st.integers(0, 9)) == 0:
        out = b"\xef\xbb\xbf" + out
    return out


# --------------------------------------------------------------------------- checking
@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    def fire(signum, frame):
        raise AssertionError(f"reader still running after {seconds}s: a hang")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def assert_located(err: HardnegError, paths: Iterable[Path]) -> None:
    """The error names one of ``paths``; a line-level problem names ``file:line``."""
    text = str(err)
    named = [p for p in paths if str(p) in text]
    assert named, f"error names no input file: {text}"
    if isinstance(err, InputError):
        if err.line is not None:
            assert f"{err.path}:{err.line}" in text, text
        else:
            assert any(w in text for w in WHOLE_FILE), f"a line-level error without its line: {text}"


def sound_text(value: str) -> None:
    assert isinstance(value, str)
    value.encode("utf-8")  # no lone surrogate: every record can be written back out


def check_records(records: list, kind: str) -> None:
    if kind in ("docs", "queries"):
        ids = [r[0] for r in records]
        assert len(ids) == len(set(ids)), "duplicate ids passed through"
        for r in records:
            assert r[0].strip(), "empty id passed through"
            for part in r:
                sound_text(part)
    elif kind == "qrels":
        for q in records:
            sound_text(q.query_id)
            sound_text(q.doc_id)
            assert isinstance(q.relevance, int)
    elif kind == "run":
        for qid, results in records.items():
            sound_text(qid)
            docs = [d for d, _ in results]
            assert len(docs) == len(set(docs))


def fuzz_one(name: str, content: bytes, filename: str, reader: Callable, kind: str) -> None:
    FUZZ_COUNTS[name] = FUZZ_COUNTS.get(name, 0) + 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        path.write_bytes(content)
        with mock.patch.object(lines_mod, "MAX_LINE_BYTES", LINE_LIMIT), no_hang():
            try:
                result = reader(path)
                records = result if isinstance(result, dict) else list(result)
            except HardnegError as err:
                assert_located(err, [path])
                return
        check_records(records, kind)


READERS = {
    "read_beir_corpus": (beir_line(), "corpus.jsonl", read_beir_corpus, "docs"),
    "read_beir_queries": (beir_line(), "queries.jsonl", read_beir_queries, "queries"),
    "read_corpus (jsonl)": (beir_line(), "corpus.jsonl", read_corpus, "docs"),
    "read_corpus (tsv)": (tsv_line(), "collection.tsv", read_corpus, "docs"),
    "read_msmarco_collection": (tsv_line(), "collection.tsv", read_msmarco_collection, "docs"),
    "read_msmarco_queries": (tsv_line(), "queries.tsv", read_msmarco_queries, "queries"),
    "read_queries (tsv)": (tsv_line(), "queries.dev.tsv", read_queries, "queries"),
    "read_trec_topics": (topics_line(), "topics.txt", read_trec_topics, "queries"),
    "read_qrels": (qrels_line(), "qrels.tsv", read_qrels, "qrels"),
    "classic.read_smart_docs": (smart_line(), "X.ALL", smart.read_smart_docs, "docs"),
    "classic.read_smart_queries": (smart_line(), "X.QRY", smart.read_smart_queries, "queries"),
    "classic.read_smart_qrels": (smart_qrels_line(), "X.REL", smart.read_smart_qrels, "qrels"),
    "sgml.read_trec_docs": (sgml_line(), "docs.trec", sgml.read_trec_docs, "docs"),
    "read_corpus (sgml)": (sgml_line(), "docs.sgml", read_corpus, "docs"),
    "sgml.read_trec_doc_topics": (sgml_line(), "topics.txt", sgml.read_trec_doc_topics, "queries"),
    "read_trec_topics (title+desc)": (trec_topics_line(), "topics.txt",
                                      lambda p: read_trec_topics(p, topic_field="title+desc"), "queries"),
    "runs.read_run": (run_line(), "run.trec", read_run, "run"),
    "negatives.read_negatives": (run_line(), "hard.tsv", read_negatives, "negatives"),
}


def _make_test(name: str):
    strategy, filename, reader, kind = READERS[name]

    @FUZZ
    @given(content=files(strategy))
    def test(content: bytes) -> None:
        fuzz_one(name, content, filename, reader, kind)

    return test


@pytest.mark.parametrize("name", list(READERS))
def test_reader_fuzz(name):
    _make_test(name)()


#: compressed inputs: the reader sees ``<file><suffix>``; damage is an error at a line of that file
COMPRESSED_READERS = {
    "read_corpus (jsonl, compressed)": (beir_line(), "corpus.jsonl", read_corpus, "docs"),
    "read_queries (tsv, compressed)": (tsv_line(), "queries.tsv", read_queries, "queries"),
    "read_qrels (compressed)": (qrels_line(), "qrels.tsv", read_qrels, "qrels"),
    "sgml.read_trec_docs (compressed)": (sgml_line(), "docs.trec", sgml.read_trec_docs, "docs"),
}


@pytest.mark.parametrize("name", list(COMPRESSED_READERS))
def test_compressed_reader_fuzz(name):
    strategy, filename, reader, kind = COMPRESSED_READERS[name]

    @settings(FUZZ, max_examples=max(1, EXAMPLES // 3))
    @given(packed=compressed(files(strategy)))
    def test(packed):
        suffix, content = packed
        fuzz_one(name, content, filename + suffix, reader, kind)

    test()


# --------------------------------------------------------------------------- whole datasets
@st.composite
def beir_folder(draw):
    return {"corpus.jsonl": draw(files(beir_line())), "queries.jsonl": draw(files(beir_line())),
            "qrels/test.tsv": draw(files(qrels_line()))}


@st.composite
def msmarco_folder(draw):
    return {"collection.tsv": draw(files(tsv_line())), "queries.test.tsv": draw(files(tsv_line())),
            "qrels.test.tsv": draw(files(qrels_line()))}


@st.composite
def smart_folder(draw):
    return {"X.ALL": draw(files(smart_line())), "X.QRY": draw(files(smart_line())),
            "X.REL": draw(files(smart_qrels_line()))}


def fuzz_dataset(name: str, layout: dict[str, bytes], spec_suffix: str) -> None:
    FUZZ_COUNTS[name] = FUZZ_COUNTS.get(name, 0) + 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        for rel, content in layout.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(content)
        paths = [root, *(root / rel for rel in layout)]
        with mock.patch.object(lines_mod, "MAX_LINE_BYTES", LINE_LIMIT), no_hang():
            try:
                ds = load_dataset(f"{root}{spec_suffix}")
                docs = ds.docs()
                queries = ds.queries()
                qrels = ds.qrels()
            except HardnegError as err:
                assert_located(err, paths)
                return
        check_records(docs, "docs")
        check_records(list(queries.values()), "queries")
        doc_ids = {d.doc_id for d in docs}
        for qid, judged in qrels.items():  # dangling ids are dropped (and warned about), never kept
            assert qid in queries
            assert set(judged) <= doc_ids


@st.composite
def trec_folder(draw):
    return {"docs.trec": draw(files(sgml_line())), "topics.txt": draw(files(trec_topics_line())),
            "qrels.txt": draw(files(qrels_line()))}


@pytest.mark.parametrize("name, strategy, suffix", [
    ("load_dataset (BEIR folder)", beir_folder(), ":test"),
    ("load_dataset (TREC folder)", trec_folder(), ""),
    ("load_dataset (MS MARCO folder)", msmarco_folder(), ":test"),
    ("load_dataset (SMART folder)", smart_folder(), ""),
])
def test_dataset_fuzz(name, strategy, suffix):
    @FUZZ
    @given(layout=strategy)
    def test(layout):
        fuzz_dataset(name, layout, suffix)

    test()


# --------------------------------------------------------------------------- targeted cases
def test_an_enormous_line_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    """A file with no newline (e.g. a binary blob) is one enormous line: an InputError at line 1."""
    monkeypatch.setattr(lines_mod, "MAX_LINE_BYTES", 1 << 20)
    path = tmp_path / "collection.tsv"
    with open(path, "wb") as fh:
        fh.write(b"1\tfine\n")
        fh.write(b"2\t" + b"y" * (3 << 20) + b"\n")
    with pytest.raises(InputError, match="longer than") as info:
        list(read_msmarco_collection(path))
    assert info.value.line == 2 and f"{path}:2" in str(info.value)


def test_invalid_utf8_in_smart_files_names_the_line(tmp_path):
    path = tmp_path / "X.ALL"
    path.write_bytes(b".I 1\n.W\nfine text\n.I 2\n.W\ncaf\xe9\n")
    with pytest.raises(InputError) as info:
        list(smart.read_smart_docs(path))
    assert info.value.line == 6 and f"{path}:6" in str(info.value)


def test_non_ascii_digit_ids_in_smart_files_are_errors_not_crashes(tmp_path):
    rel = tmp_path / "X.REL"
    rel.write_text("1 0 ² 1\n", encoding="utf-8")
    with pytest.raises(InputError, match="integers") as info:
        list(smart.read_smart_qrels(rel))
    assert info.value.line == 1
    docs = tmp_path / "X.ALL"
    docs.write_text(".I ²\n.W\ntext\n", encoding="utf-8")
    assert [d.doc_id for d in smart.read_smart_docs(docs)] == ["²"]


def test_unpaired_surrogate_escapes_are_refused(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "bad \\ud800"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="surrogate") as info:
        list(read_beir_corpus(path))
    assert info.value.line == 2


def test_invalid_utf8_in_a_run_file_names_the_line(tmp_path):
    path = tmp_path / "run.trec"
    path.write_bytes(b"q1 Q0 d1 1 2.0 t\nq1 Q0 d\xff 2 1.0 t\n")
    with pytest.raises(InputError, match="UTF-8") as info:
        read_run(path)
    assert info.value.line == 2


# --------------------------------------------------------------------------- the compact id set
def test_duplicates_across_id_blocks_are_found_with_their_lines(tmp_path, monkeypatch):
    """Corpus readers keep ids as hashes in blocks; a repeat of an id from an earlier block is still an
    error naming both lines (small blocks here, so the repeat crosses several)."""
    monkeypatch.setattr(ids_mod.IdSet, "BLOCK", 8)
    path = tmp_path / "collection.tsv"
    path.write_text("".join(f"{i}\ttext {i}\n" for i in range(50)) + "7\tagain\n" + "50\tlast\n")
    with pytest.raises(InputError, match=r"duplicate document id '7' \(first on line 8\)") as info:
        list(read_msmarco_collection(path))
    assert info.value.line == 51


def test_a_hash_collision_is_not_a_duplicate(tmp_path, monkeypatch):
    monkeypatch.setattr(ids_mod.IdSet, "BLOCK", 4)
    ids = ids_mod.IdSet()
    for i in range(20):
        assert ids.add(f"d{i}", i + 1) is None
    clashes = ids.flush()
    assert clashes == [] and len(ids) == 20 and "d3" in ids and "nope" not in ids
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": f"d{i}", "text": "t"}) + "\n" for i in range(10)))
    # a clash reported for an id that is not on an earlier line (a collision) is ignored
    ids_mod.confirm_clashes([("d5", 6)], path, "document", beir.json_id)
    with pytest.raises(InputError, match="duplicate"):
        ids_mod.confirm_clashes([("d2", 9)], path, "document", beir.json_id)
