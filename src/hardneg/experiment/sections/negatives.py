"""Negative selection: what the rules removed in each trained system, and the score histograms of its largest
selection event."""

from __future__ import annotations

import textwrap
from dataclasses import asdict
from typing import Any

import numpy as np

from hardneg.experiment.context import ReportContext
from hardneg.experiment.figures import pyplot
from hardneg.experiment.sections.registry import Section, section
from hardneg.experiment.stages import train_stage
from hardneg.io import read_json
from hardneg.negatives.diagnostics import DIAGNOSTICS_FILE
from hardneg.negatives.rules import NegativeRules


def _rules_text(rules: dict[str, Any] | None) -> str:
    """The rules of a diagnostics event that differ from their defaults (``plain top-k`` when none)."""
    default = asdict(NegativeRules())
    changed = {k: v for k, v in (rules or {}).items() if k in default and v != default[k]}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "plain top-k"


def _diagnostics(ctx: ReportContext, name: str) -> list[dict[str, Any]]:
    """The negative-selection events a system's training recorded (``negatives_diagnostics.json``)."""
    if ctx.r.stage(train_stage(name)) is None:
        return []
    path = ctx.r.stage_file(train_stage(name), DIAGNOSTICS_FILE)
    return list(read_json(path).get("events", [])) if path.is_file() else []


@section("negatives", 80)
def negatives(ctx: ReportContext) -> Section:
    """What the negative-selection rules did in each trained system: counts per rule over every event
    (warm-up mining, refreshes, ADORE's steps) and, for the largest event, the score histograms of the
    positives, the kept negatives and those a score rule removed."""
    events = {s["name"]: ev for s in ctx.r.systems if (ev := _diagnostics(ctx, s["name"]))}
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
        fig_md = f"![Negative-selection score histograms]({ctx.save(fig, 'negatives_diagnostics.png')})"
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
        ctx.table("negatives_diagnostics", header, rows),
        "",
        fig_md,
        "",
        "Histograms (the event with the most candidates): scores of the queries' positives, of the kept "
        "negatives and of the negatives a score rule (margins, max_score) removed, each normalised to 1."
        if fig_md else "",
    ]))


