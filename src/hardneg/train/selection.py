"""Which retrieved documents become negatives: one rule set for ``mine``, static/STAR, ANCE and ADORE.

:class:`NegativeRules` carries sentence-transformers' ``mine_hard_negatives`` settings
(``sentence_transformers/util/hard_negatives.py``, v6.2) with their names and meaning, plus a
``teacher`` and ``margin_against``. For one query, :func:`select_one` applies them in ST's order:

1. candidates are the retrieved documents in rank order (repeated ids dropped); with a ``teacher``
   every candidate *and every positive* is rescored by it first;
2. positives (qrels grade >= 1) are removed (rule ``positive``);
3. ``absolute_margin`` removes a candidate when ``score + margin > ref``; ``relative_margin``
   (NV-Retriever's TopK-PercPos: 0.05 keeps only scores below 95% of the positive's) when
   ``score > ref - |ref| * margin``; ``max_score`` when ``score > max_score``. ``ref`` is the score of
   the query's lowest-scored positive (``margin_against min``, ST's choice: the safe side) or its
   highest (``max``). Each document is counted under the first rule that removes it;
4. the survivors are sorted by score (descending) and the window ``[range_min, range_max)`` of them
   is kept (rules ``range_min``, ``range_max``);
5. ``sampling_strategy top`` keeps the first ``num_negatives`` of the window, ``random`` draws
   ``num_negatives`` of them uniformly and sorts them by score (rule ``not_sampled`` for the rest).

A positive is never returned and never more than ``num_negatives`` documents.
:func:`NegativeRules.resolve` gives ST's defaults: ``range_max = range_min + num_negatives ×
(10 with a score rule, else 1) + max_positives``, and :meth:`NegativeRules.depth` (``range_max +
max_positives``) is how many documents a caller retrieves, as ST does.

Differences from ``mine_hard_negatives`` (deliberate):

- documents and positives are ids (qrels), not texts: ST dedups the corpus by text and takes every
  row sharing an anchor text as a positive; here judged grade-0 documents are ordinary candidates;
- ties are broken by retrieval rank (a stable sort); ST's ``torch.topk`` leaves their order open;
- a ``teacher`` rescores whenever it is given (ST's ``cross_encoder`` only when a score rule is set),
  and may be any bi-encoder hardneg loads as well as a CrossEncoder folder;
- ``margin_against max`` is an option (ST: always the minimum);
- ``random`` draws from ``numpy.random.default_rng([seed, 5, step, blake2b(qid)])``, not Python's
  global ``random``, so a draw is reproducible and resumable;
- ``num_negatives`` defaults to the caller's own count (``--topk`` for ``mine`` and training, the
  whole list for ADORE), not 3, shrunk to fit a given ``[range_min, range_max)`` (ST raises);
  a query left with fewer gets fewer (ST's ``triplet`` output does the same; its ``n-tuple`` drops
  the row); training's :class:`~hardneg.train.negatives.StaticNegatives` then fills each draw
  with uniform random negatives (its fallback);
- scores are the model's own (dot product; cosine for a normalised model such as MiniLM); ST always
  normalises embeddings;
- a query without any positive in the corpus has no margin reference: margin rules do not apply to
  it (counted as ``no_positive_score``);
- there is no ``min_score``.

ADORE (:mod:`hardneg.train.adore`) applies the same rules to each step's top-K with the current query
tower's scores (or the teacher's): a removed document is dropped from the ranked list before pairs
and ranks are formed (the list is compacted, padded with "no result"), so it is neither a negative
nor counted as an error above a positive by the ΔM weights.

Teacher scores are cached by (teacher fingerprint, corpus fingerprint, query id, doc id) in memory
and on disk (``<cache>/teacher_scores/<key>/part-*.tsv``, each line also holding a hash of the query
text, so a changed query is rescored), so an ANCE refresh or the next ADORE step does not rescore.

:class:`Diagnostics` counts candidates, removals per rule, queries left short, and histograms of
positive / kept / removed scores, written as ``negatives_diagnostics.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.errors import HardnegError

__all__ = [
    "RULES",
    "Diagnostics",
    "NegativeRules",
    "Selection",
    "Teacher",
    "TeacherScores",
    "doc_texts",
    "is_cross_encoder",
    "load_teacher",
    "max_positives",
    "select_negatives",
    "select_one",
]

SAMPLING_STRATEGIES = ("top", "random")
MARGIN_AGAINST = ("min", "max")
#: why a candidate was not returned, in the order the rules apply
RULES = ("positive", "absolute_margin", "relative_margin", "max_score", "range_min", "range_max", "not_sampled")
_STREAM_SELECT = 5
DIAGNOSTICS_FILE = "negatives_diagnostics.json"


# ----------------------------------------------------------------------------- the rules
@dataclass(frozen=True)
class NegativeRules:
    """sentence-transformers' negative-mining settings (same names), a teacher and ``margin_against``."""

    range_min: int = 0
    range_max: int | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    sampling_strategy: str = "top"
    num_negatives: int | None = None
    teacher: str | None = None
    margin_against: str = "min"

    def __post_init__(self) -> None:
        def whole(name: str, value: Any, low: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise HardnegError(f"{name} must be a whole number >= {low}, not {value!r}")

        whole("range_min", self.range_min, 0)
        if self.range_max is not None:
            whole("range_max", self.range_max, 1)
            if self.range_max <= self.range_min:
                raise HardnegError(f"range_max ({self.range_max}) must be larger than range_min ({self.range_min})")
        if self.num_negatives is not None:
            whole("num_negatives", self.num_negatives, 1)
        for name in ("absolute_margin", "relative_margin", "max_score"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not np.isfinite(float(value))):
                raise HardnegError(f"{name} must be a finite number, not {value!r}")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise HardnegError(f"relative_margin must be in [0, 1) (0.05 = NV-Retriever's 95%), "
                               f"not {self.relative_margin}")
        if self.sampling_strategy not in SAMPLING_STRATEGIES:
            raise HardnegError(f"sampling_strategy must be top or random, not {self.sampling_strategy!r}")
        if self.margin_against not in MARGIN_AGAINST:
            raise HardnegError(f"margin_against must be min or max, not {self.margin_against!r}")

    @classmethod
    def from_config(cls, cfg: Any) -> NegativeRules:
        """The rules of a :class:`~hardneg.train.config.TrainConfig` (fields of the same names)."""
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})

    @property
    def margins(self) -> bool:
        """A rule needs the positives' scores."""
        return self.absolute_margin is not None or self.relative_margin is not None

    @property
    def score_rules(self) -> bool:
        return self.margins or self.max_score is not None

    @property
    def active(self) -> bool:
        """Anything but the plain "first n non-positive documents in rank order"."""
        return self != NegativeRules(num_negatives=self.num_negatives)

    def resolve(self, default_n: int, max_pos: int) -> tuple[int, int]:
        """``(num_negatives, range_max)``: ``default_n`` and ST's default window when unset."""
        n = self.num_negatives or int(default_n)
        range_max = self.range_max
        if range_max is None:
            range_max = self.range_min + n * (10 if self.score_rules else 1) + max_pos
        if self.num_negatives is None:  # a caller's default count shrinks to fit a given window
            n = min(n, range_max - self.range_min)
        if n > range_max - self.range_min:
            raise HardnegError(
                f"cannot select {n} negatives per query: only {range_max - self.range_min} candidates remain "
                f"after skipping the first range_min={self.range_min} of range_max={range_max}; lower "
                "--num-negatives or --range-min, or raise --range-max")
        return n, range_max

    def depth(self, default_n: int, max_pos: int) -> int:
        """How many documents to retrieve per query: ``range_max + max_positives`` (as ST)."""
        return self.resolve(default_n, max_pos)[1] + max_pos

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Selection:
    """One query's outcome: the negatives kept, and ``(docid, score)`` removed under each rule."""

    kept: list[str]
    kept_scores: list[float]
    removed: dict[str, list[tuple[str, float]]] = field(default_factory=lambda: {r: [] for r in RULES})
    no_positive_score: bool = False


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
    """Apply ``rules`` to one query's candidates (rank order, with scores); see the module doc."""
    pos = set(positives)
    out = Selection([], [])
    ref = None
    if len(positive_scores):
        ref = float(min(positive_scores) if rules.margin_against == "min" else max(positive_scores))
    elif rules.margins:
        out.no_positive_score = True
    seen: set[str] = set()
    survivors: list[tuple[str, float]] = []
    for docid, s in zip(docids, scores, strict=True):
        if docid in seen:
            continue
        seen.add(docid)
        s = float(s)
        if docid in pos:
            rule = "positive"
        elif ref is not None and rules.absolute_margin is not None and s + rules.absolute_margin > ref:
            rule = "absolute_margin"
        elif ref is not None and rules.relative_margin is not None and s > ref - abs(ref) * rules.relative_margin:
            rule = "relative_margin"
        elif rules.max_score is not None and s > rules.max_score:
            rule = "max_score"
        else:
            survivors.append((docid, s))
            continue
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
            raise HardnegError("sampling_strategy random needs a random generator")
        picked = set(rng.choice(len(window), size=n, replace=False).tolist())
        chosen = [w for i, w in enumerate(window) if i in picked]  # window order = score order
        rest = [w for i, w in enumerate(window) if i not in picked]
    out.removed["not_sampled"] = rest
    out.kept = [d for d, _ in chosen]
    out.kept_scores = [s for _, s in chosen]
    return out


