"""Classic test collections beyond plain SMART: Cranfield, per-file document archives (CACM), and
folders of TREC ``<DOC>`` files with topics and qrels (Vaswani/NPL, CACM).

Their quirks, from each collection's README (``shared/data/classic``):

* Cranfield (``cran.all.1400``, ``cran.qry``, ``cranqrel``/``QRelsCorrectedforTRECeval``): SMART
  records, but ``cran.qry`` numbers its 225 queries 001, 002, 004 … while the qrels number them
  1..225 in file order, so queries are renumbered by position. ``cranqrel`` grades are Cleverdon's
  codes (1 = complete answer … 4 = minimum interest; -1 = the document the question was written
  from); ``QRelsCorrectedforTRECeval``, shipped with the collection, turns them into TREC grades
  (higher is better: ``5 - code``, and 5 for -1). That file is read when present, else
  ``cranqrel`` is mapped the same way.
* CACM: 3,204 HTML documents ``CACM-0115.html`` in ``cacm.tar.gz`` while the qrels write
  ``CACM-115``: ids of per-file documents lose the zero padding of their number (here and in the
  qrels). The title is the first line, the text the rest, without the citation table (lines of
  three numbers).
"""

from __future__ import annotations

import html
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from hardneg.data.formats.sgml import is_trec_sgml, read_trec_docs
from hardneg.data.ids import IdSet
from hardneg.data.lines import (
    empty_corpus_error,
    empty_doc_error,
    find_variant,
    iter_stream_lines,
    iter_text_lines,
    logical_name,
)
from hardneg.data.records import Doc, Qrel
from hardneg.errors import InputError

__all__ = [
    "ARCHIVE_SUFFIXES",
    "cranfield_files",
    "is_archive",
    "read_archive_docs",
    "read_cranfield_qrels",
    "read_corpus_files",
    "trec_folder",
    "unpad_id",
]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
#: members of a document archive read as one document each
_DOC_MEMBER = re.compile(r"\.(html?|txt)$", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^<>]*>")
_CITATION = re.compile(r"^\s*\d+\s+\d+\s+\d+\s*$")
_PADDED = re.compile(r"(.*?)(\d+)")
_SKIP = re.compile(r"^(\.|readme|license|licence|md5|sha)", re.IGNORECASE)


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def unpad_id(doc_id: str) -> str:
    """``CACM-0115`` -> ``CACM-115``: the trailing number without zero padding (CACM's qrels)."""
    m = _PADDED.fullmatch(doc_id)
    if m is None or not m.group(2).isascii():
        return doc_id
    return m.group(1) + str(int(m.group(2)))


# --------------------------------------------------------------------------- Cranfield


def cranfield_files(root: Path) -> tuple[Path, Path, Path] | None:
    """``(docs, queries, qrels)`` of a Cranfield folder, else ``None``."""
    if not root.is_dir():
        return None
    docs = find_variant(root, "cran.all.1400")
    queries = find_variant(root, "cran.qry")
    qrels = find_variant(root, "QRelsCorrectedforTRECeval") or find_variant(root, "cranqrel")
    if docs is None or queries is None or qrels is None:
        return None
    return docs, queries, qrels


def read_cranfield_qrels(path: str | Path) -> Iterator[Qrel]:
    """``cranqrel`` (``qid docid code``) as TREC grades: ``5 - code``, and 5 for code -1."""
    path = Path(path)
    for lineno, line in iter_text_lines(path):
        parts = line.split()
        if len(parts) != 3:
            raise InputError(f"expected 3 columns, found {len(parts)}", path=path, line=lineno,
                             hint="cranqrel lines are 'qid docid code'")
        qid, doc, code = parts
        if not (qid.isascii() and qid.isdigit() and doc.isascii() and doc.isdigit()) or code not in {
                "1", "2", "3", "4", "-1"}:
            raise InputError(f"expected integer ids and a code 1-4 or -1, found {line.strip()!r}", path=path,
                             line=lineno, hint="cranqrel lines are 'qid docid code'")
        yield Qrel(str(int(qid)), str(int(doc)), 5 if code == "-1" else 5 - int(code))


# --------------------------------------------------------------------------- document archives


