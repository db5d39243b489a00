"""Which retrieved documents become negatives: one rule set for ``mine``, static/STAR, ANCE and ADORE.

:class:`NegativeRules` is THE declaration of the selection settings: each field's name, type, default,
help text and allowed values are written once here (:func:`rule`), and both ``TrainConfig``'s fields
(:mod:`hardneg.train.config`) and ``hardneg mine``'s flags (:mod:`hardneg.cli.data_cmds`) are generated
from :meth:`NegativeRules.settings`. A field added here is a ``hardneg train`` and a ``hardneg mine``
flag, a YAML key, and left out of a run's fingerprint at its default (so older checkpoints resume).

The settings are sentence-transformers' ``mine_hard_negatives``
(``sentence_transformers/util/hard_negatives.py``, v6.2), with their names and meaning, plus a
``teacher`` and ``margin_against``. For one query, :func:`~hardneg.negatives.selection.select_one`
applies them in ST's order:

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
   ``num_negatives`` of them uniformly and sorts them by score (rule ``not_sampled`` for the rest);
   ``simans`` draws them with SimANS' probabilities (below), ``balanced`` with TAS-B's balanced margins
   (below), both also sorted by score.

SimANS (Zhou et al., EMNLP 2022, "SimANS: Simple Ambiguous Negatives Sampling for Dense Text Retrieval")
samples a candidate ``d`` with probability ``p(d) ∝ exp(-a · (s(q, d) - s(q, d⁺) - b)²)`` (``simans_a``,
``simans_b``): the negatives scored close to the positive (the ambiguous ones) are the likeliest, the top ones
(likely false negatives) and the easy ones the least likely. ``s`` is the mining model's score (the teacher's
when given). ``s(q, d⁺)`` is the mean score of the query's positives when a whole query's list is selected
(``hardneg mine``, and training's candidate pool), and the example's own positive in training's per-step
draws (:class:`~hardneg.negatives.sampling.StaticNegatives`), where ``simans`` also weights every draw of
``--n-negatives`` from the pool. The draw is without replacement (the Gumbel-top-k trick: the first pick has
exactly probability ``p``; the official code draws with ``random.choices`` until it has enough distinct
ones, the same law). ``p`` peaks at ``s⁻ = s⁺ + b`` (the paper's sign; the official code writes
``(s⁻ - s⁺ + b)``). Defaults ``a = 1``, ``b = 0`` (the official code's MS MARCO document setting is
``a = 0.5``, ``b = 0``); ``a`` is on the scores' scale: cosine scores (MiniLM) lie in ``[-1, 1]``, so a
sharper ``a`` (tens) is needed for the weights to differ much. A query without a positive score is drawn
uniformly (counted as ``no_positive_score``).

``balanced`` is the "balanced" half of TAS-B (Hofstätter et al., SIGIR 2021): the margins ``s⁺ - s⁻`` of the
candidates are split into 10 equal-width bins between their minimum and maximum, a non-empty bin is drawn
uniformly, then a candidate in it (``p(d) = 1 / (bins × candidates in d's bin)``), so easy and hard margins are
equally represented whatever their count. ``s`` and ``s⁺`` as for SimANS (the teacher's scores when given, as
TAS-B's margins are its teacher's).

A positive is never returned and never more than ``num_negatives`` documents.
:meth:`NegativeRules.resolve` gives ST's defaults: ``range_max = range_min + num_negatives ×
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
  the row); training's :class:`~hardneg.negatives.sampling.StaticNegatives` then fills each draw
  with uniform random negatives (its fallback);
- scores are the model's own (dot product; cosine for a normalised model such as MiniLM); ST always
  normalises embeddings;
- a query without any positive in the corpus has no margin reference: margin rules do not apply to
  it (counted as ``no_positive_score``);
- there is no ``min_score``.

ADORE (:mod:`hardneg.train.methods.adore`) applies the same rules to each step's top-K with the current query
tower's scores (or the teacher's): a removed document is dropped from the ranked list before pairs
and ranks are formed (the list is compacted, padded with "no result"), so it is neither a negative
nor counted as an error above a positive by the ΔM weights.
"""

from __future__ import annotations

import math
import numbers
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from hardneg.errors import HardnegError

__all__ = ["RULES", "NegativeRules", "RuleSetting", "rule"]

#: why a candidate was not returned, in the order the rules apply
RULES = ("positive", "absolute_margin", "relative_margin", "max_score", "range_min", "range_max", "not_sampled")