def selection_rng(seed: int, step: int, qid: str) -> np.random.Generator:
    """The generator of ``random`` sampling: stateless in ``(seed, step, qid)`` (exact resume)."""
    key = int.from_bytes(hashlib.blake2b(qid.encode("utf-8"), digest_size=16).digest(), "little")
    return np.random.default_rng([int(seed), _STREAM_SELECT, int(step), key])


def max_positives(positives: Mapping[str, Mapping[str, int]], qids: Iterable[str] | None = None) -> int:
    """The largest number of positives (grade >= 1) of one query (0 without any)."""
    qids = positives if qids is None else qids
    return max((sum(1 for g in positives.get(q, {}).values() if g >= 1) for q in qids), default=0)


# ----------------------------------------------------------------------------- diagnostics
class Diagnostics:
    """What the rules did over many queries (and, for ADORE, many steps)."""

    def __init__(self, rules: NegativeRules, where: str, n: int | None = None) -> None:
        self.rules, self.where, self.n = rules, where, n
        self.queries = 0
        self.candidates = 0
        self.kept = 0
        self.removed = dict.fromkeys(RULES, 0)
        self.short: dict[str, int] = {}
        self.no_positive_score = 0
        self.scores: dict[str, list[float]] = {"positive": [], "kept": [], "removed": []}
        self.on_short = "fewer negatives for those queries"

    def add(self, qid: str, sel: Selection, positive_scores: Sequence[float], n: int | None = None) -> None:
        self.queries += 1
        self.candidates += len(sel.kept) + sum(len(v) for v in sel.removed.values())
        self.kept += len(sel.kept)
        for rule, docs in sel.removed.items():
            self.removed[rule] += len(docs)
            if rule not in ("positive", "not_sampled", "range_max"):  # score-based removals
                self.scores["removed"].extend(s for _, s in docs)
        self.scores["kept"].extend(sel.kept_scores)
        self.scores["positive"].extend(float(s) for s in positive_scores)
        self.no_positive_score += int(sel.no_positive_score)
        want = n if n is not None else self.n
        if want is not None and len(sel.kept) < want:
            self.short[qid] = len(sel.kept)

    def summary(self, bins: int = 20) -> dict[str, Any]:
        finite = [s for v in self.scores.values() for s in v if np.isfinite(s)]
        edges = np.linspace(min(finite), max(finite), bins + 1) if finite else np.linspace(0, 1, bins + 1)
        if finite and edges[0] == edges[-1]:
            edges = np.linspace(edges[0] - 0.5, edges[0] + 0.5, bins + 1)
        hist = {k: np.histogram(np.asarray(v, dtype=np.float64), bins=edges)[0].tolist()
                for k, v in self.scores.items()}
        return {
            "where": self.where, "rules": self.rules.describe(), "num_negatives": self.n,
            "queries": self.queries, "candidates": self.candidates, "kept": self.kept,
            "removed": dict(self.removed),
            "queries_short": len(self.short), "short_examples": dict(sorted(self.short.items())[:20]),
            "what_was_done_when_short": self.on_short,
            "queries_without_positive_score": self.no_positive_score,
            "histogram": {"edges": edges.tolist(), **hist,
                          "note": "removed = removed by a score or rank rule (margins, max_score, range_min)"},
        }

    def step_record(self) -> dict[str, float]:
        """The per-step log values (ADORE): candidates and removals per rule."""
        return {"candidates": float(self.candidates),
                **{f"removed_{r}": float(v) for r, v in self.removed.items() if r != "not_sampled"}}


