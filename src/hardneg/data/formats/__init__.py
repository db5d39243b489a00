"""One reader module per file format, and the by-file-type dispatch over them.

``beir`` (JSONL), ``msmarco`` (TSV), ``trec`` (topics, qrels), ``sgml`` (TREC
``<DOC>`` collections), ``smart`` (classic SMART collections), ``classic`` (Cranfield,
CACM and other classic layouts), ``archive`` (zip/tar datasets) and ``irds`` (the optional
``ir_datasets``). Every reader streams and names ``file:line`` in its errors; every file
may be ``.gz``/``.bz2``/``.xz`` compressed (the type is that of the name without it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from hardneg.data.formats.beir import read_beir_corpus, read_beir_queries
from hardneg.data.formats.msmarco import read_msmarco_collection
from hardneg.data.formats.sgml import is_trec_sgml, read_trec_docs
from hardneg.data.formats.trec import read_trec_topics
from hardneg.data.lines import iter_text_lines, logical_suffix
from hardneg.data.records import Doc, Query

__all__ = ["read_corpus", "read_queries"]


def _starts_as_sgml(path: Path) -> bool:
    lines = iter_text_lines(path)
    try:
        first = next(lines, None)
    finally:
        lines.close()
    return first is not None and is_trec_sgml(first[1])


def read_corpus(path: str | Path, *, ids: set[str] | None = None) -> Iterator[Doc]:
    """Stream a corpus by file type: ``*.jsonl`` is BEIR, ``*.tsv`` MS MARCO TSV, a folder or a file
    opening with ``<DOC>`` TREC SGML, anything else MS MARCO TSV (``X.gz`` is typed as ``X``)."""
    path = Path(path)
    suffix = logical_suffix(path)
    if suffix in {".jsonl", ".json"}:
        return read_beir_corpus(path, ids=ids)
    if path.is_dir() or (suffix != ".tsv" and path.is_file() and _starts_as_sgml(path)):
        return read_trec_docs(path, ids=ids)
    return read_msmarco_collection(path, ids=ids)


def read_queries(path: str | Path, *, topic_field: str = "title") -> Iterator[Query]:
    """Stream queries by file type: ``*.jsonl`` is BEIR, else ``qid<TAB>text``/TREC topics
    (``topic_field`` picks the text of ``<top>`` topics: ``title``, ``desc`` or ``title+desc``)."""
    path = Path(path)
    if logical_suffix(path) in {".jsonl", ".json"}:
        return read_beir_queries(path)
    return read_trec_topics(path, topic_field=topic_field)
