"""Read every collection in the shared data folder and check its published counts.

The data folder is ``$HARDNEG_DATA_DIR`` or ``<repo root>/../shared/data``;
the tests skip when it is absent. Counts are those of its README.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from hardneg.data import (
    load_dataset,
    read_msmarco_collection,
    read_msmarco_queries,
    read_qrels,
    read_trec_topics,
)
from hardneg.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = Path(os.environ.get("HARDNEG_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set HARDNEG_DATA_DIR)")
    return path


def n_lines(qrels: dict[str, dict[str, int]]) -> int:
    return sum(len(v) for v in qrels.values())


@pytest.mark.parametrize(
    ("split", "lines", "queries"),
    [("train", 919, 809), ("test", 339, 300)],
)
def test_scifact(data_dir: Path, split: str, lines: int, queries: int) -> None:
    ds = load_dataset(f"{data_dir / 'scifact'}:{split}")
    assert ds.name == "scifact" and ds.split == split
    assert ds.doc_count() == 5183
    assert len(ds.all_queries()) == 1109
    assert n_lines(ds.qrels()) == lines
    assert len(ds.qrels()) == queries
    assert len(ds.queries()) == queries
    assert ds.warnings == []


def test_scifact_without_split_and_fingerprint(data_dir: Path) -> None:
    ds = load_dataset(str(data_dir / "scifact"))
    assert ds.qrels() == {} and len(ds.queries()) == 1109
    fp = ds.fingerprint()
    assert fp == load_dataset(f"{data_dir / 'scifact'}:test").fingerprint()
    assert fp != load_dataset(str(data_dir / "nfcorpus")).fingerprint()
    with pytest.raises(InputError, match="available splits: test, train"):
        load_dataset(f"{data_dir / 'scifact'}:dev")


@pytest.mark.parametrize(
    ("split", "lines", "queries", "grades"),
    [
        ("train", 110_575, 2590, {1}),
        ("dev", 11_385, 324, {1, 2}),
        ("test", 12_334, 323, {1, 2}),
    ],
)
def test_nfcorpus(data_dir: Path, split: str, lines: int, queries: int, grades: set[int]) -> None:
    ds = load_dataset(f"{data_dir / 'nfcorpus'}:{split}")
    assert ds.doc_count() == 3633
    assert len(ds.all_queries()) == 3237
    qrels = ds.qrels()
    assert n_lines(qrels) == lines and len(qrels) == queries
    assert len(ds.queries()) == queries
    assert {g for docs in qrels.values() for g in docs.values()} == grades
    assert ds.warnings == []


def test_dl19_subset(data_dir: Path) -> None:
    root = data_dir / "msmarco" / "dl19-subset"
    ds = load_dataset(f"{root}:test")  # qrels/test.tsv has no header line
    assert ds.doc_count() == 5000
    assert len(ds.all_queries()) == 50
    assert len(ds.qrels()) == 43 and n_lines(ds.qrels()) == 4102
    assert len(ds.queries()) == 43
    assert ds.warnings == []


def test_dl19_subset_graded_override(data_dir: Path) -> None:
    root = data_dir / "msmarco" / "dl19-subset"
    ds = load_dataset(f"{root}:test", qrels=root / "2019qrels-pass.txt")
    qrels = ds.qrels()
    # the judged-0 passages of the official qrels are not in the 5,000-passage corpus
    assert len(ds.warnings) == 1
    assert "5158 qrels lines" in ds.warnings[0] and "absent from the corpus" in ds.warnings[0]
    assert len(qrels) == 43 and n_lines(qrels) == 9260 - 5158
    assert Counter(g for docs in qrels.values() for g in docs.values()) == {
        2: 1804,
        1: 1601,
        3: 697,
    }
    assert len(ds.queries()) == 43


def test_dl19_judged_collection(data_dir: Path) -> None:
    root = data_dir / "msmarco" / "dl19-judged-collection"
    ds = load_dataset(str(root))
    assert ds.corpus_path == root / "collection.tsv"
    assert ds.doc_count() == 4103
    assert len(ds.all_queries()) == 43
    assert sum(1 for _ in read_qrels(root / "2019qrels-pass.txt")) == 9260
    qrels = ds.qrels()
    assert len(qrels) == 43
    assert {g for docs in qrels.values() for g in docs.values()} == {1, 2, 3}
    assert len(ds.warnings) == 1 and "5158 qrels lines" in ds.warnings[0]
    assert sum(1 for _ in read_msmarco_collection(root / "collection.tsv")) == 4103


def test_passage_eval_dev_small(data_dir: Path) -> None:
    root = data_dir / "msmarco" / "passage-eval"
    ds = load_dataset(f"{root}:dev.small")
    assert len(ds.all_queries()) == 6980
    assert n_lines(ds.qrels()) == 7437
    assert len(ds.queries()) == 6980
    assert ds.docs() == [] and ds.doc_count() == 0
    with pytest.raises(InputError, match="no corpus"):
        ds.iter_docs()
    assert ds.warnings == []


def test_passage_eval_trec_files(data_dir: Path) -> None:
    root = data_dir / "msmarco" / "passage-eval"
    assert len(list(read_trec_topics(root / "topics.dl19-passage.txt"))) == 43
    assert len(list(read_trec_topics(root / "topics.dl20.txt"))) == 200  # CRLF
    assert len(list(read_msmarco_queries(root / "queries.dev.small.tsv"))) == 6980
    dl20 = load_dataset(f"{root}:dl20")  # topics.dl20.txt + qrels.dl20-passage.txt
    assert len(dl20.all_queries()) == 200
    assert len(dl20.qrels()) == 54 and n_lines(dl20.qrels()) == 11_386
    assert len(dl20.queries()) == 54
    dl19 = load_dataset(f"{root}:dl19-passage", qrels=root / "2019qrels-pass.txt")
    assert len(dl19.queries()) == 43 and n_lines(dl19.qrels()) == 9260
    with pytest.raises(InputError, match="several queries files"):
        load_dataset(str(root))


@pytest.mark.parametrize(
    ("split", "lines", "queries"),
    [("train", 14_166, 5500), ("dev", 1238, 500), ("test", 1706, 648)],
)
def test_fiqa_qrels_only(data_dir: Path, split: str, lines: int, queries: int) -> None:
    ds = load_dataset(f"{data_dir / 'fiqa-qrels'}:{split}")
    assert n_lines(ds.qrels()) == lines and len(ds.qrels()) == queries
    assert ds.corpus_path is None and ds.docs() == [] and ds.queries() == {}
    with pytest.raises(InputError, match="no corpus"):
        ds.iter_docs()


#: (folder, docs, queries, judged queries, qrels pairs, BM25 nDCG@10 measured once with project defaults)
CLASSIC = [
    ("med", 1033, 30, 30, 696, 0.6710),
    ("cisi", 1460, 112, 76, 3114, 0.3725),
    ("cranfield", 1400, 225, 225, 1837, 0.5001),
    ("cacm", 3204, 64, 52, 796, 0.4976),
    ("vaswani-npl", 11_429, 93, 93, 2083, 0.4449),
]


@pytest.mark.parametrize(("name", "docs", "queries", "judged", "pairs", "ndcg"), CLASSIC)
def test_classic_collections_load_and_score(data_dir: Path, name: str, docs: int, queries: int, judged: int,
                                            pairs: int, ndcg: float) -> None:
    """Every classic collection loads with its README counts, and BM25 scores as measured (±0.005)."""
    from hardneg.evaluate import evaluate
    from hardneg.retrieval.bm25 import BM25

    ds = load_dataset(str(data_dir / "classic" / name))
    assert ds.doc_count() == docs
    assert len(ds.all_queries()) == queries and len(ds.queries()) == judged
    assert sum(len(v) for v in ds.qrels().values()) == pairs
    assert not ds.warnings  # every qrels query and document id matched (CACM padding, Cranfield numbering)
    run = BM25.build(ds.docs()).search(ds.queries(), k=100, show_progress=False)
    assert evaluate(run, ds.qrels(), ["nDCG@10"])["nDCG@10"] == pytest.approx(ndcg, abs=0.005)


def test_cranfield_cranqrel_mapping_equals_the_corrected_trec_file(data_dir: Path) -> None:
    from hardneg.data.formats.classic import read_cranfield_qrels

    root = data_dir / "classic" / "cranfield"
    mapped = {(q.query_id, q.doc_id, q.relevance) for q in read_cranfield_qrels(root / "cranqrel")}
    assert mapped == {(q.query_id, q.doc_id, q.relevance) for q in read_qrels(root / "QRelsCorrectedforTRECeval")}
    assert len(mapped) == 1837
