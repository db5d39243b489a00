"""Each hardneg system against sentence-transformers' own recipe (a ``peer-st`` system) trained on the same data:
on every test query, on the unseen-document stratum, on each transfer collection and in wall-clock, with the
columns where it is better or worse named in its verdict (so a win on one column cannot hide a loss on another).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hardneg.devices import distinct_machines
from hardneg.experiment.context import ReportContext
from hardneg.experiment.peer_st import PEER_ST
from hardneg.experiment.sections.registry import Section, section
from hardneg.experiment.stats import ALPHA, holm, mean, ttest
from hardneg.experiment.tables import fmt, fmt_p, signed


@dataclass
class Column:
    """One comparison of a system with the peer: ``delta`` = system − peer (its mean over the queries both
    scored), the paired t-test ``p`` and, once the table's family is known, its Holm-corrected ``p_holm``."""

    label: str
    delta: float
    p: float
    p_holm: float = math.nan

    @property
    def verdict(self) -> str:
        """``better``/``worse`` (Holm p < ALPHA in that direction) or ``tie``."""
        if not math.isnan(self.p_holm) and self.p_holm < ALPHA:
            return "better" if self.delta > 0 else "worse"
        return "tie"


@dataclass
class PeerRow:
    """A hardneg system against a peer recipe: the test/stratum/transfer columns and both wall-clocks."""

    system: str
    peer: str
    columns: list[Column] = field(default_factory=list)
    seconds: float | None = None
    peer_seconds: float | None = None
    #: the machines that trained both (:meth:`ReportContext.chain_machines`; ``{}``: a stage that recorded none)
    machines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def same_machine(self) -> bool:
        """False where the two chains' stages recorded more than one machine: their wall-clocks are not comparable
        (stages that recorded none are taken to have run where the others did)."""
        return len([m for m in self.machines if m]) <= 1

    @property
    def ratio(self) -> float | None:
        """The system's wall-clock over the peer's (None when either is unknown or they ran on other machines)."""
        if self.seconds is None or not self.peer_seconds or not self.same_machine:
            return None
        return self.seconds / self.peer_seconds

    @property
    def beats(self) -> bool:
        """Significantly better on every column, at no more wall-clock than the peer."""
        return (bool(self.columns) and all(c.verdict == "better" for c in self.columns)
                and self.ratio is not None and self.ratio <= 1.0)

    def verdict(self) -> str:
        better = [c.label for c in self.columns if c.verdict == "better"]
        worse = [c.label for c in self.columns if c.verdict == "worse"]
        if self.beats:
            return "beats it on every column at no more wall-clock"
        parts = [f"better on {', '.join(better)}" if better else "", f"worse on {', '.join(worse)}" if worse else ""]
        if self.ratio is not None and self.ratio > 1.0:
            parts.append("more wall-clock")
        if not self.same_machine:
            parts.append("trained on other machines than the reference: wall-clock not compared")
        return "; ".join(p for p in parts if p) or "no significant difference"

    def to_json(self) -> dict[str, object]:
        return {"system": self.peer, "seconds": self.seconds, "peer_seconds": self.peer_seconds,
                "same_machine": self.same_machine,
                "columns": {c.label: {"delta": _num(c.delta), "p": _num(c.p), "p_holm": _num(c.p_holm),
                                      "verdict": c.verdict} for c in self.columns},
                "beats": self.beats, "verdict": self.verdict()}


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _hardneg_systems(ctx: ReportContext) -> list[str]:
    """The systems hardneg trained (and their interpolations) whose test is done, in recipe order."""
    return [n for n in ctx.r.with_kind("train", "wise") if n in ctx.per_query]


