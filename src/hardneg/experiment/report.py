"""``report.md`` and PNG figures from the finished stages of an experiment (see :mod:`hardneg.experiment`).

Everything here reads what the stages wrote (``stage.json``, ``metrics.json``,
``per_query.json``, ``train_log.jsonl``, analysis JSON); nothing is recomputed
except paired t-tests and strata means, so a report can be rewritten at any
time, also from a partly finished experiment (missing parts say so).

Sections, numbered after the paper (Zhan et al., SIGIR 2021):

* Table 2 analogue: test effectiveness per system, paired two-sided t-tests
  (p < 0.05) against the recipe's baselines and, for ADORE systems, their base;
* generalisation: the same measures on the "unseen-document" stratum (test
  queries none of whose relevant documents is relevant to a training query)
  and zero-shot on the transfer collections;
* against sentence-transformers' recipe (a ``peer-st`` system): each hardneg system per column (all,
  unseen-doc, each transfer set) and in wall-clock, its verdict naming the columns where it is worse;
* per-query Δ of the main measure, STAR and ADORE+STAR against the random-negative reference;
* Table 1 / Fig. 3: pairwise errors (total and top-K) and their concentration;
* Fig. 4: static/dynamic negative overlap and dev quality per step;
* training curves: loss and dev quality per step of every trained system;
* Fig. 5: ADORE with LambdaLoss vs RankNet;
* Table 4: training time; Tables 3/5: PQ index size vs quality (and bytes per document vs quality);
* Fig. 6: best rank of a relevant document before vs after ADORE over all test queries, beside the t-SNE
  of one query;
* findings: each of the paper's claims checked against the numbers above.

Each section is a function registered in :mod:`hardneg.experiment.sections` (``@section(name, order)``) that
takes a :class:`~hardneg.experiment.context.ReportContext` and returns a
:class:`~hardneg.experiment.sections.Section` (its markdown and its facts); the findings
(:mod:`hardneg.experiment.findings`) read those facts. Every table is also
written as ``tables/<name>.csv`` (and ``.tex`` with ``latex``), every figure as
``figures/<name>.png`` (and ``.svg`` with ``svg``), and ``results.json`` holds each system's numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hardneg.experiment.context import ReportContext, machine, short_path
from hardneg.experiment.findings import Findings
from hardneg.experiment.peer_st import PEER_ST
from hardneg.experiment.readme import NOT_MEASURES
from hardneg.experiment.results import ExperimentResults
from hardneg.experiment.sections import Section, registered, section_fn
from hardneg.experiment.sections.effectiveness import against_start
from hardneg.experiment.sections.peer import against_peer
from hardneg.experiment.stages import PLAN_FILE, REPORT, train_stage
from hardneg.experiment.stats import mean, spread
from hardneg.io import atomic_write, read_json


def stages_line(folder: Path, states: dict[str, dict[str, Any]]) -> str:
    """How far the run is (``states``: each stage folder's name → its ``stage.json``): the stages of the recipe
    (``plan.json``, written by every run) done, naming a few not done yet; a folder from before plan.json: of the
    stages started. The report is not counted: it is what is being written."""
    done = {name for name, s in states.items() if s.get("status") == "done" and name != REPORT}
    plan = folder / PLAN_FILE
    if not plan.is_file():
        return f"stages done: {len(done)} of the {len(set(states) - {REPORT})} started"
    planned = [n for n in read_json(plan).get("stages", []) if n != REPORT]
    left = [n for n in planned if n not in done]  # a leftover folder of a stage no longer planned is not counted
    if not left:
        return f"stages done: all {len(planned)}"
    more = f", … ({len(left)} in all)" if len(left) > 5 else ""
    return (f"stages done: {len(planned) - len(left)} of {len(planned)} (**a partial report**; not done yet: "
            f"{', '.join(left[:5])}{more})")


def render(ctx: ReportContext) -> str:
    """``report.md``: the head, the findings, then every registered section in order (running each once)."""
    r = ctx.r
    states = {p.parent.name: read_json(p) for p in sorted((r.dir / "stages").glob("*/stage.json"))}
    total = sum(float(s.get("seconds", 0.0)) for s in states.values())
    sections: list[Section] = [s.fn(ctx) for s in registered()]
    facts: dict[str, Any] = {}
    for part in sections:
        facts.update(part.facts)
    findings = Findings(ctx).section(facts)
    head = [
        f"# Experiment report: {r.recipe.get('name')}",
        "",
        f"{r.recipe.get('description') or ''}".strip(),
        "",
        f"- data: `{short_path(r.recipe['data'])}`; start model: `{r.recipe.get('model')}`; "
        f"seed {r.recipe.get('seed')}",
        f"- machine: {machine()}",
        f"- {stages_line(r.dir, states)}; summed stage wall-clock {total / 3600:.2f} h",
        "- test split evaluated once per final model (the best dev checkpoint); dev = a seeded carve-out of train",
        "",
    ]
    parts = [findings, *sections]
    return "\n".join(head + [s.markdown for s in parts if s.markdown])


def write(ctx: ReportContext, *, latex: bool = False) -> Path:
    """Render into ``ctx.out``: ``report.md``, its figures, ``tables/<name>.csv`` (and ``.tex``) and
    ``results.json``; returns the report's path."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    text = render(ctx)
    tables = ctx.out / "tables"
    tables.mkdir(exist_ok=True)
    for name, tab in ctx.tables.items():
        with atomic_write(tables / f"{name}.csv") as fh:
            fh.write(tab.csv())
        if latex:
            with atomic_write(tables / f"{name}.tex") as fh:
                fh.write(tab.latex())
    with atomic_write(ctx.out / "results.json") as fh:
        fh.write(json.dumps(system_results(ctx), indent=1, sort_keys=False) + "\n")
    path = ctx.out / "report.md"
    with atomic_write(path) as fh:
        fh.write(text)
    return path


def system_results(ctx: ReportContext) -> dict[str, Any]:
    """``results.json``: per system the test numbers of the tables (Table 2, its strata and transfer columns),
    the best dev metrics, training steps and the training stage's wall-clock seconds (Table 4's "stage").

    ``vs_start`` (trained systems): the paired t-test p against the zero-shot start model of the main measure, on
    all queries and (Holm-corrected as in the generalisation table) on the strata. ``vs_peer`` (hardneg's trained
    systems, with a ``peer-st`` system in the recipe): against each peer, per column (all, unseen-doc, each transfer
    set) Δ, p, Holm p and verdict, both wall-clocks, and the row's verdict (the report's "against
    sentence-transformers' recipe" table).

    A system with ``seeds``: its test, strata and transfer numbers are the means over its seeds, ``seeds`` holds
    ``n``, the seeds, their runs and the ``sd`` (sample), ``min`` and ``max`` of each number; its dev, steps and
    seconds are its first seed's. ``replicas`` holds every seed run's own entry (the first under the system's name).
    """
    out: dict[str, Any] = {}
    replicas: dict[str, Any] = {}
    tests = against_start(ctx)
    for name in ctx.r.names:
        if name in ctx.seed_runs:
            out[name] = _seeded_entry(ctx, name, replicas)
        else:
            out[name] = _entry(ctx, name, ctx.per_query.get(name),
                               {t: ctx.transfer_metric(name, t) for t in ctx.r.transfer_tags()})
    m = ctx.main_measure
    for name, p in tests.items():  # which numbers are significantly above the start model's (the README's †)
        keys = {"all": m, "seen_holm": f"{m}_seen", "unseen_holm": f"{m}_unseen"}
        out[name]["vs_start"] = {"system": ctx.r.start,
                                 "p": {key: (None if math.isnan(p[k]) else p[k]) for k, key in keys.items() if k in p}}
    for row in against_peer(ctx):  # against sentence-transformers' recipe: per column, and the verdict
        out[row.system].setdefault("vs_peer", []).append(row.to_json())
    return {"systems": out, **({"replicas": replicas} if replicas else {})}


def _seeded_entry(ctx: ReportContext, name: str, replicas: dict[str, Any]) -> dict[str, Any]:
    """A seeded system's entry (the means over its seeds, and ``seeds``: n, seeds, runs, sd, min, max); adds each
    seed run's own entry to ``replicas``."""
    runs = ctx.r.seed_runs(name)
    tags = ctx.r.transfer_tags()
    for i, (seed, run) in enumerate(runs):
        transfer = {t: ctx.transfer_values(name, t)[i] for t in tags}
        replicas[run] = {"system": name, "seed": seed,
                         **_entry(ctx, name, ctx.seed_runs[name].get(run), transfer, run=run)}
    first = {k: v for k, v in replicas[name].items() if k not in ("system", "seed")}
    keys = [k for k, v in first.items() if isinstance(v, float | None) and k not in ("dev", *NOT_MEASURES)]
    spreads = {k: spread([replicas[run][k] for _, run in runs]) for k in keys}
    spreads.update({f"transfer/{t}": spread([replicas[run]["transfer"][t] for _, run in runs]) for t in tags})
    entry = {**first, **{k: s["mean"] for k, s in spreads.items() if "/" not in k}}
    entry["transfer"] = {t: spreads[f"transfer/{t}"]["mean"] for t in tags}
    # n: the seed runs whose test is done (the report's seeds column)
    entry["seeds"] = {"n": len(ctx.seed_runs[name]), "seeds": [k for k, _ in runs],
                      "runs": [run for _, run in runs],
                      **{stat: _nested({k: s[stat] for k, s in spreads.items()}) for stat in ("sd", "min", "max")}}
    return entry


def _entry(ctx: ReportContext, name: str, pq: dict[str, dict[str, float]] | None,
           transfer: dict[str, float | None], *, run: str | None = None) -> dict[str, Any]:
    """One run's ``results.json`` entry: test means (``pq``: its per-query scores), strata, ``transfer``, and the
    dev metrics, steps and training seconds of system ``name`` (an interpolation: the picked weight's dev; a seed
    run of a seeded system: ``run``'s)."""
    m = ctx.main_measure
    entry: dict[str, Any] = {}
    for measure in ctx.r.measures:
        entry[measure] = mean(pq[measure]) if pq else None
    if ctx.unseen:
        entry[f"{m}_unseen"] = mean(pq[m], ctx.unseen) if pq else None
        entry[f"{m}_seen"] = mean(pq[m], sorted(set(pq[m]) - set(ctx.unseen))) if pq else None
    entry["transfer"] = transfer
    trained = run or ctx.r.system(name).get("wise_of", name)
    st = ctx.r.stage(train_stage(trained))
    entry["dev"] = ctx.dev_metrics(trained)
    if trained == ctx.r.system(name).get("wise_of"):  # an interpolation: the picked weight's dev metrics
        pick = ctx.r.wise_pick(trained)
        entry["dev"] = {"alpha": pick["alpha"], **pick["dev"]} if pick else None
    entry["steps"] = len([x for x in ctx.r.train_log(trained) if x.get("kind") == "train"]) if st else None
    entry["train_seconds"] = ctx.r.stage_seconds(train_stage(trained)) if st else None
    entry["train_cpu_seconds"] = st.get("cpu_seconds") if st else None  # "–" in Table 4 before it was kept
    if name in ctx.r.with_kind(PEER_ST):  # sentence-transformers' recipe: it counts epochs (the dev-best one)
        entry["kind"] = ctx.r.method_label(name)
        summary = ctx.r.stage_file(train_stage(trained), "summary.json")
        entry["steps"] = read_json(summary)["epochs"] if st and summary.is_file() else None
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in entry.items()}


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    """``{"nDCG@10": x, "transfer/med": y}`` → ``{"nDCG@10": x, "transfer": {"med": y}}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if "/" in key:
            head, tail = key.split("/", 1)
            out.setdefault(head, {})[tail] = value
        else:
            out[key] = value
    return out


def write_report(run_dir: str | Path, out: str | Path | None = None, *, latex: bool = False,
                 svg: bool = False, data_dir: str | None = None) -> Path:
    """Write ``report.md``, ``figures/`` (PNG; also SVG with ``svg``) and ``tables/`` (CSV; also LaTeX with
    ``latex``) for an experiment folder (or its records); returns the report's path. ``data_dir``: where the
    data folder it ran with is now (:class:`~hardneg.experiment.results.ExperimentResults`)."""
    results = ExperimentResults(run_dir, data_dir)
    return write(ReportContext(results, Path(out) if out else results.dir, svg=svg), latex=latex)


def main_table(run_dir: str | Path) -> str:
    """The effectiveness table (markdown) of an experiment, for printing at the end of a run."""
    results = ExperimentResults(run_dir)
    return section_fn("effectiveness")(ReportContext(results, results.dir)).markdown
