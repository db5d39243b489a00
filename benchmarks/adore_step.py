"""ADORE step time and its split against index size and kind (synthetic document vectors).

One ADORE step = the packaged MiniLM query tower encodes a batch of real SciFact
queries (with gradients), the fixed index is searched for each query's top-K,
the retrieved and relevant documents' vectors are reconstructed from the index,
the ΔMRR-weighted pairwise loss is computed, backward, and the optimiser step
(clipping, AdamW, schedule). The document side is synthetic: random unit
vectors of the encoder's dimension (``--sizes``, default 100k and 1M), each
query given one random relevant row; the index kinds are hardneg's
(``--kinds``, default flat, pq48 and ivfpq; PQ / IVF codebooks trained on a
sample of ``--train-size`` vectors, default 40k: enough for IVF1000 at 1M and
short to train). The step runs the method's own ``batch_loss``
(:class:`hardneg.train.methods.adore.Adore`) on a bare method object (no dataset or
Trainer needed), so the split is the one ``train_log.jsonl``
records (``t_query_encode``, ``t_search``, ``t_reconstruct``, ``t_loss``,
``t_backward``, ``t_optimizer``).

    python benchmarks/adore_step.py [--data ../shared/data/scifact --sizes 100000 1000000 --steps 3]

Prints one row per (size, kind) with the step time, its split and the share of
search + reconstruction, and writes them to benchmarks/results/adore_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from hardneg.index.faiss_index import FaissIndex, factory_string, set_threads
from hardneg.train.config import TrainConfig
from hardneg.train.methods.adore import Adore
from hardneg.train.methods.base import StepBatch
from hardneg.train.order import Example
from hardneg.train.steps import Laps, make_optimizer, make_scheduler
from hardneg.train.trainer import Trainer

SPLIT = ("t_query_encode", "t_search", "t_reconstruct", "t_loss", "t_backward", "t_optimizer")


def load_queries(data: str, n: int) -> list[str]:
    path = Path(data) / "queries.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; pass --data <a BEIR folder with queries.jsonl>")
    with path.open(encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh if line.strip()]
    return texts[:n]


def random_unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 262_144):  # in blocks: no float64 temporary of the whole matrix
        block = rng.standard_normal((min(262_144, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    return out


def bare_adore(model, cfg: TrainConfig, index: FaissIndex, query_tokens: dict, relevant: dict) -> Adore:
    """An :class:`Adore` without its constructor (which needs a dataset): the attributes batch_loss uses."""
    method = Adore.__new__(Adore)
    method.ctx = SimpleNamespace(model=model, query_tokens=query_tokens, scale=20.0,
                                 train_mode=lambda: None)
    method.config = cfg
    method.metric_name, method.metric_k = "mrr", 200
    method.k = cfg.adore_topk
    method.index = index
    method.relevant = relevant
    method.n_relevant = {q: len(r) for q, r in relevant.items()}
    method.idcg = {}
    method.rules = SimpleNamespace(active=False)
    return method


def step_state(model, cfg: TrainConfig) -> SimpleNamespace:
    """What :meth:`Trainer.optimizer_step` reads: one optimiser for every timed configuration (its state
    is allocated once, in the first warm-up step)."""
    optimizer = make_optimizer(model, cfg)
    return SimpleNamespace(optimizer=optimizer, scheduler=make_scheduler(optimizer, cfg), model=model, config=cfg,
                           scaler=torch.amp.GradScaler("cpu", enabled=False))


def time_steps(method: Adore, trainer: SimpleNamespace, qids: list[str], batch: int, warmup: int,
               steps: int) -> dict[str, float]:
    model = trainer.model
    model.query_model.train()
    totals = dict.fromkeys(SPLIT, 0.0)
    wall = 0.0
    for s in range(warmup + steps):
        chosen = [qids[(s * batch + i) % len(qids)] for i in range(batch)]
        examples = [Example(q, "") for q in chosen]
        tic = time.perf_counter()
        loss, parts = method.batch_loss(StepBatch(examples, [[] for _ in examples], []))
        laps = Laps(model.device)
        loss.backward()
        laps.lap("t_backward")
        Trainer.optimizer_step(trainer)
        laps.lap("t_optimizer")
        seconds = time.perf_counter() - tic
        if s >= warmup:
            wall += seconds
            for key in SPLIT:
                totals[key] += {**parts, **laps.seconds}[key]
    return {"step_seconds": wall / steps, **{k: v / steps for k, v in totals.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("HARDNEG_DATA_DIR", "../shared/data") + "/scifact")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "pq48", "ivfpq"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--topk", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=40_000,
                        help="vectors the PQ / IVF codebooks train on (a seeded sample)")
    parser.add_argument("--out", default="benchmarks/results/adore_step.json")
    args = parser.parse_args()
    threads = set_threads(None)
    torch.manual_seed(0)
    from hardneg.model.encoder import DualEncoder

    base = DualEncoder.from_pretrained("minilm")
    model = base.with_separate_towers()
    model.doc_model.requires_grad_(False)
    model.doc_model.eval()
    cfg = TrainConfig(method="adore", data="unused", model="minilm", out="unused", batch_size=args.batch_size,
                      adore_topk=args.topk, metric=f"mrr@{args.topk}", max_steps=1000, warmup_ratio=0.0, lr=2e-5)
    trainer = step_state(model, cfg)
    texts = load_queries(args.data, args.batch_size * (args.warmup + args.steps))
    ids = model.tokenize(texts, "query")["input_ids"]
    qids = [str(i) for i in range(len(texts))]
    query_tokens = dict(zip(qids, ids, strict=True))
    rows: list[dict] = []
    tic = time.perf_counter()
    corpus = random_unit_vectors(max(args.sizes), model.dim, seed=0)  # a smaller size: its first rows
    print(f"{len(corpus):,} random {model.dim}-d vectors: {time.perf_counter() - tic:.1f}s", flush=True)
    for n in sorted(args.sizes):
        vectors = corpus[:n]
        rng = np.random.default_rng(1)
        relevant = {q: {int(rng.integers(n)): 1} for q in qids}  # one relevant row per query
        print(f"{n:,} documents", flush=True)
        for kind in args.kinds:
            try:
                spec = factory_string(kind, model.dim, n)
            except Exception as exc:  # a kind this checkout does not know
                print(f"  {kind}: skipped ({exc})")
                continue
            tic = time.perf_counter()
            index = FaissIndex.build(vectors, [str(i) for i in range(n)], kind, train_size=args.train_size)
            build = time.perf_counter() - tic
            method = bare_adore(model, cfg, index, query_tokens, relevant)
            timed = time_steps(method, trainer, qids, args.batch_size, args.warmup, args.steps)
            share = (timed["t_search"] + timed["t_reconstruct"]) / timed["step_seconds"]
            row = {"n_docs": n, "index": kind, "factory": spec,
                   **index.search_params(),
                   "build_seconds": round(build, 2), **{k: round(v, 4) for k, v in timed.items()},
                   "search_reconstruct_share": round(share, 3)}
            rows.append(row)
            print(f"  {kind:>6} ({row['factory']}): step {timed['step_seconds']:.3f}s  "
                  + "  ".join(f"{k[2:]} {timed[k]:.3f}" for k in SPLIT)
                  + f"  | search+reconstruct {100 * share:.1f}%  (build {build:.1f}s)", flush=True)
            del index, method
    record = {
        "benchmark": "ADORE step time split vs index size and kind (synthetic document vectors)",
        "model": "minilm (query tower trained)", "queries": f"{args.data}/queries.jsonl",
        "batch_size": args.batch_size, "topk": args.topk, "steps": args.steps, "warmup": args.warmup,
        "train_size": args.train_size, "threads": threads, "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "rows": rows,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # other processes sharing the cores
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
