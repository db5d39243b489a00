"""TREC SGML document collections: ``<DOC> <DOCNO> id </DOCNO> ... </DOC>``, several DOCs a file.

The title is the ``<TITLE>``/``<HEADLINE>`` (also ``<HEAD>``, ``<HL>``, ``<DOCTITLE>``) content;
the text is the ``<TEXT>`` content, or, when a DOC has no ``<TEXT>``, everything in it outside
DOCNO and the title (the plain-body variant, e.g. Vaswani/NPL and CACM's topics). Other tags
(``<P>``, ``<F P=105>`` …) and comments are dropped, their words kept; entities are decoded
(HTML's and TREC's ``&hyph;``, ``&blank;`` …); whitespace is collapsed. A corpus may be one file,
several, or a folder of them (recursively, any of them ``.gz``/``.bz2``/``.xz``).

Errors (:class:`~hardneg.errors.InputError` naming ``file:line``): text or tags outside a DOC, a
DOC never closed, ``</DOC>`` without ``<DOC>``, a DOC without a DOCNO (or with two, or one with
spaces), a duplicate DOCNO (also across files), an empty document and a corpus without documents.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hardneg.data.ids import IdSet
from hardneg.data.lines import (
    empty_corpus_error,
    empty_doc_error,
    empty_queries_error,
    empty_query_error,
    iter_text_lines,
)
from hardneg.data.records import Doc, Query
from hardneg.errors import InputError

__all__ = ["is_trec_sgml", "read_trec_doc_topics", "read_trec_docs", "sgml_files"]

#: a start or end tag, attributes allowed (``<F P=105>``); ``a < b`` in text is not a tag
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9_.:-]*)(?:\s[^<>]*)?>")
_COMMENT = re.compile(r"<!--.*?-->")
_TITLE_TAGS = frozenset({"title", "headline", "head", "hl", "doctitle"})
#: TREC's own SGML entities, beside HTML's (decoded by html.unescape)
_TREC_ENTITIES = {"&hyph;": "-", "&blank;": " ", "&space;": " ", "&amp;amp;": "&", "&equals;": "="}
_ENTITY = re.compile("|".join(map(re.escape, _TREC_ENTITIES)), re.IGNORECASE)
#: folder entries that are not collection files
_SKIP = re.compile(r"^(\.|readme|license|licence|md5|sha)", re.IGNORECASE)


def clean_text(parts: Iterable[str]) -> str:
    """Join text pieces, decode entities and collapse whitespace."""
    text = " ".join(parts)
    if "&" in text:
        text = html.unescape(_ENTITY.sub(lambda m: _TREC_ENTITIES[m.group(0).lower()], text))
    return " ".join(text.split())


def is_trec_sgml(first_line: str) -> bool:
    """Whether a file's first non-blank line opens a TREC ``<DOC>``."""
    return re.match(r"\s*<doc>", first_line, re.IGNORECASE) is not None


def sgml_files(path: Path) -> list[Path]:
    """``path`` itself, or every collection file under the folder ``path`` (sorted, recursive)."""
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _SKIP.match(p.name))
    if not files:
        raise InputError("folder holds no collection files", path=path,
                         hint="point at a TREC SGML file or a folder of them")
    return files


@dataclass
class _Open:
    """The DOC being read."""

    start: int
    docno: list[str] = field(default_factory=list)
    docno_line: int = 0
    docno_state: int = 0  # 0 none yet, 1 open, 2 closed
    title: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    has_text: bool = False
    in_title: int = 0
    in_text: int = 0


def _unclosed(path: Path, doc: _Open, why: str) -> InputError:
    return InputError(f"<DOC> is never closed ({why})", path=path, line=doc.start, hint="add the missing </DOC>")


def _parse(path: Path) -> Iterator[tuple[int, int, str, str, str]]:
    """Yield ``(doc_start_line, docno_line, docno, title, text)`` for every DOC of one file."""
    doc: _Open | None = None
    for lineno, raw in iter_text_lines(path):
        line = _COMMENT.sub(" ", raw) if "<!--" in raw else raw
        pos = 0
        for m in (*_TAG.finditer(line), None):
            segment = line[pos : m.start() if m is not None else len(line)]
            if segment.strip():
                if doc is None:
                    raise InputError("text outside a <DOC> ... </DOC>", path=path, line=lineno,
                                     hint="every document must be enclosed in <DOC> ... </DOC>")
                if doc.docno_state == 1:
                    doc.docno.append(segment)
                elif doc.in_title:
                    doc.title.append(segment)
                elif doc.in_text:
                    doc.text.append(segment)
                else:
                    doc.body.append(segment)
            if m is None:
                break
            pos = m.end()
            closing, tag = m.group(1) == "/", m.group(2).lower()
            if tag == "doc":
                if not closing:
                    if doc is not None:
                        raise _unclosed(path, doc, f"a new <DOC> starts on line {lineno}")
                    doc = _Open(lineno)
                    continue
                if doc is None:
                    raise InputError("</DOC> without a matching <DOC>", path=path, line=lineno,
                                     hint="every document must be enclosed in <DOC> ... </DOC>")
                yield _finish(path, doc)
                doc = None
            elif doc is None:
                raise InputError(f"tag <{m.group(1)}{m.group(2)}> outside a <DOC> ... </DOC>", path=path,
                                 line=lineno, hint="every document must be enclosed in <DOC> ... </DOC>")
            elif tag == "docno":
                if not closing:
                    if doc.docno_state:
                        raise InputError("a second <DOCNO> in one <DOC>", path=path, line=lineno,
                                         hint="give every document exactly one <DOCNO>")
                    doc.docno_state, doc.docno_line = 1, lineno
                elif doc.docno_state == 1:
                    doc.docno_state = 2
            elif tag in _TITLE_TAGS:
                doc.in_title = max(0, doc.in_title + (-1 if closing else 1))
            elif tag == "text":
                doc.has_text = True
                doc.in_text = max(0, doc.in_text + (-1 if closing else 1))
            # any other tag is dropped; the pieces either side of it (and of a line break) are
            # separate parts, joined with a space by clean_text
    if doc is not None:
        raise _unclosed(path, doc, "the file ends first")


