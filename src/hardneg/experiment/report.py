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
* per-query Δ of the main measure, STAR and ADORE+STAR against the random-negative reference;
* Table 1 / Fig. 3: pairwise errors (total and top-K) and their concentration;
* Fig. 4: static/dynamic negative overlap and dev quality per step;
* training curves: loss and dev quality per step of every trained system;
* Fig. 5: ADORE with LambdaLoss vs RankNet;
* Table 4: training time; Tables 3/5: PQ index size vs quality (and bytes per document vs quality);
* Fig. 6: best rank of a relevant document before vs after ADORE over all test queries, beside the t-SNE
  of one query;
* findings: each of the paper's claims checked against the numbers above.

Each section is a method returning a :class:`~hardneg.experiment.results.Section`
(its markdown and its facts); the findings read those facts. Every table is also
written as ``tables/<name>.csv`` (and ``.tex`` with ``latex``), every figure as
``figures/<name>.png`` (and ``.svg`` with ``svg``), and ``results.json`` holds each system's numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.experiment.figures import FigureSections
from hardneg.experiment.findings import Findings
from hardneg.experiment.results import (
    ALPHA,
    MARKERS,
    ExperimentResults,
    Section,
    fmt,
    fmt_p,
    holm,
    machine,
    marked,
    mean,
    short_path,
    signed,
    ttest,
)
from hardneg.experiment.stages import PQ, train_stage, transfer_stage
from hardneg.io import atomic_write, read_json


