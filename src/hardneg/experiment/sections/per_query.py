"""Per-query differences of the main measure: the headline systems (STAR, plain ADORE on STAR) against the
random-negative reference, one sorted bar per test query."""

from __future__ import annotations

import math

import numpy as np

from hardneg.experiment.context import ReportContext
from hardneg.experiment.figures import pyplot
from hardneg.experiment.results import RANDOM_NEGATIVES, is_frozen_doc
from hardneg.experiment.sections.registry import Section, section
from hardneg.experiment.stats import holm, ttest
from hardneg.experiment.tables import fmt_p, signed


def headline(ctx: ReportContext) -> tuple[str | None, list[str]]:
    """The reference (the first random-negative system, else the first baseline, else the start model) and
    the headline systems: STAR and plain ADORE on STAR (plain ADORE on the start model when there is no STAR)."""
    have = list(ctx.per_query)
    refs = [b for b in ctx.r.eval.get("baselines") or [] if b in ctx.per_query]
    ref = ctx.r.first_with(*RANDOM_NEGATIVES, among=have) or next(iter(refs), None)
    ref = ref or (ctx.r.start if ctx.r.start in ctx.per_query else None)
    stars = ctx.r.paper_stars()  # not a distilled STAR ...
    star = ctx.r.paper_star(among=have)
    plain = [n for n in ctx.r.with_trait(is_frozen_doc, among=have) if ctx.r.is_plain_adore(n)]
    on_star = [n for n in plain if ctx.r.base_of(n) in stars]
    heads = [star, *on_star[:1]] if star or on_star else [n for n in plain if ctx.r.base_of(n) == ctx.r.start][:1]
    return ref, [h for h in heads if h and h != ref]


@section("per-query-delta", 50)
def per_query_delta(ctx: ReportContext) -> Section:
    """Per-query Δ of the main measure, headline systems minus the reference, as sorted bars."""
    ref, heads = headline(ctx)
    if ref is None or not heads:
        return Section()
    m = ctx.main_measure
    base = ctx.per_query[ref][m]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(heads), figsize=(5.5 * len(heads), 3.8), sharey=True, squeeze=False)
    rows = []
    for ax, name in zip(axes[0], heads, strict=True):
        pq = ctx.per_query[name][m]
        qids = sorted(set(pq) & set(base))
        delta = np.array(sorted((pq[q] - base[q] for q in qids), reverse=True))
        wins, losses = int((delta > 1e-9).sum()), int((delta < -1e-9).sum())
        ax.bar(np.arange(len(delta)), delta, width=1.0, linewidth=0, color=ctx.colours[name], label=name)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel(f"test queries, sorted by Δ{m} ({len(delta)})")
        ax.set_title(f"{name} − {ref}: {wins} better, {losses} worse", fontsize=9)
        rows.append([name, ref, signed(float(delta.mean()) if len(delta) else math.nan), str(wins),
                     str(len(delta) - wins - losses), str(losses), ttest(pq, base)])
    for row, adj in zip(rows, holm([r[6] for r in rows]), strict=True):  # family: this table's rows
        row[6:] = [fmt_p(row[6]), fmt_p(adj)]
    axes[0][0].set_ylabel(f"Δ{m} per query")
    path = ctx.save(fig, "per_query_delta.png")
    return Section("\n".join([
        f"## Per-query Δ{m} against {ref}",
        "",
        f"Each bar is one test query: {m} of the headline system minus {ref} (the random-negative reference), "
        "sorted. A mean gain carried by a few queries shows as a short tall head and a long flat tail. "
        "p: paired t-test; p Holm: Holm–Bonferroni-corrected over the family of this table's rows.",
        "",
        f"![Per-query Δ{m}]({path})",
        "",
        ctx.table("per_query_delta", ["system", "reference", f"mean Δ{m}", "better", "tied", "worse", "p",
                                         "p Holm"], rows),
        "",
    ]))


