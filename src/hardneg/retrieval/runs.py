"""Runs: ranked results per query, and their TREC / MS MARCO file formats.

A :data:`Run` maps a query id to its ranked list of ``(doc_id, score)`` pairs,
sorted by score, highest first. Ties in score keep the order in which they
were produced (the list order *is* the ranking; see
:func:`hardneg.evaluate.metrics.evaluate`).

File formats
------------
* TREC (``qid Q0 docid rank score tag``, whitespace separated), what
  ``trec_eval``, Pyserini and ir-measures read. Scores are written with
  Python's shortest round-trip ``repr`` so a write/read round trip reproduces
  every score bit for bit (``%.6f`` would merge close cosine scores into ties).
* MS MARCO (``qid<TAB>docid<TAB>rank``), the official MS MARCO submission
  format. It has no scores: :func:`read_run` gives each line the score
  ``1 / rank``, which is strictly decreasing in rank, so any tool that ranks by
  score (ir-measures, trec_eval) sees exactly the file's order.

Every file is written atomically (temp file + rename) through
:func:`hardneg.io.atomic_write`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hardneg.data.lines import iter_text_lines
from hardneg.errors import HardnegError, InputError
from hardneg.io import atomic_write

Run = dict[str, list[tuple[str, float]]]
#: what :func:`write_run` writes: ``run.trec``, ``run.msmarco.tsv`` or both
RUN_FORMATS = ("trec", "msmarco", "both")

__all__ = [
    "RUN_FORMATS",
    "Run",
    "check_run_format",
    "read_run",
    "run_from_arrays",
    "sort_run",
    "truncate",
    "write_msmarco",
    "write_run",
    "write_trec",
]


def _sorted_results(results: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Stable sort by score, highest first (ties keep their given order)."""
    return sorted(results, key=lambda pair: -pair[1])


def sort_run(run: Run) -> Run:
    """A copy of ``run`` with every list sorted by score desc (stable: ties keep order)."""
    return {qid: _sorted_results(results) for qid, results in run.items()}


def check_run_id(kind: str, value: str) -> None:
    """Refuse an id a whitespace-separated run file cannot hold (empty, or with white space)."""
    if not value or any(ch.isspace() for ch in value):
        raise HardnegError(
            f"cannot write {kind} {value!r} to a run file: ids must be non-empty and "
            "contain no whitespace (the TREC and MS MARCO formats are whitespace separated)"
        )


def _format_score(score: float) -> str:
    value = float(score)
    if not math.isfinite(value):
        raise HardnegError(f"cannot write a non-finite score ({value!r}) to a run file")
    return repr(value)


def write_trec(run: Run, path: str | Path, tag: str = "hardneg") -> None:
    """Write ``qid Q0 docid rank score tag`` lines, rank from 1, atomically.

    Each query's list is (stably) sorted by score first, so the rank column
    always agrees with the scores.
    """
    check_run_id("run tag", tag)
    with atomic_write(path) as fh:
        for qid, results in run.items():
            check_run_id("query id", qid)
            for rank, (docid, score) in enumerate(_sorted_results(results), start=1):
                check_run_id("doc id", docid)
                fh.write(f"{qid} Q0 {docid} {rank} {_format_score(score)} {tag}\n")


def write_msmarco(run: Run, path: str | Path) -> None:
    """Write ``qid<TAB>docid<TAB>rank`` lines (rank from 1), atomically."""
    with atomic_write(path) as fh:
        for qid, results in run.items():
            check_run_id("query id", qid)
            for rank, (docid, _score) in enumerate(_sorted_results(results), start=1):
                check_run_id("doc id", docid)
                fh.write(f"{qid}\t{docid}\t{rank}\n")


def check_run_format(fmt: str) -> None:
    """A HardnegError unless ``fmt`` is one of :data:`RUN_FORMATS`."""
    if fmt not in RUN_FORMATS:
        raise HardnegError(f"run format must be one of {', '.join(RUN_FORMATS)}, not {fmt!r}")


