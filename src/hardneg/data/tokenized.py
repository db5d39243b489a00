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
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardneg.errors import HardnegError, MismatchError
from hardneg.io import commit_dir, file_lock, read_json, write_json

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
    """Read-only view of a store folder (memory-mapped)."""

    def __init__(self, folder: str | Path, expect: StoreSpec | None = None) -> None:
        self.folder = Path(folder)
        manifest_file = self.folder / "manifest.json"
        if not manifest_file.is_file():
            raise HardnegError(
                f"{self.folder}: not a complete tokenized store (no manifest.json); "
                "delete the folder and tokenize again"
            )
        self.manifest = read_json(manifest_file)
        if expect is not None:
            check_manifest(self.manifest, expect, self.folder)
        self.tokens = np.load(self.folder / "tokens.npy", mmap_mode="r")
        self.offsets = np.load(self.folder / "offsets.npy", mmap_mode="r")
        with open(self.folder / "ids.json", encoding="utf-8") as fh:
            self.ids: list[str] = json.load(fh)
        if len(self.ids) + 1 != len(self.offsets):
            raise HardnegError(f"{self.folder}: ids.json and offsets.npy disagree; tokenize again")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(np.asarray(self.offsets))

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])

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
    """Tokenize ``(id, text)`` records into ``folder`` (atomic; streams in chunks)."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        ids: list[str] = []
        lengths: list[int] = []
        raw_tokens = tmp / "tokens.raw"
        with open(raw_tokens, "wb") as out, tqdm(
            total=total, desc=description, unit="text", disable=not show_progress, mininterval=1.0
        ) as bar:
            for batch in _chunks(records, chunk):
                texts = [spec.prefix + text for _, text in batch] if spec.prefix else [t for _, t in batch]
                enc = tokenizer(
                    texts,
                    truncation=True,
                    max_length=spec.max_length,
                    return_attention_mask=False,
                    return_token_type_ids=False,
                )["input_ids"]
                for (rid, _), seq in zip(batch, enc, strict=True):
                    ids.append(rid)
                    lengths.append(len(seq))
                    out.write(np.asarray(seq, dtype=np.int32).tobytes())
                bar.update(len(batch))
        if not ids:
            raise HardnegError("nothing to tokenize: the collection is empty")
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
        tokens = np.fromfile(raw_tokens, dtype=np.int32)
        np.save(tmp / "tokens.npy", tokens)
        raw_tokens.unlink()
        np.save(tmp / "offsets.npy", offsets)
        with open(tmp / "ids.json", "w", encoding="utf-8") as fh:
            json.dump(ids, fh)
        write_json(
            tmp / "manifest.json",
            {
                "kind": "tokenized",
                "version": STORE_VERSION,
                "tokenizer": spec.tokenizer,
                "max_length": spec.max_length,
                "prefix": spec.prefix,
                "content": spec.content,
                "count": len(ids),
                "total_tokens": int(offsets[-1]),
            },
        )
        commit_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenizedStore(folder, expect=spec)


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
