"""Teachers: a second model that rescores candidates (and positives) before the rules apply, and whose
scores training can distil (``--distill``, :mod:`hardneg.train.distill`).

A teacher is a bi-encoder hardneg loads (:class:`BiEncoderTeacher`), a sentence-transformers CrossEncoder
folder (:class:`CrossEncoderTeacher`) or BM25 (:class:`BM25Teacher`, ``--teacher bm25``), named by
``--teacher`` (:func:`load_teacher`); a fusion of several (``fusion:bm25+minilm``) is
:mod:`hardneg.negatives.fusion`. Its scores are cached by
(teacher fingerprint, corpus fingerprint, query id, doc id) in memory and on disk
(``<cache>/teacher_scores/<key>/part-*.tsv``, each line also holding a hash of the query text, so a changed
query is rescored): an ANCE refresh or the next ADORE step does not rescore (:class:`TeacherScores`).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from hardneg.errors import HardnegError

__all__ = ["BM25Teacher", "BiEncoderTeacher", "CrossEncoderTeacher", "Teacher", "TeacherScores", "doc_texts",
           "is_cross_encoder", "load_teacher"]


class Teacher:
    """Scores ``(query text, document text)`` pairs; ``fingerprint`` names its weights."""

    fingerprint: str = ""
    kind: str = ""
    #: :meth:`score_ids` reads the documents' texts (BM25 scores by id: its own index holds the corpus)
    uses_doc_text: bool = True

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def score_ids(self, queries: Sequence[str], doc_ids: Sequence[str],
                  texts: Mapping[str, str] | None) -> np.ndarray:
        """Scores of ``(queries[i], doc_ids[i])``; ``texts``: the documents' texts (``None`` when
        :attr:`uses_doc_text` is False)."""
        assert texts is not None
        return self.score_pairs(queries, [texts[d] for d in doc_ids])


#: document vectors a bi-encoder teacher keeps in memory (ADORE rescoring every step re-meets the same documents)
DOC_VECTOR_MEMO = 1_000_000
#: (query, document) pairs scored at a time: a whole corpus per query (a deep rule window on a small corpus) for
#: thousands of queries would otherwise be one (pairs x dim) matrix, 14 GB for NFCorpus's training queries
PAIR_CHUNK = 65_536


class BiEncoderTeacher(Teacher):
    """A :class:`~hardneg.model.encoder.DualEncoder`: ``<query vector, document vector>``."""

    kind = "bi-encoder"

    def __init__(self, model, batch_size: int = 64) -> None:
        from hardneg.model.fingerprints import weights_fingerprint

        self.model, self.batch_size = model, batch_size
        self._doc_vectors: dict[str, np.ndarray] = {}  # by text: each document is encoded once per run
        ident = {"doc": model.side_identity("doc"), "query": model.side_identity("query"),
                 "query_weights": weights_fingerprint(model.query_model)}
        self.fingerprint = "bi-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        import torch

        from hardneg.model.encoding import encode_texts

        uq, ud = list(dict.fromkeys(queries)), list(dict.fromkeys(docs))
        was = self.model.training
        self.model.eval()
        new = [t for t in ud if t not in self._doc_vectors]
        if len(self._doc_vectors) + len(new) > DOC_VECTOR_MEMO:  # bounded: start over with this call's documents
            self._doc_vectors.clear()
            new = ud
        with torch.no_grad():
            qv = encode_texts(self.model, uq, "query", batch_size=self.batch_size)
            if new:
                self._doc_vectors.update(zip(new, encode_texts(self.model, new, "doc", batch_size=self.batch_size),
                                             strict=True))
        if was:
            self.model.train()
        row = {t: i for i, t in enumerate(uq)}
        qi = np.array([row[t] for t in queries], dtype=np.int64)
        out = np.empty(len(docs), dtype=np.float64)
        for a in range(0, len(docs), PAIR_CHUNK):  # never a (pairs x dim) matrix of the whole request
            dv = np.stack([self._doc_vectors[t] for t in docs[a:a + PAIR_CHUNK]])
            out[a:a + len(dv)] = np.einsum("nd,nd->n", qv[qi[a:a + PAIR_CHUNK]], dv)
        return out


class CrossEncoderTeacher(Teacher):
    """A sentence-transformers ``CrossEncoder`` folder: ``CrossEncoder.predict`` (its activation included)."""

    kind = "cross-encoder"

    def __init__(self, folder: str | Path, device: str | None = None, batch_size: int = 32) -> None:
        from sentence_transformers import CrossEncoder

        from hardneg.model.fingerprints import weights_fingerprint

        try:
            self.model = CrossEncoder(str(folder), device=device, local_files_only=True)
        except Exception as exc:  # a broken folder: say which and why
            raise HardnegError(f"{folder}: cannot load this CrossEncoder teacher: {exc}") from exc
        self.batch_size = batch_size
        act = type(self.model.activation_fn).__name__
        self.fingerprint = "ce-" + hashlib.sha256(
            f"{weights_fingerprint(self.model)}:{act}:{self.model.max_length}".encode()).hexdigest()[:16]

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        if not queries:
            return np.zeros(0)
        out = self.model.predict(list(zip(queries, docs, strict=True)), batch_size=self.batch_size,
                                 show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float64).reshape(len(queries))


class BM25Teacher(Teacher):
    """BM25 (:class:`~hardneg.retrieval.bm25.BM25`, the index ``hardneg bm25`` caches) as a teacher: the score
    of any (query, document) pair, retrieved or not (:meth:`BM25.score_docs`)."""

    kind = "bm25"
    uses_doc_text = False

    def __init__(self, bm25) -> None:
        self.bm25 = bm25
        self.fingerprint = "bm25-" + hashlib.sha256(json.dumps(bm25.params, sort_keys=True).encode()).hexdigest()[:16]

    def score_ids(self, queries: Sequence[str], doc_ids: Sequence[str],
                  texts: Mapping[str, str] | None) -> np.ndarray:
        out = np.empty(len(doc_ids), dtype=np.float64)
        by_query: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            by_query.setdefault(q, []).append(i)
        for q, at in by_query.items():  # one corpus-wide score vector per query text
            out[at] = self.bm25.score_docs(q, [doc_ids[i] for i in at])
        return out


def is_cross_encoder(folder: str | Path) -> bool:
    """A sentence-transformers CrossEncoder folder: ``config_sentence_transformers.json`` says
    ``model_type: CrossEncoder`` (ST >= 4 saves), or ``config.json``'s architecture is a
    ``…ForSequenceClassification`` (older saves; what ``CrossEncoder`` loads as a reranker)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    st = folder / "config_sentence_transformers.json"
    if st.is_file():
        try:
            if json.loads(st.read_text(encoding="utf-8")).get("model_type") == "CrossEncoder":
                return True
        except (OSError, ValueError):
            pass
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    try:
        archs = json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        return False
    return bool(archs) and str(archs[0]).endswith("ForSequenceClassification")


