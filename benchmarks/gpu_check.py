"""What a GPU machine must show, in one go (run by benchmarks/gpu_check.sh; a few minutes).

Each check prints one line ``PASS|FAIL|SKIP <name> (<seconds> s): <detail>`` and the script exits 1
if any failed. Everything uses tiny random models built here with the packaged MiniLM tokenizer and a
tiny BEIR folder written here, so nothing is downloaded.

1. ``placement``: ``encode``, ``retrieve``, ``search``, ``mine`` and ``train`` run with ``--device D``
   (exit 0) and give what ``--device cpu`` gives (embeddings within 1e-3, the same top documents);
2. ``steps``: STAR and ADORE, bf16 and fp16, train 3 steps on D with finite losses, the model on D;
3. ``resume-fp16``: with dropout on, an fp16 run killed after its checkpoint at step 2 and resumed ends with
   the weights (and loss scale) of the uninterrupted run, bit for bit; on D = cuda its checkpoint holds the
   GPU's RNG state; and a resume whose RNGs are reseeded after loading does not (dropout matters);
4. ``faiss-gpu``: ``FaissIndex.to_gpu`` on D's GPU for flat, fp16 flat (``to_gpu(fp16=True)``), IVF-PQ
   (ivf64pq48: float32 lookup tables) and pq96 (searched as IVF1,PQ96 with float16 lookup tables), each
   against the same index searched on the CPU: overlap of the top-100, top-1 hits on planted queries and
   score differences, one ``PASS|FAIL`` line per index;
5. ``nccl``: with 2 GPUs, the 2-process-vs-1-process step tests of tests/reliability/test_distributed.py
   (NCCL backend).

``python benchmarks/gpu_check.py [--device cuda]``; ``--device cpu`` runs the same code paths on a CPU
machine (the GPU-only checks are then skipped), which is how this script itself is tested.
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

RESULTS: list[tuple[str, str]] = []


def check(name: str):
    def wrap(fn):
        def run(*args, **kw):
            tic = time.perf_counter()
            try:
                detail = fn(*args, **kw)
                status = "SKIP" if isinstance(detail, str) and detail.startswith("skipped") else "PASS"
            except Exception as exc:  # report and go on: one line per check
                status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
                traceback.print_exc(file=sys.stderr)
            print(f"{status} {name} ({time.perf_counter() - tic:.1f} s): {detail}", flush=True)
            RESULTS.append((name, status))
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


@check("resume-fp16")
def resume_fp16(device: str, work: Path, model: Path, data: Path) -> str:
    import pytest
    import torch

    import hardneg.distributed as hdist
    from conftest import straight_and_resumed
    from hardneg.train.trainer import Trainer

    def kill_and_resume(prefix: str, reseed: bool = False):
        def make(name: str) -> Trainer:
            return Trainer(train_config(work / f"resume-{prefix}{name}", data, model, "star", device, "fp16",
                                        max_steps=4, save_every=2, dev_every=2))

        with pytest.MonkeyPatch.context() as patch:  # the tests' kill-after-checkpoint-then-resume helper
            if reseed:  # the control: every generator reseeded right after the checkpoint restored them
                restore = hdist.set_rng_state
                patch.setattr(hdist, "set_rng_state", lambda state, dev=None: (restore(state, dev),
                                                                                torch.manual_seed(12345)))
            return straight_and_resumed(make, patch, kill_at=2)

    straight, resumed = kill_and_resume("")
    dropout = [m.p for m in straight.model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    if not dropout:
        raise AssertionError("the model has no active dropout: the check would prove nothing about RNG state")
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    if bad:
        raise AssertionError(f"{len(bad)} tensors differ after resume, e.g. {bad[:3]}")
    scale = getattr(getattr(straight, "scaler", None), "get_scale", lambda: None)()
    scale_b = getattr(getattr(resumed, "scaler", None), "get_scale", lambda: None)()
    if scale != scale_b:
        raise AssertionError(f"loss scale {scale} straight vs {scale_b} resumed")
    last = sorted((work / "resume-b" / "checkpoints").glob("step-*"))[-1]
    rng = torch.load(last / "rng.pt", map_location="cpu", weights_only=True)
    if device.startswith("cuda") and (rng.get("device_type") != "cuda" or not rng.get("cuda")):
        raise AssertionError(f"{last}/rng.pt holds no CUDA RNG state (keys {sorted(rng)})")
    _, reseeded = kill_and_resume("reseed-", reseed=True)
    c = reseeded.model.state_dict()
    if all(torch.equal(a[k], c[k]) for k in a):
        raise AssertionError("a resume with reseeded RNGs also matched: dropout did not depend on the RNG state")
    return (f"4 steps straight == 2 + kill + resume, bit for bit ({len(a)} tensors), dropout on "
            f"({len(dropout)} layers, p={dropout[0]}); {len(rng.get('cuda', []))} GPU RNG state(s) in the "
            f"checkpoint; reseeded resume differs; loss scale {scale}")


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

    if not device.startswith("cuda") or faiss_gpus() == 0:
        return f"skipped: the installed faiss has {faiss_gpus()} GPU(s) (pip install faiss-gpu-cu12)"
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

    if not device.startswith("cuda") or torch.cuda.device_count() < 2:
        return f"skipped: {torch.cuda.device_count()} GPU(s); the NCCL check needs 2"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "tests/reliability/test_distributed.py", "-k",
                           "two_processes_equal_one"], cwd=REPO, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    if proc.returncode != 0:
        raise AssertionError(tail + "\n" + proc.stdout[-3000:])
    return f"2 NCCL processes x batch B == 1 process x 2B: {tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (to test this script)")
    args = parser.parse_args()
    from conftest import _tiny_bert, write_tiny_train
    from hardneg.devices import DeviceError, resolve_device

    try:
        resolve_device(args.device)
    except DeviceError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="hardneg-gpu-check-") as tmp:
        work = Path(tmp)
        model = _tiny_bert(work / "tiny-bert")
        data = write_tiny_train(work / "data", filler=300)
        environment(args.device)
        placement(args.device, work, model, data)
        steps(args.device, work, model, data)
        resume_fp16(args.device, work, model, data)
        faiss_gpu(args.device)
        nccl(args.device)
    failed = [n for n, s in RESULTS if s == "FAIL"]
    print(f"gpu_check: {len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed or skipped"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