def write_run(run: Run, folder: Path, *, tag: str = "hardneg", fmt: str = "trec") -> None:
    """``folder/run.trec`` (``fmt`` ``trec`` or ``both``) and/or ``folder/run.msmarco.tsv``."""
    check_run_format(fmt)
    if fmt in ("trec", "both"):
        write_trec(run, folder / "run.trec", tag=tag)
    if fmt in ("msmarco", "both"):
        write_msmarco(run, folder / "run.msmarco.tsv")


def _parse_rank(token: str, path: Path, line_no: int) -> int:
    try:
        rank = int(token)
    except ValueError:
        raise InputError(
            f"rank {token!r} is not an integer",
            path=path,
            line=line_no,
            hint="the rank column must be a whole number starting at 1",
        ) from None
    if rank < 1:
        raise InputError(
            f"rank {rank} is not positive",
            path=path,
            line=line_no,
            hint="ranks start at 1",
        )
    return rank


_LAYOUTS = {"trec": "'qid Q0 docid rank score tag'", "msmarco": "'qid<TAB>docid<TAB>rank'"}
_COLUMNS = {"trec": 6, "msmarco": 3}


def _detect_format(cols: list[str], path: Path, line_no: int) -> str:
    """``trec`` or ``msmarco`` from the number of columns of the first line."""
    fmt = next((f for f, n in _COLUMNS.items() if n == len(cols)), None)
    if fmt is None:
        raise InputError(
            f"cannot tell the run format from a line with {len(cols)} columns",
            path=path,
            line=line_no,
            hint=f"expected TREC {_LAYOUTS['trec']} ({_COLUMNS['trec']} columns) "
            f"or MS MARCO {_LAYOUTS['msmarco']} ({_COLUMNS['msmarco']} columns)",
        )
    return fmt


def _trec_score(token: str, path: Path, line_no: int) -> float:
    try:
        score = float(token)
    except ValueError:
        raise InputError(
            f"score {token!r} is not a number",
            path=path,
            line=line_no,
            hint="the 5th column of a TREC run is the score",
        ) from None
    if not math.isfinite(score):
        raise InputError(
            f"score {token!r} is not a finite number",
            path=path,
            line=line_no,
            hint="scores must be finite (no nan/inf)",
        )
    return score


class _RunReader:
    """The lines of one run file, checked line by line, gathered per query."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fmt: str | None = None
        self.first_line: dict[tuple[str, str], int] = {}
        self.first_rank: dict[tuple[str, int], int] = {}
        # qid -> [(-score, rank, line, docid, score)]: sorted, the run's order
        self.rows: dict[str, list[tuple[float, int, int, str, float]]] = {}

    def add(self, cols: list[str], line_no: int) -> None:
        if self.fmt is None:
            self.fmt = _detect_format(cols, self.path, line_no)
        if len(cols) != _COLUMNS[self.fmt]:
            raise InputError(
                f"expected {_COLUMNS[self.fmt]} columns ({self.fmt} run, detected from the first line) "
                f"but found {len(cols)}",
                path=self.path,
                line=line_no,
                hint=f"every line must be {_LAYOUTS[self.fmt]}",
            )
        if self.fmt == "trec":
            qid, _q0, docid, rank_s, score_s, _tag = cols
            rank = _parse_rank(rank_s, self.path, line_no)
            score = _trec_score(score_s, self.path, line_no)
        else:
            qid, docid, rank_s = cols
            rank = _parse_rank(rank_s, self.path, line_no)
            score = 1.0 / rank
            self._once(self.first_rank, (qid, rank), line_no, f"rank {rank} appears twice for query {qid!r}",
                       "ranks of one query must be distinct in an MS MARCO run")
        self._once(self.first_line, (qid, docid), line_no, f"document {docid!r} appears twice for query {qid!r}",
                   "each (query, document) pair may occur once in a run")
        self.rows.setdefault(qid, []).append((-score, rank, line_no, docid, score))

    def _once(self, first: dict, key: tuple, line_no: int, what: str, hint: str) -> None:
        if key in first:
            raise InputError(f"{what} (first on line {first[key]})", path=self.path, line=line_no, hint=hint)
        first[key] = line_no

    def run(self) -> Run:
        run: Run = {}
        for qid, entries in self.rows.items():
            entries.sort(key=lambda e: (e[0], e[1], e[2]))
            run[qid] = [(docid, score) for *_k, docid, score in entries]
        return run


def read_run(path: str | Path) -> Run:
    """Read a TREC (6 columns) or MS MARCO (3 columns) run; the format is detected.

    * TREC: ``qid Q0 docid rank score tag``. Each query's list is sorted by
      score desc; ties are ordered by the rank column (then file order).
    * MS MARCO: ``qid docid rank`` (tab or space separated). Score = ``1/rank``,
      lists ordered by rank (ties in rank keep file order).

    Blank lines are skipped. Raises :class:`InputError` naming ``file:line``
    for a wrong column count (or a mix of formats), a non-integer or
    non-positive rank, a non-numeric or non-finite score, or a repeated
    ``(qid, docid)`` pair. A missing file raises :class:`InputError` too.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("run file not found", path=path)
    if path.is_dir():
        raise InputError("expected a run file but found a directory", path=path)
    reader = _RunReader(path)
    # lines are decoded one by one: a bad byte or an enormous line is an InputError at file:line
    for line_no, line in iter_text_lines(path):
        cols = line.split()
        if cols:
            reader.add(cols, line_no)
    return reader.run()