def write_diagnostics(path: str | Path, events: Sequence[Diagnostics | dict]) -> Path:
    """Write ``{"events": [...]}`` to ``path`` (atomically)."""
    from hardneg.io import write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"events": [e.summary() if isinstance(e, Diagnostics) else e for e in events]})
    return path


# ----------------------------------------------------------------------------- teachers
class Teacher:
    """Scores ``(query text, document text)`` pairs; ``fingerprint`` names its weights."""

    fingerprint: str = ""
    kind: str = ""

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


#: document vectors a bi-encoder teacher keeps in memory (ADORE rescoring every step re-meets the same documents)
DOC_VECTOR_MEMO = 1_000_000
#: (query, document) pairs scored at a time: a whole corpus per query (a deep rule window on a small corpus) for
#: thousands of queries would otherwise be one (pairs x dim) matrix, 14 GB for NFCorpus's training queries
PAIR_CHUNK = 65_536


class BiEncoderTeacher(Teacher):
    """A :class:`~hardneg.model.encoder.DualEncoder`: ``<query vector, document vector>``."""

    kind = "bi-encoder"

    def __init__(self, model, batch_size: int = 64) -> None:
        from hardneg.model.encoder import weights_fingerprint

        self.model, self.batch_size = model, batch_size
        self._doc_vectors: dict[str, np.ndarray] = {}  # by text: each document is encoded once per run
        ident = {"doc": model.side_identity("doc"), "query": model.side_identity("query"),
                 "query_weights": weights_fingerprint(model.query_model)}
        self.fingerprint = "bi-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        import torch

        from hardneg.index.encode import encode_texts

        uq, ud = list(dict.fromkeys(queries)), list(dict.fromkeys(docs))
        was = self.model.training
        self.model.eval()
        new = [t for t in ud if t not in self._doc_vectors]
        if len(self._doc_vectors) + len(new) > DOC_VECTOR_MEMO:  # bounded: start over with this call's documents
            self._doc_vectors.clear()
            new = ud
        with torch.no_grad():
            qv = encode_texts(self.model, uq, "query", batch_size=self.batch_size)
            if new:
                self._doc_vectors.update(zip(new, encode_texts(self.model, new, "doc", batch_size=self.batch_size),
                                             strict=True))
        if was:
            self.model.train()
        row = {t: i for i, t in enumerate(uq)}
        qi = np.array([row[t] for t in queries], dtype=np.int64)
        out = np.empty(len(docs), dtype=np.float64)
        for a in range(0, len(docs), PAIR_CHUNK):  # never a (pairs x dim) matrix of the whole request
            dv = np.stack([self._doc_vectors[t] for t in docs[a:a + PAIR_CHUNK]])
            out[a:a + len(dv)] = np.einsum("nd,nd->n", qv[qi[a:a + PAIR_CHUNK]], dv)
        return out


