"""Tevatron's "relevancy judged" JSONL: one line per query with its positive and negative passages."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hardneg.data.formats.beir import load_json_object
from hardneg.data.lines import iter_text_lines
from hardneg.errors import InputError
from hardneg.negatives.formats.common import TEVATRON_EXAMPLE, TEVATRON_KEYS, json_id, positives_in

__all__ = ["read_tevatron", "tevatron_lines"]


def _passage(doc: Any) -> dict[str, str]:
    return {"docid": doc.doc_id, "title": doc.title, "text": doc.text}


def tevatron_lines(negatives: Mapping[str, Sequence[str]], queries: Mapping[str, Any],
                   qrels: Mapping[str, Mapping[str, int]], docs: Mapping[str, Any],
                   stats: dict[str, int]) -> Iterator[str]:
    """The lines of ``negatives`` (``docs``: ``docid -> Doc`` of every negative and positive); ``stats`` counts."""
    for qid, negs in negatives.items():
        pos = positives_in(qrels, qid, docs)
        if not pos:
            stats["no_positive"] += 1
            continue
        line = {"query_id": qid, "query": queries[qid].text,
                "positive_passages": [_passage(docs[d]) for d in pos],
                "negative_passages": [_passage(docs[d]) for d in negs]}
        stats["rows"] += 1
        stats["queries"] += 1
        yield json.dumps(line, ensure_ascii=False) + "\n"


def _passage_ids(obj: dict, key: str, path: Path, lineno: int) -> list[str]:
    value = obj[key]
    if not isinstance(value, list):
        raise InputError(f"'{key}' must be a list of passages, found {type(value).__name__}", path=path,
                         line=lineno, hint='each passage is {"docid": ..., "title": ..., "text": ...}')
    ids = []
    for i, passage in enumerate(value):
        docid = json_id(passage.get("docid")) if isinstance(passage, dict) else None
        if docid is None:
            what = "has no usable 'docid'" if isinstance(passage, dict) else f"is a {type(passage).__name__}"
            raise InputError(f"{key}[{i}] {what}", path=path, line=lineno,
                             hint='each passage must be an object with a non-empty string "docid"')
        ids.append(docid)
    return ids


def _query_id(obj: dict, path: Path, lineno: int, first: dict[str, int], known_q, dataset: Any) -> str:
    """The line's query id, checked: present, new, and (with a dataset) a query of it."""
    missing = [k for k in TEVATRON_KEYS if k not in obj]
    if missing:
        raise InputError(f"Tevatron line has no {', '.join(repr(k) for k in missing)}", path=path, line=lineno,
                         hint=f"every line must look like {TEVATRON_EXAMPLE}")
    qid = json_id(obj["query_id"])
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
    return qid


def read_tevatron(path: Path, dataset: Any = None) -> dict[str, list[str]]:
    """``qid -> negative doc ids`` (file order); with ``dataset`` every query and document id is checked."""
    known_q = dataset.all_queries() if dataset is not None else None
    known_d = dataset.doc_ids() if dataset is not None else None
    out: dict[str, list[str]] = {}
    first: dict[str, int] = {}
    for lineno, line in iter_text_lines(path):
        obj = load_json_object(line, path, lineno, TEVATRON_EXAMPLE)
        qid = _query_id(obj, path, lineno, first, known_q, dataset)
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
