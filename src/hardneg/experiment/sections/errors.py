"""Table 1 / Fig. 3: pairwise errors (total and among the top-K) and how they concentrate on few queries."""

from __future__ import annotations

import numpy as np

from hardneg.evaluate.analysis import error_concentration
from hardneg.experiment.context import ReportContext
from hardneg.experiment.figures import pyplot
from hardneg.experiment.results import RANDOM_NEGATIVES
from hardneg.experiment.sections.registry import Section, section
from hardneg.experiment.stages import PAIRWISE
from hardneg.experiment.tables import fmt


@section("pairwise-errors", 60)
def pairwise(ctx: ReportContext) -> Section:
    """Table 1 analogue: mean pairwise errors per query of every analysed system, with Fig. 3 below."""
    st = ctx.r.stage(PAIRWISE)
    if st is None:
        return Section("## Table 1 analogue: pairwise errors\n\n(not run)\n")
    topk = st["settings"]["topk"]
    rows = []
    for name in st["settings"]["systems"]:
        res = st["result"].get(name)
        if res:
            rows.append([name, fmt(res["total"], 1), fmt(res[f"top{topk}"], 1)])
    fig = _fig3(ctx, st["settings"]["systems"], topk)
    return Section("\n".join([
        "## Table 1 analogue: pairwise errors (test)",
        "",
        f"Mean per query of the (relevant, non-relevant) pairs ranked the wrong way round over the whole corpus "
        f"(total), and over the non-relevant documents among the model's top {topk} (top-{topk}).",
        "",
        ctx.table("table1_pairwise_errors", ["system", "total", f"top-{topk}"], rows),
        "",
        fig.markdown,
    ]), fig.facts)


def _fig3(ctx: ReportContext, systems: list[str], topk: int) -> Section:
    """Error concentration of a random-negative model (the first analysed system if there is none)."""
    name = ctx.r.first_with(*RANDOM_NEGATIVES, among=systems) or next(iter(systems), None)
    if name is None:
        return Section()
    errors = ctx.r.pairwise_errors(name)
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
    path = ctx.save(fig, "fig3_error_concentration.png")
    return Section(f"![Fig. 3 analogue]({path})\n\nFig. 3 analogue ({name}): {'; '.join(lines)}.\n",
                   {"concentration": (name, lines)})