class CrossEncoderTeacher(Teacher):
    """A sentence-transformers ``CrossEncoder`` folder: ``CrossEncoder.predict`` (its activation included)."""

    kind = "cross-encoder"

    def __init__(self, folder: str | Path, device: str | None = None, batch_size: int = 32) -> None:
        from sentence_transformers import CrossEncoder

        from hardneg.model.encoder import weights_fingerprint

        try:
            self.model = CrossEncoder(str(folder), device=device, local_files_only=True)
        except Exception as exc:  # a broken folder: say which and why
            raise HardnegError(f"{folder}: cannot load this CrossEncoder teacher: {exc}") from exc
        self.batch_size = batch_size
        act = type(self.model.activation_fn).__name__
        self.fingerprint = "ce-" + hashlib.sha256(
            f"{weights_fingerprint(self.model)}:{act}:{self.model.max_length}".encode()).hexdigest()[:16]

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        if not queries:
            return np.zeros(0)
        out = self.model.predict(list(zip(queries, docs, strict=True)), batch_size=self.batch_size,
                                 show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float64).reshape(len(queries))


def is_cross_encoder(folder: str | Path) -> bool:
    """A sentence-transformers CrossEncoder folder: ``config_sentence_transformers.json`` says
    ``model_type: CrossEncoder`` (ST >= 4 saves), or ``config.json``'s architecture is a
    ``…ForSequenceClassification`` (older saves; what ``CrossEncoder`` loads as a reranker)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    st = folder / "config_sentence_transformers.json"
    if st.is_file():
        try:
            if json.loads(st.read_text(encoding="utf-8")).get("model_type") == "CrossEncoder":
                return True
        except (OSError, ValueError):
            pass
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    try:
        archs = json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        return False
    return bool(archs) and str(archs[0]).endswith("ForSequenceClassification")


def load_teacher(name: str, *, device: str | None = None, batch_size: int = 64, model=None) -> Teacher:
    """``name``: a CrossEncoder folder, or any model :meth:`DualEncoder.from_pretrained` loads.

    ``model``: an already loaded encoder to use when it is the one ``name`` names (the start model)."""
    if is_cross_encoder(name):
        return CrossEncoderTeacher(name, device=device, batch_size=batch_size)
    if model is not None:
        return BiEncoderTeacher(model, batch_size)
    from hardneg.model.encoder import DualEncoder

    try:
        encoder = DualEncoder.from_pretrained(name)
    except HardnegError:
        raise
    except Exception as exc:
        raise HardnegError(f"--teacher {name}: not a CrossEncoder folder, and no bi-encoder loads from it "
                           f"({exc})") from exc
    if device is not None:
        encoder.to(device)
    return BiEncoderTeacher(encoder.eval(), batch_size)


def _text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=6).hexdigest()


class TeacherScores:
    """A teacher behind a cache keyed by (teacher fingerprint, corpus, query id, doc id).

    Memory first, then ``folder`` (part files written once each, so concurrent writers never
    collide). In memory the scores sit per (query id, hash of the query's text): a changed query text
    is a miss. ``scored`` counts pairs the teacher actually scored, ``hits`` cache hits."""

    def __init__(self, teacher: Teacher, folder: str | Path | None = None) -> None:
        self.teacher = teacher
        self.folder = Path(folder) if folder else None
        self.memory: dict[tuple[str, str], dict[str, float]] = {}
        self.scored = self.hits = 0
        if self.folder is not None and self.folder.is_dir():
            for part in sorted(self.folder.glob("part-*.tsv")):
                for line in part.read_text(encoding="utf-8").splitlines():
                    bits = line.split("\t")
                    if len(bits) == 4:
                        self.memory.setdefault((bits[0], bits[2]), {})[bits[1]] = float(bits[3])

    @classmethod
    def under(cls, teacher: Teacher, cache_dir: str | Path | None, corpus_key: str) -> TeacherScores:
        """The cache for ``teacher`` over the corpus ``corpus_key`` under ``cache_dir``."""
        folder = None
        if cache_dir is not None:
            folder = Path(cache_dir) / "teacher_scores" / f"{teacher.fingerprint}-{corpus_key[:16]}"
        return cls(teacher, folder)

    def forget(self, qids: Iterable[str]) -> None:
        """Drop these queries' scores from memory (the files keep them)."""
        drop = set(qids)
        for key in [k for k in self.memory if k[0] in drop]:
            del self.memory[key]

    def scores(self, requests: Mapping[str, Sequence[str]], query_text: Mapping[str, str],
               doc_text: Callable[[Sequence[str]], Mapping[str, str]]) -> dict[str, np.ndarray]:
        """Scores of every ``(qid, docid)`` in ``requests``; only the pairs not cached are scored, in chunks
        of :data:`PAIR_CHUNK` pairs (each written as one part file)."""
        hashes = {q: _text_hash(query_text[q]) for q in requests}
        missing: list[tuple[str, str]] = []
        for qid, docs in requests.items():
            known = self.memory.get((qid, hashes[qid]), {})
            for d in dict.fromkeys(docs):
                if d in known:
                    self.hits += 1
                else:
                    missing.append((qid, d))
        if missing:
            texts = doc_text(sorted({d for _, d in missing}))
            for a in range(0, len(missing), PAIR_CHUNK):
                chunk = missing[a:a + PAIR_CHUNK]
                values = self.teacher.score_pairs([query_text[q] for q, _ in chunk], [texts[d] for _, d in chunk])
                new = []
                for (q, d), v in zip(chunk, values, strict=True):
                    self.memory.setdefault((q, hashes[q]), {})[d] = float(v)
                    new.append(f"{q}\t{d}\t{hashes[q]}\t{float(v)!r}\n")
                self.scored += len(chunk)
                self._write(new)
        return {q: np.array([self.memory[(q, hashes[q])][d] for d in docs], dtype=np.float64)
                for q, docs in requests.items()}

    def _write(self, lines: list[str]) -> None:
        if self.folder is None or not lines:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}.tsv"
        tmp = self.folder / f".{name}.tmp"
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, self.folder / name)


