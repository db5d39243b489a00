"""Write failures: a full disk or a read-only output folder ends with a clear
:class:`~hardneg.errors.WriteError` (a HardnegError) and leaves no partial artifact.

Two ways to fail a write:

* in-process patches: files opened for writing under the output folder raise ``OSError(ENOSPC)``
  once a byte budget is spent (or ``EROFS`` at once, for a read-only folder), and the C/C++/Rust
  writers (Faiss, ``torch.save``, safetensors) raise the errors they raise on a full disk. chmod is
  not used: the tests may run as root, where it blocks nothing.
* a real limit in a child process (``RLIMIT_FSIZE``, SIGXFSZ ignored): the kernel fails the write
  with EFBIG, whatever library makes it; the CLI must exit 2 with a one-line message.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_train
from hardneg.errors import HardnegError, WriteError

SRC = Path(__file__).resolve().parents[2] / "src"


class _FullFile:
    """A file whose writes fail with ENOSPC once ``budget`` bytes have been written."""

    def __init__(self, fh, budget: list[int]) -> None:
        self._fh, self._budget = fh, budget

    def write(self, data):
        size = len(data.encode() if isinstance(data, str) else bytes(data))
        if size > self._budget[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget[0] -= size
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __iter__(self):
        return iter(self._fh)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


@contextlib.contextmanager
def failing_disk(under: Path, *, budget: int = 0, read_only: bool = False):
    """Writes under ``under`` fail: ENOSPC after ``budget`` bytes, or EROFS at once (``read_only``)."""
    import faiss
    import safetensors.torch

    under = str(under)
    real_open, real_mkdir, real_replace = builtins.open, os.mkdir, os.replace
    left = [budget]

    def inside(path) -> bool:
        return isinstance(path, str | os.PathLike) and os.path.abspath(os.fspath(path)).startswith(under)

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs) if not (read_only and inside(file) and any(
            c in mode for c in "wax+")) else None
        if fh is None:
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(file))
        if inside(file) and any(c in mode for c in "wax+"):
            return _FullFile(fh, left)
        return fh

    def fake_mkdir(path, *args, **kwargs):
        if read_only and inside(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    def fake_replace(src, dst, *args, **kwargs):
        if read_only and inside(dst):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(dst))
        return real_replace(src, dst, *args, **kwargs)

    def c_writer(exc):
        def write(*args, **kwargs):
            if any(inside(a) for a in args if isinstance(a, str | os.PathLike)):
                raise exc
            raise AssertionError("unexpected write outside the test folder")
        return write

    with contextlib.ExitStack() as stack:
        from unittest import mock

        stack.enter_context(mock.patch.object(builtins, "open", fake_open))
        stack.enter_context(mock.patch.object(io, "open", fake_open))
        stack.enter_context(mock.patch.object(os, "mkdir", fake_mkdir))
        stack.enter_context(mock.patch.object(os, "replace", fake_replace))
        stack.enter_context(mock.patch.object(faiss, "write_index", c_writer(RuntimeError(
            "Error in faiss::FileIOWriter::operator() at impl/io.cpp:98: Error: 'ret == (nitems)' failed: "
            "write error in index.faiss: 0 != 1 (No space left on device)"))))
        stack.enter_context(mock.patch.object(torch, "save", c_writer(RuntimeError(
            "[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0 / "
            "PytorchStreamWriter failed writing file data/0: file write failed"))))
        stack.enter_context(mock.patch.object(safetensors.torch, "save_file", c_writer(OSError(
            errno.ENOSPC, "No space left on device"))))
        yield


def leftovers(folder: Path) -> list[str]:
    """Files under ``folder`` except lock files and an encoding's resume folder (``<out>.partial``,
    never taken as complete: rerunning resumes from it)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.suffix != ".lock" and ".partial" not in p.parent.name)


