"""The ``hardneg`` command line: a thin layer over the library.

Every command takes datasets as one string, ``path[:split]`` (a BEIR or MS MARCO
folder) or ``irds:<id>``; bad input ends with a one-line message naming the
file and line, and a non-zero exit (``--debug`` shows the traceback).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hardneg import __version__
from hardneg.errors import HardnegError

app = typer.Typer(
    name="hardneg",
    help="Train and evaluate dense retrievers with hard negatives (STAR, ADORE).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
)

err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)

_STATE = {"debug": False, "quiet": False}

# ----------------------------------------------------------------------------- shared options
DataArg = Annotated[str, typer.Argument(help="Dataset: `path[:split]` (BEIR or MS MARCO folder) or `irds:<id>`.")]
ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="`minilm` (default, offline), a model folder or a hub id.")
]
QrelsOpt = Annotated[
    Path | None, typer.Option("--qrels", help="Qrels file replacing the split's (e.g. graded TREC qrels).")
]
QueriesOpt = Annotated[Path | None, typer.Option("--queries", help="Queries file replacing the dataset's.")]
MeasuresOpt = Annotated[
    list[str] | None,
    typer.Option("--measure", "-M", help="ir-measures name, repeatable (default: RR@10 R@100 R@1000 nDCG@10)."),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Where tokenized stores, embeddings and indexes are cached "
                 "(default $HARDNEG_CACHE_DIR or ~/.cache/hardneg)."),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Texts per encoding batch.")]
KOpt = Annotated[int, typer.Option("--k", "-k", help="Documents retrieved per query.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for torch and Faiss (default: all cores).")]
MaxLenOpt = Annotated[int | None, typer.Option("--max-length", help="Document max length in tokens (default: the model's).")]
QMaxLenOpt = Annotated[int | None, typer.Option("--query-max-length", help="Query max length in tokens (default: 64).")]
PoolingOpt = Annotated[str | None, typer.Option("--pooling", help="`cls` or `mean` (default: the model's, else cls).")]
NormOpt = Annotated[bool | None, typer.Option("--normalize/--no-normalize", help="L2-normalise embeddings (default: the model's).")]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info messages.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """hardneg: dense retrieval with hard negatives.

    Example: `hardneg retrieve ../shared/data/scifact:test --model minilm`
    """
    if version:
        out.print(f"hardneg {__version__}")
        raise typer.Exit()
    _STATE["debug"] = debug
    _STATE["quiet"] = quiet
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "huggingface_hub", "transformers", "sentence_transformers", "faiss", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _progress() -> bool:
    return not _STATE["quiet"]


def _info(msg: str) -> None:
    if not _STATE["quiet"]:
        err.print(msg, highlight=False)


def _dataset(spec: str, queries: Path | None = None, qrels: Path | None = None):
    from hardneg.data.readers import load_dataset

    return load_dataset(spec, queries=queries, qrels=qrels)


def _model(name: str, pooling=None, normalize=None, max_length=None, query_max_length=None):
    from hardneg.model.encoder import DualEncoder

    return DualEncoder.from_pretrained(
        name, pooling=pooling, normalize=normalize, doc_max_length=max_length,
        query_max_length=query_max_length,
    )


def _threads(n: int | None) -> None:
    from hardneg.index.faiss_index import set_threads

    set_threads(n)


def _default_out(*parts: str) -> Path:
    safe = [p.replace("/", "_").replace(":", "-") for p in parts if p]
    return Path("runs") / "-".join(safe)


def _model_tag(model: str) -> str:
    """A short name for a model: `minilm`, a hub id's last part, or the run folder of `.../NAME/model`."""
    path = Path(model)
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def _dataset_tag(dataset) -> str:
    return f"{dataset.name}-{dataset.split}" if dataset.split else dataset.name