class Report(FigureSections):
    def __init__(self, results: ExperimentResults, out: Path, *, svg: bool = False) -> None:
        self.r = results
        self.out = out
        self.fig_dir = out / "figures"
        self.svg = svg
        self.tables = {}
        self.drawn = {}
        self.per_query = {n: pq for n in results.names if (pq := results.per_query(n)) is not None}
        self.unseen = results.unseen()
        self.main_measure = "nDCG@10" if "nDCG@10" in results.measures else results.measures[-1]

    # markers: recipe baselines, then "ADORE's own base" for ADORE systems
    def _references(self) -> list[str]:
        return [b for b in self.r.eval.get("baselines") or [] if b in self.per_query]

    def _base_of(self, name: str) -> str | None:
        base = self.r.base_of(name)
        return base if base in self.per_query else None

    def _marks(self, name: str, measure: str, qids: list[str] | None) -> str:
        marks = ""
        pq = self.per_query[name][measure]
        for i, ref in enumerate(self._references()):
            if ref == name:
                continue
            other = self.per_query[ref][measure]
            if mean(pq, qids) > mean(other, qids) and ttest(pq, other, qids) < ALPHA:
                marks += MARKERS[i % len(MARKERS)]
        base = self._base_of(name)
        if base is not None:
            other = self.per_query[base][measure]
            if mean(pq, qids) > mean(other, qids) and ttest(pq, other, qids) < ALPHA:
                marks += "*"
        return marks

    def _transfer_metric(self, system: str | None, tag: str) -> float | None:
        st = self.r.stage(transfer_stage(system, tag)) if system is not None else None
        return st["result"]["metrics"].get(self.main_measure) if st else None

    # ------------------------------------------------------------------ Table 2
    def effectiveness(self) -> Section:
        measures = self.r.measures
        header = ["system", *measures]
        strata = self.unseen is not None and len(self.unseen) > 0
        if strata:
            header += [f"{self.main_measure} unseen-doc", "RR@10 unseen-doc" if "RR@10" in measures else ""]
            header = [h for h in header if h]
        transfer = self.r.transfer_tags()
        header += [f"{self.main_measure} {tag}" for tag in transfer]
        rows = []
        for name in self.r.names:
            if name not in self.per_query:
                rows.append([name, *["–"] * (len(header) - 1)])
                continue
            row = [name]
            for m in measures:
                row.append(marked(fmt(mean(self.per_query[name][m])), self._marks(name, m, None)))
            if strata:
                for m in [self.main_measure, "RR@10"]:
                    if m in measures:
                        row.append(marked(fmt(mean(self.per_query[name][m], self.unseen)),
                                          self._marks(name, m, self.unseen)))
            for tag in transfer:
                st = self.r.stage(transfer_stage(name, tag))
                row.append(fmt(st["result"]["metrics"].get(self.main_measure)) if st else "–")
            rows.append(row)
        refs = self._references()
        legend = "; ".join(f"{MARKERS[i % len(MARKERS)]} better than {ref}" for i, ref in enumerate(refs))
        n_test = len(next(iter(self.per_query.values()))[measures[0]]) if self.per_query else 0
        text = [
            "## Table 2 analogue: effectiveness on the test split",
            "",
            f"Means over the {n_test} judged test queries. Markers: paired two-sided t-test, p < {ALPHA}, "
            f"and a higher mean: {legend or 'no baselines'}; * better than the ADORE system's own base model.",
        ]
        if strata:
            text.append(
                f"\"unseen-doc\": the {len(self.unseen)} test queries none of whose relevant documents is relevant "
                "to any training query (the others can be helped by steering towards documents seen in training)."
            )
        if transfer:
            text.append("Transfer columns: the same model zero-shot on a collection it never trained on.")
        text += ["", self._table("table2_effectiveness", header, rows), ""]
        return Section("\n".join(text))

    # ------------------------------------------------------------------ generalisation
    def generalisation(self) -> Section:
        start = self.r.start
        if start not in self.per_query or not self.unseen:
            return Section()
        m = self.main_measure
        zero = self.per_query[start][m]
        all_q = list(zero)
        seen = sorted(set(all_q) - set(self.unseen))
        transfer = self.r.transfer_tags()
        header = ["system", f"Δ{m} seen-doc ({len(seen)})", "p seen-doc", "p Holm seen-doc",
                  f"Δ{m} unseen-doc ({len(self.unseen)})", "p unseen-doc", "p Holm unseen-doc",
                  *[f"Δ{m} {t}" for t in transfer], "verdict"]
        rows = []
        zero_transfer = {t: self._transfer_metric(start, t) for t in transfer}
        untrained = set(self.r.with_kind("zeroshot", "bm25"))
        names = [n for n in self.r.names if n not in untrained and n in self.per_query]
        raw = {n: (ttest(self.per_query[n][m], zero, seen), ttest(self.per_query[n][m], zero, self.unseen))
               for n in names}
        # the family: every comparison of this table (both strata of every system)
        adjusted = holm([p for n in names for p in raw[n]])
        holm_of = {n: (adjusted[2 * i], adjusted[2 * i + 1]) for i, n in enumerate(names)}
        for name in names:
            pq = self.per_query[name][m]
            d_seen = mean(pq, seen) - mean(zero, seen)
            d_unseen = mean(pq, self.unseen) - mean(zero, self.unseen)
            p_seen, p_unseen = holm_of[name]  # the verdict reads the corrected p
            deltas = []
            for t in transfer:
                st = self.r.stage(transfer_stage(name, t))
                z = zero_transfer[t]
                deltas.append(signed(st["result"]["metrics"][m] - z) if st and z is not None else signed(None))
            if d_seen > 0 and p_seen < ALPHA and not (d_unseen > 0 and p_unseen < ALPHA):
                verdict = "wins on seen documents only"
            elif d_unseen > 0 and p_unseen < ALPHA:
                verdict = "wins on unseen documents too"
            elif d_seen < 0 and p_seen < ALPHA:
                verdict = "worse than zero-shot"
            else:
                verdict = "no significant change"
            rows.append([name, signed(d_seen), fmt_p(raw[name][0]), fmt_p(p_seen), signed(d_unseen),
                         fmt_p(raw[name][1]), fmt_p(p_unseen), *deltas, verdict])
        return Section("\n".join([
            "## Generalisation: seen vs unseen documents, and transfer",
            "",
            f"Change in {m} against the zero-shot start model, per stratum of test queries (paired t-test p, and "
            "beside it the Holm–Bonferroni-corrected p over the family of every p in this table: both strata of "
            "every system; the verdict uses the corrected p), and on the transfer collections. A method that only "
            "wins where the relevant documents were already "
            "training positives is steering towards seen documents, not ranking better in general.",
            "",
            self._table("generalisation", header, rows),
            "",
        ]))

    # ------------------------------------------------------------------ Table 4
    def timing(self) -> Section:
        rows = []
        times: dict[str, float] = {}
        for s in self.r.systems:
            st = self.r.stage(train_stage(s["name"]))
            if st is None:
                continue
            log = [r for r in self.r.train_log(s["name"]) if r.get("kind") == "train"]
            step_s = [r["seconds"] for r in log]
            steps = len(step_s)
            cfg = st["settings"]
            times[s["name"]] = float(sum(step_s))
            rows.append([s["name"], s.get("method") or "", str(steps), str(cfg.get("batch_size")),
                         fmt(float(np.median(step_s)) if step_s else math.nan, 2), fmt(sum(step_s) / 60, 1),
                         fmt(st["seconds"] / 60, 1)])
        if not rows:
            return Section(facts={"times": times})
        return Section("\n".join([
            "## Table 4 analogue: training time on this machine",
            "",
            f"Machine: {machine()}. \"step time\": median seconds per optimiser step (forward, backward, update, "
            "and for ADORE the per-step retrieval); \"training\": the sum of step times; \"stage\": the whole stage "
            "wall-clock including dev evaluation, mining the static negatives, ANCE-style re-mining and "
            "negative-overlap tracking (all attempts when a stage was resumed; an attempt killed mid-way is not "
            "counted).",
            "",
            self._table("table4_training_time",
                        ["system", "method", "steps", "batch", "step time (s)", "training (min)", "stage (min)"], rows),
            "",
        ]), {"times": times})

    # ------------------------------------------------------------------ Tables 3 / 5
    def pq(self) -> Section:
        st = self.r.stage(PQ)
        if st is None:
            return Section()
        grid, sizes = st["result"]["metrics"], st["result"]["bytes"]
        indexes = st["settings"]["indexes"]
        m = self.main_measure
        header = ["model \\ test index", *[f"{k} ({sizes.get(k, 0) / 2**20:.2f} MiB)" for k in indexes]]
        rows = [[name, *[fmt(grid[name][k].get(m)) for k in indexes]] for name in st["settings"]["systems"]]
        path, unplaced = self._pq_figure(st)
        note = (f" Not in the figure (bytes per document unknown): {', '.join(unplaced)}." if unplaced else "")
        return Section("\n".join([
            "## Tables 3 and 5 analogue: compressed indexes (test)",
            "",
            f"{m} of each model (rows; ADORE systems name the index they trained on) on each test index (columns, "
            "with the index file size). Flat = exact inner product; pq<M> = product quantisation with M bytes per "
            "document.",
            "",
            self._table("table3_5_pq", header, rows),
            "",
            f"![Index size vs quality]({path})",
            "",
            f"The same grid against the bytes each document takes in the index (flat: 4·dim, pq<M>: M; dashed = "
            f"ADORE).{note}",
            "",
        ]), {"pq_grid": (grid, indexes, m)})

    # ------------------------------------------------------------------ head-to-head (eval.pairs)
    def _dev_metrics(self, trained: str) -> dict[str, Any] | None:
        """The best dev metrics of a trained system (its ``dev_metrics.json``); None for an untrained one."""
        path = self.r.stage_file(train_stage(trained), "dev_metrics.json")
        return read_json(path) if self.r.stage(train_stage(trained)) and path.is_file() else None

    def paired(self) -> Section:
        """``eval.pairs``: each system against the reference it names, per query, on all test queries and on
        the seen- and unseen-document strata (t-test p, Holm over every p of the table), the transfer sets
        and the best dev value (what model selection saw)."""
        pairs = [(a, b) for a, b in self.r.eval.get("pairs") or [] if a in self.per_query and b in self.per_query]
        if not pairs:
            return Section()
        m = self.main_measure
        first = self.per_query[pairs[0][0]][m]
        strata: list[tuple[str, list[str] | None]] = [(f"all ({len(first)})", None)]
        if self.unseen:
            seen = sorted(set(first) - set(self.unseen))
            strata += [(f"seen-doc ({len(seen)})", seen), (f"unseen-doc ({len(self.unseen)})", self.unseen)]
        transfer = self.r.transfer_tags()
        raw = [[ttest(self.per_query[b][m], self.per_query[a][m], q) for _, q in strata] for a, b in pairs]
        flat = holm([p for row in raw for p in row])  # the family: every p of this table
        header = ["system", "reference"]
        for label, _ in strata:
            header += [f"Δ{m} {label}", f"p {label.split(' ')[0]}", f"p Holm {label.split(' ')[0]}"]
        header += [*[f"Δ{m} {t}" for t in transfer], f"Δ best dev {m}"]
        rows = []
        for i, (a, b) in enumerate(pairs):
            row = [b, a]
            for j, (_, q) in enumerate(strata):
                d = mean(self.per_query[b][m], q) - mean(self.per_query[a][m], q)
                row += [signed(d), fmt_p(raw[i][j]), fmt_p(flat[i * len(strata) + j])]
            dev = [(self._dev_metrics(n) or {}).get(m) for n in (b, a)]
            for x, y in [*((self._transfer_metric(b, t), self._transfer_metric(a, t)) for t in transfer), dev]:
                row.append(signed(x - y) if x is not None and y is not None else signed(None))
            rows.append(row)
        return Section("\n".join([
            "## Head-to-head: each system against its reference",
            "",
            f"The recipe's `eval.pairs`: Δ{m} = system − reference, on every test query and per stratum (paired "
            "two-sided t-test over queries; p Holm: Holm–Bonferroni-corrected over every p of this table), on the "
            "transfer collections (difference of means) and on dev (each system's best dev value, the one model "
            "selection picked).",
            "",
            self._table("pairs", header, rows),
            "",
        ]))

    # ------------------------------------------------------------------ the whole report
    def sections(self) -> list[Section]:
        return [self.effectiveness(), self.generalisation(), self.paired(), self.interpolation(),
                self.per_query_delta(), self.pairwise(), self.curves(), self.negatives(),
                self.training_curves(), self.lambda_vs_ranknet(), self.timing(), self.pq(), self.tsne()]

    def render(self) -> str:
        r = self.r
        stages = sorted((r.dir / "stages").glob("*/stage.json"))
        states = [read_json(p) for p in stages]
        done = [s for s in states if s.get("status") == "done"]
        total = sum(float(s.get("seconds", 0.0)) for s in states)
        sections = self.sections()
        facts: dict[str, Any] = {}
        for section in sections:
            facts.update(section.facts)
        findings = Findings(r, self.per_query, self.unseen, self.main_measure).section(facts)
        head = [
            f"# Experiment report: {r.recipe.get('name')}",
            "",
            f"{r.recipe.get('description') or ''}".strip(),
            "",
            f"- data: `{short_path(r.recipe['data'])}`; start model: `{r.recipe.get('model')}`; "
            f"seed {r.recipe.get('seed')}",
            f"- machine: {machine()}",
            f"- stages done: {len(done)} of {len(states)}; summed stage wall-clock {total / 3600:.2f} h",
            "- test split evaluated once per final model (the best dev checkpoint); dev = a seeded carve-out of train",
            "",
        ]
        parts = [findings, *sections]
        return "\n".join(head + [s.markdown for s in parts if s.markdown])

    def write(self, *, latex: bool = False) -> Path:
        """Render into ``out``: ``report.md``, its figures and ``tables/<name>.csv`` (and ``.tex``)."""
        self.out.mkdir(parents=True, exist_ok=True)
        text = self.render()
        tables = self.out / "tables"
        tables.mkdir(exist_ok=True)
        for name, tab in self.tables.items():
            with atomic_write(tables / f"{name}.csv") as fh:
                fh.write(tab.csv())
            if latex:
                with atomic_write(tables / f"{name}.tex") as fh:
                    fh.write(tab.latex())
        with atomic_write(self.out / "results.json") as fh:
            fh.write(json.dumps(self.results(), indent=1, sort_keys=False) + "\n")
        path = self.out / "report.md"
        with atomic_write(path) as fh:
            fh.write(text)
        return path

    def results(self) -> dict[str, Any]:
        """``results.json``: per system the test numbers of the tables (Table 2, its strata and transfer columns),
        the best dev metrics, training steps and the training stage's wall-clock seconds (Table 4's "stage")."""
        m = self.main_measure
        out: dict[str, Any] = {}
        for name in self.r.names:
            entry: dict[str, Any] = {}
            pq = self.per_query.get(name)
            for measure in self.r.measures:
                entry[measure] = mean(pq[measure]) if pq else None
            if self.unseen:
                entry[f"{m}_unseen"] = mean(pq[m], self.unseen) if pq else None
                entry[f"{m}_seen"] = mean(pq[m], sorted(set(pq[m]) - set(self.unseen))) if pq else None
            entry["transfer"] = {t: self._transfer_metric(name, t) for t in self.r.transfer_tags()}
            trained = self.r.system(name).get("wise_of", name)
            st = self.r.stage(train_stage(trained))
            entry["dev"] = self._dev_metrics(trained)
            if name != trained:  # an interpolation: the picked weight's dev metrics
                pick = self.r.wise_pick(trained)
                entry["dev"] = {"alpha": pick["alpha"], **pick["dev"]} if pick else None
            entry["steps"] = len([x for x in self.r.train_log(trained) if x.get("kind") == "train"]) if st else None
            entry["train_seconds"] = float(st["seconds"]) if st else None
            out[name] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in entry.items()}
        return {"systems": out}


def write_report(run_dir: str | Path, out: str | Path | None = None, *, latex: bool = False,
                 svg: bool = False) -> Path:
    """Write ``report.md``, ``figures/`` (PNG; also SVG with ``svg``) and ``tables/`` (CSV; also LaTeX with
    ``latex``) for an experiment folder; returns the report's path."""
    results = ExperimentResults(run_dir)
    return Report(results, Path(out) if out else results.dir, svg=svg).write(latex=latex)


def main_table(run_dir: str | Path) -> str:
    """The effectiveness table (markdown) of an experiment, for printing at the end of a run."""
    results = ExperimentResults(run_dir)
    return Report(results, results.dir).effectiveness().markdown
