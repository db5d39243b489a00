"""MS MARCO TSV files: ``collection.tsv`` (``pid<TAB>text``, or the document collection's
``docid<TAB>url<TAB>title<TAB>body``) and queries (``qid<TAB>text``).

A document collection line is read as DRhard reads ``msmarco-docs.tsv`` (its ``preprocess.py``, from ANCE):
the text ``url<sep>title<sep>body``, each field stripped at its end, ``<sep>`` a plain string (no special token).

A wrong column count, an empty id, a duplicate id, an empty passage or query
and an empty collection or queries file are :class:`~hardneg.errors.InputError` naming ``file:line``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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

__all__ = ["DOC_FIELD_SEPARATOR", "read_msmarco_collection", "read_msmarco_queries"]

#: between the url, title and body of an MS MARCO document (DRhard's and ANCE's composition)
DOC_FIELD_SEPARATOR = "<sep>"
#: the two layouts of a collection line: passages and documents
_PASSAGES, _DOCUMENTS = "pid<TAB>text", "docid<TAB>url<TAB>title<TAB>body"


def tsv_id(line: str) -> str | None:
    """The first column of a TSV line (for re-scanning a file for an id's first line)."""
    return line.split("\t", 1)[0].strip()


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


def _document(line: str, path: Path, lineno: int) -> tuple[str, str]:
    """``(docid, "url<sep>title<sep>body")`` of a document collection line; the text is empty when all three
    fields are blank."""
    parts = line.split("\t")
    if len(parts) != 4:
        raise InputError(f"expected 4 tab-separated columns ({_DOCUMENTS}) like the file's first line, found "
                         f"{len(parts)}", path=path, line=lineno,
                         hint="the fields must not contain tabs; fix or remove the line")
    key = parts[0].strip()
    if not key:
        raise InputError(f"empty id in the first column ({_DOCUMENTS})", path=path, line=lineno,
                         hint="give the line its id")
    fields = [f.rstrip() for f in parts[1:]]
    return key, DOC_FIELD_SEPARATOR.join(fields) if any(f.strip() for f in fields) else ""


def read_msmarco_collection(path: str | Path, *, ids: set[str] | None = None) -> Iterator[Doc]:
    """Stream an MS MARCO collection as :class:`Doc` (no title): ``pid<TAB>text`` (passages), or
    ``docid<TAB>url<TAB>title<TAB>body`` (``msmarco-docs.tsv``), read as ``url<sep>title<sep>body``. The
    first line's column count (2 or 4) sets the layout of the whole file."""
    path = Path(path)
    seen: set[str] | IdSet = ids if ids is not None else IdSet()
    count = 0
    documents: bool | None = None
    for lineno, line in iter_text_lines(path):
        if documents is None:
            documents = line.count("\t") == 3
        if documents:
            pid, text = _document(line, path, lineno)
        else:
            pid, text = _two_columns(line, path, lineno, _PASSAGES)
        note_id(seen, path, lineno, pid, "document", tsv_id)
        if not text.strip():
            raise empty_doc_error(path, lineno, pid)
        count += 1
        yield Doc(pid, text)
    if isinstance(seen, IdSet):
        confirm_clashes(seen.flush(), path, "document", tsv_id)
    if count == 0:
        raise empty_corpus_error(path)


def read_msmarco_queries(path: str | Path) -> Iterator[Query]:
    """Stream an MS MARCO / TREC DL queries file (``qid<TAB>text``) as :class:`Query`."""
    path = Path(path)
    seen: set[str] = set()
    for lineno, line in iter_text_lines(path):
        qid, text = _two_columns(line, path, lineno, "qid<TAB>text")
        if qid in seen:
            raise duplicate_error(path, lineno, qid, "query", tsv_id)
        if not text.strip():
            raise empty_query_error(path, lineno, qid)
        seen.add(qid)
        yield Query(qid, text)
    if not seen:
        raise empty_queries_error(path)
