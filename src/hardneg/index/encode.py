"""A tokenized corpus → an embeddings folder.

Batches are formed over rows sorted by token length (longest first) and encoded by
:func:`hardneg.model.encoding.encode_batches`; rows are written back in their original order. Corpus encoding writes a
float32 ``.npy`` memmap into ``<out>.partial/`` with a progress file, and can
be resumed after an interruption; the folder is renamed to ``<out>`` only
when every row is encoded, so an unfinished one is never taken as complete.

``precision`` (``fp32``, ``bf16``, ``fp16``; ``--precision``) runs each forward pass under
:func:`torch.autocast` for the model's device type (:func:`~hardneg.model.encoding.forward_autocast`);
the embeddings are stored as float32 either way. A precision other than fp32 is part of the embeddings' cache key
(:func:`embeddings_key`), so fp32 keys, and the caches made under them, are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hardneg.data.tokenized import TokenizedStore
from hardneg.errors import HardnegError, MismatchError
from hardneg.io import commit_dir, file_lock, read_json, write_json, writing
from hardneg.model.encoding import PRECISIONS, encode_batches, length_sorted_batches, progress_label

EMB_VERSION = 1


def embeddings_key(encoder_identity: dict, store_manifest: dict, side: str, precision: str = "fp32") -> str:
    """The cache key of ``side`` embeddings of a tokenized store by an encoder; ``precision`` enters it only
    when it is not fp32 (so every fp32 key, and the folders named after it, is what it was before)."""
    parts = [encoder_identity, store_manifest.get("content"), store_manifest.get("max_length"),
             store_manifest.get("prefix"), side, EMB_VERSION]
    if precision != "fp32":
        if precision not in PRECISIONS:
            raise HardnegError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        parts.append({"precision": precision})
    raw = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class Embeddings:
    """A finished embeddings folder: ``embeddings.npy`` (memmap), ``ids.json``, ``manifest.json``."""

    def __init__(self, folder: str | Path, expect_key: str | None = None) -> None:
        self.folder = Path(folder)
        if not (self.folder / "manifest.json").is_file():
            hint = " (an interrupted run: rerun the command to resume)" if Path(
                f"{self.folder}.partial").exists() else ""
            raise HardnegError(f"{self.folder}: no finished embeddings here{hint}")
        self.manifest = read_json(self.folder / "manifest.json")
        if expect_key is not None and self.manifest.get("key") != expect_key:
            raise MismatchError(
                f"{self.folder}: embeddings were made by another encoder or from other texts; "
                "remove the folder to encode again"
            )
        self.vectors = np.load(self.folder / "embeddings.npy", mmap_mode="r")
        count = self.manifest.get("count")
        if count is not None and self.vectors.shape[0] != count:
            raise HardnegError(f"{self.folder}: embeddings.npy and the manifest disagree; encode again")
        self._ids: list[str] | None = None

    @property
    def ids(self) -> list[str]:
        """Original ids in row order (read from ``ids.json`` on first use: a huge list costs memory)."""
        if self._ids is None:
            with open(self.folder / "ids.json", encoding="utf-8") as fh:
                ids = json.load(fh)
            if self.vectors.shape[0] != len(ids):
                raise HardnegError(f"{self.folder}: embeddings.npy and ids.json disagree; encode again")
            self._ids = ids
        return self._ids

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


@torch.inference_mode()
def encode_store(
    model,
    store: TokenizedStore,
    side: str,
    out: str | Path,
    *,
    batch_size: int = 64,
    show_progress: bool = True,
    checkpoint_seconds: float = 30.0,
    precision: str = "fp32",
) -> Embeddings:
    """Encode every row of ``store`` into ``out`` (resumes an interrupted ``out.partial``), the forward
    passes at ``precision`` (float32 embeddings either way; the precision is in the key unless fp32).

    A lock on ``out.lock`` makes a second process wanting the same embeddings wait for them.
    """
    out = Path(out)
    key = embeddings_key(model.side_identity(side), store.manifest, side, precision)
    with file_lock(f"{out}.lock"):
        if (out / "manifest.json").is_file():
            return Embeddings(out, expect_key=key)
        with writing(out, "embeddings"):
            return _encode_store_unsafe(model, store, side, out, key, batch_size, show_progress, checkpoint_seconds,
                                        precision)


def copy_ids(store, dest: Path) -> None:
    """The store's ids.json, copied as a file (a huge id list is never loaded for it)."""
    src = Path(getattr(store, "folder", "")) / "ids.json"
    if src.is_file():
        shutil.copyfile(src, dest)
    else:
        with open(dest, "w", encoding="utf-8") as fh:
            json.dump(store.ids, fh)


