"""Evaluation commands: ``evaluate`` (one run) and ``compare`` (runs with paired t-tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hardneg.cli.common import (
    MeasuresOpt,
    QrelsOpt,
    open_dataset,
    out,
)
from hardneg.errors import HardnegError


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run file (TREC or MS MARCO format).")],
    data: Annotated[str | None, typer.Option("--data", "-d",
        help="Dataset whose qrels to use: `path:split` or `irds:<id>`.")] = None,
    qrels: QrelsOpt = None,
    measure: MeasuresOpt = None,
    as_json: Annotated[bool, typer.Option("--json",
        help="Print one JSON object keyed by ir-measures names.")] = False,
    per_query: Annotated[bool, typer.Option("--per-query",
        help="Also print per-query values (TSV: measure qid value).")] = False,
) -> None:
    """Evaluate a run with ir-measures (default RR@10, R@100, R@1000, nDCG@10).

    Example: `hardneg evaluate runs/scifact-test-bm25/run.trec --data ../shared/data/scifact:test --json`
    """
    from hardneg.evaluate.metrics import DEFAULT_MEASURES, evaluate_per_query, format_table
    from hardneg.evaluate.metrics import evaluate as eval_run
    from hardneg.retrieval.runs import read_run

    qrel_dict = _qrels_from(data, qrels)
    ranked = read_run(run)
    measures = measure or DEFAULT_MEASURES
    metrics = eval_run(ranked, qrel_dict, measures)
    if as_json:
        print(json.dumps(metrics))
    else:
        out.print(format_table({run.parent.name if run.name.startswith("run.") else run.stem: metrics}))
    if per_query:
        for name, values in evaluate_per_query(ranked, qrel_dict, measures).items():
            for qid, value in values.items():
                print(f"{name}\t{qid}\t{value:.6f}")


def _qrels_from(data: str | None, qrels: Path | None):
    if data is None and qrels is None:
        raise HardnegError("give --data path:split (its qrels) or --qrels FILE")
    if data is None:
        from hardneg.data.formats.trec import read_qrels
        from hardneg.data.records import qrels_to_dict

        return qrels_to_dict(list(read_qrels(qrels)))
    dataset = open_dataset(data, qrels=qrels)
    result = dataset.qrels()
    if not result:
        raise HardnegError(f"{data}: no qrels for this split; name a split (path:test) or pass --qrels")
    return result


def _run_name(path: Path) -> str:
    return path.parent.name if path.name.startswith("run.") else path.stem


def compare(
    runs: Annotated[list[str], typer.Argument(help="Run files, optionally named: `name=path`.")],
    data: Annotated[str | None, typer.Option("--data", "-d",
        help="Dataset whose qrels to use: `path:split`.")] = None,
    qrels: QrelsOpt = None,
    baseline: Annotated[str | None, typer.Option("--baseline",
        help="Name of the baseline run (default: the first).")] = None,
    measure: MeasuresOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print means and p-values as JSON.")] = False,
) -> None:
    """Compare runs on the same queries: a table of means with paired t-test p-values against a baseline.

    Example: `hardneg compare bm25=runs/a/run.trec minilm=runs/b/run.trec --data ../shared/data/scifact:test`
    """
    from hardneg.evaluate.metrics import DEFAULT_MEASURES, format_table
    from hardneg.evaluate.metrics import compare as compare_runs
    from hardneg.retrieval.runs import read_run

    named: dict[str, object] = {}
    for item in runs:
        name, _, path = item.rpartition("=")
        path_obj = Path(path)
        name = name or _run_name(path_obj)
        if name in named:
            raise HardnegError(f"two runs are named {name!r}; name them explicitly: name=path")
        named[name] = read_run(path_obj)
    qrel_dict = _qrels_from(data, qrels)
    result = compare_runs(named, qrel_dict, baseline or next(iter(named)), measure or DEFAULT_MEASURES)
    if as_json:
        print(json.dumps({"baseline": result.baseline, "queries": len(result.query_ids),
                          "means": result.means, "pvalues": result.pvalues}))
    else:
        out.print(format_table(result))