def doc_texts(dataset) -> Callable[[Sequence[str]], dict[str, str]]:
    """``ids -> {id: full text}`` over ``dataset``'s corpus (one pass over the corpus per call)."""

    def lookup(ids: Sequence[str]) -> dict[str, str]:
        want = set(ids)
        out = {d.doc_id: d.full_text() for d in dataset.iter_docs() if d.doc_id in want}
        if len(out) < len(want):
            raise HardnegError(f"{len(want) - len(out)} candidate documents (e.g. "
                               f"{sorted(want - set(out))[0]!r}) are not in the corpus of {dataset.name}")
        return out

    return lookup


# ----------------------------------------------------------------------------- many queries
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
) -> dict[str, list[str]]:
    """The negatives of every query of ``candidates`` (``qid -> [(docid, score)]`` in rank order).

    Scores: the teacher's when ``teacher`` is given (candidates and positives), else the given ones;
    ``positive_scores(qid, docids)`` gives the student's scores of the positives (needed by margin
    rules; also feeds the positive histogram). ``corpus``: the ids positives must be in to be scored.
    """
    max_pos = max_positives(qrels, candidates) if max_pos is None else max_pos
    n, range_max = rules.resolve(default_n, max_pos)
    in_corpus = corpus if corpus is not None else None
    pos_of = {q: [d for d, g in qrels.get(q, {}).items() if g >= 1 and (in_corpus is None or d in in_corpus)]
              for q in candidates}
    lists = {q: list(dict.fromkeys(d for d, _ in cands)) for q, cands in candidates.items()}
    if teacher is not None:
        if query_text is None or doc_text is None:
            raise HardnegError("a teacher needs the query and document texts")
        got = teacher.scores({q: lists[q] + [p for p in pos_of[q] if p not in set(lists[q])] for q in lists},
                             query_text, doc_text)
        scored = {q: dict(zip(lists[q] + [p for p in pos_of[q] if p not in set(lists[q])], got[q], strict=True))
                  for q in lists}
    out: dict[str, list[str]] = {}
    for qid, cands in candidates.items():
        docs = lists[qid]
        if teacher is not None:
            scores = [scored[qid][d] for d in docs]
            pscores = [scored[qid][p] for p in pos_of[qid]]
        else:
            first = {}
            for d, s in cands:
                first.setdefault(d, float(s))
            scores = [first[d] for d in docs]
            if positive_scores is not None and pos_of[qid]:
                pscores = [float(s) for s in positive_scores(qid, pos_of[qid])]
            elif rules.margins and pos_of[qid]:
                raise HardnegError("--absolute-margin / --relative-margin need the positives' scores: give a "
                                   "--teacher (BM25 candidates have none)")
            else:
                pscores = [first[p] for p in pos_of[qid] if p in first]
        rng = selection_rng(seed, step, qid) if rules.sampling_strategy == "random" else None
        sel = select_one(docs, scores, pos_of[qid] + [d for d, g in qrels.get(qid, {}).items() if g >= 1],
                         pscores, rules, n, range_max, rng)
        out[qid] = sel.kept
        if diagnostics is not None:
            diagnostics.add(qid, sel, pscores, n)
    return out


