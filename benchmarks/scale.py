"""Paper scale on one machine: peak memory and time of the large-corpus stages, on synthetic vectors.

The data are random unit vectors of the paper's 768 dimensions (``--dim``) for N documents
(default 100k, 1M, 2M), written once per N in blocks to ``--work`` as a ``.npy`` file, and a
synthetic query set with planted positives: query i is its positive document plus Gaussian noise
of the same norm, renormalised (cosine ≈ 0.71 to its positive, ≈ 0 ± 0.04 to the rest), so every
stage can also check it found the positives. Each (stage, N, index) runs in its own child process,
which reports its peak resident set size (``VmHWM``: file-backed pages of a memory map count too),
its peak anonymous memory (``RssAnon``, sampled every 20 ms) and its wall time:

- ``index_build``: :meth:`hardneg.index.faiss_index.FaissIndex.build` from the memory map (the
  codebooks trained on a seeded sample, vectors added in batches), then saved;
- ``dev_eval``: the chunked exact top-100 search full-corpus dev evaluation uses
  (:class:`hardneg.retrieval.exact.TopKSearch`) of ``--dev-queries`` queries over the memory map, and
  the MRR@10 of the planted positives;
- ``mine``: :class:`hardneg.retrieval.exact.TopKSearch` in query chunks of ``--mine-queries``
  queries, top-200 minus the positive written to a negatives TSV chunk by chunk (what the streaming
  ``hardneg mine`` does per chunk, without the text side);
- ``adore_step``: ADORE's training step against the saved index — the query tower (a BERT-base-shaped
  encoder, 12 layers × 768, randomly initialised: the paper's query encoder size) on 32 synthetic
  queries of 24 tokens, the index search of the top-200, the reconstruction of the retrieved and
  positive vectors, ΔMRR@10 LambdaLoss (:func:`hardneg.train.methods.adore_pairs.build_pairs`,
  :func:`hardneg.train.losses.lambda_pairwise`), backward and AdamW — with its time split.

Rows go to ``--out`` (default ``benchmarks/results/scale.json``) as a list of
``{"stage", "n_docs", "index", "peak_rss_mib", "seconds", "per_query_ms", ...}``, each also with
what the stage must hold (``held_mib``: the vectors for flat and exact search, the codes for PQ), the
process's baseline after its imports, ADORE's model state, and ``over_held_mib`` (peak minus those);
rows with ``"extrapolated": true`` are a linear fit over the measured sizes at MS MARCO's 8.8M
passages. Machine and settings go to ``scale.meta.json`` beside it.

    python benchmarks/scale.py --sizes 100000 --dev-queries 200 --mine-queries 200   # a quick check
    python benchmarks/scale.py                                                     # 100k, 1M, 2M (~30 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

MSMARCO_PASSAGES = 8_841_823
INDEXES = ("flat", "pq96", "ivf1024pq96")
BLOCK = 65_536


# ----------------------------------------------------------------------------- data
def docs_path(work: Path, n: int, dim: int) -> Path:
    return work / f"docs-{n}x{dim}.npy"


def make_docs(work: Path, n: int, dim: int, seed: int = 0) -> Path:
    """``n`` random unit vectors as a float32 ``.npy``, written block by block (memory: one block)."""
    path = docs_path(work, n, dim)
    if path.is_file():
        return path
    work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    rng = np.random.default_rng(seed)
    for start in range(0, n, BLOCK):
        block = rng.standard_normal((min(BLOCK, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    out.flush()
    del out
    tmp.replace(path)
    return path


def make_queries(docs: np.ndarray, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``m`` queries with planted positives: ``(vectors (m, dim), positive rows (m,))``."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(docs), size=m, replace=False))
    base = np.asarray(docs[rows], dtype=np.float32)
    noise = rng.standard_normal(base.shape, dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    q = base + noise
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, rows


def open_docs(work: Path, n: int, dim: int) -> np.ndarray:
    return np.load(docs_path(work, n, dim), mmap_mode="r")


# ----------------------------------------------------------------------------- measuring
class Memory:
    """Samples this process's RssAnon every 20 ms; ``peak()`` also reads VmHWM (the kernel's peak RSS)."""

    def __init__(self) -> None:
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def status() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, self.status().get("RssAnon", 0))
            time.sleep(0.02)

    def peak(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        st = self.status()
        self.peak_anon = max(self.peak_anon, st.get("RssAnon", 0))
        return {"peak_rss_mib": round(st["VmHWM"] / 2**20, 1), "peak_anon_mib": round(self.peak_anon / 2**20, 1)}


def index_folder(work: Path, n: int, dim: int, kind: str) -> Path:
    return work / f"index-{n}x{dim}-{kind}"


# ----------------------------------------------------------------------------- stages (child side)
def stage_index_build(args, docs: np.ndarray) -> dict:
    from hardneg.index.faiss_index import FaissIndex

    start = time.perf_counter()
    index = FaissIndex.build(docs, [str(i) for i in range(len(docs))], args.index, train_size=args.train_size)
    built = time.perf_counter() - start
    index.save(index_folder(args.work, len(docs), docs.shape[1], args.index))
    return {"seconds": time.perf_counter() - start, "build_seconds": built, "per_query_ms": None,
            "index_bytes": int(index.manifest.get("bytes", 0))}


def topk_search(q: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-``k`` of every query over ``docs``, as the dev evaluation and the miner search."""
    from hardneg.retrieval.exact import TopKSearch

    search = TopKSearch(q, k)
    search.add(docs)
    return search.result()


