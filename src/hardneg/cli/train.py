"""``hardneg train`` (its flags generated from :class:`~hardneg.train.config.TrainConfig`) and ``export``.

Every TrainConfig field with a CLI flag becomes a ``typer.Option`` here: its help text is
the field's description, its help panel the field's ``panel`` and its type the field's,
with default ``None`` meaning "not given". The command merges a preset, a ``--config``
YAML file and the given flags (later ones win) into one TrainConfig.
"""

from __future__ import annotations

import inspect
import shutil
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from hardneg.cli.common import (
    STATE,
    ThreadsOpt,
    default_out,
    info,
    join_torchrun,
    open_model,
    use_threads,
)
from hardneg.errors import HardnegError
from hardneg.train.config import ADORE, TrainConfig
from hardneg.train.methods import method_help, method_names, method_spec, methods_that
from hardneg.train.presets import PRESETS, resolve_config

#: the methods with a fixed document encoder (ADORE), which --doc-model names
_FROZEN_DOC = methods_that(lambda s: s.frozen_doc)

#: options of the command that are not TrainConfig settings, by name: (annotation, put before field)
_COMMAND_OPTIONS: dict[str, tuple[Any, str | None]] = {
    "config": (Annotated[Path | None, typer.Option("--config", help="YAML file of settings (flags override it).")],
               "max_steps"),
    "preset": (Annotated[str | None, typer.Option("--preset", help=f"{', '.join(list(PRESETS)[:-1])} or "
                                                                 f"{list(PRESETS)[-1]}.")], "max_steps"),
    "resume": (Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")],
               "max_steps"),
    "print_config": (Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved settings (preset + YAML + flags) as YAML and exit.")],
        "max_steps"),
    "doc_model": (Annotated[str | None, typer.Option(
        "--doc-model", help=f"{_FROZEN_DOC}: the fixed document encoder (same as --model; an ADORE output "
        "continues its query tower).", rich_help_panel=ADORE)], "index"),
    "threads": (ThreadsOpt, None),
}
_FALSE_DEFAULT = {"resume", "print_config"}


