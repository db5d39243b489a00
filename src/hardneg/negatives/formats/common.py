"""What the negatives formats share: their names, the writers' counts and checks, JSON ids."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hardneg.data.lines import COMPRESSED_SUFFIXES
from hardneg.errors import HardnegError

__all__ = ["FORMATS", "check_format", "check_output", "check_rows", "json_id", "log_skipped",
           "new_stats", "positives_in"]

logger = logging.getLogger("hardneg")

#: the formats ``hardneg mine --format`` writes
FORMATS = ("tsv", "st", "tevatron")
TEVATRON_KEYS = ("query_id", "query", "positive_passages", "negative_passages")
TEVATRON_EXAMPLE = '{"query_id": "q1", "query": "...", "positive_passages": [{"docid": "d1", ...}], ' \
                   '"negative_passages": [...]}'
ST_EXAMPLE = '{"anchor": "query text", "positive": "doc text", "negative_1": "doc text", ...}'


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise HardnegError(f"unknown negatives format {fmt!r}; pick one of {', '.join(FORMATS)}")
    return fmt


def check_output(path: str | Path) -> None:
    """The text formats are not written compressed."""
    if Path(path).suffix.lower() in COMPRESSED_SUFFIXES:
        raise HardnegError(f"{path}: compressed output is not written; give a .jsonl path")


def new_stats() -> dict[str, int]:
    """A text writer's counts: ``rows`` written, ``queries`` covered, ``no_positive`` and ``short`` queries
    skipped."""
    return {"rows": 0, "queries": 0, "no_positive": 0, "short": 0}


def positives_in(qrels: Mapping[str, Mapping[str, int]], qid: str, docs: Mapping[str, Any]) -> list[str]:
    """The positives (grade >= 1) of ``qid`` that are in ``docs``."""
    return [d for d, grade in qrels.get(qid, {}).items() if grade >= 1 and d in docs]


def log_skipped(path: str | Path, stats: dict[str, int]) -> None:
    if stats["no_positive"]:
        logger.warning("%d queries have no positive document in the corpus: not written to %s",
                       stats["no_positive"], path)
    if stats["short"]:
        logger.warning("%d queries have fewer negatives than the others: no row in %s (every row of "
                       "sentence-transformers' n-tuple format has the same number of negatives)",
                       stats["short"], path)


def check_rows(path: Path, stats: dict[str, int]) -> None:
    if not stats["rows"]:
        raise HardnegError(f"{path}: no query has both a positive in the corpus and negatives; nothing written")


def json_id(value: Any) -> str | None:
    """A JSON id: a non-empty string, or an integer as text; else ``None``."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None
