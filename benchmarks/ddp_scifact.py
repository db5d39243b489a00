"""1 process × batch 2B against 2 processes (torchrun, gloo on CPU / NCCL on GPUs) × batch B on SciFact.

Both runs train the same method from the same start model with the same settings (``--preset cpu-demo``:
MiniLM, 60 steps, global batch 16, dev every 30 steps); only the split over processes differs. The
warm-up hard negatives (STAR) are mined once beforehand, outside the timing. Dropout draws differ between
the two layouts, so the dev metric agrees within noise, not bit for bit (the bit-level equivalence of a
step is what tests/reliability/test_distributed.py checks).

    python benchmarks/ddp_scifact.py --data ../shared/data/scifact [--method star] [--steps 60]
    python benchmarks/ddp_scifact.py --data DIR --model MODEL_DIR --steps 2 --batch-size 4 --topk 8   # smoke test

Prints, per run, the best dev metric (RR@10 by default), the step it was reached at and the wall-clock
time of the whole ``hardneg train`` command, and writes them as JSON to benchmarks/results/ddp_scifact.json
(or ``--json``). Each process gets ``cores / processes`` threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/scifact", help="SciFact folder (BEIR layout, train split)")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--method", default="star", help="inbatch, rand, star, ance (with --refresh-every) …")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16, help="the global batch (split over the processes)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--topk", type=int, default=200, help="hard negatives come from the top-k")
    parser.add_argument("--out", default="runs/ddp-scifact")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", default=None, help="results file (default benchmarks/results/ddp_scifact.json)")
    parser.add_argument("extra", nargs="*", help="more `hardneg train` flags, after --")
    args = parser.parse_args()
    if args.batch_size % args.nproc:
        parser.error("--batch-size must be a multiple of --nproc")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hn = [sys.executable, "-m", "hardneg", "--quiet"]
    extra = list(args.extra)
    if args.method in ("star", "static") and "--negatives" not in extra:
        hard = out / "hard.tsv"
        if not hard.is_file():  # the start model's negatives, once, outside the timing
            run([*hn, "mine", f"{args.data}:train", "--model", args.model, "--topk", str(args.topk),
                 "--max-length", "128",
                 "--out", str(hard)], args.cores)
        extra += ["--negatives", str(hard)]
    common = ["train", args.method, "--data", args.data, "--model", args.model, "--preset", "cpu-demo",
              "--max-steps", str(args.steps), "--dev-every", str(max(1, args.steps // 2)),
              "--save-every", str(max(1, args.steps // 2)), "--topk", str(args.topk), *extra]
    results = {}
    layouts = {f"1x{args.batch_size}": (1, args.batch_size),
               f"{args.nproc}x{args.batch_size // args.nproc}": (args.nproc, args.batch_size // args.nproc)}
    for name, (nproc, batch) in layouts.items():
        folder = out / f"{args.method}-{name}"
        if (folder / "summary.json").is_file():
            print(f"{folder}: finished before; remove it to run again", flush=True)
            seconds = json.loads((folder / "bench.json").read_text())["wall_s"] if (folder / "bench.json").is_file() \
                else float("nan")
        else:
            flags = [*common, "--batch-size", str(batch), "--out", str(folder)]
            threads = max(1, args.cores // nproc)
            if nproc == 1:
                seconds = run([*hn, *flags, "--threads", str(threads)], threads)
            else:
                seconds = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc_per_node", str(nproc), "-m", "hardneg", "--quiet", *flags,
                               "--threads", str(threads)], threads)
            (folder / "bench.json").write_text(json.dumps({"wall_s": seconds}))
        summary = json.loads((folder / "summary.json").read_text())
        results[name] = {"processes": nproc, "batch_per_process": batch, "dev_metric": summary["dev_metric"],
                         "best_dev": summary["best_dev"], "best_step": summary["best_step"], "wall_s": seconds}
    print(f"\n{args.method} on {args.data}, {args.steps} steps, global batch {args.batch_size}")
    print(f"{'layout':>8} {'dev ' + next(iter(results.values()))['dev_metric']:>12} {'best step':>10} {'wall s':>9}")
    for name, r in results.items():
        print(f"{name:>8} {r['best_dev']:>12.4f} {r['best_step']:>10} {r['wall_s']:>9.1f}")
    path = Path(args.json) if args.json else Path(__file__).with_name("results") / "ddp_scifact.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"method": args.method, "data": args.data, "steps": args.steps,
                                "global_batch": args.batch_size, "cores": args.cores,
                                "machine": platform.processor() or platform.machine(), "runs": results},
                               indent=2) + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
