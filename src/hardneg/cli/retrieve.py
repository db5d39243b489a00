"""Retrieval commands: ``bm25``, ``retrieve`` (dense, in one go) and ``search`` (a saved index)."""

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
    FormatOpt,
    KOpt,
    MaxLenOpt,
    MeasuresOpt,
    ModelOpt,
    NormOpt,
    NprobeOpt,
    PoolingOpt,
    QMaxLenOpt,
    QrelsOpt,
    QueriesOpt,
    ThreadsOpt,
    TopicFieldOpt,
    dataset_tag,
    default_out,
    gpu_asked,
    model_tag,
    open_dataset,
    open_model,
    progress,
    save_and_report,
    use_threads,
)
from hardneg.cli.index_cmds import PrecisionOpt


def bm25(
    data: DataArg,
    k: KOpt = 1000,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default runs/<data>-bm25).")] = None,
    k1: Annotated[float, typer.Option(help="BM25 k1.")] = 0.9,
    b: Annotated[float, typer.Option(help="BM25 b.")] = 0.4,
    stemmer: Annotated[str, typer.Option(help="Snowball stemmer language, or `none`.")] = "english",
    stopwords: Annotated[str, typer.Option(help="Stopword list (`en`), or `none`.")] = "en",
    queries: QueriesOpt = None,
    qrels: QrelsOpt = None,
    measure: MeasuresOpt = None,
    cache_dir: CacheOpt = None,
    fmt: FormatOpt = "trec",
    topic_field: TopicFieldOpt = "title",
) -> None:
    """BM25 (bm25s) over a dataset's corpus: index once (cached), retrieve top-k, evaluate.

    Example: `hardneg bm25 ../shared/data/scifact:test --k 1000`
    """
    from hardneg.data.cache import cache_dir_or_default
    from hardneg.retrieval.bm25 import cached_bm25

    dataset = open_dataset(data, queries, qrels, topic_field, cache_dir)
    params = {"k1": k1, "b": b, "stemmer": None if stemmer == "none" else stemmer,
              "stopwords": None if stopwords == "none" else stopwords}
    start = time.perf_counter()
    index = cached_bm25(dataset, cache_dir_or_default(cache_dir), **params)
    run = index.search(dataset.queries(), k=k, show_progress=progress())
    elapsed = time.perf_counter() - start
    out_dir = out_dir or default_out(dataset_tag(dataset), "bm25")
    save_and_report(run, dataset, out_dir, "bm25", measure,
                          {"command": "bm25", "data": data, "k": k, **params, "seconds": elapsed}, fmt)


def retrieve(
    data: DataArg,
    model: ModelOpt = "minilm",
    index: Annotated[str, typer.Option("--index",
        help="flat, pq<M>, ivfpq, ivf<L>pq<M>, hnsw, factory:<string>.")] = "flat",
    k: KOpt = 1000,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o",
        help="Run folder (default runs/<data>-<model>-<index>).")] = None,
    batch_size: BatchOpt = 64,
    max_length: MaxLenOpt = None,
    query_max_length: QMaxLenOpt = None,
    pooling: PoolingOpt = None,
    normalize: NormOpt = None,
    queries: QueriesOpt = None,
    qrels: QrelsOpt = None,
    measure: MeasuresOpt = None,
    cache_dir: CacheOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "auto",
    fmt: FormatOpt = "trec",
    topic_field: TopicFieldOpt = "title",
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    precision: PrecisionOpt = "fp32",
) -> None:
    """Dense retrieval in one go: tokenize + encode the corpus (cached, resumable), index, search, evaluate.

    Example: `hardneg retrieve ../shared/data/scifact:test --model minilm --index flat`
    """
    from hardneg.devices import faiss_placement
    from hardneg.model.encoding import check_encode_precision
    from hardneg.retrieval.dense import retrieve as dense_retrieve

    use_threads(threads)
    dataset = open_dataset(data, queries, qrels, topic_field, cache_dir)
    encoder = open_model(model, pooling, normalize, max_length, query_max_length, device=device)
    check_encode_precision(precision, encoder.device)
    start = time.perf_counter()
    run = dense_retrieve(encoder, dataset, index_kind=index, k=k, cache_dir=cache_dir,
                         batch_size=batch_size, show_progress=progress(), nprobe=nprobe, ef_search=ef_search,
                         use_gpu=faiss_placement(encoder.device) == "gpu", gpu_required=gpu_asked(device),
                         precision=precision)
    elapsed = time.perf_counter() - start
    out_dir = out_dir or default_out(dataset_tag(dataset), model_tag(model), index)
    settings = {"command": "retrieve", "data": data, "model": model, "index": index, "k": k,
                "encoder": encoder.identity(), "seconds": elapsed, "precision": precision,
                **{name: v for name, v in (("nprobe", nprobe), ("ef_search", ef_search)) if v is not None}}
    save_and_report(run, dataset, out_dir, model_tag(model), measure, settings, fmt)



