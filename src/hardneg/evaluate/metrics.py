"""Retrieval effectiveness through ir-measures, and paired significance tests.

No metric is computed by hand here: per-query values come from ir-measures
(pytrec_eval, i.e. trec_eval's C code, for R@k, nDCG@k, AP, P@k; its
``msmarco`` provider for RR@k, the official MS MARCO MRR@10 code). This module
only decides *which* queries are scored and *which ranking* is scored, so that
:func:`evaluate` and :func:`compare` agree and every system is compared over
the identical query set.

Query-set convention
--------------------
* The evaluated queries are the queries of the qrels that have at least one
  judgement with grade >= 1 (trec_eval's default relevance level). Queries
  whose judgements are all 0 (or negative) are left out: no system can score
  on them.
* A query of that set that is missing from the run (or has an empty result
  list) scores **0** on every measure, like ``trec_eval -c``. The zeros are
  filled in here explicitly, whatever the ir-measures provider does for
  missing queries, so means are always over the whole query set and paired
  t-tests are well defined.
* Queries in the run but not in that set are ignored.

Relevance semantics (trec_eval defaults, as ir-measures passes them on)
------------------------------------------------------------------------
* RR@k, R@k, AP, P@k: a document is relevant iff its grade is >= 1.
  Unjudged documents are non-relevant.
* nDCG@k: graded, linear gains (gain = grade, negative grades count 0),
  discount ``log2(rank + 1)``, ideal DCG from the qrels' grades.
* MS MARCO dev's "MRR@10" is ir-measures' ``RR@10`` (``MRR@10`` parses to it).
* Measure names are ir-measures' (``nDCG@10``, ``RR@10``, ``R@100``, ``AP``,
  ``P@5``, ``nDCG(judged_only=True)@10``…); trec_eval names (``ndcg_cut_10``,
  ``recip_rank``) are accepted as well. Result keys are ``str(measure)``
  exactly as ir-measures names them, e.g. ``"nDCG@10"``.

Ranking semantics
-----------------
The ranking scored is the run's list order after a stable sort by score
(highest first): ties in score keep the run's order. This is done by handing
ir-measures rank-derived scores, because its providers break ties differently
(trec_eval by doc id, the MS MARCO code by input order), which would otherwise
make RR@10 and nDCG@10 disagree about the same tied ranking. For a run without
ties this is exactly trec_eval. A doc id repeated within one query's list
counts once, at its best rank.

Significance
------------
:func:`compare` runs a paired two-sided t-test (:func:`scipy.stats.ttest_rel`)
per measure between each system and the baseline over the per-query values of
the common query set. If the two systems' per-query values are identical the
p-value is 1.0 (scipy would return NaN); with fewer than two queries it is NaN.
No correction for multiple comparisons is applied.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ir_measures
import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats

from hardneg.data.records import Qrels
from hardneg.errors import HardnegError
from hardneg.retrieval.runs import Run

DEFAULT_MEASURES: tuple[str, ...] = ("RR@10", "R@100", "R@1000", "nDCG@10")

#: Significance level behind the ``†`` marker in :func:`format_table`.
DEFAULT_ALPHA = 0.05

_MEASURE_EXAMPLES = "RR@10 (= MRR@10), R@100, R@1000, nDCG@10, AP, P@5, or trec_eval's ndcg_cut_10"

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MEASURES",
    "ComparisonResult",
    "compare",
    "evaluate",
    "evaluate_per_query",
    "evaluated_queries",
    "format_table",
    "paired_ttest",
    "parse_measures",
    "render_table",
]


def parse_measures(names: Iterable[Any]) -> list[Any]:
    """Parse measure names (or pass ir-measures ``Measure`` objects through).

    Accepts ir-measures syntax (``nDCG@10``) and trec_eval names
    (``ndcg_cut_10``, ``ndcg_cut.10,20``). Duplicates (e.g. ``RR@10`` and
    ``MRR@10``) are kept once, in first-seen order. An unknown or malformed
    name raises :class:`HardnegError` listing valid examples.
    """
    if isinstance(names, str):
        names = [names]
    parsed: list[Any] = []
    seen: set[str] = set()
    for name in names:
        if isinstance(name, ir_measures.Measure):
            found = [name]
        else:
            text = str(name).strip()
            try:
                found = [ir_measures.parse_measure(text)]
            except (NameError, ValueError, TypeError) as err:
                try:
                    found = list(ir_measures.parse_trec_measure(text))
                except Exception:
                    found = []
                if not found:
                    raise HardnegError(
                        f"unknown or malformed measure {text!r} ({err}); "
                        f"use ir-measures names such as {_MEASURE_EXAMPLES}"
                    ) from None
        for measure in found:
            key = str(measure)
            if key not in seen:
                seen.add(key)
                parsed.append(measure)
    if not parsed:
        raise HardnegError(f"no measures given; use e.g. {_MEASURE_EXAMPLES}")
    return parsed


def evaluated_queries(qrels: Qrels) -> list[str]:
    """The query ids scored: those with at least one judgement of grade >= 1 (qrels order)."""
    return [qid for qid, judged in qrels.items() if any(grade >= 1 for grade in judged.values())]


def _ranked_for_eval(run: Run, qids: Iterable[str]) -> dict[str, dict[str, float]]:
    """Run restricted to ``qids`` with strictly decreasing rank-derived scores."""
    out: dict[str, dict[str, float]] = {}
    for qid in qids:
        results = run.get(qid)
        if not results:
            continue
        ordered = sorted(results, key=lambda pair: -pair[1])  # stable: ties keep run order
        ranked: dict[str, float] = {}
        for docid, _score in ordered:
            if docid not in ranked:
                ranked[docid] = float(-(len(ranked) + 1))
        out[qid] = ranked
    return out


def _per_query(
    run: Run, qrels: Qrels, measures: list[Any]
) -> tuple[list[str], dict[str, dict[str, float]]]:
    qids = evaluated_queries(qrels)
    if not qids:
        raise HardnegError(
            "no query in the qrels has a relevant judgement (grade >= 1); nothing to evaluate "
            "(check that the right qrels file/split was given)"
        )
    per: dict[str, dict[str, float]] = {str(m): dict.fromkeys(qids, 0.0) for m in measures}
    ranked = _ranked_for_eval(run, qids)
    if ranked:
        sub_qrels = {qid: dict(qrels[qid]) for qid in qids}
        for metric in ir_measures.iter_calc(measures, sub_qrels, ranked):
            column = per.get(str(metric.measure))
            if column is not None and metric.query_id in column:
                column[metric.query_id] = float(metric.value)
    return qids, per


def _aggregate(measure: Any, values: Iterable[float]) -> float:
    agg = measure.aggregator()  # MeanAgg for all effectiveness measures
    for value in values:
        agg.add(value)
    return float(agg.result())


def evaluate_per_query(
    run: Run, qrels: Qrels, measures: Iterable[Any] = DEFAULT_MEASURES
) -> dict[str, dict[str, float]]:
    """Measure name -> query id -> value, over :func:`evaluated_queries` (missing = 0)."""
    parsed = parse_measures(measures)
    _qids, per = _per_query(run, qrels, parsed)
    return per


def evaluate(
    run: Run, qrels: Qrels, measures: Iterable[Any] = DEFAULT_MEASURES
) -> dict[str, float]:
    """Measure name -> mean over :func:`evaluated_queries` (missing queries count 0)."""
    parsed = parse_measures(measures)
    _qids, per = _per_query(run, qrels, parsed)
    return {str(m): _aggregate(m, per[str(m)].values()) for m in parsed}


def paired_ttest(values: Sequence[float], baseline: Sequence[float]) -> float:
    """Two-sided paired t-test p-value (:func:`scipy.stats.ttest_rel`).

    1.0 when the paired values are all equal (no difference), NaN with fewer
    than two pairs.
    """
    x = np.asarray(values, dtype=np.float64)
    y = np.asarray(baseline, dtype=np.float64)
    if x.shape != y.shape:
        raise HardnegError(f"paired t-test needs equally many values ({x.shape} vs {y.shape})")
    if x.size < 2:
        return math.nan
    if np.array_equal(x, y):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_rel(x, y).pvalue)


@dataclass(frozen=True)
class ComparisonResult:
    """Means and paired t-test p-values of several systems against a baseline.

    ``pvalues[system][measure]`` is ``None`` for the baseline itself.
    ``per_query[system][measure][qid]`` holds the values the tests used, over
    ``query_ids`` (the same set for every system).
    """

    baseline: str
    measures: list[str]
    query_ids: list[str]
    means: dict[str, dict[str, float]]
    pvalues: dict[str, dict[str, float | None]]
    per_query: dict[str, dict[str, dict[str, float]]] = field(repr=False)

    @property
    def systems(self) -> list[str]:
        return list(self.means)

    def significant(self, system: str, measure: str, alpha: float = DEFAULT_ALPHA) -> bool:
        p = self.pvalues[system][measure]
        return p is not None and not math.isnan(p) and p < alpha


def compare(
    runs: Mapping[str, Run],
    qrels: Qrels,
    baseline: str,
    measures: Iterable[Any] = DEFAULT_MEASURES,
) -> ComparisonResult:
    """Evaluate every run and test each against ``runs[baseline]`` (paired, two-sided).

    Means equal :func:`evaluate`'s; all systems use the same query set.
    """
    if baseline not in runs:
        known = ", ".join(runs) or "none"
        raise HardnegError(f"baseline {baseline!r} is not one of the runs ({known})")
    parsed = parse_measures(measures)
    names = [str(m) for m in parsed]
    qids: list[str] = []
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    means: dict[str, dict[str, float]] = {}
    for system, run in runs.items():
        qids, per = _per_query(run, qrels, parsed)
        per_query[system] = per
        means[system] = {str(m): _aggregate(m, per[str(m)].values()) for m in parsed}
    pvalues: dict[str, dict[str, float | None]] = {}
    base = per_query[baseline]
    for system in runs:
        if system == baseline:
            pvalues[system] = dict.fromkeys(names)
            continue
        pvalues[system] = {
            name: paired_ttest(
                [per_query[system][name][q] for q in qids], [base[name][q] for q in qids]
            )
            for name in names
        }
    return ComparisonResult(
        baseline=baseline,
        measures=names,
        query_ids=qids,
        means=means,
        pvalues=pvalues,
        per_query=per_query,
    )


def _format_p(p: float | None) -> str:
    if p is None:
        return "–"
    if math.isnan(p):
        return "n/a"
    if p < 1e-4:
        return "<0.0001"
    return f"{p:.4f}"


def format_table(
    result: ComparisonResult | Mapping[str, Mapping[str, float]],
    *,
    alpha: float = DEFAULT_ALPHA,
    digits: int = 4,
    title: str | None = None,
) -> Table:
    """A rich table: one row per system, the mean per measure, and p-values.

    With a :class:`ComparisonResult`, every measure gets a ``p`` column and
    means significantly different from the baseline (p < ``alpha``) carry
    ``†``. A plain ``{system: {measure: mean}}`` mapping gives means only.
    """
    table = Table(title=title)
    table.add_column("system")
    if isinstance(result, ComparisonResult):
        for name in result.measures:
            table.add_column(name, justify="right")
            table.add_column("p", justify="right", style="dim")
        for system in result.systems:
            cells = [f"{system} (baseline)" if system == result.baseline else system]
            for name in result.measures:
                marker = "†" if result.significant(system, name, alpha) else ""
                cells.append(f"{result.means[system][name]:.{digits}f}{marker}")
                cells.append(_format_p(result.pvalues[system][name]))
            table.add_row(*cells)
        table.caption = (
            f"† p < {alpha:g} vs {result.baseline} (paired two-sided t-test over "
            f"{len(result.query_ids)} queries)"
        )
        return table
    names: list[str] = []
    for values in result.values():
        names.extend(n for n in values if n not in names)
    for name in names:
        table.add_column(name, justify="right")
    for system, values in result.items():
        table.add_row(
            system,
            *(f"{values[n]:.{digits}f}" if n in values else "–" for n in names),
        )
    return table


def render_table(table: Table, width: int = 120) -> str:
    """Render a rich table to plain text (no colour codes), e.g. for logs and reports."""
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(table)
    return console.export_text()