def encode_batches_resumable(model, store, side: str, batches: list[np.ndarray], targets: Sequence,
                             n_rows: int, partial: Path, state: dict, *, desc: str, show_progress: bool,
                             checkpoint_seconds: float, precision: str = "fp32") -> None:
    """Encode ``batches`` of ``store`` into ``partial/embeddings.npy`` (``n_rows`` rows; batch ``b`` goes to
    rows ``targets[b]``), resumably, the forward passes at ``precision`` (the caller's ``state`` holds the
    key that names it).

    Progress is saved to ``partial/progress.json`` (``state`` plus ``done``, the batches finished) every
    ``checkpoint_seconds``; a saved progress whose other fields differ from ``state`` (another encoder,
    batch size or corpus) is discarded with the folder. On return the embeddings are flushed; the caller
    writes its manifest, removes ``progress.json`` (absent when there was nothing to encode) and commits.
    """
    progress_file = partial / "progress.json"
    state = {**state, "done": 0}
    if progress_file.is_file():
        saved = read_json(progress_file)
        if {k: saved.get(k) for k in state if k != "done"} == {k: v for k, v in state.items() if k != "done"}:
            state["done"] = int(saved["done"])
        else:
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    emb_file = partial / "embeddings.npy"
    if state["done"] and emb_file.is_file():
        vectors = np.load(emb_file, mmap_mode="r+")
    else:
        state["done"] = 0
        vectors = np.lib.format.open_memmap(emb_file, mode="w+", dtype=np.float32, shape=(n_rows, model.dim))
    model.eval()
    last = time.monotonic()
    for b, emb in encode_batches(model, store.rows, batches, side, start=state["done"], desc=desc,
                                 show_progress=show_progress, precision=precision):
        vectors[targets[b]] = emb.float().cpu().numpy()
        if time.monotonic() - last > checkpoint_seconds or b + 1 == len(batches):
            vectors.flush()
            state["done"] = b + 1
            write_json(progress_file, state)
            last = time.monotonic()
            # map the file afresh: pages written so far leave this process's resident memory
            del vectors
            vectors = np.load(emb_file, mmap_mode="r+")
    vectors.flush()
    del vectors


def _encode_store_unsafe(model, store, side, out: Path, key: str, batch_size: int, show_progress: bool,
                         checkpoint_seconds: float, precision: str) -> Embeddings:
    partial = Path(f"{out}.partial")
    batches = length_sorted_batches(store.lengths, batch_size)
    encode_batches_resumable(
        model, store, side, batches, batches, len(store), partial,
        {"key": key, "batch_size": batch_size, "n_batches": len(batches)},
        desc=progress_label(side), show_progress=show_progress,
        checkpoint_seconds=checkpoint_seconds, precision=precision)
    copy_ids(store, partial / "ids.json")
    write_json(
        partial / "manifest.json",
        {
            "kind": "embeddings",
            "version": EMB_VERSION,
            "key": key,
            "side": side,
            "count": len(store),
            "dim": model.dim,
            "dtype": "float32",
            "precision": precision,  # of the forward passes (the vectors are float32 either way)
            "encoder": model.identity(),
            "content": store.manifest.get("content"),
            "normalized": bool(model.config.normalize),
        },
    )
    (partial / "progress.json").unlink(missing_ok=True)
    commit_dir(partial, out)
    return Embeddings(out, expect_key=key)