def _save_run_and_metrics(run, dataset, out_dir: Path, tag: str, measures, settings: dict, fmt: str) -> dict:
    from hardneg.evaluate.metrics import DEFAULT_MEASURES, evaluate, format_table
    from hardneg.io import write_json
    from hardneg.retrieval.runs import write_msmarco, write_trec

    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt in ("trec", "both"):
        write_trec(run, out_dir / "run.trec", tag=tag)
    if fmt in ("msmarco", "both"):
        write_msmarco(run, out_dir / "run.msmarco.tsv")
    write_json(out_dir / "settings.json", settings)
    qrels = dataset.qrels()
    if not qrels:
        _info(f"no qrels for {_dataset_tag(dataset)}: run written to {out_dir}, not evaluated")
        return {}
    metrics = evaluate(run, qrels, measures or DEFAULT_MEASURES)
    write_json(out_dir / "metrics.json", metrics)
    out.print(format_table({tag: metrics}))
    _info(f"run and metrics written to {out_dir}/")
    return metrics


FormatOpt = Annotated[str, typer.Option("--format", help="Run file format: `trec`, `msmarco` or `both`.")]


# ----------------------------------------------------------------------------- commands
@app.command()
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
) -> None:
    """BM25 (bm25s) over a dataset's corpus: index once (cached), retrieve top-k, evaluate.

    Example: `hardneg bm25 ../shared/data/scifact:test --k 1000`
    """
    from hardneg.retrieval.bm25 import cached_bm25
    from hardneg.retrieval.dense import default_cache_dir

    dataset = _dataset(data, queries, qrels)
    params = {"k1": k1, "b": b, "stemmer": None if stemmer == "none" else stemmer,
              "stopwords": None if stopwords == "none" else stopwords}
    start = time.perf_counter()
    index = cached_bm25(dataset, cache_dir or default_cache_dir(), **params)
    run = index.search(dataset.queries(), k=k, show_progress=_progress())
    elapsed = time.perf_counter() - start
    out_dir = out_dir or _default_out(_dataset_tag(dataset), "bm25")
    _save_run_and_metrics(run, dataset, out_dir, "bm25", measure,
                          {"command": "bm25", "data": data, "k": k, **params, "seconds": elapsed}, fmt)


@app.command()
def retrieve(
    data: DataArg,
    model: ModelOpt = "minilm",
    index: Annotated[str, typer.Option("--index", help="flat, pq<M>, ivfpq, hnsw, factory:<string>.")] = "flat",
    k: KOpt = 1000,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default runs/<data>-<model>-<index>).")] = None,
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
    fmt: FormatOpt = "trec",
) -> None:
    """Dense retrieval in one go: tokenize + encode the corpus (cached, resumable), index, search, evaluate.

    Example: `hardneg retrieve ../shared/data/scifact:test --model minilm --index flat`
    """
    from hardneg.retrieval.dense import retrieve as dense_retrieve

    _threads(threads)
    dataset = _dataset(data, queries, qrels)
    encoder = _model(model, pooling, normalize, max_length, query_max_length)
    start = time.perf_counter()
    run = dense_retrieve(encoder, dataset, index_kind=index, k=k, cache_dir=cache_dir,
                         batch_size=batch_size, show_progress=_progress())
    elapsed = time.perf_counter() - start
    out_dir = out_dir or _default_out(_dataset_tag(dataset), _model_tag(model), index)
    settings = {"command": "retrieve", "data": data, "model": model, "index": index, "k": k,
                "encoder": encoder.identity(), "seconds": elapsed}
    _save_run_and_metrics(run, dataset, out_dir, _model_tag(model), measure, settings, fmt)


@app.command()
def tokenize(
    data: DataArg,
    model: ModelOpt = "minilm",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Store folder.")] = Path("runs/tokenized"),
    side: Annotated[str, typer.Option(help="`docs` (the corpus) or `queries` (the split's queries).")] = "docs",
    max_length: Annotated[int | None, typer.Option("--max-length", help="Max length in tokens (default: the model's for that side).")] = None,
) -> None:
    """Tokenize a corpus or query set once into a memory-mapped store (reused by `encode`).

    Example: `hardneg tokenize ../shared/data/scifact --model minilm --out runs/scifact-tok`
    """
    from hardneg.retrieval.dense import side_store

    dataset = _dataset(data)
    encoder = _model(model)
    store = side_store(encoder, dataset, _side(side), folder=out_dir, max_length=max_length,
                       show_progress=_progress())
    _info(f"{len(store)} {side} tokenized in {out_dir} ({int(store.lengths.sum())} tokens)")


def _side(side: str) -> str:
    if side in ("docs", "doc", "corpus"):
        return "doc"
    if side in ("queries", "query"):
        return "query"
    raise HardnegError(f"--side must be 'docs' or 'queries', not {side!r}")


