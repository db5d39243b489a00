"""What a GPU machine must show, in one go (run by benchmarks/gpu_check.sh; under 5 minutes on one H100).

Each check prints one line ``PASS|FAIL|SKIP <name> (<seconds> s): <detail>`` (with its numbers) and the script
exits 0 when every check passed or was skipped, 1 when one failed, 2 when ``--device`` cannot be used (e.g.
``cuda`` with ``--require-gpu`` on a machine without CUDA). Everything uses tiny random models built here (the
packaged MiniLM tokenizer; for DRhard's model a byte-level BPE trained here) and a tiny BEIR folder written
here, so nothing is downloaded.

1. ``placement``: ``encode``, ``retrieve``, ``search``, ``mine`` and ``train`` run with ``--device D``
   (exit 0) and give what ``--device cpu`` gives (embeddings within 1e-3, the same top documents);
2. ``steps``: STAR and ADORE, bf16 and fp16, train 3 steps on D with finite losses, the model on D;
3. ``drhard-paper``: a tiny RoBERTa with DRhard's head (a RobertaDot checkpoint) trains STAR 8 steps under
   ``--preset paper-passage`` on D: DRhard's LAMB, fp16 autocast + loss scaler, gradient checkpointing, pair-mean
   mixing, DRhard's tokenisation; finite losses, layer 0 run in float16 with finite non-zero gradients, the head,
   layer 0 and the embeddings changed;
4. ``resume-fp16``: ``hardneg train`` (fp16, dropout on) SIGKILLed from outside as soon as its step-2 checkpoint
   is on disk, then ``--resume``d, ends with the uninterrupted run's weights bit for bit, its log lists every
   step once; on a GPU the checkpoint holds the GPU's RNG state; a resume whose generators are reseeded after
   loading does not match (so dropout depends on the restored state);
5. ``torchrun``: ``torchrun --nproc_per_node 1 -m hardneg train`` (NCCL on a GPU, gloo on the CPU) ends with the
   plain run's weights and per-step losses (the same data order and dropout masks), bit for bit; with 2 GPUs
   ``--nproc_per_node 2`` finishes with finite losses;
6. ``faiss-gpu``: ``FaissIndex.to_gpu`` on D's GPU for flat, fp16 flat (``to_gpu(fp16=True)``), IVF-PQ
   (ivf64pq48: float32 lookup tables) and pq96 (searched as IVF1,PQ96 with float16 lookup tables), each
   against the same index searched on the CPU: overlap of the top-100, top-1 hits on planted queries and
   score differences, one ``PASS|FAIL`` line per index;
7. ``nccl``: with 2 GPUs, the 2-process-vs-1-process step tests of tests/reliability/test_distributed.py
   (NCCL backend).

Where a GPU's kernels are not bit-for-bit deterministic, checks 4 and 5 compare against a second plain run
(benchmarks/gpu_check_train.py says how). ``python benchmarks/gpu_check.py [--device cuda] [--require-gpu]
[--only NAME,...]``; ``--device cpu`` runs checks 1-5 on the CPU (6 and 7 skip), which is how this script
itself is tested. Without CUDA, ``--device cuda`` runs them on the CPU and the GPU-only checks say SKIP;
``--require-gpu`` makes that exit 2, and makes a GPU check skipped for want of a GPU (Faiss without GPU
support) a FAIL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check_train  # noqa: E402  (benchmarks/, next to this file)

RESULTS: list[tuple[str, str]] = []


#: --require-gpu: a check skipped for want of a GPU fails instead
REQUIRE_GPU = False


class Skip(Exception):
    """A check that cannot run here; ``missing_gpu``: because this machine (or its Faiss) has no GPU."""

    def __init__(self, reason: str, missing_gpu: bool = False) -> None:
        super().__init__(reason)
        self.missing_gpu = missing_gpu


def check(name: str):
    def wrap(fn):
        def run(*args, **kw) -> str:
            tic = time.perf_counter()
            try:
                status, detail = "PASS", fn(*args, **kw)
            except Skip as skip:
                status = "FAIL" if skip.missing_gpu and REQUIRE_GPU else "SKIP"
                detail = f"skipped: {skip}" + (" (--require-gpu)" if status == "FAIL" else "")
            except Exception as exc:  # report and go on: one line per check
                status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
                traceback.print_exc(file=sys.stderr)
            print(f"{status} {name} ({time.perf_counter() - tic:.1f} s): {detail}", flush=True)
            RESULTS.append((name, status))
            return status
        return run
    return wrap


def hardneg(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "hardneg", "--quiet", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return proc


def top_docs(run_file: Path, k: int = 3) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in run_file.read_text().splitlines():
        qid, _, doc, rank, *_ = line.split()
        if int(rank) <= k:
            out.setdefault(qid, []).append(doc)
    return out


@check("environment")
def environment(device: str) -> str:
    import faiss
    import torch
    import transformers

    from hardneg.devices import faiss_gpus, resolve_device

    resolved = resolve_device(device)
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return (f"device {resolved}; torch {torch.__version__} (CUDA {torch.version.cuda}); transformers "
            f"{transformers.__version__}; faiss {faiss.__version__} with {faiss_gpus()} GPU(s); GPUs: {gpus}")


@check("placement")
def placement(device: str, work: Path, model: Path, data: Path) -> str:
    for dev in dict.fromkeys(("cpu", device)):  # once when --device cpu
        out = work / f"place-{dev.replace(':', '-')}"
        cache = str(out / "cache")
        hardneg("encode", f"{data}:train", "-m", str(model), "-o", str(out / "emb"), "--cache-dir", cache,
                "--device", dev)
        hardneg("retrieve", f"{data}:train", "-m", str(model), "-o", str(out / "retrieve"), "-k", "10",
                "--cache-dir", cache, "--device", dev)
        hardneg("index", str(out / "emb"), "--kind", "flat", "-o", str(out / "index"))
        hardneg("search", str(out / "index"), f"{data}:train", "-m", str(model), "-o", str(out / "search"),
                "-k", "10", "--device", dev)
        hardneg("mine", f"{data}:train", "-m", str(model), "--topk", "5", "-o", str(out / "negatives.tsv"),
                "--cache-dir", cache, "--device", dev)
        hardneg("train", "star", "--data", str(data), "--model", str(model), "--out", str(out / "train"),
                "--max-steps", "2", "--batch-size", "4", "--dev-every", "2", "--save-every", "2",
                "--cache-dir", cache, "--device", dev)
    cpu, dev = work / "place-cpu", work / f"place-{device.replace(':', '-')}"
    a = np.load(cpu / "emb" / "embeddings.npy")
    b = np.load(dev / "emb" / "embeddings.npy")
    diff = float(np.abs(a - b).max())
    if diff > 1e-3:
        raise AssertionError(f"encode: {device} and cpu embeddings differ by {diff:.2e}")
    for name in ("retrieve", "search"):
        if top_docs(cpu / name / "run.trec") != top_docs(dev / name / "run.trec"):
            raise AssertionError(f"{name}: the top-3 documents differ between {device} and cpu")
    log = [json.loads(x) for x in (dev / "train" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r.get("kind", "train") == "train" and "loss" in r]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"train --device {device}: losses {losses}")
    return f"encode/retrieve/index/search/mine/train ran on {device}; embeddings within {diff:.1e} of cpu"


def train_config(tmp: Path, data: Path, model: Path, method: str, device: str, precision: str, **kw):
    from hardneg.train.config import TrainConfig

    base = dict(method=method, data=str(data), model=str(model), out=str(tmp), cache_dir=str(tmp / "cache"),
                batch_size=4, max_steps=3, dev_every=3, save_every=3, n_negatives=2, topk=5,
                device=device, precision=precision, quiet=True, dev_pool=5)
    if method == "adore":
        base.update(adore_topk=10, metric="mrr@10", index="flat", n_negatives=1)
    base.update(kw)
    return TrainConfig(**base)


@check("steps")
def steps(device: str, work: Path, model: Path, data: Path) -> str:
    import torch

    from hardneg.train.trainer import Trainer

    seen = []
    for precision in ("bf16", "fp16"):
        for method in ("star", "adore"):
            trainer = Trainer(train_config(work / f"steps-{precision}-{method}", data, model, method, device,
                                           precision))
            trainer.setup()
            where = {p.device.type for p in trainer.model.parameters()}
            if where != {torch.device(device).type}:
                raise AssertionError(f"{method} {precision}: parameters on {where}, not {device}")
            trainer.train()
            log = [json.loads(x) for x in (trainer.out / "train_log.jsonl").read_text().splitlines()]
            losses = [r["loss"] for r in log if "loss" in r]
            if len(losses) < 3 or not all(math.isfinite(x) for x in losses):
                raise AssertionError(f"{method} {precision}: losses {losses}")
            seen.append(f"{method}/{precision} loss {losses[-1]:.4f}")
    return "; ".join(seen)


@check("drhard-paper")
def drhard_paper(device: str, work: Path, data: Path) -> str:
    return gpu_check_train.drhard_paper(device, work, data)


@check("resume-fp16")
def resume_fp16(runs: gpu_check_train.Runs) -> str:
    return gpu_check_train.kill_resume(runs)


@check("torchrun")
def torchrun(runs: gpu_check_train.Runs) -> str:
    return gpu_check_train.torchrun_runs(runs)


#: (hardneg index kind, to_gpu options, least top-100 overlap with the CPU search, largest score difference,
#: whether the cloner must get useFloat16: fp16 storage for flat, fp16 lookup tables for PQ with M > 48)
FAISS_CASES = [
    ("flat", {}, 0.999, 1e-3, False),
    ("flat", {"fp16": True}, 0.95, 5e-3, True),
    ("ivf64pq48", {}, 0.98, 1e-3, False),
    ("pq96", {}, 0.95, 5e-3, True),
]


@check("faiss-gpu")
def faiss_gpu(device: str) -> str:
    from hardneg.devices import faiss_gpus, resolve_device
    from hardneg.index.faiss_index import FaissIndex

    if not device.startswith("cuda"):
        raise Skip(f"--device {device}", missing_gpu=True)
    if faiss_gpus() == 0:
        raise Skip("the installed faiss has no GPU support (pip install faiss-gpu-cu12)", missing_gpu=True)
    gpu = resolve_device(device).index or 0
    rng = np.random.default_rng(0)
    n, dim, k = 20000, 768, 100
    docs = rng.standard_normal((n, dim)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    planted = rng.choice(n, 256, replace=False)  # each query is a noisy copy of one document
    queries = docs[planted] + rng.standard_normal((256, dim)).astype(np.float32) / np.sqrt(dim)
    ids = [f"d{i}" for i in range(n)]
    lines, failed = [], []
    for kind, options, min_overlap, max_diff, half in FAISS_CASES:
        name = kind + ("-fp16" if options.get("fp16") else "")
        index = FaissIndex.build(docs, ids, kind, train_size=10_000, nprobe=16 if kind.startswith("ivf") else None)
        s_cpu, r_cpu = index.search(queries, k)
        index.to_gpu(gpu, required=True, **options)
        move = index.placement
        s_gpu, r_gpu = index.search(queries, k)
        overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(r_cpu, r_gpu, strict=True)]))
        hit_cpu, hit_gpu = float(np.mean(r_cpu[:, 0] == planted)), float(np.mean(r_gpu[:, 0] == planted))
        diff = float(np.abs(s_cpu - s_gpu).max())
        problems = [p for p, bad in (
            (f"overlap {overlap:.4f} < {min_overlap}", overlap < min_overlap),
            (f"scores differ by {diff:.1e} > {max_diff:.0e}", diff > max_diff),
            (f"top-1 hits {hit_gpu:.3f} < cpu {hit_cpu:.3f}", hit_gpu < hit_cpu - 0.01),
            (f"placed on {move.devices}, not ({gpu},)", move.devices != (gpu,)),
            (f"useFloat16 {move.support.use_float16}, expected {half}", move.support.use_float16 != half),
        ) if bad]
        line = (f"{name}: top-{k} overlap {overlap:.4f}, top-1 {hit_gpu:.3f} (cpu {hit_cpu:.3f}), scores within "
                f"{diff:.1e}; {move.describe()}")
        verdict = f"FAIL faiss-gpu/{line} -- {'; '.join(problems)}" if problems else f"PASS faiss-gpu/{line}"
        print(f"  {verdict}", flush=True)
        lines.append(f"{name} {overlap:.3f}")
        failed += [f"{name}: {p}" for p in problems]
        index.release_gpu()
    if failed:
        raise AssertionError("; ".join(failed))
    return f"FaissIndex.to_gpu on cuda:{gpu} against CPU search, {n} x {dim}, 256 queries: " + ", ".join(lines)


@check("nccl")
def nccl(device: str) -> str:
    import torch

    if not device.startswith("cuda"):
        raise Skip(f"--device {device}", missing_gpu=True)
    if torch.cuda.device_count() < 2:
        raise Skip(f"{torch.cuda.device_count()} GPU(s); the NCCL check needs 2")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "tests/reliability/test_distributed.py", "-k",
                           "two_processes_equal_one"], cwd=REPO, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    if proc.returncode != 0:
        raise AssertionError(tail + "\n" + proc.stdout[-3000:])
    return f"2 NCCL processes x batch B == 1 process x 2B: {tail}"


CHECKS = ("environment", "placement", "steps", "drhard-paper", "resume-fp16", "torchrun", "faiss-gpu", "nccl")


def main(argv: list[str] | None = None) -> int:
    global REQUIRE_GPU
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (to test this script)")
    parser.add_argument("--require-gpu", action="store_true",
                        help="exit 2 without CUDA; a GPU check skipped for want of a GPU fails")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated checks of {', '.join(CHECKS)}")
    args = parser.parse_args(argv)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in only if c not in CHECKS]
    if unknown:
        parser.error(f"unknown check(s) {unknown}; known: {', '.join(CHECKS)}")
    REQUIRE_GPU = args.require_gpu
    RESULTS.clear()
    import torch

    from conftest import _tiny_bert, write_tiny_train
    from hardneg.devices import DeviceError, resolve_device
    from hardneg.logs import quiet_libraries

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available() and not REQUIRE_GPU:
        print("gpu_check: no CUDA here: running the checks on the CPU (GPU checks skip; --require-gpu fails)",
              flush=True)
        device = "cpu"
    try:
        resolve_device(device)
    except DeviceError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="hardneg-gpu-check-") as tmp:
        work = Path(tmp)
        model = _tiny_bert(work / "tiny-bert")
        data = write_tiny_train(work / "data", filler=300)
        runs = gpu_check_train.Runs(device, work, model, data)
        calls = {
            "environment": lambda: environment(device),
            "placement": lambda: placement(device, work, model, data),
            "steps": lambda: steps(device, work, model, data),
            "drhard-paper": lambda: drhard_paper(device, work, data),
            "resume-fp16": lambda: resume_fp16(runs),
            "torchrun": lambda: torchrun(runs),
            "faiss-gpu": lambda: faiss_gpu(device),
            "nccl": lambda: nccl(device),
        }
        for name in CHECKS:
            if name in only:
                calls[name]()
    failed = [n for n, s in RESULTS if s == "FAIL"]
    print(f"gpu_check on {device}: {len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed or skipped"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
