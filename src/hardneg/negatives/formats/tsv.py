"""hardneg's TSV: ``qid<TAB>docid<TAB>rank`` lines (rank from 1, list order), the layout of an MS MARCO run.

Read back with :func:`~hardneg.retrieval.runs.read_run`, which also reads a TREC run (``qid Q0 docid rank
score tag``), telling the two apart by column count.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from hardneg.io import atomic_write
from hardneg.retrieval.runs import check_run_id, read_run

__all__ = ["read_negatives", "tsv_lines", "tsv_records", "write_tsv"]


def tsv_lines(negatives: Mapping[str, Sequence[str]]) -> Iterator[str]:
    """The TSV lines of ``negatives`` (``qid -> doc ids`` in rank order); a query with an empty list has none."""
    for qid, docs in negatives.items():
        if not docs:
            continue
        check_run_id("query id", qid)
        for rank, d in enumerate(docs, start=1):
            check_run_id("doc id", d)
            yield f"{qid}\t{d}\t{rank}\n"


def tsv_records(negatives: Mapping[str, Sequence[str]]) -> str:
    """:func:`tsv_lines` as one string (one chunk of ``hardneg mine``)."""
    return "".join(tsv_lines(negatives))


def write_tsv(path: str | Path, negatives: Mapping[str, Sequence[str]]) -> None:
    """Write ``negatives`` as TSV, atomically (a query with an empty list writes no line)."""
    with atomic_write(path) as fh:
        for line in tsv_lines(negatives):
            fh.write(line)


def read_negatives(path: str | Path) -> dict[str, list[str]]:
    """Read a ``qid docid rank`` file (an MS MARCO run) or a TREC run; lists ordered by rank.

    Errors (:class:`~hardneg.errors.InputError` with ``file:line``) are :func:`~hardneg.retrieval.runs.read_run`'s:
    wrong column count, a non-integer or non-positive rank, a repeated ``(qid, docid)``
    or ``(qid, rank)``, a missing file.
    """
    return {qid: [d for d, _ in results] for qid, results in read_run(path).items()}
