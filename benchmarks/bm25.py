"""BM25 speed on a real corpus: build (tokenize + index) and search times, and the cached reload.

On SciFact's test split by default (5,183 documents, 300 queries, k = 1000): the build and the
search of every query, then the index saved and loaded again (what a second ``hardneg bm25``
does) and searched once more. Medians over ``--repeats``; absolute times depend on the machine and
its load (the test suite checks the ranking, ``tests/integration/test_bm25_scifact.py``, not the speed).

    python benchmarks/bm25.py [--data ../shared/data/scifact:test] [--k 1000] [--repeats 3]

Writes benchmarks/results/bm25.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from hardneg.data.load import load_dataset
from hardneg.retrieval.bm25 import BM25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact")
                        + ":test")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bm25.json")
    args = parser.parse_args()

    dataset = load_dataset(args.data)
    docs, queries = dataset.docs(), dataset.queries()
    times: dict[str, list[float]] = {"build": [], "search": [], "load": [], "search_loaded": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        index = BM25.build(docs)
        times["build"].append(time.perf_counter() - t)
        t = time.perf_counter()
        run = index.search(queries, k=args.k, show_progress=False)
        times["search"].append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as tmp:
            index.save(Path(tmp) / "bm25")
            t = time.perf_counter()
            loaded = BM25.load(Path(tmp) / "bm25")
            times["load"].append(time.perf_counter() - t)
            t = time.perf_counter()
            again = loaded.search(queries, k=args.k, show_progress=False)
            times["search_loaded"].append(time.perf_counter() - t)
        assert again == run, "the reloaded index ranks differently"
    med = {name: round(statistics.median(v), 3) for name, v in times.items()}
    record = {"benchmark": "bm25", "data": args.data, "documents": len(docs), "queries": len(queries),
              "k": args.k, "repeats": args.repeats, "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "seconds": {name: [round(x, 3) for x in v] for name, v in times.items()}, "median_seconds": med,
              "note": "medians; the machine may be shared"}
    print(f"build {med['build']}s, search {med['search']}s ({len(queries)} queries, k={args.k}), "
          f"load {med['load']}s, search after load {med['search_loaded']}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
