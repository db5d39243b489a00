"""The report's statistics: means over a set of queries, paired t-tests, Holm–Bonferroni correction and the
spread of a seeded system over its seeds.

Every p-value of the report comes from :func:`ttest` (paired, two-sided, over the queries both systems
scored); a family of them is corrected with :func:`holm`; a finding or a marker needs p < :data:`ALPHA`.
"""

from __future__ import annotations

import math

import numpy as np

from hardneg.evaluate.metrics import paired_ttest

ALPHA = 0.05
#: significance markers of Table 2, one per recipe baseline (``*``: better than an ADORE system's own base)
MARKERS = "†‡§¶#♯♮"


def mean(values: dict[str, float], qids: list[str] | None = None) -> float:
    """The mean of per-query ``values`` (over ``qids`` that have one, if given); NaN over no query."""
    keys = list(values) if qids is None else [q for q in qids if q in values]
    return float(np.mean([values[q] for q in keys])) if keys else math.nan


def ttest(a: dict[str, float], b: dict[str, float], qids: list[str] | None = None) -> float:
    """The paired two-sided t-test p of per-query ``a`` vs ``b`` over the queries both have (within ``qids``)."""
    keys = sorted(set(a) & set(b) if qids is None else set(qids) & set(a) & set(b))
    return paired_ttest([a[q] for q in keys], [b[q] for q in keys])


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979), in the input order; NaN stays NaN and is not counted.

    Sorted ascending, p_(i) becomes max_{j ≤ i} min(1, (m − j + 1)·p_(j)) (1-based), so rejecting where the
    adjusted p < α controls the family-wise error rate at α.
    """
    idx = [i for i, p in enumerate(pvalues) if not (p is None or math.isnan(p))]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def seed_average(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """The seed-averaged run of a seeded system: per measure, each query's score averaged over ``runs`` (its seeds'
    per-query scores), over the queries every run scored; the paired tests of a seeded system use it."""
    out: dict[str, dict[str, float]] = {}
    for measure in runs[0] if runs else {}:
        if not all(measure in r for r in runs):
            continue
        qids = [q for q in runs[0][measure] if all(q in r[measure] for r in runs)]
        out[measure] = {q: float(np.mean([r[measure][q] for r in runs])) for q in qids}
    return out


def spread(values: list[float | None]) -> dict[str, float | int | None]:
    """``n``, ``mean``, ``sd`` (sample standard deviation, ``ddof=1``; None below two values), ``min`` and ``max``
    of a seeded system's per-seed numbers (missing ones left out; every number None when none is left)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {"n": len(xs), "mean": float(np.mean(xs)), "sd": float(np.std(xs, ddof=1)) if len(xs) > 1 else None,
            "min": min(xs), "max": max(xs)}
