"""Kill tests: a real SIGKILL of a ``hardneg`` child process at random points, repeated.

For each command: one uninterrupted run gives the reference outputs and the number of storage events
it makes. Then the same command is run again and again in a fresh folder, each time SIGKILLed at a
random storage event (or, in the slow suite, also at a random time), and finally run to completion.

* after every kill, anything that looks complete (a folder with its manifest, a checkpoint, a final
  file) must equal the reference's -- no half-written file is ever taken as complete;
* the finished outputs must equal the uninterrupted run's (bitwise; within 1e-6 for float arrays,
  counted separately, where bitwise differs; timings, attempt counters and TensorBoard event files
  are not compared).

The default suite (CI) kills each command at least once: tokenize, encode, a flat index, mining, training
with every method, and one dense experiment stage; the slow suite adds repeated and timed kills of every
training method, a PQ index and a whole small experiment.

``HARDNEG_KILLS`` sets the kills per command (default 2; the slow suite uses 3 per training method);
``HARDNEG_KILL_SEED`` fixes the random kill points (printed on failure to reproduce a run).
Counts are reported in the session's "reliability" section.
"""

from __future__ import annotations

import fnmatch
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import KILL_COUNTS, write_tiny_train

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
KILLS = int(os.environ.get("HARDNEG_KILLS", "2"))
SEED = int(os.environ.get("HARDNEG_KILL_SEED", str(random.SystemRandom().randrange(1 << 30))))

#: files whose content legitimately differs between runs (timings, attempts, event files)
VOLATILE = ["*/tensorboard/*", "*.lock", "*/summary.json", "*/stage.json", "*/train_log.jsonl", "*/report.md",
            "*/tables/table4_training_time.csv", "*/tables/table4_training_time.tex"]
#: leftovers a kill may leave beside artifacts: temporary names, never taken as complete
TEMP = ["*/.*.tmp-*", "*.tmp-*", "*/.*", "*.old-*", "*.partial", "*.partial/*", "*/.*/*"]
#: files rewritten as training goes on (the best model so far, ANCE's latest negatives): checked only
#: at the end
MOVING = ["*/model/*", "*/dev_metrics.json", "*/config.json", "*/refresh/*", "*/negatives_diagnostics.json"]
#: measurements that differ between any two runs (wall-clock, CPU time, attempts, a stage's peak memory, the
#: machine's measured speed)
TIMING_KEYS = {"seconds", "queries_per_s", "seconds_this_session", "attempts", "peak_rss_mb", "peak_gpu_mb",
               "cpu_seconds", "gflops"}


def _match(rel: str, patterns: list[str]) -> bool:
    """``fnmatch`` on ``/rel`` (``*`` crosses folders)."""
    return any(fnmatch.fnmatch("/" + rel, p) for p in patterns)


#: (reference root, work root) of the running kill cycle: paths inside files are compared root-free
_ROOTS: list[str] = []
_TEXT = {".json", ".jsonl", ".tsv", ".trec", ".md", ".txt", ".yaml"}


def _content(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix in _TEXT:
        for root in _ROOTS:
            data = data.replace(root.encode(), b"<ROOT>")
    return data


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            # bm25s numbers its vocabulary in set order: BM25 cache files are bitwise equal only under
            # one hash seed (the rankings do not depend on it)
            "PYTHONHASHSEED": "0"}


