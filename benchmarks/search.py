"""Search overhead: hardneg's ``FaissIndex.search`` vs raw Faiss ``index.search`` on the same index.

Random unit vectors (default 100,000 x 768, 1,000 queries, k = 200), for each index
kind (flat, pq96, IVF-PQ ivf<sqrt n>pq96 at nprobe 32): both sides search the very
same Faiss object, interleaved (hardneg first on even repeats, raw first on odd),
and the medians are compared. The ratio (hardneg / raw; 1.0 = no overhead) is what
matters: absolute times depend on the machine and its load.

    python benchmarks/search.py [--n 100000] [--queries 1000] [--k 200] [--repeats 3]

Writes benchmarks/results/search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from hardneg.index.faiss_index import FaissIndex, set_threads


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 16_384):
        block = rng.standard_normal((min(16_384, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=2_048,
                        help="PQ/IVF training sample (rows; small: search speed, not recall, is measured)")
    parser.add_argument("--kinds", default="flat,pq96,ivfpq96")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "search.json")
    args = parser.parse_args()

    threads = set_threads(args.threads)
    rng = np.random.default_rng(0)
    docs = unit(rng, args.n, args.dim)
    queries = unit(rng, args.queries, args.dim)
    ids = [str(i) for i in range(args.n)]
    results = {}
    for kind in args.kinds.split(","):
        hardneg_kind = f"ivf{max(1, int(args.n**0.5))}pq96" if kind == "ivfpq96" else kind
        start = time.perf_counter()
        index = FaissIndex.build(docs, ids, hardneg_kind, train_size=args.train_size,
                                 nprobe=32 if kind == "ivfpq96" else None)
        build = time.perf_counter() - start
        raw = index.index  # the very same Faiss object
        times: dict[str, list[float]] = {"hardneg": [], "faiss": []}
        outputs = {}

        def run_hardneg(index=index):
            return index.search(queries, args.k)

        def run_faiss(raw=raw):
            return raw.search(queries, args.k)

        for r in range(args.repeats):
            order = [("hardneg", run_hardneg), ("faiss", run_faiss)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                t = time.perf_counter()
                outputs[name] = fn()
                times[name].append(time.perf_counter() - t)
        med = {name: statistics.median(v) for name, v in times.items()}
        same = bool(np.array_equal(outputs["hardneg"][1], outputs["faiss"][1])
                    and np.array_equal(outputs["hardneg"][0], outputs["faiss"][0]))
        results[kind] = {"index_kind": hardneg_kind, "factory": index.manifest["factory"],
                         "build_seconds": round(build, 2), "search_params": index.search_params(),
                         "hardneg_seconds": [round(x, 4) for x in times["hardneg"]],
                         "faiss_seconds": [round(x, 4) for x in times["faiss"]],
                         "hardneg_median": round(med["hardneg"], 4), "faiss_median": round(med["faiss"], 4),
                         "ratio_hardneg_over_faiss": round(med["hardneg"] / med["faiss"], 3),
                         "identical_results": same}
        print(f"{kind:8s} ({index.manifest['factory']}): hardneg {med['hardneg']:.3f}s  faiss {med['faiss']:.3f}s  "
              f"ratio {med['hardneg'] / med['faiss']:.3f}  identical={same}  (build {build:.1f}s)", flush=True)
        del index, raw
    record = {"benchmark": "search", "n": args.n, "dim": args.dim, "queries": args.queries, "k": args.k,
              "repeats": args.repeats, "train_size": args.train_size, "threads": threads,
              "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "note": "medians of interleaved repeats; the ratio matters (the machine may be shared)",
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
