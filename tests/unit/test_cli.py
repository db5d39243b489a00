"""The CLI end to end on a tiny BEIR folder with a tiny random model."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hardneg.cli import app
from hardneg.errors import MismatchError
from hardneg.retrieval.runs import read_run

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, ["--quiet", *map(str, args)], catch_exceptions=True)
    return result


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HARDNEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_retrieve_writes_run_and_metrics_and_reuses_cache(tiny_beir, tiny_st_dir, env):
    out = env / "run1"
    result = invoke("retrieve", f"{tiny_beir}:test", "--model", tiny_st_dir, "--out", out, "--k", "10",
                    "--format", "both")
    assert result.exit_code == 0, result.output
    run = read_run(out / "run.trec")
    assert set(run) == {f"q{i}" for i in range(6)} and all(len(v) == 10 for v in run.values())
    assert read_run(out / "run.msmarco.tsv").keys() == run.keys()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"RR@10", "R@100", "R@1000", "nDCG@10"}
    emb_dirs = sorted(p for p in (env / "cache" / "embeddings").iterdir() if p.is_dir())
    stamp = (emb_dirs[0] / "embeddings.npy").stat().st_mtime_ns
    result = invoke("retrieve", f"{tiny_beir}:test", "--model", tiny_st_dir, "--out", env / "run2", "--k", "10")
    assert result.exit_code == 0, result.output
    assert sorted(p for p in (env / "cache" / "embeddings").iterdir() if p.is_dir()) == emb_dirs
    assert (emb_dirs[0] / "embeddings.npy").stat().st_mtime_ns == stamp, "cached embeddings re-encoded"
    assert read_run(env / "run2" / "run.trec") == run


def test_encode_index_search_equals_retrieve(tiny_beir, tiny_st_dir, env):
    result = invoke("retrieve", f"{tiny_beir}:test", "--model", tiny_st_dir, "--out", env / "r", "--k", "5")
    assert result.exit_code == 0
    assert invoke("encode", tiny_beir, "--model", tiny_st_dir, "--out", env / "emb").exit_code == 0
    assert invoke("index", env / "emb", "--kind", "flat", "--out", env / "idx").exit_code == 0
    result = invoke("search", env / "idx", f"{tiny_beir}:test", "--model", tiny_st_dir, "--out", env / "s", "--k", "5")
    assert result.exit_code == 0, result.output
    assert read_run(env / "s" / "run.trec") == read_run(env / "r" / "run.trec")


def test_search_refuses_an_index_from_another_model(tiny_beir, tiny_st_dir, tiny_model_dir, env):
    assert invoke("encode", tiny_beir, "--model", tiny_st_dir, "--out", env / "emb").exit_code == 0
    assert invoke("index", env / "emb", "--out", env / "idx").exit_code == 0
    result = invoke("search", env / "idx", f"{tiny_beir}:test", "--model", tiny_model_dir)
    assert isinstance(result.exception, MismatchError)
    assert "built by another model" in str(result.exception)


def test_evaluate_json_and_compare(tiny_beir, env):
    assert invoke("bm25", f"{tiny_beir}:test", "--out", env / "bm25", "--k", "10").exit_code == 0
    metrics = json.loads((env / "bm25" / "metrics.json").read_text())
    run = read_run(env / "bm25" / "run.trec")
    for i in range(6):  # every query names its topic's words: its three documents come first
        assert {d.split("-")[0] for d, _ in run[f"q{i}"][:3]} == {f"d{i}"}
    result = invoke("evaluate", env / "bm25" / "run.trec", "--data", f"{tiny_beir}:test", "--json",
                    "-M", "nDCG@10", "-M", "RR@10")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"nDCG@10": metrics["nDCG@10"], "RR@10": metrics["RR@10"]}
    result = invoke("compare", f"a={env / 'bm25' / 'run.trec'}", f"b={env / 'bm25' / 'run.trec'}",
                    "--data", f"{tiny_beir}:test", "--json")
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    assert table["baseline"] == "a" and table["queries"] == 6
    assert table["pvalues"]["b"]["nDCG@10"] == 1.0  # identical runs


def test_bad_input_exits_2_with_file_and_line_and_no_traceback(tiny_beir, tmp_path):
    corpus = tiny_beir / "corpus.jsonl"
    lines = corpus.read_text().splitlines()
    lines[2] = '{"_id": "broken", "text": '
    corpus.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-m", "hardneg", "bm25", f"{tiny_beir}:test", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env={"HARDNEG_CACHE_DIR": str(tmp_path / "c"),
                                                               "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert "corpus.jsonl:3" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
    debug = subprocess.run([sys.executable, "-m", "hardneg", "--debug", "bm25", f"{tiny_beir}:test"],
                           capture_output=True, text=True, env={"HARDNEG_CACHE_DIR": str(tmp_path / "c"),
                                                                "PATH": "/usr/bin:/bin"})
    assert "Traceback" in debug.stderr


def test_unknown_split_and_measure_are_clear_errors(tiny_beir, env):
    result = invoke("bm25", f"{tiny_beir}:dev")
    assert result.exit_code != 0 and "test" in str(result.exception)
    assert invoke("bm25", f"{tiny_beir}:test", "--out", env / "b").exit_code == 0
    result = invoke("evaluate", env / "b" / "run.trec", "--data", f"{tiny_beir}:test", "-M", "nonsense@3")
    assert result.exit_code != 0 and "nonsense" in str(result.exception)


def test_train_and_mine_commands(tiny_beir, tiny_model_dir, env):
    import shutil

    shutil.copy(tiny_beir / "qrels" / "test.tsv", tiny_beir / "qrels" / "train.tsv")
    result = invoke("mine", tiny_beir, "--model", tiny_model_dir, "--topk", "5", "--out", env / "hard.tsv")
    assert result.exit_code == 0, result.output
    mined = read_run(env / "hard.tsv")
    assert all(len(v) == 5 and f"d{q[1:]}-0" not in {d for d, _ in v} for q, v in mined.items())
    out = env / "star"
    result = invoke("train", "star", "--data", tiny_beir, "--model", tiny_model_dir, "--out", out,
                    "--negatives", env / "hard.tsv", "--max-steps", "2", "--batch-size", "2", "--topk", "5",
                    "--dev-fraction", "0.34", "--dev-every", "2", "--save-every", "2", "--dev-pool", "0",
                    "--alpha", "0.5", "--doc-max-length", "32")
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["alpha"] == 0.5 and saved["method"] == "star" and saved["max_steps"] == 2
    assert (out / "model" / "modules.json").is_file()
    result = invoke("train", "star", "--data", tiny_beir, "--model", tiny_model_dir, "--out", out,
                    "--max-steps", "2", "--preset", "nonexistent")
    assert result.exit_code != 0 and "unknown preset" in str(result.exception)


def test_tokenize_and_encode_query_side(tiny_beir, tiny_st_dir, env):
    result = invoke("tokenize", f"{tiny_beir}:test", "--model", tiny_st_dir, "--side", "queries", "--out", env / "qtok")
    assert result.exit_code == 0, result.output
    from hardneg.data.tokenized import TokenizedStore

    assert TokenizedStore(env / "qtok").ids == [f"q{i}" for i in range(6)]
    result = invoke("encode", f"{tiny_beir}:test", "--model", tiny_st_dir, "--side", "queries", "--out", env / "qemb")
    assert result.exit_code == 0, result.output
    from hardneg.index.encode import Embeddings
    from hardneg.model.encoder import DualEncoder
    from hardneg.model.encoding import encode_texts

    emb = Embeddings(env / "qemb")
    model = DualEncoder.from_pretrained(tiny_st_dir)
    expected = encode_texts(model, [f"what about {t}" for t in ["apple orchard harvest"]], "query")
    import numpy as np

    np.testing.assert_allclose(np.asarray(emb.vectors)[0], expected[0], atol=1e-5)


@pytest.mark.parametrize("command", ["retrieve", "encode", "mine"])
def test_device_cuda_without_cuda_is_refused_before_any_work(tiny_beir, tiny_st_dir, env, monkeypatch, command):
    import torch

    from hardneg.devices import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = env / "out"
    extra = ["--topk", "5"] if command == "mine" else []
    result = invoke(command, f"{tiny_beir}:test", "--model", tiny_st_dir, "--device", "cuda", "--out", out, *extra)
    assert isinstance(result.exception, DeviceError), result.output
    assert "--device cuda was asked for, but this machine has no CUDA device" in str(result.exception)
    assert not out.exists()


def test_retrieve_device_cuda_without_cuda_exits_2_with_one_line(tiny_beir, tiny_st_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hardneg", "retrieve", f"{tiny_beir}:test", "--model",
                           str(tiny_st_dir), "--device", "cuda", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True,
                          env={"HARDNEG_CACHE_DIR": str(tmp_path / "c"), "PATH": "/usr/bin:/bin",
                               "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2, proc.stderr
    assert "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
    assert not (tmp_path / "o").exists()


def test_every_command_takes_dash_h_and_keeps_angle_brackets_and_panels():
    """``-h`` works on every command; help keeps ``pq<M>`` and ``path[:split]`` (markdown mode ate ``<M>``);
    train's settings sit in their panels."""
    import typer.main

    names = sorted(typer.main.get_command(app).commands)
    assert {"retrieve", "index", "train", "experiment", "export", "mine"} <= set(names)
    texts = {}
    for name in [*names, ""]:  # "": the app's own -h
        result = runner.invoke(app, [name, "-h"] if name else ["-h"], terminal_width=200)
        assert result.exit_code == 0, (name, result.output)
        texts[name] = result.output
    assert "pq<M>" in texts["index"] and "ivf<L>pq<M>" in texts["index"]
    assert "path[:split]" in texts["retrieve"] and "irds:<id>" in texts["retrieve"]
    for panel in ("Optimisation", "Encoder", "Negatives and loss", "ADORE", "Evaluation", "Checkpoints"):
        assert f"─ {panel} ─" in texts["train"]
    flagged = [name for name, text in texts.items() if "<bool>" in text]
    assert not flagged, f"a flag shows a value type in the help of: {flagged}"


