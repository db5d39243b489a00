"""BM25 on the real SciFact test split (BEIR): the acceptance check for hardneg.retrieval.bm25.

Published reference points: BEIR (Elasticsearch) nDCG@10 0.665, Pyserini flat
0.672, bm25s with an English stemmer ~0.68. Nothing is tuned on this split.
Takes a few seconds (tokenize + index 5,183 docs, 300 queries); its speed is measured by
``benchmarks/bm25.py``, not here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hardneg.data.records import Doc, Qrels, Query
from hardneg.evaluate import evaluate
from hardneg.retrieval.bm25 import BM25

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("HARDNEG_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
SCIFACT = DATA_DIR / "scifact"

pytestmark = pytest.mark.skipif(
    not (SCIFACT / "corpus.jsonl").is_file(),
    reason=f"SciFact not found under {DATA_DIR} (set HARDNEG_DATA_DIR)",
)


def _read_directly() -> tuple[list[Doc], dict[str, Query], Qrels]:
    docs = []
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            docs.append(Doc(str(obj["_id"]), obj["text"], obj.get("title", "")))
    queries = {}
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            queries[str(obj["_id"])] = Query(str(obj["_id"]), obj["text"])
    qrels: Qrels = {}
    with open(SCIFACT / "qrels" / "test.tsv", encoding="utf-8") as fh:
        next(fh)  # header "query-id corpus-id score" (CRLF line endings)
        for line in fh:
            if line.strip():
                qid, docid, grade = line.split()
                qrels.setdefault(qid, {})[docid] = int(grade)
    return docs, {qid: queries[qid] for qid in qrels}, qrels


def _load() -> tuple[list[Doc], dict[str, Query], Qrels]:
    try:
        from hardneg.data.load import load_dataset
    except ImportError:
        return _read_directly()
    ds = load_dataset(f"{SCIFACT}:test")
    return ds.docs(), ds.queries(), ds.qrels()


def test_bm25_scifact_test_ndcg(tmp_path: Path) -> None:
    docs, queries, qrels = _load()
    assert len(docs) == 5183
    assert len(qrels) == 300 and len(queries) == 300

    index = BM25.build(docs)  # project defaults, nothing tuned on test
    run = index.search(queries, k=1000, show_progress=False)

    scores = evaluate(run, qrels, ["nDCG@10", "RR@10", "R@100", "R@1000"])
    print(f"BM25 SciFact test: {scores}")
    assert scores["nDCG@10"] >= 0.65
    assert scores["R@100"] >= 0.85
    # what a second `hardneg bm25` reads back from the cache ranks exactly the same
    index.save(tmp_path / "bm25")
    assert BM25.load(tmp_path / "bm25").search(queries, k=1000, show_progress=False) == run
