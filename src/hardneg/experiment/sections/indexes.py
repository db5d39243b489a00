"""Tables 3 and 5: compressed (PQ) indexes, each model on each test index, and quality against the bytes each
document takes in the index."""

from __future__ import annotations

import re
from typing import Any

from hardneg.experiment.context import ReportContext
from hardneg.experiment.figures import pyplot
from hardneg.experiment.sections.registry import Section, section
from hardneg.experiment.stages import PQ
from hardneg.experiment.tables import fmt


def bytes_per_doc(kind: str, dim: int | None) -> int | None:
    """Code bytes per document of an index kind: flat (and HNSW's vectors) 4·dim, pq<M> / ivf<L>pq<M> M bytes
    (DRhard's Table 3 compares indexes by this); None when it cannot be told (a raw factory string)."""
    low = kind.strip().lower()
    if (low == "flat" or re.fullmatch(r"hnsw\d*", low)) and dim:
        return 4 * int(dim)
    if m := re.fullmatch(r"(?:ivf\d*)?pq(\d+)", low):
        return int(m.group(1))
    if re.fullmatch(r"ivf\d*pq", low) and dim:
        return max(1, int(dim) // 8)  # hardneg's default sub-vector count (index/faiss_index.py)
    return None


@section("pq", 120)
def pq(ctx: ReportContext) -> Section:
    """Tables 3 and 5 analogue: the main measure of each model on each test index, and the size-vs-quality
    figure."""
    st = ctx.r.stage(PQ)
    if st is None:
        return Section()
    grid, sizes = st["result"]["metrics"], st["result"]["bytes"]
    indexes = st["settings"]["indexes"]
    m = ctx.main_measure
    header = ["model \\ test index", *[f"{k} ({sizes.get(k, 0) / 2**20:.2f} MiB)" for k in indexes]]
    rows = [[name, *[fmt(grid[name][k].get(m)) for k in indexes]] for name in st["settings"]["systems"]]
    path, unplaced = _pq_figure(ctx, st)
    note = (f" Not in the figure (bytes per document unknown): {', '.join(unplaced)}." if unplaced else "")
    return Section("\n".join([
        "## Tables 3 and 5 analogue: compressed indexes (test)",
        "",
        f"{m} of each model (rows; ADORE systems name the index they trained on) on each test index (columns, "
        "with the index file size). Flat = exact inner product; pq<M> = product quantisation with M bytes per "
        "document.",
        "",
        ctx.table("table3_5_pq", header, rows),
        "",
        f"![Index size vs quality]({path})",
        "",
        f"The same grid against the bytes each document takes in the index (flat: 4·dim, pq<M>: M; dashed = "
        f"ADORE).{note}",
        "",
    ]), {"pq_grid": (grid, indexes, m)})


def _pq_figure(ctx: ReportContext, st: dict[str, Any]) -> tuple[str, list[str]]:
    """nDCG@10 (the main measure) against code bytes per document, one line per model; returns the figure's
    path and the index kinds it could not place."""
    grid, indexes = st["result"]["metrics"], st["settings"]["indexes"]
    dims = st["result"].get("dims") or {}
    m = ctx.main_measure
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ticks: dict[int, list[str]] = {}
    unplaced: list[str] = []
    for name in st["settings"]["systems"]:
        pts = []
        for kind in indexes:
            size = bytes_per_doc(kind, dims.get(name))
            value = grid.get(name, {}).get(kind, {}).get(m)
            if size is None:
                unplaced.append(kind)
            elif value is not None:
                pts.append((size, value))
                ticks.setdefault(size, [])
                if kind not in ticks[size]:
                    ticks[size].append(kind)
        if pts:
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if ctx.r.frozen_doc(name) else "-",
                    marker="o", color=ctx.colours[name], label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [f"{'/'.join(ticks[s])}\n{s} B" for s in sorted(ticks)], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("bytes per document (index codes)")
    ax.set_ylabel(f"test {m}")
    ax.set_title("Index size vs quality")
    if ax.get_lines():
        ax.legend(fontsize=7)
    return ctx.save(fig, "pq_size_vs_quality.png"), sorted(set(unplaced))


