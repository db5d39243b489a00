"""The test-score tables: Table 2 (effectiveness, with significance markers), generalisation (seen vs unseen
documents, and transfer, against the zero-shot start model) and the recipe's head-to-head ``eval.pairs``."""

from __future__ import annotations

from hardneg.experiment.context import ReportContext
from hardneg.experiment.sections.registry import Section, section
from hardneg.experiment.stages import transfer_stage
from hardneg.experiment.stats import ALPHA, MARKERS, holm, mean, ttest
from hardneg.experiment.tables import fmt, fmt_p, marked, signed


def _references(ctx: ReportContext) -> list[str]:
    """The recipe's baselines that have test scores: the significance markers' references, in marker order."""
    return [b for b in ctx.r.eval.get("baselines") or [] if b in ctx.per_query]


def _base_of(ctx: ReportContext, name: str) -> str | None:
    """An ADORE system's own base, when it has test scores (its ``*`` marker's reference)."""
    base = ctx.r.base_of(name)
    return base if base in ctx.per_query else None


def _marks(ctx: ReportContext, name: str, measure: str, qids: list[str] | None) -> str:
    """The markers of ``name``'s ``measure`` (over ``qids``): one per baseline it significantly beats, ``*``
    when it significantly beats its own base."""
    marks = ""
    pq = ctx.per_query[name][measure]
    for i, ref in enumerate(_references(ctx)):
        if ref == name:
            continue
        other = ctx.per_query[ref][measure]
        if mean(pq, qids) > mean(other, qids) and ttest(pq, other, qids) < ALPHA:
            marks += MARKERS[i % len(MARKERS)]
    base = _base_of(ctx, name)
    if base is not None:
        other = ctx.per_query[base][measure]
        if mean(pq, qids) > mean(other, qids) and ttest(pq, other, qids) < ALPHA:
            marks += "*"
    return marks


@section("effectiveness", 10)
def effectiveness(ctx: ReportContext) -> Section:
    """Table 2 analogue: each system's test means, per stratum and on the transfer sets, with markers."""
    measures = ctx.r.measures
    header = ["system", *measures]
    strata = ctx.unseen is not None and len(ctx.unseen) > 0
    if strata:
        header += [f"{ctx.main_measure} unseen-doc", "RR@10 unseen-doc" if "RR@10" in measures else ""]
        header = [h for h in header if h]
    transfer = ctx.r.transfer_tags()
    header += [f"{ctx.main_measure} {tag}" for tag in transfer]
    rows = []
    for name in ctx.r.names:
        if name not in ctx.per_query:
            rows.append([name, *["–"] * (len(header) - 1)])
            continue
        row = [name]
        for m in measures:
            row.append(marked(fmt(mean(ctx.per_query[name][m])), _marks(ctx, name, m, None)))
        if strata:
            for m in [ctx.main_measure, "RR@10"]:
                if m in measures:
                    row.append(marked(fmt(mean(ctx.per_query[name][m], ctx.unseen)),
                                      _marks(ctx, name, m, ctx.unseen)))
        for tag in transfer:
            st = ctx.r.stage(transfer_stage(name, tag))
            row.append(fmt(st["result"]["metrics"].get(ctx.main_measure)) if st else "–")
        rows.append(row)
    refs = _references(ctx)
    legend = "; ".join(f"{MARKERS[i % len(MARKERS)]} better than {ref}" for i, ref in enumerate(refs))
    n_test = len(next(iter(ctx.per_query.values()))[measures[0]]) if ctx.per_query else 0
    text = [
        "## Table 2 analogue: effectiveness on the test split",
        "",
        f"Means over the {n_test} judged test queries. Markers: paired two-sided t-test, p < {ALPHA}, "
        f"and a higher mean: {legend or 'no baselines'}; * better than the ADORE system's own base model.",
    ]
    if strata:
        text.append(
            f"\"unseen-doc\": the {len(ctx.unseen)} test queries none of whose relevant documents is relevant "
            "to any training query (the others can be helped by steering towards documents seen in training)."
        )
    if transfer:
        text.append("Transfer columns: the same model zero-shot on a collection it never trained on.")
    text += ["", ctx.table("table2_effectiveness", header, rows), ""]
    return Section("\n".join(text))


