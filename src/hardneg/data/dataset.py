"""The :class:`Dataset`: a corpus with its queries and qrels, read lazily from files.

Errors versus warnings
----------------------
Anything that makes a file's meaning uncertain is an ERROR: an
:class:`~hardneg.errors.InputError` naming ``file:line``, what is wrong and
how to fix it. That covers malformed JSON, a JSON line that is not an object
or lacks ``_id``/``text``, a wrong TSV column count, a non-integer relevance,
duplicate document or query ids, qrels lines judging the same (query, doc)
twice with different grades, bytes that are not UTF-8, an empty document
(title and text both blank), an empty query, a missing file, an empty corpus
and an empty queries file.
Things that are legitimate in published data but change what gets evaluated
are WARNINGS: counted, kept in ``Dataset.warnings`` and logged once per kind
on the ``hardneg`` logger. Qrels naming a document absent from the corpus or
a query absent from the queries file are dropped (TREC DL's graded qrels judge
passages outside any subset corpus); BEIR qrels lines with score 0 are kept
as grade 0 (judged non-relevant); identical duplicate qrels lines are kept
once. Blank lines are skipped silently and a UTF-8 BOM at the start of a file
is tolerated.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hardneg.data.formats import read_corpus, read_queries
from hardneg.data.formats.classic import is_archive, read_corpus_files, read_cranfield_qrels, unpad_id
from hardneg.data.formats.hf import HfPart, fingerprint_parts, read_hf_corpus, read_hf_qrels, read_hf_queries
from hardneg.data.formats.irds import IrdsSource
from hardneg.data.formats.smart import read_smart_docs, read_smart_qrels, read_smart_queries
from hardneg.data.formats.trec import QrelsStats, parse_topic_field, read_qrels
from hardneg.data.ids import IdSet
from hardneg.data.lines import logical_name
from hardneg.data.records import Doc, Qrel, Qrels, Query
from hardneg.errors import InputError
from hardneg.io import file_sha256

__all__ = ["CranfieldDataset", "Dataset", "HfDataset", "IrdsDataset", "SmartDataset", "TrecDataset"]

logger = logging.getLogger("hardneg")


class Dataset:
    """A corpus with its queries and qrels, read lazily from files.

    Attributes: ``name``, ``split``, ``corpus_path`` (``None`` when the folder
    has no corpus), ``queries_path``, ``qrels_path``, ``root``, ``topic_field``
    (the text of TREC ``<top>`` topics: ``title``, ``desc`` or ``title+desc``) and
    ``warnings`` (human-readable counted warnings, filled as parts are loaded:
    qrels warnings appear once :meth:`qrels` or :meth:`queries` has run).
    """

    def __init__(
        self,
        name: str,
        split: str | None = None,
        *,
        corpus_path: str | Path | None = None,
        queries_path: str | Path | None = None,
        qrels_path: str | Path | None = None,
        root: str | Path | None = None,
    ) -> None:
        self.name = name
        self.split = split
        self.corpus_path = Path(corpus_path) if corpus_path is not None else None
        self.queries_path = Path(queries_path) if queries_path is not None else None
        self.qrels_path = Path(qrels_path) if qrels_path is not None else None
        self.root = Path(root) if root is not None else None
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self._docs: list[Doc] | None = None
        self._doc_ids: IdSet | None = None
        self._doc_count: int | None = None
        self._all_queries: dict[str, Query] | None = None
        self._qrels: Qrels | None = None
        self._fingerprint: str | None = None
        self._topic_field = "title"

    @property
    def topic_field(self) -> str:
        return self._topic_field

    @topic_field.setter
    def topic_field(self, value: str) -> None:
        """Validated; changing it drops the queries read so far."""
        parse_topic_field(value)
        if value != self._topic_field:
            self._topic_field = value
            self._all_queries = None

    def __repr__(self) -> str:
        split = f":{self.split}" if self.split else ""
        return f"Dataset({self.name}{split}, corpus={self.corpus_path})"

    # -- sources (overridden for ir_datasets)

    @property
    def has_corpus(self) -> bool:
        return self.corpus_path is not None

    @property
    def has_queries(self) -> bool:
        return self.queries_path is not None

    @property
    def has_qrels(self) -> bool:
        return self.qrels_path is not None

    def _doc_source(self, ids: set[str]) -> Iterator[Doc]:
        assert self.corpus_path is not None
        return read_corpus(self.corpus_path, ids=ids)

    def _query_source(self) -> Iterator[Query]:
        assert self.queries_path is not None
        return read_queries(self.queries_path, topic_field=self.topic_field)

    def _qrels_source(self, stats: QrelsStats) -> Iterator[Qrel]:
        assert self.qrels_path is not None
        return read_qrels(self.qrels_path, stats=stats)

    def _describe(self, part: str) -> str:
        path = {"corpus": self.corpus_path, "queries": self.queries_path, "qrels": self.qrels_path}
        return str(path[part])

    def _warn(self, kind: str, message: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        self.warnings.append(message)
        logger.warning("%s", message)

    # -- corpus

    def _no_corpus(self) -> InputError:
        where = self.root if self.root is not None else self.name
        return InputError(
            "dataset has no corpus (no corpus.jsonl or collection.tsv)",
            path=where,
            hint="point at a folder with a corpus; this one only has queries/qrels",
        )

    def iter_docs(self) -> Iterator[Doc]:
        """Stream the corpus, validating every line (raises :class:`InputError`)."""
        if not self.has_corpus:
            raise self._no_corpus()
        return self._iter_docs()

    def _iter_docs(self) -> Iterator[Doc]:
        ids = IdSet()  # ~8 bytes an id: a huge corpus's ids are never all held as strings
        n = 0
        for doc in self._doc_source(ids):
            n += 1
            yield doc
        self._doc_ids, self._doc_count = ids, n

    def docs(self) -> list[Doc]:
        """All documents (cached); ``[]`` when the dataset has no corpus."""
        if self._docs is None:
            self._docs = list(self.iter_docs()) if self.has_corpus else []
        return self._docs

    def doc_count(self) -> int:
        if not self.has_corpus:
            return 0
        if self._doc_count is None:
            if self._docs is not None:
                return len(self._docs)
            for _ in self.iter_docs():
                pass
        assert self._doc_count is not None
        return self._doc_count

    def doc_ids(self) -> IdSet | set[str]:
        """The corpus ids, for ``in`` and ``len`` (cached; reads the corpus once if needed)."""
        if not self.has_corpus:
            return set()
        if self._doc_ids is None:
            for _ in self.iter_docs():
                pass
        assert self._doc_ids is not None
        return self._doc_ids

    def fingerprint(self) -> str:
        """sha256 over the corpus file's size and content hash (mtime plays no part)."""
        if self._fingerprint is None:
            if self.corpus_path is None:
                raise self._no_corpus()
            try:
                size = self.corpus_path.stat().st_size
            except FileNotFoundError:
                raise InputError("file not found", path=self.corpus_path) from None
            digest = file_sha256(self.corpus_path)
            self._fingerprint = hashlib.sha256(f"{size}:{digest}".encode()).hexdigest()
        return self._fingerprint

    # -- queries

    def all_queries(self) -> dict[str, Query]:
        """Every query of the queries file, in file order (``{}`` if there is none)."""
        if self._all_queries is None:
            if not self.has_queries:
                self._all_queries = {}
            else:
                self._all_queries = {q.query_id: q for q in self._query_source()}
        return self._all_queries

    def queries(self) -> dict[str, Query]:
        """The split's queries: with qrels, only queries that have (kept) qrels, in file order."""
        everything = self.all_queries()
        if not self.has_qrels:
            return everything
        judged = self.qrels()
        return {qid: q for qid, q in everything.items() if qid in judged}

    # -- qrels

    def qrels(self) -> Qrels:
        """``qid -> {docid: grade}`` of the split (``{}`` if none); see the module docstring."""
        if self._qrels is not None:
            return self._qrels
        if not self.has_qrels:
            self._qrels = {}
            return self._qrels
        stats = QrelsStats()
        records = list(self._qrels_source(stats))
        src = self._describe("qrels")
        if stats.duplicates:
            self._warn(
                "qrels-duplicate",
                f"{stats.duplicates} identical duplicate qrels lines in {src}; kept one of each",
            )
        if stats.zero_scores:
            self._warn(
                "qrels-zero-score",
                f"{stats.zero_scores} qrels lines in {src} have score 0; read as grade 0"
                " (judged non-relevant)",
            )
        if self.has_queries:
            known_q = self.all_queries()
            missing = [r for r in records if r.query_id not in known_q]
            if missing:
                qids = {r.query_id for r in missing}
                self._warn(
                    "qrels-absent-query",
                    f"{len(missing)} qrels lines ({len(qids)} queries) in {src} name query ids"
                    f" absent from {self._describe('queries')}; dropped them"
                    f" (e.g. query {missing[0].query_id!r})",
                )
                records = [r for r in records if r.query_id in known_q]
        if self.has_corpus:
            known_d = self.doc_ids()
            missing = [r for r in records if r.doc_id not in known_d]
            if missing:
                qids = {r.query_id for r in missing}
                grades = sorted({r.relevance for r in missing})
                self._warn(
                    "qrels-absent-doc",
                    f"{len(missing)} qrels lines ({len(qids)} queries, grades"
                    f" {', '.join(map(str, grades))}) in {src} name documents absent from the"
                    f" corpus {self._describe('corpus')}; dropped them"
                    f" (e.g. doc {missing[0].doc_id!r})",
                )
                records = [r for r in records if r.doc_id in known_d]
        qrels: Qrels = {}
        for r in records:
            qrels.setdefault(r.query_id, {})[r.doc_id] = r.relevance
        self._qrels = qrels
        return qrels


