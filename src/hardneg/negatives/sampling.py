"""Sampling negatives for training (random, and from each query's top-k); none ever returns a positive.

Positives
---------
A document is a *positive* of a query when its qrels grade is ``>= 1``.
Judged non-relevant documents (grade ``0``, or negative grades) are ordinary
documents and may be drawn as negatives: they are exactly the documents a
retriever should rank below the positives.

Randomness (exact resume)
-------------------------
Sampling is stateless and counter-based: every draw builds its own generator
``np.random.default_rng([seed, stream, step, qid_key])`` where ``stream``
separates the sources (random / static), ``step`` is the caller's counter
(training step or epoch) and ``qid_key`` is a stable 128-bit hash (BLAKE2b) of
the query id (not Python's salted ``hash``). The same ``(seed, step, qid)``
always gives the same sample, independent of call order, process or how many
draws came before, so a run resumed at step ``s`` sees exactly the negatives
the uninterrupted run would have seen.

SimANS
------
:func:`simans_logits`, :func:`balanced_logits` and :func:`weighted_draw` are SimANS' and TAS-B's balanced
laws (:mod:`hardneg.negatives.rules` says what they are): ``StaticNegatives(..., law=rules.law)`` given the
pool's scores (:meth:`StaticNegatives.set_scores`) draws each step's negatives with it, the example's own
positive being ``s⁺``.

Top-k
-----
:func:`mine_negatives` keeps the first ``topk`` non-positive documents of each
query of a run, in rank order: the plain hard negatives, when no selection rule
(:mod:`hardneg.negatives.rules`) is active.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from hardneg.data.records import Qrels
from hardneg.errors import HardnegError
from hardneg.retrieval.runs import Run

__all__ = [
    "RandomNegatives",
    "StaticNegatives",
    "check_sample_size",
    "check_topk",
    "mine_negatives",
    "positive_ids",
    "balanced_logits",
    "law_logits",
    "simans_logits",
    "weighted_draw",
]

_STREAM_RANDOM = 1
_STREAM_STATIC = 2
_STREAM_FILL = 3


# --------------------------------------------------------------------------- helpers


def positive_ids(positives: Qrels, qid: str) -> set[str]:
    """The doc ids with grade ``>= 1`` for ``qid`` (empty for an unjudged query)."""
    return {docid for docid, grade in positives.get(qid, {}).items() if grade >= 1}


def check_topk(topk: int, corpus_size: int | None = None) -> int:
    """Raise :class:`HardnegError` unless ``1 <= topk`` (and ``topk <= corpus_size``)."""
    if isinstance(topk, bool) or not isinstance(topk, int | np.integer) or topk < 1:
        raise HardnegError(f"topk must be a positive integer; got {topk!r}")
    if corpus_size is not None and topk > corpus_size:
        raise HardnegError(
            f"topk={topk} is larger than the corpus ({corpus_size} documents); "
            "pick a topk no larger than the number of documents"
        )
    return int(topk)


def check_sample_size(n: int, available: int, qid: str | None = None) -> int:
    """Raise :class:`HardnegError` unless ``0 <= n <= available``."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise HardnegError(f"the number of negatives must be a non-negative integer; got {n!r}")
    if n > available:
        who = f" for query {qid!r}" if qid is not None else ""
        raise HardnegError(
            f"cannot draw {n} distinct negatives{who}: only {available} non-positive "
            "documents are available; lower the number of negatives per query"
        )
    return int(n)


def _qid_key(qid: str) -> int:
    return int.from_bytes(hashlib.blake2b(qid.encode("utf-8"), digest_size=16).digest(), "little")


def _rng(seed: int, stream: int, step: int, qid: str) -> np.random.Generator:
    if step < 0:
        raise HardnegError(f"step must be non-negative; got {step}")
    return np.random.default_rng([int(seed), stream, int(step), _qid_key(qid)])