@section("generalisation", 20)
def generalisation(ctx: ReportContext) -> Section:
    """Each trained system against the zero-shot start model on seen- and unseen-document test queries (Holm over
    the table) and on the transfer sets, with a verdict."""
    start = ctx.r.start
    if start not in ctx.per_query or not ctx.unseen:
        return Section()
    m = ctx.main_measure
    zero = ctx.per_query[start][m]
    all_q = list(zero)
    seen = sorted(set(all_q) - set(ctx.unseen))
    transfer = ctx.r.transfer_tags()
    header = ["system", f"Δ{m} seen-doc ({len(seen)})", "p seen-doc", "p Holm seen-doc",
              f"Δ{m} unseen-doc ({len(ctx.unseen)})", "p unseen-doc", "p Holm unseen-doc",
              *[f"Δ{m} {t}" for t in transfer], "verdict"]
    rows = []
    zero_transfer = {t: ctx.transfer_metric(start, t) for t in transfer}
    untrained = set(ctx.r.with_kind("zeroshot", "bm25"))
    names = [n for n in ctx.r.names if n not in untrained and n in ctx.per_query]
    raw = {n: (ttest(ctx.per_query[n][m], zero, seen), ttest(ctx.per_query[n][m], zero, ctx.unseen))
           for n in names}
    # the family: every comparison of this table (both strata of every system)
    adjusted = holm([p for n in names for p in raw[n]])
    holm_of = {n: (adjusted[2 * i], adjusted[2 * i + 1]) for i, n in enumerate(names)}
    for name in names:
        pq = ctx.per_query[name][m]
        d_seen = mean(pq, seen) - mean(zero, seen)
        d_unseen = mean(pq, ctx.unseen) - mean(zero, ctx.unseen)
        p_seen, p_unseen = holm_of[name]  # the verdict reads the corrected p
        deltas = []
        for t in transfer:
            st = ctx.r.stage(transfer_stage(name, t))
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
        ctx.table("generalisation", header, rows),
        "",
    ]))


@section("pairs", 30)
def paired(ctx: ReportContext) -> Section:
    """``eval.pairs``: each system against the reference it names, per query, on all test queries and on
    the seen- and unseen-document strata (t-test p, Holm over every p of the table), the transfer sets
    and the best dev value (what model selection saw)."""
    pairs = [(a, b) for a, b in ctx.r.eval.get("pairs") or [] if a in ctx.per_query and b in ctx.per_query]
    if not pairs:
        return Section()
    m = ctx.main_measure
    first = ctx.per_query[pairs[0][0]][m]
    strata: list[tuple[str, list[str] | None]] = [(f"all ({len(first)})", None)]
    if ctx.unseen:
        seen = sorted(set(first) - set(ctx.unseen))
        strata += [(f"seen-doc ({len(seen)})", seen), (f"unseen-doc ({len(ctx.unseen)})", ctx.unseen)]
    transfer = ctx.r.transfer_tags()
    raw = [[ttest(ctx.per_query[b][m], ctx.per_query[a][m], q) for _, q in strata] for a, b in pairs]
    flat = holm([p for row in raw for p in row])  # the family: every p of this table
    header = ["system", "reference"]
    for label, _ in strata:
        header += [f"Δ{m} {label}", f"p {label.split(' ')[0]}", f"p Holm {label.split(' ')[0]}"]
    header += [*[f"Δ{m} {t}" for t in transfer], f"Δ best dev {m}"]
    rows = []
    for i, (a, b) in enumerate(pairs):
        row = [b, a]
        for j, (_, q) in enumerate(strata):
            d = mean(ctx.per_query[b][m], q) - mean(ctx.per_query[a][m], q)
            row += [signed(d), fmt_p(raw[i][j]), fmt_p(flat[i * len(strata) + j])]
        dev = [(ctx.dev_metrics(n) or {}).get(m) for n in (b, a)]
        for x, y in [*((ctx.transfer_metric(b, t), ctx.transfer_metric(a, t)) for t in transfer), dev]:
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
        ctx.table("pairs", header, rows),
        "",
    ]))


