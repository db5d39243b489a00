"""Evaluation: ir-measures metrics, per-query values and paired significance tests."""

from __future__ import annotations

from hardneg.evaluate.metrics import (
    DEFAULT_ALPHA,
    DEFAULT_MEASURES,
    ComparisonResult,
    compare,
    evaluate,
    evaluate_per_query,
    evaluated_queries,
    format_table,
    paired_ttest,
    parse_measures,
    render_table,
)

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MEASURES",
    "ComparisonResult",
    "compare",
    "evaluate",
    "evaluate_per_query",
    "evaluated_queries",
    "format_table",
    "paired_ttest",
    "parse_measures",
    "render_table",
]
