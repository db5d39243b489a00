"""The rules applied: to one query's candidates (:func:`select_one`) and to many (:func:`select_negatives`).

What each rule means and in which order they apply is :mod:`hardneg.negatives.rules`' module doc.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hardneg.errors import HardnegError
from hardneg.negatives.rules import RULES, NegativeRules
from hardneg.negatives.sampling import law_logits, weighted_draw

if TYPE_CHECKING:
    from hardneg.negatives.diagnostics import Diagnostics
    from hardneg.negatives.teachers import TeacherScores

__all__ = ["Selection", "max_positives", "select_negatives", "select_one", "selection_rng"]

_STREAM_SELECT = 5


@dataclass
class Selection:
    """One query's outcome: the negatives kept, and ``(docid, score)`` removed under each rule."""

    kept: list[str]
    kept_scores: list[float]
    removed: dict[str, list[tuple[str, float]]] = field(default_factory=lambda: {r: [] for r in RULES})
    no_positive_score: bool = False


def _removed_by(rules: NegativeRules, score: float, ref: float | None) -> str | None:
    """The first score rule that removes a candidate scoring ``score`` (``ref``: the positive's score)."""
    if ref is not None and rules.absolute_margin is not None and score + rules.absolute_margin > ref:
        return "absolute_margin"
    if ref is not None and rules.relative_margin is not None and score > ref - abs(ref) * rules.relative_margin:
        return "relative_margin"
    if rules.max_score is not None and score > rules.max_score:
        return "max_score"
    return None


def select_one(
    docids: Sequence[str],
    scores: Sequence[float],
    positives: Iterable[str],
    positive_scores: Sequence[float],
    rules: NegativeRules,
    n: int,
    range_max: int,
    rng: np.random.Generator | None = None,
) -> Selection:
    """Apply ``rules`` to one query's candidates (rank order, with scores); see :mod:`hardneg.negatives.rules`."""
    pos = set(positives)
    out = Selection([], [])
    ref = None
    if len(positive_scores):
        ref = float(min(positive_scores) if rules.margin_against == "min" else max(positive_scores))
    elif rules.margins or rules.weighted:
        out.no_positive_score = True
    seen: set[str] = set()
    survivors: list[tuple[str, float]] = []
    for docid, s in zip(docids, scores, strict=True):
        if docid in seen:
            continue
        seen.add(docid)
        s = float(s)
        rule = "positive" if docid in pos else _removed_by(rules, s, ref)
        if rule is None:
            survivors.append((docid, s))
        else:
            out.removed[rule].append((docid, s))
    order = sorted(range(len(survivors)), key=lambda i: -survivors[i][1])  # stable: ties keep rank order
    survivors = [survivors[i] for i in order]
    out.removed["range_min"] = survivors[: rules.range_min]
    out.removed["range_max"] = survivors[range_max:]
    window = survivors[rules.range_min : range_max]
    if rules.sampling_strategy == "top" or len(window) <= n:
        chosen, rest = window[:n], window[n:]
    else:
        if rng is None:
            raise HardnegError(f"sampling_strategy {rules.sampling_strategy} needs a random generator")
        if rules.law is not None and len(positive_scores):  # SimANS / balanced around the mean positive score
            logits = law_logits(rules.law, [w[1] for w in window], float(np.mean(positive_scores)))
            picked = set(weighted_draw(rng, logits, n))
        else:
            picked = set(rng.choice(len(window), size=n, replace=False).tolist())
        chosen = [w for i, w in enumerate(window) if i in picked]  # window order = score order
        rest = [w for i, w in enumerate(window) if i not in picked]
    out.removed["not_sampled"] = rest
    out.kept = [d for d, _ in chosen]
    out.kept_scores = [s for _, s in chosen]
    return out


def selection_rng(seed: int, step: int, qid: str) -> np.random.Generator:
    """The generator of ``random``, ``simans`` and ``balanced`` sampling: stateless in ``(seed, step, qid)``
    (exact resume)."""
    key = int.from_bytes(hashlib.blake2b(qid.encode("utf-8"), digest_size=16).digest(), "little")
    return np.random.default_rng([int(seed), _STREAM_SELECT, int(step), key])


