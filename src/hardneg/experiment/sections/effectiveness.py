"""The test-score tables: Table 2 (effectiveness, with significance markers), generalisation (seen vs unseen
documents, and transfer, against the zero-shot start model) and the recipe's head-to-head ``eval.pairs``.

A system with ``seeds`` is one row of Table 2, each number the mean ± sample standard deviation over its seeds
(``table2_seeds`` lists every seed's run); its markers and every paired test use its seed-averaged run
(:attr:`~hardneg.experiment.context.ReportContext.per_query`)."""

from __future__ import annotations

from hardneg.experiment.context import ReportContext
from hardneg.experiment.sections.registry import Section, section
from hardneg.experiment.stats import ALPHA, MARKERS, holm, mean, spread, ttest
from hardneg.experiment.tables import Num, fmt, fmt_p, fmt_pm, marked, signed


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


def _columns(ctx: ReportContext) -> list[tuple[str, str, list[str] | None]]:
    """Table 2's test columns: ``(header, measure, queries)``, every measure on all queries, then the main
    measure and RR@10 on the unseen-document stratum (when known)."""
    measures = ctx.r.measures
    cols: list[tuple[str, str, list[str] | None]] = [(m, m, None) for m in measures]
    if ctx.unseen:
        cols += [(f"{m} unseen-doc", m, ctx.unseen) for m in dict.fromkeys([ctx.main_measure, "RR@10"])
                 if m in measures]
    return cols


def _cell(ctx: ReportContext, name: str, measure: str, qids: list[str] | None) -> Num:
    """A test mean, of a seeded system the mean ± sd over its seeds."""
    if name in ctx.seed_runs:
        s = spread(ctx.seed_values(name, measure, qids))
        return fmt_pm(s["mean"], s["sd"])
    return fmt(mean(ctx.per_query[name][measure], qids))


def _transfer_cell(ctx: ReportContext, name: str, tag: str) -> Num:
    """The main measure on a transfer set (``–`` before its stage is done), of a seeded system mean ± sd."""
    if name in ctx.seed_runs:
        s = spread(ctx.transfer_values(name, tag))
        return fmt_pm(s["mean"], s["sd"])
    return fmt(ctx.transfer_metric(name, tag))


def _seeds_table(ctx: ReportContext, cols: list[tuple[str, str, list[str] | None]], transfer: list[str]) -> str:
    """``table2_seeds``: every seed run of the seeded systems, one row each (empty without ``seeds``)."""
    rows = []
    for name, runs in ctx.seed_runs.items():
        tvalues = {t: ctx.transfer_values(name, t) for t in transfer}
        for i, (seed, run) in enumerate(ctx.r.seed_runs(name)):
            pq = runs.get(run)
            rows.append([name, str(seed), run, *(fmt(mean(pq[m], q)) if pq else "–" for _, m, q in cols),
                         *(fmt(tvalues[t][i]) for t in transfer)])
    if not rows:
        return ""
    header = ["system", "seed", "run", *(h for h, _, _ in cols), *(f"{ctx.main_measure} {t}" for t in transfer)]
    return ctx.table("table2_seeds", header, rows)


@section("effectiveness", 10)
def effectiveness(ctx: ReportContext) -> Section:
    """Table 2 analogue: each system's test means, per stratum and on the transfer sets, with markers; a seeded
    system's as mean ± sd over its seeds."""
    measures = ctx.r.measures
    cols = _columns(ctx)
    strata = len(cols) > len(measures)
    transfer = ctx.r.transfer_tags()
    header = ["system", *(h for h, _, _ in cols), *(f"{ctx.main_measure} {tag}" for tag in transfer)]
    seeded = bool(ctx.seed_runs)
    header += ["seeds"] if seeded else []
    rows = []
    for name in ctx.r.names:
        # how many runs the row is over (0: none finished yet)
        runs = len(ctx.seed_runs[name]) if name in ctx.seed_runs else int(name in ctx.per_query)
        n = [str(runs)] if seeded else []
        if name not in ctx.per_query:
            rows.append([name, *["–"] * (len(header) - 1 - len(n)), *n])
            continue
        row = [name, *(marked(_cell(ctx, name, m, q), _marks(ctx, name, m, q)) for _, m, q in cols)]
        rows.append([*row, *(_transfer_cell(ctx, name, tag) for tag in transfer), *n])
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
    if seeded:
        text.append("A system with `seeds` is one row: mean ± sample standard deviation over its seeds (the seeds "
                    "column: how many ran) of each seed's mean; its markers and every paired test of this report "
                    "use its seed-averaged run (each query's score averaged over the seeds). Every seed's run: "
                    "the per-seed table below (tables/table2_seeds.csv).")
    text += ["", ctx.table("table2_effectiveness", header, rows), ""]
    per_seed = _seeds_table(ctx, cols, transfer)
    text += ["Per seed:", "", per_seed, ""] if per_seed else []
    return Section("\n".join(text))


def against_start(ctx: ReportContext) -> dict[str, dict[str, float]]:
    """The paired t-test p of each trained system's main measure against the zero-shot start model: ``all`` test
    queries, and with the unseen-document stratum known, ``seen``/``unseen`` raw and ``seen_holm``/``unseen_holm``
    Holm-corrected over the generalisation table's family (both strata of every system); empty without a start."""
    start = ctx.r.start
    if start not in ctx.per_query:
        return {}
    m = ctx.main_measure
    zero = ctx.per_query[start][m]
    untrained = set(ctx.r.with_kind("zeroshot", "bm25"))
    names = [n for n in ctx.r.names if n not in untrained and n in ctx.per_query]
    out = {n: {"all": ttest(ctx.per_query[n][m], zero)} for n in names}
    if ctx.unseen:
        seen = sorted(set(zero) - set(ctx.unseen))
        for n in names:
            out[n].update(seen=ttest(ctx.per_query[n][m], zero, seen), unseen=ttest(ctx.per_query[n][m], zero,
                                                                                     ctx.unseen))
        adjusted = holm([out[n][s] for n in names for s in ("seen", "unseen")])  # the family: the whole table
        for i, n in enumerate(names):
            out[n].update(seen_holm=adjusted[2 * i], unseen_holm=adjusted[2 * i + 1])
    return out


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
    tests = against_start(ctx)  # Holm over the family of this table: both strata of every system
    names = list(tests)
    raw = {n: (tests[n]["seen"], tests[n]["unseen"]) for n in names}
    holm_of = {n: (tests[n]["seen_holm"], tests[n]["unseen_holm"]) for n in names}
    for name in names:
        pq = ctx.per_query[name][m]
        d_seen = mean(pq, seen) - mean(zero, seen)
        d_unseen = mean(pq, ctx.unseen) - mean(zero, ctx.unseen)
        p_seen, p_unseen = holm_of[name]  # the verdict reads the corrected p
        deltas = []
        for t in transfer:
            x, z = ctx.transfer_metric(name, t), zero_transfer[t]  # a seeded system: its mean over the seeds
            deltas.append(signed(x - z) if x is not None and z is not None else signed(None))
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
        "selection picked)." + (" A system with `seeds` enters every test as its seed-averaged run (each query's "
                                "score averaged over its seeds), its transfer Δ as its mean over the seeds, its "
                                "dev Δ as its first seed's." if ctx.seed_runs else ""),
        "",
        ctx.table("pairs", header, rows),
        "",
    ]))