def _html_doc(lines: Iterator[tuple[int, str]]) -> tuple[str, str]:
    """``(title, text)`` of an HTML/text document: first line the title, the rest the text."""
    kept: list[str] = []
    for _, line in lines:
        text = html.unescape(_HTML_TAG.sub(" ", line))
        if text.strip() and not _CITATION.match(text):
            kept.append(text)
    if not kept:
        return "", ""
    return " ".join(kept[0].split()), " ".join(" ".join(kept[1:]).split())


def _corrupt(path: Path, exc: BaseException) -> InputError:
    return InputError(f"archive is corrupt or truncated ({type(exc).__name__}: {exc})", path=path,
                      hint="download or pack the archive again")


def read_archive_docs(path: str | Path, *, ids: set[str] | IdSet | None = None) -> Iterator[Doc]:
    """One :class:`Doc` per ``.html``/``.htm``/``.txt`` member of a zip or tar archive (sorted by name).

    The id is the member's file stem without zero padding (:func:`unpad_id`); errors name
    ``archive/member:line``.
    """
    path = Path(path)
    local: dict[str, str] = {}  # id -> member: an archive of one file per document stays small
    count = 0
    try:
        for member, fh in _members(path):
            shown = f"{path}/{member}"
            doc_id = unpad_id(Path(member).name.rsplit(".", 1)[0])
            with fh:
                title, text = _html_doc(iter_stream_lines(fh, shown))
            if doc_id in local or (ids is not None and doc_id in ids):
                first = f" (also {local[doc_id]})" if doc_id in local else " (also in another corpus file)"
                raise InputError(f"duplicate document id {doc_id!r}{first}", path=shown,
                                 hint="two documents have the same id (ids ignore zero padding)")
            local[doc_id] = member
            if ids is not None:
                ids.add(doc_id)
            if not title and not text:
                raise empty_doc_error(Path(shown), 1, doc_id)
            count += 1
            yield Doc(doc_id, text, title)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        raise _corrupt(path, exc) from None
    if count == 0:
        raise empty_corpus_error(path)


def _members(path: Path) -> Iterator[tuple[str, object]]:
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if not info.is_dir() and _DOC_MEMBER.search(info.filename):
                    yield info.filename, zf.open(info)
        return
    with tarfile.open(path, "r:*") as tf:
        for info in sorted(tf.getmembers(), key=lambda i: i.name):
            if info.isfile() and _DOC_MEMBER.search(info.name):
                fh = tf.extractfile(info)
                if fh is not None:
                    yield info.name, fh


def read_corpus_files(files: list[Path], *, ids: set[str] | IdSet | None = None) -> Iterator[Doc]:
    """A corpus spread over TREC SGML files and document archives (ids unique across all of them)."""
    seen: set[str] | IdSet = ids if ids is not None else IdSet()
    sgml = [p for p in files if not is_archive(p)]
    if sgml:
        yield from read_trec_docs(sgml, ids=seen)
    for archive in (p for p in files if is_archive(p)):
        yield from read_archive_docs(archive, ids=seen)


# --------------------------------------------------------------------------- TREC-style folders


def _first_line(path: Path) -> str:
    lines = iter_text_lines(path)
    try:
        first = next(lines, None)
    except InputError:
        return ""
    finally:
        lines.close()
    return first[1] if first is not None else ""


def trec_folder(root: Path) -> tuple[list[Path], Path | None, Path | None] | None:
    """``(corpus files, queries, qrels)`` of a folder of TREC ``<DOC>`` files or document archives
    with one topics/queries file and one qrels file (names containing ``topic``/``quer`` and
    ``qrel``), else ``None``."""
    if not root.is_dir():
        return None
    files = sorted(p for p in root.iterdir() if p.is_file() and not _SKIP.match(p.name))
    qrels = [p for p in files if "qrel" in logical_name(p).lower()]
    queries = [p for p in files if p not in qrels and re.search(r"topic|quer", logical_name(p), re.IGNORECASE)]
    if len(qrels) > 1 or len(queries) > 1:
        return None
    rest = [p for p in files if p not in qrels and p not in queries]
    corpus = [p for p in rest if is_archive(p) or is_trec_sgml(_first_line(p))]
    if not corpus or not (queries or qrels):
        return None
    return corpus, (queries[0] if queries else None), (qrels[0] if qrels else None)
