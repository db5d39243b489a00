"""ADORE on indexes built outside hardneg: SciFact encoded with sentence-transformers, indexed with plain Faiss.

Stages (each timed, wall-clock):

1. encode the corpus with sentence-transformers (``encode_document``, MiniLM by default);
2. build three indexes with plain Faiss's ``index_factory`` (Flat, HNSW32, IVF-PQ) and write each in Pyserini's
   dense-index layout (``index`` + ``docid``);
3. train hardneg ADORE's query encoder against each (``hardneg train adore --index FOLDER``): dev is carved out of
   train and evaluated every ``--dev-every`` steps in that index, and the best dev step is kept (the
   dev-selected budget);
4. evaluate test once per index, for the start model (zero-shot) and the trained query encoder: nDCG@10 over all
   test queries and over the unseen-document stratum (test queries none of whose relevant documents is a
   training positive).

Writes ``OUT/adore_external.json`` and ``OUT/adore_external.md`` (one table, with the wall-clock per stage).

    python benchmarks/adore_external.py --data ../shared/data/scifact --out runs/adore-external
    # a smoke run on a slice: --limit-docs 300 --max-steps 4 --dev-every 2
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from hardneg.data.load import load_dataset
from hardneg.data.slice import slice_beir
from hardneg.evaluate.metrics import evaluate_per_query
from hardneg.experiment.outside_index import encode_corpus_st, write_faiss_index
from hardneg.index.external import open_external
from hardneg.model.encoder import DualEncoder
from hardneg.model.registry import resolve_model
from hardneg.retrieval.dense import search
from hardneg.train.config import TrainConfig
from hardneg.train.trainer import Trainer

INDEXES = ("flat", "hnsw", "ivfpq")


def factory(kind: str, n: int, d: int) -> str:
    """The ``faiss.index_factory`` string of ``kind`` for ``n`` vectors of dimension ``d``."""
    if kind == "ivfpq":  # sqrt(n) lists; 256 centroids per sub-quantiser want a few thousand training points
        return f"IVF{max(1, int(math.sqrt(n)))},PQ{d // 8}x{8 if n >= 2048 else 4}"
    return {"flat": "Flat", "hnsw": "HNSW32"}[kind]


def unseen_queries(data: Path) -> tuple[dict, list[str]]:
    """The test qrels and the test queries none of whose relevant documents is a training positive."""
    test = load_dataset(f"{data}:test").qrels()
    seen_docs = {d for q in load_dataset(f"{data}:train").qrels().values() for d, g in q.items() if g >= 1}
    return test, [q for q in test if not any(g >= 1 and d in seen_docs for d, g in test[q].items())]


def test_ndcg(index_dir: Path, model: str, data: Path) -> dict[str, float]:
    """nDCG@10 of ``model``'s query encoder searching ``index_dir`` on the test queries: all and unseen."""
    qrels, unseen = unseen_queries(data)
    encoder = DualEncoder.from_pretrained(model, shared=True)
    run = search(open_external(index_dir), encoder, load_dataset(f"{data}:test").queries(), k=100)
    per = evaluate_per_query(run, qrels, ["nDCG@10"])["nDCG@10"]
    return {"nDCG@10": float(np.mean([per[q] for q in qrels])),
            "nDCG@10_unseen": float(np.mean([per[q] for q in unseen])) if unseen else float("nan"),
            "queries": len(qrels), "unseen_queries": len(unseen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="SciFact (BEIR folder with train and test qrels)")
    parser.add_argument("--out", type=Path, default=Path("runs/adore-external"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--indexes", nargs="+", default=list(INDEXES), choices=INDEXES)
    parser.add_argument("--max-steps", type=int, default=200, help="the budget's cap; dev picks the best step")
    parser.add_argument("--dev-every", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--max-length", type=int, default=256, help="document max length when encoding")
    parser.add_argument("--limit-docs", type=int, default=0, help="a slice of the corpus (smoke runs)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data
    if args.limit_docs:  # a smoke run: a quarter of the documents relevant ones of train and of test
        data = slice_beir(args.data, args.out / "data", n_docs=args.limit_docs, n_relevant=args.limit_docs // 4,
                          splits=("train", "test"))
    stages: dict[str, float] = {}

    tic = time.perf_counter()
    docs = list(load_dataset(f"{data}:test").iter_docs())
    x = encode_corpus_st(str(resolve_model(args.model)), docs, args.out / "embeddings.npy",
                         max_seq_length=args.max_length)
    stages["encode_corpus"] = time.perf_counter() - tic
    results = {}
    for kind in args.indexes:
        folder = args.out / "indexes" / kind
        tic = time.perf_counter()
        if not (folder / "index").is_file():
            write_faiss_index(x, [d.doc_id for d in docs], folder, factory=factory(kind, *x.shape))
        stages[f"index_{kind}"] = time.perf_counter() - tic
        tic = time.perf_counter()
        out = args.out / "train" / kind
        cfg = TrainConfig(method="adore", data=str(data), model=args.model, out=str(out), index=str(folder),
                          max_steps=args.max_steps, dev_every=args.dev_every, save_every=args.dev_every,
                          batch_size=args.batch_size, lr=args.lr, quiet=True, cache_dir=str(args.out / "cache"))
        if not (out / "summary.json").is_file():
            Trainer(cfg).train(resume=(out / "checkpoints").is_dir())
        summary = json.loads((out / "summary.json").read_text())
        stages[f"train_{kind}"] = time.perf_counter() - tic
        tic = time.perf_counter()
        results[kind] = {"zero_shot": test_ndcg(folder, args.model, data),
                         "adore": test_ndcg(folder, str(out / "model"), data),
                         "best_step": summary["best_step"], "best_dev": summary["best_dev"],
                         "dev_metric": summary["dev_metric"],
                         "index_check": json.loads((out / "model" / "adore.json").read_text())["index_check"]}
        stages[f"test_{kind}"] = time.perf_counter() - tic
    report = {"data": str(args.data), "limit_docs": args.limit_docs, "documents": len(docs), "model": args.model,
              "settings": {k: getattr(args, k) for k in ("max_steps", "dev_every", "batch_size", "lr", "max_length")},
              "machine": platform.platform(), "results": results, "seconds": stages}
    (args.out / "adore_external.json").write_text(json.dumps(report, indent=2))
    lines = [f"ADORE on external indexes ({args.model}, {len(docs)} documents; test nDCG@10)", "",
             "| index | zero-shot all | zero-shot unseen | ADORE all | ADORE unseen | best step (dev) | train s |",
             "|---|---|---|---|---|---|---|"]
    for kind, r in results.items():
        z, a = r["zero_shot"], r["adore"]
        lines.append(f"| {kind} | {z['nDCG@10']:.4f} | {z['nDCG@10_unseen']:.4f} | {a['nDCG@10']:.4f} | "
                     f"{a['nDCG@10_unseen']:.4f} | {r['best_step']} ({r['best_dev']:.4f}) | "
                     f"{stages[f'train_{kind}']:.0f} |")
    lines += ["", "Wall-clock per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()), ""]
    (args.out / "adore_external.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
