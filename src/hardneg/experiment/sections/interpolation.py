"""Weight interpolation (WiSE-FT): each interpolated system's dev curve (which picked the weight) and, apart,
its test and transfer curves."""

from __future__ import annotations

import math

from hardneg.experiment.context import ReportContext
from hardneg.experiment.figures import pyplot
from hardneg.experiment.sections.registry import Section, section
from hardneg.experiment.stages import wise_curve_stage, wise_name
from hardneg.experiment.stats import mean
from hardneg.experiment.tables import fmt
from hardneg.io import read_json


@section("interpolation", 40)
def interpolation(ctx: ReportContext) -> Section:
    """The WiSE-FT curve of every interpolated system: dev (which picked the weight) and, apart, test."""
    systems = [n for n in ctx.r.interpolated() if ctx.r.wise_pick(n)]
    if not systems:
        return Section()
    m = ctx.main_measure
    tags = ctx.r.transfer_tags()
    strata = bool(ctx.unseen)
    header = ["system", "α", "dev metric", "dev", "picked", f"test {m}"]
    header += [f"test {m} seen-doc", f"test {m} unseen-doc"] if strata else []
    header += [f"{m} {t}" for t in tags]
    plt = pyplot()
    fig, (ax_dev, ax_test) = plt.subplots(1, 2, figsize=(10, 4))
    rows: list[list[str]] = []
    styles = {"all": "-", "seen-doc": "--", "unseen-doc": ":"}
    for name in systems:
        pick = ctx.r.wise_pick(name) or {}
        metric = pick["dev_metric"]
        alphas = [c["alpha"] for c in pick["curve"]]
        dev = [c.get(metric, math.nan) for c in pick["curve"]]
        colour = ctx.colours[name]
        ax_dev.plot(alphas, dev, marker="o", color=colour, label=f"{name} dev {metric}")
        ax_dev.scatter([pick["alpha"]], [pick["dev"][metric]], s=120, facecolors="none", edgecolors=colour,
                       label=f"_{name} pick")
        curve = ctx.r.stage(wise_curve_stage(name))
        test: dict[str, list[float]] = {k: [] for k in ([*styles] if strata else ["all"])}
        transfer: dict[str, list[float]] = {t: [] for t in tags}
        for a, d in zip(alphas, dev, strict=True):
            row = [name, fmt(a, 2), metric, fmt(d), "✓" if a == pick["alpha"] else ""]
            values: list[float] = []
            if curve is not None:
                pq = read_json(ctx.r.stage_file(wise_curve_stage(name), f"a{a:g}/per_query.json"))[m]
                values = [mean(pq)]
                if strata:
                    values += [mean(pq, sorted(set(pq) - set(ctx.unseen or []))), mean(pq, ctx.unseen)]
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
    path = ctx.save(fig, "wise_interpolation.png")
    picks = "; ".join(f"{wise_name(n)}: α = {(ctx.r.wise_pick(n) or {})['alpha']:g}" for n in systems)
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
        ctx.table("wise_interpolation", header, rows),
        "",
    ]))


