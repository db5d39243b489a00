"""What every command shares: consoles, run state, option types, small helpers, error handling."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup, TyperOption

from hardneg import __version__
from hardneg.errors import HardnegError
from hardneg.logs import quiet_libraries

err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)

#: set by the global options (``--debug``, ``--quiet``); ranks other than 0 under torchrun are quiet
STATE = {"debug": False, "quiet": False}

# ----------------------------------------------------------------------------- flags read as flags
def _flags_take_no_value(params: list) -> list:
    """Typer's rich help prints a value type for every option, flags included (``--quiet -q <bool>``, as if
    ``-q`` took a value); an empty metavar leaves that column blank for flags and ``--x/--no-x`` pairs,
    while options that take a value keep theirs (``--k -k <int>``)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class FlagCommand(TyperCommand):
    """A command whose ``--help`` shows flags without a value type."""

    def get_params(self, ctx):
        return _flags_take_no_value(super().get_params(ctx))


class FlagGroup(TyperGroup):
    """The app's group: its global flags (``--quiet``, ``--debug``) without a value type."""

    def get_params(self, ctx):
        return _flags_take_no_value(super().get_params(ctx))


class App(typer.Typer):
    """``typer.Typer`` whose group and commands are :class:`FlagGroup` / :class:`FlagCommand` unless told."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("cls", FlagGroup)
        super().__init__(**kwargs)

    def command(self, name: str | None = None, **kwargs):
        kwargs.setdefault("cls", FlagCommand)
        return super().command(name, **kwargs)


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
ThreadsOpt = Annotated[int | None, typer.Option("--threads",
    help="CPU threads for torch and Faiss (default: all cores).")]
MaxLenOpt = Annotated[int | None, typer.Option("--max-length",
    help="Document max length in tokens (default: the model's).")]
QMaxLenOpt = Annotated[int | None, typer.Option("--query-max-length", help="Query max length in tokens (default: 64).")]
PoolingOpt = Annotated[str | None, typer.Option("--pooling",
    help="`cls` or `mean` (default: the model's, else cls).")]
#: the query text of TREC <top> topic files (ignored for other query files)
TopicFieldOpt = Annotated[str, typer.Option("--topic-field",
    help="Query text of TREC <top> topics: `title`, `desc` or `title+desc`.")]
DeviceOpt = Annotated[str, typer.Option("--device",
    help="Where the encoder runs: auto (CUDA when present), cpu, cuda or cuda:N.")]
NormOpt = Annotated[bool | None, typer.Option("--normalize/--no-normalize",
    help="L2-normalise embeddings (default: the model's).")]
#: Faiss search parameters (IVF lists visited; HNSW search breadth); an index without one refuses it
NprobeOpt = Annotated[int | None, typer.Option("--nprobe", min=1,
    help="IVF indexes (ivfpq, ivf<L>pq<M>): inverted lists visited per query (default: the index's, "
         "min(lists, 32)).")]
EfSearchOpt = Annotated[int | None, typer.Option("--ef-search", min=1,
    help="HNSW indexes: search breadth efSearch (default: the index's, Faiss 16).")]


def gpu_asked(device: str | None) -> bool:
    """Whether ``--device`` names CUDA explicitly (then a failed move of Faiss search to GPU is an error)."""
    return (device or "auto").strip().lower().startswith("cuda")


def progress() -> bool:
    return not STATE["quiet"]


def info(msg: str) -> None:
    if not STATE["quiet"]:
        err.print(msg, highlight=False)


def open_dataset(spec: str, queries: Path | None = None, qrels: Path | None = None, topic_field: str = "title",
                 cache_dir: Path | None = None):
    """The dataset ``spec`` names; a dataset archive is unpacked under ``cache_dir`` (``--cache-dir``)."""
    from hardneg.data.load import load_dataset

    return load_dataset(spec, queries=queries, qrels=qrels, topic_field=topic_field, cache_dir=cache_dir)


def open_model(name: str, pooling=None, normalize=None, max_length=None, query_max_length=None,
               device: str | None = None, query_model: str | None = None, tokenizer: str | None = None):
    """Load the encoder; with ``device`` (``--device``) it is resolved first, so a missing GPU fails fast.

    ``query_model``: a separate query tower (``name`` is then the document tower: DRhard's released
    ADORE query encoder with its STAR document encoder); ``tokenizer``: for a folder without one
    (DRhard checkpoints: ``roberta-base``)."""
    from hardneg.devices import resolve_device
    from hardneg.model.encoder import DualEncoder

    target = resolve_device(device) if device is not None else None
    encoder = DualEncoder.from_pretrained(
        name, pooling=pooling, normalize=normalize, doc_max_length=max_length,
        query_max_length=query_max_length, query_model=query_model, tokenizer=tokenizer,
    )
    if target is not None and target.type != "cpu":
        encoder.to(target)
    return encoder


def use_threads(n: int | None) -> None:
    from hardneg.index.faiss_index import set_threads

    set_threads(n)


def default_out(*parts: str) -> Path:
    safe = [p.replace("/", "_").replace(":", "-") for p in parts if p]
    return Path("runs") / "-".join(safe)


def model_tag(model: str) -> str:
    """A short name for a model: `minilm`, a hub id's last part, or the run folder of `.../NAME/model`."""
    path = Path(model)
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def dataset_tag(dataset) -> str:
    return f"{dataset.name}-{dataset.split}" if dataset.split else dataset.name


