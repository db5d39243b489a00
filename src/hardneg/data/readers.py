"""Readers for retrieval collections: BEIR folders, MS MARCO files, TREC qrels/topics, ir_datasets.

Everything streams line by line (MS MARCO has 8.8M passages): files are opened
in binary and every line is decoded as strict UTF-8 on its own, so a bad byte
is reported with its line number. Ids are kept exactly as written (strings).

Which datasets a spec names (:func:`load_dataset`, :func:`parse_spec`)::

    path/to/beir-folder[:split]      corpus.jsonl, queries.jsonl, qrels/<split>.tsv
    path/to/msmarco-folder[:split]   collection.tsv, queries.<split>.tsv, qrels.<split>.tsv
    irds:<ir_datasets id>            e.g. irds:beir/scifact/test (pip install 'hardneg[irds]')

Errors versus warnings
----------------------
Anything that makes a file's meaning uncertain is an ERROR: an
:class:`~hardneg.errors.InputError` naming ``file:line``, what is wrong and
how to fix it. That covers malformed JSON, a JSON line that is not an object
or lacks ``_id``/``text``, a wrong TSV column count, a non-integer relevance,
duplicate document or query ids, qrels lines judging the same (query, doc)
twice with different grades, bytes that are not UTF-8, an empty document
(title and text both blank), an empty query, a missing file and an empty corpus.
Things that are legitimate in published data but change what gets evaluated
are WARNINGS: counted, kept in ``Dataset.warnings`` and logged once per kind
on the ``hardneg`` logger. Qrels naming a document absent from the corpus or
a query absent from the queries file are dropped (TREC DL's graded qrels judge
passages outside any subset corpus); BEIR qrels lines with score 0 are kept
as grade 0 (judged non-relevant); identical duplicate qrels lines are kept
once. Blank lines are skipped silently and a UTF-8 BOM at the start of a file
is tolerated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.data.records import Doc, Qrel, Qrels, Query
from hardneg.errors import HardnegError, InputError
from hardneg.io import file_sha256

__all__ = [
    "Dataset",
    "QrelsStats",
    "load_dataset",
    "parse_spec",
    "read_beir_corpus",
    "read_beir_queries",
    "read_corpus",
    "read_msmarco_collection",
    "read_msmarco_queries",
    "read_qrels",
    "read_queries",
    "read_trec_topics",
]

logger = logging.getLogger("hardneg")

_BOM = b"\xef\xbb\xbf"
#: the longest line read, in bytes: a longer one (a binary file, a file without newlines) is an
#: error instead of an unbounded allocation; the longest MS MARCO document is a few MB
MAX_LINE_BYTES = 64 << 20
_QRELS_HEADER_FIRST = {"query-id", "query_id", "queryid", "qid", "query"}
_QRELS_LAYOUTS = {
    2: "MS MARCO 'qid<TAB>docid'",
    3: "BEIR 'query-id<TAB>corpus-id<TAB>score'",
    4: "TREC 'qid 0 docid relevance'",
}


# --------------------------------------------------------------------------- lines


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every non-blank line of a UTF-8 text file (public helper).

    A missing file, bytes that are not UTF-8 and a line longer than
    :data:`MAX_LINE_BYTES` raise :class:`~hardneg.errors.InputError` naming ``file:line``.
    """
    return _iter_lines(path)


def _iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every non-blank line, without its line ending.

    Lines are split on ``\\n`` only (so U+2028 inside JSON strings is harmless),
    ``\\r\\n`` endings are accepted, a BOM before the first line is dropped.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise InputError(
            "file not found", path=path, hint="check the path or the dataset folder layout"
        ) from None
    except IsADirectoryError:
        raise InputError("expected a file but found a directory", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}", path=path) from None
    limit = MAX_LINE_BYTES
    with fh:
        lineno = 0
        while True:
            try:
                raw = fh.readline(limit + 1)
            except OSError as exc:
                raise InputError(f"cannot read file: {exc.strerror}", path=path, line=lineno + 1) from None
            if not raw:
                break
            lineno += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise InputError(
                    f"line is longer than {limit} bytes",
                    path=path,
                    line=lineno,
                    hint="is this a text file with one record per line? (a binary or compressed"
                    " file, or one without line breaks, reads as one enormous line)",
                )
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.start + 1].hex()
                raise InputError(
                    f"line is not valid UTF-8 (byte 0x{bad} at byte offset {exc.start})",
                    path=path,
                    line=lineno,
                    hint="re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8",
                ) from None
            line = line.rstrip("\r\n")
            if not line or line.isspace():
                continue
            yield lineno, line


