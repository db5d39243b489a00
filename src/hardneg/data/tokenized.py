"""Pre-tokenized store: a corpus or query set tokenized once into memory-mapped arrays.

Layout of a store folder::

    manifest.json   tokenizer fingerprint, max length, prefix, content fingerprint, counts
    ids.json        original ids, row order
    tokens.npy      all token ids, concatenated (int32, no padding)
    offsets.npy     row i is tokens[offsets[i]:offsets[i+1]] (int64, n+1 entries)

The store is written into a temporary folder and renamed into place when
complete, so a half-written store is never opened. Opening checks the
manifest against what the caller expects and refuses a mismatch (another
tokenizer, max length or corpus) with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hardneg.errors import HardnegError, MismatchError
from hardneg.io import commit_dir, file_lock, read_json, write_json, writing

STORE_VERSION = 1
CHECKED_KEYS = ("tokenizer", "max_length", "prefix", "content")


@dataclass(frozen=True)
class StoreSpec:
    """What a store is made of; two stores with equal specs hold the same tokens."""

    tokenizer: str  # tokenizer fingerprint
    max_length: int
    prefix: str
    content: str  # fingerprint of the texts (corpus hash, or hash of the query set)

    def key(self) -> str:
        raw = json.dumps([self.tokenizer, self.max_length, self.prefix, self.content, STORE_VERSION])
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


class TokenizedStore:
    """Read-only view of a store folder.

    Rows are read with ``pread`` (not a memory map) and ids are loaded only when
    asked for, so encoding a huge store keeps the process's resident memory small:
    only ``offsets`` (8 bytes per row) is held in memory.
    """

    def __init__(self, folder: str | Path, expect: StoreSpec | None = None) -> None:
        self.folder = Path(folder)
        manifest_file = self.folder / "manifest.json"
        if not manifest_file.is_file():
            raise HardnegError(
                f"{self.folder}: not a complete tokenized store (no manifest.json); "
                "delete the folder and tokenize again"
            )
        try:
            self.manifest = read_json(manifest_file)
        except (OSError, ValueError) as exc:
            raise HardnegError(f"{manifest_file}: unreadable manifest ({exc}); delete the folder and "
                               "tokenize again") from None
        if expect is not None:
            check_manifest(self.manifest, expect, self.folder)
        try:
            self.offsets = np.load(self.folder / "offsets.npy")
            tokens = np.load(self.folder / "tokens.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise HardnegError(f"{self.folder}: damaged store ({exc}); delete the folder and tokenize "
                               "again") from None
        if tokens.dtype != np.int32 or tokens.ndim != 1 or self.offsets.ndim != 1 or len(self.offsets) < 1:
            raise HardnegError(f"{self.folder}: damaged store (unexpected array layout); tokenize again")
        self._tokens_offset = int(tokens.offset)
        self._n_tokens = int(tokens.shape[0])
        del tokens
        count = self.manifest.get("count")
        if (count is not None and count + 1 != len(self.offsets)) or int(self.offsets[-1]) != self._n_tokens:
            raise HardnegError(f"{self.folder}: manifest, offsets.npy and tokens.npy disagree; tokenize again")
        self._ids: list[str] | None = None
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    @property
    def ids(self) -> list[str]:
        """Original ids in row order (read from ``ids.json`` on first use)."""
        if self._ids is None:
            with open(self.folder / "ids.json", encoding="utf-8") as fh:
                ids = json.load(fh)
            if len(ids) != len(self):
                raise HardnegError(f"{self.folder}: ids.json and offsets.npy disagree; tokenize again")
            self._ids = ids
        return self._ids

    @property
    def tokens(self) -> np.ndarray:
        """All token ids, concatenated (a read-only memory map)."""
        return np.load(self.folder / "tokens.npy", mmap_mode="r")

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        if self._fd is None:
            self._fd = os.open(self.folder / "tokens.npy", os.O_RDONLY)
        size = 4 * (end - start)
        raw = os.pread(self._fd, size, self._tokens_offset + 4 * start)
        if len(raw) != size:
            raise HardnegError(f"{self.folder}: tokens.npy is truncated; delete the folder and tokenize again")
        return np.frombuffer(raw, dtype=np.int32)

    def rows(self, indices: Iterable[int]) -> list[np.ndarray]:
        return [self[int(i)] for i in indices]


def check_manifest(manifest: dict, expect: StoreSpec, folder: Path) -> None:
    for key in CHECKED_KEYS:
        have, want = manifest.get(key), getattr(expect, key)
        if have != want:
            raise MismatchError(
                f"{folder}: tokenized store was made with {key}={have!r} but {want!r} is needed; "
                "remove the folder (or use another --cache-dir) to tokenize again"
            )


def build_store(
    records: Iterable[tuple[str, str]],
    tokenizer,
    spec: StoreSpec,
    folder: str | Path,
    *,
    total: int | None = None,
    chunk: int = 4096,
    show_progress: bool = True,
    description: str = "tokenize",
) -> TokenizedStore:
    """Tokenize ``(id, text)`` records into ``folder`` (atomic; streams in chunks: memory does not
    grow with the collection)."""
    folder = Path(folder)
    with writing(folder, "tokenized store"):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with writing(folder, "tokenized store"):
            count, n_tokens = _write_store_files(records, tokenizer, spec, tmp, chunk, total, show_progress,
                                              description)
            write_json(
                tmp / "manifest.json",
                {
                    "kind": "tokenized",
                    "version": STORE_VERSION,
                    "tokenizer": spec.tokenizer,
                    "max_length": spec.max_length,
                    "prefix": spec.prefix,
                    "content": spec.content,
                    "count": count,
                    "total_tokens": n_tokens,
                },
            )
            commit_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenizedStore(folder, expect=spec)


def _write_store_files(records, tokenizer, spec: StoreSpec, tmp: Path, chunk: int, total: int | None,
                       show_progress: bool, description: str) -> tuple[int, int]:
    """Stream ``records`` into ``tmp``: memory stays bounded by one chunk whatever the corpus size."""
    count = n_tokens = 0
    raw_tokens, raw_offsets = tmp / "tokens.raw", tmp / "offsets.raw"
    with open(raw_tokens, "wb") as tok_out, open(raw_offsets, "wb") as off_out, \
            open(tmp / "ids.json", "w", encoding="utf-8") as ids_out, \
            tqdm(total=total, desc=description, unit="text", disable=not show_progress, mininterval=1.0) as bar:
        off_out.write(np.zeros(1, dtype=np.int64).tobytes())
        ids_out.write("[")
        for batch in _chunks(records, chunk):
            texts = [spec.prefix + text for _, text in batch] if spec.prefix else [t for _, t in batch]
            enc = tokenizer(
                texts,
                truncation=True,
                max_length=spec.max_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            ends = np.empty(len(batch), dtype=np.int64)
            for j, ((rid, _), seq) in enumerate(zip(batch, enc, strict=True)):
                ids_out.write(("," if count else "") + json.dumps(rid))
                count += 1
                n_tokens += len(seq)
                ends[j] = n_tokens
                tok_out.write(np.asarray(seq, dtype=np.int32).tobytes())
            off_out.write(ends.tobytes())
            bar.update(len(batch))
        ids_out.write("]")
    if not count:
        raise HardnegError("nothing to tokenize: the collection is empty")
    _raw_to_npy(raw_tokens, tmp / "tokens.npy", np.int32, n_tokens)
    _raw_to_npy(raw_offsets, tmp / "offsets.npy", np.int64, count + 1)
    return count, n_tokens


def _raw_to_npy(raw: Path, npy: Path, dtype, n: int) -> None:
    """Prefix a raw array file with an ``.npy`` header, copying in blocks (no whole-array load)."""
    with open(raw, "rb") as src, open(npy, "wb") as dst:
        np.lib.format.write_array_header_1_0(
            dst, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n,)})
        shutil.copyfileobj(src, dst, 16 << 20)
    raw.unlink()


def open_or_build_store(
    records_fn,
    tokenizer,
    spec: StoreSpec,
    folder: str | Path,
    **kwargs,
) -> TokenizedStore:
    """Reuse the store in ``folder`` if it matches ``spec``; else build it from ``records_fn()``."""
    folder = Path(folder)
    with file_lock(f"{folder}.lock"):
        if (folder / "manifest.json").is_file():
            return TokenizedStore(folder, expect=spec)
        return build_store(records_fn(), tokenizer, spec, folder, **kwargs)


def texts_fingerprint(records: Iterable[tuple[str, str]]) -> str:
    """Content hash of an in-memory set of ``(id, text)`` records (e.g. queries)."""
    h = hashlib.sha256()
    for rid, text in records:
        h.update(rid.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x01")
    return h.hexdigest()[:16]


def _chunks(records: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    batch: list[tuple[str, str]] = []
    for rec in records:
        batch.append(rec)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
