"""Embeddings and indexes: ``encode`` (resumable, sharded), ``encode-merge`` and ``index``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from hardneg.cli.common import (
    BatchOpt,
    CacheOpt,
    DataArg,
    DeviceOpt,
    EfSearchOpt,
    MaxLenOpt,
    ModelOpt,
    NormOpt,
    NprobeOpt,
    PoolingOpt,
    ThreadsOpt,
    dataset_tag,
    default_out,
    info,
    join_torchrun,
    model_tag,
    open_dataset,
    open_model,
    progress,
    side_kind,
    use_threads,
)
from hardneg.errors import HardnegError

#: ``--precision`` of the commands that encode (the forward passes; embeddings are stored float32 either way)
PrecisionOpt = Annotated[str, typer.Option("--precision",
    help="fp32, bf16 or fp16: the encoder's forward passes under autocast (embeddings stored float32; "
         "bf16/fp16 embeddings are cached apart from fp32 ones). bf16 is slow on most CPUs.")]


def encode(
    data: DataArg,
    model: ModelOpt = "minilm",
    out_dir: Annotated[Path | None, typer.Option("--out", "-o",
        help="Embeddings folder (default runs/<data>-<model>-emb).")] = None,
    side: Annotated[str, typer.Option(help="`docs` (the corpus) or `queries` (the split's queries).")] = "docs",
    batch_size: BatchOpt = 64,
    max_length: MaxLenOpt = None,
    pooling: PoolingOpt = None,
    normalize: NormOpt = None,
    cache_dir: CacheOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "auto",
    shard: Annotated[str | None, typer.Option("--shard", help="Encode only shard `i/n` (0-based) into "
                                              "OUT.shards/ (job arrays); join them with `hardneg encode-merge OUT`. "
                                              "Under torchrun each rank encodes its shard and rank 0 merges.")] = None,
    precision: PrecisionOpt = "fp32",
) -> None:
    """Encode a corpus (or a split's queries) into a float32 embeddings folder; resumes if interrupted.

    Example: `hardneg encode ../shared/data/scifact --model minilm --out runs/scifact-emb`

    Sharded: `torchrun --nproc_per_node 4 -m hardneg encode DATA --out OUT`, or one job per
    `--shard i/4` and then `hardneg encode-merge OUT`.
    """
    from hardneg import distributed as dist
    from hardneg.artifacts import side_store
    from hardneg.index.encode import encode_store
    from hardneg.model.encoding import check_encode_precision

    use_threads(threads)
    launched = join_torchrun()
    if launched and shard:
        raise HardnegError("--shard is for separate jobs; under torchrun every rank encodes its own shard")
    dataset = open_dataset(data, cache_dir=cache_dir)
    encoder = open_model(model, pooling, normalize, max_length, device=device)
    if launched:
        encoder.to(dist.device_of_group())  # NCCL: this rank's GPU
    check_encode_precision(precision, encoder.device)
    kind = side_kind(side)
    out_dir = out_dir or default_out(dataset_tag(dataset), model_tag(model), f"{kind}-emb")
    from hardneg.locks import output_lock

    if shard is None and not dist.is_distributed():
        with output_lock(out_dir):  # <out>.run.lock beside the folder (published by a rename)
            with dist.main_first():
                store = side_store(encoder, dataset, kind, cache_dir, show_progress=progress())
            emb = encode_store(encoder, store, kind, out_dir, batch_size=batch_size, show_progress=progress(),
                               precision=precision)
        info(f"{len(emb)} x {emb.dim} embeddings in {out_dir}")
        return
    from hardneg.index.shards import encode_shard, merge_shards, parse_shard

    i, n = parse_shard(shard) if shard else (dist.rank(), dist.world_size())
    with output_lock(f"{out_dir}.shard-{i}-of-{n}", every_rank=True):  # each shard's writer, one at a time
        # the first rank to take the store's lock tokenizes; the others wait on that lock, not in a collective
        store = side_store(encoder, dataset, kind, cache_dir, show_progress=progress())
        folder = encode_shard(encoder, store, kind, out_dir, i, n, batch_size=batch_size,
                              show_progress=progress(), precision=precision)
    if not launched:
        info(f"shard {i}/{n} in {folder}; when all {n} are done: hardneg encode-merge {out_dir}")
        return
    dist.barrier()
    if dist.is_main():
        with output_lock(out_dir):
            emb = merge_shards(out_dir)
        info(f"{len(emb)} x {emb.dim} embeddings in {out_dir} (merged from {n} shards)")
    dist.barrier()


def encode_merge(
    out_dir: Annotated[Path, typer.Argument(help="The embeddings folder given to `hardneg encode --shard i/n --out`.")],
    keep_shards: Annotated[bool, typer.Option("--keep-shards", help="Keep OUT.shards/ after merging.")] = False,
) -> None:
    """Join the shards of `hardneg encode --shard i/n` into one embeddings folder, after checking that
    every shard is complete and made by the same encoder from the same texts.

    Example: `hardneg encode-merge runs/msmarco-emb`
    """
    from hardneg.index.shards import merge_shards
    from hardneg.locks import output_lock

    with output_lock(out_dir):
        emb = merge_shards(out_dir, keep_shards=keep_shards)
    info(f"{len(emb)} x {emb.dim} embeddings in {out_dir}")



def index_cmd(
    embeddings: Annotated[Path, typer.Argument(help="Embeddings folder written by `hardneg encode`.")],
    kind: Annotated[str, typer.Option("--kind",
        help="flat, pq<M> (pq48, pq96), ivfpq (IVF with sqrt(n) lists, PQ dim/8), ivf<L>pq<M> "
             "(e.g. ivf4096pq96), hnsw, hnsw<L>, factory:<string>.")] = "flat",
    out_dir: Annotated[Path | None, typer.Option("--out", "-o",
        help="Index folder (default <embeddings>-<kind>).")] = None,
    threads: ThreadsOpt = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
) -> None:
    """Build a Faiss index over an embeddings folder and save it with its manifest.

    The embeddings are read from their memory map in batches (never copied whole into RAM);
    `--nprobe` / `--ef-search` are stored as the index's search defaults (`hardneg search`
    and `retrieve` can override them).

    Example: `hardneg index runs/scifact-emb --kind ivf256pq48 --nprobe 16 --out runs/scifact-ivfpq`
    """
    from hardneg.index.encode import Embeddings
    from hardneg.index.faiss_index import FaissIndex

    use_threads(threads)
    emb = Embeddings(embeddings)
    out_dir = out_dir or Path(f"{embeddings}-{kind.replace(':', '_').replace(',', '_')}")
    from hardneg.locks import output_lock

    start = time.perf_counter()
    with output_lock(out_dir):  # <out>.run.lock beside the folder (published by a rename)
        index = FaissIndex.from_embeddings(emb, kind, nprobe=nprobe, ef_search=ef_search,
                                           show_progress=progress())
        index.save(out_dir)
    flat_bytes = len(emb) * emb.dim * 4
    info(f"{kind} index of {len(index)} vectors in {out_dir} "
          f"({index.manifest['bytes'] / 1e6:.2f} MB, {index.manifest['bytes'] / flat_bytes:.1%} of flat float32; "
          f"{time.perf_counter() - start:.1f}s)")