def run_hardneg(args: list[str], control: dict, cwd: Path, timeout: float = 600) -> int:
    ctl = cwd / f".control-{time.monotonic_ns()}.json"
    ctl.write_text(json.dumps(control))
    try:
        proc = subprocess.run([sys.executable, str(HERE / "_killer.py"), str(ctl), "--", "--quiet", *args],
                              cwd=cwd, env=_env(), timeout=timeout, capture_output=True, text=True)
    finally:
        ctl.unlink()
    if proc.returncode not in (0, -9):
        raise AssertionError(f"hardneg {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.returncode


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _same(a: Path, b: Path, approx: list[str]) -> bool:
    if _content(a) == _content(b):
        return True
    if a.suffix == ".npy":
        x, y = np.load(a), np.load(b)
        if x.shape == y.shape and x.dtype == y.dtype and np.allclose(x, y, rtol=0, atol=1e-6):
            approx.append(str(a))
            return True
    if a.suffix == ".safetensors":
        from safetensors.numpy import load_file

        x, y = load_file(a), load_file(b)
        if x.keys() == y.keys() and all(np.allclose(x[k], y[k], rtol=0, atol=1e-6) for k in x):
            approx.append(str(a))
            return True
    return False


def _strip_timing(obj):
    if isinstance(obj, dict):
        # t_*: the step's time split (seconds)
        return {k: _strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS and not k.startswith("t_")}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


def _same_volatile(a: Path, b: Path) -> bool:
    if "tensorboard" in a.parts or a.suffix == ".lock":
        return True
    if a.suffix == ".md":  # the report's training-time table holds wall-clock numbers
        def masked(p):
            out, timing = [], False
            for line in _content(p).decode().splitlines():
                if line.startswith("## "):
                    timing = "training time" in line
                out.append(re.sub(r"\d+(\.\d+)?", "#", line) if timing else line)
            return out
        return masked(a) == masked(b)
    if a.suffix in (".csv", ".tex"):  # the report's training-time table holds wall-clock numbers
        def masked_table(p):
            return [re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", x) for x in _content(p).decode().splitlines()]
        return masked_table(a) == masked_table(b)
    if a.suffix == ".jsonl":
        def rows(p):
            return [_strip_timing(json.loads(x)) for x in _content(p).decode().splitlines() if x.strip()]
        return rows(a) == rows(b)
    return _strip_timing(json.loads(_content(a))) == _strip_timing(json.loads(_content(b)))


def check_published(ref: Path, work: Path, context: str) -> int:
    """After a kill: every complete-looking file in ``work`` equals the reference's. Returns how many."""
    n = 0
    ref_files = _files(ref)
    for rel, path in _files(work).items():
        if _match(rel, TEMP) or _match(rel, VOLATILE) or _match(rel, MOVING):
            continue
        assert rel in ref_files, f"{context}: {rel} exists after the kill but not in the uninterrupted run"
        assert _same(path, ref_files[rel], []), f"{context}: {rel} looks complete but differs (half-written?)"
        n += 1
    return n


def check_final(ref: Path, work: Path, context: str) -> list[str]:
    """The finished outputs equal the reference's; returns the files equal only within 1e-6."""
    approx: list[str] = []
    ref_files, work_files = _files(ref), _files(work)
    ignored = TEMP + ["*.lock", "*/tensorboard/*"]
    missing = sorted(r for r in ref_files if r not in work_files and not _match(r, ignored))
    assert not missing, f"{context}: missing after resume: {missing}"
    for rel, path in work_files.items():
        if _match(rel, TEMP):
            continue
        if _match(rel, ["*/tensorboard/*"]):
            continue
        assert rel in ref_files, f"{context}: unexpected file {rel}"
        if _match(rel, VOLATILE):
            assert _same_volatile(path, ref_files[rel]), f"{context}: {rel} differs beyond timings"
        else:
            assert _same(path, ref_files[rel], approx), f"{context}: {rel} differs from the uninterrupted run"
    return approx


def kill_cycle(name: str, root: Path, make_args: Callable[[Path], list[str]], *, kills: int = KILLS,
               timed: bool = False, control: dict | None = None) -> dict:
    """Reference run, then ``kills`` SIGKILLed runs in one folder, then a run to the end; compare."""
    rng = random.Random(f"{SEED}-{name}")
    control = dict(control or {})
    # the reference runs in the very folder the killed runs use later (then moves aside), so paths
    # recorded in files (configs, fingerprints, manifests) are the same in both
    ref, work = root / "ref", root / "run"
    work.mkdir(parents=True)
    _ROOTS[:] = [str(ref), str(work)]
    count_file = root / "events.txt"
    tic = time.monotonic()
    assert run_hardneg(make_args(work), {**control, "count_file": str(count_file)}, work) == 0
    duration = time.monotonic() - tic
    work.rename(ref)
    work.mkdir()
    events = int(count_file.read_text())
    stats = KILL_COUNTS.setdefault(name, {})
    points = []
    for i in range(kills):
        if timed and i % 2 == 1:
            # the timer starts after the imports (a few seconds of the reference's duration)
            point = {"delay": round(rng.uniform(0.1, max(0.3, 0.6 * duration - 2.0)), 2)}
        else:
            point = {"kill_at": rng.randint(1, events)}
        points.append(point)
        context = f"{name}: kill {i + 1} at {point} (of {events} events; HARDNEG_KILL_SEED={SEED})"
        rc = run_hardneg(make_args(work), {**control, **point}, work)
        stats["killed" if rc == -9 else "missed"] = stats.get("killed" if rc == -9 else "missed", 0) + 1
        check_published(ref, work, context)
    context = f"{name}: after kills at {points} (HARDNEG_KILL_SEED={SEED})"
    assert run_hardneg(make_args(work), control, work) == 0, context
    approx = check_final(ref, work, context)
    stats["survived"] = stats.get("survived", 0) + 1
    if approx:
        stats["approx_files"] = stats.get("approx_files", 0) + len(approx)
    return {"events": events, "points": points, "approx": approx}


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_train(tmp_path_factory.mktemp("kill-data") / "tiny", filler=232)  # PQ needs 256


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory, tiny, tiny_model_dir) -> Path:
    """An embeddings folder made once, for the index kill test."""
    root = tmp_path_factory.mktemp("kill-emb")
    assert run_hardneg(["encode", str(tiny), "--model", str(tiny_model_dir), "--out", str(root / "emb"),
                        "--cache-dir", str(root / "cache"), "--max-length", "32"], {}, root) == 0
    return root / "emb"


# --------------------------------------------------------------------------- commands
def test_kill_tokenize(tmp_path, tiny, tiny_model_dir):
    kill_cycle("tokenize", tmp_path, lambda d: ["tokenize", str(tiny), "--model", str(tiny_model_dir),
                                                "--out", str(d / "tok"), "--max-length", "32"])


def test_kill_encode(tmp_path, tiny, tiny_model_dir):
    """Encoding checkpoints after every batch here, so kills land between resume points too."""
    kill_cycle("encode", tmp_path, lambda d: ["encode", str(tiny), "--model", str(tiny_model_dir),
                                              "--out", str(d / "emb"), "--cache-dir", str(d / "cache"),
                                              "--max-length", "32", "--batch-size", "16"],
               control={"encode_checkpoint_seconds": 0})


@pytest.mark.parametrize("kind", ["flat", pytest.param("pq8", marks=pytest.mark.slow)])
def test_kill_index(tmp_path, embeddings, kind):
    kill_cycle(f"index {kind}", tmp_path, lambda d: ["index", str(embeddings), "--kind", kind,
                                                     "--out", str(d / "index"), "--threads", "1"], kills=1)


def test_kill_mine(tmp_path, tiny, tiny_model_dir):
    kill_cycle("mine", tmp_path, lambda d: ["mine", str(tiny), "--model", str(tiny_model_dir), "--topk", "8",
                                            "--out", str(d / "hard.tsv"), "--cache-dir", str(d / "cache"),
                                            "--max-length", "32", "--threads", "1"],
               control={"encode_checkpoint_seconds": 0})


TRAIN = ["--max-steps", "6", "--batch-size", "4", "--lr", "1e-3", "--dev-fraction", "0.25", "--dev-every", "2",
         "--save-every", "2", "--query-max-length", "16", "--doc-max-length", "32", "--warmup-ratio", "0",
         "--threads", "1", "--resume", "--keep-checkpoints", "100"]  # every checkpoint stays comparable
METHOD_ARGS = {
    "inbatch": [], "rand": ["--topk", "8"], "bm25neg": ["--topk", "8"], "static": ["--topk", "8"],
    "star": ["--topk", "8"], "ance": ["--topk", "8", "--refresh-every", "2"],
    "adore": ["--index", "flat", "--metric", "mrr@10", "--adore-topk", "20"],
}


def train_args(method: str, tiny: Path, model: Path) -> Callable[[Path], list[str]]:
    dev_pool = [] if method == "adore" else ["--dev-pool", "0"]
    return lambda d: ["train", method, "--data", str(tiny), "--model", str(model), "--out", str(d / "out"),
                      "--cache-dir", str(d / "cache"), *TRAIN, *dev_pool, *METHOD_ARGS[method]]


#: SIGKILL once per method in the default suite for the methods whose state differs (STAR's static negatives, ANCE's
#: refresh, ADORE's index); the others share their checkpoint code and are killed under -m slow (and repeatedly below)
KILLED_BY_DEFAULT = ("star", "ance", "adore")


@pytest.mark.parametrize("method", [m if m in KILLED_BY_DEFAULT else pytest.param(m, marks=pytest.mark.slow)
                                    for m in METHOD_ARGS])
def test_kill_train(tmp_path, tiny, tiny_model_dir, method):
    kill_cycle(f"train {method}", tmp_path, train_args(method, tiny, tiny_model_dir), kills=1,
               control={"encode_checkpoint_seconds": 0})


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHOD_ARGS))
def test_kill_train_every_method_repeatedly(tmp_path, tiny, tiny_model_dir, method):
    kill_cycle(f"train {method} (slow)", tmp_path, train_args(method, tiny, tiny_model_dir),
               kills=max(3, KILLS), timed=True, control={"encode_checkpoint_seconds": 0})


