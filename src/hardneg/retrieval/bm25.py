"""BM25 retrieval, a thin wrapper around `bm25s <https://github.com/xhluca/bm25s>`_.

bm25s does the tokenizing, the indexing and the scoring (an eager sparse
matrix of precomputed BM25 term scores). This wrapper adds what the project
needs around it: original doc ids, :data:`~hardneg.retrieval.runs.Run`
output, deterministic ranking, ``k`` larger than the corpus, and an atomic
on-disk format with a manifest.

Defaults follow Pyserini's BEIR BM25 baselines (Anserini/Lucene):

* ``k1=0.9, b=0.4``: Anserini's defaults, used for Pyserini's published BEIR
  (and MS MARCO passage) BM25 numbers.
* ``method="lucene"``: Lucene's BM25 variant (idf = ln(1 + (N - df + .5)/(df + .5)),
  always positive).
* ``stemmer="english"`` (Snowball/Porter2 via PyStemmer) and ``stopwords="en"``
  (bm25s's English list, which is Lucene's 33-word ``EnglishAnalyzer`` list):
  Lucene's EnglishAnalyzer stems with Porter and drops the same stopwords.
* Documents are indexed as ``title + " " + text`` (:meth:`Doc.full_text`),
  like Pyserini's "flat" BEIR indexes; lower-cased, split on ``\\w\\w+``.

Ranking: documents that share no term with the query are never returned (as
with Lucene), so a query may get fewer than ``k`` results; ties in score are
broken by corpus order (earlier document first), so runs are deterministic.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import Stemmer
from tqdm.auto import tqdm

from hardneg.data.records import Doc, Query
from hardneg.errors import HardnegError
from hardneg.io import commit_dir, file_lock, read_json, write_json, writing
from hardneg.retrieval.runs import Run

FORMAT_NAME = "hardneg-bm25"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DOC_IDS_NAME = "doc_ids.json"
#: Files bm25s writes (``bm25s.BM25.save`` defaults) that :meth:`BM25.load` needs.
_BM25S_FILES = (
    "data.csc.index.npy",
    "indices.csc.index.npy",
    "indptr.csc.index.npy",
    "vocab.index.json",
    "params.index.json",
)
_NONOCCURRENCE_FILE = "nonoccurrence_array.index.npy"
_METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
#: At most this many threads score queries in parallel.
MAX_THREADS = 2


def _bm25s() -> Any:
    import bm25s  # heavy (numba/scipy setup): imported when an index is built, loaded or checked

    return bm25s


def _make_stemmer(name: str | None) -> Any:
    if name is None:
        return None
    try:
        return Stemmer.Stemmer(name)
    except KeyError:
        raise HardnegError(
            f"unknown stemmer {name!r}; use None or one of PyStemmer's algorithms: "
            + ", ".join(sorted(Stemmer.algorithms()))
        ) from None


class BM25:
    """A BM25 index over documents with their original ids.

    Build with :meth:`build`, query with :meth:`search`, persist with
    :meth:`save` / :meth:`load`.
    """

    def __init__(
        self,
        k1: float = 0.9,
        b: float = 0.4,
        method: str = "lucene",
        stemmer: str | None = "english",
        stopwords: str | list[str] | None = "en",
    ) -> None:
        if not k1 >= 0:
            raise HardnegError(f"BM25 k1 must be >= 0, got {k1}")
        if not 0 <= b <= 1:
            raise HardnegError(f"BM25 b must be in [0, 1], got {b}")
        if method not in _METHODS:
            raise HardnegError(f"unknown BM25 method {method!r}; use one of {', '.join(_METHODS)}")
        self.k1 = float(k1)
        self.b = float(b)
        self.method = method
        self.stemmer = stemmer
        self.stopwords = list(stopwords) if isinstance(stopwords, list | tuple) else stopwords
        self._stemmer = _make_stemmer(stemmer)
        if isinstance(self.stopwords, str):
            try:  # bm25s's public tokenizer looks the named list up first (a ValueError for an unknown name)
                _bm25s().tokenize([], stopwords=self.stopwords, show_progress=False)
            except ValueError:
                raise HardnegError(
                    f"unknown stopword list {self.stopwords!r}; use None, a list of words, "
                    "or a bm25s language name such as 'en'"
                ) from None
        self._retriever: Any = None
        self.doc_ids: list[str] = []
        self._positions: dict[str, int] | None = None
        self.corpus_fingerprint: str | None = None

    # -- parameters ---------------------------------------------------------

    @property
    def params(self) -> dict[str, Any]:
        return {
            "k1": self.k1,
            "b": self.b,
            "method": self.method,
            "stemmer": self.stemmer,
            "stopwords": self.stopwords,
        }

    def __len__(self) -> int:
        return len(self.doc_ids)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"BM25({params}, docs={len(self)})"

    def _tokenize(self, texts: list[str], *, return_ids: bool, show_progress: bool) -> Any:
        return _bm25s().tokenize(
            texts,
            lower=True,
            stopwords=self.stopwords if self.stopwords is not None else [],
            stemmer=self._stemmer,
            return_ids=return_ids,
            show_progress=show_progress,
        )

    def _require_index(self) -> None:
        if self._retriever is None:
            raise HardnegError("this BM25 index is empty: build() or load() it first")

    # -- building -----------------------------------------------------------

    @classmethod
    def build(
        cls,
        docs: Iterable[Doc],
        *,
        corpus_fingerprint: str | None = None,
        show_progress: bool = False,
        **params: Any,
    ) -> BM25:
        """Index ``doc.full_text()`` of every document, keeping the original ids.

        ``params`` are the constructor's (k1, b, method, stemmer, stopwords).
        ``corpus_fingerprint`` (optional) is recorded in the saved manifest.
        """
        self = cls(**params)
        doc_ids: list[str] = []
        texts: list[str] = []
        seen: set[str] = set()
        for doc in docs:
            if doc.doc_id in seen:
                raise HardnegError(
                    f"document id {doc.doc_id!r} occurs twice in the corpus; doc ids must be unique"
                )
            seen.add(doc.doc_id)
            doc_ids.append(doc.doc_id)
            texts.append(doc.full_text())
        if not texts:
            raise HardnegError("cannot build a BM25 index over an empty corpus")
        tokenized = self._tokenize(texts, return_ids=True, show_progress=show_progress)
        retriever = _bm25s().BM25(k1=self.k1, b=self.b, method=self.method)
        retriever.index(tokenized, show_progress=show_progress)
        self._retriever = retriever
        self.doc_ids = doc_ids
        self.corpus_fingerprint = corpus_fingerprint
        return self

    # -- searching ----------------------------------------------------------

    def _query_token_ids(self, texts: list[str], show_progress: bool) -> list[np.ndarray]:
        vocab: Mapping[str, int] = self._retriever.vocab_dict
        tokens = self._tokenize(texts, return_ids=False, show_progress=show_progress)
        out = []
        for toks in tokens:
            # out-of-vocabulary terms match nothing
            ids = [vocab[t] for t in toks if t and t in vocab]
            out.append(np.asarray(ids, dtype=np.int64))
        return out

    def _top_k(self, token_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Doc positions and scores of the best ``k`` documents matching any query term."""
        if token_ids.size == 0 or k == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        retriever = self._retriever
        scores = retriever.get_scores_from_ids(token_ids)
        indptr = retriever.scores["indptr"]
        indices = retriever.scores["indices"]
        matched = np.zeros(scores.shape[0], dtype=bool)
        for t in np.unique(token_ids):
            matched[indices[indptr[t] : indptr[t + 1]]] = True
        cand = np.flatnonzero(matched)  # ascending corpus order
        cand_scores = scores[cand]
        if cand.size > k:
            part = np.argpartition(-cand_scores, k - 1)[:k]
            kth = cand_scores[part].min()
            above = np.flatnonzero(cand_scores > kth)
            # ties at the cut-off: the earliest documents in corpus order
            at = np.flatnonzero(cand_scores == kth)[: k - above.size]
            keep = np.concatenate([above, at])
            cand, cand_scores = cand[keep], cand_scores[keep]
        order = np.lexsort((cand, -cand_scores))  # score desc, then corpus order
        return cand[order], cand_scores[order]

    def positions(self) -> dict[str, int]:
        """``doc id -> position`` in the index (made on first use)."""
        if self._positions is None or len(self._positions) != len(self.doc_ids):
            self._positions = {d: i for i, d in enumerate(self.doc_ids)}
        return self._positions

    def score_docs(self, query_text: str, doc_ids: Sequence[str]) -> np.ndarray:
        """BM25 scores of ``query_text`` against the documents ``doc_ids`` (any documents, retrieved or not;
        one sharing no term with the query scores 0): what :meth:`search` ranks by, so a query's positives
        can be scored as its candidates are (the margin rules, a BM25 teacher)."""
        self._require_index()
        position = self.positions()
        try:
            rows = np.fromiter((position[d] for d in doc_ids), dtype=np.int64, count=len(doc_ids))
        except KeyError as exc:
            raise HardnegError(f"document {exc.args[0]!r} is not in this BM25 index's corpus") from None
        ids = self._query_token_ids([query_text], show_progress=False)[0]
        if ids.size == 0 or rows.size == 0:
            return np.zeros(rows.size, dtype=np.float64)
        return np.asarray(self._retriever.get_scores_from_ids(ids), dtype=np.float64)[rows]

    def search(
        self,
        queries: Mapping[str, Query] | Sequence[Query],
        k: int = 1000,
        show_progress: bool = True,
        *,
        n_threads: int = MAX_THREADS,
    ) -> Run:
        """Top-``k`` documents per query, as a :data:`Run` keyed by query id.

        ``k`` larger than the corpus returns every matching document. Queries
        with no term in the index get an empty list. Results are sorted by
        score desc, ties by corpus order. ``n_threads`` (at most
        :data:`MAX_THREADS`) threads score the queries.
        """
        self._require_index()
        if k < 0:
            raise HardnegError(f"k must be >= 0, got {k}")
        query_list = list(queries.values()) if isinstance(queries, Mapping) else list(queries)
        ids_seen: set[str] = set()
        for q in query_list:
            if q.query_id in ids_seen:
                raise HardnegError(
                    f"query id {q.query_id!r} occurs twice; query ids must be unique"
                )
            ids_seen.add(q.query_id)
        if not query_list:
            return {}
        k = min(k, len(self.doc_ids))
        token_ids = self._query_token_ids([q.text for q in query_list], show_progress=False)
        threads = max(1, min(int(n_threads), MAX_THREADS))

        def one(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self._top_k(ids, k)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            results_iter = pool.map(one, token_ids)
            if show_progress:
                results_iter = tqdm(results_iter, total=len(token_ids), desc="BM25 search")
            results = list(results_iter)
        run: Run = {}
        doc_ids = self.doc_ids
        for q, (positions, scores) in zip(query_list, results, strict=True):
            run[q.query_id] = [
                (doc_ids[i], s) for i, s in zip(positions.tolist(), scores.tolist(), strict=True)
            ]
        return run

    # -- persistence --------------------------------------------------------

    def save(self, directory: str | Path, corpus_fingerprint: str | None = None) -> None:
        """Write the index to ``directory`` atomically (temp dir, then rename).

        ``manifest.json`` records the parameters, the doc count, the corpus
        fingerprint (argument, else the one given to :meth:`build`) and the
        bm25s version; it is written last, so a directory with a manifest is
        complete. An existing index at ``directory`` is replaced.
        """
        self._require_index()
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        fingerprint = (
            corpus_fingerprint if corpus_fingerprint is not None else self.corpus_fingerprint
        )
        try:
            with writing(directory, "BM25 index"):
                tmp.mkdir()
                self._retriever.save(tmp, show_progress=False)
                write_json(tmp / DOC_IDS_NAME, self.doc_ids)
                files = sorted(p.name for p in tmp.iterdir())
                write_json(
                    tmp / MANIFEST_NAME,
                    {
                        "format": FORMAT_NAME,
                        "format_version": FORMAT_VERSION,
                        "params": self.params,
                        "num_docs": len(self.doc_ids),
                        "vocab_size": len(self._retriever.vocab_dict),
                        "corpus_fingerprint": fingerprint,
                        "bm25s_version": _bm25s().__version__,
                        "files": files,
                    },
                )
                commit_dir(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.corpus_fingerprint = fingerprint

    @staticmethod
    def read_manifest(directory: str | Path) -> dict[str, Any]:
        """The manifest of a saved index; :class:`HardnegError` if it is not one."""
        directory = Path(directory)
        if not directory.is_dir():
            raise HardnegError(
                f"BM25 index not found: {directory} is not a directory (build it first)"
            )
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise HardnegError(
                f"{directory} is not a complete BM25 index: {MANIFEST_NAME} is missing "
                "(the build was interrupted or this is another kind of directory; rebuild it)"
            )
        try:
            manifest = read_json(path)
        except (OSError, ValueError) as err:
            raise HardnegError(f"cannot read {path}: {err} (rebuild the index)") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise HardnegError(f"{path} is not a {FORMAT_NAME} manifest (rebuild the index)")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise HardnegError(
                f"{path}: index format version {manifest.get('format_version')!r} is not "
                f"supported (expected {FORMAT_VERSION}); rebuild the index"
            )
        return manifest

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = False) -> BM25:
        """Load an index written by :meth:`save` (``mmap=True`` memory-maps the arrays)."""
        directory = Path(directory)
        manifest = cls.read_manifest(directory)
        params = manifest.get("params", {})
        needed = [*_BM25S_FILES, DOC_IDS_NAME]
        if params.get("method") in ("bm25l", "bm25+"):
            needed.append(_NONOCCURRENCE_FILE)
        missing = [name for name in needed if not (directory / name).is_file()]
        if missing:
            raise HardnegError(
                f"{directory} is an incomplete BM25 index: missing {', '.join(missing)} "
                "(rebuild the index)"
            )
        self = cls(**params)
        bm25s = _bm25s()
        try:
            retriever = bm25s.BM25.load(directory, mmap=mmap, show_progress=False, verbosity=0)
            with open(directory / DOC_IDS_NAME, encoding="utf-8") as fh:
                doc_ids = json.load(fh)
        except Exception as err:
            raise HardnegError(
                f"cannot load the BM25 index at {directory} (saved with bm25s "
                f"{manifest.get('bm25s_version')}, running {bm25s.__version__}): {err}; rebuild it"
            ) from err
        n = manifest.get("num_docs")
        if not isinstance(doc_ids, list) or len(doc_ids) != n or retriever.scores["num_docs"] != n:
            raise HardnegError(
                f"{directory}: the manifest says {n} documents but the index files disagree "
                "(mixed or corrupted files; rebuild the index)"
            )
        self._retriever = retriever
        self.doc_ids = [str(d) for d in doc_ids]
        self.corpus_fingerprint = manifest.get("corpus_fingerprint")
        return self


def cached_bm25(dataset: Any, cache_dir: str | Path, **params: Any) -> BM25:
    """The BM25 index of ``dataset``'s corpus with ``params``: loaded from ``cache_dir`` or built and saved there.

    Keyed by the corpus fingerprint and the parameters, so a changed corpus or
    setting gets its own index. Built under a lock: a second process (another torchrun rank) waits on it,
    not in a collective, then loads the index.
    """
    fingerprint = dataset.fingerprint()
    key = json.dumps([fingerprint, BM25(**params).params], sort_keys=True)
    folder = Path(cache_dir) / "bm25" / f"{dataset.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    with file_lock(f"{folder}.lock"):
        if (folder / "manifest.json").is_file():
            return BM25.load(folder)
        index = BM25.build(dataset.iter_docs(), corpus_fingerprint=fingerprint, **params)
        index.save(folder)
        return index