@app.command()
def encode(
    data: DataArg,
    model: ModelOpt = "minilm",
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Embeddings folder (default runs/<data>-<model>-emb).")] = None,
    side: Annotated[str, typer.Option(help="`docs` (the corpus) or `queries` (the split's queries).")] = "docs",
    batch_size: BatchOpt = 64,
    max_length: MaxLenOpt = None,
    pooling: PoolingOpt = None,
    normalize: NormOpt = None,
    cache_dir: CacheOpt = None,
    threads: ThreadsOpt = None,
    shard: Annotated[str | None, typer.Option("--shard", help="Encode only shard `i/n` (0-based) into "
                                              "OUT.shards/ (job arrays); join them with `hardneg encode-merge OUT`. "
                                              "Under torchrun each rank encodes its shard and rank 0 merges.")] = None,
) -> None:
    """Encode a corpus (or a split's queries) into a float32 embeddings folder; resumes if interrupted.

    Example: `hardneg encode ../shared/data/scifact --model minilm --out runs/scifact-emb`

    Sharded: `torchrun --nproc_per_node 4 -m hardneg encode DATA --out OUT`, or one job per
    `--shard i/4` and then `hardneg encode-merge OUT`.
    """
    from hardneg.index.encode import encode_store
    from hardneg.retrieval.dense import side_store
    from hardneg.train import distributed as dist

    _threads(threads)
    launched = _join_torchrun()
    if launched and shard:
        raise HardnegError("--shard is for separate jobs; under torchrun every rank encodes its own shard")
    dataset = _dataset(data)
    encoder = _model(model, pooling, normalize, max_length)
    if launched:
        encoder.to(dist.device_of_group())  # NCCL: this rank's GPU
    kind = _side(side)
    out_dir = out_dir or _default_out(_dataset_tag(dataset), _model_tag(model), f"{kind}-emb")
    with dist.main_first():
        store = side_store(encoder, dataset, kind, cache_dir, show_progress=_progress())
    if shard is None and not dist.is_distributed():
        emb = encode_store(encoder, store, kind, out_dir, batch_size=batch_size, show_progress=_progress())
        _info(f"{len(emb)} x {emb.dim} embeddings in {out_dir}")
        return
    from hardneg.index.shards import encode_shard, merge_shards

    i, n = dist.parse_shard(shard) if shard else (dist.rank(), dist.world_size())
    folder = encode_shard(encoder, store, kind, out_dir, i, n, batch_size=batch_size, show_progress=_progress())
    if not launched:
        _info(f"shard {i}/{n} in {folder}; when all {n} are done: hardneg encode-merge {out_dir}")
        return
    dist.barrier()
    if dist.is_main():
        emb = merge_shards(out_dir)
        _info(f"{len(emb)} x {emb.dim} embeddings in {out_dir} (merged from {n} shards)")
    dist.barrier()


@app.command("encode-merge")
def encode_merge(
    out_dir: Annotated[Path, typer.Argument(help="The embeddings folder given to `hardneg encode --shard i/n --out`.")],
    keep_shards: Annotated[bool, typer.Option("--keep-shards", help="Keep OUT.shards/ after merging.")] = False,
) -> None:
    """Join the shards of `hardneg encode --shard i/n` into one embeddings folder, after checking that
    every shard is complete and made by the same encoder from the same texts.

    Example: `hardneg encode-merge runs/msmarco-emb`
    """
    from hardneg.index.shards import merge_shards

    emb = merge_shards(out_dir, keep_shards=keep_shards)
    _info(f"{len(emb)} x {emb.dim} embeddings in {out_dir}")


def _join_torchrun() -> bool:
    """Join the process group when started by torchrun (RANK / WORLD_SIZE set); ranks other than 0
    log warnings only and show no progress bars."""
    from hardneg.train import distributed as dist

    if not dist.init_from_env():
        return False
    if not dist.is_main():
        _STATE["quiet"] = True
        logging.getLogger().setLevel(logging.WARNING)
    return True


