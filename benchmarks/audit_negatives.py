"""Audit what positive-aware filtering removes: a seeded sample of the mined negatives that
``--relative-margin M`` (NV-Retriever's TopK-PercPos) takes out, printed beside their query.

For each training query the model's top-``K`` non-positive documents are the plain hard negatives;
those scoring above ``(1 - M)`` times the query's lowest-scored positive are what the rule removes
(hardneg.negatives.rules, ``margin_against min``). A sample of them is printed with text excerpts,
to be judged by hand: how many look relevant (an unjudged positive) rather than a true negative?

    python benchmarks/audit_negatives.py --data ../shared/data/nfcorpus --n 30 [--out audit.md]
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--topk", type=int, default=200, help="plain hard negatives per query")
    parser.add_argument("--relative-margin", type=float, default=0.05)
    parser.add_argument("--margin-against", choices=("min", "max"), default="min",
                        help="the positive the margin is taken against: lowest- (default) or highest-scored")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--n", type=int, default=30, help="removed negatives to print")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from hardneg.artifacts import corpus_embeddings
    from hardneg.data.cache import default_cache_dir
    from hardneg.data.load import load_dataset
    from hardneg.index.faiss_index import set_threads
    from hardneg.model.encoder import DualEncoder
    from hardneg.retrieval.dense import encode_queries

    set_threads()
    ds = load_dataset(f"{args.data}:train")
    qrels, queries = ds.qrels(), ds.queries()
    model = DualEncoder.from_pretrained(args.model, doc_max_length=args.max_length)
    emb = corpus_embeddings(model, ds, default_cache_dir())
    ids = list(emb.ids)
    row = {d: i for i, d in enumerate(ids)}
    docs = np.asarray(emb.vectors, dtype=np.float32)
    qids, qv = encode_queries(model, {q: queries[q] for q in qrels if q in queries})
    texts = {d.doc_id: d.full_text() for d in ds.iter_docs()}
    removed, kept_total, plain_total = [], 0, 0
    for i, q in enumerate(qids):
        pos = [row[d] for d, g in qrels[q].items() if g >= 1 and d in row]
        if not pos:
            continue
        s = docs @ qv[i]
        ref = float(s[pos].min() if args.margin_against == "min" else s[pos].max())
        order = np.argsort(-s, kind="stable")
        pos_set = set(pos)
        plain = [r for r in order[: args.topk + len(pos)] if r not in pos_set][: args.topk]
        plain_total += len(plain)
        cut = ref - abs(ref) * args.relative_margin
        for rank, r in enumerate(plain, 1):
            if s[r] > cut:
                removed.append((q, ids[r], rank, float(s[r]), ref))
            else:
                kept_total += 1
    rng = np.random.default_rng(args.seed)
    pick = sorted(rng.choice(len(removed), size=min(args.n, len(removed)), replace=False).tolist())
    lines = [f"# Negatives removed by --relative-margin {args.relative_margin} --margin-against {args.margin_against} "
             f"({args.data}, {args.model})", "",
             f"{len(qids)} training queries; plain top-{args.topk} negatives: {plain_total}; removed by the rule: "
             f"{len(removed)} ({len(removed) / max(plain_total, 1):.1%}); a seeded sample of {len(pick)}:", ""]
    for n, j in enumerate(pick, 1):
        q, d, rank, score, ref = removed[j]
        excerpt = textwrap.shorten(texts[d], 300, placeholder=" …")
        lines += [f"{n}. **{queries[q].text}** (query {q}) — doc {d}, rank {rank}, score {score:.3f} vs the reference "
                  f"positive {ref:.3f}", f"   > {excerpt}", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
