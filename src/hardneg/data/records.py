"""Typed records with original ids.

``Doc``, ``Query`` and ``Qrel`` are what every reader yields; qrels are also
handed around as ``dict[qid, dict[docid, grade]]`` (the shape ir-measures and
pytrec_eval take).
"""

from __future__ import annotations

from typing import NamedTuple

Qrels = dict[str, dict[str, int]]


class Doc(NamedTuple):
    doc_id: str
    text: str
    title: str = ""

    def full_text(self) -> str:
        """``title + " " + text`` (stripped), BEIR's and sentence-transformers' convention."""
        return f"{self.title} {self.text}".strip() if self.title else self.text.strip()


class Query(NamedTuple):
    query_id: str
    text: str


class Qrel(NamedTuple):
    query_id: str
    doc_id: str
    relevance: int


def qrels_to_dict(qrels: list[Qrel] | tuple[Qrel, ...]) -> Qrels:
    out: Qrels = {}
    for q in qrels:
        out.setdefault(q.query_id, {})[q.doc_id] = q.relevance
    return out