class IrdsDataset(Dataset):
    """A :class:`Dataset` backed by ``ir_datasets`` (local override files still win).

    ``name`` is the id made file-safe (``beir/scifact`` -> ``beir_scifact``: it names cache folders);
    ``irds_id`` is the id loaded. ``irds:beir/scifact:test`` loads ``beir/scifact/test`` with ``name``
    ``beir_scifact`` and ``split`` ``test``, so every split of one corpus shares its cached artifacts.
    """

    def __init__(
        self,
        irds_id: str,
        handle: Any,
        *,
        queries_path: Path | None = None,
        qrels_path: Path | None = None,
        split: str | None = None,
        base_id: str | None = None,
    ) -> None:
        super().__init__(
            re.sub(r"[^\w.+-]", "_", base_id or irds_id), split, corpus_path=None, queries_path=queries_path,
            qrels_path=qrels_path,
        )
        self.irds_id = irds_id
        self._handle = handle
        self._source = IrdsSource(irds_id, handle)

    def __repr__(self) -> str:
        return f"IrdsDataset(irds:{self.irds_id})"

    def _no_corpus(self) -> InputError:
        return InputError(f"irds:{self.irds_id} has no documents", hint="choose an ir_datasets id with docs")

    @property
    def has_corpus(self) -> bool:
        return self._source.has("has_docs")

    @property
    def has_queries(self) -> bool:
        return self.queries_path is not None or self._source.has("has_queries")

    @property
    def has_qrels(self) -> bool:
        return self.qrels_path is not None or self._source.has("has_qrels")

    def _describe(self, part: str) -> str:
        path = {"corpus": None, "queries": self.queries_path, "qrels": self.qrels_path}[part]
        return str(path) if path is not None else f"irds:{self.irds_id} {part}"

    def _doc_source(self, ids: set[str]) -> Iterator[Doc]:
        return self._source.docs(ids)

    def _query_source(self) -> Iterator[Query]:
        if self.queries_path is not None:
            yield from read_queries(self.queries_path, topic_field=self.topic_field)
            return
        yield from self._source.queries()

    def _qrels_source(self, stats: QrelsStats) -> Iterator[Qrel]:
        if self.qrels_path is not None:
            yield from read_qrels(self.qrels_path, stats=stats)
            return
        yield from self._source.qrels(stats)

    def fingerprint(self) -> str:
        """sha256 over the handle's documents file, or (no file) over every document's id, title and text:
        content, not the id, so the splits of one corpus share it and a changed corpus does not."""
        if self._fingerprint is None:
            path = self._source.docs_file()
            if path is not None:
                payload = f"{path.stat().st_size}:{file_sha256(path)}"
            else:
                h = hashlib.sha256()
                for d in self.iter_docs():
                    h.update(f"{len(d.doc_id)}:{d.doc_id}{len(d.title)}:{d.title}{len(d.text)}:{d.text}".encode())
                payload = f"irds-docs:{self.doc_count()}:{h.hexdigest()}"
            self._fingerprint = hashlib.sha256(payload.encode()).hexdigest()
        return self._fingerprint


