from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardneg.data.records import Doc, Query
from hardneg.errors import HardnegError
from hardneg.retrieval.bm25 import BM25

DOCS = [
    Doc("d-cat", "The cat sat on the mat and purred."),
    Doc("d-dog", "Dogs chase cats around the park.", title="Running dogs"),
    Doc("d-qcd", "Quantum chromodynamics describes gluons and quarks."),
    Doc("d-stock", "Stock markets fell sharply today."),
    Doc("d-cat2", "A cat and another cat: cats everywhere."),
]
QUERIES = {
    "q-gluon": Query("q-gluon", "gluons"),
    "q-dog": Query("q-dog", "dog running"),
    "q-cat": Query("q-cat", "cat"),
    "q-oov": Query("q-oov", "zebra xylophone"),
    "q-stop": Query("q-stop", "the and a"),
}


@pytest.fixture(scope="module")
def index() -> BM25:
    return BM25.build(DOCS, corpus_fingerprint="abc123")


def test_exact_term_ranks_right_doc_first(index: BM25) -> None:
    run = index.search(QUERIES, k=10, show_progress=False)
    assert list(run) == list(QUERIES)
    # only documents sharing a term with the query are returned
    assert [d for d, _ in run["q-gluon"]] == ["d-qcd"]
    # stemming: "dog"/"dogs", "running" (title) match d-dog
    assert run["q-dog"][0][0] == "d-dog"
    cat = [d for d, _ in run["q-cat"]]
    assert cat[0] == "d-cat2"  # tf 3 beats tf 1
    assert set(cat) == {"d-cat", "d-cat2", "d-dog"}  # "cats" stems to "cat"
    scores = [s for _, s in run["q-cat"]]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    assert run["q-oov"] == []  # out-of-vocabulary only: no results, no error
    assert run["q-stop"] == []  # stopwords only


def test_k_larger_than_corpus_and_small_k(index: BM25) -> None:
    everything = index.search(QUERIES, k=1000, show_progress=False)
    assert len(everything["q-cat"]) == 3
    top1 = index.search(list(QUERIES.values()), k=1, show_progress=False)
    assert {q: r[:1] for q, r in everything.items()} == top1
    assert index.search(QUERIES, k=0, show_progress=False)["q-cat"] == []
    with pytest.raises(HardnegError):
        index.search(QUERIES, k=-1)


def test_ties_broken_by_corpus_order() -> None:
    docs = [Doc(f"dup{i}", "identical text about retrieval") for i in range(5)]
    bm = BM25.build(docs)
    run = bm.search([Query("q", "retrieval")], k=3, show_progress=False)
    assert [d for d, _ in run["q"]] == ["dup0", "dup1", "dup2"]
    assert len({s for _, s in run["q"]}) == 1


def test_save_load_round_trip(index: BM25, tmp_path: Path) -> None:
    target = tmp_path / "bm25"
    index.save(target)
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["params"] == {
        "k1": 0.9,
        "b": 0.4,
        "method": "lucene",
        "stemmer": "english",
        "stopwords": "en",
    }
    assert manifest["num_docs"] == len(DOCS)
    assert manifest["corpus_fingerprint"] == "abc123"
    assert manifest["bm25s_version"]
    loaded = BM25.load(target)
    assert loaded.doc_ids == [d.doc_id for d in DOCS]
    assert loaded.params == index.params
    assert loaded.corpus_fingerprint == "abc123"
    before = index.search(QUERIES, k=10, show_progress=False)
    assert loaded.search(QUERIES, k=10, show_progress=False) == before
    assert BM25.load(target, mmap=True).search(QUERIES, k=10, show_progress=False) == before
    # saving again replaces the index atomically and leaves no temp dirs
    other = BM25.build(DOCS[:2], k1=1.2, b=0.75, stemmer=None, stopwords=None)
    other.save(target, corpus_fingerprint="zzz")
    reloaded = BM25.load(target)
    assert reloaded.params["k1"] == 1.2 and reloaded.params["stemmer"] is None
    assert len(reloaded) == 2 and reloaded.corpus_fingerprint == "zzz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25"]


def test_load_missing_or_incomplete(index: BM25, tmp_path: Path) -> None:
    with pytest.raises(HardnegError, match="not found"):
        BM25.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HardnegError, match="manifest.json is missing"):
        BM25.load(tmp_path / "empty")
    target = tmp_path / "bm25"
    index.save(target)
    (target / "data.csc.index.npy").unlink()
    with pytest.raises(HardnegError, match="incomplete.*data.csc.index.npy"):
        BM25.load(target)
    index.save(target)
    (target / "manifest.json").write_text("{not json")
    with pytest.raises(HardnegError, match="rebuild"):
        BM25.load(target)
    index.save(target)
    (target / "doc_ids.json").write_text('["only-one"]')
    with pytest.raises(HardnegError, match="disagree"):
        BM25.load(target)


def test_bad_input() -> None:
    with pytest.raises(HardnegError, match="twice"):
        BM25.build([Doc("x", "a b"), Doc("x", "c d")])
    with pytest.raises(HardnegError, match="empty corpus"):
        BM25.build([])
    with pytest.raises(HardnegError, match="stemmer"):
        BM25(stemmer="klingon")
    with pytest.raises(HardnegError, match="stopword"):
        BM25(stopwords="klingon")
    with pytest.raises(HardnegError, match="method"):
        BM25(method="bm99")
    with pytest.raises(HardnegError, match="b must"):
        BM25(b=2)
    with pytest.raises(HardnegError, match="build\\(\\) or load\\(\\)"):
        BM25().search([Query("q", "x")])
    bm = BM25.build(DOCS)
    with pytest.raises(HardnegError, match="twice"):
        bm.search([Query("q", "cat"), Query("q", "dog")])
    assert bm.search([], show_progress=False) == {}