def _first_line_of(path: Path, key_of_line: Callable[[str], str | None], key: str) -> int | None:
    """Re-scan ``path`` for the first line whose key is ``key`` (only used on error paths)."""
    try:
        for lineno, line in _iter_lines(path):
            try:
                if key_of_line(line) == key:
                    return lineno
            except Exception:
                continue
    except InputError:
        return None
    return None


def _json_id(line: str) -> str | None:
    value = json.loads(line).get("_id")
    return str(value) if value is not None else None


def _tsv_id(line: str) -> str | None:
    return line.split("\t", 1)[0].strip()


# --------------------------------------------------------------------------- JSONL


def _load_json_object(line: str, path: Path, lineno: int, example: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, json.JSONDecodeError):
            reason = f"{exc.msg} at column {exc.colno}"
        else:
            reason = type(exc).__name__
        raise InputError(
            f"line is not valid JSON ({reason})",
            path=path,
            line=lineno,
            hint=f"every line must be one JSON object like {example}; fix or remove the line",
        ) from None
    if not isinstance(obj, dict):
        raise InputError(
            f"line is a JSON {type(obj).__name__}, not an object",
            path=path,
            line=lineno,
            hint=f"every line must be one JSON object like {example}",
        )
    return obj


def _no_surrogates(value: str, field: str, path: Path, lineno: int) -> str:
    """JSON may escape lone UTF-16 surrogates (``"\\ud800"``): text no UTF-8 file can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"field '{field}' holds an unpaired surrogate escape (\\u{ord(value[exc.start]):04x})",
            path=path,
            line=lineno,
            hint="the text is not valid Unicode; fix the escape or remove the line",
        ) from None
    return value


def _get_id(obj: dict[str, Any], path: Path, lineno: int, what: str) -> str:
    value = obj.get("_id")
    if isinstance(value, str):
        if value.strip():
            return _no_surrogates(value, "_id", path, lineno)
    elif isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        reason = "has no '_id' field" if "_id" not in obj else "has '_id': null"
    else:
        reason = f"has an invalid '_id' ({value!r})"
    raise InputError(
        f"{what} object {reason}",
        path=path,
        line=lineno,
        hint="give every line a non-empty string '_id'",
    )


def _get_str(obj: dict[str, Any], field: str, path: Path, lineno: int, *, required: bool) -> str:
    value = obj.get(field)
    if isinstance(value, str):
        return _no_surrogates(value, field, path, lineno)
    if value is None and not required:
        return ""
    if field not in obj:
        raise InputError(
            f"JSON object has no '{field}' field",
            path=path,
            line=lineno,
            hint=f"add a string '{field}' field to the line",
        )
    raise InputError(
        f"field '{field}' must be a string, found {type(value).__name__}",
        path=path,
        line=lineno,
        hint=f"make '{field}' a JSON string",
    )


class IdSet:
    """A set of string ids that costs ~8 bytes an id (MS MARCO's 8.8M passage ids: ~70 MB, not ~700 MB).

    Ids are kept as 64-bit hashes: the current block exactly (a dict, bounded by :attr:`BLOCK`), older
    blocks as sorted numpy runs merged as they grow. :meth:`add` reports a repeat within the block at
    once; repeats of older blocks come out of :meth:`flush`, vectorised, as ``(id, line)`` candidates
    the caller confirms (two different ids may share a hash). ``in`` may, with probability about
    ``len / 2**64``, say yes for an id never added.
    """

    BLOCK = 1 << 16

    def __init__(self) -> None:
        self._block: dict[int, tuple[str, int]] = {}
        self._runs: list[np.ndarray] = []
        self._n = 0

    def __len__(self) -> int:
        return self._n + len(self._block)

    def __contains__(self, key: object) -> bool:
        h = hash(key)
        if h in self._block:
            return True
        for run in self._runs:
            i = int(np.searchsorted(run, h))
            if i < len(run) and run[i] == h:
                return True
        return False

    def __iter__(self):
        raise TypeError("an IdSet keeps hashes only; it cannot list its ids")

    @property
    def block_full(self) -> bool:
        return len(self._block) >= self.BLOCK

    def add(self, key: str, line: int = 0) -> int | None:
        """Add ``key`` (read on ``line``); the line of an equal key earlier in this block, else ``None``."""
        h = hash(key)
        prev = self._block.get(h)
        if prev is not None and prev[0] == key:
            return prev[1]
        self._block[h] = (key, line)
        if len(self._block) >= 4 * self.BLOCK:  # a caller that does not check repeats never flushes
            self.flush()
        return None

    def flush(self) -> list[tuple[str, int]]:
        """Move the block into the sorted runs; ``(id, line)`` of its ids whose hash an older block has."""
        if not self._block:
            return []
        hashes = np.fromiter(self._block.keys(), dtype=np.int64, count=len(self._block))
        hit = np.zeros(len(hashes), dtype=bool)
        for run in self._runs:
            pos = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            hit |= run[pos] == hashes
        items = list(self._block.values())
        clashes = [items[i] for i in np.flatnonzero(hit)]
        self._runs.append(np.sort(hashes))
        self._n += len(hashes)
        self._block = {}
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            last = self._runs.pop()
            self._runs[-1] = np.sort(np.concatenate([self._runs[-1], last]), kind="stable")
        return clashes


def _seen(ids: set[str] | IdSet | None, path: Path, lineno: int, key: str, what: str,
          key_of_line: Callable) -> None:
    """Record ``key`` in ``ids`` (a set or an :class:`IdSet`); a repeated id is an error."""
    if isinstance(ids, IdSet):
        if ids.add(key, lineno) is not None:
            raise _duplicate(path, lineno, key, what, key_of_line)
        if ids.block_full:
            _confirm_clashes(ids.flush(), path, what, key_of_line)
        return
    if key in ids:
        raise _duplicate(path, lineno, key, what, key_of_line)
    ids.add(key)


def _confirm_clashes(clashes: list[tuple[str, int]], path: Path, what: str, key_of_line: Callable) -> None:
    """A repeated hash is a duplicate when the id itself is on an earlier line (else two ids collided)."""
    for key, lineno in sorted(clashes, key=lambda c: c[1]):
        first = _first_line_of(path, key_of_line, key)
        if first is not None and first < lineno:
            raise _duplicate(path, lineno, key, what, key_of_line)


def _duplicate(path: Path, lineno: int, key: str, what: str, key_of_line: Callable) -> InputError:
    first = _first_line_of(path, key_of_line, key)
    seen = f" (first on line {first})" if first is not None and first != lineno else ""
    return InputError(
        f"duplicate {what} id {key!r}{seen}",
        path=path,
        line=lineno,
        hint=f"{what} ids must be unique; remove or rename one of the lines",
    )


def read_beir_corpus(path: str | Path, *, ids: set[str] | None = None) -> Iterator[Doc]:
    """Stream a BEIR ``corpus.jsonl`` (``{"_id", "title", "text"}`` per line) as :class:`Doc`.

    ``title`` is optional (missing/null reads as ``""``); a document whose title
    and text are both blank, a duplicate ``_id`` and an empty file are errors.
    ``ids``, if given, is filled with the document ids (callers reuse the set).
    """
    path = Path(path)
    seen: set[str] | IdSet = ids if ids is not None else IdSet()
    example = '{"_id": "d1", "title": "...", "text": "..."}'
    count = 0
    for lineno, line in _iter_lines(path):
        obj = _load_json_object(line, path, lineno, example)
        doc_id = _get_id(obj, path, lineno, "document")
        text = _get_str(obj, "text", path, lineno, required=True)
        title = _get_str(obj, "title", path, lineno, required=False)
        _seen(seen, path, lineno, doc_id, "document", _json_id)
        if not text.strip() and not title.strip():
            raise _empty_doc(path, lineno, doc_id)
        count += 1
        yield Doc(doc_id, text, title)
    if isinstance(seen, IdSet):
        _confirm_clashes(seen.flush(), path, "document", _json_id)
    if count == 0:
        raise _empty_corpus(path)


def _empty_doc(path: Path, lineno: int, doc_id: str) -> InputError:
    return InputError(
        f"document {doc_id!r} is empty (no title and no text)",
        path=path,
        line=lineno,
        hint="remove the line or fill in the document's text",
    )


def _empty_corpus(path: Path) -> InputError:
    return InputError(
        "corpus contains no documents",
        path=path,
        hint="the file is empty or only has blank lines; point at the right corpus file",
    )


def read_beir_queries(path: str | Path) -> Iterator[Query]:
    """Stream a BEIR ``queries.jsonl`` (``{"_id", "text"}`` per line) as :class:`Query`."""
    path = Path(path)
    seen: set[str] = set()
    example = '{"_id": "q1", "text": "..."}'
    for lineno, line in _iter_lines(path):
        obj = _load_json_object(line, path, lineno, example)
        qid = _get_id(obj, path, lineno, "query")
        text = _get_str(obj, "text", path, lineno, required=True)
        if qid in seen:
            raise _duplicate(path, lineno, qid, "query", _json_id)
        if not text.strip():
            raise _empty_query(path, lineno, qid)
        seen.add(qid)
        yield Query(qid, text)


def _empty_query(path: Path, lineno: int, qid: str) -> InputError:
    return InputError(
        f"query {qid!r} has empty text",
        path=path,
        line=lineno,
        hint="remove the line or give the query its text",
    )


# --------------------------------------------------------------------------- TSV


def _two_columns(line: str, path: Path, lineno: int, layout: str) -> tuple[str, str]:
    parts = line.split("\t")
    if len(parts) != 2:
        raise InputError(
            f"expected 2 tab-separated columns ({layout}), found {len(parts)}",
            path=path,
            line=lineno,
            hint="the text must not contain tabs; fix or remove the line",
        )
    key = parts[0].strip()
    if not key:
        raise InputError(
            f"empty id in the first column ({layout})",
            path=path,
            line=lineno,
            hint="give the line its id",
        )
    return key, parts[1]


def read_msmarco_collection(path: str | Path, *, ids: set[str] | None = None) -> Iterator[Doc]:
    """Stream an MS MARCO ``collection.tsv`` (``pid<TAB>text``) as :class:`Doc` (no title)."""
    path = Path(path)
    seen: set[str] | IdSet = ids if ids is not None else IdSet()
    count = 0
    for lineno, line in _iter_lines(path):
        pid, text = _two_columns(line, path, lineno, "pid<TAB>text")
        _seen(seen, path, lineno, pid, "document", _tsv_id)
        if not text.strip():
            raise _empty_doc(path, lineno, pid)
        count += 1
        yield Doc(pid, text)
    if isinstance(seen, IdSet):
        _confirm_clashes(seen.flush(), path, "document", _tsv_id)
    if count == 0:
        raise _empty_corpus(path)


def read_msmarco_queries(path: str | Path) -> Iterator[Query]:
    """Stream an MS MARCO / TREC DL queries file (``qid<TAB>text``) as :class:`Query`."""
    path = Path(path)
    seen: set[str] = set()
    for lineno, line in _iter_lines(path):
        qid, text = _two_columns(line, path, lineno, "qid<TAB>text")
        if qid in seen:
            raise _duplicate(path, lineno, qid, "query", _tsv_id)
        if not text.strip():
            raise _empty_query(path, lineno, qid)
        seen.add(qid)
        yield Query(qid, text)


_TAG = re.compile(r"<(/?)(top|num|title|desc|narr)>", re.IGNORECASE)


def read_trec_topics(path: str | Path) -> Iterator[Query]:
    """Stream a TREC topics file as :class:`Query`.

    Anserini's DL topic files (``topics.dl19-passage.txt``, ``topics.dl20.txt``)
    are plain ``qid<TAB>text`` and are read like MS MARCO queries. Classic SGML
    topics (``<top> <num> Number: 301 <title> ... </top>``) are read too; the
    query text is the ``<title>``.
    """
    path = Path(path)
    lines = _iter_lines(path)
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
        raise _empty_query(path, lineno, num)
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
    for lineno, line in _iter_lines(path):
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


# --------------------------------------------------------------------------- dispatch


def read_corpus(path: str | Path, *, ids: set[str] | None = None) -> Iterator[Doc]:
    """Stream a corpus by file type: ``*.jsonl`` is BEIR, anything else MS MARCO TSV."""
    path = Path(path)
    if path.suffix.lower() in {".jsonl", ".json"}:
        return read_beir_corpus(path, ids=ids)
    return read_msmarco_collection(path, ids=ids)


def read_queries(path: str | Path) -> Iterator[Query]:
    """Stream queries by file type: ``*.jsonl`` is BEIR, else ``qid<TAB>text``/TREC topics."""
    path = Path(path)
    if path.suffix.lower() in {".jsonl", ".json"}:
        return read_beir_queries(path)
    return read_trec_topics(path)


# --------------------------------------------------------------------------- spec


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"path[:split]"`` into ``(path, split)``; ``"irds:<id>"`` -> ``("irds:<id>", None)``.

    The colon is a split separator only when the part after it has no ``/``
    and the whole string is not an existing path.
    """
    spec = spec.strip()
    if spec.startswith("irds:"):
        return spec, None
    if ":" not in spec or Path(spec).exists():
        return spec, None
    path, split = spec.rsplit(":", 1)
    if "/" in split or "\\" in split or not path:
        return spec, None
    if not split:
        raise InputError(
            f"dataset spec {spec!r} ends with ':' but names no split",
            hint="write path:split (e.g. scifact:test) or just the path",
        )
    return path, split


# --------------------------------------------------------------------------- Dataset


class Dataset:
    """A corpus with its queries and qrels, read lazily from files.

    Attributes: ``name``, ``split``, ``corpus_path`` (``None`` when the folder
    has no corpus), ``queries_path``, ``qrels_path``, ``root`` and
    ``warnings`` (human-readable counted warnings, filled as parts are loaded:
    qrels warnings appear once :meth:`qrels` or :meth:`queries` has run).
    """

    def __init__(
        self,
        name: str,
        split: str | None = None,
        *,
        corpus_path: str | Path | None = None,
        queries_path: str | Path | None = None,
        qrels_path: str | Path | None = None,
        root: str | Path | None = None,
    ) -> None:
        self.name = name
        self.split = split
        self.corpus_path = Path(corpus_path) if corpus_path is not None else None
        self.queries_path = Path(queries_path) if queries_path is not None else None
        self.qrels_path = Path(qrels_path) if qrels_path is not None else None
        self.root = Path(root) if root is not None else None
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self._docs: list[Doc] | None = None
        self._doc_ids: IdSet | None = None
        self._doc_count: int | None = None
        self._all_queries: dict[str, Query] | None = None
        self._qrels: Qrels | None = None
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        split = f":{self.split}" if self.split else ""
        return f"Dataset({self.name}{split}, corpus={self.corpus_path})"

    # -- sources (overridden for ir_datasets)

    @property
    def has_corpus(self) -> bool:
        return self.corpus_path is not None

    @property
    def has_queries(self) -> bool:
        return self.queries_path is not None

    @property
    def has_qrels(self) -> bool:
        return self.qrels_path is not None

    def _doc_source(self, ids: set[str]) -> Iterator[Doc]:
        assert self.corpus_path is not None
        return read_corpus(self.corpus_path, ids=ids)

    def _query_source(self) -> Iterator[Query]:
        assert self.queries_path is not None
        return read_queries(self.queries_path)

    def _qrels_source(self, stats: QrelsStats) -> Iterator[Qrel]:
        assert self.qrels_path is not None
        return read_qrels(self.qrels_path, stats=stats)

    def _describe(self, part: str) -> str:
        path = {"corpus": self.corpus_path, "queries": self.queries_path, "qrels": self.qrels_path}
        return str(path[part])

    def _warn(self, kind: str, message: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        self.warnings.append(message)
        logger.warning("%s", message)

    # -- corpus

    def _no_corpus(self) -> InputError:
        where = self.root if self.root is not None else self.name
        return InputError(
            "dataset has no corpus (no corpus.jsonl or collection.tsv)",
            path=where,
            hint="point at a folder with a corpus; this one only has queries/qrels",
        )

    def iter_docs(self) -> Iterator[Doc]:
        """Stream the corpus, validating every line (raises :class:`InputError`)."""
        if not self.has_corpus:
            raise self._no_corpus()
        return self._iter_docs()

    def _iter_docs(self) -> Iterator[Doc]:
        ids = IdSet()  # ~8 bytes an id: a huge corpus's ids are never all held as strings
        n = 0
        for doc in self._doc_source(ids):
            n += 1
            yield doc
        self._doc_ids, self._doc_count = ids, n

    def docs(self) -> list[Doc]:
        """All documents (cached); ``[]`` when the dataset has no corpus."""
        if self._docs is None:
            self._docs = list(self.iter_docs()) if self.has_corpus else []
        return self._docs

    def doc_count(self) -> int:
        if not self.has_corpus:
            return 0
        if self._doc_count is None:
            if self._docs is not None:
                return len(self._docs)
            for _ in self.iter_docs():
                pass
        assert self._doc_count is not None
        return self._doc_count

    def doc_ids(self) -> IdSet | set[str]:
        """The corpus ids, for ``in`` and ``len`` (cached; reads the corpus once if needed)."""
        if not self.has_corpus:
            return set()
        if self._doc_ids is None:
            for _ in self.iter_docs():
                pass
        assert self._doc_ids is not None
        return self._doc_ids

    def fingerprint(self) -> str:
        """sha256 over the corpus file's size and content hash (mtime plays no part)."""
        if self._fingerprint is None:
            if self.corpus_path is None:
                raise self._no_corpus()
            try:
                size = self.corpus_path.stat().st_size
            except FileNotFoundError:
                raise InputError("file not found", path=self.corpus_path) from None
            digest = file_sha256(self.corpus_path)
            self._fingerprint = hashlib.sha256(f"{size}:{digest}".encode()).hexdigest()
        return self._fingerprint

    # -- queries

    def all_queries(self) -> dict[str, Query]:
        """Every query of the queries file, in file order (``{}`` if there is none)."""
        if self._all_queries is None:
            if not self.has_queries:
                self._all_queries = {}
            else:
                self._all_queries = {q.query_id: q for q in self._query_source()}
        return self._all_queries

    def queries(self) -> dict[str, Query]:
        """The split's queries: with qrels, only queries that have (kept) qrels, in file order."""
        everything = self.all_queries()
        if not self.has_qrels:
            return everything
        judged = self.qrels()
        return {qid: q for qid, q in everything.items() if qid in judged}

    # -- qrels

    def qrels(self) -> Qrels:
        """``qid -> {docid: grade}`` of the split (``{}`` if none); see the module docstring."""
        if self._qrels is not None:
            return self._qrels
        if not self.has_qrels:
            self._qrels = {}
            return self._qrels
        stats = QrelsStats()
        records = list(self._qrels_source(stats))
        src = self._describe("qrels")
        if stats.duplicates:
            self._warn(
                "qrels-duplicate",
                f"{stats.duplicates} identical duplicate qrels lines in {src}; kept one of each",
            )
        if stats.zero_scores:
            self._warn(
                "qrels-zero-score",
                f"{stats.zero_scores} qrels lines in {src} have score 0; read as grade 0"
                " (judged non-relevant)",
            )
        if self.has_queries:
            known_q = self.all_queries()
            missing = [r for r in records if r.query_id not in known_q]
            if missing:
                qids = {r.query_id for r in missing}
                self._warn(
                    "qrels-absent-query",
                    f"{len(missing)} qrels lines ({len(qids)} queries) in {src} name query ids"
                    f" absent from {self._describe('queries')}; dropped them"
                    f" (e.g. query {missing[0].query_id!r})",
                )
                records = [r for r in records if r.query_id in known_q]
        if self.has_corpus:
            known_d = self.doc_ids()
            missing = [r for r in records if r.doc_id not in known_d]
            if missing:
                qids = {r.query_id for r in missing}
                grades = sorted({r.relevance for r in missing})
                self._warn(
                    "qrels-absent-doc",
                    f"{len(missing)} qrels lines ({len(qids)} queries, grades"
                    f" {', '.join(map(str, grades))}) in {src} name documents absent from the"
                    f" corpus {self._describe('corpus')}; dropped them"
                    f" (e.g. doc {missing[0].doc_id!r})",
                )
                records = [r for r in records if r.doc_id in known_d]
        qrels: Qrels = {}
        for r in records:
            qrels.setdefault(r.query_id, {})[r.doc_id] = r.relevance
        self._qrels = qrels
        return qrels


class _IrdsDataset(Dataset):
    """A :class:`Dataset` backed by ``ir_datasets`` (local override files still win)."""

    def __init__(
        self,
        irds_id: str,
        handle: Any,
        *,
        queries_path: Path | None = None,
        qrels_path: Path | None = None,
    ) -> None:
        super().__init__(
            irds_id, None, corpus_path=None, queries_path=queries_path, qrels_path=qrels_path
        )
        self.irds_id = irds_id
        self._handle = handle

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except HardnegError:
            raise
        except Exception as exc:
            raise _irds_failure(self.irds_id, f"reading its {what} failed: {exc}") from exc

    def _has(self, attr: str) -> bool:
        fn = getattr(self._handle, attr, None)
        return bool(fn()) if callable(fn) else False

    @property
    def has_corpus(self) -> bool:
        return self._has("has_docs")

    @property
    def has_queries(self) -> bool:
        return self.queries_path is not None or self._has("has_queries")

    @property
    def has_qrels(self) -> bool:
        return self.qrels_path is not None or self._has("has_qrels")

    def _describe(self, part: str) -> str:
        path = {"corpus": None, "queries": self.queries_path, "qrels": self.qrels_path}[part]
        return str(path) if path is not None else f"irds:{self.irds_id} {part}"

    def _wrap(self, what: str, it_fn: Callable[[], Iterable[Any]]) -> Iterator[Any]:
        it = iter(self._call(what, it_fn))
        while True:
            item = self._call(what, lambda: next(it, _END))
            if item is _END:
                return
            yield item

    def _doc_source(self, ids: set[str]) -> Iterator[Doc]:
        n = 0
        for d in self._wrap("documents", self._handle.docs_iter):
            doc_id = str(d.doc_id)
            text = getattr(d, "text", None)
            if text is None:
                text = getattr(d, "body", "") or ""
            title = getattr(d, "title", "") or ""
            ids.add(doc_id)
            n += 1
            yield Doc(doc_id, str(text), str(title))
        if n == 0:
            raise InputError(f"irds:{self.irds_id} has no documents", hint="choose another id")

    def _query_source(self) -> Iterator[Query]:
        if self.queries_path is not None:
            yield from read_queries(self.queries_path)
            return
        for q in self._wrap("queries", self._handle.queries_iter):
            text = getattr(q, "text", None)
            if text is None:
                text = getattr(q, "title", "") or ""
            yield Query(str(q.query_id), str(text))

    def _qrels_source(self, stats: QrelsStats) -> Iterator[Qrel]:
        if self.qrels_path is not None:
            yield from read_qrels(self.qrels_path, stats=stats)
            return
        stats.layout = "irds"
        for r in self._wrap("qrels", self._handle.qrels_iter):
            stats.lines += 1
            yield Qrel(str(r.query_id), str(r.doc_id), int(r.relevance))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            path = None
            docs_path = getattr(self._handle, "docs_path", None)
            if callable(docs_path):
                try:
                    path = Path(docs_path())
                except Exception:
                    path = None
            if path is not None and path.is_file():
                payload = f"{path.stat().st_size}:{file_sha256(path)}"
            else:
                payload = f"irds:{self.irds_id}:{self.doc_count()}"
            self._fingerprint = hashlib.sha256(payload.encode()).hexdigest()
        return self._fingerprint


_END = object()


def _irds_failure(irds_id: str, reason: str) -> HardnegError:
    return HardnegError(
        f"could not load ir_datasets dataset {irds_id!r}: {reason}. ir_datasets needs internet"
        " access (or its files already downloaded under ~/.ir_datasets); offline, use a local"
        " BEIR/MS MARCO folder instead, e.g. path/to/scifact:test"
    )


def _load_irds(irds_id: str, queries: Path | None, qrels: Path | None) -> Dataset:
    if not irds_id:
        raise InputError(
            "empty ir_datasets id in spec 'irds:'", hint="write e.g. irds:beir/scifact/test"
        )
    try:
        import ir_datasets  # type: ignore[import-not-found]
    except ImportError:
        raise HardnegError(
            f"the spec 'irds:{irds_id}' needs the optional ir_datasets package:"
            " pip install 'hardneg[irds]' (or use a local dataset folder)"
        ) from None
    try:
        handle = ir_datasets.load(irds_id)
    except Exception as exc:
        raise _irds_failure(irds_id, str(exc) or type(exc).__name__) from exc
    return _IrdsDataset(irds_id, handle, queries_path=queries, qrels_path=qrels)


# --------------------------------------------------------------------------- folders


def _must_exist(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        reason = "is a directory, not a file" if p.is_dir() else "file not found"
        raise InputError(reason, path=p, hint=f"give an existing {what} file")
    return p


def _beir_paths(
    root: Path, split: str | None, qrels_override: Path | None
) -> tuple[Path | None, Path | None, Path | None]:
    corpus = root / "corpus.jsonl"
    queries = root / "queries.jsonl"
    qrels = None
    if split is not None and qrels_override is None:
        qrels_dir = root / "qrels"
        qrels = qrels_dir / f"{split}.tsv"
        if not qrels.is_file():
            available = (
                sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
            )
            raise InputError(
                f"split {split!r} not found: no qrels/{split}.tsv",
                path=root,
                hint=(
                    f"available splits: {', '.join(available)}"
                    if available
                    else "this folder has no qrels/ splits; omit ':split' or pass qrels="
                ),
            )
    return (
        corpus if corpus.is_file() else None,
        queries if queries.is_file() else None,
        qrels,
    )


def _msmarco_split_name(name: str) -> str | None:
    for prefix in ("queries.", "topics.", "qrels."):
        if name.startswith(prefix):
            stem = name[len(prefix) :]
            for suffix in (".tsv", ".txt"):
                if stem.endswith(suffix) and len(stem) > len(suffix):
                    return stem[: -len(suffix)]
    return None


def _msmarco_paths(
    root: Path, split: str | None, q_override: Path | None, r_override: Path | None
) -> tuple[Path | None, Path | None, Path | None]:
    files = sorted(p for p in root.iterdir() if p.is_file())
    names = {p.name: p for p in files}
    query_files = [
        p
        for p in files
        if p.name.startswith(("queries", "topics")) and p.suffix in {".tsv", ".txt"}
    ]
    qrels_files = [p for p in files if "qrels" in p.name.lower()]
    splits = sorted({s for p in files if (s := _msmarco_split_name(p.name)) is not None})
    corpus = names.get("collection.tsv")

    def by_split(candidates: list[str], prefixes: tuple[str, ...]) -> Path | None:
        assert split is not None
        for c in candidates:
            if c in names:
                return names[c]
        loose = [p for p in files if p.name.startswith(tuple(f"{x}{split}" for x in prefixes))]
        return loose[0] if len(loose) == 1 else None

    def single(found: list[Path], preferred: str | None, what: str) -> Path | None:
        if preferred is not None and preferred in names:
            return names[preferred]
        if len(found) <= 1:
            return found[0] if found else None
        raise InputError(
            f"several {what} files ({', '.join(p.name for p in found)}) and none named for"
            + (f" split {split!r}" if split is not None else " a split"),
            path=root,
            hint=f"write path:split with one of: {', '.join(splits) or 'none'};"
            f" or pass {what}= explicitly",
        )

    q_path: Path | None = q_override
    r_path: Path | None = r_override
    if split is not None:
        if q_path is None:
            q_path = by_split(
                [f"queries.{split}.tsv", f"topics.{split}.txt", f"topics.{split}.tsv"],
                ("queries.", "topics."),
            )
        if r_path is None:
            r_path = by_split([f"qrels.{split}.tsv", f"qrels.{split}.txt"], ("qrels.",))
        if q_path is None and r_path is None:
            raise InputError(
                f"split {split!r} not found: no queries.{split}.tsv or qrels.{split}.tsv",
                path=root,
                hint=f"available splits: {', '.join(splits) or 'none'}; or pass queries=/qrels=",
            )
    if q_path is None:
        q_path = single(query_files, "queries.tsv", "queries")
    if r_path is None:
        r_path = single(qrels_files, None, "qrels")
    return corpus, q_path, r_path


def load_dataset(
    spec: str,
    *,
    queries: str | Path | None = None,
    qrels: str | Path | None = None,
) -> Dataset:
    """Resolve a dataset spec (``path[:split]`` or ``irds:<id>``) to a lazy :class:`Dataset`.

    ``queries=``/``qrels=`` replace the files the split would use (e.g. TREC
    DL's graded ``2019qrels-pass.txt`` for ``msmarco/dl19-subset``). File
    existence and the split are checked here; contents are read on demand.
    """
    path_str, split = parse_spec(spec)
    q_override = _must_exist(queries, "queries") if queries is not None else None
    r_override = _must_exist(qrels, "qrels") if qrels is not None else None
    if path_str.startswith("irds:"):
        return _load_irds(path_str[len("irds:") :], q_override, r_override)
    root = Path(path_str)
    if not root.exists():
        raise InputError(
            "dataset path not found",
            path=root,
            hint="give a BEIR folder (corpus.jsonl), an MS MARCO folder (collection.tsv),"
            " optionally with :split, or irds:<id>",
        )
    if root.is_file():
        if split is not None:
            raise InputError(
                f"a split ({split!r}) needs a dataset folder, not a single file",
                path=root,
                hint="pass queries=/qrels= with a corpus file",
            )
        name = root.parent.name or root.stem
        return Dataset(
            name,
            None,
            corpus_path=root,
            queries_path=q_override,
            qrels_path=r_override,
            root=root.parent,
        )
    from hardneg.data.classic import smart_dataset, smart_stem

    stem = smart_stem(root)
    if stem is not None and not (root / "corpus.jsonl").is_file():
        if split is not None or r_override is not None or q_override is not None:
            raise InputError("a SMART collection (X.ALL/X.QRY/X.REL) has one query set and no splits",
                             path=root, hint="give the folder without :split or overrides")
        return smart_dataset(root, stem)
    is_beir = (
        (root / "corpus.jsonl").is_file()
        or (root / "queries.jsonl").is_file()
        or (root / "qrels").is_dir()
    )
    if is_beir:
        corpus, q_path, r_path = _beir_paths(root, split, r_override)
        q_path = q_override or q_path
        r_path = r_override or r_path
    else:
        corpus, q_path, r_path = _msmarco_paths(root, split, q_override, r_override)
        if corpus is None and q_path is None and r_path is None:
            found = ", ".join(sorted(p.name for p in root.iterdir())[:10]) or "nothing"
            raise InputError(
                f"not a dataset folder (found: {found})",
                path=root,
                hint="expected corpus.jsonl/queries.jsonl/qrels/ (BEIR) or collection.tsv,"
                " queries*.tsv, *qrels* (MS MARCO)",
            )
    return Dataset(
        root.resolve().name,
        split,
        corpus_path=corpus,
        queries_path=q_path,
        qrels_path=r_path,
        root=root,
    )
