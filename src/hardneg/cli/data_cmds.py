"""Commands that prepare data: ``tokenize`` (a memory-mapped store) and ``mine`` (hard negatives)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hardneg.cli.common import (
    BatchOpt,
    CacheOpt,
    DataArg,
    DeviceOpt,
    MaxLenOpt,
    ModelOpt,
    ThreadsOpt,
    info,
    open_dataset,
    open_model,
    progress,
    side_kind,
    use_threads,
)
from hardneg.cli.retrieve import TopicFieldOpt


def tokenize(
    data: DataArg,
    model: ModelOpt = "minilm",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Store folder.")] = Path("runs/tokenized"),
    side: Annotated[str, typer.Option(help="`docs` (the corpus) or `queries` (the split's queries).")] = "docs",
    max_length: Annotated[int | None, typer.Option("--max-length",
        help="Max length in tokens (default: the model's for that side).")] = None,
    topic_field: TopicFieldOpt = "title",
) -> None:
    """Tokenize a corpus or query set once into a memory-mapped store (reused by `encode`).

    Example: `hardneg tokenize ../shared/data/scifact --model minilm --out runs/scifact-tok`
    """
    from hardneg.artifacts import side_store

    dataset = open_dataset(data)
    dataset.topic_field = topic_field
    encoder = open_model(model)
    store = side_store(encoder, dataset, side_kind(side), folder=out_dir, max_length=max_length,
                       show_progress=progress())
    info(f"{len(store)} {side} tokenized in {out_dir} ({int(store.lengths.sum())} tokens)")


def mine(
    data: Annotated[str, typer.Argument(help="Training data: `path[:split]` (split defaults to train).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Warm-up dense model, or `bm25`.")] = "minilm",
    topk: Annotated[int, typer.Option("--topk",
        help="Non-positive documents kept per query.")] = 200,
    out: Annotated[Path, typer.Option("--out", "-o",
        help="Negatives file (qid, docid, rank TSV).")] = Path("runs/hard.tsv"),
    max_length: MaxLenOpt = None,
    batch_size: BatchOpt = 64,
    cache_dir: CacheOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "auto",
    topic_field: TopicFieldOpt = "title",
) -> None:
    """Mine hard negatives: the top-k non-positive documents of every training query (dense model or BM25).

    Example: `hardneg mine ../shared/data/scifact:train --model minilm --topk 200 --out runs/hard.tsv`
    """
    from hardneg.artifacts import default_cache_dir
    from hardneg.data.load import parse_spec
    from hardneg.train.negatives import check_topk, mine_negatives, write_negatives

    use_threads(threads)
    path, split = parse_spec(data)
    dataset = open_dataset(f"{path}:{split or 'train'}")
    dataset.topic_field = topic_field
    qrels, queries = dataset.qrels(), dataset.queries()
    check_topk(topk, dataset.doc_count())
    k = topk + max((len(v) for v in qrels.values()), default=0)
    cache = Path(cache_dir or default_cache_dir())
    if model == "bm25":
        from hardneg.retrieval.bm25 import cached_bm25

        run = cached_bm25(dataset, cache).search(queries, k=k, show_progress=progress())
    else:
        from hardneg.retrieval.dense import retrieve as dense_retrieve

        encoder = open_model(model, max_length=max_length, device=device)
        run = dense_retrieve(encoder, dataset, k=k, cache_dir=cache, batch_size=batch_size,
                             show_progress=progress())
    negatives = mine_negatives(run, qrels, topk)
    write_negatives(out, negatives)
    info(f"{sum(map(len, negatives.values()))} hard negatives for {len(negatives)} queries in {out}")