def _draw_excluding(
    rng: np.random.Generator, pool_size: int, n: int, excluded: set[int]
) -> list[int]:
    """``n`` distinct indices in ``[0, pool_size)`` not in ``excluded``, uniformly.

    ``excluded`` must only hold indices in range. Rejection sampling when the
    request is small relative to the pool (the usual case: a few negatives out
    of millions of docs); an explicit permutation otherwise.
    """
    available = pool_size - len(excluded)
    if n == 0:
        return []
    if 4 * (n + len(excluded)) >= pool_size:
        allowed = np.setdiff1d(
            np.arange(pool_size), np.fromiter(excluded, dtype=np.int64, count=len(excluded))
        )
        assert allowed.size == available
        return [int(i) for i in rng.choice(allowed, size=n, replace=False)]
    seen = set(excluded)
    chosen: list[int] = []
    while len(chosen) < n:
        for i in rng.integers(0, pool_size, size=2 * (n - len(chosen)) + 8).tolist():
            if i not in seen:
                seen.add(i)
                chosen.append(i)
                if len(chosen) == n:
                    break
    return chosen


def _doc_index(doc_ids: Sequence[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, docid in enumerate(doc_ids):
        if docid in index:
            raise HardnegError(
                f"document id {docid!r} occurs twice in the corpus (positions {index[docid]} "
                f"and {i}); doc ids must be unique"
            )
        index[docid] = i
    return index


def simans_logits(scores: Sequence[float], pos_score: float, a: float, b: float) -> np.ndarray:
    """``log p`` up to a constant of SimANS' law: ``-a · (s - pos_score - b)²`` per candidate score ``s``."""
    s = np.asarray(scores, dtype=np.float64)
    return -float(a) * (s - float(pos_score) - float(b)) ** 2


#: margin bins of the ``balanced`` law (TAS-B's 10)
BALANCED_BINS = 10


def balanced_logits(scores: Sequence[float], pos_score: float, bins: int = BALANCED_BINS) -> np.ndarray:
    """``log p`` up to a constant of TAS-B's balanced law: the margins ``pos_score - s`` in ``bins`` equal-width
    bins over their range; ``-log(candidates in the bin)``, so each non-empty bin is drawn equally often."""
    margins = float(pos_score) - np.asarray(scores, dtype=np.float64)
    low, high = float(margins.min()), float(margins.max())
    if high <= low:
        return np.zeros(len(margins))
    which = np.minimum(((margins - low) / (high - low) * bins).astype(np.int64), bins - 1)
    return -np.log(np.bincount(which, minlength=bins)[which].astype(np.float64))


def law_logits(law: tuple, scores: Sequence[float], pos_score: float) -> np.ndarray:
    """The logits of ``law`` (:attr:`hardneg.negatives.rules.NegativeRules.law`) over candidate ``scores``."""
    if law[0] == "simans":
        return simans_logits(scores, pos_score, law[1], law[2])
    if law[0] == "balanced":
        return balanced_logits(scores, pos_score)
    raise HardnegError(f"unknown sampling law {law!r}")


def weighted_draw(rng: np.random.Generator, logits: np.ndarray, n: int) -> list[int]:
    """``n`` distinct indices drawn one after another with probability ``∝ exp(logits)`` among those left
    (the Gumbel-top-k trick: the first index has exactly that probability; no weight underflows to 0)."""
    keys = np.asarray(logits, dtype=np.float64) + rng.gumbel(size=len(logits))
    return [int(i) for i in np.argsort(-keys, kind="stable")[:n]]


# --------------------------------------------------------------------------- sources


class RandomNegatives:
    """Uniform negatives over the corpus, excluding the query's positives.

    ``sample(qid, n, step)`` returns ``n`` distinct doc ids drawn uniformly,
    without replacement, from ``doc_ids`` minus the positives (grade ``>= 1``)
    of ``qid``. Deterministic in ``(seed, step, qid)`` (see the module doc).
    """

    def __init__(self, doc_ids: Sequence[str], positives: Qrels, seed: int = 0) -> None:
        self.doc_ids = list(doc_ids)
        self._index = _doc_index(self.doc_ids)
        self.positives = positives
        self.seed = int(seed)

    def _excluded(self, qid: str, also: Iterable[str] = ()) -> set[int]:
        out = {self._index[d] for d in positive_ids(self.positives, qid) if d in self._index}
        out.update(self._index[d] for d in also if d in self._index)
        return out

    def available(self, qid: str) -> int:
        """How many distinct negatives ``qid`` can get (corpus minus its positives)."""
        return len(self.doc_ids) - len(self._excluded(qid))

    def validate(self, n: int, qids: Iterable[str] | None = None) -> None:
        """Raise before training if some query (default: every judged one) can't get ``n``."""
        for qid in self.positives if qids is None else qids:
            check_sample_size(n, self.available(qid), qid)

    def sample(self, qid: str, n: int, step: int) -> list[str]:
        """``n`` distinct uniform negatives for ``qid`` at counter ``step``."""
        return self._sample(qid, n, step, (), _STREAM_RANDOM)

    def _sample(
        self, qid: str, n: int, step: int, also_exclude: Iterable[str], stream: int
    ) -> list[str]:
        excluded = self._excluded(qid, also_exclude)
        check_sample_size(n, len(self.doc_ids) - len(excluded), qid)
        rng = _rng(self.seed, stream, step, qid)
        return [self.doc_ids[i] for i in _draw_excluding(rng, len(self.doc_ids), n, excluded)]


class StaticNegatives:
    """Hard negatives drawn from each query's top-``topk`` retrieved documents (STAR).

    ``candidates`` maps a query id to its retrieved doc ids in rank order (e.g.
    from :func:`mine_negatives` or :func:`hardneg.negatives.sources.load_candidates`). Positives (grade
    ``>= 1``) and repeated ids are removed first, then the first ``topk`` are
    kept: the pool is the top-``topk`` *non-positive* documents.

    ``sample(qid, n, step)`` draws ``n`` distinct docs uniformly, without
    replacement, from the pool. When the pool holds fewer than ``n`` docs (or
    the query has no candidates), all of it is used and the rest is filled with
    uniform random negatives (not positives, not already chosen); every such
    call increments :attr:`fallback_count` (and :attr:`fallback_docs` by the
    number of filled docs). The counters are diagnostics only: they never
    influence a draw. Deterministic in ``(seed, step, qid)`` and the current
    candidates.

    ``replace(candidates)`` swaps in freshly mined candidates (ANCE-style
    periodic refresh); a resumed run must load the same candidates that were
    active at the step it resumes from.

    ``law`` (``("simans", a, b)`` or ``("balanced",)``): draws follow that law
    instead of the uniform one (:func:`law_logits`, :func:`weighted_draw`), over the scores given by
    :meth:`set_scores` (``qid -> {docid: score}``, the pool's documents and
    the query's positives). ``s⁺`` is the example's own positive (``pos`` of
    :meth:`sample`), else the mean of the query's positives' scores; a query
    with no positive score, or a pool document without a score, is an error
    (the caller mined without keeping scores).
    """

    def __init__(
        self,
        candidates: Mapping[str, Sequence[str]],
        positives: Qrels,
        doc_ids: Sequence[str],
        topk: int = 200,
        seed: int = 0,
        law: tuple | None = None,
    ) -> None:
        self.topk = check_topk(topk, len(doc_ids))
        self.law = law
        #: SimANS: each pool's scores (aligned with it; NaN: none given) and the positives' scores, per query
        self._pool_scores: dict[str, np.ndarray] = {}
        self._pos_scores: dict[str, dict[str, float]] = {}
        self.seed = int(seed)
        self.positives = positives
        self._random = RandomNegatives(doc_ids, positives, seed=seed)
        self.fallback_count = 0
        self.fallback_docs = 0
        self._pools: dict[str, list[str]] = {}
        self.replace(candidates)

    @classmethod
    def from_run(
        cls,
        run: Run,
        positives: Qrels,
        doc_ids: Sequence[str],
        topk: int = 200,
        seed: int = 0,
    ) -> StaticNegatives:
        """Build from a retrieval run (the top-``topk`` non-positive docs of each query)."""
        check_topk(topk, len(doc_ids))
        return cls(mine_negatives(run, positives, topk), positives, doc_ids, topk, seed)

    @property
    def doc_ids(self) -> list[str]:
        return self._random.doc_ids

    def replace(self, candidates: Mapping[str, Sequence[str]]) -> None:
        """Swap in new candidate lists (all queries at once); validates doc ids."""
        index = self._random._index
        pools: dict[str, list[str]] = {}
        for qid, docs in candidates.items():
            pos = positive_ids(self.positives, qid)
            seen: set[str] = set()
            pool: list[str] = []
            for docid in docs:
                if docid in pos or docid in seen:
                    continue
                if docid not in index:
                    raise HardnegError(
                        f"candidate document {docid!r} of query {qid!r} is not in the corpus; "
                        "were the negatives mined from a different collection?"
                    )
                seen.add(docid)
                pool.append(docid)
                if len(pool) == self.topk:
                    break
            pools[qid] = pool
        self._pools = pools
        self._pool_scores, self._pos_scores = {}, {}  # new pools: their scores come with set_scores

    def set_scores(self, scores: Mapping[str, Mapping[str, float]]) -> None:
        """The mining model's scores (``qid -> {docid: score}``) the weighted law draws with: the pool's documents
        and the query's positives (all queries at once, after each :meth:`replace`). Kept as one float64 array per pool
        (not a dict per query: MS MARCO's pools hold 10⁸ documents)."""
        self._pool_scores, self._pos_scores = {}, {}
        for qid, pool in self._pools.items():
            got = scores.get(qid, {})
            self._pool_scores[qid] = np.fromiter((got.get(d, np.nan) for d in pool), dtype=np.float64,
                                                 count=len(pool))
            self._pos_scores[qid] = {p: float(got[p]) for p in positive_ids(self.positives, qid) if p in got}

    def scores(self, qid: str) -> dict[str, float]:
        """The scores the weighted law draws ``qid``'s negatives with: its pool's and its positives' (those given)."""
        pool = dict(zip(self._pools.get(qid, ()), self._pool_scores.get(qid, np.array([])).tolist(), strict=False))
        return {**{d: s for d, s in pool.items() if s == s}, **self._pos_scores.get(qid, {})}

    def _weighted_pick(self, qid: str, pool: list[str], n: int, pos: str | None,
                     rng: np.random.Generator) -> list[str]:
        values = self._pool_scores.get(qid)
        if values is None or np.isnan(values).any():
            missing = pool[0] if values is None else pool[int(np.flatnonzero(np.isnan(values))[0])]
            raise HardnegError(f"--sampling-strategy {self.law[0] if self.law else ''} needs the mining scores of "
                               f"query {qid!r}'s candidates ({missing!r} has none): mine them with it (scores are "
                               "kept with the run)")
        positives = self._pos_scores.get(qid, {})
        if pos is not None and pos in positives:
            ref = positives[pos]
        elif positives:
            ref = float(np.mean(list(positives.values())))
        else:  # no positive score: uniform (as the selection rules do)
            return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
        assert self.law is not None
        return [pool[i] for i in weighted_draw(rng, law_logits(self.law, values, ref), n)]

    def pool(self, qid: str) -> list[str]:
        """The current top-``topk`` non-positive candidates of ``qid`` (a copy)."""
        return list(self._pools.get(qid, ()))

    def validate(self, n: int, qids: Iterable[str] | None = None) -> None:
        """Raise before training if some query can't get ``n`` negatives even with fallback."""
        self._random.validate(n, qids)

    def sample(self, qid: str, n: int, step: int, pos: str | None = None) -> list[str]:
        """``n`` distinct negatives for ``qid`` at counter ``step`` (see the class doc; ``pos``: the example's
        positive, SimANS' ``s⁺``)."""
        pool = self._pools.get(qid, [])
        check_sample_size(n, self._random.available(qid), qid)
        rng = _rng(self.seed, _STREAM_STATIC, step, qid)
        if len(pool) > n and self.law is not None:
            return self._weighted_pick(qid, pool, n, pos, rng)
        if len(pool) >= n:
            return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
        chosen = [pool[i] for i in rng.permutation(len(pool))]
        missing = n - len(chosen)
        self.fallback_count += 1
        self.fallback_docs += missing
        # The fill has its own stream of the same (seed, step, qid) and excludes the pool.
        return chosen + self._random._sample(qid, missing, step, chosen, _STREAM_FILL)


# --------------------------------------------------------------------------- top-k


def mine_negatives(run: Run, positives: Qrels, topk: int = 200) -> dict[str, list[str]]:
    """The first ``topk`` non-positive docs of each query of ``run``, in rank order.

    The run's list order is its ranking (see :mod:`hardneg.retrieval.runs`).
    Positives (grade ``>= 1``) and repeated ids are skipped; a query whose list
    holds only positives maps to ``[]``.
    """
    topk = check_topk(topk)
    out: dict[str, list[str]] = {}
    for qid, results in run.items():
        pos = positive_ids(positives, qid)
        seen: set[str] = set()
        negs: list[str] = []
        for docid, _score in results:
            if docid in pos or docid in seen:
                continue
            seen.add(docid)
            negs.append(docid)
            if len(negs) == topk:
                break
        out[qid] = negs
    return out