class HfDataset(Dataset):
    """A :class:`Dataset` over a Hugging Face ``datasets`` folder (see :mod:`hardneg.data.formats.hf`).

    ``corpus_path``/``queries_path`` are the saved folders; ``qrels_path`` a saved folder or a TSV
    file. A ``queries=``/``qrels=`` override file is read as such.
    """

    def __init__(self, name: str, split: str | None = None, *, corpus: HfPart | None,
                 queries: HfPart | Path | None, qrels: HfPart | Path | None, root: Path) -> None:
        def path_of(part: HfPart | Path | None) -> Path | None:
            return part.data_folder if isinstance(part, HfPart) else part

        super().__init__(name, split, corpus_path=path_of(corpus), queries_path=path_of(queries),
                         qrels_path=path_of(qrels), root=root)
        self.hf_corpus = corpus
        self.hf_queries = queries if isinstance(queries, HfPart) else None
        self.hf_qrels = qrels if isinstance(qrels, HfPart) else None

    def _describe(self, part: str) -> str:
        hf = {"corpus": self.hf_corpus, "queries": self.hf_queries, "qrels": self.hf_qrels}[part]
        return str(hf) if hf is not None else super()._describe(part)

    def _no_corpus(self) -> InputError:
        return InputError("Hugging Face datasets folder has no corpus", path=self.root,
                          hint="save the corpus (columns _id, title, text) as corpus/ in it")

    def _doc_source(self, ids: set[str]) -> Iterator[Doc]:
        assert self.hf_corpus is not None
        return read_hf_corpus(self.hf_corpus, ids=ids)

    def _query_source(self) -> Iterator[Query]:
        return read_hf_queries(self.hf_queries) if self.hf_queries is not None else super()._query_source()

    def _qrels_source(self, stats: QrelsStats) -> Iterator[Qrel]:
        return read_hf_qrels(self.hf_qrels, stats=stats) if self.hf_qrels is not None else \
            super()._qrels_source(stats)

    def fingerprint(self) -> str:
        """sha256 over the corpus's Arrow files (names, sizes, content hashes)."""
        if self._fingerprint is None:
            if self.hf_corpus is None:
                raise self._no_corpus()
            self._fingerprint = hashlib.sha256("\n".join(fingerprint_parts(self.hf_corpus)).encode()).hexdigest()
        return self._fingerprint