def stage_dev_eval(args, docs: np.ndarray) -> dict:
    q, pos = make_queries(docs, args.dev_queries, seed=1)
    start = time.perf_counter()
    _, rows = topk_search(q, docs, 100)
    seconds = time.perf_counter() - start
    hit = rows == pos[:, None]
    rank = np.where(hit.any(1), hit.argmax(1), 10**9)
    return {"seconds": seconds, "per_query_ms": 1000 * seconds / len(q),
            "queries": len(q), "mrr@10_planted": float(np.mean(np.where(rank < 10, 1.0 / (rank + 1), 0.0)))}


def stage_mine(args, docs: np.ndarray) -> dict:
    q, pos = make_queries(docs, args.mine_queries, seed=2)
    out = args.work / f"mined-{len(docs)}.tsv"
    chunk = 4096  # the streaming miner's query chunk
    start = time.perf_counter()
    found = 0
    with open(out, "w", encoding="utf-8") as fh:
        for s in range(0, len(q), chunk):
            _, rows = topk_search(q[s : s + chunk], docs, 201)
            lines = []
            for i, row in enumerate(rows):
                neg = [r for r in row.tolist() if r != pos[s + i]][:200]
                found += int(len(neg) < len(row))
                lines.append(f"q{s + i}\t" + ",".join(map(str, neg)) + "\n")
            fh.write("".join(lines))
    seconds = time.perf_counter() - start
    size = out.stat().st_size
    out.unlink()
    return {"seconds": seconds, "per_query_ms": 1000 * seconds / len(q), "queries": len(q),
            "positive_in_top201": found / len(q), "tsv_bytes": size}


