"""The report's sections that draw a figure: Table 1 / Fig. 3, Fig. 4, training curves, Fig. 5,
per-query differences, Tables 3/5 (PQ size vs quality) and Fig. 6.

Each section returns a :class:`~hardneg.experiment.results.Section`: its markdown and
the facts the findings read (``concentration``, ``tracked``, ``lambda_rows``). Every
system keeps one colour in every figure (:func:`system_colours`, from the recipe's order).
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.evaluate.analysis import error_concentration
from hardneg.experiment.results import (
    RANDOM_NEGATIVES,
    ExperimentResults,
    Section,
    Table,
    fmt,
    fmt_p,
    holm,
    mean,
    signed,
    ttest,
)
from hardneg.experiment.stages import PAIRWISE, TSNE, train_stage, wise_curve_stage, wise_name
from hardneg.io import read_json

#: the figures' palette: tab10, then the light half of tab20 (matplotlib's own hex values)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")


def system_colours(names: list[str]) -> dict[str, str]:
    """One colour per system, fixed by its position in the recipe (cycling after 20 systems)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def bytes_per_doc(kind: str, dim: int | None) -> int | None:
    """Code bytes per document of an index kind: flat (and HNSW's vectors) 4·dim, pq<M> / ivf<L>pq<M> M bytes
    (DRhard's Table 3 compares indexes by this); None when it cannot be told (a raw factory string)."""
    low = kind.strip().lower()
    if (low == "flat" or re.fullmatch(r"hnsw\d*", low)) and dim:
        return 4 * int(dim)
    if m := re.fullmatch(r"(?:ivf\d*)?pq(\d+)", low):
        return int(m.group(1))
    if re.fullmatch(r"ivf\d*pq", low) and dim:
        return max(1, int(dim) // 8)  # hardneg's default sub-vector count (index/faiss_index.py)
    return None


def pyplot():
    import matplotlib  # heavy and only for figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what there is)."""
    x = np.asarray(values, dtype=float)
    if window <= 1 or len(x) < 3:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(0, n - window)
    return (c[n] - c[lo]) / (n - lo)


def _drawn(fig) -> dict[str, dict[str, Any]]:
    """Label → {colour, x, y} of what a figure draws (lines, scatters, bars), to check figures against their data."""
    from matplotlib.colors import to_hex

    out: dict[str, dict[str, Any]] = {}  # by label (its first panel), and by "<panel>:<label>"

    def add(i: int, label: str, colour, x, y) -> None:
        if not str(label).startswith("_"):
            item = {"colour": to_hex(colour), "x": [float(v) for v in x], "y": [float(v) for v in y]}
            out.setdefault(str(label), item)
            out.setdefault(f"{i}:{label}", item)

    for i, ax in enumerate(fig.axes):
        for line in ax.get_lines():
            add(i, line.get_label(), line.get_color(), line.get_xdata(), line.get_ydata())
        for coll in ax.collections:
            if len(coll.get_facecolor()):
                xy = np.asarray(coll.get_offsets()).reshape(-1, 2)
                add(i, coll.get_label(), coll.get_facecolor()[0], xy[:, 0], xy[:, 1])
        for cont in ax.containers:
            if len(cont.patches):
                add(i, cont.get_label(), cont.patches[0].get_facecolor(),
                    [p.get_x() + p.get_width() / 2 for p in cont], [p.get_height() for p in cont])
    return out


def _rules_text(rules: dict[str, Any] | None) -> str:
    """The rules of a diagnostics event that differ from their defaults (``plain top-k`` when none)."""
    from dataclasses import asdict

    from hardneg.train.selection import NegativeRules

    default = asdict(NegativeRules())
    changed = {k: v for k, v in (rules or {}).items() if k in default and v != default[k]}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "plain top-k"


class FigureSections:
    """The figure-drawing sections of :class:`~hardneg.experiment.report.Report`."""

    r: ExperimentResults
    fig_dir: Path
    per_query: dict[str, dict[str, dict[str, float]]]
    main_measure: str
    unseen: list[str] | None
    svg: bool
    #: every table of the report by name (written as tables/<name>.csv and .tex)
    tables: dict[str, Table]
    #: figure file → {label: {colour, x, y}} of what it draws
    drawn: dict[str, dict[str, dict[str, Any]]]

    @property
    def colours(self) -> dict[str, str]:
        return system_colours(self.r.names)

    def _table(self, name: str, header: list[str], rows: list[list[str]]) -> str:
        self.tables[name] = Table(name, header, rows)
        return self.tables[name].markdown

    def _save(self, fig, name: str) -> str:
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        path = self.fig_dir / name
        fig.tight_layout()
        self.drawn[name] = _drawn(fig)
        for suffix in (".png", ".svg") if self.svg else (".png",):
            target = path.with_suffix(suffix)
            tmp = path.with_suffix(".tmp" + suffix)
            fig.savefig(tmp, dpi=110)
            tmp.replace(target)
        pyplot().close(fig)
        return f"figures/{name}"

    # ------------------------------------------------------------------ Table 1 / Fig. 3
    def pairwise(self) -> Section:
        st = self.r.stage(PAIRWISE)
        if st is None:
            return Section("## Table 1 analogue: pairwise errors\n\n(not run)\n")
        topk = st["settings"]["topk"]
        rows = []
        for name in st["settings"]["systems"]:
            res = st["result"].get(name)
            if res:
                rows.append([name, fmt(res["total"], 1), fmt(res[f"top{topk}"], 1)])
        fig = self._fig3(st["settings"]["systems"], topk)
        return Section("\n".join([
            "## Table 1 analogue: pairwise errors (test)",
            "",
            f"Mean per query of the (relevant, non-relevant) pairs ranked the wrong way round over the whole corpus "
            f"(total), and over the non-relevant documents among the model's top {topk} (top-{topk}).",
            "",
            self._table("table1_pairwise_errors", ["system", "total", f"top-{topk}"], rows),
            "",
            fig.markdown,
        ]), fig.facts)

    def _fig3(self, systems: list[str], topk: int) -> Section:
        """Error concentration of a random-negative model (the first analysed system if there is none)."""
        name = self.r.first_with_method(RANDOM_NEGATIVES, among=systems) or next(iter(systems), None)
        if name is None:
            return Section()
        errors = read_json(self.r.stage_file(PAIRWISE, f"{name}.json"))
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 4))
        lines = []
        for key, label in (("total", "total errors"), ("top", f"top-{topk} errors")):
            x, y = error_concentration(errors[key])
            ax.plot(x, y, label=label)
            if len(x) > 1:
                i = int(np.searchsorted(x, 0.2))
                lines.append(f"the 20% of queries with the most {label} hold {y[min(i, len(y) - 1)]:.0%} of them")
        ax.plot([0, 1], [0, 1], ":", color="grey", label="uniform")
        ax.set_xlabel("share of queries (most errors first)")
        ax.set_ylabel("share of pairwise errors")
        ax.set_title(f"Fig. 3 analogue: {name}")
        ax.legend()
        path = self._save(fig, "fig3_error_concentration.png")
        return Section(f"![Fig. 3 analogue]({path})\n\nFig. 3 analogue ({name}): {'; '.join(lines)}.\n",
                       {"concentration": (name, lines)})

    # ------------------------------------------------------------------ Fig. 4
    def curves(self) -> Section:
        plt = pyplot()
        tracked = {n: [r for r in self.r.train_log(n) if r.get("kind") == "track"] for n in self.r.names}
        tracked = {n: v for n, v in tracked.items() if v and any(k.startswith("overlap@") for k in v[0])}
        dev = {n: [r for r in self.r.train_log(n) if r.get("kind") == "dev"] for n in self.r.names}
        dev = {n: v for n, v in dev.items() if v and self._curve_worthy(n)}
        if not tracked and not dev:
            return Section()
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        text = ["## Fig. 4 analogue: static negatives go stale; quality per step", ""]
        for name, recs in tracked.items():
            key = next(k for k in recs[0] if k.startswith("overlap@"))
            s = self.r.system(name)
            # the start model mined these static negatives itself: overlap 1 at step 0 by construction
            mined_by_start = s.get("method") == "ance" or (s.get("method") in ("star", "static")
                                                           and not s.get("settings", {}).get("negatives"))
            steps = ([0] if mined_by_start else []) + [r["step"] for r in recs]
            values = ([1.0] if mined_by_start else []) + [r[key] for r in recs]
            axes[0].plot(steps, values, marker="o", label=name, color=self.colours[name])
            text.append(f"- {name}: {key} of its static negatives with the current model's top negatives: "
                        + ", ".join(f"step {r['step']}: {r[key]:.2f}" for r in recs))
        axes[0].set_xlabel("training step")
        keys = sorted({next(k for k in recs[0] if k.startswith("overlap@")) for recs in tracked.values()})
        axes[0].set_ylabel(f"{'/'.join(keys) or 'overlap'}, static vs dynamic negatives")
        axes[0].set_ylim(0, 1.05)
        axes[0].set_title("(a) overlap with dynamic hard negatives")
        if tracked:
            axes[0].legend()
        metric = "RR@10"
        for name, recs in dev.items():
            style = "--" if self.r.is_adore(name) else "-"
            axes[1].plot([r["step"] for r in recs], [r.get(metric, math.nan) for r in recs], style, marker=".",
                         label=name, color=self.colours[name])
        axes[1].set_xlabel("training step")
        axes[1].set_ylabel(f"dev {metric}")
        axes[1].set_title("(b) dev quality per step")
        axes[1].legend(fontsize=7)
        path = self._save(fig, "fig4_overlap_and_dev.png")
        text += ["", f"![Fig. 4 analogue]({path})", "",
                 "Overlap at step 0 is 1 by construction where the start model mined the static negatives itself. "
                 "Dev curves: solid = document encoder trained (dev ranks a BM25 top-20 pool per dev query plus "
                 "its positives), dashed = ADORE (dev ranks the full fixed index), so the two families' levels are "
                 "not comparable with each other, only their trends.", ""]
        return Section("\n".join(text), {"tracked": tracked})

    def _curve_worthy(self, name: str) -> bool:
        """Fig. 4b shows every document-trained system, and only the plain ADORE variants (flat, LambdaLoss)
        on the zero-shot model and on STAR, to stay readable."""
        if not self.r.is_adore(name):
            return True
        base = self.r.base_of(name)
        return self.r.is_plain_adore(name) and (base == self.r.start or base in self.r.with_method("star"))

    # ------------------------------------------------------------------ training curves
    def training_curves(self) -> Section:
        """Training loss and dev quality per step of every trained system (train_log.jsonl)."""
        trained = [n for n in self.r.names if self.r.system(n).get("kind") == "train"]
        logs = {n: self.r.train_log(n) for n in trained}
        loss = {n: [x for x in recs if x.get("kind") == "train" and isinstance(x.get("loss"), (int, float))]
                for n, recs in logs.items()}
        loss = {n: v for n, v in loss.items() if v}
        dev = {n: [x for x in recs if x.get("kind") == "dev"] for n, recs in logs.items()}
        dev = {n: v for n, v in dev.items() if v}
        if not loss and not dev:
            return Section()
        keys = {k for recs in dev.values() for x in recs for k in x}
        metric = self.main_measure if self.main_measure in keys else "RR@10"
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        longest = max((len(v) for v in loss.values()), default=0)
        window = max(1, longest // 50)
        for name, recs in loss.items():
            steps, values = [x["step"] for x in recs], [float(x["loss"]) for x in recs]
            style = "--" if self.r.is_adore(name) else "-"
            if window > 1:  # raw values faint, their moving average drawn over them
                axes[0].plot(steps, values, style, color=self.colours[name], alpha=0.25, linewidth=0.8)
            axes[0].plot(steps, _smooth(values, window), style, color=self.colours[name], label=name)
        if loss and all(float(x["loss"]) > 0 for v in loss.values() for x in v):
            axes[0].set_yscale("log")  # the methods' losses differ by orders of magnitude
        axes[0].set_xlabel("training step")
        axes[0].set_ylabel("training loss" + (f" (moving average of {window} steps)" if window > 1 else ""))
        axes[0].set_title("(a) training loss")
        for name, recs in dev.items():
            style = "--" if self.r.is_adore(name) else "-"
            axes[1].plot([x["step"] for x in recs], [x.get(metric, math.nan) for x in recs], style, marker=".",
                         color=self.colours[name], label=name)
        axes[1].set_xlabel("training step")
        axes[1].set_ylabel(f"dev {metric}")
        axes[1].set_title(f"(b) dev {metric}")
        for ax in axes:
            if ax.get_lines():
                ax.legend(fontsize=7)
        path = self._save(fig, "training_curves.png")
        rows = []
        for name in trained:
            last = loss.get(name, [{}])[-1].get("loss")
            d = [x.get(metric) for x in dev.get(name, []) if isinstance(x.get(metric), (int, float))]
            best = int(np.argmax(d)) if d else None
            rows.append([name, self.r.system(name).get("method") or "", str(len(loss.get(name, []))), fmt(last, 4),
                         fmt(d[0] if d else None), fmt(max(d) if d else None),
                         str(dev[name][best]["step"]) if best is not None else "–"])
        return Section("\n".join([
            "## Training curves: loss and dev quality per step",
            "",
            f"Every trained system's training loss per optimiser step (log scale where every loss is positive) and "
            f"its dev {metric} at each dev evaluation (step 0 = before training). Solid = document encoder trained, "
            "dashed = ADORE (query encoder only, dev ranks the full fixed index); the losses of different methods "
            "are different objectives, so compare their shapes, not their levels.",
            "",
            f"![Training curves]({path})",
            "",
            self._table("training_curves", ["system", "method", "steps", "last loss", f"dev {metric} at step 0",
                                            f"best dev {metric}", "best step"], rows),
            "",
        ]))

    # ------------------------------------------------------------------ interpolate: (WiSE-FT)
    def interpolation(self) -> Section:
        """The WiSE-FT curve of every interpolated system: dev (which picked the weight) and, apart, test."""
        systems = [n for n in self.r.interpolated() if self.r.wise_pick(n)]
        if not systems:
            return Section()
        m = self.main_measure
        tags = self.r.transfer_tags()
        strata = bool(self.unseen)
        header = ["system", "α", "dev metric", "dev", "picked", f"test {m}"]
        header += [f"test {m} seen-doc", f"test {m} unseen-doc"] if strata else []
        header += [f"{m} {t}" for t in tags]
        plt = pyplot()
        fig, (ax_dev, ax_test) = plt.subplots(1, 2, figsize=(10, 4))
        rows: list[list[str]] = []
        styles = {"all": "-", "seen-doc": "--", "unseen-doc": ":"}
        for name in systems:
            pick = self.r.wise_pick(name) or {}
            metric = pick["dev_metric"]
            alphas = [c["alpha"] for c in pick["curve"]]
            dev = [c.get(metric, math.nan) for c in pick["curve"]]
            colour = self.colours[name]
            ax_dev.plot(alphas, dev, marker="o", color=colour, label=f"{name} dev {metric}")
            ax_dev.scatter([pick["alpha"]], [pick["dev"][metric]], s=120, facecolors="none", edgecolors=colour,
                           label=f"_{name} pick")
            curve = self.r.stage(wise_curve_stage(name))
            test: dict[str, list[float]] = {k: [] for k in ([*styles] if strata else ["all"])}
            transfer: dict[str, list[float]] = {t: [] for t in tags}
            for a, d in zip(alphas, dev, strict=True):
                row = [name, fmt(a, 2), metric, fmt(d), "✓" if a == pick["alpha"] else ""]
                values: list[float] = []
                if curve is not None:
                    pq = read_json(self.r.stage_file(wise_curve_stage(name), f"a{a:g}/per_query.json"))[m]
                    values = [mean(pq)]
                    if strata:
                        values += [mean(pq, sorted(set(pq) - set(self.unseen or []))), mean(pq, self.unseen)]
                    for key, v in zip(test, values, strict=True):
                        test[key].append(v)
                    for t in tags:
                        transfer[t].append(curve["result"]["transfer"].get(t, {}).get(f"{a:g}", {}).get(m, math.nan))
                row += [fmt(v) for v in values] or ["–"] * (3 if strata else 1)
                row += [fmt(transfer[t][-1]) if curve is not None else "–" for t in tags]
                rows.append(row)
            if curve is not None:
                for key, ys in test.items():
                    ax_test.plot(alphas, ys, styles[key], marker=".", color=colour, label=f"{name} test {key}")
                for j, t in enumerate(tags):
                    ax_test.plot(alphas, transfer[t], "-.", marker="sD^v<>"[j % 6], color=colour,
                                 label=f"{name} {t}")
        ax_dev.set_xlabel("α (0: start model, 1: trained system)")
        ax_dev.set_ylabel("dev (the selection metric)")
        ax_dev.set_title("dev: picks α (circled)", fontsize=9)
        ax_test.set_xlabel("α (0: start model, 1: trained system)")
        ax_test.set_ylabel(m)
        ax_test.set_title("test and transfer: NOT used for selection", fontsize=9)
        for ax in (ax_dev, ax_test):
            ax.legend(fontsize=6)
        path = self._save(fig, "wise_interpolation.png")
        picks = "; ".join(f"{wise_name(n)}: α = {(self.r.wise_pick(n) or {})['alpha']:g}" for n in systems)
        return Section("\n".join([
            "## Weight interpolation (WiSE-FT): start model ↔ trained system",
            "",
            "(1 − α)·start + α·system, weight by weight (Wortsman et al. 2022; ADORE systems: the query tower only, "
            "between the base's and ADORE's, the document tower and index kept). α is picked on the system's own "
            f"dev set (the carve-out of train it selected its checkpoint on); the pick is the row `<system>+wise` "
            f"of the tables above, tested once. Picks: {picks}.",
            "",
            f"![WiSE-FT curve]({path})",
            "",
            "The test and transfer columns (and the right panel) are every α on test: shown to see the trade-off, "
            "**not used for selection**.",
            "",
            self._table("wise_interpolation", header, rows),
            "",
        ]))

    # ------------------------------------------------------------------ negatives diagnostics
    def _diagnostics(self, name: str) -> list[dict[str, Any]]:
        """The negative-selection events a system's training recorded (``negatives_diagnostics.json``)."""
        from hardneg.train.selection import DIAGNOSTICS_FILE

        if self.r.stage(train_stage(name)) is None:
            return []
        path = self.r.stage_file(train_stage(name), DIAGNOSTICS_FILE)
        return list(read_json(path).get("events", [])) if path.is_file() else []

    def negatives(self) -> Section:
        """What the negative-selection rules did in each trained system: counts per rule over every event
        (warm-up mining, refreshes, ADORE's steps) and, for the largest event, the score histograms of the
        positives, the kept negatives and those a score rule removed."""
        events = {s["name"]: ev for s in self.r.systems if (ev := self._diagnostics(s["name"]))}
        if not events:
            return Section()
        rules = sorted({r for ev in events.values() for e in ev for r, v in e.get("removed", {}).items() if v
                        and r != "not_sampled"})
        rows = []
        for name, ev in events.items():
            cand = sum(e.get("candidates", 0) for e in ev)
            removed = {r: sum(e.get("removed", {}).get(r, 0) for e in ev) for r in rules}
            kept = sum(e.get("kept", 0) for e in ev)
            short = max((e.get("queries_short", 0) for e in ev), default=0)
            rows.append([name, _rules_text(ev[0].get("rules")), str(len(ev)), str(cand),
                         *[f"{removed[r]} ({100 * removed[r] / max(cand, 1):.1f}%)" for r in rules], str(kept),
                         str(short)])
        shown = [n for n in events if any(e.get("histogram") for e in events[n])][:6]
        fig_md = ""
        if shown:
            plt = pyplot()
            fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.2), squeeze=False)
            for ax, name in zip(axes[0], shown, strict=True):
                big = max(events[name], key=lambda e: e.get("candidates", 0))
                hist = big["histogram"]
                edges = np.asarray(hist["edges"], dtype=np.float64)
                for key, colour in (("positive", "#2ca02c"), ("kept", "#1f77b4"), ("removed", "#d62728")):
                    counts = np.asarray(hist.get(key, []), dtype=np.float64)
                    if counts.sum() > 0:
                        ax.stairs(counts / counts.sum(), edges, color=colour, label=f"{key} ({int(counts.sum())})")
                ax.set_title(textwrap.fill(f"{name}: {big.get('where', '')}", 52), fontsize=8)  # wrapped, not cut
                ax.set_xlabel("score (teacher's, or the retriever's)")
                ax.legend(fontsize=6)
            axes[0][0].set_ylabel("share of its scores")
            fig_md = f"![Negative-selection score histograms]({self._save(fig, 'negatives_diagnostics.png')})"
        header = ["system", "rules", "events", "candidates", *[f"removed: {r}" for r in rules], "kept",
                  "queries short (max per event)"]
        return Section("\n".join([
            "## Negative selection: what the rules removed",
            "",
            "Summed over every event in which a system chose negatives (warm-up mining, ANCE-style refreshes, "
            "ADORE's per-step top-k). Candidates are the retrieved non-positive documents; a rule's count is the "
            "candidates it removed (a candidate is counted once, by the first rule that removes it). Queries short: "
            "queries left with fewer negatives than asked, in the event with the most.",
            "",
            self._table("negatives_diagnostics", header, rows),
            "",
            fig_md,
            "",
            "Histograms (the event with the most candidates): scores of the queries' positives, of the kept "
            "negatives and of the negatives a score rule (margins, max_score) removed, each normalised to 1."
            if fig_md else "",
        ]))

    # ------------------------------------------------------------------ Fig. 5
    def _ranknet_pairs(self) -> list[tuple[str, str]]:
        """(LambdaLoss, RankNet) ADORE twins: same base and index, differing only in the loss."""
        pairs = []
        for s in self.r.systems:
            settings = s.get("settings", {})
            if s.get("method") != "adore" or settings.get("adore_loss") != "ranknet":
                continue
            twin = next((t["name"] for t in self.r.systems if t.get("method") == "adore"
                         and self.r.base_of(t["name"]) == self.r.base_of(s["name"])
                         and t.get("settings", {}).get("adore_loss", "lambda") == "lambda"
                         and self.r.adore_index(t["name"]) == settings.get("index", "flat")), None)
            if twin:
                pairs.append((twin, s["name"]))
        return pairs

    def lambda_vs_ranknet(self) -> Section:
        pairs = self._ranknet_pairs()
        if not pairs:
            return Section()
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 4))
        text = ["## Fig. 5 analogue: ADORE with LambdaLoss vs RankNet", ""]
        rows: list[list[str]] = []
        facts: dict[str, Any] = {}
        for lam, rank in pairs:
            for name, label in ((lam, "LambdaLoss (ΔMRR-weighted)"), (rank, "RankNet (unweighted)")):
                recs = [r for r in self.r.train_log(name) if r.get("kind") == "dev"]
                if recs:
                    ax.plot([r["step"] for r in recs], [r.get("RR@10", math.nan) for r in recs], marker="o",
                            label=f"{label}: {name}", color=self.colours[name])
            if lam in self.per_query and rank in self.per_query:
                pair_rows = []
                for m in self.r.measures:
                    a, b = self.per_query[lam][m], self.per_query[rank][m]
                    pair_rows.append([m, fmt(mean(a)), fmt(mean(b)), ttest(a, b)])
                # Holm over the family of this pair's measures
                for row, adj in zip(pair_rows, holm([r[3] for r in pair_rows]), strict=True):
                    rows.append([*row[:3], fmt_p(row[3]), fmt_p(adj)])
                facts["lambda_rows"] = (lam, rank, rows)
        ax.set_xlabel("training step")
        ax.set_ylabel("dev RR@10")
        ax.legend(fontsize=7)
        path = self._save(fig, "fig5_lambda_vs_ranknet.png")
        text += [f"![Fig. 5 analogue]({path})", ""]
        if rows:
            text += [f"Test: {pairs[0][0]} (LambdaLoss) vs {pairs[0][1]} (RankNet), paired t-test; \"p Holm\": "
                     "Holm–Bonferroni-corrected over the family of this table's measures.", "",
                     self._table("fig5_lambda_vs_ranknet", ["measure", "LambdaLoss", "RankNet", "p", "p Holm"], rows),
                     ""]
        return Section("\n".join(text), facts)

    # ------------------------------------------------------------------ per-query differences
    def headline(self) -> tuple[str | None, list[str]]:
        """The reference (the first random-negative system, else the first baseline, else the start model) and
        the headline systems: STAR and plain ADORE on STAR (plain ADORE on the start model when there is no STAR)."""
        have = list(self.per_query)
        refs = [b for b in self.r.eval.get("baselines") or [] if b in self.per_query]
        ref = self.r.first_with_method(RANDOM_NEGATIVES, among=have) or next(iter(refs), None)
        ref = ref or (self.r.start if self.r.start in self.per_query else None)
        stars = self.r.with_method("star")
        star = self.r.first_with_method("star", among=have)
        plain = [n for n in self.r.with_method("adore", among=have) if self.r.is_plain_adore(n)]
        on_star = [n for n in plain if self.r.base_of(n) in stars]
        heads = [star, *on_star[:1]] if star or on_star else [n for n in plain if self.r.base_of(n) == self.r.start][:1]
        return ref, [h for h in heads if h and h != ref]

    def per_query_delta(self) -> Section:
        """Per-query Δ of the main measure, headline systems minus the reference, as sorted bars."""
        ref, heads = self.headline()
        if ref is None or not heads:
            return Section()
        m = self.main_measure
        base = self.per_query[ref][m]
        plt = pyplot()
        fig, axes = plt.subplots(1, len(heads), figsize=(5.5 * len(heads), 3.8), sharey=True, squeeze=False)
        rows = []
        for ax, name in zip(axes[0], heads, strict=True):
            pq = self.per_query[name][m]
            qids = sorted(set(pq) & set(base))
            delta = np.array(sorted((pq[q] - base[q] for q in qids), reverse=True))
            wins, losses = int((delta > 1e-9).sum()), int((delta < -1e-9).sum())
            ax.bar(np.arange(len(delta)), delta, width=1.0, linewidth=0, color=self.colours[name], label=name)
            ax.axhline(0, color="black", linewidth=0.6)
            ax.set_xlabel(f"test queries, sorted by Δ{m} ({len(delta)})")
            ax.set_title(f"{name} − {ref}: {wins} better, {losses} worse", fontsize=9)
            rows.append([name, ref, signed(float(delta.mean()) if len(delta) else math.nan), str(wins),
                         str(len(delta) - wins - losses), str(losses), ttest(pq, base)])
        for row, adj in zip(rows, holm([r[6] for r in rows]), strict=True):  # family: this table's rows
            row[6:] = [fmt_p(row[6]), fmt_p(adj)]
        axes[0][0].set_ylabel(f"Δ{m} per query")
        path = self._save(fig, "per_query_delta.png")
        return Section("\n".join([
            f"## Per-query Δ{m} against {ref}",
            "",
            f"Each bar is one test query: {m} of the headline system minus {ref} (the random-negative reference), "
            "sorted. A mean gain carried by a few queries shows as a short tall head and a long flat tail. "
            "p: paired t-test; p Holm: Holm–Bonferroni-corrected over the family of this table's rows.",
            "",
            f"![Per-query Δ{m}]({path})",
            "",
            self._table("per_query_delta", ["system", "reference", f"mean Δ{m}", "better", "tied", "worse", "p",
                                             "p Holm"], rows),
            "",
        ]))

    # ------------------------------------------------------------------ Tables 3 / 5 figure
    def _pq_figure(self, st: dict[str, Any]) -> tuple[str, list[str]]:
        """nDCG@10 (the main measure) against code bytes per document, one line per model; returns the figure's
        path and the index kinds it could not place."""
        grid, indexes = st["result"]["metrics"], st["settings"]["indexes"]
        dims = st["result"].get("dims") or {}
        m = self.main_measure
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4.2))
        ticks: dict[int, list[str]] = {}
        unplaced: list[str] = []
        for name in st["settings"]["systems"]:
            pts = []
            for kind in indexes:
                size = bytes_per_doc(kind, dims.get(name))
                value = grid.get(name, {}).get(kind, {}).get(m)
                if size is None:
                    unplaced.append(kind)
                elif value is not None:
                    pts.append((size, value))
                    ticks.setdefault(size, [])
                    if kind not in ticks[size]:
                        ticks[size].append(kind)
            if pts:
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if self.r.is_adore(name) else "-",
                        marker="o", color=self.colours[name], label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ticks), [f"{'/'.join(ticks[s])}\n{s} B" for s in sorted(ticks)], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("bytes per document (index codes)")
        ax.set_ylabel(f"test {m}")
        ax.set_title("Index size vs quality")
        if ax.get_lines():
            ax.legend(fontsize=7)
        return self._save(fig, "pq_size_vs_quality.png"), sorted(set(unplaced))

    # ------------------------------------------------------------------ Fig. 6
    def _best_ranks(self, name: str, k: int) -> dict[str, int] | None:
        """Best rank of a relevant document per judged test query in a system's test run (its top ``k``); a query
        with none there gets k + 1 (censored: "not in the top k")."""
        run, qrels = self.r.run(name), self.r.test_qrels()
        if run is None or qrels is None or name not in self.per_query:
            return None
        out = {}
        for q in self.per_query[name][self.r.measures[0]]:
            rel = {d for d, g in qrels.get(q, {}).items() if g >= 1}
            out[q] = next((i + 1 for i, (d, _) in enumerate(run.get(q, [])) if d in rel), k + 1)
        return out

    def _rank_scatter(self, before: str, after: str, marked: str | None) -> tuple[str, str] | None:
        """Fig. 6 over all test queries: best rank of a relevant document before vs after (log-log)."""
        k = int(self.r.eval.get("k") or 1000)
        b, a = self._best_ranks(before, k), self._best_ranks(after, k)
        if not b or not a:
            return None
        qids = sorted(set(b) & set(a))
        x, y = np.array([b[q] for q in qids]), np.array([a[q] for q in qids])
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.8, 4.5))
        jitter = np.random.default_rng(0).uniform(0.93, 1.07, size=(2, len(qids)))  # ties stay visible
        ax.scatter(x * jitter[0], y * jitter[1], s=14, alpha=0.55, color=self.colours[after], label=after,
                   edgecolors="none")
        ax.plot([1, k + 1], [1, k + 1], ":", color="grey")
        for line in (ax.axvline, ax.axhline):
            line(k + 1, color="lightgrey", linewidth=0.8, linestyle="--")  # beyond it: not in the run's top k
        if marked in qids:
            i = qids.index(marked)
            ax.scatter([x[i]], [y[i]], s=160, marker="*", color="tab:red", label=f"t-SNE query {marked}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"best rank of a relevant document, {before}")
        ax.set_ylabel(f"best rank of a relevant document, {after}")
        ax.set_title("all test queries (below the diagonal: improved)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        path = self._save(fig, "fig6_rank_before_after.png")
        up, down = int((y < x).sum()), int((y > x).sum())
        text = (f"Over all {len(qids)} test queries: the best relevant document moved up for {up}, down for {down} "
                f"and stayed for {len(qids) - up - down}; median best rank {np.median(x):g} → {np.median(y):g}. "
                f"Ranks are from the test runs (top {k}); a query with no relevant document there is drawn at {k + 1}.")
        return path, text

    def tsne(self) -> Section:
        st = self.r.stage(TSNE)
        if st is None:
            return Section()
        pts = read_json(self.r.stage_file(TSNE, "points.json"))
        scatter = self._rank_scatter(st["settings"]["before"], st["settings"]["after"], pts["query_id"])
        if scatter is None:  # the single hand-picked query is never the only view
            return Section("## Fig. 6 analogue: best ranks before and after ADORE\n\n(the test runs of "
                           f"{st['settings']['before']} and {st['settings']['after']} or the test qrels are "
                           "missing)\n")
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharex=True, sharey=True)
        labels = np.array(pts["labels"])
        for ax, key, qkey, top_key, title in (
            (axes[0], "docs_before", "query_before", "in_top_before", st["settings"]["before"]),
            (axes[1], "docs_after", "query_after", "in_top_after", st["settings"]["after"]),
        ):
            xy = np.array(pts[key])
            top = np.array(pts[top_key])
            rel = labels == "relevant"
            ax.scatter(xy[~rel & ~top, 0], xy[~rel & ~top, 1], s=12, c="lightgrey", label="other candidates")
            ax.scatter(xy[~rel & top, 0], xy[~rel & top, 1], s=14, c="tab:blue", label="top-ranked non-relevant")
            ax.scatter(xy[rel, 0], xy[rel, 1], s=60, c="tab:green", marker="^", label="relevant")
            q = pts[qkey]
            ax.scatter([q[0]], [q[1]], s=120, c="tab:red", marker="*", label="query")
            ax.set_title(title)
        axes[0].legend(fontsize=7)
        path = self._save(fig, "fig6_tsne.png")
        return Section("\n".join([
            "## Fig. 6 analogue: best ranks before and after ADORE, and t-SNE of one query",
            "",
            scatter[1],
            "",
            f"![Fig. 6 analogue: best ranks]({scatter[0]})",
            "",
            f"t-SNE of query {pts['query_id']} (the red star above): \"{pts['query'][:160]}\". Best rank of a "
            f"relevant document: {pts['rank_before']} before, {pts['rank_after']} after (the test query whose best "
            "relevant document gained most in reciprocal rank: the most favourable single case, read it beside the "
            "scatter). One t-SNE over both query vectors and the documents "
            + ("(the document vectors are identical: ADORE keeps the index fixed)." if pts["same_docs"] else "."),
            "",
            f"![Fig. 6 analogue: t-SNE]({path})",
            "",
        ]))