def assert_clean_failure(info, folder: Path, artifact: Path) -> None:
    err = info.value
    assert isinstance(err, WriteError) and isinstance(err, HardnegError)
    assert str(artifact) in str(err) and "could not write" in str(err)
    assert not artifact.exists(), "a partial artifact was left under the final name"
    left = leftovers(folder)
    assert not left, f"temporary files left behind: {left}"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from hardneg.model.encoder import DualEncoder

    return DualEncoder.from_pretrained(tiny_model_dir, doc_max_length=16)


@pytest.fixture(scope="module")
def store(tmp_path_factory, model):
    from hardneg.data.tokenized import StoreSpec, build_store, texts_fingerprint
    from hardneg.model.fingerprints import tokenizer_fingerprint

    records = [(f"d{i}", f"text {i} " * (1 + i % 5)) for i in range(300)]
    spec = StoreSpec(tokenizer_fingerprint(model.tokenizer), 16, "", texts_fingerprint(records))
    return build_store(iter(records), model.tokenizer, spec, tmp_path_factory.mktemp("s") / "store",
                       show_progress=False)


# --------------------------------------------------------------------------- every writer
WRITERS = ["write_json", "write_trec", "write_negatives", "tokenized store", "embeddings", "faiss index",
           "model", "checkpoint", "bm25 index"]


def _write(kind: str, out: Path, model, store) -> Path:
    """Write one artifact of ``kind`` into ``out``; returns its final path."""
    if kind == "write_json":
        from hardneg.io import write_json

        write_json(out / "metrics.json", {"x": list(range(1000))})
        return out / "metrics.json"
    if kind == "write_trec":
        from hardneg.retrieval.runs import write_trec

        write_trec({"q1": [(f"d{i}", 1.0 / (i + 1)) for i in range(500)]}, out / "run.trec")
        return out / "run.trec"
    if kind == "write_negatives":
        from hardneg.negatives.formats.files import write_negatives

        write_negatives(out / "hard.tsv", {"q1": [f"d{i}" for i in range(500)]})
        return out / "hard.tsv"
    if kind == "tokenized store":
        from hardneg.data.tokenized import build_store

        build_store(((f"d{i}", f"text {i}") for i in range(300)), model.tokenizer, _spec(store), out / "store",
                    show_progress=False)
        return out / "store"
    if kind == "embeddings":
        from hardneg.index.encode import encode_store

        encode_store(model, store, "doc", out / "emb", show_progress=False)
        return out / "emb"
    if kind == "faiss index":
        from hardneg.index.faiss_index import FaissIndex

        vectors = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
        FaissIndex.build(vectors, [str(i) for i in range(50)]).save(out / "index")
        return out / "index"
    if kind == "model":
        model.save(out / "model")
        return out / "model"
    if kind == "checkpoint":
        from hardneg.train.checkpoint import save_checkpoint

        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        save_checkpoint(out / "checkpoints" / "step-0000002", model, opt, sched, {"step": 2}, {})
        return out / "checkpoints" / "step-0000002"
    if kind == "bm25 index":
        from hardneg.data.records import Doc
        from hardneg.retrieval.bm25 import BM25

        index = BM25.build([Doc(f"d{i}", f"word{i} common text") for i in range(50)])
        index.save(out / "bm25")
        return out / "bm25"
    raise AssertionError(kind)


def _spec(store):
    from hardneg.data.tokenized import StoreSpec

    m = store.manifest
    return StoreSpec(m["tokenizer"], m["max_length"], m["prefix"], "other-content")


@pytest.mark.parametrize("kind", WRITERS)
def test_disk_full_is_a_write_error_and_leaves_nothing(kind, tmp_path, model, store):
    out = tmp_path / "out"
    out.mkdir()
    with failing_disk(out, budget=200), pytest.raises(HardnegError) as info:
        artifact = out / {"write_json": "metrics.json", "write_trec": "run.trec", "write_negatives": "hard.tsv",
                          "tokenized store": "store", "embeddings": "emb", "faiss index": "index",
                          "model": "model", "checkpoint": "checkpoints/step-0000002", "bm25 index": "bm25"}[kind]
        _write(kind, out, model, store)
    assert_clean_failure(info, out, artifact)
    assert "disk is full" in str(info.value)


