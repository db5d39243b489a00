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

Under ``torchrun``, :func:`encode_over_ranks` is the same on disk inside one
job: every rank encodes its shard (resumable), a barrier waits for the others'
shares (equal by construction, so no rank waits in a collective on more than
the difference), then one rank merges while the others wait on the output's
file lock, not in a collective. :func:`sharded_encode_token_lists` shares the
batches out in memory and gathers the whole result on every rank.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist

from hardneg import distributed as dist
from hardneg.errors import HardnegError
from hardneg.index.encode import (
    EMB_VERSION,
    Embeddings,
    copy_ids,
    embeddings_key,
    encode_batches_resumable,
    encode_store,
)
from hardneg.io import commit_dir, file_lock, read_json, write_json
from hardneg.model.encoding import encode_batches, encode_token_lists, length_sorted_batches

SHARD_KIND = "embeddings-shard"
_SHARD_NAME = re.compile(r"^(\d+)-of-(\d+)$")


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise HardnegError(f"--shard must look like i/n (e.g. 0/4), not {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise HardnegError(f"--shard {spec}: need 0 <= i < n")
    return i, n


def shard_batches(batches: Sequence[np.ndarray], shard: int, n_shards: int) -> list[int]:
    """Indices of the length-sorted batches shard ``shard`` of ``n_shards`` encodes: round-robin
    (``shard, shard + n, …``), so every shard gets a mix of long and short batches, and each batch
    is the very batch the unsharded run encodes (hence bit-identical embeddings)."""
    if not 0 <= shard < n_shards:
        raise HardnegError(f"shard {shard} is not in [0, {n_shards})")
    return list(range(shard, len(batches), n_shards))


@torch.inference_mode()
def sharded_encode_token_lists(model, token_lists: Sequence[Sequence[int]], side: str, *,
                               batch_size: int = 64, show_progress: bool = False,
                               gather_rows: int = 65536, precision: str = "fp32") -> np.ndarray:
    """:func:`hardneg.index.encode.encode_token_lists` with the batches shared out over the ranks (forward
    passes at ``precision``); every rank gets the whole ``(n, dim)`` result, bit-identical to the one-process
    encoding."""
    if not dist.is_distributed():
        return encode_token_lists(model, token_lists, side, batch_size=batch_size, show_progress=show_progress,
                                  precision=precision)
    n = len(token_lists)
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=n)
    batches = length_sorted_batches(lengths, batch_size)
    world, me = dist.world_size(), dist.rank()
    rows_of = [np.concatenate([batches[b] for b in shard_batches(batches, r, world)] or
                              [np.empty(0, dtype=np.int64)]) for r in range(world)]
    # batch by batch: each batch is exactly one of the unsharded run's batches (same rows, same padding)
    model.eval()
    mine = [batches[b] for b in shard_batches(batches, me, world)]
    parts = [emb.float().cpu().numpy() for _, emb in encode_batches(
        model, lambda rows: [token_lists[i] for i in rows], mine, side, desc="encode (sharded)",
        show_progress=show_progress and dist.is_main(), precision=precision)]
    local = np.concatenate(parts) if parts else np.empty((0, model.dim), dtype=np.float32)
    out = np.empty((n, model.dim), dtype=np.float32)
    longest = max(len(r) for r in rows_of)
    device = dist.device_of_group()
    for start in range(0, longest, gather_rows):  # gather in slices: bounded extra memory
        stop = min(start + gather_rows, longest)
        piece = np.zeros((stop - start, model.dim), dtype=np.float32)
        have = local[start:stop]
        piece[: len(have)] = have
        gathered = [torch.empty(piece.shape, dtype=torch.float32, device=device) for _ in range(world)]
        tdist.all_gather(gathered, torch.from_numpy(piece).to(device))
        for r, part in enumerate(gathered):
            rows = rows_of[r][start:stop]
            out[rows] = part[: len(rows)].cpu().numpy()
    return out


def encode_over_ranks(model, store, side: str, out: str | Path, *, batch_size: int = 64,
                      show_progress: bool = True, precision: str = "fp32") -> Embeddings:
    """``store`` encoded into the embeddings folder ``out``, the work shared by the ranks under torchrun.

    One process: :func:`hardneg.index.encode.encode_store`. Under torchrun every rank must call it: rank
    ``r`` of ``N`` encodes shard ``r`` into ``OUT.shards/`` (:func:`encode_shard`: resumable, and a finished
    shard is kept, so a rerun after a crash encodes only what is left), a barrier waits for the other
    shares, then the first rank to take ``OUT``'s lock merges (:func:`merge_shards`) while the others wait
    on that lock, and every rank opens the result: bit-identical to the one-process encoding. A finished
    ``OUT`` is opened at once (rank 0's view decides for all)."""
    out = Path(out)
    if not dist.is_distributed():
        return encode_store(model, store, side, out, batch_size=batch_size, show_progress=show_progress,
                            precision=precision)
    key = embeddings_key(model.side_identity(side), store.manifest, side, precision)
    if not dist.broadcast_object((out / "manifest.json").is_file()):
        shard, n = dist.rank(), dist.world_size()
        with file_lock(f"{shard_folder(out, shard, n)}.lock"):  # another job's rank `shard` on the same cache
            encode_shard(model, store, side, out, shard, n, batch_size=batch_size,
                         show_progress=show_progress and dist.is_main(), precision=precision)
        dist.barrier()  # every shard is finished: the wait is the difference between equal shares
        merge_shards(out, n_shards=n, exist_ok=True)
    return Embeddings(out, expect_key=key)


