"""A teacher fusing BM25 and dense models (``--teacher fusion:bm25+minilm`` or ``rrf:bm25+minilm``), and
:func:`open_teacher`, which opens any ``--teacher`` behind its score cache.

A fusion's components are teachers of their own (``bm25``, or any name :func:`~hardneg.negatives.teachers.
load_teacher` loads), each behind its own :class:`~hardneg.negatives.teachers.TeacherScores` cache: a
component's raw score of a pair is computed once and reused by any fusion (or single teacher) naming it.
The fused score of a document depends on the other documents asked for with it for the same query, so it is
computed per request, never cached:

* ``fusion:`` (min-max sum): each component's scores over the query's requested documents are min-max
  normalised to ``[0, 1]`` (all equal: 0), then summed (the normalised-sum fusion of Fox & Shaw, 1994);
* ``rrf:`` (reciprocal rank fusion, Cormack et al., 2009): ``Σ_c 1 / (60 + rank_c)``, ``rank_c`` the
  document's 1-based rank among the requested documents by component ``c`` (ties: request order).

What is requested together is each caller's candidate list: mining's candidates and positives of a query,
static/STAR/ANCE distillation's whole negative pool and positives of the query, ADORE's step top-K and
positives (:mod:`hardneg.train.distill`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from hardneg.errors import HardnegError
from hardneg.negatives.teachers import TeacherScores, load_teacher

__all__ = ["FUSIONS", "RRF_K", "FusedScores", "fuse", "open_teacher", "parse_fusion"]

#: ``--teacher`` prefixes of a fusion and how each fuses
FUSIONS = {"fusion": "minmax", "rrf": "rrf"}
#: RRF's constant (Cormack et al., 2009)
RRF_K = 60


def parse_fusion(name: str) -> tuple[str, list[str]] | None:
    """``("minmax" | "rrf", [component names])`` of a fusion teacher name, ``None`` for a single teacher."""
    prefix, sep, rest = name.partition(":")
    if not sep or prefix not in FUSIONS:
        return None
    parts = [p.strip() for p in rest.split("+")]
    if len(parts) < 2 or not all(parts):
        raise HardnegError(f"--teacher {name}: a fusion names two or more teachers joined by '+', e.g. "
                           f"{prefix}:bm25+minilm")
    return FUSIONS[prefix], parts


def fuse(columns: Sequence[np.ndarray], how: str) -> np.ndarray:
    """The fused scores of one query's documents from each component's scores of them (same order)."""
    out = np.zeros(len(columns[0]), dtype=np.float64)
    for x in columns:
        x = np.asarray(x, dtype=np.float64)
        if how == "minmax":
            span = x.max() - x.min() if x.size else 0.0
            out += (x - x.min()) / span if span > 0 else 0.0
        elif how == "rrf":
            order = np.argsort(-x, kind="stable")
            rank = np.empty(x.size, dtype=np.float64)
            rank[order] = np.arange(1, x.size + 1)
            out += 1.0 / (RRF_K + rank)
        else:
            raise HardnegError(f"unknown fusion {how!r}; use minmax or rrf")
    return out


class FusedScores:
    """Several teachers' cached scores fused per query (:func:`fuse`); the interface of
    :class:`~hardneg.negatives.teachers.TeacherScores` (``scores``, ``forget``, ``scored``, ``hits``)."""

    listwise = True
    kind = "fusion"

    def __init__(self, parts: Sequence[TeacherScores], how: str) -> None:
        self.parts, self.how = list(parts), how
        names = "+".join(p.teacher.fingerprint for p in self.parts)
        self.fingerprint = f"{how}-" + hashlib.sha256(names.encode()).hexdigest()[:16]

    @property
    def teacher(self) -> FusedScores:  # what a caller reports (kind, fingerprint)
        return self

    @property
    def scored(self) -> int:
        return sum(p.scored for p in self.parts)

    @property
    def hits(self) -> int:
        return sum(p.hits for p in self.parts)

    def reload(self) -> None:
        for p in self.parts:
            p.reload()

    def forget(self, qids: Iterable[str]) -> None:
        qids = list(qids)
        for p in self.parts:
            p.forget(qids)

    def scores(self, requests: Mapping[str, Sequence[str]], query_text: Mapping[str, str],
               doc_text: Callable[[Sequence[str]], Mapping[str, str]]) -> dict[str, np.ndarray]:
        """Each query's fused scores of its requested documents (fused over its distinct requested documents)."""
        unique = {q: list(dict.fromkeys(docs)) for q, docs in requests.items()}
        got = [p.scores(unique, query_text, doc_text) for p in self.parts]
        out = {}
        for q, docs in requests.items():
            fused = dict(zip(unique[q], fuse([g[q] for g in got], self.how), strict=True)) if docs else {}
            out[q] = np.array([fused[d] for d in docs], dtype=np.float64)
        return out


def open_teacher(name: str, *, dataset, cache_dir: str | Path | None, device: str | None = None,
                 batch_size: int = 64) -> TeacherScores | FusedScores:
    """``--teacher name`` behind its score cache (``<cache_dir>/teacher_scores/``, keyed by teacher and
    corpus): a single teacher (:func:`~hardneg.negatives.teachers.load_teacher`) or a fusion of several."""
    fusion = parse_fusion(name)
    names = [name] if fusion is None else fusion[1]
    key = dataset.fingerprint()
    caches = [TeacherScores.under(load_teacher(n, device=device, batch_size=batch_size, dataset=dataset,
                                               cache_dir=cache_dir), cache_dir, key) for n in names]
    return caches[0] if fusion is None else FusedScores(caches, fusion[0])
