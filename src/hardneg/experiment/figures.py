"""The report's sections that draw a figure: Table 1 / Fig. 3, Fig. 4, Fig. 5 and Fig. 6.

Each section returns a :class:`~hardneg.experiment.results.Section`: its markdown and
the facts the findings read (``concentration``, ``tracked``, ``lambda_rows``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.evaluate.analysis import error_concentration
from hardneg.experiment.results import (
    RANDOM_NEGATIVES,
    ExperimentResults,
    Section,
    fmt,
    fmt_p,
    mean,
    table,
    ttest,
)
from hardneg.experiment.stages import PAIRWISE, TSNE
from hardneg.io import read_json


def pyplot():
    import matplotlib  # heavy and only for figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class FigureSections:
    """The figure-drawing sections of :class:`~hardneg.experiment.report.Report`."""

    r: ExperimentResults
    fig_dir: Path
    per_query: dict[str, dict[str, dict[str, float]]]

    def _save(self, fig, name: str) -> str:
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        path = self.fig_dir / name
        tmp = path.with_suffix(".tmp.png")
        fig.tight_layout()
        fig.savefig(tmp, dpi=110)
        pyplot().close(fig)
        tmp.replace(path)
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
            table(["system", "total", f"top-{topk}"], rows),
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
            axes[0].plot(steps, values, marker="o", label=name)
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
                         label=name)
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
                            label=f"{label}: {name}")
            if lam in self.per_query and rank in self.per_query:
                for m in self.r.measures:
                    a, b = self.per_query[lam][m], self.per_query[rank][m]
                    rows.append([m, fmt(mean(a)), fmt(mean(b)), fmt_p(ttest(a, b))])
                facts["lambda_rows"] = (lam, rank, rows)
        ax.set_xlabel("training step")
        ax.set_ylabel("dev RR@10")
        ax.legend(fontsize=7)
        path = self._save(fig, "fig5_lambda_vs_ranknet.png")
        text += [f"![Fig. 5 analogue]({path})", ""]
        if rows:
            text += [f"Test: {pairs[0][0]} (LambdaLoss) vs {pairs[0][1]} (RankNet), paired t-test.", "",
                     table(["measure", "LambdaLoss", "RankNet", "p"], rows), ""]
        return Section("\n".join(text), facts)

    # ------------------------------------------------------------------ Fig. 6
    def tsne(self) -> Section:
        st = self.r.stage(TSNE)
        if st is None:
            return Section()
        pts = read_json(self.r.stage_file(TSNE, "points.json"))
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
            "## Fig. 6 analogue: t-SNE of one query before and after ADORE",
            "",
            f"Query {pts['query_id']}: \"{pts['query'][:160]}\". Best rank of a relevant document: "
            f"{pts['rank_before']} before, {pts['rank_after']} after (the test query whose best relevant document "
            "gained most in reciprocal rank). One t-SNE over both query vectors and the documents "
            + ("(the document vectors are identical: ADORE keeps the index fixed)." if pts["same_docs"] else "."),
            "",
            f"![Fig. 6 analogue]({path})",
            "",
        ]))