def load_teacher(name: str, *, device: str | None = None, batch_size: int = 64, model=None, dataset=None,
                 cache_dir: str | Path | None = None) -> Teacher:
    """``name``: ``bm25`` (over ``dataset``, its index cached under ``cache_dir``), a CrossEncoder folder, or
    any model :meth:`DualEncoder.from_pretrained` loads.

    ``model``: an already loaded encoder to use when it is the one ``name`` names (the start model)."""
    if name == "bm25":
        if dataset is None or cache_dir is None:
            raise HardnegError("--teacher bm25 needs the dataset and a cache folder for its index")
        from hardneg.retrieval.bm25 import cached_bm25

        return BM25Teacher(cached_bm25(dataset, cache_dir))
    if is_cross_encoder(name):
        return CrossEncoderTeacher(name, device=device, batch_size=batch_size)
    if model is not None:
        return BiEncoderTeacher(model, batch_size)
    from hardneg.model.encoder import DualEncoder

    try:
        encoder = DualEncoder.from_pretrained(name)
    except HardnegError:
        raise
    except Exception as exc:
        raise HardnegError(f"--teacher {name}: not a CrossEncoder folder, and no bi-encoder loads from it "
                           f"({exc})") from exc
    if device is not None:
        encoder.to(device)
    return BiEncoderTeacher(encoder.eval(), batch_size)


def _text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=6).hexdigest()