# ----------------------------------------------------------------------------- one training run
class TrainSelector:
    """The rules, teacher cache and diagnostics of one training run (static, star, ance, adore).

    ``ctx``: a :class:`~hardneg.train.methods.base.MethodContext`. The teacher is loaded on first use
    (a separate copy even when it names the start model, so it stays fixed while the model trains);
    its scores are cached under ``ctx.cache_dir``. Diagnostics go to ``OUT/negatives_diagnostics.json``.
    """

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.rules = NegativeRules.from_config(ctx.config)
        self.events: list[Diagnostics] = []
        self._teacher: TeacherScores | None = None
        self._texts: dict[str, str] = {}

    @property
    def teacher(self) -> TeacherScores | None:
        if self.rules.teacher is None:
            return None
        if self._teacher is None:
            ctx = self.ctx
            t = load_teacher(self.rules.teacher, device=str(ctx.model.device),
                             batch_size=ctx.config.batch_encode_size)
            self._teacher = TeacherScores.under(t, ctx.cache_dir, ctx.dataset.fingerprint())
        return self._teacher

    def query_text(self) -> dict[str, str]:
        return {q: self.ctx.queries[q].text for q in self.ctx.train_qrels if q in self.ctx.queries}

    def doc_text(self, ids: Sequence[str]) -> dict[str, str]:
        missing = [d for d in ids if d not in self._texts]
        if missing:
            self._texts.update(doc_texts(self.ctx.dataset)(missing))
        return {d: self._texts[d] for d in ids}

    def select(self, candidates: Mapping[str, Sequence[tuple[str, float]]], where: str, *,
               positive_scores: Callable[[str, list[str]], Sequence[float]] | None = None, step: int = 0,
               default_n: int | None = None) -> dict[str, list[str]]:
        """The negatives of ``candidates`` under the run's rules; records one diagnostics event."""
        ctx = self.ctx
        n = default_n or ctx.config.topk
        diag = Diagnostics(self.rules, where, self.rules.num_negatives or n)
        diag.on_short = ("fewer in the pool; each training draw that needs more fills up with uniform random "
                         "negatives (StaticNegatives' fallback)")
        out = select_negatives(candidates, ctx.train_qrels, self.rules, default_n=n,
                               positive_scores=positive_scores, teacher=self.teacher,
                               query_text=self.query_text() if self.rules.teacher else None,
                               doc_text=self.doc_text, corpus=set(ctx.doc_ids) if self.rules.teacher else None,
                               seed=ctx.config.seed, step=step, diagnostics=diag,
                               max_pos=max(map(len, ctx.positives.values()), default=0))
        self.events.append(diag)
        self.write()
        return out

    def depth(self) -> int:
        """Documents to retrieve per query."""
        cfg = self.ctx.config
        max_pos = max(map(len, self.ctx.positives.values()), default=0)
        if not self.rules.active:  # today's depth: the first n non-positives are all that is kept
            return (self.rules.num_negatives or cfg.topk) + max_pos
        return self.rules.depth(cfg.topk, max_pos)

    @property
    def path(self) -> Path:
        return Path(self.ctx.config.out) / DIAGNOSTICS_FILE

    def write(self, extra: Sequence[Diagnostics] = ()) -> None:
        from hardneg import distributed as dist

        if dist.is_main():
            write_diagnostics(self.path, [*self.events, *extra])

    def state_files(self) -> dict[str, Path]:
        """The diagnostics so far, kept by every checkpoint (so a resumed run's file equals a straight run's)."""
        return {DIAGNOSTICS_FILE: self.path} if self.path.is_file() else {}

    def restore(self, checkpoint: Path) -> None:
        """The events recorded up to ``checkpoint`` replace those of this process (its setup's mining is
        among them), and the file is rewritten from them."""
        import json

        saved = Path(checkpoint) / DIAGNOSTICS_FILE
        if saved.is_file():
            self.events = list(json.loads(saved.read_text(encoding="utf-8"))["events"])
            self.write()


