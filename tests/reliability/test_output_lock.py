"""One process per output: a second ``hardneg`` on the same output is refused at once (exit 2, the
holder named); a lock left by a SIGKILLed process does not block the rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hardneg.cli import app
from hardneg.locks import OutputLockedError, lock_path_for, output_lock

SRC = Path(__file__).resolve().parents[2] / "src"
HOLD = textwrap.dedent("""
    import sys, time
    from hardneg.locks import output_lock
    with output_lock(sys.argv[1], "hardneg train star --out " + sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def holder():
    """``holder(out)``: a live process holding ``out``'s lock (killed at the end)."""
    procs: list[subprocess.Popen] = []

    def start(out: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                                env=_env())
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _hardneg(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hardneg", "--quiet", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)


def test_second_mine_refused_then_killed_holder_taken_over(tmp_path, tiny_beir, holder):
    out = tmp_path / "hard.tsv"
    proc = holder(out)
    lock = lock_path_for(out)
    info = json.loads(lock.read_text())
    assert info["pid"] == proc.pid and info["command"].startswith("hardneg train star")
    args = ["mine", f"{tiny_beir}:test", "--model", "bm25", "--topk", "3", "--out", out,
            "--cache-dir", tmp_path / "cache"]
    refused = _hardneg(*args, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    text = " ".join(refused.stderr.split())
    assert f"pid {proc.pid}" in text and "is in use" in text and "hardneg train star" in text
    assert not out.exists() and not (tmp_path / "hard.tsv.partial").exists()

    proc.send_signal(signal.SIGKILL)  # no handler runs: the lock file stays, the kernel drops the lock
    proc.wait()
    assert lock.is_file()
    done = _invoke(*args)  # in this process (a fresh one is slow to start): the dead holder's lock is taken over
    assert done.exit_code == 0, done.output
    assert out.read_text().count("\n") == 12  # 6 queries x their 2 matching non-positives
    assert not lock.exists()  # released and removed


def _invoke(*args):
    return CliRunner().invoke(app, ["--quiet", *map(str, args)], catch_exceptions=True)


@pytest.mark.parametrize("command", ["train", "encode", "index", "experiment"])
def test_every_writer_refuses_a_held_output(tmp_path, tiny_beir, tiny_model_dir, holder, monkeypatch, command):
    monkeypatch.setenv("HARDNEG_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    if command == "train":
        args = ["train", "inbatch", "--data", f"{tiny_beir}:test", "--model", tiny_model_dir, "--out", out]
    elif command == "encode":
        args = ["encode", tiny_beir, "--model", tiny_model_dir, "--out", out, "--max-length", "16"]
    elif command == "index":
        emb = tmp_path / "emb"
        made = _invoke("encode", tiny_beir, "--model", tiny_model_dir, "--out", emb, "--max-length", "16")
        assert made.exit_code == 0, made.output
        args = ["index", emb, "--kind", "flat", "--out", out]
    else:
        recipe = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
        args = ["experiment", recipe, "--data-dir", tmp_path, "--out", out]
    proc = holder(out)
    result = _invoke(*args)
    assert isinstance(result.exception, OutputLockedError), result.output
    assert f"pid {proc.pid}" in str(result.exception)
    assert not out.exists()  # refused before writing anything


def test_lock_is_beside_and_reentrant_after_release(tmp_path):
    out = tmp_path / "model"
    with output_lock(out, "first") as path:
        assert path == tmp_path / "model.run.lock" and json.loads(path.read_text())["command"] == "first"
        with pytest.raises(OutputLockedError):  # flock locks are per open file: also within one process
            with output_lock(out, "second"):
                pass
    assert not path.exists()
    with output_lock(out, "third") as again:
        assert json.loads(again.read_text())["command"] == "third"


def test_torchrun_ranks_other_than_0_do_not_lock(tmp_path, monkeypatch):
    out = tmp_path / "model"
    with output_lock(out, "rank 0"):
        monkeypatch.setenv("RANK", "1")
        with output_lock(out, "rank 1") as path:  # the same job's other rank: not refused
            assert path is None
        with pytest.raises(OutputLockedError):  # a rank's own output (a shard) is locked by every rank
            with output_lock(out, "rank 1 shard", every_rank=True):
                pass
