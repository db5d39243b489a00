"""Sharded corpus encoding: N processes (torchrun ranks or job-array tasks) each encode a share, one merges.

The corpus is cut into the same length-sorted batches the one-process
:func:`hardneg.index.encode.encode_store` uses; shard ``i`` of ``n`` encodes
batches ``i, i + n, i + 2n, …`` (round-robin, so every shard gets long and
short texts alike). Each batch is exactly a batch of the unsharded run (same
rows, same padding), so the merged embeddings are bit-identical to the
unsharded ones.

Layout: shard ``i`` of ``n`` for the embeddings folder ``OUT`` is written to
``OUT.shards/<i>-of-<n>/`` (via ``…partial``, resumable, renamed when
complete) with ``embeddings.npy`` (its rows, in its batch order), ``rows.npy``
(their corpus rows) and ``manifest.json`` (embeddings key, shard, batch
layout, row count and hash). :func:`merge_shards` checks that every shard of
``n`` is present, complete and made by the same encoder from the same texts,
and that their rows cover the corpus exactly once, then writes ``OUT``
atomically in the one-process layout.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from hardneg.errors import HardnegError
from hardneg.index.encode import (
    EMB_VERSION,
    Embeddings,
    _copy_ids,
    embeddings_key,
    encode_batches_resumable,
    length_sorted_batches,
)
from hardneg.io import commit_dir, file_lock, read_json, write_json

SHARD_KIND = "embeddings-shard"
_SHARD_NAME = re.compile(r"^(\d+)-of-(\d+)$")


def shards_root(out: str | Path) -> Path:
    return Path(f"{out}.shards")


def shard_folder(out: str | Path, shard: int, n_shards: int) -> Path:
    return shards_root(out) / f"{shard}-of-{n_shards}"


def shard_rows(lengths: np.ndarray, batch_size: int, shard: int, n_shards: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The batches shard ``shard`` of ``n_shards`` encodes and their rows, in encoding order."""
    from hardneg.train.distributed import shard_batches

    batches = length_sorted_batches(lengths, batch_size)
    mine = [batches[b] for b in shard_batches(batches, shard, n_shards)]
    rows = np.concatenate(mine) if mine else np.empty(0, dtype=np.int64)
    return mine, rows.astype(np.int64)