def run_from_arrays(
    qids: Sequence[str],
    docids: Sequence[str],
    scores: np.ndarray,
    indices: np.ndarray,
    *,
    larger_is_better: bool = True,
) -> Run:
    """Build a run from faiss-style ``(nq, k)`` score and row-index arrays.

    ``indices[i, j]`` is a position in ``docids``; ``-1`` (faiss's "no
    result" padding) is skipped. Each row is sorted by score desc (stable, so
    ties keep the given order). For distances where smaller is better (faiss
    L2), pass ``larger_is_better=False``: scores become ``-distance``.
    A repeated index within a row keeps its first (best) occurrence.
    """
    scores = np.asarray(scores)
    indices = np.asarray(indices)
    if scores.ndim != 2 or indices.ndim != 2 or scores.shape != indices.shape:
        raise HardnegError(
            f"scores and indices must be 2-d arrays of the same shape (nq, k); "
            f"got {scores.shape} and {indices.shape}"
        )
    if scores.shape[0] != len(qids):
        raise HardnegError(f"{len(qids)} query ids but {scores.shape[0]} rows of results")
    if len(set(qids)) != len(qids):
        raise HardnegError("query ids passed to run_from_arrays must be unique")
    if not np.issubdtype(indices.dtype, np.integer):
        raise HardnegError(f"indices must be integers, got dtype {indices.dtype}")
    n_docs = len(docids)
    if indices.size and (indices.min() < -1 or indices.max() >= n_docs):
        raise HardnegError(
            f"indices must lie in [-1, {n_docs}) (the number of doc ids); "
            f"got values in [{indices.min()}, {indices.max()}]"
        )
    values = scores.astype(np.float64, copy=False)
    if not larger_is_better:
        values = -values
    order = np.argsort(-values, axis=1, kind="stable")
    sorted_idx = np.take_along_axis(indices, order, axis=1)
    sorted_val = np.take_along_axis(values, order, axis=1)
    run: Run = {}
    for qid, row_idx, row_val in zip(qids, sorted_idx.tolist(), sorted_val.tolist(), strict=True):
        seen: set[int] = set()
        results: list[tuple[str, float]] = []
        for i, s in zip(row_idx, row_val, strict=True):
            if i < 0 or i in seen:
                continue
            seen.add(i)
            results.append((docids[i], s))
        run[qid] = results
    return run


def truncate(run: Run, k: int) -> Run:
    """A new run keeping the first ``k`` results of every query."""
    if k < 0:
        raise HardnegError(f"cannot truncate a run to a negative depth ({k})")
    return {qid: list(results[:k]) for qid, results in run.items()}