def search(
    index_dir: Annotated[Path, typer.Argument(help="Index folder written by `hardneg index` or `retrieve`, or an "
        "index you have: a Pyserini dense index folder, a Faiss file or an embeddings .npy (with --index-ids).")],
    data: DataArg,
    model: ModelOpt = "minilm",
    k: KOpt = 1000,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o",
        help="Run folder (default runs/<data>-<index>).")] = None,
    query_max_length: QMaxLenOpt = None,
    queries: QueriesOpt = None,
    qrels: QrelsOpt = None,
    measure: MeasuresOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "auto",
    fmt: FormatOpt = "trec",
    topic_field: TopicFieldOpt = "title",
    force: Annotated[bool, typer.Option("--force",
        help="Search even if the index was built by another model.")] = False,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    precision: PrecisionOpt = "fp32",
    index_ids: Annotated[Path | None, typer.Option("--index-ids",
        help="A Faiss file's or embeddings .npy's document ids, one per row.")] = None,
    index_build: Annotated[str, typer.Option("--index-build",
        help="The index built over an embeddings .npy (flat, pq<M>, ivfpq, hnsw, ...).")] = "flat",
) -> None:
    """Encode a split's queries and search a saved index; write the run and evaluate it.

    Example: `hardneg search runs/scifact-pq48 ../shared/data/scifact:test --model minilm`

    An ADORE query encoder trained against an index you have (`hardneg train adore --index PATH`) searches
    that index and refuses any other: `hardneg search PATH ../shared/data/scifact:test --model runs/adore/model`
    """
    from hardneg.artifacts import index_mismatches
    from hardneg.devices import faiss_placement, place_index
    from hardneg.errors import MismatchError
    from hardneg.index.external import check_dim, check_trained_index, open_external
    from hardneg.index.faiss_index import FaissIndex
    from hardneg.io import read_json
    from hardneg.model.encoding import check_encode_precision
    from hardneg.model.registry import resolve_model
    from hardneg.retrieval.dense import search as dense_search

    use_threads(threads)
    dataset = open_dataset(data, queries, qrels, topic_field)
    encoder = open_model(model, query_max_length=query_max_length, device=device)
    check_encode_precision(precision, encoder.device)
    manifest_file = index_dir / "manifest.json"
    if manifest_file.is_file() and not force:  # checked from the manifest, before the index is read
        manifest = read_json(manifest_file)
        problems = index_mismatches(manifest, encoder, dataset)
        if problems:
            built_by = manifest.get("source", {}).get("encoder") or {}
            raise MismatchError(
                f"{index_dir}: the index was built by another model or corpus ({'; '.join(problems)}; "
                f"built by {built_by.get('source')!r}); pass the model and corpus that built it, or --force"
            )
    if (index_dir / "manifest.json").is_file():
        idx = FaissIndex.load(index_dir)  # with the search defaults stored by `hardneg index`
    else:  # an index hardneg did not build (a Pyserini folder, a Faiss file, an embeddings .npy)
        idx = open_external(index_dir, index_ids, build=index_build)
        check_dim(idx, encoder.dim, model)
    check_trained_index(resolve_model(model), idx, index_dir)
    idx.set_search_params(nprobe=nprobe, ef_search=ef_search)
    if faiss_placement(encoder.device) == "gpu":  # beside the encoder: under torchrun on the rank's own GPU
        place_index(idx, encoder.device, required=gpu_asked(device))
    run = dense_search(idx, encoder, dataset.queries(), k, precision=precision)
    out_dir = out_dir or default_out(dataset_tag(dataset), index_dir.name)
    settings = {"command": "search", "index": str(index_dir), "data": data, "model": model, "k": k,
                "precision": precision,
                **idx.search_params()}
    save_and_report(run, dataset, out_dir, index_dir.name, measure, settings, fmt)