def _finish(path: Path, doc: _Open) -> tuple[int, int, str, str, str]:
    if doc.docno_state == 1:
        raise InputError("<DOCNO> is never closed", path=path, line=doc.docno_line, hint="add </DOCNO>")
    words = " ".join(doc.docno).split()
    if not words:
        raise InputError("<DOC> has no <DOCNO>" if not doc.docno_state else "<DOCNO> is empty", path=path,
                         line=doc.docno_line or doc.start, hint="give every document a <DOCNO> id </DOCNO>")
    if len(words) > 1:
        raise InputError(f"<DOCNO> {' '.join(words)!r} has spaces", path=path, line=doc.docno_line,
                         hint="a document id is one token")
    text = clean_text(doc.text if doc.has_text else doc.body)
    return doc.start, doc.docno_line, words[0], clean_text(doc.title), text


def _docno_locations(files: list[Path], key: str) -> list[tuple[Path, int]]:
    """Where ``key`` is a DOCNO (error paths only: re-reads the files up to the second hit)."""
    found: list[tuple[Path, int]] = []
    for path in files:
        try:
            for _, line, docno, _, _ in _parse(path):
                if docno == key:
                    found.append((path, line))
                    if len(found) == 2:
                        return found
        except InputError:
            continue
    return found


def _duplicate(files: list[Path], key: str, what: str) -> InputError | None:
    where = _docno_locations(files, key)
    if len(where) < 2:
        return None  # two ids that share a hash
    (p1, l1), (p2, l2) = where
    first = f"line {l1}" if p1 == p2 else f"{p1}:{l1}"
    return InputError(f"duplicate {what} id {key!r} (first on {first})", path=p2, line=l2,
                      hint=f"{what} ids must be unique; remove or rename one of the DOCs")


def _files(paths: str | Path | Iterable[Path]) -> list[Path]:
    return sgml_files(Path(paths)) if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def _records(files: list[Path], ids: set[str] | IdSet | None, what: str
             ) -> Iterator[tuple[Path, int, str, str, str]]:
    seen: set[str] | IdSet = ids if ids is not None else IdSet()
    done: list[Path] = []
    for path in files:
        done.append(path)
        for start, line, docno, title, text in _parse(path):
            if isinstance(seen, IdSet):
                if seen.add(docno, line) is not None:
                    raise _duplicate(done, docno, what) or AssertionError("IdSet repeat not found")
                if seen.block_full:
                    for key, _ in seen.flush():
                        if (err := _duplicate(done, key, what)) is not None:
                            raise err
            elif docno in seen:
                raise _duplicate(done, docno, what) or AssertionError("repeat not found")
            else:
                seen.add(docno)
            yield path, start, docno, title, text
    if isinstance(seen, IdSet):
        for key, _ in seen.flush():
            if (err := _duplicate(done, key, what)) is not None:
                raise err


def read_trec_docs(paths: str | Path | Iterable[Path], *, ids: set[str] | IdSet | None = None) -> Iterator[Doc]:
    """Stream TREC SGML documents from a file, a folder of files or a list of files as :class:`Doc`.

    ``ids``, if given, is filled with the document ids (as the other corpus readers do).
    """
    files = _files(paths)
    count = 0
    for path, start, docno, title, text in _records(files, ids, "document"):
        if not title and not text:
            raise empty_doc_error(path, start, docno)
        count += 1
        yield Doc(docno, text, title)
    if count == 0:
        raise empty_corpus_error(Path(paths) if isinstance(paths, (str, Path)) or not files else files[0])


def read_trec_doc_topics(path: str | Path) -> Iterator[Query]:
    """Queries written as TREC DOCs (CACM's ``topics.cacm.txt``): DOCNO the id, title + text the query."""
    path = Path(path)
    count = 0
    for _, start, docno, title, text in _records([path], set(), "query"):
        query = f"{title} {text}".strip()
        if not query:
            raise empty_query_error(path, start, docno)
        count += 1
        yield Query(docno, query)
    if count == 0:
        raise empty_queries_error(path)