def rule(default: Any, help: str, *, choices: tuple[str, ...] = ()) -> Any:
    """A :class:`NegativeRules` field: its default, the help text of its flag and YAML key (``hardneg mine``,
    ``hardneg train``) and, for a one-of setting, the values it allows."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices)})


@dataclass(frozen=True)
class RuleSetting:
    """One selection setting as the CLI and ``TrainConfig`` see it (from :meth:`NegativeRules.settings`)."""

    name: str
    type: Any  # e.g. ``int | None``
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class NegativeRules:
    """sentence-transformers' negative-mining settings (same names), a teacher and ``margin_against``."""

    range_min: int = rule(0, "Skip the first N negatives (after the score rules), as sentence-transformers' "
                          "range_min.")
    range_max: int | None = rule(
        None, "Consider only the first N candidates (default: range_min + num_negatives x (10 with a score rule, "
        "else 1) + max positives, as sentence-transformers).")
    absolute_margin: float | None = rule(None, "Drop a negative scoring above (positive score - margin).")
    relative_margin: float | None = rule(
        None, "Drop a negative scoring above (1 - margin) x the positive's score (0.05: NV-Retriever's "
        "TopK-PercPos).")
    max_score: float | None = rule(None, "Drop a negative scoring above this.")
    sampling_strategy: str = rule(
        "top", "top (the first num_negatives kept), random (drawn from the window, seeded), simans (drawn with "
        "SimANS' probability exp(-a (s - s_pos - b)^2)) or balanced (TAS-B: a margin bin s_pos - s of 10 drawn "
        "uniformly, then a document in it); with simans/balanced training also draws each step's negatives so.",
        choices=("top", "random", "simans", "balanced"))
    num_negatives: int | None = rule(
        None, "Negatives kept per query after the rules (default --topk: what mine writes and static/star/ance "
        "sample from; adore: the whole list).")
    teacher: str | None = rule(None, "Rescore candidates before the rules (and the scores --distill learns): a "
                               "bi-encoder hardneg loads, a CrossEncoder folder, bm25, or a fusion fusion:A+B "
                               "(min-max sum) / rrf:A+B (scores cached).")
    margin_against: str = rule("min", "Margins against the query's lowest-scored positive (min, "
                               "sentence-transformers') or its highest (max).", choices=("min", "max"))
    simans_a: float = rule(1.0, "SimANS: a > 0, how sharply p = exp(-a (s - s_pos - b)^2) peaks (scores' scale).")
    simans_b: float = rule(0.0, "SimANS: b, where p peaks: at a negative score of s_pos + b.")

    def __post_init__(self) -> None:
        def whole(name: str, value: Any, low: int) -> None:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
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
            if value is not None and (isinstance(value, bool) or not math.isfinite(float(value))):
                raise HardnegError(f"{name} must be a finite number, not {value!r}")
        for name in ("simans_a", "simans_b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                raise HardnegError(f"{name} must be a finite number, not {value!r}")
        if self.simans_a <= 0:
            raise HardnegError(f"simans_a must be > 0 (--simans-a), not {self.simans_a}")
        if self.sampling_strategy != "simans" and (self.simans_a, self.simans_b) != (1.0, 0.0):
            raise HardnegError("--simans-a / --simans-b are for --sampling-strategy simans, not "
                               f"{self.sampling_strategy}")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise HardnegError(f"relative_margin must be in [0, 1) (0.05 = NV-Retriever's 95%), "
                               f"not {self.relative_margin}")
        for f in fields(self):
            choices = f.metadata.get("choices", ())
            if choices and getattr(self, f.name) not in choices:
                raise HardnegError(f"{f.name} must be {' or '.join(choices)}, not {getattr(self, f.name)!r}")

    # ------------------------------------------------------------------ the declaration
    @classmethod
    def settings(cls) -> tuple[RuleSetting, ...]:
        """Every selection setting, in declaration order: what ``TrainConfig`` and the CLI are generated from."""
        types = typing.get_type_hints(cls)
        return tuple(RuleSetting(f.name, types[f.name], f.default, f.metadata.get("help", ""),
                                 tuple(f.metadata.get("choices", ()))) for f in fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``name -> default`` of every setting (no rule active: the first n non-positives in rank order)."""
        return {s.name: s.default for s in cls.settings()}

    @classmethod
    def from_config(cls, cfg: Any) -> NegativeRules:
        """The rules of a :class:`~hardneg.train.config.TrainConfig` (fields of the same names)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    # ------------------------------------------------------------------ what they ask for
    @property
    def margins(self) -> bool:
        """A rule needs the positives' scores."""
        return self.absolute_margin is not None or self.relative_margin is not None

    @property
    def sampled(self) -> bool:
        """The window is sampled (``random``, ``simans``, ``balanced``): a draw needs a generator."""
        return self.sampling_strategy != "top"

    @property
    def simans(self) -> bool:
        """SimANS' probabilities (they need the positives' scores)."""
        return self.sampling_strategy == "simans"

    @property
    def weighted(self) -> bool:
        """A draw weighted by the candidates' and the positive's scores (``simans``, ``balanced``): the scores
        are kept with the lists."""
        return self.sampling_strategy in ("simans", "balanced")

    @property
    def law(self) -> tuple | None:
        """The weighted draw's law for :func:`~hardneg.negatives.sampling.law_logits`: ``("simans", a, b)``,
        ``("balanced",)``, or ``None``."""
        if self.simans:
            return ("simans", float(self.simans_a), float(self.simans_b))
        return ("balanced",) if self.sampling_strategy == "balanced" else None

    @property
    def score_rules(self) -> bool:
        return self.margins or self.max_score is not None

    @property
    def active(self) -> bool:
        """Anything but the plain "first n non-positive documents in rank order"."""
        return self != type(self)(num_negatives=self.num_negatives)

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

    def retrieval_depth(self, default_n: int, max_pos: int) -> int:
        """Documents to retrieve per query: :meth:`depth` with a rule active; without one, the first
        ``num_negatives or default_n`` non-positives are all that is kept, so that many plus ``max_pos``."""
        if self.active:
            return self.depth(default_n, max_pos)
        return (self.num_negatives or default_n) + max_pos

    def describe(self) -> dict[str, Any]:
        return asdict(self)