def stage_adore_step(args, docs: np.ndarray) -> dict:
    import torch
    from transformers import BertConfig, BertModel

    from hardneg.index.faiss_index import FaissIndex
    from hardneg.train.losses import lambda_pairwise
    from hardneg.train.methods.adore_pairs import build_pairs

    dim = docs.shape[1]
    index = FaissIndex.load(index_folder(args.work, len(docs), dim, args.index))
    if args.nprobe and "ivf" in args.index:
        from hardneg.index.faiss_index import import_faiss

        import_faiss().ParameterSpace().set_index_parameter(index.index, "nprobe", args.nprobe)
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=dim, num_hidden_layers=args.layers, num_attention_heads=max(1, dim // 64),
                     intermediate_size=4 * dim, vocab_size=30522)
    encoder = BertModel(cfg, add_pooling_layer=False).train()
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-5)
    _, pos = make_queries(docs, 32 * (args.steps + 1), seed=3)
    rng = np.random.default_rng(4)
    split: dict[str, list[float]] = {k: [] for k in ("t_query_encode", "t_search", "t_reconstruct", "t_loss",
                                                    "t_backward", "t_optimizer", "step")}
    for step in range(args.steps + 1):
        ids = torch.as_tensor(rng.integers(1000, 30000, size=(32, 24)))
        rel = [{int(r): 1} for r in pos[32 * step : 32 * (step + 1)]]
        t0 = time.perf_counter()
        out = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[:, 0]
        q = torch.nn.functional.normalize(out, dim=-1)
        t1 = time.perf_counter()
        _, retrieved = index.search(q.detach().numpy(), 200)
        t2 = time.perf_counter()
        pairs = build_pairs(retrieved, rel, "mrr@10")
        pv = torch.from_numpy(index.reconstruct(pairs.pos_rows))
        nv = torch.from_numpy(index.reconstruct(pairs.neg_rows))
        t3 = time.perf_counter()
        s_pos = torch.einsum("bd,bpd->bp", q, pv)
        s_neg = torch.einsum("bd,bnd->bn", q, nv)
        loss = lambda_pairwise(s_pos, s_neg, pairs.weights, pairs.mask)
        t4 = time.perf_counter()
        loss.backward()
        t5 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t6 = time.perf_counter()
        if step == 0:  # warm-up
            continue
        for key, v in zip(split, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t6 - t0), strict=True):
            split[key].append(v)
    med = {k: float(np.median(v)) for k, v in split.items()}
    share = (med["t_search"] + med["t_reconstruct"]) / med["step"]
    n_params = sum(p.numel() for p in encoder.parameters())
    return {"seconds": med["step"], "per_query_ms": 1000 * med["step"] / 32, "split": med,
            # weights, gradients and AdamW's two moments, fp32: held by any ADORE step whatever the index
            "model_state_mib": round(16 * n_params / 2**20, 1),
            "search_reconstruct_share": round(share, 4), "steps_timed": args.steps,
            "encoder": f"BERT {args.layers}x{dim} (random init)",
            "nprobe": args.nprobe if "ivf" in args.index else None}


STAGES = {"index_build": stage_index_build, "dev_eval": stage_dev_eval, "mine": stage_mine,
          "adore_step": stage_adore_step}


def child(args) -> None:
    import torch
    import transformers  # noqa: F401  (imported before the baseline reading, as every stage has it)

    from hardneg.index.faiss_index import set_threads

    torch.set_num_threads(args.threads)
    set_threads(args.threads)
    base = Memory.status()["VmRSS"]
    mem = Memory()
    docs = open_docs(args.work, args.n, args.dim)
    row = STAGES[args.child](args, docs)
    row.update(mem.peak())
    row["base_rss_mib"] = round(base / 2**20, 1)  # the interpreter with torch, transformers and Faiss loaded
    row["load_avg_1min"] = os.getloadavg()[0]
    print("ROW " + json.dumps(row), flush=True)


# ----------------------------------------------------------------------------- parent
def held_bytes(stage: str, kind: str, n: int, dim: int) -> int:
    """What the stage must hold in memory: the vectors (flat, exact search) or the PQ codes."""
    if stage in ("dev_eval", "mine") or kind == "flat":
        return n * dim * 4
    m = int(kind.rsplit("pq", 1)[1])
    return n * (m + (8 if "ivf" in kind else 0))  # IVF lists store an 8-byte id per code