def shards_root(out: str | Path) -> Path:
    return Path(f"{out}.shards")


def shard_folder(out: str | Path, shard: int, n_shards: int) -> Path:
    return shards_root(out) / f"{shard}-of-{n_shards}"


def shard_rows(lengths: np.ndarray, batch_size: int, shard: int, n_shards: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The batches shard ``shard`` of ``n_shards`` encodes and their rows, in encoding order."""
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
    precision: str = "fp32",
) -> Path:
    """Encode shard ``shard`` of ``n_shards`` of ``store`` into ``OUT.shards/<shard>-of-<n>/`` (the forward
    passes at ``precision``, which enters the key unless fp32: :func:`hardneg.index.encode.embeddings_key`).

    An interrupted shard resumes from its ``.partial`` folder; a finished one is left alone (after checking
    it was made by the same encoder from the same texts).
    """
    folder = shard_folder(out, shard, n_shards)
    key = embeddings_key(model.side_identity(side), store.manifest, side, precision)
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
        desc=f"encode shard {shard}/{n_shards}", show_progress=show_progress, checkpoint_seconds=checkpoint_seconds,
        precision=precision)
    np.save(partial / "rows.npy", rows)
    if shard == 0:  # the corpus ids, once (copied as a file: a huge id list is never loaded for it)
        copy_ids(store, partial / "ids.json")
    write_json(partial / "manifest.json", {
        "kind": SHARD_KIND, "version": EMB_VERSION, "key": key, "side": side, "shard": shard,
        "n_shards": n_shards, "batch_size": batch_size, "n_batches": -(-len(store) // batch_size),
        "count": int(len(rows)), "total": len(store), "rows_sha256": state["rows_sha256"], "dim": model.dim,
        "dtype": "float32", "precision": precision, "encoder": model.identity(),
        "content": store.manifest.get("content"), "normalized": bool(model.config.normalize),
    })
    (partial / "progress.json").unlink(missing_ok=True)
    commit_dir(partial, folder)
    return folder


def shard_status(out: str | Path, n_shards: int | None = None) -> tuple[int | None, dict[int, dict], list[str]]:
    """``(n_shards, {shard: manifest} of the complete shards, names of incomplete ones)``; with ``n_shards``
    only the shards of that split count (another split's, left by an earlier run, are ignored)."""
    root = shards_root(out)
    if not root.is_dir():
        raise HardnegError(f"{root}: no shards here (encode with `hardneg encode --shard i/n --out {out}`)")
    complete: dict[int, dict] = {}
    incomplete: list[str] = []
    counts: set[int] = set()
    for entry in sorted(root.iterdir()):
        name = entry.name
        match = _SHARD_NAME.match(name.removesuffix(".partial"))
        if match and n_shards is not None and int(match.group(2)) != n_shards:
            continue
        if name.endswith(".partial"):
            incomplete.append(name[: -len(".partial")])
            continue
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


def merge_shards(out: str | Path, *, keep_shards: bool = False, n_shards: int | None = None,
                 exist_ok: bool = False) -> Embeddings:
    """Check every shard of ``OUT.shards/`` is complete and consistent, then write ``OUT`` atomically.

    ``n_shards``: merge that split (another split's shards are ignored, and removed with the folder).
    ``exist_ok``: a finished ``OUT`` (merged by another process while this one waited for the lock) is
    opened instead of refused."""
    out = Path(out)
    with file_lock(f"{out}.lock"):
        if (out / "manifest.json").is_file():
            if exist_ok:
                return Embeddings(out)
            raise HardnegError(f"{out}: already holds finished embeddings; remove it to merge again")
        n, complete, incomplete = shard_status(out, n_shards)
        if n is None:
            raise HardnegError(f"{shards_root(out)}: no shards here")
        missing = [i for i in range(n) if i not in complete]
        if missing:
            running = f" ({', '.join(sorted(set(incomplete)))} unfinished)" if incomplete else ""
            raise HardnegError(f"{shards_root(out)}: {len(missing)} of {n} shards are not complete: "
                               f"{', '.join(f'{i}-of-{n}' for i in missing)}{running}; "
                               "run (or rerun) `hardneg encode --shard i/n` for them")
        first = complete[0]
        same = ("key", "side", "n_shards", "batch_size", "n_batches", "total", "dim", "content", "precision")
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
                "count": total, "dim": dim, "dtype": "float32", "precision": first.get("precision", "fp32"),
                "encoder": first["encoder"],
                "content": first["content"], "normalized": first["normalized"],
            })
            commit_dir(partial, out)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if not keep_shards:
            shutil.rmtree(shards_root(out), ignore_errors=True)
        return Embeddings(out, expect_key=first["key"])