class TeacherScores:
    """A teacher behind a cache keyed by (teacher fingerprint, corpus, query id, doc id).

    Memory first, then ``folder`` (part files written once each, so concurrent writers never
    collide). In memory the scores sit per (query id, hash of the query's text): a changed query text
    is a miss. ``scored`` counts pairs the teacher actually scored, ``hits`` cache hits."""

    #: a pair's score depends on the other documents asked for with it (a fusion's normalisation): False here
    listwise = False

    def __init__(self, teacher: Teacher, folder: str | Path | None = None) -> None:
        self.teacher = teacher
        self.folder = Path(folder) if folder else None
        self.memory: dict[tuple[str, str], dict[str, float]] = {}
        self.scored = self.hits = 0
        self.reload()

    def reload(self) -> None:
        """Read every part file of the folder into memory (also those other processes wrote since: a torchrun
        rank after the others scored their shares)."""
        if self.folder is not None and self.folder.is_dir():
            for part in sorted(self.folder.glob("part-*.tsv")):
                for line in part.read_text(encoding="utf-8").splitlines():
                    bits = line.split("\t")
                    if len(bits) == 4:
                        self.memory.setdefault((bits[0], bits[2]), {})[bits[1]] = float(bits[3])

    @classmethod
    def under(cls, teacher: Teacher, cache_dir: str | Path | None, corpus_key: str) -> TeacherScores:
        """The cache for ``teacher`` over the corpus ``corpus_key`` under ``cache_dir``."""
        folder = None
        if cache_dir is not None:
            folder = Path(cache_dir) / "teacher_scores" / f"{teacher.fingerprint}-{corpus_key[:16]}"
        return cls(teacher, folder)

    def forget(self, qids: Iterable[str]) -> None:
        """Drop these queries' scores from memory (the files keep them)."""
        drop = set(qids)
        for key in [k for k in self.memory if k[0] in drop]:
            del self.memory[key]

    def scores(self, requests: Mapping[str, Sequence[str]], query_text: Mapping[str, str],
               doc_text: Callable[[Sequence[str]], Mapping[str, str]]) -> dict[str, np.ndarray]:
        """Scores of every ``(qid, docid)`` in ``requests``; only the pairs not cached are scored, in chunks
        of :data:`PAIR_CHUNK` pairs (each written as one part file)."""
        hashes = {q: _text_hash(query_text[q]) for q in requests}
        missing: list[tuple[str, str]] = []
        for qid, docs in requests.items():
            known = self.memory.get((qid, hashes[qid]), {})
            for d in dict.fromkeys(docs):
                if d in known:
                    self.hits += 1
                else:
                    missing.append((qid, d))
        if missing:
            texts = doc_text(sorted({d for _, d in missing})) if self.teacher.uses_doc_text else None
            for a in range(0, len(missing), PAIR_CHUNK):
                chunk = missing[a:a + PAIR_CHUNK]
                values = self.teacher.score_ids([query_text[q] for q, _ in chunk], [d for _, d in chunk], texts)
                new = []
                for (q, d), v in zip(chunk, values, strict=True):
                    self.memory.setdefault((q, hashes[q]), {})[d] = float(v)
                    new.append(f"{q}\t{d}\t{hashes[q]}\t{float(v)!r}\n")
                self.scored += len(chunk)
                self._write(new)
        return {q: np.array([self.memory[(q, hashes[q])][d] for d in docs], dtype=np.float64)
                for q, docs in requests.items()}

    def _write(self, lines: list[str]) -> None:
        if self.folder is None or not lines:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}.tsv"
        tmp = self.folder / f".{name}.tmp"
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, self.folder / name)


def doc_texts(dataset) -> Callable[[Sequence[str]], dict[str, str]]:
    """``ids -> {id: full text}`` over ``dataset``'s corpus (one pass over the corpus per call)."""

    def lookup(ids: Sequence[str]) -> dict[str, str]:
        want = set(ids)
        out = {d.doc_id: d.full_text() for d in dataset.iter_docs() if d.doc_id in want}
        if len(out) < len(want):
            raise HardnegError(f"{len(want) - len(out)} candidate documents (e.g. "
                               f"{sorted(want - set(out))[0]!r}) are not in the corpus of {dataset.name}")
        return out

    return lookup
