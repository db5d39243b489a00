"""Hugging Face ``datasets`` folders (``save_to_disk`` output) with BEIR columns.

A saved ``Dataset`` folder holds ``dataset_info.json`` + ``state.json`` + ``*.arrow``; a saved
``DatasetDict`` folder holds ``dataset_dict.json`` and one such folder per split. A dataset root
(:func:`hf_layout`) is either a folder with ``corpus/`` and/or ``queries/`` saved folders (BEIR on the hub
saved to disk: ``BeIR/scifact`` configs ``corpus`` and ``queries``) or a saved ``DatasetDict`` with splits
``corpus`` and ``queries``. Qrels are ``qrels/`` as a saved ``DatasetDict`` (one split per split, as
``BeIR/scifact-qrels``), ``qrels/`` as one saved ``Dataset`` (no splits), BEIR ``qrels/<split>.tsv``, or a
``<split>`` split of the root ``DatasetDict``.

Columns: corpus ``_id``, ``text``, ``title`` (optional); queries ``_id``, ``text``; qrels ``query-id``,
``corpus-id``, ``score``. Ids may be strings or integers. Errors name the folder, the row (1-based) and the
column; ``datasets`` is imported only to read (``pip install datasets``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardneg.data.formats.trec import QrelsStats
from hardneg.data.ids import IdSet
from hardneg.data.lines import find_variant, logical_name
from hardneg.data.records import Doc, Qrel, Query
from hardneg.errors import HardnegError, InputError
from hardneg.io import file_sha256

__all__ = ["HfLayout", "HfPart", "hf_layout", "is_hf_folder", "read_hf_corpus", "read_hf_qrels",
           "read_hf_queries"]

DATASET_FILES = ("dataset_info.json", "state.json")
DICT_FILE = "dataset_dict.json"
CORPUS_COLUMNS = ("_id", "text")
QUERY_COLUMNS = ("_id", "text")
QRELS_COLUMNS = ("query-id", "corpus-id", "score")
_BATCH = 1024


def is_hf_folder(path: Path) -> bool:
    """Whether ``path`` is a saved ``Dataset`` or ``DatasetDict`` folder (by its marker files)."""
    return path.is_dir() and (all((path / f).is_file() for f in DATASET_FILES) or (path / DICT_FILE).is_file())


def dict_splits(folder: Path) -> list[str] | None:
    """The splits a saved ``DatasetDict`` lists, ``None`` for a saved ``Dataset``."""
    file = folder / DICT_FILE
    if not file.is_file():
        return None
    try:
        splits = json.loads(file.read_text(encoding="utf-8"))["splits"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InputError("not a valid dataset_dict.json (expected {\"splits\": [...]})", path=file,
                         hint="re-save the DatasetDict with save_to_disk") from None
    return [str(s) for s in splits]


@dataclass(frozen=True)
class HfPart:
    """One saved dataset: its ``folder`` and, for a ``DatasetDict``, the ``split`` to read."""

    folder: Path
    split: str | None = None

    def __str__(self) -> str:
        return str(self.folder) if self.split is None else f"{self.folder} (split {self.split!r})"

    @property
    def data_folder(self) -> Path:
        return self.folder / self.split if self.split is not None else self.folder


def _part(folder: Path, preferred: str) -> HfPart:
    """A ``Dataset`` folder as is; a ``DatasetDict`` folder's only split, or its split named ``preferred``."""
    splits = dict_splits(folder)
    if splits is None:
        return HfPart(folder)
    if preferred in splits:
        return HfPart(folder, preferred)
    if len(splits) == 1:
        return HfPart(folder, splits[0])
    raise InputError(f"saved DatasetDict has splits {', '.join(splits) or 'none'} and none named {preferred!r}",
                     path=folder, hint=f"keep one split, or name the {preferred} split {preferred!r}")


@dataclass
class HfLayout:
    """The saved parts of a dataset root; ``qrels`` is resolved per split by :meth:`qrels_for`."""

    root: Path
    corpus: HfPart | None
    queries: HfPart | None

    def splits(self) -> list[str]:
        """The qrels splits on offer (for error messages)."""
        qrels = self.root / "qrels"
        found: set[str] = set()
        if is_hf_folder(qrels):
            found |= set(dict_splits(qrels) or [])
        elif qrels.is_dir():
            found |= {Path(n).stem for p in qrels.iterdir() if (n := logical_name(p)).endswith(".tsv")}
        found |= {s for s in dict_splits(self.root) or [] if s not in ("corpus", "queries")}
        return sorted(found)

    def qrels_for(self, split: str | None) -> HfPart | Path | None:
        """The qrels of ``split``: a saved part or a TSV file; ``None`` without a split (and no unsplit qrels)."""
        qrels = self.root / "qrels"
        if is_hf_folder(qrels):
            splits = dict_splits(qrels)
            if splits is None:
                if split is not None:
                    raise InputError(f"qrels/ is one saved Dataset with no splits, so there is no split {split!r}",
                                     path=self.root, hint="omit ':split', or save qrels/ as a DatasetDict of splits")
                return HfPart(qrels)
            if split is None:
                return None
            if split in splits:
                return HfPart(qrels, split)
        elif split is None:
            return None
        elif qrels.is_dir() and (tsv := find_variant(qrels, f"{split}.tsv")) is not None:
            return tsv
        elif split in (dict_splits(self.root) or []):
            return HfPart(self.root, split)
        available = self.splits()
        raise InputError(f"split {split!r} not found in this Hugging Face datasets folder", path=self.root,
                         hint=f"available splits: {', '.join(available)}" if available
                         else "it has no qrels (qrels/ saved DatasetDict or qrels/<split>.tsv); omit ':split'")


