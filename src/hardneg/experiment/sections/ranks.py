"""Fig. 6: the best rank of a relevant document before vs after ADORE over all test queries, beside the t-SNE
of one query."""

from __future__ import annotations

from typing import Any

import numpy as np

from hardneg.experiment.context import ReportContext
from hardneg.experiment.figures import pyplot
from hardneg.experiment.sections.registry import Section, section
from hardneg.experiment.stages import TSNE
from hardneg.io import read_json


def best_ranks(ctx: ReportContext, name: str, k: int) -> dict[str, int] | None:
    """Best rank of a relevant document per judged test query in a system's test run (its top ``k``); a query
    with none there gets k + 1 (censored: "not in the top k")."""
    run, qrels = ctx.r.run(name), ctx.r.test_qrels()
    if run is None or qrels is None or name not in ctx.per_query:
        return None
    out = {}
    for q in ctx.per_query[name][ctx.r.measures[0]]:
        rel = {d for d, g in qrels.get(q, {}).items() if g >= 1}
        out[q] = next((i + 1 for i, (d, _) in enumerate(run.get(q, [])) if d in rel), k + 1)
    return out


def _rank_scatter(ctx: ReportContext, before: str, after: str, pts: dict[str, Any]) -> tuple[str, str] | None:
    """Fig. 6 over all test queries: best rank of a relevant document before vs after (log-log). The ranks are
    the t-SNE analysis' own (``points.json`` ``best_ranks``: over the whole corpus, kept in its record), else
    (an analysis from before it kept them) the test runs' top k."""
    marked = pts["query_id"]
    k = int(ctx.r.eval.get("k") or 1000)
    whole = pts.get("best_ranks")
    if whole:
        b, a = {q: r[0] for q, r in whole.items()}, {q: r[1] for q, r in whole.items()}
        top = max(max(r) for r in whole.values())
        source = "Ranks are over the whole corpus (the t-SNE analysis computes them for every judged query)."
    else:
        b, a = best_ranks(ctx, before, k), best_ranks(ctx, after, k)
        top = k + 1
        source = (f"Ranks are from the test runs (top {k}); a query with no relevant document there is drawn "
                  f"at {k + 1}.")
    if not b or not a:
        return None
    qids = sorted(set(b) & set(a))
    x, y = np.array([b[q] for q in qids]), np.array([a[q] for q in qids])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    jitter = np.random.default_rng(0).uniform(0.93, 1.07, size=(2, len(qids)))  # ties stay visible
    ax.scatter(x * jitter[0], y * jitter[1], s=14, alpha=0.55, color=ctx.colours[after], label=after,
               edgecolors="none")
    ax.plot([1, top], [1, top], ":", color="grey")
    if not whole:
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
    path = ctx.save(fig, "fig6_rank_before_after.png")
    up, down = int((y < x).sum()), int((y > x).sum())
    text = (f"Over all {len(qids)} test queries: the best relevant document moved up for {up}, down for {down} "
            f"and stayed for {len(qids) - up - down}; median best rank {np.median(x):g} → {np.median(y):g}. "
            + source)
    return path, text


@section("ranks", 130)
def tsne(ctx: ReportContext) -> Section:
    """Fig. 6 analogue: the best-rank scatter over all test queries, then the t-SNE of the analysis' query."""
    st = ctx.r.stage(TSNE)
    if st is None:
        return Section()
    pts = read_json(ctx.r.stage_file(TSNE, "points.json"))
    scatter = _rank_scatter(ctx, st["settings"]["before"], st["settings"]["after"], pts)
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
    path = ctx.save(fig, "fig6_tsne.png")
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


