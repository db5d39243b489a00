"""The report's findings: each of the paper's claims checked against the numbers of the other sections.

The findings read the test scores and the facts the sections returned
(``times``, ``lambda_rows``, ``pq_grid``, ``concentration``, ``tracked``); which
system plays which part (STAR, a random-negative baseline, ANCE, plain ADORE on
STAR ...) comes from what the recipe's methods are (their specs), bases and settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hardneg.devices import machine_label, same_machine
from hardneg.experiment.context import ReportContext
from hardneg.experiment.results import RANDOM_NEGATIVES, is_bm25_negatives, is_frozen_doc, is_refreshed
from hardneg.experiment.sections import Section
from hardneg.experiment.stages import PAIRWISE, train_stage, wise_name
from hardneg.experiment.stats import ALPHA, holm, mean, ttest
from hardneg.experiment.tables import fmt_p


@dataclass
class Claim:
    """A findings line comparing two systems' test scores: ``res`` = (mean a, mean b, p) on all queries,
    ``strata`` the same per stratum of test queries."""

    label: str
    claim: str
    a: str
    b: str
    measure: str
    res: tuple[float, float, float]
    strata: dict[str, tuple[float, float, float]]
    expect_better: bool = True
    #: the paper says ``b`` is best: ``a`` beating it (Holm p < ALPHA) contradicts the paper
    contrary: bool = False
    #: how the two means are written (a count of errors: one decimal)
    digits: int = 3

    def pvalues(self) -> list[float]:
        return [self.res[2], *(v[2] for v in self.strata.values())]

    def _holds(self, x: float, y: float, p: float) -> bool:
        return x > y and p < ALPHA if self.expect_better else not p < ALPHA

    def render(self, adjusted: list[float]) -> str:
        x, y, _ = self.res
        p_all, *p_strata = adjusted
        if self.contrary:
            verdict = ("**disagrees**" if x > y and p_all < ALPHA else
                       "**direction disagrees, not significant**" if x > y else "**agrees**")
        elif self.expect_better:
            verdict = ("**agrees**" if x > y and p_all < ALPHA else
                       "**direction agrees, not significant**" if x > y else "**disagrees**")
        else:
            verdict = "**agrees**" if not (p_all < ALPHA) else "**disagrees**"
        d = self.digits
        extra = "".join(f"; {name} stratum {u[0]:.{d}f} vs {u[1]:.{d}f} (p {fmt_p(u[2])}, Holm {fmt_p(h)})"
                        for (name, u), h in zip(self.strata.items(), p_strata, strict=True))
        held = {name: self._holds(u[0], u[1], h) for (name, u), h in zip(self.strata.items(), p_strata, strict=True)}
        in_domain = held.get("seen-doc") and "unseen-doc" in held and not held["unseen-doc"]
        if self.expect_better and not self.contrary and in_domain:
            verdict += " (in-domain only)"
        return (f"- {self.label} — paper: {self.claim}. Here: {self.a} {self.measure} {x:.{d}f} vs {self.b} {y:.{d}f} "
                f"(p {fmt_p(self.res[2])}, Holm {fmt_p(p_all)}){extra} → {verdict}.")


class Findings:
    """The findings of one report: the paper's claims, each checked against the context's numbers."""

    def __init__(self, ctx: ReportContext) -> None:
        self.r = ctx.r
        self.per_query = ctx.per_query
        self.unseen = ctx.unseen
        self.main_measure = ctx.main_measure

    def _claim(self, label: str, claim: str, a: str, b: str, expect_better: bool = True,
               scores: tuple[dict[str, dict[str, float]] | None, dict[str, dict[str, float]] | None] | None = None,
               contrary: bool = False, measure: tuple[str, str] | None = None, digits: int = 3) -> list[Claim]:
        """One test-metric comparison of ``a`` and ``b`` (their test runs' per-query scores, or ``scores``: theirs
        on another index, or another per-query quantity, ``measure`` = (its key, its name in the line));
        ``contrary``: the paper says ``b`` is best. Rendered once every p of the list is known (Holm needs them
        all)."""
        pa, pb = scores if scores is not None else (self.per_query.get(a), self.per_query.get(b))
        key, m = measure or (self.main_measure, self.main_measure)
        if pa is None or pb is None or key not in pa or key not in pb:
            return []
        x, y = pa[key], pb[key]

        def cmp(qids: list[str] | None = None) -> tuple[float, float, float]:
            return mean(x, qids), mean(y, qids), ttest(x, y, qids)

        strata = {}
        if self.unseen:
            strata = {"seen-doc": cmp(sorted(set(x) - set(self.unseen))), "unseen-doc": cmp(self.unseen)}
        return [Claim(label, claim, a, b, m, cmp(), strata, expect_better, contrary, digits)]

    def section(self, facts: dict[str, Any]) -> Section:
        lines = [*self._effectiveness(facts), *self._efficiency(facts), *self._analyses(facts)]
        if not lines:
            return Section()
        claims = [x for x in lines if isinstance(x, Claim)]
        # the family: every paired t-test of this list (all queries and each stratum of every finding)
        adjusted = iter(holm([p for c in claims for p in c.pvalues()]))
        rendered = [x.render([next(adjusted) for _ in x.pvalues()]) if isinstance(x, Claim) else x for x in lines]
        return Section("\n".join(["## Findings: the paper's claims against these numbers", "",
                                  "Verdicts are mechanical: \"agrees\" needs the paper's direction and, for test "
                                  f"metrics, a Holm–Bonferroni-corrected p < {ALPHA} (paired t-test over test queries; "
                                  "the family is every t-test in this list: each finding on all queries and on the "
                                  "seen-doc and unseen-doc strata; raw p first, then \"Holm\"). \"in-domain only\": "
                                  "the finding holds on the seen-document queries but not on the unseen-document "
                                  "stratum. Where the paper names a best system and another is higher here, "
                                  "\"disagrees\" needs that system to be significantly higher.", "", *rendered, ""]))

    # ------------------------------------------------------------------ RQ1, RQ2
    def _effectiveness(self, facts: dict[str, Any]) -> list[Any]:
        r, names = self.r, list(self.per_query)
        out: list[Any] = []  # lines, and Claims rendered by section()
        rq1 = "RQ1 (effectiveness of hard negatives: STAR vs random negatives)"
        star = r.paper_star(among=names)
        if star is None and r.paper_star() is not None:  # a partial run: a STAR variant is not the paper's STAR
            out.append(f"- {rq1} — paper: STAR beats random negatives and static BM25 hard negatives. Not judged "
                       f"yet: {r.paper_star()} has no test result.")
        for trait in RANDOM_NEGATIVES:
            ref = r.first_with(trait, among=names)
            if star and ref:
                out += self._claim(rq1, f"STAR beats {ref} (random negatives)", star, ref)
        bm25neg = r.first_with(is_bm25_negatives, among=names)
        if star and bm25neg:
            out += self._claim(rq1, "STAR (static hard + random negatives) beats static BM25 hard negatives alone",
                               star, bm25neg)
        rq2 = "RQ2 (ADORE: dynamic hard negatives)"
        for s in r.systems:
            base = r.base_of(s["name"])
            if base in self.per_query and r.is_plain_adore(s["name"]):
                out += self._claim(rq2, f"ADORE improves its base model {base}", s["name"], base)
        if r.with_trait(is_frozen_doc, among=names):
            bm25 = set(r.with_kind("bm25"))
            best = max((n for n in names if n not in bm25),
                       key=lambda n: mean(self.per_query[n][self.main_measure]))
            # the paper's best: plain ADORE on a STAR model
            plain = {n for n in r.with_trait(is_frozen_doc)
                     if r.is_plain_adore(n) and r.base_of(n) in r.paper_stars()}
            expected = plain | {wise_name(n) for n in plain}  # ADORE+STAR interpolated with its base is ADORE+STAR too
            if not expected:
                pass  # the recipe has no ADORE on the paper's STAR: the claim is not this recipe's to judge
            elif not expected & set(names):  # a partial run: the paper's system is still to be tested
                out.append(f"- {rq2} — paper: ADORE+STAR is the best system. Not judged yet: "
                           f"{', '.join(sorted(plain))} has no test result "
                           f"(so far the best dense system by {self.main_measure} is {best}).")
            elif best in expected:
                out.append(f"- {rq2} — paper: ADORE+STAR is the best system. Here the best dense system by "
                           f"{self.main_measure} is {best} → **agrees**.")
            else:  # is the best system significantly better than the paper's best (its best tested form)?
                theirs = max(expected & set(names), key=lambda n: mean(self.per_query[n][self.main_measure]))
                out += self._claim(rq2, f"ADORE+STAR is the best system (the best dense system here by "
                                   f"{self.main_measure}: {best})", best, theirs, contrary=True)
        lam = facts.get("lambda_rows")
        if lam:
            out += self._claim(rq2, "LambdaLoss (ΔMRR-weighted pairs) beats unweighted RankNet", lam[0], lam[1])
        return out

    # ------------------------------------------------------------------ RQ3
    def _by_machine(self, names: list[str]) -> list[tuple[dict[str, Any], list[str]]]:
        """``names`` grouped by the one machine their training stage ran on, largest group first; a stage that
        recorded no machine, or ran on several (resumed elsewhere), is in no group. Times are compared within one
        group only; where every stage ran on one machine, or none recorded it, one group holds them all."""
        if len(self.r.machines([train_stage(n) for n in names])) < 2:
            return [({}, list(names))]
        groups: list[tuple[dict[str, Any], list[str]]] = []
        for n in names:
            ran = self.r.machines([train_stage(n)])
            if len(ran) != 1 or not ran[0]:
                continue
            group = next((g for g in groups if same_machine(g[0], ran[0])), None)
            if group is None:
                groups.append((ran[0], [n]))
            else:
                group[1].append(n)
        return sorted(groups, key=lambda g: -len(g[1]))

    def _efficiency(self, facts: dict[str, Any]) -> list[Any]:
        r, out = self.r, []
        rq3 = "RQ3 (efficiency and compressed indexes)"
        steps: dict[str, int] = facts.get("steps", {})
        step_median: dict[str, float] = facts.get("step_median", {})
        remining: dict[str, tuple[float, bool]] = facts.get("remining", {})
        star, ance = r.paper_star(among=step_median), r.first_with(is_refreshed, among=step_median)
        if star and ance and not any({star, ance} <= set(g) for _, g in self._by_machine([star, ance])):
            out.append(f"- {rq3} — paper: STAR trains faster than ANCE-style periodic refresh. Not judged: {star} "
                       f"and {ance} did not train on one recorded machine (Table 4), so their times do not compare.")
        elif star and ance and ance not in remining:
            out.append(f"- {rq3} — paper: STAR trains faster than ANCE-style periodic refresh. Not judged yet: "
                       f"{ance}'s re-mining time is not known (its log predates re-mining records and its test "
                       "stage, which would estimate it, has not run).")
        elif star and ance:
            # steps × median step time: robust to the machine's load while one stage ran; plus ANCE's re-mining
            cost = {n: steps[n] * step_median[n] + remining.get(n, (0.0, False))[0] for n in (star, ance)}
            again, estimated = remining.get(ance, (0.0, False))
            verdict = "**agrees**" if cost[star] < cost[ance] else "**disagrees**"
            out.append(f"- {rq3} — paper: STAR trains faster than ANCE-style periodic refresh. Here, at each "
                       f"one's median step time (Table 4), {star}'s {steps[star]} steps take "
                       f"{steps[star] * step_median[star] / 60:.1f} min and {ance}'s {steps[ance]} steps "
                       f"{steps[ance] * step_median[ance] / 60:.1f} min plus {'≈' if estimated else ''}"
                       f"{again / 60:.1f} min of re-mining the corpus → {verdict}.")

        # hardneg's own methods only (a peer's step is another recipe's), each at its median step time (Table 4),
        # on the machine that trained most of them where they ran on several
        own = [n for n in step_median if r.spec(n) is not None]
        kinds = [g for g in self._by_machine(own)
                 if any(r.frozen_doc(n) for n in g[1]) and not all(r.frozen_doc(n) for n in g[1])]
        if kinds:
            where, group = kinds[0]
            adore_t = [step_median[n] for n in group if r.frozen_doc(n)]
            doc_t = [step_median[n] for n in group if not r.frozen_doc(n)]
            on = (f", the {len(group)} of {len(own)} trained systems that ran on one machine, {machine_label(where)}"
                  if where else "")
            out.append(f"- {rq3} — paper: an ADORE step is cheap (no document encoder). Here "
                       f"{np.median(adore_t):.2f} s/step (batch of queries only) vs {np.median(doc_t):.2f} s/step "
                       f"for the methods that train the document encoder (medians of Table 4's step times{on}) → "
                       f"{'**agrees**' if np.median(adore_t) < np.median(doc_t) else '**disagrees**'}.")
        grid = facts.get("pq_grid")
        if grid:
            g, indexes, m = grid
            adore = [n for n in g if r.frozen_doc(n)]
            # ADORE trained against the exact index (plain), and against each compressed one
            flat_trained = next((n for n in adore if r.is_plain_adore(n)), None)
            for kind in indexes:
                own = next((n for n in adore if r.adore_index(n) == kind != "flat"), None)
                if own and flat_trained and kind in g[own] and kind in g[flat_trained]:
                    claim = ("ADORE trained against the compressed index beats ADORE trained against the exact "
                             f"index, when both are tested on the compressed index ({kind})")
                    tested = self._claim(rq3, claim, own, flat_trained,
                                         scores=(r.pq_per_query(own, kind), r.pq_per_query(flat_trained, kind)))
                    if tested:  # a paired test, in the Holm family with the others
                        out += tested
                        continue
                    a, b = g[own][kind].get(m, math.nan), g[flat_trained][kind].get(m, math.nan)
                    verdict = "**direction agrees, not tested**" if a > b else "**disagrees**"
                    out.append(f"- {rq3} — paper: {claim}. Here: {own} {a:.3f} vs {flat_trained} {b:.3f} "
                               f"→ {verdict} (no per-query scores on {kind}: these pq stages ran before hardneg "
                               "kept them; run them again to test).")
        return out

    # ------------------------------------------------------------------ analyses
    def _analyses(self, facts: dict[str, Any]) -> list[Any]:
        r, out = self.r, []
        pw = r.stage(PAIRWISE)
        if pw is not None:
            res = pw["result"]
            topk = pw["settings"]["topk"]
            rand_like = r.first_with(*RANDOM_NEGATIVES, among=res)
            star = r.paper_star(among=res)
            if rand_like and star:
                a, b = res[star], res[rand_like]
                claim = (f"compared with random negatives, hard negatives cut the top-{topk} pairwise errors while "
                         f"total errors may rise (total here: {star} {a['total']:.1f}, {rand_like} {b['total']:.1f})")
                # a paired test over the test queries' error counts (copied beside the table for Fig. 3), in the
                # Holm family with the others
                out += self._claim("Analysis (Table 1)", claim, rand_like, star,
                                   scores=(r.pairwise_errors(rand_like), r.pairwise_errors(star)),
                                   measure=("top", f"top-{topk} pairwise errors per query"), digits=1)
        conc = facts.get("concentration")
        if conc:
            out.append(f"- Analysis (Fig. 3) — paper: a random-negative model's errors concentrate on a "
                       f"few difficult queries. Here ({conc[0]}): {'; '.join(conc[1])}.")
        for name, recs in facts.get("tracked", {}).items():
            key = next(k for k in recs[0] if k.startswith("overlap@"))
            lowest = min(x[key] for x in recs)
            out.append(f"- Analysis (Fig. 4) — paper: static hard negatives drift away from the model's "
                       f"real (dynamic) hard negatives during training. Here ({name}): overlap "
                       f"{lowest:.2f} at its lowest, {recs[-1][key]:.2f} at the last "
                       f"tracked step → {'**agrees**' if lowest < 0.9 else '**weak drift only**'}.")
        return out
