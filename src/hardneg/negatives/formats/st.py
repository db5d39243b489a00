"""sentence-transformers' "n-tuple" data: ``anchor``, ``positive``, ``negative_1 … negative_n``, all texts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hardneg.data.formats.beir import load_json_object
from hardneg.data.lines import iter_text_lines
from hardneg.errors import HardnegError, InputError
from hardneg.io import atomic_write, commit_dir, writing
from hardneg.negatives.formats.common import ST_EXAMPLE, check_rows, positives_in

__all__ = ["read_st", "st_rows", "write_st_rows"]

_NEG_COLUMN = re.compile(r"negative_(\d+)$")
_TEXTS = "texts must be the dataset's query texts and documents as hardneg composes them (title + ' ' + text, " \
         "stripped)"


# --------------------------------------------------------------------------- writing
def st_rows(negatives: Mapping[str, Sequence[str]], queries: Mapping[str, Any], qrels: Mapping[str, Mapping[str, int]],
            docs: Mapping[str, Any], stats: dict[str, int], n: int | None = None) -> Iterator[dict[str, str]]:
    """One row per (query, positive) with the query's ``n`` negatives (default: the longest list); a query with
    fewer gets no row (``stats["short"]``), as in ST's n-tuple format (util/hard_negatives.py)."""
    if n is None:
        n = max((len(v) for v in negatives.values()), default=0)
    for qid, negs in negatives.items():
        pos = positives_in(qrels, qid, docs)
        if not pos:
            stats["no_positive"] += 1
            continue
        if len(negs) < n:
            stats["short"] += 1
            continue
        stats["queries"] += 1
        neg_cols = {f"negative_{i}": docs[d].full_text() for i, d in enumerate(negs, start=1)}
        for p in pos:
            stats["rows"] += 1
            yield {"anchor": queries[qid].text, "positive": docs[p].full_text(), **neg_cols}


def write_st_rows(path: Path, rows: Iterator[dict[str, str]], stats: dict[str, int]) -> None:
    """JSONL for a ``.jsonl``/``.json`` path, else a ``datasets`` folder (built in memory from the rows)."""
    if path.suffix.lower() in (".jsonl", ".json"):
        with atomic_write(path) as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            check_rows(path, stats)  # inside the block: nothing is committed
        return
    try:
        import datasets
    except ImportError:
        raise HardnegError(f"{path}: writing a datasets folder needs the 'datasets' package (pip install "
                           "datasets); or give the output a .jsonl suffix for JSONL that datasets loads") from None
    table = list(rows)
    check_rows(path, stats)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(path, "datasets folder"):
            datasets.Dataset.from_list(table).save_to_disk(str(tmp))
        commit_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- reading
def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _rows_of(path: Path) -> Iterator[tuple[str, int, dict]]:
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
        yield "line", lineno, load_json_object(line, path, lineno, ST_EXAMPLE)


def _negative_columns(row: dict, fail: Callable[..., InputError]) -> list[tuple[int, str]]:
    """``(i, column)`` of the row's negatives (``negative`` is ``negative_1``), its columns checked."""
    columns: list[tuple[int, str]] = []
    for key in row:
        m = _NEG_COLUMN.match(key)
        if m:
            columns.append((int(m.group(1)), key))
        elif key == "negative":
            columns.append((1, key))
    for key in ("anchor", "positive"):
        if key not in row:
            raise fail(f"no '{key}' column", f"every row must look like {ST_EXAMPLE}")
    if not columns:
        raise fail("no negative columns (negative_1 …)", f"every row must look like {ST_EXAMPLE}")
    for key in ["anchor", "positive", *(k for _, k in columns)]:
        if not isinstance(row[key], str):
            raise fail(f"'{key}' must be a text, found {type(row[key]).__name__}",
                       "sentence-transformers data holds texts; null or missing cells are not allowed")
    return sorted(columns)


def read_st(path: Path, dataset: Any) -> dict[str, list[str]]:
    """``qid -> negative doc ids`` (file order), the texts mapped back to ids with ``dataset`` (module doc of
    :mod:`hardneg.negatives.formats`)."""
    qrels = dataset.qrels()
    by_query: dict[str, list[str]] = {}
    for q in dataset.all_queries().values():
        by_query.setdefault(q.text, []).append(q.query_id)
    by_text: dict[bytes, list[str]] = {}
    for doc in dataset.iter_docs():
        by_text.setdefault(_digest(doc.full_text()), []).append(doc.doc_id)
    out: dict[str, list[str]] = {}
    for where, n, row in _rows_of(path):
        def fail(message: str, hint: str = _TEXTS, where: str = where, n: int = n) -> InputError:
            if where == "line":
                return InputError(message, path=path, line=n, hint=hint)
            return InputError(f"row {n}: {message}", path=path, hint=hint)

        columns = _negative_columns(row, fail)
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
        for _, key in columns:
            ids = by_text.get(_digest(row[key]))
            if ids is None:
                raise fail(f"the '{key}' text is no document of the corpus ({row[key][:60]!r}…)")
            if len(ids) > 1 and positives & set(ids):
                raise fail(f"the '{key}' text is shared by documents {ids}, one of which is a positive of query "
                           f"{qid!r}: a positive's text cannot be a negative", "remove the negative")
            if ids[0] not in negs:
                negs.append(ids[0])
    return out
