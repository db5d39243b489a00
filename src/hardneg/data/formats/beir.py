"""BEIR JSONL files: ``corpus.jsonl`` (``{"_id", "title", "text"}``) and ``queries.jsonl``.

Malformed JSON, a line that is not an object or lacks ``_id``/``text``, a
duplicate id, an empty document or query and an empty corpus or queries file are
:class:`~hardneg.errors.InputError` naming ``file:line``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hardneg.data.ids import IdSet, confirm_clashes, duplicate_error, note_id
from hardneg.data.lines import (
    empty_corpus_error,
    empty_doc_error,
    empty_queries_error,
    empty_query_error,
    iter_text_lines,
)
from hardneg.data.records import Doc, Query
from hardneg.errors import InputError

__all__ = ["json_id", "load_json_object", "read_beir_corpus", "read_beir_queries"]


def json_id(line: str) -> str | None:
    """The ``_id`` of a JSONL line (for re-scanning a file for an id's first line)."""
    value = json.loads(line).get("_id")
    return str(value) if value is not None else None


def load_json_object(line: str, path: Path, lineno: int, example: str) -> dict[str, Any]:
    """One JSON object from a JSONL line; an InputError naming ``path:lineno`` (with ``example``) otherwise."""
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
    for lineno, line in iter_text_lines(path):
        obj = load_json_object(line, path, lineno, example)
        doc_id = _get_id(obj, path, lineno, "document")
        text = _get_str(obj, "text", path, lineno, required=True)
        title = _get_str(obj, "title", path, lineno, required=False)
        note_id(seen, path, lineno, doc_id, "document", json_id)
        if not text.strip() and not title.strip():
            raise empty_doc_error(path, lineno, doc_id)
        count += 1
        yield Doc(doc_id, text, title)
    if isinstance(seen, IdSet):
        confirm_clashes(seen.flush(), path, "document", json_id)
    if count == 0:
        raise empty_corpus_error(path)


def read_beir_queries(path: str | Path) -> Iterator[Query]:
    """Stream a BEIR ``queries.jsonl`` (``{"_id", "text"}`` per line) as :class:`Query`."""
    path = Path(path)
    seen: set[str] = set()
    example = '{"_id": "q1", "text": "..."}'
    for lineno, line in iter_text_lines(path):
        obj = load_json_object(line, path, lineno, example)
        qid = _get_id(obj, path, lineno, "query")
        text = _get_str(obj, "text", path, lineno, required=True)
        if qid in seen:
            raise duplicate_error(path, lineno, qid, "query", json_id)
        if not text.strip():
            raise empty_query_error(path, lineno, qid)
        seen.add(qid)
        yield Query(qid, text)
    if not seen:
        raise empty_queries_error(path)