class SmartDataset(Dataset):
    """A :class:`Dataset` over a SMART collection's ``X.ALL``, ``X.QRY`` and ``X.REL``."""

    def _doc_source(self, ids: set[str]) -> Iterator[Doc]:
        assert self.corpus_path is not None
        return read_smart_docs(self.corpus_path, ids)

    def _query_source(self) -> Iterator[Query]:
        assert self.queries_path is not None
        return read_smart_queries(self.queries_path)

    def _qrels_source(self, stats: QrelsStats) -> Iterator[Qrel]:
        assert self.qrels_path is not None
        stats.layout = "smart"
        for qrel in read_smart_qrels(self.qrels_path):
            stats.lines += 1
            yield qrel


class CranfieldDataset(SmartDataset):
    """Cranfield: SMART documents and queries, queries renumbered 1..225 in file order (as the qrels
    number them), qrels from ``QRelsCorrectedforTRECeval`` or the mapped ``cranqrel``
    (see :mod:`hardneg.data.formats.classic`)."""

    def _query_source(self) -> Iterator[Query]:
        assert self.queries_path is not None
        return read_smart_queries(self.queries_path, renumber=True)

    def _qrels_source(self, stats: QrelsStats) -> Iterator[Qrel]:
        assert self.qrels_path is not None
        if logical_name(self.qrels_path).lower() == "cranqrel":
            stats.layout = "cranqrel"
            for qrel in read_cranfield_qrels(self.qrels_path):
                stats.lines += 1
                yield qrel
            return
        yield from read_qrels(self.qrels_path, stats=stats)


class TrecDataset(Dataset):
    """A folder of TREC ``<DOC>`` files and/or per-file document archives, with topics and qrels.

    ``corpus_files`` are read in order as one corpus (ids unique across them). When the corpus
    comes from an archive of per-file documents, qrels document ids lose their zero padding as
    the document ids do (CACM: ``CACM-0115`` and ``CACM-115`` are one document).
    """

    def __init__(self, name: str, split: str | None = None, *, corpus_files: list[Path],
                 queries_path: str | Path | None = None, qrels_path: str | Path | None = None,
                 root: str | Path | None = None) -> None:
        self.corpus_files = [Path(p) for p in corpus_files]
        if not self.corpus_files:
            raise InputError("TREC folder has no corpus files", path=root)
        corpus = self.corpus_files[0] if len(self.corpus_files) == 1 else (root or self.corpus_files[0])
        super().__init__(name, split, corpus_path=corpus, queries_path=queries_path,
                         qrels_path=qrels_path, root=root)

    def _doc_source(self, ids: set[str]) -> Iterator[Doc]:
        return read_corpus_files(self.corpus_files, ids=ids)

    def _qrels_source(self, stats: QrelsStats) -> Iterator[Qrel]:
        assert self.qrels_path is not None
        unpad = any(is_archive(p) for p in self.corpus_files)
        for qrel in read_qrels(self.qrels_path, stats=stats):
            yield Qrel(qrel.query_id, unpad_id(qrel.doc_id), qrel.relevance) if unpad else qrel

    def fingerprint(self) -> str:
        """sha256 over every corpus file's name, size and content hash."""
        if self._fingerprint is None:
            parts = []
            for path in self.corpus_files:
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    raise InputError("file not found", path=path) from None
                parts.append(f"{path.name}:{size}:{file_sha256(path)}")
            self._fingerprint = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        return self._fingerprint
