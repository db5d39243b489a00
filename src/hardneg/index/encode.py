"""Texts → embeddings.

Batches are formed over rows sorted by token length (longest first), so a
batch pads to its own longest row and almost no compute is spent on padding;
rows are written back in their original order. Corpus encoding writes a
float32 ``.npy`` memmap into ``<out>.partial/`` with a progress file, and can
be resumed after an interruption; the folder is renamed to ``<out>`` only
when every row is encoded, so an unfinished one is never taken as complete.

Every encoding of token rows (in memory, into a resumable memmap, sharded over
ranks, and training's encoding with gradients) runs :func:`encode_batches`, the
one loop that pads each batch to its own longest row and runs the model on it.

``precision`` (``fp32``, ``bf16``, ``fp16``; ``--precision``) runs each forward pass under
:func:`torch.autocast` for the model's device type (:func:`forward_autocast`); the embeddings are
stored as float32 either way. A precision other than fp32 is part of the embeddings' cache key
(:func:`embeddings_key`), so fp32 keys, and the caches made under them, are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hardneg.data.tokenized import TokenizedStore
from hardneg.errors import HardnegError, MismatchError
from hardneg.io import commit_dir, file_lock, read_json, write_json, writing

EMB_VERSION = 1
#: the precisions an encoder's forward pass may run at (``--precision``)
PRECISIONS = ("fp32", "bf16", "fp16")


def forward_autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context an encoder forward pass runs in at ``precision``: nothing for fp32, else
    :func:`torch.autocast` for ``device``'s type at bfloat16/float16."""
    if precision not in PRECISIONS:
        raise HardnegError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def check_encode_precision(precision: str, device: torch.device) -> None:
    """A clear error (before any work) when ``device`` cannot encode at ``precision``."""
    if precision not in PRECISIONS:
        raise HardnegError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return
    device = torch.device(device)
    if not torch.amp.is_autocast_available(device.type):
        raise HardnegError(f"--precision {precision}: torch {torch.__version__} has no autocast on {device}; "
                           "use --precision fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise HardnegError(f"--precision bf16: {device} ({torch.cuda.get_device_name(device)}) does not "
                           "support bfloat16; use --precision fp16 or fp32")


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length, longest first (deterministic)."""
    if batch_size < 1:
        raise HardnegError(f"batch size must be positive, not {batch_size}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(input_ids, attention_mask)`` tensors."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def pad_id(model) -> int:
    """The id padding fills batches with: the tokenizer's pad token, else 0."""
    pad = model.tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def encode_batches(
    model,
    rows_of: Callable[[np.ndarray], Sequence[Sequence[int]]],
    batches: Sequence[np.ndarray],
    side: str,
    *,
    start: int = 0,
    desc: str | None = None,
    show_progress: bool = False,
    precision: str = "fp32",
) -> Iterator[tuple[int, torch.Tensor]]:
    """The encoding loop: ``(b, embeddings of batch b)`` for ``b`` from ``start`` on, in order.

    ``rows_of(batches[b])`` gives batch ``b``'s token id lists; each batch is padded to its own
    longest row and encoded by ``model`` on its device, the forward pass under
    :func:`forward_autocast` at ``precision`` (the output is then bf16/fp16: the caller casts). The
    embeddings are the model's output tensors (in whatever grad mode the caller runs: inference for
    corpus encoding, with gradients in training); the model's train/eval mode is the caller's too.
    An autocast the caller holds around the loop (training's) stays in force at fp32.
    """
    pad = pad_id(model)
    device = model.device
    with tqdm(total=len(batches), initial=start, desc=desc, unit="batch",
              disable=not show_progress, mininterval=1.0) as bar:
        for b in range(start, len(batches)):
            ids, mask = pad_batch(rows_of(batches[b]), pad)
            with forward_autocast(precision, device):
                emb = model(ids.to(device), mask.to(device), side=side)
            yield b, emb
            bar.update(1)


def progress_label(side: str) -> str:
    """The progress bar's label for encoding ``side``."""
    return f"encode {'queries' if side == 'query' else 'docs'}"


@torch.inference_mode()
def encode_token_lists(
    model,
    token_lists: Sequence[Sequence[int]],
    side: str,
    *,
    batch_size: int = 64,
    show_progress: bool = False,
    precision: str = "fp32",
) -> np.ndarray:
    """Encode pre-tokenized rows held in memory (forward passes at ``precision``); returns float32
    ``(n, dim)`` in input order."""
    model.eval()
    out = np.empty((len(token_lists), model.dim), dtype=np.float32)
    if not len(token_lists):
        return out
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
    batches = length_sorted_batches(lengths, batch_size)
    for b, emb in encode_batches(model, lambda rows: [token_lists[i] for i in rows], batches, side,
                                 desc=progress_label(side), show_progress=show_progress, precision=precision):
        out[batches[b]] = emb.float().cpu().numpy()
    return out


def encode_texts(model, texts: Sequence[str], side: str, *, batch_size: int = 64,
                 show_progress: bool = False, precision: str = "fp32") -> np.ndarray:
    """Encode a list of texts with ``model``'s ``side`` tower (``"query"`` or ``"doc"``): tokenized with
    that side's prefix and max length, then :func:`encode_token_lists`; float32 ``(n, dim)`` in input order."""
    ids = model.tokenize(texts, side)["input_ids"]
    return encode_token_lists(model, ids, side, batch_size=batch_size, show_progress=show_progress,
                              precision=precision)


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


def _copy_ids(store, dest: Path) -> None:
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
    _copy_ids(store, partial / "ids.json")
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