def _flag_type(annotation: Any) -> type:
    """``int | None`` → ``int``: the one non-None type of a setting."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner
    return annotation


def setting_options() -> list[inspect.Parameter]:
    """One keyword parameter (a ``typer.Option``, default None) per TrainConfig setting with a flag."""
    params = []
    for name, field in TrainConfig.model_fields.items():
        meta = field.json_schema_extra or {}
        if not meta.get("cli", True):
            continue
        kind = Path if meta.get("path") else _flag_type(field.annotation)
        flags = list(meta.get("flags") or ["--" + name.replace("_", "-")])
        if kind is bool:
            flags[0] = f"{flags[0]}/--no-{flags[0][2:]}"
        option = typer.Option(*flags, help=field.description, rich_help_panel=meta.get("panel"))
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind | None, option]))
    return params


def _signature() -> inspect.Signature:
    method_doc = "; ".join(f"{n}: {method_help(n)}" for n in method_names()) + "."
    params = [inspect.Parameter("method", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=Annotated[str, typer.Argument(help=method_doc)])]
    settings = setting_options()
    for param in settings:
        for name, (annotation, before) in _COMMAND_OPTIONS.items():
            if before == param.name:
                params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                                default=False if name in _FALSE_DEFAULT else None))
        params.append(param)
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=None)
               for name, (annotation, before) in _COMMAND_OPTIONS.items() if before is None]
    return inspect.Signature(params)


def train(**kwargs: Any) -> None:
    """Train a dense retriever with one of the paper's negative-sampling methods (one shared loop).

    Example: `hardneg train star --data ../shared/data/scifact --preset cpu-demo --out runs/star`

    Several GPUs / nodes: `torchrun --nproc_per_node 4 -m hardneg train star …` (--batch-size is per
    process; --resume needs the same number of processes).

    ADORE (query tower only, fixed index): `hardneg train adore --doc-model runs/star/model
    --data ../shared/data/scifact --index pq48 --metric mrr@200 --out runs/adore`

    Settings come from --preset, then --config (YAML, the same names with underscores), then the flags;
    `--print-config` shows the result.
    """
    method = kwargs.pop("method")
    command = {name: kwargs.pop(name) for name in _COMMAND_OPTIONS}
    given = {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items() if v is not None}
    doc = command["doc_model"]
    if doc is not None:  # a frozen-document method's (ADORE's) name for the one `model` setting
        if not method_spec(method).frozen_doc:
            raise HardnegError(f"--doc-model is for {_FROZEN_DOC} (its fixed document encoder); {method} takes "
                               "--model")
        if given.get("model", doc) != doc:
            raise HardnegError(f"give {method}'s document encoder once: --doc-model or --model")
        given["model"] = doc
    cfg, explicit = resolve_config(command["preset"], command["config"],
                                   {**given, "method": method, "quiet": STATE["quiet"]})
    if "out" not in explicit:
        cfg.out = str(default_out("train", Path(cfg.data).name, method))
    if command["print_config"]:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), end="")
        return
    from hardneg import distributed as dist
    from hardneg.locks import output_lock
    from hardneg.train.trainer import Trainer

    with output_lock(cfg.out):  # <out>.run.lock beside the folder; under torchrun rank 0 holds it for the job
        use_threads(command["threads"])
        join_torchrun(cfg.dist_timeout)  # under torchrun: N processes with --batch-size B train like one with N·B
        cfg.quiet = STATE["quiet"]  # ranks other than 0 are quiet
        trainer = Trainer(cfg)
        trainer.setup()
        model_dir = trainer.train(resume=command["resume"])
        info(f"model in {model_dir}; logs in {cfg.out}/train_log.jsonl")
        dist.destroy()


train.__signature__ = _signature()  # type: ignore[attr-defined]  # what typer builds the command from


def export(
    model: Annotated[str, typer.Argument(help="A hardneg model folder (e.g. runs/adore/model).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="sentence-transformers folder to write.")],
    query_model: Annotated[str | None, typer.Option(
        "--query-model", help="A separate query encoder; MODEL is then the document encoder (e.g. DRhard's "
        "released ADORE query encoder with its STAR document encoder).")] = None,
    tokenizer: Annotated[str | None, typer.Option(
        "--tokenizer", help="Tokenizer folder or name when MODEL has none (DRhard checkpoints: "
        "roberta-base).")] = None,
    evals: Annotated[list[Path] | None, typer.Option(
        "--eval", help="A `hardneg retrieve` / `search` output folder whose metrics go into the model card "
        "(repeatable; an experiment's test and transfer metrics are found by themselves).")] = None,
    card: Annotated[bool, typer.Option("--card/--no-card", help="Write README.md, the model card.")] = True,
    push_to_hub: Annotated[str | None, typer.Option(
        "--push-to-hub", help="Also upload the folder to this Hugging Face model repo (user/name), "
        "creating it if needed.")] = None,
    private: Annotated[bool, typer.Option("--private", help="--push-to-hub: create the repo private.")] = False,
    token: Annotated[str | None, typer.Option(
        "--token", help="--push-to-hub: a write token (default $HF_TOKEN, else `hf auth login`'s).")] = None,
) -> None:
    """Export a model as one sentence-transformers folder (separate towers become a Router model).

    The folder gets a model card (README.md): base model, method and settings, training data,
    steps, dev and test metrics, and the command that trained it, read from the training run
    beside MODEL (OUT/model → OUT/config.json, summary.json, ...); its YAML says which datasets
    the model trained on, so MTEB results on them are not taken as zero-shot.

    Example: `hardneg export runs/adore/model --out runs/adore-st` then
    `SentenceTransformer("runs/adore-st").encode_query([...])`. DRhard's released pair:
    `hardneg export star --query-model adore-star --tokenizer roberta-base --out adore-st`
    (its projection head becomes Dense → LayerNorm modules).
    Publish: `hardneg export runs/star/model --out runs/star-st --push-to-hub me/star-scifact --private`
    """
    from hardneg.export.card import write_model_card
    from hardneg.export.hub import check_repo_id
    from hardneg.export.hub import push_to_hub as upload
    from hardneg.export.sources import read_evaluation
    from hardneg.export.st_model import export_sentence_transformers
    from hardneg.io import read_json
    from hardneg.model.registry import resolve_model

    if push_to_hub:
        check_repo_id(push_to_hub)  # before any work
    for folder in evals or []:
        read_evaluation(folder)  # a bad --eval folder fails before the export
    encoder = open_model(model, query_model=query_model, tokenizer=tokenizer)
    export_sentence_transformers(encoder, out)
    trained = resolve_model(model) / "adore.json"
    if trained.is_file() and "external_index" in read_json(trained):  # the index it belongs to, for `search`
        shutil.copyfile(trained, out / "adore.json")
    kind = "shared encoder" if encoder.config.shared else "query/document Router"
    info(f"sentence-transformers model ({kind}) in {out}")
    if card:
        path = write_model_card(out, model, encoder=encoder, evals=evals or [], repo_id=push_to_hub)
        info(f"model card in {path}")
    if push_to_hub:
        url = upload(out, push_to_hub, private=private, token=token)
        info(f"uploaded {out} to {url}")


def merge(
    model_a: Annotated[str, typer.Argument(help="Model A (alpha 0), e.g. the start model.")],
    model_b: Annotated[str, typer.Argument(help="Model B (alpha 1), e.g. the fine-tuned model.")],
    alpha: Annotated[float, typer.Option("--alpha", "-a", help="Weight of B: (1-alpha)*A + alpha*B.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
) -> None:
    """Interpolate two models in weight space (WiSE-FT): theta = (1-alpha)*A + alpha*B.

    Same architecture and tokenizer. With separate towers (an ADORE output) only the query towers
    are interpolated and the fixed document tower is kept, so its cached index stays valid.
    Example: `hardneg merge minilm runs/star/model --alpha 0.5 --out runs/star-wise-0.5`
    """
    from hardneg.model.merge import interpolate

    merged = interpolate(open_model(model_a), open_model(model_b), alpha)
    merged.save(out)
    what = "encoders" if merged.config.shared else "query towers (document tower kept)"
    info(f"{1 - alpha:g}*A + {alpha:g}*B of the {what} in {out}")


__all__ = ["export", "merge", "setting_options", "train"]
