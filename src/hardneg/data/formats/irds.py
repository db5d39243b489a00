"""Datasets from the optional ``ir_datasets`` package (``irds:<id>`` specs).

:func:`open_irds` loads a handle; :class:`IrdsSource` turns its documents,
queries and qrels into records. Any failure of the package (no network, an
unknown id, a broken download) becomes a :class:`~hardneg.errors.HardnegError`
that says how to work offline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from hardneg.data.formats.trec import QrelsStats
from hardneg.data.records import Doc, Qrel, Query
from hardneg.errors import HardnegError, InputError

__all__ = ["IrdsSource", "irds_failure", "open_irds"]

_END = object()


def irds_failure(irds_id: str, reason: str) -> HardnegError:
    return HardnegError(
        f"could not load ir_datasets dataset {irds_id!r}: {reason}. ir_datasets needs internet"
        " access (or its files already downloaded under ~/.ir_datasets); offline, use a local"
        " BEIR/MS MARCO folder instead, e.g. path/to/scifact:test"
    )


def open_irds(irds_id: str) -> Any:
    """The ``ir_datasets`` handle of ``irds_id`` (the package is imported only here)."""
    if not irds_id:
        raise InputError(
            "empty ir_datasets id in spec 'irds:'", hint="write e.g. irds:beir/scifact/test"
        )
    try:
        import ir_datasets  # type: ignore[import-not-found]
    except ImportError:
        raise HardnegError(
            f"the spec 'irds:{irds_id}' needs the optional ir_datasets package:"
            " pip install 'hardneg[irds]' (or use a local dataset folder)"
        ) from None
    try:
        return ir_datasets.load(irds_id)
    except Exception as exc:
        raise irds_failure(irds_id, str(exc) or type(exc).__name__) from exc


class IrdsSource:
    """Records of one ``ir_datasets`` handle; the package's own errors become :func:`irds_failure`."""

    def __init__(self, irds_id: str, handle: Any) -> None:
        self.irds_id = irds_id
        self.handle = handle

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except HardnegError:
            raise
        except Exception as exc:
            raise irds_failure(self.irds_id, f"reading its {what} failed: {exc}") from exc

    def has(self, attr: str) -> bool:
        """Whether the handle's ``has_docs``/``has_queries``/``has_qrels`` says yes."""
        fn = getattr(self.handle, attr, None)
        return bool(fn()) if callable(fn) else False

    def _wrap(self, what: str, it_fn: Callable[[], Iterable[Any]]) -> Iterator[Any]:
        it = iter(self._call(what, it_fn))
        while True:
            item = self._call(what, lambda: next(it, _END))
            if item is _END:
                return
            yield item

    def docs(self, ids: set[str]) -> Iterator[Doc]:
        """Stream the documents, adding every id to ``ids``; none at all is an error."""
        n = 0
        for d in self._wrap("documents", self.handle.docs_iter):
            doc_id = str(d.doc_id)
            text = getattr(d, "text", None)
            if text is None:
                text = getattr(d, "body", "") or ""
            title = getattr(d, "title", "") or ""
            ids.add(doc_id)
            n += 1
            yield Doc(doc_id, str(text), str(title))
        if n == 0:
            raise InputError(f"irds:{self.irds_id} has no documents", hint="choose another id")

    def queries(self) -> Iterator[Query]:
        for q in self._wrap("queries", self.handle.queries_iter):
            text = getattr(q, "text", None)
            if text is None:
                text = getattr(q, "title", "") or ""
            yield Query(str(q.query_id), str(text))

    def qrels(self, stats: QrelsStats) -> Iterator[Qrel]:
        stats.layout = "irds"
        for r in self._wrap("qrels", self.handle.qrels_iter):
            stats.lines += 1
            yield Qrel(str(r.query_id), str(r.doc_id), int(r.relevance))

    def docs_file(self) -> Path | None:
        """The handle's documents file when it names one that exists, else ``None``."""
        path = None
        docs_path = getattr(self.handle, "docs_path", None)
        if callable(docs_path):
            try:
                path = Path(docs_path())
            except Exception:
                path = None
        return path if path is not None and path.is_file() else None
