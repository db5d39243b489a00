"""Commands that prepare data: ``tokenize`` (a memory-mapped store) and ``mine`` (hard negatives)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from hardneg.cli.common import (
    BatchOpt,
    CacheOpt,
    DataArg,
    DeviceOpt,
    MaxLenOpt,
    ModelOpt,
    ThreadsOpt,
    TopicFieldOpt,
    info,
    open_dataset,
    open_model,
    progress,
    side_kind,
    use_threads,
)
from hardneg.negatives.rules import NegativeRules

#: the help panel of ``hardneg mine``'s selection flags
RULES_PANEL = "Selection rules"


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

    dataset = open_dataset(data, topic_field=topic_field)
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
    file_format: Annotated[str, typer.Option("--format",
        help="`tsv` (qid, docid, rank), `st` (sentence-transformers anchor/positive/negative_1..n: JSONL "
             "for a .jsonl path, else a datasets folder) or `tevatron` (Tevatron JSONL).")] = "tsv",
    max_length: MaxLenOpt = None,
    batch_size: BatchOpt = 64,
    cache_dir: CacheOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "auto",
    topic_field: TopicFieldOpt = "title",
    chunk_size: Annotated[int, typer.Option("--chunk-size",
        help="Queries mined per chunk; progress is committed after each, so a rerun resumes (dense models "
             "round it up to a multiple of 4096).")] = 4096,
    **rules: Any,
) -> None:
    """Mine hard negatives: the top-k non-positive documents of every training query (dense model or BM25).

    Example: `hardneg mine ../shared/data/scifact:train --model minilm --topk 200 --out runs/hard.tsv`
    """
    from hardneg.data.cache import cache_dir_or_default
    from hardneg.data.load import parse_spec
    from hardneg.locks import output_lock
    from hardneg.negatives.diagnostics import diagnostics_path_for
    from hardneg.negatives.formats.common import check_format
    from hardneg.negatives.sampling import check_topk
    from hardneg.negatives.stream import mine_streamed

    check_format(file_format)
    selection = NegativeRules(**rules)
    use_threads(threads)
    path, split = parse_spec(data)
    cache = cache_dir_or_default(cache_dir)
    dataset = open_dataset(f"{path}:{split or 'train'}", topic_field=topic_field, cache_dir=cache)
    qrels, queries = dataset.qrels(), dataset.queries()
    check_topk(topk, dataset.doc_count())
    with output_lock(out):  # <out>.run.lock: one process per output (and its .partial)
        done = mine_streamed(dataset, qrels, queries, model, selection, topk, cache, out, file_format,
                             batch_size=batch_size, chunk_size=chunk_size,
                             open_encoder=lambda: open_model(model, max_length=max_length, device=device),
                             show_progress=progress(), device=None if device == "auto" else device,
                             diagnostics_path=diagnostics_path_for(out), settings={"max_length": max_length})
    stats = done["stats"]
    rows = f" ({stats['rows']} rows)" if stats else ""
    info(f"{done['negatives']} hard negatives for {done['queries']} queries in {out}{rows}")


def rule_options() -> list[inspect.Parameter]:
    """One option per :class:`~hardneg.negatives.rules.NegativeRules` setting (its flag, type, default and
    help): ``hardneg mine``'s selection flags, generated from their one declaration."""
    return [inspect.Parameter(s.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=s.default,
                              annotation=Annotated[s.type, typer.Option(s.flag, help=s.help,
                                                                        rich_help_panel=RULES_PANEL)])
            for s in NegativeRules.settings()]


def _mine_signature() -> inspect.Signature:
    """``mine``'s own options, with the selection flags before ``--chunk-size`` (what typer builds it from)."""
    own = [p for p in inspect.signature(mine, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
    at = [p.name for p in own].index("chunk_size")
    return inspect.Signature([*own[:at], *rule_options(), *own[at:]])


mine.__signature__ = _mine_signature()  # type: ignore[attr-defined]
