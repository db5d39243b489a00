"""What every report figure shares: one colour per system, matplotlib (imported only when a figure is drawn),
smoothing, and saving a figure (PNG, and SVG on request) with a record of what it draws.

Every system keeps one colour in every figure (:func:`system_colours`, from the recipe's order);
:func:`drawn_data` records each figure's lines, scatters and bars by label, so tests can check figures
against the numbers they plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: the figures' palette: tab10, then the light half of tab20 (matplotlib's own hex values)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")


def system_colours(names: list[str]) -> dict[str, str]:
    """One colour per system, fixed by its position in the recipe (cycling after 20 systems)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (matplotlib is heavy and only for figures: imported here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what there is)."""
    x = np.asarray(values, dtype=float)
    if window <= 1 or len(x) < 3:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(0, n - window)
    return (c[n] - c[lo]) / (n - lo)


def drawn_data(fig: Any) -> dict[str, dict[str, Any]]:
    """Label → {colour, x, y} of what a figure draws (lines, scatters, bars), to check figures against their data."""
    from matplotlib.colors import to_hex  # with matplotlib: only when a figure is drawn

    out: dict[str, dict[str, Any]] = {}  # by label (its first panel), and by "<panel>:<label>"

    def add(i: int, label: str, colour, x, y) -> None:
        if not str(label).startswith("_"):
            item = {"colour": to_hex(colour), "x": [float(v) for v in x], "y": [float(v) for v in y]}
            out.setdefault(str(label), item)
            out.setdefault(f"{i}:{label}", item)

    for i, ax in enumerate(fig.axes):
        for line in ax.get_lines():
            add(i, line.get_label(), line.get_color(), line.get_xdata(), line.get_ydata())
        for coll in ax.collections:
            if len(coll.get_facecolor()):
                xy = np.asarray(coll.get_offsets()).reshape(-1, 2)
                add(i, coll.get_label(), coll.get_facecolor()[0], xy[:, 0], xy[:, 1])
        for cont in ax.containers:
            if len(cont.patches):
                add(i, cont.get_label(), cont.patches[0].get_facecolor(),
                    [p.get_x() + p.get_width() / 2 for p in cont], [p.get_height() for p in cont])
    return out


def save_figure(fig: Any, fig_dir: Path, name: str, *, svg: bool = False) -> tuple[str, dict[str, dict[str, Any]]]:
    """Lay out and write ``fig`` as ``fig_dir/name`` (PNG; also SVG with ``svg``), each file atomically, and close
    it; returns its path relative to the report (``figures/<name>``) and what it draws (:func:`drawn_data`)."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    path = fig_dir / name
    fig.tight_layout()
    drawn = drawn_data(fig)
    for suffix in (".png", ".svg") if svg else (".png",):
        target = path.with_suffix(suffix)
        tmp = path.with_suffix(".tmp" + suffix)
        fig.savefig(tmp, dpi=110)
        tmp.replace(target)
    pyplot().close(fig)
    return f"figures/{name}", drawn
