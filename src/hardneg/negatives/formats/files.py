"""Any negatives file: detect its format, read it, write negatives in any format (the entry points)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hardneg.data.formats.beir import load_json_object
from hardneg.data.lines import iter_text_lines, logical_suffix
from hardneg.errors import HardnegError, InputError
from hardneg.negatives.formats.common import ST_EXAMPLE, TEVATRON_EXAMPLE, TEVATRON_KEYS, check_format
from hardneg.negatives.formats.st import read_st
from hardneg.negatives.formats.tevatron import read_tevatron
from hardneg.negatives.formats.tsv import read_negatives, write_tsv
from hardneg.negatives.formats.writer import write_negative_file_streamed

__all__ = ["detect_format", "read_negative_file", "write_negatives"]


def _is_datasets_folder(path: Path) -> bool:
    return any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def detect_format(path: str | Path) -> str:
    """``tsv``, ``st`` or ``tevatron``, from the path (a ``datasets`` folder is ``st``) and first line.

    A first line starting with ``{`` (or a ``.jsonl``/``.json`` suffix) is JSON: ``tevatron`` if it has
    ``query_id`` or ``negative_passages``, ``st`` if it has ``anchor``; anything else is the TSV/TREC run.
    """
    path = Path(path)
    if path.is_dir():
        if _is_datasets_folder(path):
            return "st"
        raise InputError("is a folder but not a datasets folder (no dataset_info.json/state.json)", path=path,
                         hint="give a negatives TSV, a Tevatron or sentence-transformers JSONL, or a folder "
                              "written by datasets' save_to_disk")
    for lineno, line in iter_text_lines(path):
        if not line.lstrip().startswith("{") and logical_suffix(path) not in (".jsonl", ".json"):
            return "tsv"
        obj = load_json_object(line, path, lineno, f"{TEVATRON_EXAMPLE} or {ST_EXAMPLE}")
        if "query_id" in obj or "negative_passages" in obj:
            return "tevatron"
        if "anchor" in obj:
            return "st"
        raise InputError(f"JSON line has neither Tevatron keys ({', '.join(TEVATRON_KEYS)}) nor "
                         "sentence-transformers columns (anchor, positive, negative_1 …)", path=path, line=lineno,
                         hint="write negatives with hardneg mine --format tevatron|st")
    return "tsv"  # empty: read_negatives reports it the usual way


def read_negative_file(path: str | Path, dataset: Any = None) -> dict[str, list[str]]:
    """``qid -> doc ids`` (file order) from a TSV/TREC run, a Tevatron JSONL or ST data
    (:mod:`hardneg.negatives.formats`).

    ``dataset`` is required for ST data (texts are mapped to ids); for Tevatron files it, when
    given, checks that every query and document id exists (``file:line`` errors).
    """
    fmt = detect_format(path)
    if fmt == "tevatron":
        return read_tevatron(Path(path), dataset)
    if fmt == "st":
        if dataset is None:
            raise HardnegError(f"{path}: sentence-transformers data holds texts, not ids; reading it needs the "
                               "dataset (its corpus and queries) to map texts back to ids")
        return read_st(Path(path), dataset)
    return read_negatives(path)


def write_negatives(path: str | Path, negatives: Mapping[str, Sequence[str]], file_format: str = "tsv", *,
                    dataset: Any = None, qrels: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, int] | None:
    """Write ``negatives`` (``qid -> doc ids`` in rank order) as ``file_format``, atomically.

    ``tsv``: ``qid<TAB>docid<TAB>rank`` lines (a query with an empty list writes no line, and so is absent
    when read back); returns ``None``. ``st`` and ``tevatron`` need ``dataset`` for the texts (``qrels``, the
    positives, default to its own) and return the writer's counts (``rows``, ``queries``, ``no_positive``,
    ``short``).
    """
    check_format(file_format)
    if file_format == "tsv":
        write_tsv(path, negatives)
        return None
    if dataset is None:
        raise HardnegError(f"writing negatives as {file_format!r} needs the dataset (for the texts)")
    qrels = dataset.qrels() if qrels is None else qrels
    longest = max((len(v) for v in negatives.values()), default=0)
    with tempfile.TemporaryDirectory(prefix="hardneg-negatives-") as work:
        return write_negative_file_streamed(path, lambda: iter(negatives.items()), file_format, dataset=dataset,
                                            qrels=qrels, longest=longest, work_dir=work)