@pytest.mark.parametrize("kind", WRITERS)
def test_read_only_folder_is_a_write_error_and_leaves_nothing(kind, tmp_path, model, store):
    out = tmp_path / "out"
    out.mkdir()
    artifact = out / {"write_json": "metrics.json", "write_trec": "run.trec", "write_negatives": "hard.tsv",
                      "tokenized store": "store", "embeddings": "emb", "faiss index": "index",
                      "model": "model", "checkpoint": "checkpoints/step-0000002", "bm25 index": "bm25"}[kind]
    with failing_disk(out, read_only=True), pytest.raises(HardnegError) as info:
        _write(kind, out, model, store)
    assert_clean_failure(info, out, artifact)


def test_replacing_a_complete_folder_that_fails_keeps_the_old_one(tmp_path, model):
    """commit_dir moves the old folder aside; if the new one cannot take its place, the old one returns."""
    from hardneg.io import commit_dir

    final, new = tmp_path / "model", tmp_path / "new"
    final.mkdir()
    (final / "weights").write_text("old")
    new.mkdir()
    (new / "weights").write_text("new")
    real = os.replace
    calls = []

    def second_fails(src, dst, *a, **k):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)

    from unittest import mock

    with mock.patch.object(os, "replace", second_fails), pytest.raises(WriteError):
        commit_dir(new, final)
    assert (final / "weights").read_text() == "old"


# --------------------------------------------------------------------------- the CLI, real kernel limit
def _limited(limit: int):
    def setup():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return setup


def _cli(args: list[str], cwd: Path, limit: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "hardneg", "--quiet", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=600, preexec_fn=_limited(limit) if limit else None)


def _biggest(folder: Path) -> int:
    return max(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _check_cli_failure(proc, artifact: Path) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error:" in proc.stderr and "could not write" in proc.stderr, proc.stderr[-2000:]
    assert not artifact.exists()
    left = [p for p in artifact.parent.glob(f".{artifact.name}*")] + list(artifact.parent.glob("*.tmp-*"))
    assert not left, left


def test_cli_tokenize_on_a_full_disk_exits_2_with_a_message(tmp_path, tiny_model_dir):
    data = write_tiny_train(tmp_path / "data", filler=100)
    args = ["tokenize", str(data), "--model", str(tiny_model_dir), "--max-length", "32"]
    assert _cli([*args, "--out", str(tmp_path / "ref")], tmp_path).returncode == 0
    limit = _biggest(tmp_path / "ref") - 1  # the largest file of the store cannot be written
    proc = _cli([*args, "--out", str(tmp_path / "tok")], tmp_path, limit)
    _check_cli_failure(proc, tmp_path / "tok")


@pytest.mark.slow
def test_cli_train_on_a_full_disk_exits_2_with_a_message(tmp_path, tiny_model_dir):
    data = write_tiny_train(tmp_path / "data")
    args = ["train", "inbatch", "--data", str(data), "--model", str(tiny_model_dir), "--max-steps", "2",
            "--batch-size", "4", "--topk", "8", "--dev-every", "2", "--save-every", "2", "--dev-pool", "0",
            "--query-max-length", "16", "--doc-max-length", "32", "--cache-dir", str(tmp_path / "cache"),
            "--no-dev-at-start"]
    assert _cli([*args, "--out", str(tmp_path / "ref")], tmp_path).returncode == 0
    limit = _biggest(tmp_path / "ref" / "checkpoints") - 1  # optimizer.pt: the checkpoint fails
    proc = _cli([*args, "--out", str(tmp_path / "run")], tmp_path, limit)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "could not write" in proc.stderr
    assert not list((tmp_path / "run" / "checkpoints").glob("*")), "a partial checkpoint was left"