# ----------------------------------------------------------------------------- hardneg mine
def mining_index(open_encoder: Callable[[], Any], dataset, cache_dir: Path, batch_size: int,
                 show_progress: bool) -> tuple[Any, Any]:
    """``hardneg mine``'s dense retriever: the encoder and its flat corpus index, searched on GPU Faiss by
    the rule training's mining follows (:func:`hardneg.devices.faiss_placement`)."""
    from hardneg.artifacts import corpus_index
    from hardneg.devices import faiss_placement

    encoder = open_encoder()
    index = corpus_index(encoder, dataset, "flat", cache_dir, batch_size=batch_size, show_progress=show_progress)
    if faiss_placement(encoder.device) == "gpu":
        index.to_gpu()
    return encoder, index


def mine_selected(dataset, qrels, queries, model: str, rules: NegativeRules, topk: int, cache_dir: Path, *,
                  open_encoder: Callable[[], Any], batch_size: int = 64, show_progress: bool = False,
                  device: str | None = None, seed: int = 0,
                  diagnostics_path: str | Path | None = None) -> dict[str, list[str]]:
    """``hardneg mine``: retrieve with ``model`` (a dense model or ``bm25``), then select by ``rules``.

    Without any rule this is the first ``topk`` non-positives of each query, as before; the
    diagnostics go to ``diagnostics_path``."""
    max_pos = max_positives(qrels)
    n = rules.num_negatives or topk
    k = rules.depth(topk, max_pos) if rules.active else n + max_pos
    positive_scores = None
    if model == "bm25":
        from hardneg.retrieval.bm25 import cached_bm25

        run = cached_bm25(dataset, cache_dir).search(queries, k=k, show_progress=show_progress)
    else:
        from hardneg.train.methods.mining import _searched

        encoder, index = mining_index(open_encoder, dataset, cache_dir, batch_size, show_progress)
        run, positive_scores = _searched(index, encoder, queries, k)
    teacher = None
    if rules.teacher is not None:
        teacher = TeacherScores.under(load_teacher(rules.teacher, device=device, batch_size=batch_size),
                                      cache_dir, dataset.fingerprint())
    diag = Diagnostics(rules, f"hardneg mine --model {model}", n)
    diag.on_short = "fewer negatives written for those queries"
    out = select_negatives(run, qrels, rules, default_n=topk, positive_scores=positive_scores, teacher=teacher,
                           query_text={q: queries[q].text for q in run}, doc_text=doc_texts(dataset),
                           corpus=dataset.doc_ids() if teacher is not None else None, seed=seed, diagnostics=diag,
                           max_pos=max_pos)
    if diagnostics_path is not None:
        summary = diag.summary()
        if teacher is not None:
            summary["teacher"] = {"name": rules.teacher, "kind": teacher.teacher.kind,
                                  "fingerprint": teacher.teacher.fingerprint, "scored": teacher.scored,
                                  "cache_hits": teacher.hits}
        write_diagnostics(diagnostics_path, [summary])
    return out


def diagnostics_path_for(out: str | Path) -> Path:
    """``runs/hard.tsv`` -> ``runs/hard.negatives_diagnostics.json`` (beside the negatives)."""
    out = Path(out)
    stem = out.stem if out.suffix else out.name
    return out.parent / f"{stem}.{DIAGNOSTICS_FILE}"
