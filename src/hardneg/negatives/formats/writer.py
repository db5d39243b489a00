"""The writer of the text formats (``st``, ``tevatron``): negatives streamed in, documents looked up on disk.

``records()`` yields ``(qid, doc ids)`` in order and is called twice: once to mark the documents needed,
once to write. The documents go through a temporary SQLite table filled by one pass over the corpus, so
neither the negatives nor their texts are held in memory (a ``datasets`` folder, ``st`` without a
``.jsonl`` suffix, is still built in memory from the rows).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hardneg.data.records import Doc
from hardneg.errors import HardnegError
from hardneg.io import atomic_write
from hardneg.negatives.formats.common import check_format, check_output, check_rows, log_skipped, new_stats
from hardneg.negatives.formats.st import st_rows, write_st_rows
from hardneg.negatives.formats.tevatron import tevatron_lines

__all__ = ["DocTable", "write_negative_file_streamed"]

Records = Callable[[], Iterator[tuple[str, list[str]]]]


class DocTable:
    """The documents a streamed write needs, in a temporary SQLite file (one pass over the corpus).

    :meth:`want` marks ids first; :meth:`fill` streams the corpus once and keeps those;
    :meth:`docs` returns ``docid -> Doc`` for a few ids. Memory stays bounded however many there are."""

    BATCH = 500

    def __init__(self, path: Path) -> None:
        for suffix in ("", "-journal", "-wal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path))
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE wanted (id TEXT PRIMARY KEY, negative INTEGER) WITHOUT ROWID")
        self.db.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, text TEXT, title TEXT) WITHOUT ROWID")

    def want(self, ids: Sequence[str], negative: bool) -> None:
        self.db.executemany("INSERT INTO wanted VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET "
                            "negative = max(negative, excluded.negative)", [(d, int(negative)) for d in ids])

    def _keep(self, batch: list[Any]) -> None:
        marks = ",".join("?" * len(batch))
        keep = {r[0] for r in self.db.execute(f"SELECT id FROM wanted WHERE id IN ({marks})",
                                              [d.doc_id for d in batch])}
        self.db.executemany("INSERT OR REPLACE INTO docs VALUES (?, ?, ?)",
                            [(d.doc_id, d.text, d.title) for d in batch if d.doc_id in keep])

    def fill(self, dataset: Any) -> None:
        batch: list[Any] = []
        for doc in dataset.iter_docs():
            batch.append(doc)
            if len(batch) == self.BATCH:
                self._keep(batch)
                batch = []
        if batch:
            self._keep(batch)
        missing = self.db.execute("SELECT count(*) FROM wanted WHERE negative = 1 AND id NOT IN "
                                  "(SELECT id FROM docs)").fetchone()[0]
        if missing:
            first = [r[0] for r in self.db.execute("SELECT id FROM wanted WHERE negative = 1 AND id NOT IN "
                                                   "(SELECT id FROM docs) ORDER BY id LIMIT 3")]
            raise HardnegError(f"{missing} negative documents (e.g. {first}) are not in the corpus of "
                               f"{dataset!r}; were the negatives mined from another collection?")

    def docs(self, ids: Sequence[str]) -> dict[str, Any]:
        ids = list(dict.fromkeys(ids))
        out: dict[str, Any] = {}
        for start in range(0, len(ids), self.BATCH):
            part = ids[start:start + self.BATCH]
            marks = ",".join("?" * len(part))
            for d, text, title in self.db.execute(f"SELECT id, text, title FROM docs WHERE id IN ({marks})", part):
                out[d] = Doc(d, text, title)
        return out

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)


def _positive_ids(qrels: Mapping[str, Mapping[str, int]], qid: str) -> list[str]:
    return [d for d, g in qrels.get(qid, {}).items() if g >= 1]


def _grouped(records: Records, table: DocTable, qrels: Mapping[str, Mapping[str, int]],
             group: int) -> Iterator[tuple[dict[str, list[str]], dict[str, Any]]]:
    """``(negatives, docs)`` of ``group`` queries at a time (``docs``: their negatives and positives)."""
    def with_docs(batch: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, Any]]:
        return batch, table.docs([d for q, negs in batch.items() for d in [*negs, *_positive_ids(qrels, q)]])

    batch: dict[str, list[str]] = {}
    for qid, negs in records():
        batch[qid] = negs
        if len(batch) == group:
            yield with_docs(batch)
            batch = {}
    if batch:
        yield with_docs(batch)


def write_negative_file_streamed(path: str | Path, records: Records, fmt: str, *, dataset: Any,
                                 qrels: Mapping[str, Mapping[str, int]], longest: int, work_dir: str | Path,
                                 group: int = 256) -> dict[str, int]:
    """Write the negatives ``records()`` yields as ``st`` or ``tevatron``, atomically (see the module doc).

    ``longest`` is the longest list (``st``'s ``n``); ``qrels`` give the positives (grade >= 1); the SQLite
    table lives in ``work_dir``. Returns counts: ``rows`` written, ``queries`` covered, ``no_positive`` and
    ``short`` queries skipped."""
    check_format(fmt)
    if fmt == "tsv":
        raise HardnegError("write the tsv format with hardneg.negatives.formats.files.write_negatives")
    path = Path(path)
    check_output(path)
    queries = dataset.all_queries()
    table = DocTable(Path(work_dir) / "docs.sqlite")
    try:
        for qid, negs in records():
            if qid not in queries:
                raise HardnegError(f"query {qid!r} has negatives but is not a query of {dataset!r}")
            table.want(negs, True)
            table.want(_positive_ids(qrels, qid), False)
        table.fill(dataset)
        stats = new_stats()
        if fmt == "tevatron":
            with atomic_write(path) as fh:
                for batch, docs in _grouped(records, table, qrels, group):
                    for line in tevatron_lines(batch, queries, qrels, docs, stats):
                        fh.write(line)
                check_rows(path, stats)  # inside the block: nothing is committed
        else:
            rows = (row for batch, docs in _grouped(records, table, qrels, group)
                    for row in st_rows(batch, queries, qrels, docs, stats, n=longest))
            write_st_rows(path, rows, stats)
    finally:
        table.close()
    log_skipped(path, stats)
    return stats