def test_flags_read_as_flags_in_help():
    """A flag or a ``--x/--no-x`` pair shows no value type (it was ``--quiet -q <bool>``, as if ``-q`` took
    a value); an option that takes a value keeps its type."""

    def help_of(*argv: str) -> str:
        result = runner.invoke(app, [*argv, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        return result.output

    top, train, experiment = help_of(), help_of("train", "star"), help_of("experiment")
    assert re.search(r"--quiet +-q +No progress bars", top), top
    assert re.search(r"--resume +Continue from", train), train
    assert re.search(r"--normalize +--no-normalize +L2-normalise", train), train
    assert re.search(r"--max-steps +<int> +Optimiser steps", train), train
    assert re.search(r"--dry-run +Check the recipe", experiment), experiment
    assert re.search(r"--threads +<int> +CPU threads", experiment), experiment


# ----------------------------------------------------------------------------- quiet libraries
#: what transformers (a bar per model loaded / saved) and bm25s (a DEBUG log line) printed on every run
NOISE = re.compile(r"Loading weights|Writing model shards|DEBUG")


def hardneg_process(tmp_path, *args, **env_extra: str) -> subprocess.CompletedProcess:
    """``python -m hardneg ARGS`` in a fresh process (its own logging set-up, as a user's shell gets)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env.update(HARDNEG_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", **env_extra)
    return subprocess.run([sys.executable, "-m", "hardneg", *map(str, args)], capture_output=True, text=True, env=env)


def test_libraries_print_no_bars_or_debug_lines_beside_hardnegs_progress(tiny_beir, tiny_model_dir, tmp_path):
    """A command that loads a model, one that loads two and saves one, and BM25: transformers' bars and
    bm25s's DEBUG line are gone, hardneg's own progress and messages stay."""
    proc = hardneg_process(tmp_path, "retrieve", f"{tiny_beir}:test", "--model", tiny_model_dir,
                           "--out", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    assert "encode docs" in proc.stderr and "run and metrics written" in proc.stderr
    assert not NOISE.search(proc.stderr), proc.stderr
    merge = ["merge", tiny_model_dir, tiny_model_dir, "--alpha", "0.5", "--out"]
    proc = hardneg_process(tmp_path, *merge, tmp_path / "m")
    assert proc.returncode == 0 and "0.5*A + 0.5*B" in proc.stderr, proc.stderr
    assert not NOISE.search(proc.stderr), proc.stderr
    proc = hardneg_process(tmp_path, "bm25", f"{tiny_beir}:test", "--out", tmp_path / "b")
    assert proc.returncode == 0 and "run and metrics written" in proc.stderr, proc.stderr
    assert not NOISE.search(proc.stderr), proc.stderr
    # the user's own setting wins, and it is what the bars looked like
    proc = hardneg_process(tmp_path, *merge, tmp_path / "m2", HF_HUB_DISABLE_PROGRESS_BARS="0")
    assert proc.returncode == 0 and "Loading weights" in proc.stderr and "Writing model shards" in proc.stderr


def test_quiet_prints_nothing_but_errors(tiny_beir, tiny_model_dir, tmp_path):
    for argv in (["retrieve", f"{tiny_beir}:test", "--model", tiny_model_dir, "--out", tmp_path / "r"],
                 ["merge", tiny_model_dir, tiny_model_dir, "--alpha", "0.5", "--out", tmp_path / "m"],
                 ["bm25", f"{tiny_beir}:test", "--out", tmp_path / "b"]):
        proc = hardneg_process(tmp_path, "-q", *argv)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "", proc.stderr
    assert (tmp_path / "r" / "run.trec").is_file() and (tmp_path / "b" / "run.trec").is_file()
    proc = hardneg_process(tmp_path, "-q", "bm25", f"{tiny_beir}:dev")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "dev" in proc.stderr, proc.stderr


def test_quiet_libraries_for_a_library_caller(caplog, monkeypatch):
    """Called from code after the libraries are imported: bm25s's logger, reset to DEBUG by its import,
    passes on errors only; transformers' bars are off; huggingface_hub's download bars stay unless asked."""
    import bm25s  # noqa: F401
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    from hardneg.logs import quiet_libraries

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    transformers_logging.enable_progress_bar()
    quiet_libraries()
    assert not transformers_logging.is_progress_bar_enabled()
    assert are_progress_bars_disabled() and not are_progress_bars_disabled("huggingface_hub.http_get")
    bm25_log = logging.getLogger("bm25s")
    bm25_log.setLevel(logging.DEBUG)  # what `import bm25s` does
    with caplog.at_level(logging.DEBUG):
        bm25_log.debug("Building index from IDs objects")
        bm25_log.error("a real error")
    assert "Building index" not in caplog.text and "a real error" in caplog.text
    quiet_libraries(downloads=False)
    assert are_progress_bars_disabled("huggingface_hub.http_get")


def test_sigterm_runs_the_clean_up_and_exits_143(tmp_path):
    """A scheduler's SIGTERM unwinds like Ctrl-C: ``finally`` blocks run (an experiment stage's heartbeat writes
    its time, locks are released), then exit 143 with one line, no traceback."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "app.py"
    script.write_text(f'''
import time
from pathlib import Path
import typer
from hardneg.cli.common import run_app

app = typer.Typer()

@app.command()
def work() -> None:
    Path({str(tmp_path / "started")!r}).write_text("1")
    try:
        time.sleep(60)
    finally:
        Path({str(tmp_path / "cleaned")!r}).write_text("1")

run_app(app)
''')
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if (tmp_path / "started").exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert (tmp_path / "started").exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert (tmp_path / "cleaned").exists()
    assert stderr.strip().endswith("terminated") and "Traceback" not in stderr
