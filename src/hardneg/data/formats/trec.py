"""TREC topics (tab-separated or classic SGML) and qrels in any common layout.

Qrels layouts: BEIR ``qid<TAB>docid<TAB>score`` (optional header), TREC
``qid 0 docid rel`` and MS MARCO ``qid<TAB>docid``. A non-integer relevance, a
wrong column count and a (query, doc) pair judged twice with different grades
are :class:`~hardneg.errors.InputError` naming ``file:line``; identical
duplicate lines are kept once and counted in :class:`QrelsStats`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hardneg.data.formats.msmarco import read_msmarco_queries
from hardneg.data.formats.sgml import is_trec_sgml, read_trec_doc_topics
from hardneg.data.lines import empty_queries_error, empty_query_error, iter_text_lines
from hardneg.data.records import Qrel, Query
from hardneg.errors import InputError

__all__ = ["TOPIC_FIELDS", "QrelsStats", "parse_topic_field", "read_qrels", "read_trec_topics"]

_QRELS_HEADER_FIRST = {"query-id", "query_id", "queryid", "qid", "query"}
_QRELS_LAYOUTS = {
    2: "MS MARCO 'qid<TAB>docid'",
    3: "BEIR 'query-id<TAB>corpus-id<TAB>score'",
    4: "TREC 'qid 0 docid relevance'",
}

# --------------------------------------------------------------------------- topics

#: any tag inside a topic; fields other than num/title/desc/narr (dom, con, smry …) are skipped
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)>")
#: the labels TREC writes at the start of a field's text
_LABELS = {"num": "number:", "title": "topic:", "desc": "description:", "narr": "narrative:"}
TOPIC_FIELDS = ("title", "desc", "narr")


def parse_topic_field(value: str) -> tuple[str, ...]:
    """``"title"``, ``"desc"``, ``"title+desc"`` … -> the fields whose text makes a TREC topic's query."""
    parts = tuple(p.strip().lower() for p in str(value).split("+"))
    if not parts or any(p not in TOPIC_FIELDS for p in parts) or len(set(parts)) != len(parts):
        raise InputError(
            f"unknown topic field {value!r}",
            hint="use title, desc or title+desc (also narr, joined with '+')",
        )
    return parts


def read_trec_topics(path: str | Path, *, topic_field: str = "title") -> Iterator[Query]:
    """Stream a TREC topics file as :class:`Query`.

    Anserini's DL topic files (``topics.dl19-passage.txt``, ``topics.dl20.txt``)
    are plain ``qid<TAB>text`` and are read like MS MARCO queries. Classic SGML
    topics (``<top> <num> Number: 301 <title> ... <desc> Description: ... </top>``) are read
    too: the query text is the ``topic_field`` (``title``, ``desc`` or ``title+desc``; the labels
    ``Topic:``/``Description:`` dropped) and all-digit numbers lose their zero padding
    (``Number: 051`` -> ``51``, as TREC's qrels write them). Topics written as TREC ``<DOC>``s
    (CACM) are read by :func:`~hardneg.data.formats.sgml.read_trec_doc_topics`. An empty file
    is an error naming it.
    """
    path = Path(path)
    fields = parse_topic_field(topic_field)
    lines = iter_text_lines(path)
    first = next(lines, None)
    if first is None:
        raise empty_queries_error(path)
    head = first[1].lstrip().lower()
    if not head.startswith("<top>"):
        lines.close()
        if is_trec_sgml(head):
            yield from read_trec_doc_topics(path)
        else:
            yield from read_msmarco_queries(path)
        return
    yield from _read_sgml_topics(path, _chain_first(first, lines), fields)


def _chain_first(
    first: tuple[int, str], rest: Iterator[tuple[int, str]]
) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


def _read_sgml_topics(path: Path, lines: Iterable[tuple[int, str]], fields: tuple[str, ...]) -> Iterator[Query]:
    seen: set[str] = set()
    start = 0  # line of the open <top>, 0 when none is open
    field: str | None = None
    parts: dict[str, list[str]] = {}
    for lineno, line in lines:
        pos = 0
        for m in _TAG.finditer(line):
            if field is not None:
                parts.setdefault(field, []).append(line[pos : m.start()])
            elif start == 0 and line[pos : m.start()].strip():
                raise _outside_top(path, lineno)
            closing, tag = m.group(1), m.group(2).lower()
            pos = m.end()
            if tag == "top" and not closing:
                if start:
                    raise _unclosed_top(path, start)
                start, field, parts = lineno, None, {}
            elif tag == "top":
                if not start:
                    raise InputError(
                        "</top> without a matching <top>",
                        path=path,
                        line=lineno,
                        hint="every topic must be enclosed in <top> ... </top>",
                    )
                yield _sgml_query(path, start, parts, seen, fields)
                start, field, parts = 0, None, {}
            elif not start:
                raise _outside_top(path, lineno)
            else:
                field = None if closing else tag
        if field is not None:
            parts.setdefault(field, []).append(line[pos:])
        elif start == 0 and line[pos:].strip():
            raise _outside_top(path, lineno)
    if start:
        raise _unclosed_top(path, start)
    if not seen:
        raise empty_queries_error(path)


def _outside_top(path: Path, lineno: int) -> InputError:
    return InputError(
        "text outside a <top> ... </top> topic",
        path=path,
        line=lineno,
        hint="every topic must be enclosed in <top> ... </top>",
    )


def _unclosed_top(path: Path, lineno: int) -> InputError:
    return InputError(
        "<top> is never closed",
        path=path,
        line=lineno,
        hint="add the missing </top>",
    )


