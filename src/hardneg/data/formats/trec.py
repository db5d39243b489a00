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
from hardneg.data.lines import empty_query_error, iter_text_lines
from hardneg.data.records import Qrel, Query
from hardneg.errors import InputError

__all__ = ["QrelsStats", "read_qrels", "read_trec_topics"]

_QRELS_HEADER_FIRST = {"query-id", "query_id", "queryid", "qid", "query"}
_QRELS_LAYOUTS = {
    2: "MS MARCO 'qid<TAB>docid'",
    3: "BEIR 'query-id<TAB>corpus-id<TAB>score'",
    4: "TREC 'qid 0 docid relevance'",
}

# --------------------------------------------------------------------------- topics

_TAG = re.compile(r"<(/?)(top|num|title|desc|narr)>", re.IGNORECASE)


def read_trec_topics(path: str | Path) -> Iterator[Query]:
    """Stream a TREC topics file as :class:`Query`.

    Anserini's DL topic files (``topics.dl19-passage.txt``, ``topics.dl20.txt``)
    are plain ``qid<TAB>text`` and are read like MS MARCO queries. Classic SGML
    topics (``<top> <num> Number: 301 <title> ... </top>``) are read too; the
    query text is the ``<title>``.
    """
    path = Path(path)
    lines = iter_text_lines(path)
    first = next(lines, None)
    if first is None:
        return
    if not first[1].lstrip().lower().startswith("<top>"):
        lines.close()
        yield from read_msmarco_queries(path)
        return
    yield from _read_sgml_topics(path, _chain_first(first, lines))


def _chain_first(
    first: tuple[int, str], rest: Iterator[tuple[int, str]]
) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


def _read_sgml_topics(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[Query]:
    seen: set[str] = set()
    start = 0  # line of the open <top>, 0 when none is open
    field: str | None = None
    parts: dict[str, list[str]] = {}
    for lineno, line in lines:
        pos = 0
        for m in _TAG.finditer(line):
            if field is not None:
                parts.setdefault(field, []).append(line[pos : m.start()])
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
                yield _sgml_query(path, start, parts, seen)
                start, field, parts = 0, None, {}
            else:
                field = None if closing else tag
        if field is not None:
            parts.setdefault(field, []).append(line[pos:])
    if start:
        raise _unclosed_top(path, start)


def _unclosed_top(path: Path, lineno: int) -> InputError:
    return InputError(
        "<top> is never closed",
        path=path,
        line=lineno,
        hint="add the missing </top>",
    )


def _sgml_query(path: Path, lineno: int, parts: dict[str, list[str]], seen: set[str]) -> Query:
    num = " ".join(" ".join(parts.get("num", [])).split())
    if num.lower().startswith("number:"):
        num = num[len("number:") :].strip()
    title = " ".join(" ".join(parts.get("title", [])).split())
    if title.lower().startswith("topic:"):
        title = title[len("topic:") :].strip()
    if not num:
        raise InputError(
            "topic has no <num>", path=path, line=lineno, hint="give every <top> a <num> Number: N"
        )
    if num in seen:
        raise InputError(
            f"duplicate query id {num!r}",
            path=path,
            line=lineno,
            hint="topic numbers must be unique",
        )
    if not title:
        raise empty_query_error(path, lineno, num)
    seen.add(num)
    return Query(num, title)


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
        if "\t" in line:
            fields = [f.strip() for f in line.split("\t")]
        else:
            fields = line.split()
        if first:
            first = False
            if _is_header(fields):
                continue
        if not ncols:
            ncols, layout_line = len(fields), lineno
            if ncols not in _QRELS_LAYOUTS:
                raise InputError(
                    f"unrecognised qrels layout: {ncols} columns",
                    path=path,
                    line=lineno,
                    hint="expected " + ", ".join(_QRELS_LAYOUTS[n] for n in sorted(_QRELS_LAYOUTS)),
                )
            st.layout = ("msmarco", "beir", "trec")[ncols - 2]
        elif len(fields) != ncols:
            raise InputError(
                f"expected {ncols} columns ({_QRELS_LAYOUTS[ncols]}, as on line {layout_line}),"
                f" found {len(fields)}",
                path=path,
                line=lineno,
                hint="fix or remove the line; one file must use one layout",
            )
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
            grade = int(grade_s)
        except ValueError:
            raise InputError(
                f"relevance {grade_s!r} is not an integer",
                path=path,
                line=lineno,
                hint="qrels grades must be integers such as 0, 1, 2; use 1 for plain 'relevant'",
            ) from None
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
