"""A retrieval's result (run, metrics, settings) and the one way it is written to a folder.

:func:`evaluate_run` measures a run against qrels; :func:`save_run_and_metrics` does that
and writes the folder every retrieval leaves (the CLI's ``bm25`` / ``retrieve`` /
``search``, an experiment's test and transfer stages):

* ``run.trec`` (and/or ``run.msmarco.tsv``: ``fmt`` is ``trec``, ``msmarco`` or ``both``,
  :func:`hardneg.retrieval.runs.write_run`);
* ``settings.json`` when settings are given;
* ``metrics.json`` when the run is evaluated (qrels given), and ``per_query.json`` on request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardneg.data.records import Qrels
from hardneg.evaluate.metrics import DEFAULT_MEASURES, evaluate, evaluate_per_query
from hardneg.io import write_json
from hardneg.retrieval.runs import Run, check_run_format, write_run


@dataclass
class RetrievalResult:
    """A run with its metrics (``None``: not evaluated) and the settings that made it."""

    run: Run
    metrics: dict[str, float] | None = None
    settings: dict[str, Any] | None = None
    per_query: dict[str, dict[str, float]] | None = None


def evaluate_run(
    run: Run,
    qrels: Qrels | None,
    measures: Iterable[Any] | None = None,
    *,
    settings: dict[str, Any] | None = None,
    per_query: bool = False,
) -> RetrievalResult:
    """``run`` measured against ``qrels`` (``measures`` default :data:`DEFAULT_MEASURES`); with
    ``qrels=None`` the result holds no metrics."""
    measures = list(DEFAULT_MEASURES if measures is None else measures)
    if qrels is None:
        return RetrievalResult(run, None, settings)
    return RetrievalResult(run, evaluate(run, qrels, measures), settings,
                           evaluate_per_query(run, qrels, measures) if per_query else None)


def save_run_and_metrics(
    run: Run,
    folder: str | Path,
    *,
    tag: str = "hardneg",
    fmt: str = "trec",
    qrels: Qrels | None = None,
    measures: Iterable[Any] | None = None,
    settings: dict[str, Any] | None = None,
    per_query: bool = False,
) -> RetrievalResult:
    """Write ``run`` (and ``settings``) to ``folder``, then evaluate it against ``qrels`` (when given)
    and write ``metrics.json`` (and ``per_query.json`` with ``per_query``); returns the result.

    The run and settings are on disk before the evaluation starts."""
    check_run_format(fmt)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_run(run, folder, tag=tag, fmt=fmt)
    if settings is not None:
        write_json(folder / "settings.json", settings)
    result = evaluate_run(run, qrels, measures, settings=settings, per_query=per_query)
    if result.metrics is not None:
        write_json(folder / "metrics.json", result.metrics)
    if result.per_query is not None:
        write_json(folder / "per_query.json", result.per_query)
    return result


__all__ = ["RetrievalResult", "evaluate_run", "save_run_and_metrics"]