def _field_text(parts: dict[str, list[str]], name: str) -> str:
    text = " ".join(" ".join(parts.get(name, [])).split())
    label = _LABELS[name]
    if text.lower().startswith(label):
        text = text[len(label) :].strip()
    return text


def _sgml_query(
    path: Path, lineno: int, parts: dict[str, list[str]], seen: set[str], fields: tuple[str, ...]
) -> Query:
    num = _field_text(parts, "num")
    if num.isascii() and num.isdigit():
        num = str(int(num))
    if not num:
        raise InputError(
            "topic has no <num>", path=path, line=lineno, hint="give every <top> a <num> Number: N"
        )
    if len(num.split()) > 1:
        raise InputError(
            f"topic number {num!r} has spaces", path=path, line=lineno, hint="write <num> Number: N"
        )
    if num in seen:
        raise InputError(
            f"duplicate query id {num!r}",
            path=path,
            line=lineno,
            hint="topic numbers must be unique",
        )
    text = " ".join(t for name in fields if (t := _field_text(parts, name)))
    if not text:
        if fields == ("title",):
            raise empty_query_error(path, lineno, num)
        raise InputError(
            f"topic {num!r} has no text in <{'>/<'.join(fields)}>",
            path=path,
            line=lineno,
            hint="fill in the field or choose another --topic-field (title, desc, title+desc)",
        )
    seen.add(num)
    return Query(num, text)


# --------------------------------------------------------------------------- qrels


@dataclass
class QrelsStats:
    """What :func:`read_qrels` saw besides the records it yielded."""

    layout: str = ""
    lines: int = 0
    duplicates: int = 0  # identical repeated (qid, docid, grade) lines, skipped
    zero_scores: int = 0  # BEIR (3-column) lines with score 0, kept as grade 0


def _is_header(fields: list[str]) -> bool:
    if len(fields) < 2 or fields[0].lower() not in _QRELS_HEADER_FIRST:
        return False
    try:
        int(fields[-1])
    except ValueError:
        return True
    return False


def read_qrels(path: str | Path, *, stats: QrelsStats | None = None) -> Iterator[Qrel]:
    """Stream relevance judgements from any common qrels layout as :class:`Qrel`.

    The layout is detected from the first data line and must then hold for the
    whole file: BEIR ``qid<TAB>docid<TAB>score`` (an optional header line
    ``query-id<TAB>corpus-id<TAB>score``), TREC ``qid 0 docid rel`` (space or
    tab separated; the second column is ignored) and MS MARCO ``qid<TAB>docid``
    (relevance 1). Grades must be integers (negative grades are kept). A
    (qid, docid) pair judged twice with different grades is an error; an
    identical repeat is skipped and counted in ``stats.duplicates``.
    """
    path = Path(path)
    st = stats if stats is not None else QrelsStats()
    ncols = 0
    layout_line = 0
    first = True
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    for lineno, line in iter_text_lines(path):
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        if first:
            first = False
            if _is_header(fields):
                continue
        if not ncols:
            ncols, layout_line = _qrels_layout(fields, path, lineno), lineno
            st.layout = ("msmarco", "beir", "trec")[ncols - 2]
        elif len(fields) != ncols:
            raise InputError(
                f"expected {ncols} columns ({_QRELS_LAYOUTS[ncols]}, as on line {layout_line}),"
                f" found {len(fields)}",
                path=path,
                line=lineno,
                hint="fix or remove the line; one file must use one layout",
            )
        qid, doc_id, grade = _qrels_judgement(fields, path, lineno)
        st.lines += 1
        key = (qid, doc_id)
        prev = seen.get(key)
        if prev is not None:
            if prev[0] != grade:
                raise InputError(
                    f"query {qid!r} / document {doc_id!r} judged {grade} here but {prev[0]}"
                    f" on line {prev[1]}",
                    path=path,
                    line=lineno,
                    hint="keep one judgement per (query, document) pair",
                )
            st.duplicates += 1
            continue
        seen[key] = (grade, lineno)
        if ncols == 3 and grade == 0:
            st.zero_scores += 1
        yield Qrel(qid, doc_id, grade)


def _qrels_layout(fields: list[str], path: Path, lineno: int) -> int:
    """The number of columns of the file's layout, from its first data line."""
    if len(fields) not in _QRELS_LAYOUTS:
        raise InputError(
            f"unrecognised qrels layout: {len(fields)} columns",
            path=path,
            line=lineno,
            hint="expected " + ", ".join(_QRELS_LAYOUTS[n] for n in sorted(_QRELS_LAYOUTS)),
        )
    return len(fields)


def _qrels_judgement(fields: list[str], path: Path, lineno: int) -> tuple[str, str, int]:
    """``(query id, document id, grade)`` of one qrels line of 2, 3 or 4 columns."""
    ncols = len(fields)
    if ncols == 2:
        qid, doc_id, grade_s = fields[0], fields[1], "1"
    elif ncols == 3:
        qid, doc_id, grade_s = fields
    else:
        qid, _, doc_id, grade_s = fields
    if not qid or not doc_id:
        raise InputError(
            "empty query id or document id",
            path=path,
            line=lineno,
            hint=f"lines must follow the {_QRELS_LAYOUTS[ncols]} layout",
        )
    try:
        return qid, doc_id, int(grade_s)
    except ValueError:
        raise InputError(
            f"relevance {grade_s!r} is not an integer",
            path=path,
            line=lineno,
            hint="qrels grades must be integers such as 0, 1, 2; use 1 for plain 'relevant'",
        ) from None