def hf_layout(root: Path) -> HfLayout | None:
    """The Hugging Face layout of a dataset root (see the module docstring), else ``None``."""
    if not root.is_dir():
        return None
    root_splits = dict_splits(root)
    if root_splits is not None:
        if "corpus" not in root_splits and "queries" not in root_splits:
            raise InputError(f"saved DatasetDict with splits {', '.join(root_splits) or 'none'}, but a dataset needs"
                             " a 'corpus' and/or 'queries' split", path=root,
                             hint="save corpus/ and queries/ (BEIR columns) into this folder, or point at them")
        corpus = HfPart(root, "corpus") if "corpus" in root_splits else None
        queries = HfPart(root, "queries") if "queries" in root_splits else None
        return HfLayout(root, corpus, queries)
    if all((root / f).is_file() for f in DATASET_FILES):  # one saved Dataset: a corpus on its own
        return HfLayout(root, HfPart(root), None)
    corpus, queries = root / "corpus", root / "queries"
    if not is_hf_folder(corpus) and not is_hf_folder(queries):
        return None
    return HfLayout(root, _part(corpus, "corpus") if is_hf_folder(corpus) else None,
                    _part(queries, "queries") if is_hf_folder(queries) else None)


def fingerprint_parts(part: HfPart) -> list[str]:
    """``name:size:sha256`` of every Arrow file of a saved part (its content, not its HF fingerprint)."""
    files = sorted(part.data_folder.glob("*.arrow"))
    if not files:
        raise InputError("saved dataset has no .arrow data files", path=part.data_folder,
                         hint="re-save it with save_to_disk")
    return [f"{p.name}:{p.stat().st_size}:{file_sha256(p)}" for p in files]