def _recipe(root: Path, tiny: Path, model: Path) -> Path:
    test = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}-0\t1" for i in range(12)]
    (tiny / "qrels" / "test.tsv").write_text("\n".join(test) + "\n")
    recipe = {
        "name": "kill", "data": str(tiny), "model": str(model),
        "train": {"max_steps": 4, "batch_size": 4, "topk": 8, "dev_fraction": 0.25, "dev_every": 2,
                  "save_every": 2, "dev_pool": 0, "query_max_length": 16, "doc_max_length": 32,
                  "warmup_ratio": 0.0, "lr": 1e-3, "keep_checkpoints": 100},
        "eval": {"max_length": 32, "query_max_length": 16, "k": 20},
        "systems": [{"name": "bm25", "kind": "bm25"}, {"name": "zeroshot", "kind": "zeroshot"},
                    {"name": "rand", "method": "rand"}],
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _experiment_args(recipe: Path, *extra: str) -> Callable[[Path], list[str]]:
    """``hardneg experiment`` on a copy of ``recipe`` whose cache lives in the run's own folder."""

    def args(d: Path) -> list[str]:
        raw = yaml.safe_load(recipe.read_text())
        raw["cache_dir"] = str(d / "cache")
        own = d / "recipe.yaml"
        own.write_text(yaml.safe_dump(raw))
        return ["experiment", str(own), "--out", str(d / "exp"), *extra, "--threads", "1"]

    return args


@pytest.mark.slow
def test_kill_experiment(tmp_path, tiny, tiny_model_dir):
    """Kill a whole small recipe (BM25, zero-shot, a trained system, the report) at random points.
    The recipe's cache goes under each run's folder through HARDNEG_CACHE_DIR-free settings."""
    args = _experiment_args(_recipe(tmp_path, tiny, tiny_model_dir))
    kill_cycle("experiment", tmp_path, args, kills=max(3, KILLS), timed=True,
               control={"encode_checkpoint_seconds": 0})


def test_kill_experiment_stage(tmp_path, tiny, tiny_model_dir):
    """The default suite's experiment kill: one dense test stage (tokenize, encode, index, search, metrics)."""
    args = _experiment_args(_recipe(tmp_path, tiny, tiny_model_dir), "--only", "test-zeroshot")
    kill_cycle("experiment test-zeroshot", tmp_path, args, kills=1,
               control={"encode_checkpoint_seconds": 0})


def test_too_few_vectors_for_pq_is_a_clear_error():
    from hardneg.errors import HardnegError
    from hardneg.index.faiss_index import FaissIndex

    vectors = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    with pytest.raises(HardnegError, match="cannot train a 'pq8' index .* on 100 vectors"):
        FaissIndex.build(vectors, [str(i) for i in range(100)], "pq8")
