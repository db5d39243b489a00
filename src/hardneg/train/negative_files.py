"""Mined negatives in the field's file formats: hardneg's TSV, sentence-transformers data, Tevatron JSONL.

Formats (``hardneg mine --format``; ``hardneg train --negatives`` reads all three, see :func:`detect_format`)
-----------------------------------------------------------------------------------------------------
``tsv``
    ``qid<TAB>docid<TAB>rank`` (an MS MARCO run); a TREC run is read too
    (:func:`hardneg.train.negatives.read_negatives`).
``st``
    sentence-transformers' "n-tuple" training data (the ``output_format="n-tuple"`` of
    ``sentence_transformers.util.mine_hard_negatives``): columns ``anchor``, ``positive``,
    ``negative_1 … negative_n``, all texts, one row per (query, positive). Written as JSONL when the
    path ends in ``.jsonl`` (``datasets.load_dataset("json", data_files=…)`` loads it), else as a
    ``datasets`` folder (``Dataset.save_to_disk``). As in ST, every row has the same ``n`` (here the
    longest list written) and a query with fewer negatives gets no row (counted and logged).
    Document texts are ``Doc.full_text()`` (``title + " " + text``, what hardneg encodes); query
    texts are the dataset's. ST's triplet column ``negative`` is read as ``negative_1``.
``tevatron``
    Tevatron's "relevancy judged" JSONL (Tevatron docs/datasets.md): one line per query,
    ``{"query_id", "query", "positive_passages": [{"docid", "title", "text"}], "negative_passages": […]}``;
    negatives in rank order. Queries without a positive in the corpus get no line (Tevatron needs one).

Reading
-------
Tevatron and TSV files are read by id. ST data carries only texts, so it is mapped back with the
dataset: the anchor to the query with exactly that text, each negative to the document whose
``full_text()`` is exactly that text. A query text shared by several queries is resolved by the
row's positive (the one query that has it as a positive); a document text shared by several
documents (NFCorpus has 80 such documents) goes to the first of them in corpus order: their text,
hence what the model sees, is identical. Unknown texts, a query text still ambiguous, and a
negative whose text is that of one of the query's own positives are :class:`InputError` with
``file:line`` (``folder: row N`` for a ``datasets`` folder). Writes are atomic
(:func:`hardneg.io.atomic_write`, :func:`hardneg.io.commit_dir`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hardneg.data.formats.beir import load_json_object
from hardneg.data.lines import COMPRESSED_SUFFIXES, iter_text_lines, logical_suffix
from hardneg.errors import HardnegError, InputError
from hardneg.io import atomic_write, commit_dir, writing

__all__ = ["FORMATS", "detect_format", "read_negative_file", "write_negative_file", "write_negative_file_streamed"]

logger = logging.getLogger("hardneg")

#: the formats ``hardneg mine --format`` writes
FORMATS = ("tsv", "st", "tevatron")
_NEG_COLUMN = re.compile(r"negative_(\d+)$")
_TEVATRON_KEYS = ("query_id", "query", "positive_passages", "negative_passages")
_TEVATRON_EXAMPLE = '{"query_id": "q1", "query": "...", "positive_passages": [{"docid": "d1", ...}], ' \
                    '"negative_passages": [...]}'
_ST_EXAMPLE = '{"anchor": "query text", "positive": "doc text", "negative_1": "doc text", ...}'


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise HardnegError(f"unknown negatives format {fmt!r}; pick one of {', '.join(FORMATS)}")
    return fmt


# --------------------------------------------------------------------------- writing


def _needed_docs(dataset: Any, negatives: set[str], positives: set[str]) -> dict[str, Any]:
    """``docid -> Doc`` for the negatives and positives, streaming the corpus once.

    A negative absent from the corpus is an error; an absent positive is skipped (the qrels may judge
    documents outside a subset corpus, see :mod:`hardneg.data.dataset`)."""
    wanted = negatives | positives
    docs = {d.doc_id: d for d in dataset.iter_docs() if d.doc_id in wanted}
    missing = negatives - docs.keys()
    if missing:
        raise HardnegError(f"{len(missing)} negative documents (e.g. {sorted(missing)[:3]}) are not in the "
                           f"corpus of {dataset!r}; were the negatives mined from another collection?")
    return docs


def _positives(qrels: Mapping[str, Mapping[str, int]], qid: str, docs: Mapping[str, Any]) -> list[str]:
    return [d for d, grade in qrels.get(qid, {}).items() if grade >= 1 and d in docs]


def write_negative_file(path: str | Path, negatives: Mapping[str, Sequence[str]], fmt: str, *, dataset: Any,
                        qrels: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, int]:
    """Write ``negatives`` (``qid -> doc ids`` in rank order) as ``st`` or ``tevatron``, atomically.

    ``qrels`` (default: the dataset's) give the positives (grade ``>= 1``). Returns counts:
    ``rows`` written, ``queries`` covered, ``no_positive`` and ``short`` queries skipped.
    """
    check_format(fmt)
    if fmt == "tsv":
        raise HardnegError("write the tsv format with hardneg.train.negatives.write_negatives")
    if Path(path).suffix.lower() in COMPRESSED_SUFFIXES:
        raise HardnegError(f"{path}: compressed output is not written; give a .jsonl path")
    qrels = dataset.qrels() if qrels is None else qrels
    queries = dataset.all_queries()
    negs = {d for docs in negatives.values() for d in docs}
    pos = {d for qid in negatives for d, g in qrels.get(qid, {}).items() if g >= 1}
    docs = _needed_docs(dataset, negs, pos)
    for qid in negatives:
        if qid not in queries:
            raise HardnegError(f"query {qid!r} has negatives but is not a query of {dataset!r}")
    stats = {"rows": 0, "queries": 0, "no_positive": 0, "short": 0}
    if fmt == "tevatron":
        _write_tevatron(Path(path), negatives, queries, qrels, docs, stats)
    else:
        _write_st(Path(path), negatives, queries, qrels, docs, stats)
    _log_skipped(path, stats)
    return stats


def _log_skipped(path: str | Path, stats: dict[str, int]) -> None:
    if stats["no_positive"]:
        logger.warning("%d queries have no positive document in the corpus: not written to %s",
                       stats["no_positive"], path)
    if stats["short"]:
        logger.warning("%d queries have fewer negatives than the others: no row in %s (every row of "
                       "sentence-transformers' n-tuple format has the same number of negatives)",
                       stats["short"], path)


def _check_rows(path: Path, stats: dict[str, int]) -> None:
    if not stats["rows"]:
        raise HardnegError(f"{path}: no query has both a positive in the corpus and negatives; nothing written")


def _passage(doc: Any) -> dict[str, str]:
    return {"docid": doc.doc_id, "title": doc.title, "text": doc.text}


def _tevatron_lines(negatives, queries, qrels, docs, stats) -> Iterator[str]:
    for qid, negs in negatives.items():
        pos = _positives(qrels, qid, docs)
        if not pos:
            stats["no_positive"] += 1
            continue
        line = {"query_id": qid, "query": queries[qid].text,
                "positive_passages": [_passage(docs[d]) for d in pos],
                "negative_passages": [_passage(docs[d]) for d in negs]}
        stats["rows"] += 1
        stats["queries"] += 1
        yield json.dumps(line, ensure_ascii=False) + "\n"


def _write_tevatron(path, negatives, queries, qrels, docs, stats) -> None:
    with atomic_write(path) as fh:
        for line in _tevatron_lines(negatives, queries, qrels, docs, stats):
            fh.write(line)
        _check_rows(path, stats)  # inside the block: nothing is committed


def _st_rows(negatives, queries, qrels, docs, stats, n: int | None = None) -> Iterator[dict[str, str]]:
    if n is None:
        n = max((len(v) for v in negatives.values()), default=0)
    for qid, negs in negatives.items():
        pos = _positives(qrels, qid, docs)
        if not pos:
            stats["no_positive"] += 1
            continue
        if len(negs) < n:  # ST's n-tuple keeps only rows with all n negatives (util/hard_negatives.py)
            stats["short"] += 1
            continue
        stats["queries"] += 1
        neg_cols = {f"negative_{i}": docs[d].full_text() for i, d in enumerate(negs, start=1)}
        for p in pos:
            stats["rows"] += 1
            yield {"anchor": queries[qid].text, "positive": docs[p].full_text(), **neg_cols}


def _write_st(path: Path, negatives, queries, qrels, docs, stats) -> None:
    _write_st_rows(path, _st_rows(negatives, queries, qrels, docs, stats), stats)


def _write_st_rows(path: Path, rows: Iterator[dict[str, str]], stats: dict[str, int]) -> None:
    if path.suffix.lower() in (".jsonl", ".json"):
        with atomic_write(path) as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            _check_rows(path, stats)
        return
    try:
        import datasets
    except ImportError:
        raise HardnegError(f"{path}: writing a datasets folder needs the 'datasets' package (pip install "
                           "datasets); or give the output a .jsonl suffix for JSONL that datasets loads") from None
    table = list(rows)
    _check_rows(path, stats)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(path, "datasets folder"):
            datasets.Dataset.from_list(table).save_to_disk(str(tmp))
        commit_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _DocTable:
    """The documents a streamed write needs, in a temporary SQLite file (one pass over the corpus).

    ``wanted(ids, negative)`` marks ids first; :meth:`fill` streams the corpus once and keeps those;
    :meth:`docs` returns ``docid -> Doc`` for a few ids. Memory stays bounded however many there are."""

    BATCH = 500

    def __init__(self, path: Path) -> None:
        import sqlite3

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

    def fill(self, dataset: Any) -> None:
        def flush(batch: list[Any]) -> None:
            marks = ",".join("?" * len(batch))
            keep = {r[0] for r in self.db.execute(f"SELECT id FROM wanted WHERE id IN ({marks})",
                                                  [d.doc_id for d in batch])}
            self.db.executemany("INSERT OR REPLACE INTO docs VALUES (?, ?, ?)",
                                [(d.doc_id, d.text, d.title) for d in batch if d.doc_id in keep])

        batch: list[Any] = []
        for doc in dataset.iter_docs():
            batch.append(doc)
            if len(batch) == self.BATCH:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        missing = self.db.execute("SELECT count(*) FROM wanted WHERE negative = 1 AND id NOT IN "
                                  "(SELECT id FROM docs)").fetchone()[0]
        if missing:
            first = [r[0] for r in self.db.execute("SELECT id FROM wanted WHERE negative = 1 AND id NOT IN "
                                                   "(SELECT id FROM docs) ORDER BY id LIMIT 3")]
            raise HardnegError(f"{missing} negative documents (e.g. {first}) are not in the corpus of "
                               f"{dataset!r}; were the negatives mined from another collection?")

    def docs(self, ids: Sequence[str]) -> dict[str, Any]:
        from hardneg.data.records import Doc

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


def write_negative_file_streamed(path: str | Path, records: Callable[[], Iterator[tuple[str, list[str]]]], fmt: str,
                                 *, dataset: Any, qrels: Mapping[str, Mapping[str, int]], longest: int,
                                 work_dir: str | Path, group: int = 256) -> dict[str, int]:
    """:func:`write_negative_file` from a stream: ``records()`` yields ``(qid, doc ids)`` in order (it is
    called twice), ``longest`` is the longest list (``st``'s ``n``). The same bytes as
    :func:`write_negative_file` over the same negatives, without holding them or their texts: the
    documents go through a temporary SQLite table in ``work_dir`` (one pass over the corpus).
    A ``datasets`` folder (``st`` without a ``.jsonl`` suffix) is still built in memory from the rows."""
    check_format(fmt)
    if fmt == "tsv":
        raise HardnegError("write the tsv format with hardneg.train.negatives.write_negatives")
    path = Path(path)
    if path.suffix.lower() in COMPRESSED_SUFFIXES:
        raise HardnegError(f"{path}: compressed output is not written; give a .jsonl path")
    queries = dataset.all_queries()
    table = _DocTable(Path(work_dir) / "docs.sqlite")
    try:
        for qid, negs in records():
            if qid not in queries:
                raise HardnegError(f"query {qid!r} has negatives but is not a query of {dataset!r}")
            table.want(negs, True)
            table.want([d for d, g in qrels.get(qid, {}).items() if g >= 1], False)
        table.fill(dataset)
        stats = {"rows": 0, "queries": 0, "no_positive": 0, "short": 0}

        def grouped() -> Iterator[tuple[dict[str, list[str]], dict[str, Any]]]:
            batch: dict[str, list[str]] = {}
            for qid, negs in records():
                batch[qid] = negs
                if len(batch) == group:
                    yield batch, _group_docs(batch)
                    batch = {}
            if batch:
                yield batch, _group_docs(batch)

        def _group_docs(batch: dict[str, list[str]]) -> dict[str, Any]:
            ids = [d for q, negs in batch.items() for d in
                   [*negs, *(p for p, g in qrels.get(q, {}).items() if g >= 1)]]
            return table.docs(ids)

        if fmt == "tevatron":
            with atomic_write(path) as fh:
                for batch, docs in grouped():
                    for line in _tevatron_lines(batch, queries, qrels, docs, stats):
                        fh.write(line)
                _check_rows(path, stats)
        else:
            def rows() -> Iterator[dict[str, str]]:
                for batch, docs in grouped():
                    yield from _st_rows(batch, queries, qrels, docs, stats, n=longest)

            _write_st_rows(path, rows(), stats)
    finally:
        table.close()
    _log_skipped(path, stats)
    return stats


# --------------------------------------------------------------------------- detection


def _is_datasets_folder(path: Path) -> bool:
    return any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def detect_format(path: str | Path) -> str:
    """``tsv``, ``st`` or ``tevatron``, from the path (a ``datasets`` folder is ``st``) and first line.

    A first line starting with ``{`` (or a ``.jsonl``/``.json`` suffix) is JSON: ``tevatron`` if it has
    ``query_id`` or ``negative_passages``, ``st`` if it has ``anchor``; anything else is the TSV/TREC run.
    """
    path = Path(path)
    if path.is_dir():
        if _is_datasets_folder(path):
            return "st"
        raise InputError("is a folder but not a datasets folder (no dataset_info.json/state.json)", path=path,
                         hint="give a negatives TSV, a Tevatron or sentence-transformers JSONL, or a folder "
                              "written by datasets' save_to_disk")
    for lineno, line in iter_text_lines(path):
        if not line.lstrip().startswith("{") and logical_suffix(path) not in (".jsonl", ".json"):
            return "tsv"
        obj = load_json_object(line, path, lineno, f"{_TEVATRON_EXAMPLE} or {_ST_EXAMPLE}")
        if "query_id" in obj or "negative_passages" in obj:
            return "tevatron"
        if "anchor" in obj:
            return "st"
        raise InputError(f"JSON line has neither Tevatron keys ({', '.join(_TEVATRON_KEYS)}) nor "
                         "sentence-transformers columns (anchor, positive, negative_1 …)", path=path, line=lineno,
                         hint="write negatives with hardneg mine --format tevatron|st")
    return "tsv"  # empty: read_negatives reports it the usual way


# --------------------------------------------------------------------------- reading


def read_negative_file(path: str | Path, dataset: Any = None) -> dict[str, list[str]]:
    """``qid -> doc ids`` (file order) from a TSV/TREC run, a Tevatron JSONL or ST data (see the module doc).

    ``dataset`` is required for ST data (texts are mapped to ids); for Tevatron files it, when
    given, checks that every query and document id exists (``file:line`` errors).
    """
    fmt = detect_format(path)
    if fmt == "tevatron":
        return _read_tevatron(Path(path), dataset)
    if fmt == "st":
        if dataset is None:
            raise HardnegError(f"{path}: sentence-transformers data holds texts, not ids; reading it needs the "
                               "dataset (its corpus and queries) to map texts back to ids")
        return _read_st(Path(path), dataset)
    from hardneg.train.negatives import read_negatives

    return read_negatives(path)


def _json_id(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _passage_ids(obj: dict, key: str, path: Path, lineno: int) -> list[str]:
    value = obj[key]
    if not isinstance(value, list):
        raise InputError(f"'{key}' must be a list of passages, found {type(value).__name__}", path=path,
                         line=lineno, hint='each passage is {"docid": ..., "title": ..., "text": ...}')
    ids = []
    for i, passage in enumerate(value):
        docid = _json_id(passage.get("docid")) if isinstance(passage, dict) else None
        if docid is None:
            what = "has no usable 'docid'" if isinstance(passage, dict) else f"is a {type(passage).__name__}"
            raise InputError(f"{key}[{i}] {what}", path=path, line=lineno,
                             hint='each passage must be an object with a non-empty string "docid"')
        ids.append(docid)
    return ids


def _read_tevatron(path: Path, dataset: Any) -> dict[str, list[str]]:
    known_q = dataset.all_queries() if dataset is not None else None
    known_d = dataset.doc_ids() if dataset is not None else None
    out: dict[str, list[str]] = {}
    first: dict[str, int] = {}
    for lineno, line in iter_text_lines(path):
        obj = load_json_object(line, path, lineno, _TEVATRON_EXAMPLE)
        missing = [k for k in _TEVATRON_KEYS if k not in obj]
        if missing:
            raise InputError(f"Tevatron line has no {', '.join(repr(k) for k in missing)}", path=path, line=lineno,
                             hint=f"every line must look like {_TEVATRON_EXAMPLE}")
        qid = _json_id(obj["query_id"])
        if qid is None:
            raise InputError(f"invalid 'query_id' ({obj['query_id']!r})", path=path, line=lineno,
                             hint="give a non-empty string query id")
        if qid in first:
            raise InputError(f"query {qid!r} appears twice (first at line {first[qid]})", path=path, line=lineno,
                             hint="Tevatron files hold one line per query; merge the lines")
        first[qid] = lineno
        if known_q is not None and qid not in known_q:
            raise InputError(f"query {qid!r} is not a query of {dataset!r}", path=path, line=lineno,
                             hint="were the negatives written for another dataset?")
        positives = _passage_ids(obj, "positive_passages", path, lineno)
        negatives = _passage_ids(obj, "negative_passages", path, lineno)
        if known_d is not None:
            for key, ids in (("positive_passages", positives), ("negative_passages", negatives)):
                for i, docid in enumerate(ids):
                    if docid not in known_d:
                        raise InputError(f"{key}[{i}] document {docid!r} is not in the corpus of {dataset!r}",
                                         path=path, line=lineno, hint="were the negatives mined from another "
                                                                      "collection?")
        out[qid] = negatives
    return out


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _st_rows_of(path: Path) -> Iterator[tuple[str, int, dict]]:
    """``(where, n, row)``: ``where`` is ``"line"`` (JSONL) or ``"row"`` (a datasets folder)."""
    if path.is_dir():
        try:
            import datasets
        except ImportError:
            raise HardnegError(f"{path}: reading a datasets folder needs the 'datasets' package "
                               "(pip install datasets)") from None
        try:
            data = datasets.load_from_disk(str(path))
        except Exception as exc:  # a corrupt or foreign folder
            raise InputError(f"cannot load the datasets folder ({exc})", path=path,
                             hint="write it again with hardneg mine --format st") from None
        if isinstance(data, datasets.DatasetDict):
            if len(data) != 1 and "train" not in data:
                raise InputError(f"a DatasetDict with splits {sorted(data)} and no 'train'", path=path,
                                 hint="save the one split that holds the training rows")
            data = data["train"] if "train" in data else next(iter(data.values()))
        for i, row in enumerate(data, start=1):
            yield "row", i, row
        return
    for lineno, line in iter_text_lines(path):
        yield "line", lineno, load_json_object(line, path, lineno, _ST_EXAMPLE)


def _read_st(path: Path, dataset: Any) -> dict[str, list[str]]:
    qrels = dataset.qrels()
    by_query: dict[str, list[str]] = {}
    for q in dataset.all_queries().values():
        by_query.setdefault(q.text, []).append(q.query_id)
    by_text: dict[bytes, list[str]] = {}
    for doc in dataset.iter_docs():
        by_text.setdefault(_digest(doc.full_text()), []).append(doc.doc_id)
    out: dict[str, list[str]] = {}
    hint_text = "texts must be the dataset's query texts and documents as hardneg composes them " \
                "(title + ' ' + text, stripped)"
    for where, n, row in _st_rows_of(path):
        def fail(message: str, hint: str = hint_text, where: str = where, n: int = n) -> InputError:
            if where == "line":
                return InputError(message, path=path, line=n, hint=hint)
            return InputError(f"row {n}: {message}", path=path, hint=hint)

        columns: list[tuple[int, str]] = []
        for key in row:
            m = _NEG_COLUMN.match(key)
            if m:
                columns.append((int(m.group(1)), key))
            elif key == "negative":
                columns.append((1, key))
        for key in ("anchor", "positive"):
            if key not in row:
                raise fail(f"no '{key}' column", f"every row must look like {_ST_EXAMPLE}")
        if not columns:
            raise fail("no negative columns (negative_1 …)", f"every row must look like {_ST_EXAMPLE}")
        for key in ["anchor", "positive", *(k for _, k in columns)]:
            if not isinstance(row[key], str):
                raise fail(f"'{key}' must be a text, found {type(row[key]).__name__}",
                           "sentence-transformers data holds texts; null or missing cells are not allowed")
        pos_ids = by_text.get(_digest(row["positive"]))
        if pos_ids is None:
            raise fail(f"the 'positive' text is no document of the corpus ({row['positive'][:60]!r}…)")
        qids = by_query.get(row["anchor"])
        if qids is None:
            raise fail(f"the 'anchor' text is no query of the dataset ({row['anchor'][:60]!r})")
        if len(qids) > 1:  # resolve a shared query text by the row's positive
            qids = [q for q in qids if any(qrels.get(q, {}).get(d, 0) >= 1 for d in pos_ids)]
            if len(qids) != 1:
                raise fail(f"the 'anchor' text is shared by queries {by_query[row['anchor']]} and its positive "
                           "does not tell them apart", "use --format tevatron or tsv, which carry ids")
        qid = qids[0]
        positives = {d for d, g in qrels.get(qid, {}).items() if g >= 1}
        negs = out.setdefault(qid, [])
        for _, key in sorted(columns):
            ids = by_text.get(_digest(row[key]))
            if ids is None:
                raise fail(f"the '{key}' text is no document of the corpus ({row[key][:60]!r}…)")
            if len(ids) > 1 and positives & set(ids):
                raise fail(f"the '{key}' text is shared by documents {ids}, one of which is a positive of query "
                           f"{qid!r}: a positive's text cannot be a negative", "remove the negative")
            if ids[0] not in negs:
                negs.append(ids[0])
    return out