def max_positives(positives: Mapping[str, Mapping[str, int]], qids: Iterable[str] | None = None) -> int:
    """The largest number of positives (grade >= 1) of one query (0 without any)."""
    qids = positives if qids is None else qids
    return max((sum(1 for g in positives.get(q, {}).values() if g >= 1) for q in qids), default=0)


def _teacher_scores(teacher: TeacherScores, lists: Mapping[str, list[str]], pos_of: Mapping[str, list[str]],
                    query_text: Mapping[str, str] | None,
                    doc_text: Callable[[Sequence[str]], Mapping[str, str]] | None) -> dict[str, dict[str, float]]:
    """``qid -> {docid: teacher score}`` over every query's candidates and positives."""
    if query_text is None or doc_text is None:
        raise HardnegError("a teacher needs the query and document texts")
    asked = {q: lists[q] + [p for p in pos_of[q] if p not in set(lists[q])] for q in lists}
    got = teacher.scores(asked, query_text, doc_text)
    return {q: dict(zip(asked[q], got[q], strict=True)) for q in lists}


def select_negatives(
    candidates: Mapping[str, Sequence[tuple[str, float]]],
    qrels: Mapping[str, Mapping[str, int]],
    rules: NegativeRules,
    *,
    default_n: int,
    positive_scores: Callable[[str, list[str]], Sequence[float]] | None = None,
    teacher: TeacherScores | None = None,
    query_text: Mapping[str, str] | None = None,
    doc_text: Callable[[Sequence[str]], Mapping[str, str]] | None = None,
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    step: int = 0,
    diagnostics: Diagnostics | None = None,
    max_pos: int | None = None,
    scores_out: dict[str, dict[str, float]] | None = None,
) -> dict[str, list[str]]:
    """The negatives of every query of ``candidates`` (``qid -> [(docid, score)]`` in rank order).

    Scores: the teacher's when ``teacher`` is given (candidates and positives), else the given ones;
    ``positive_scores(qid, docids)`` gives the student's scores of the positives (needed by margin
    rules and SimANS; also feeds the positive histogram). ``corpus``: the ids positives must be in to be
    scored. ``scores_out`` given: it receives ``qid -> {docid: score}`` of the kept negatives and the
    scored positives (what SimANS' training draws weigh with).
    """
    max_pos = max_positives(qrels, candidates) if max_pos is None else max_pos
    n, range_max = rules.resolve(default_n, max_pos)
    pos_of = {q: [d for d, g in qrels.get(q, {}).items() if g >= 1 and (corpus is None or d in corpus)]
              for q in candidates}
    lists = {q: list(dict.fromkeys(d for d, _ in cands)) for q, cands in candidates.items()}
    scored = _teacher_scores(teacher, lists, pos_of, query_text, doc_text) if teacher is not None else None
    out: dict[str, list[str]] = {}
    for qid, cands in candidates.items():
        docs = lists[qid]
        if scored is not None:
            scores = [scored[qid][d] for d in docs]
            pscored = {p: float(scored[qid][p]) for p in pos_of[qid]}
        else:
            first: dict[str, float] = {}
            for d, s in cands:
                first.setdefault(d, float(s))
            scores = [first[d] for d in docs]
            if positive_scores is not None and pos_of[qid]:
                pscored = dict(zip(pos_of[qid], (float(s) for s in positive_scores(qid, pos_of[qid])), strict=True))
            elif (rules.margins or rules.weighted) and pos_of[qid]:
                flags = (f"--sampling-strategy {rules.sampling_strategy}" if rules.weighted
                         else "--absolute-margin / --relative-margin")
                raise HardnegError(f"{flags} need the positives' scores, and these candidates come "
                                   "without a scorer of them: give a --teacher")
            else:
                pscored = {p: first[p] for p in pos_of[qid] if p in first}
        pscores = list(pscored.values())
        rng = selection_rng(seed, step, qid) if rules.sampled else None
        sel = select_one(docs, scores, pos_of[qid] + [d for d, g in qrels.get(qid, {}).items() if g >= 1],
                         pscores, rules, n, range_max, rng)
        out[qid] = sel.kept
        if scores_out is not None:
            scores_out[qid] = {**pscored, **dict(zip(sel.kept, sel.kept_scores, strict=True))}
        if diagnostics is not None:
            diagnostics.add(qid, sel, pscores, n)
    return out