def _rows_hash(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


@torch.inference_mode()
def encode_shard(
    model,
    store,
    side: str,
    out: str | Path,
    shard: int,
    n_shards: int,
    *,
    batch_size: int = 64,
    show_progress: bool = True,
    checkpoint_seconds: float = 30.0,
) -> Path:
    """Encode shard ``shard`` of ``n_shards`` of ``store`` into ``OUT.shards/<shard>-of-<n>/``.

    An interrupted shard resumes from its ``.partial`` folder; a finished one is left alone (after checking
    it was made by the same encoder from the same texts).
    """
    folder = shard_folder(out, shard, n_shards)
    key = embeddings_key(model.side_identity(side), store.manifest, side)
    batches, rows = shard_rows(store.lengths, batch_size, shard, n_shards)
    state = {"key": key, "batch_size": batch_size, "shard": shard, "n_shards": n_shards,
             "rows_sha256": _rows_hash(rows)}
    if (folder / "manifest.json").is_file():
        done = read_json(folder / "manifest.json")
        if {k: done.get(k) for k in ("key", "batch_size", "rows_sha256")} != {
                k: state[k] for k in ("key", "batch_size", "rows_sha256")}:
            raise HardnegError(f"{folder}: a finished shard made by another encoder, batch size or corpus; "
                               "remove it (or the whole .shards folder) to encode again")
        return folder
    partial = folder.with_name(folder.name + ".partial")
    starts = np.concatenate([[0], np.cumsum([len(b) for b in batches])]).astype(np.int64)
    encode_batches_resumable(
        model, store, side, batches, [slice(int(starts[b]), int(starts[b + 1])) for b in range(len(batches))],
        len(rows), partial, state,
        desc=f"encode shard {shard}/{n_shards}", show_progress=show_progress, checkpoint_seconds=checkpoint_seconds)
    np.save(partial / "rows.npy", rows)
    if shard == 0:  # the corpus ids, once (copied as a file: a huge id list is never loaded for it)
        _copy_ids(store, partial / "ids.json")
    write_json(partial / "manifest.json", {
        "kind": SHARD_KIND, "version": EMB_VERSION, "key": key, "side": side, "shard": shard,
        "n_shards": n_shards, "batch_size": batch_size, "n_batches": len(length_sorted_batches(store.lengths,
                                                                                             batch_size)),
        "count": int(len(rows)), "total": len(store), "rows_sha256": state["rows_sha256"], "dim": model.dim,
        "dtype": "float32", "encoder": model.identity(), "content": store.manifest.get("content"),
        "normalized": bool(model.config.normalize),
    })
    (partial / "progress.json").unlink(missing_ok=True)
    commit_dir(partial, folder)
    return folder


def shard_status(out: str | Path) -> tuple[int | None, dict[int, dict], list[str]]:
    """``(n_shards, {shard: manifest} of the complete shards, names of incomplete ones)``."""
    root = shards_root(out)
    if not root.is_dir():
        raise HardnegError(f"{root}: no shards here (encode with `hardneg encode --shard i/n --out {out}`)")
    complete: dict[int, dict] = {}
    incomplete: list[str] = []
    counts: set[int] = set()
    for entry in sorted(root.iterdir()):
        name = entry.name
        if name.endswith(".partial"):
            incomplete.append(name[: -len(".partial")])
            continue
        match = _SHARD_NAME.match(name)
        if not match or not entry.is_dir():
            continue
        counts.add(int(match.group(2)))
        if (entry / "manifest.json").is_file():
            complete[int(match.group(1))] = read_json(entry / "manifest.json")
        else:
            incomplete.append(name)
    if len(counts) > 1:
        raise HardnegError(f"{root}: shards of different splits ({sorted(counts)} shards) are mixed; "
                           "remove the folder and encode again with one --shard i/n")
    return (counts.pop() if counts else None), complete, incomplete


def merge_shards(out: str | Path, *, keep_shards: bool = False) -> Embeddings:
    """Check every shard of ``OUT.shards/`` is complete and consistent, then write ``OUT`` atomically."""
    out = Path(out)
    with file_lock(f"{out}.lock"):
        if (out / "manifest.json").is_file():
            raise HardnegError(f"{out}: already holds finished embeddings; remove it to merge again")
        n, complete, incomplete = shard_status(out)
        if n is None:
            raise HardnegError(f"{shards_root(out)}: no shards here")
        missing = [i for i in range(n) if i not in complete]
        if missing:
            running = f" ({', '.join(sorted(set(incomplete)))} unfinished)" if incomplete else ""
            raise HardnegError(f"{shards_root(out)}: {len(missing)} of {n} shards are not complete: "
                               f"{', '.join(f'{i}-of-{n}' for i in missing)}{running}; "
                               "run (or rerun) `hardneg encode --shard i/n` for them")
        first = complete[0]
        same = ("key", "side", "n_shards", "batch_size", "n_batches", "total", "dim", "content")
        for i, manifest in complete.items():
            if manifest.get("kind") != SHARD_KIND:
                raise HardnegError(f"{shard_folder(out, i, n)}: not an embeddings shard")
            differ = [k for k in same if manifest.get(k) != first.get(k)]
            if differ:
                raise HardnegError(f"{shard_folder(out, i, n)}: shard disagrees with shard 0 on "
                                   f"{', '.join(differ)} (another encoder, corpus or batch size); encode again")
        total, dim = int(first["total"]), int(first["dim"])
        seen = np.zeros(total, dtype=bool)
        partial = Path(f"{out}.partial")
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        try:
            vectors = np.lib.format.open_memmap(partial / "embeddings.npy", mode="w+", dtype=np.float32,
                                                shape=(total, dim))
            for i in range(n):
                folder = shard_folder(out, i, n)
                rows = np.load(folder / "rows.npy")
                part = np.load(folder / "embeddings.npy", mmap_mode="r")
                if _rows_hash(rows) != complete[i]["rows_sha256"] or part.shape != (len(rows), dim) \
                        or len(rows) != complete[i]["count"]:
                    raise HardnegError(f"{folder}: rows.npy / embeddings.npy do not match its manifest; "
                                       "encode this shard again")
                if rows.size and (rows.min() < 0 or rows.max() >= total or seen[rows].any()):
                    raise HardnegError(f"{folder}: rows out of range or encoded by another shard too")
                seen[rows] = True
                vectors[rows] = part
            if not seen.all():
                raise HardnegError(f"{shards_root(out)}: {int((~seen).sum())} corpus rows are in no shard; "
                                   "encode again")
            vectors.flush()
            del vectors
            shutil.copyfile(shard_folder(out, 0, n) / "ids.json", partial / "ids.json")
            write_json(partial / "manifest.json", {
                "kind": "embeddings", "version": EMB_VERSION, "key": first["key"], "side": first["side"],
                "count": total, "dim": dim, "dtype": "float32", "encoder": first["encoder"],
                "content": first["content"], "normalized": first["normalized"],
            })
            commit_dir(partial, out)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if not keep_shards:
            shutil.rmtree(shards_root(out), ignore_errors=True)
        return Embeddings(out, expect_key=first["key"])