# ----------------------------------------------------------------------------- reading
def _load(part: HfPart, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> Any:
    """The saved ``datasets.Dataset`` of ``part`` restricted to its BEIR columns (all required ones present)."""
    try:
        import datasets
    except ImportError:
        raise HardnegError(f"{part.folder}: reading a Hugging Face datasets folder needs the optional datasets"
                           " package: pip install datasets (or export it to BEIR JSONL files)") from None
    if is_hf_folder(part.data_folder) and not any(part.data_folder.glob("*.arrow")):
        # save_to_disk of a 0-row Dataset writes no Arrow file, and load_from_disk then fails on it
        raise InputError(f"saved {what} dataset is empty (no .arrow data files)", path=part.data_folder,
                         hint=f"point at the saved {what}, or save them again")
    try:
        ds = datasets.load_from_disk(str(part.data_folder))
    except Exception as exc:  # a damaged or foreign folder: datasets' own message, without its traceback
        raise InputError(f"could not load the saved {what} dataset: {exc}", path=part.data_folder,
                         hint="re-save it with save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):  # a DatasetDict nested where a split was expected
        raise InputError(f"expected a saved Dataset of {what}, found a DatasetDict ({', '.join(ds)})",
                         path=part.data_folder, hint=f"point at one split's folder of {what}")
    columns = list(ds.column_names)
    for col in required:
        if col not in columns:
            raise InputError(f"{what} dataset has no column {col!r} (columns: {', '.join(columns) or 'none'})",
                             path=str(part), hint=f"{what} need the BEIR columns {', '.join(required)};"
                             " rename with Dataset.rename_column")
    return ds.select_columns([c for c in (*required, *optional) if c in columns]).with_format(None)  # plain Python


def _rows(ds: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    row = 0
    for batch in ds.iter(batch_size=_BATCH):
        names = list(batch)
        for values in zip(*(batch[n] for n in names), strict=True):
            row += 1
            yield row, dict(zip(names, values, strict=True))


def _id(value: Any, part: HfPart, row: int, column: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise InputError(f"row {row}: column {column!r} must be a non-empty string or integer id, got {value!r}",
                         path=str(part), hint="fix the id or drop the row")
    return str(value)


def _text(value: Any, part: HfPart, row: int, column: str, *, required: bool) -> str:
    if isinstance(value, str):
        return value
    if value is None and not required:
        return ""
    raise InputError(f"row {row}: column {column!r} must be a string, got {value!r}", path=str(part),
                     hint=f"fill in {column!r} or drop the row")


def _first_row(ds: Any, column: str, key: str) -> int | None:
    """The first row whose ``column`` is ``key`` (only used on error paths)."""
    for row, rec in _rows(ds.select_columns([column])):
        if str(rec[column]) == key:
            return row
    return None


def _duplicate(ds: Any, part: HfPart, row: int, key: str, what: str) -> InputError:
    first = _first_row(ds, "_id", key)
    seen = f" (first in row {first})" if first is not None and first != row else ""
    return InputError(f"row {row}: duplicate {what} id {key!r}{seen}", path=str(part),
                      hint=f"{what} ids must be unique; drop or rename one of the rows")


def _confirm(ds: Any, part: HfPart, clashes: list[tuple[str, int]], what: str) -> None:
    for key, row in sorted(clashes, key=lambda c: c[1]):
        first = _first_row(ds, "_id", key)
        if first is not None and first < row:
            raise _duplicate(ds, part, row, key, what)


def read_hf_corpus(part: HfPart, *, ids: set[str] | IdSet | None = None) -> Iterator[Doc]:
    """Stream a saved corpus (``_id``, ``text``, optional ``title``) as :class:`Doc`; the BEIR reader's checks."""
    ds = _load(part, "corpus", CORPUS_COLUMNS, ("title",))
    seen: set[str] | IdSet = ids if ids is not None else IdSet()
    count = 0
    for row, rec in _rows(ds):
        doc_id = _id(rec["_id"], part, row, "_id")
        text = _text(rec["text"], part, row, "text", required=True)
        title = _text(rec.get("title"), part, row, "title", required=False)
        if isinstance(seen, IdSet):
            if seen.add(doc_id, row) is not None:
                raise _duplicate(ds, part, row, doc_id, "document")
            if seen.block_full:
                _confirm(ds, part, seen.flush(), "document")
        elif doc_id in seen:
            raise _duplicate(ds, part, row, doc_id, "document")
        else:
            seen.add(doc_id)
        if not text.strip() and not title.strip():
            raise InputError(f"row {row}: document {doc_id!r} is empty (no title and no text)", path=str(part),
                             hint="drop the row or fill in the document's text")
        count += 1
        yield Doc(doc_id, text, title)
    if isinstance(seen, IdSet):
        _confirm(ds, part, seen.flush(), "document")
    if count == 0:
        raise InputError("corpus contains no documents", path=str(part), hint="point at the saved corpus")


def read_hf_queries(part: HfPart) -> Iterator[Query]:
    """Stream saved queries (``_id``, ``text``) as :class:`Query`; empty text, duplicates and none at all are errors."""
    ds = _load(part, "queries", QUERY_COLUMNS)
    seen: dict[str, int] = {}
    for row, rec in _rows(ds):
        qid = _id(rec["_id"], part, row, "_id")
        text = _text(rec["text"], part, row, "text", required=True)
        if qid in seen:
            raise InputError(f"row {row}: duplicate query id {qid!r} (first in row {seen[qid]})", path=str(part),
                             hint="query ids must be unique; drop or rename one of the rows")
        if not text.strip():
            raise InputError(f"row {row}: query {qid!r} has empty text", path=str(part),
                             hint="drop the row or give the query its text")
        seen[qid] = row
        yield Query(qid, text)
    if not seen:
        raise InputError("queries dataset contains no queries", path=str(part), hint="point at the saved queries")


def read_hf_qrels(part: HfPart, *, stats: QrelsStats | None = None) -> Iterator[Qrel]:
    """Stream saved qrels (``query-id``, ``corpus-id``, ``score``) as :class:`Qrel`, as :func:`read_qrels` does
    a BEIR TSV: integer grades (``1.0`` reads as 1), an identical repeat counted and skipped, a conflicting
    repeat an error, score-0 rows counted."""
    st = stats if stats is not None else QrelsStats()
    st.layout = "hf"
    ds = _load(part, "qrels", QRELS_COLUMNS)
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    for row, rec in _rows(ds):
        qid = _id(rec["query-id"], part, row, "query-id")
        doc_id = _id(rec["corpus-id"], part, row, "corpus-id")
        score = rec["score"]
        if isinstance(score, float) and score.is_integer():
            score = int(score)
        if isinstance(score, bool) or not isinstance(score, int):
            raise InputError(f"row {row}: score {score!r} is not an integer", path=str(part),
                             hint="qrels grades must be integers such as 0, 1, 2")
        st.lines += 1
        prev = seen.get((qid, doc_id))
        if prev is not None:
            if prev[0] != score:
                raise InputError(f"row {row}: query {qid!r} / document {doc_id!r} judged {score} here but"
                                 f" {prev[0]} in row {prev[1]}", path=str(part),
                                 hint="keep one judgement per (query, document) pair")
            st.duplicates += 1
            continue
        seen[(qid, doc_id)] = (score, row)
        if score == 0:
            st.zero_scores += 1
        yield Qrel(qid, doc_id, score)