@app.command("index")
def index_cmd(
    embeddings: Annotated[Path, typer.Argument(help="Embeddings folder written by `hardneg encode`.")],
    kind: Annotated[str, typer.Option("--kind", help="flat, pq<M> (pq48, pq96), ivfpq, ivf<L>pq<M>, hnsw, factory:<string>.")] = "flat",
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Index folder (default <embeddings>-<kind>).")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Build a Faiss index over an embeddings folder and save it with its manifest.

    Example: `hardneg index runs/scifact-emb --kind pq48 --out runs/scifact-pq48`
    """
    from hardneg.index.encode import Embeddings
    from hardneg.index.faiss_index import FaissIndex

    _threads(threads)
    emb = Embeddings(embeddings)
    out_dir = out_dir or Path(f"{embeddings}-{kind.replace(':', '_').replace(',', '_')}")
    start = time.perf_counter()
    index = FaissIndex.from_embeddings(emb, kind)
    index.save(out_dir)
    flat_bytes = len(emb) * emb.dim * 4
    _info(f"{kind} index of {len(index)} vectors in {out_dir} "
          f"({index.manifest['bytes'] / 1e6:.2f} MB, {index.manifest['bytes'] / flat_bytes:.1%} of flat float32; "
          f"{time.perf_counter() - start:.1f}s)")


@app.command()
def search(
    index_dir: Annotated[Path, typer.Argument(help="Index folder written by `hardneg index` or `retrieve`.")],
    data: DataArg,
    model: ModelOpt = "minilm",
    k: KOpt = 1000,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default runs/<data>-<index>).")] = None,
    query_max_length: QMaxLenOpt = None,
    queries: QueriesOpt = None,
    qrels: QrelsOpt = None,
    measure: MeasuresOpt = None,
    threads: ThreadsOpt = None,
    fmt: FormatOpt = "trec",
    force: Annotated[bool, typer.Option("--force", help="Search even if the index was built by another model.")] = False,
) -> None:
    """Encode a split's queries and search a saved index; write the run and evaluate it.

    Example: `hardneg search runs/scifact-pq48 ../shared/data/scifact:test --model minilm`
    """
    from hardneg.errors import MismatchError
    from hardneg.index.faiss_index import FaissIndex
    from hardneg.retrieval.dense import search as dense_search

    _threads(threads)
    dataset = _dataset(data, queries, qrels)
    encoder = _model(model, query_max_length=query_max_length)
    from hardneg.io import read_json
    from hardneg.retrieval.dense import index_mismatches

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
    idx = FaissIndex.load(index_dir)
    idx.to_gpu()
    run = dense_search(idx, encoder, dataset.queries(), k)
    out_dir = out_dir or _default_out(_dataset_tag(dataset), index_dir.name)
    settings = {"command": "search", "index": str(index_dir), "data": data, "model": model, "k": k}
    _save_run_and_metrics(run, dataset, out_dir, index_dir.name, measure, settings, fmt)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run file (TREC or MS MARCO format).")],
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset whose qrels to use: `path:split` or `irds:<id>`.")] = None,
    qrels: QrelsOpt = None,
    measure: MeasuresOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object keyed by ir-measures names.")] = False,
    per_query: Annotated[bool, typer.Option("--per-query", help="Also print per-query values (TSV: measure qid value).")] = False,
) -> None:
    """Evaluate a run with ir-measures (default RR@10, R@100, R@1000, nDCG@10).

    Example: `hardneg evaluate runs/scifact-test-bm25/run.trec --data ../shared/data/scifact:test --json`
    """
    from hardneg.evaluate.metrics import DEFAULT_MEASURES, evaluate_per_query, format_table
    from hardneg.evaluate.metrics import evaluate as eval_run
    from hardneg.retrieval.runs import read_run

    qrel_dict = _qrels_from(data, qrels)
    ranked = read_run(run)
    measures = measure or DEFAULT_MEASURES
    metrics = eval_run(ranked, qrel_dict, measures)
    if as_json:
        print(json.dumps(metrics))
    else:
        out.print(format_table({run.parent.name if run.name.startswith("run.") else run.stem: metrics}))
    if per_query:
        for name, values in evaluate_per_query(ranked, qrel_dict, measures).items():
            for qid, value in values.items():
                print(f"{name}\t{qid}\t{value:.6f}")


def _qrels_from(data: str | None, qrels: Path | None):
    if data is None and qrels is None:
        raise HardnegError("give --data path:split (its qrels) or --qrels FILE")
    if data is None:
        from hardneg.data.readers import read_qrels
        from hardneg.data.records import qrels_to_dict

        return qrels_to_dict(list(read_qrels(qrels)))
    dataset = _dataset(data, qrels=qrels)
    result = dataset.qrels()
    if not result:
        raise HardnegError(f"{data}: no qrels for this split; name a split (path:test) or pass --qrels")
    return result


def _run_name(path: Path) -> str:
    return path.parent.name if path.name.startswith("run.") else path.stem


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="Run files, optionally named: `name=path`.")],
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset whose qrels to use: `path:split`.")] = None,
    qrels: QrelsOpt = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="Name of the baseline run (default: the first).")] = None,
    measure: MeasuresOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print means and p-values as JSON.")] = False,
) -> None:
    """Compare runs on the same queries: a table of means with paired t-test p-values against a baseline.

    Example: `hardneg compare bm25=runs/a/run.trec minilm=runs/b/run.trec --data ../shared/data/scifact:test`
    """
    from hardneg.evaluate.metrics import DEFAULT_MEASURES, format_table
    from hardneg.evaluate.metrics import compare as compare_runs
    from hardneg.retrieval.runs import read_run

    named: dict[str, object] = {}
    for item in runs:
        name, _, path = item.rpartition("=")
        path_obj = Path(path)
        name = name or _run_name(path_obj)
        if name in named:
            raise HardnegError(f"two runs are named {name!r}; name them explicitly: name=path")
        named[name] = read_run(path_obj)
    qrel_dict = _qrels_from(data, qrels)
    result = compare_runs(named, qrel_dict, baseline or next(iter(named)), measure or DEFAULT_MEASURES)
    if as_json:
        print(json.dumps({"baseline": result.baseline, "queries": len(result.query_ids),
                          "means": result.means, "pvalues": result.pvalues}))
    else:
        out.print(format_table(result))


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="A hardneg model folder (e.g. runs/adore/model).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="sentence-transformers folder to write.")],
) -> None:
    """Export a model as one sentence-transformers folder (separate towers become a Router model).

    Example: `hardneg export runs/adore/model --out runs/adore-st` then
    `SentenceTransformer("runs/adore-st").encode_query([...])`
    """
    encoder = _model(model)
    encoder.export_sentence_transformers(out)
    kind = "shared encoder" if encoder.config.shared else "query/document Router"
    _info(f"sentence-transformers model ({kind}) in {out}")


@app.command()
def mine(
    data: Annotated[str, typer.Argument(help="Training data: `path[:split]` (split defaults to train).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Warm-up dense model, or `bm25`.")] = "minilm",
    topk: Annotated[int, typer.Option("--topk", help="Non-positive documents kept per query.")] = 200,
    out: Annotated[Path, typer.Option("--out", "-o", help="Negatives file (qid, docid, rank TSV).")] = Path("runs/hard.tsv"),
    max_length: MaxLenOpt = None,
    batch_size: BatchOpt = 64,
    cache_dir: CacheOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Mine hard negatives: the top-k non-positive documents of every training query (dense model or BM25).

    Example: `hardneg mine ../shared/data/scifact:train --model minilm --topk 200 --out runs/hard.tsv`
    """
    from hardneg.data.readers import parse_spec
    from hardneg.retrieval.dense import default_cache_dir
    from hardneg.train.negatives import check_topk, mine_negatives, write_negatives

    _threads(threads)
    path, split = parse_spec(data)
    dataset = _dataset(f"{path}:{split or 'train'}")
    qrels, queries = dataset.qrels(), dataset.queries()
    check_topk(topk, dataset.doc_count())
    k = topk + max((len(v) for v in qrels.values()), default=0)
    cache = Path(cache_dir or default_cache_dir())
    if model == "bm25":
        from hardneg.retrieval.bm25 import cached_bm25

        run = cached_bm25(dataset, cache).search(queries, k=k, show_progress=_progress())
    else:
        from hardneg.retrieval.dense import retrieve as dense_retrieve

        encoder = _model(model, max_length=max_length)
        run = dense_retrieve(encoder, dataset, k=k, cache_dir=cache, batch_size=batch_size,
                             show_progress=_progress())
    negatives = mine_negatives(run, qrels, topk)
    write_negatives(out, negatives)
    _info(f"{sum(map(len, negatives.values()))} hard negatives for {len(negatives)} queries in {out}")


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def train(
    method: Annotated[str, typer.Argument(help="inbatch, rand, bm25neg, static, ance, star or adore.")],
    data: Annotated[str | None, typer.Option("--data", "-d", help="Training data `path[:split]` (split defaults to train).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Start encoder (default minilm).")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output folder (model/, logs, checkpoints/).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file of settings (flags override it).")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="paper-passage, paper-doc or cpu-demo.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")] = False,
    max_steps: Annotated[int | None, typer.Option(help="Optimiser steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Queries per micro-batch.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per optimiser step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw or lamb.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay.")] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help="Share of steps in linear warm-up.")] = None,
    max_grad_norm: Annotated[float | None, typer.Option(help="Gradient clipping norm.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (bf16 is ~7x slower on most CPUs).")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of data order, sampling and dropout.")] = None,
    pooling: Annotated[str | None, typer.Option(help="cls or mean (default: the model's).")] = None,
    normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize", help="L2-normalise (default: the model's).")] = None,
    query_max_length: Annotated[int | None, typer.Option(help="Query max length in tokens.")] = None,
    doc_max_length: Annotated[int | None, typer.Option(help="Document max length in tokens.")] = None,
    loss: Annotated[str | None, typer.Option(help="ranknet (paper Eq. 14) or softmax.")] = None,
    score_scale: Annotated[float | None, typer.Option(help="Multiply scores before the loss (default 20 for normalised encoders, else 1).")] = None,
    n_negatives: Annotated[int | None, typer.Option(help="Sampled negatives per query.")] = None,
    topk: Annotated[int | None, typer.Option(help="Hard negatives come from each query's top-k.")] = None,
    negatives: Annotated[str | None, typer.Option(help="Negatives TSV or TREC run (static, star); default: mined with the start model.")] = None,
    alpha: Annotated[float | None, typer.Option(help="STAR: weight of the random-negative loss.")] = None,
    star_mixing: Annotated[str | None, typer.Option(help="STAR: alpha (L_s + a L_r) or pairmean (DRhard's formula).")] = None,
    refresh_every: Annotated[int | None, typer.Option(help="ance: re-mine negatives every N steps.")] = None,
    doc_model: Annotated[str | None, typer.Option("--doc-model", help="adore: the fixed document encoder (same as --model; an ADORE output continues its query tower).")] = None,
    index: Annotated[str | None, typer.Option("--index", help="adore: the fixed index searched every step: flat, pq<M>, ivfpq, ... (default flat).")] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="adore: mrr@k or ndcg@k, whose change weights each pair (default mrr@200).")] = None,
    adore_topk: Annotated[int | None, typer.Option(help="adore: documents retrieved per query each step (default 200).")] = None,
    adore_loss: Annotated[str | None, typer.Option(help="adore: lambda (ΔM-weighted, default) or ranknet (unweighted ablation).")] = None,
    dev_split: Annotated[str | None, typer.Option(help="Use this split as dev instead of carving one out of train.")] = None,
    dev_fraction: Annotated[float | None, typer.Option(help="Share of training queries carved out as dev.")] = None,
    dev_every: Annotated[int | None, typer.Option(help="Evaluate on dev every N steps.")] = None,
    dev_metric: Annotated[str | None, typer.Option(help="ir-measures name selecting the best model.")] = None,
    dev_pool: Annotated[int | None, typer.Option(help="Dev ranks BM25 top-N per dev query + positives; 0 = full corpus.")] = None,
    dev_at_start: Annotated[bool | None, typer.Option("--dev-at-start/--no-dev-at-start", help="Also evaluate the start model (step 0).")] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = None,
    keep_checkpoints: Annotated[int | None, typer.Option(help="Checkpoints kept.")] = None,
    train_chunk: Annotated[int | None, typer.Option(help="Rows per length-sorted forward pass in a training step.")] = None,
    batch_encode_size: Annotated[int | None, typer.Option(help="Texts per batch when encoding for dev evaluation and mining.")] = None,
    track_every: Annotated[int | None, typer.Option(help="Log static/dynamic negative overlap and train MRR@10 every N steps (costs a corpus encoding; 0 = off).")] = None,
    track_queries: Annotated[int | None, typer.Option(help="Training queries sampled for --track-every (0 = all).")] = None,
    cache_dir: CacheOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train a dense retriever with one of the paper's negative-sampling methods (one shared loop).

    Example: `hardneg train star --data ../shared/data/scifact --preset cpu-demo --out runs/star`

    Several GPUs / nodes: `torchrun --nproc_per_node 4 -m hardneg train star …` (--batch-size is per
    process; --resume needs the same number of processes).

    ADORE (query tower only, fixed index): `hardneg train adore --doc-model runs/star/model
    --data ../shared/data/scifact --index pq48 --metric mrr@200 --out runs/adore`
    """
    given = {k: v for k, v in locals().items()
             if k not in ("method", "config", "preset", "resume", "threads") and v is not None}
    from hardneg.train.config import TrainConfig, apply_preset
    from hardneg.train.trainer import Trainer

    _threads(threads)
    _join_torchrun()  # under torchrun: N processes with --batch-size B train like one with N·B
    if isinstance(given.get("cache_dir"), Path):
        given["cache_dir"] = str(given["cache_dir"])
    if "doc_model" in given:  # adore's name for the one `model` setting
        doc = given.pop("doc_model")
        if method != "adore":
            raise HardnegError(f"--doc-model is for adore (its fixed document encoder); {method} takes --model")
        if given.get("model", doc) != doc:
            raise HardnegError("give adore's document encoder once: --doc-model or --model")
        given["model"] = doc
    base = TrainConfig.from_yaml(config).to_dict() if config else {}
    explicit = set(given) | set(base)
    cfg = TrainConfig.from_dict({**base, **given, "method": method, "quiet": _STATE["quiet"]})
    cfg = apply_preset(cfg, preset, explicit)
    if "out" not in explicit:
        cfg.out = str(_default_out("train", Path(cfg.data).name, method))
    trainer = Trainer(cfg)
    trainer.setup()
    model_dir = trainer.train(resume=resume)
    _info(f"model in {model_dir}; logs in {cfg.out}/train_log.jsonl")
    from hardneg.train import distributed as dist

    dist.destroy()


@app.command()
def experiment(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML (see configs/).")],
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="Replaces {data_dir} in the recipe (default $HARDNEG_DATA_DIR or ../shared/data).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Experiment folder (default runs/experiments/<name>).")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only stages matching this name or glob (and what they need); repeatable.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the recipe and list the stages with their status; compute nothing.")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Run a recipe's stages in order (train, test, transfer, analyses, report); done stages are skipped.

    Interrupted? Run the same command again: finished stages are cached, training resumes from its
    last checkpoint. Example: `hardneg experiment configs/demo.yaml`
    """
    from hardneg.experiment import Experiment, Recipe

    _threads(threads)
    exp = Experiment(Recipe.from_yaml(recipe, data_dir), out_dir, quiet=_STATE["quiet"])
    if dry_run:
        for name, state in exp.status():
            out.print(f"{state:>24}  {name}", highlight=False)
        _info(f"{len(exp.stages)} stages; recipe OK; folder {exp.out}")
        return
    exp.run(only=only, echo=lambda msg: _info(msg))
    report = exp.out / "report.md"
    if report.is_file():
        from hardneg.evaluate.report import main_table

        out.print(main_table(exp.out))
        _info(f"report: {report}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="An experiment folder (written by `hardneg experiment`).")],
) -> None:
    """Write RUN_DIR/report.md and its figures from the finished stages of an experiment.

    Example: `hardneg report runs/experiments/scifact`
    """
    from hardneg.evaluate.report import write_report

    path = write_report(run_dir)
    _info(f"report: {path}")


def main() -> None:
    """Console entry point: run the app, turning HardnegError into a clean message and exit code."""
    try:
        app()
    except HardnegError as exc:
        if _STATE["debug"]:
            raise
        from rich.text import Text

        err.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        sys.exit(130)
    except OSError as exc:  # a storage failure no artifact writer turned into a WriteError
        from hardneg.io import is_write_failure, write_error

        if _STATE["debug"] or not is_write_failure(exc):
            raise
        from rich.text import Text

        message = str(write_error(exc, exc.filename or "output"))
        err.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)
        sys.exit(HardnegError.exit_code)


if __name__ == "__main__":
    main()
