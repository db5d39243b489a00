"""Classic test collections in the SMART format (MED, CISI, and folders laid out like them).

A SMART folder holds three files with a common stem: ``X.ALL`` (documents),
``X.QRY`` (queries) and ``X.REL`` (relevance judgements), e.g. ``MED.ALL``,
``MED.QRY``, ``MED.REL``. Records start with ``.I <id>``; fields start with a
dot line (``.T`` title, ``.W`` text, ``.A`` authors, ``.B`` source, ``.X``
cross-references …). Documents keep ``.T`` as the title and ``.W`` as the
text; queries join ``.T`` and ``.W``. Other fields are ignored.

``X.REL`` comes in two layouts, both read here: TREC (``qid 0 docid grade``,
as in ``MED.REL``) and CISI's (``qid docid 0 0.0``: every listed pair is
relevant, grade 1). The layout is decided from the file's first line.

Errors: a line before the first ``.I``, an ``.I`` without an id, or a repeated
id is an :class:`~hardneg.errors.InputError` naming the file and line.
These collections are freely distributed research collections; cite their
sources when you report on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from hardneg.data.lines import (
    empty_corpus_error,
    empty_queries_error,
    empty_query_error,
    find_variant,
    iter_text_lines,
    logical_name,
)
from hardneg.data.records import Doc, Qrel, Query
from hardneg.errors import InputError

#: the SMART fields kept: ``.T`` title, ``.W`` text (for queries both become the text)
_KEPT = {"T", "W"}


def smart_files(root: Path) -> tuple[Path, Path, Path] | None:
    """``(X.ALL, X.QRY, X.REL)`` when ``root`` holds the three (each maybe ``.gz``/``.bz2``/``.xz``)."""
    if not root.is_dir():
        return None
    for path in sorted(root.iterdir()):
        name = logical_name(path)
        if not name.endswith(".ALL") or not path.is_file():
            continue
        stem = name[: -len(".ALL")]
        queries, qrels = find_variant(root, f"{stem}.QRY"), find_variant(root, f"{stem}.REL")
        if queries is not None and qrels is not None:
            return find_variant(root, name) or path, queries, qrels
    return None


def read_smart(path: str | Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``(id, {field: text})`` for every ``.I`` record of a SMART file."""
    for record_id, _, fields in _read_smart(Path(path)):
        yield record_id, fields


def _read_smart(path: Path) -> Iterator[tuple[str, int, dict[str, str]]]:
    """``(id, line of its .I, {field: text})`` for every record."""
    start = 0
    record_id: str | None = None
    fields: dict[str, list[str]] = {}
    current: str | None = None
    seen: set[str] = set()

    def finish() -> tuple[str, int, dict[str, str]]:
        assert record_id is not None
        return record_id, start, {k: " ".join(" ".join(v).split()) for k, v in fields.items()}

    # lines are decoded one by one (a bad byte is reported with its line); blank lines carry nothing
    for line_no, stripped in iter_text_lines(path):
        if stripped.startswith(".I"):
            if record_id is not None:
                yield finish()
            parts = stripped.split()
            if len(parts) != 2 or parts[0] != ".I":
                raise InputError("a SMART record line must be '.I <id>'", path=path, line=line_no,
                                 hint="fix or remove this line")
            record_id = str(int(parts[1])) if parts[1].isascii() and parts[1].isdigit() else parts[1]
            if record_id in seen:
                raise InputError(f"record id {record_id!r} appears twice", path=path, line=line_no,
                                 hint="ids must be unique")
            seen.add(record_id)
            fields, current, start = {}, None, line_no
            continue
        if len(stripped) == 2 and stripped[0] == "." and stripped[1].isalpha():
            current = stripped[1]
            if current in _KEPT:
                fields.setdefault(current, [])
            continue
        if record_id is None:
            raise InputError("text before the first '.I' record line", path=path, line=line_no,
                             hint="a SMART file starts with '.I <id>'")
        if current in _KEPT:
            fields[current].append(stripped)
    if record_id is not None:
        yield finish()


def read_smart_docs(path: str | Path, ids: set[str] | None = None) -> Iterator[Doc]:
    """Documents: ``.T`` the title, ``.W`` the text (either may be empty: Cranfield has 2 empty
    documents, kept so the published counts hold); a file without records is an error."""
    count = 0
    for doc_id, fields in read_smart(path):
        if ids is not None:
            ids.add(doc_id)
        count += 1
        yield Doc(doc_id, fields.get("W", ""), fields.get("T", ""))
    if count == 0:
        raise empty_corpus_error(Path(path))


def read_smart_queries(path: str | Path, *, renumber: bool = False) -> Iterator[Query]:
    """Queries: ``.T`` and ``.W`` joined; ``renumber`` ids them 1, 2, … in file order (Cranfield).

    A query without text and a file without records are errors.
    """
    count = 0
    for qid, lineno, fields in _read_smart(Path(path)):
        text = " ".join(x for x in (fields.get("T", ""), fields.get("W", "")) if x)
        count += 1
        if renumber:
            qid = str(count)
        if not text:
            raise empty_query_error(Path(path), lineno, qid)
        yield Query(qid, text)
    if count == 0:
        raise empty_queries_error(Path(path))


def read_smart_qrels(path: str | Path) -> Iterator[Qrel]:
    """TREC layout ``qid 0 docid grade`` or CISI's ``qid docid 0 0.0`` (grade 1)."""
    path = Path(path)
    layout: str | None = None
    seen: set[tuple[str, str]] = set()
    for line_no, line in iter_text_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise InputError(f"expected 4 columns, found {len(parts)}", path=path, line=line_no,
                             hint="write 'qid 0 docid grade' (TREC) or 'qid docid 0 0.0' (CISI)")
        if layout is None:
            layout = "cisi" if "." in parts[3] else "trec"
        try:
            if layout == "trec":
                qid, doc, grade = _int_id(parts[0]), _int_id(parts[2]), int(parts[3])
            else:
                qid, doc, grade = _int_id(parts[0]), _int_id(parts[1]), 1
        except ValueError:
            raise InputError("ids and grades must be integers", path=path, line=line_no,
                             hint=f"this file reads as the {layout} layout") from None
        if (qid, doc) in seen:
            continue
        seen.add((qid, doc))
        yield Qrel(qid, doc, grade)


def _int_id(text: str) -> str:
    """``"007"`` -> ``"7"``, as ``.I`` record ids are read; ASCII digits only."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return str(int(text))
