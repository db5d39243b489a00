"""nDCG@10 of runs on all test queries, and on the seen / unseen-document strata.

A test query is "seen" when one of its relevant documents is also a relevant
document of some training query: in-domain training can win there by steering
towards documents it has already seen. The "unseen-document" stratum measures
generalisation.

    python benchmarks/seen_unseen.py --data ../shared/data/scifact name=run.trec [name=run.trec ...]
"""

from __future__ import annotations

import argparse

import numpy as np

from hardneg.data import load_dataset
from hardneg.evaluate.metrics import evaluate_per_query
from hardneg.retrieval.runs import read_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="BEIR folder with train and test qrels")
    parser.add_argument("--measure", default="nDCG@10")
    parser.add_argument("runs", nargs="+", help="name=path of a run on the test split")
    args = parser.parse_args()
    test = load_dataset(f"{args.data}:test").qrels()
    seen_docs = {d for q in load_dataset(f"{args.data}:train").qrels().values() for d, g in q.items() if g >= 1}
    seen = {q for q in test if any(g >= 1 and d in seen_docs for d, g in test[q].items())}
    unseen = [q for q in test if q not in seen]
    print(f"{len(test)} test queries: {len(seen)} with a relevant document seen in training, {len(unseen)} unseen")
    print(f"{'system':24s} {'all':>8s} {'seen':>8s} {'unseen':>8s}   ({args.measure})")
    for item in args.runs:
        name, _, path = item.rpartition("=")
        per = evaluate_per_query(read_run(path), test, [args.measure])[args.measure]
        parts = [np.mean([per[q] for q in qs]) for qs in (list(test), sorted(seen), unseen)]
        print(f"{name or path:24s} " + " ".join(f"{v:8.4f}" for v in parts))


if __name__ == "__main__":
    main()