def run_child(args, stage: str, n: int, index: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, "--n", str(n), "--dim", str(args.dim), "--work", str(args.work),
           "--index", index or "flat", "--threads", str(args.threads), "--dev-queries", str(args.dev_queries),
           "--mine-queries", str(args.mine_queries), "--steps", str(args.steps), "--layers", str(args.layers),
           "--nprobe", str(args.nprobe), "--train-size", str(args.train_size)]
    print(f"[scale] {stage} n={n} index={index or '-'}", flush=True)
    # passive OpenMP waiting: Faiss's spinning threads otherwise slow to a crawl beside any other process
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("ROW ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{stage} n={n} index={index}: failed\n{proc.stderr[-3000:]}")
    row = {"stage": stage, "n_docs": n, "index": index, **json.loads(line[4:])}
    held = held_bytes(stage, index or "flat", n, args.dim)
    row["held_mib"] = round(held / 2**20, 1)
    # above what the stage must hold: the vectors or codes, the process's baseline and (ADORE) the model state
    row["over_held_mib"] = round(row["peak_rss_mib"] - row["held_mib"] - row["base_rss_mib"]
                                 - row.get("model_state_mib", 0.0), 1)
    print(f"[scale]   {row['seconds']:.2f} s, peak RSS {row['peak_rss_mib']:.0f} MiB "
          f"({row['over_held_mib']:+.0f} over the {row['held_mib']:.0f} MiB held, the "
          f"{row['base_rss_mib']:.0f} MiB baseline and {row.get('model_state_mib', 0):.0f} MiB of model state)",
          flush=True)
    return row


def extrapolate(rows: list[dict]) -> list[dict]:
    """A linear fit (through the measured sizes) of seconds and peak RSS against N, at 8.8M passages."""
    out = []
    keys = sorted({(r["stage"], r["index"]) for r in rows}, key=str)
    for stage, index in keys:
        pts = sorted((r["n_docs"], r["seconds"], r["peak_rss_mib"]) for r in rows
                     if r["stage"] == stage and r["index"] == index)
        if len(pts) < 2:
            continue
        n = np.array([p[0] for p in pts], dtype=np.float64)
        fit_s = np.polyfit(n, [p[1] for p in pts], 1)
        fit_m = np.polyfit(n, [p[2] for p in pts], 1)
        out.append({"stage": stage, "index": index, "n_docs": MSMARCO_PASSAGES,
                    "seconds": round(float(np.polyval(fit_s, MSMARCO_PASSAGES)), 2),
                    "peak_rss_mib": round(float(np.polyval(fit_m, MSMARCO_PASSAGES)), 1)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--indexes", nargs="+", default=list(INDEXES))
    ap.add_argument("--stages", nargs="+", default=list(STAGES))
    ap.add_argument("--dev-queries", type=int, default=1000)
    ap.add_argument("--mine-queries", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=3, help="timed ADORE steps (after one warm-up step)")
    ap.add_argument("--layers", type=int, default=12, help="query encoder layers of the ADORE step")
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--train-size", type=int, default=65_536,
                    help="vectors the PQ/IVF codebooks train on (Faiss samples a PQ codebook to 256 per centroid)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", type=Path, default=Path("runs/scale"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    ap.add_argument("--child", choices=list(STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--index", default="flat", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work = args.work.resolve()
    if args.child:
        child(args)
        return
    rows: list[dict] = []
    started = time.time()
    for n in args.sizes:
        make_docs(args.work, n, args.dim)
        for stage in ("index_build", "dev_eval", "mine", "adore_step"):
            if stage not in args.stages:
                continue
            for index in (args.indexes if stage in ("index_build", "adore_step") else [None]):
                rows.append(run_child(args, stage, n, index))
        if n != max(args.sizes):  # keep the largest for a rerun of single stages
            for p in args.work.glob(f"*-{n}x{args.dim}*"):
                if p.is_dir():
                    import shutil

                    shutil.rmtree(p)
                else:
                    p.unlink()
    meta = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                        "python": platform.python_version()},
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                         if k not in ("child", "n", "index")},
            "wall_seconds": round(time.time() - started, 1)}
    extra = [{**r, "extrapolated": True} for r in extrapolate(rows)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows + extra, indent=1) + "\n")  # a list of rows, as documented
    args.out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"[scale] wrote {args.out} and {args.out.with_suffix('.meta.json')}")


if __name__ == "__main__":
    main()
