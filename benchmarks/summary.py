"""Print every ratio of the benchmarks' latest results in one table (``make bench`` runs them first).

Reads ``benchmarks/results/``: ``encode.json`` (corpus encoding vs sentence-transformers),
``train.json`` (training step vs sentence-transformers), ``adore_step.json`` (ADORE's step split),
``search.json`` (hardneg search vs raw Faiss on the same index) and ``scale-bench.json`` (mining and
full-corpus dev evaluation queries/s on synthetic vectors). A missing file is reported, not skipped.

    python benchmarks/summary.py [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(folder: Path, name: str):
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--encode", default="encode.json")
    ap.add_argument("--train", default="train.json")
    args = ap.parse_args()
    lines: list[tuple[str, str]] = []
    enc = load(args.results, args.encode)
    lines.append(("encode vs sentence-transformers (docs/s ratio, > 1 faster)",
                  f"{enc['ratio']:.3f}" if enc else f"missing {args.encode}"))
    tr = load(args.results, args.train)
    if tr:
        split = tr["hardneg"].get("split_seconds_per_step", {})
        lines.append(("train step vs sentence-transformers (queries/s ratio)", f"{tr['ratio']:.3f}"))
        lines.append(("  hardneg step split (s)", ", ".join(f"{k} {v:.2f}" for k, v in split.items())))
    else:
        lines.append(("train step vs sentence-transformers", f"missing {args.train}"))
    ad = load(args.results, "adore_step.json")
    for row in (ad or {}).get("rows", []):
        share = 100 * row["search_reconstruct_share"]
        lines.append((f"ADORE step, {row['n_docs']:,} docs, {row['index']}",
                      f"{row['step_seconds']:.2f} s; search + reconstruction {share:.1f}%"
                      f" (query encode {row['t_query_encode']:.2f}, search {row['t_search']:.3f}, "
                      f"reconstruct {row['t_reconstruct']:.3f}, backward {row['t_backward']:.2f}, "
                      f"optimiser {row['t_optimizer']:.2f})"))
    if ad is None:
        lines.append(("ADORE step split", "missing adore_step.json"))
    se = load(args.results, "search.json")
    for kind, r in (se or {}).get("results", {}).items():
        lines.append((f"search vs raw Faiss, {kind} (time ratio, < 1 faster)",
                      f"{r['ratio_hardneg_over_faiss']:.2f} (identical results: {r['identical_results']})"))
    if se is None:
        lines.append(("search vs raw Faiss", "missing search.json"))
    sc = load(args.results, "scale-bench.json")
    for row in sc or []:
        if row.get("extrapolated") or row["stage"] not in ("mine", "dev_eval"):
            continue
        lines.append((f"{row['stage']} (exact), {row['n_docs']:,} x {768} synthetic docs",
                      f"{1000 / row['per_query_ms']:.1f} queries/s, peak RSS {row['peak_rss_mib']:.0f} MiB"))
    if sc is None:
        lines.append(("mining queries/s", "missing scale-bench.json"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