def save_and_report(run, dataset, out_dir: Path, tag: str, measures, settings: dict, fmt: str) -> dict:
    from hardneg.evaluate.metrics import format_table
    from hardneg.evaluate.results import save_run_and_metrics

    metrics = save_run_and_metrics(run, out_dir, tag=tag, fmt=fmt, qrels=dataset.qrels() or None,
                                   measures=measures or None, settings=settings).metrics
    if metrics is None:
        info(f"no qrels for {dataset_tag(dataset)}: run written to {out_dir}, not evaluated")
        return {}
    out.print(format_table({tag: metrics}))
    info(f"run and metrics written to {out_dir}/")
    return metrics


def join_torchrun(timeout_seconds: float | None = None) -> bool:
    """Join the process group when started by torchrun (RANK / WORLD_SIZE set), with the collectives'
    ``timeout_seconds`` (default an hour); ranks other than 0 log warnings only and show no progress bars."""
    from hardneg import distributed as dist

    joined = dist.init_from_env() if timeout_seconds is None else dist.init_from_env(timeout_seconds / 60)
    if not joined:
        return False
    if not dist.is_main():
        STATE["quiet"] = True
        logging.getLogger().setLevel(logging.WARNING)
        quiet_libraries(downloads=False)
    return True


FormatOpt = Annotated[str, typer.Option("--format", help="Run file format: `trec`, `msmarco` or `both`.")]


def side_kind(side: str) -> str:
    if side in ("docs", "doc", "corpus"):
        return "doc"
    if side in ("queries", "query"):
        return "query"
    raise HardnegError(f"--side must be 'docs' or 'queries', not {side!r}")


def global_options(
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
    STATE["debug"] = debug
    STATE["quiet"] = quiet
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet_libraries(downloads=not quiet)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler preempting the job, ``kill``, torchrun stopping the other ranks), raised in the main
    thread like Ctrl-C, so the same clean-up runs: partial files go, locks are released, a running experiment
    stage writes its wall-clock so far into stage.json."""


#: set when SIGTERM arrived: Typer turns the interrupt into its own exit (130) on the way out
_SIGNALLED: list[int] = []


def _terminate(signum: int, frame: object) -> None:
    _SIGNALLED.append(signum)
    raise Terminated


def _exit_interrupted() -> None:
    """Exit after an interrupt: 143 "terminated" for SIGTERM, 130 "interrupted" for Ctrl-C."""
    term = bool(_SIGNALLED)
    err.print("terminated" if term else "interrupted", highlight=False)
    sys.exit(143 if term else 130)


def run_app(app: typer.Typer) -> None:
    """Run ``app``, turning a HardnegError into a one-line message and its exit code (no traceback
    unless ``--debug``); Ctrl-C exits 130, SIGTERM 143, both after the same clean-up (:class:`Terminated`)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except HardnegError as exc:
        if STATE["debug"]:
            raise
        err.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except SystemExit as exc:  # Typer turns an interrupt into its own exit 130
        if _SIGNALLED and exc.code == 130:
            _exit_interrupted()
        raise
    except KeyboardInterrupt:
        _exit_interrupted()
    except OSError as exc:  # a storage failure no artifact writer turned into a WriteError
        from hardneg.io import is_write_failure, write_error

        if STATE["debug"] or not is_write_failure(exc):
            raise
        message = str(write_error(exc, exc.filename or "output"))
        err.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)
        sys.exit(HardnegError.exit_code)