def against_peer(ctx: ReportContext) -> list[PeerRow]:
    """Every hardneg system against every ``peer-st`` system whose test is done (Holm over every p of the list)."""
    peers = [n for n in ctx.r.with_kind(PEER_ST) if n in ctx.per_query]
    if not peers:
        return []
    m = ctx.main_measure
    strata: list[tuple[str, list[str] | None]] = [("all", None)]
    if ctx.unseen:
        strata.append(("unseen-doc", ctx.unseen))
    tags = ctx.r.transfer_tags()
    rows = []
    for peer in peers:
        ref, peer_transfer = ctx.per_query[peer][m], {t: ctx.transfer_per_query(peer, t) for t in tags}
        peer_seconds, peer_machines = ctx.chain_seconds(peer), ctx.chain_machines(peer)
        for name in _hardneg_systems(ctx):
            row = PeerRow(name, peer, seconds=ctx.chain_seconds(name), peer_seconds=peer_seconds,
                          machines=distinct_machines(ctx.chain_machines(name) + peer_machines))
            pq = ctx.per_query[name][m]
            for label, qids in strata:
                row.columns.append(_column(label, pq, ref, qids))
            for t in tags:
                mine = ctx.transfer_per_query(name, t)
                if mine is not None and peer_transfer[t] is not None:
                    row.columns.append(_column(t, mine[m], peer_transfer[t][m], None))
            rows.append(row)
    adjusted = iter(holm([c.p for r in rows for c in r.columns]))  # the family: every p of the table
    for r in rows:
        for c in r.columns:
            c.p_holm = next(adjusted)
    return rows


def _column(label: str, mine: dict[str, float], ref: dict[str, float], qids: list[str] | None) -> Column:
    keys = sorted((set(mine) & set(ref)) if qids is None else (set(qids) & set(mine) & set(ref)))
    return Column(label, mean(mine, keys) - mean(ref, keys), ttest(mine, ref, keys))


@section("peer", 35)
def peer(ctx: ReportContext) -> Section:
    """hardneg's systems against sentence-transformers' recipe, per column, with a verdict naming the columns."""
    rows = against_peer(ctx)
    if not rows:
        return Section()
    m = ctx.main_measure
    labels = list(dict.fromkeys(c.label for r in rows for c in r.columns))
    header = ["system", "reference"]
    for label in labels:
        header += [f"Δ{m} {label}", f"p Holm {label}"]
    header += ["wall-clock (min)", "× reference", "verdict"]
    table = []
    for r in rows:
        cols = {c.label: c for c in r.columns}
        line = [r.system, r.peer]
        for label in labels:
            c = cols.get(label)
            line += [signed(c.delta), fmt_p(c.p_holm)] if c else ["–", "–"]
        line += [fmt(r.seconds / 60, 1) if r.seconds is not None else "–",
                 fmt(r.ratio, 2) if r.ratio is not None else "–", r.verdict()]
        table.append(line)
    winners = [r.system for r in rows if r.beats]
    summary = (f"Beat the reference on every column at no more wall-clock: {', '.join(winners)}." if winners else
               "No hardneg system beats the reference on every column at no more wall-clock: each row's verdict "
               "names the columns where it is worse.")
    return Section("\n".join([
        "## Against sentence-transformers' recipe",
        "",
        f"Each system hardneg trained against sentence-transformers' own recipe on the same data (its dev-best "
        f"epoch): Δ{m} = system − reference on every test query, on the unseen-document stratum and on each "
        "transfer collection, with the paired two-sided t-test over queries Holm–Bonferroni-corrected over every "
        "p of this table (a system with `seeds`: its seed-averaged run). \"wall-clock\": every training, index and "
        "interpolation stage that produced the model (an ADORE system's base's training included; Table 4's "
        "\"stage\" summed along the chain; test-time encoding, the same for both, is not counted); \"× reference\" "
        "only where one machine trained both (the stages' recorded `machines`). The verdict "
        f"names the columns where the system is significantly better or worse (Holm p < {ALPHA}).",
        "",
        ctx.table("vs_peer", header, table),
        "",
        summary,
        "",
    ]), {"vs_peer": rows})
