"""One reader module per file format, and the by-file-type dispatch over them.

``beir`` (JSONL), ``msmarco`` (TSV), ``trec`` (topics, qrels), ``smart``
(classic SMART collections) and ``irds`` (the optional ``ir_datasets``).
Every reader streams and names ``file:line`` in its errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from hardneg.data.formats.beir import read_beir_corpus, read_beir_queries
from hardneg.data.formats.msmarco import read_msmarco_collection
from hardneg.data.formats.trec import read_trec_topics
from hardneg.data.records import Doc, Query

__all__ = ["read_corpus", "read_queries"]


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
