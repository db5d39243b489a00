"""What the negative-selection rules did: counts per rule, queries left short, score histograms.

:class:`Diagnostics` collects one event over many queries (and, for ADORE, many steps);
:class:`StreamDiagnostics` is the same over the chunks of ``hardneg mine`` (counters in memory, score lists
in files), with a byte-identical summary. Events are written as ``{"events": [...]}`` to
``negatives_diagnostics.json`` (:func:`write_diagnostics`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hardneg.io import write_json
from hardneg.negatives.rules import RULES, NegativeRules

if TYPE_CHECKING:
    from hardneg.negatives.selection import Selection

__all__ = ["DIAGNOSTICS_FILE", "Diagnostics", "StreamDiagnostics", "diagnostics_path_for", "write_diagnostics"]

DIAGNOSTICS_FILE = "negatives_diagnostics.json"
#: the score lists of the histograms
SCORE_KEYS = ("positive", "kept", "removed")
_HISTOGRAM_NOTE = "removed = removed by a score or rank rule (margins, max_score, range_min)"


def histogram_edges(low: float | None, high: float | None, bins: int) -> np.ndarray:
    """``bins + 1`` edges over ``[low, high]`` (a unit span around a single value; ``[0, 1]`` without any)."""
    if low is None or high is None:
        return np.linspace(0, 1, bins + 1)
    edges = np.linspace(low, high, bins + 1)
    if edges[0] == edges[-1]:
        edges = np.linspace(edges[0] - 0.5, edges[0] + 0.5, bins + 1)
    return edges


def _summary(template: Diagnostics, counts: dict[str, Any], edges: np.ndarray,
             hist: dict[str, list[int]]) -> dict[str, Any]:
    return {
        "where": template.where, "rules": template.rules.describe(), "num_negatives": template.n,
        "queries": counts["queries"], "candidates": counts["candidates"], "kept": counts["kept"],
        "removed": dict(counts["removed"]),
        "queries_short": counts["short"], "short_examples": dict(counts["short_examples"]),
        "what_was_done_when_short": template.on_short,
        "queries_without_positive_score": counts["no_positive_score"],
        "histogram": {"edges": edges.tolist(), **hist, "note": _HISTOGRAM_NOTE},
    }


class Diagnostics:
    """What the rules did over many queries (and, for ADORE, many steps)."""

    def __init__(self, rules: NegativeRules, where: str, n: int | None = None) -> None:
        self.rules, self.where, self.n = rules, where, n
        self.queries = 0
        self.candidates = 0
        self.kept = 0
        self.removed = dict.fromkeys(RULES, 0)
        self.short: dict[str, int] = {}
        self.no_positive_score = 0
        self.scores: dict[str, list[float]] = {key: [] for key in SCORE_KEYS}
        self.on_short = "fewer negatives for those queries"

    def add(self, qid: str, sel: Selection, positive_scores: Sequence[float], n: int | None = None) -> None:
        self.queries += 1
        self.candidates += len(sel.kept) + sum(len(v) for v in sel.removed.values())
        self.kept += len(sel.kept)
        for rule, docs in sel.removed.items():
            self.removed[rule] += len(docs)
            if rule not in ("positive", "not_sampled", "range_max"):  # score-based removals
                self.scores["removed"].extend(s for _, s in docs)
        self.scores["kept"].extend(sel.kept_scores)
        self.scores["positive"].extend(float(s) for s in positive_scores)
        self.no_positive_score += int(sel.no_positive_score)
        want = n if n is not None else self.n
        if want is not None and len(sel.kept) < want:
            self.short[qid] = len(sel.kept)

    def summary(self, bins: int = 20) -> dict[str, Any]:
        finite = [s for v in self.scores.values() for s in v if np.isfinite(s)]
        edges = histogram_edges(min(finite) if finite else None, max(finite) if finite else None, bins)
        hist = {k: np.histogram(np.asarray(v, dtype=np.float64), bins=edges)[0].tolist()
                for k, v in self.scores.items()}
        counts = {"queries": self.queries, "candidates": self.candidates, "kept": self.kept, "removed": self.removed,
                  "short": len(self.short), "short_examples": dict(sorted(self.short.items())[:20]),
                  "no_positive_score": self.no_positive_score}
        return _summary(self, counts, edges, hist)

    def step_record(self) -> dict[str, float]:
        """The per-step log values (ADORE): candidates and removals per rule."""
        return {"candidates": float(self.candidates),
                **{f"removed_{r}": float(v) for r, v in self.removed.items() if r != "not_sampled"}}


class StreamDiagnostics:
    """:class:`Diagnostics` over many chunks: counters in memory, the score lists appended to files;
    :meth:`summary` equals ``Diagnostics.summary()`` of one pass over every query (the histogram is computed
    from the files blockwise)."""

    def __init__(self, template: Diagnostics, folder: Path) -> None:
        self.template = template  # rules, where, n, on_short
        self.folder = folder
        self.counts: dict[str, Any] = {"queries": 0, "candidates": 0, "kept": 0,
                                       "removed": dict(template.removed), "short": 0, "short_examples": {},
                                       "no_positive_score": 0, "low": None, "high": None,
                                       "offsets": dict.fromkeys(SCORE_KEYS, 0)}

    def _file(self, key: str) -> Path:
        return self.folder / f"scores-{key}.f8"

    def restore(self, counts: dict, fresh: bool) -> None:
        """Continue from saved ``counts`` (score files truncated to their offsets); or start the files."""
        if fresh:
            for key in SCORE_KEYS:
                self._file(key).write_bytes(b"")
            return
        self.counts = counts
        for key in SCORE_KEYS:
            with open(self._file(key), "r+b") as fh:
                fh.truncate(counts["offsets"][key])

    def add(self, diag: Diagnostics) -> None:
        c = self.counts
        c["queries"] += diag.queries
        c["candidates"] += diag.candidates
        c["kept"] += diag.kept
        for rule, v in diag.removed.items():
            c["removed"][rule] += v
        c["short"] += len(diag.short)
        c["short_examples"] = dict(sorted({**c["short_examples"], **diag.short}.items())[:20])
        c["no_positive_score"] += diag.no_positive_score
        for key in SCORE_KEYS:
            values = np.asarray(diag.scores[key], dtype="<f8")
            finite = values[np.isfinite(values)]
            if len(finite):
                lo, hi = float(finite.min()), float(finite.max())
                c["low"] = lo if c["low"] is None else min(c["low"], lo)
                c["high"] = hi if c["high"] is None else max(c["high"], hi)
            with open(self._file(key), "ab") as fh:
                fh.write(values.tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            c["offsets"][key] += values.nbytes

    def summary(self, bins: int = 20) -> dict[str, Any]:
        c = self.counts
        edges = histogram_edges(c["low"], c["high"], bins)
        hist = {}
        for key in SCORE_KEYS:
            counts = np.zeros(bins, dtype=np.int64)
            if c["offsets"][key]:
                values = np.memmap(self._file(key), dtype="<f8", mode="r", shape=(c["offsets"][key] // 8,))
                for start in range(0, len(values), 1 << 20):
                    counts += np.histogram(np.asarray(values[start:start + (1 << 20)]), bins=edges)[0]
                del values
            hist[key] = counts.tolist()
        return _summary(self.template, c, edges, hist)


def write_diagnostics(path: str | Path, events: Sequence[Diagnostics | dict]) -> Path:
    """Write ``{"events": [...]}`` to ``path`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"events": [e.summary() if isinstance(e, Diagnostics) else e for e in events]})
    return path


def diagnostics_path_for(out: str | Path) -> Path:
    """``runs/hard.tsv`` -> ``runs/hard.negatives_diagnostics.json`` (beside the negatives)."""
    out = Path(out)
    stem = out.stem if out.suffix else out.name
    return out.parent / f"{stem}.{DIAGNOSTICS_FILE}"
