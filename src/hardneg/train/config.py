"""Training configuration: one typed model, YAML load, validation before compute (presets: hardneg.train.presets).

:class:`TrainConfig` is a pydantic model: every setting has a type, a default and a
description (the ``hardneg train`` flag's help text, written once here), and a bad
value fails when the config is built, as a :class:`~hardneg.errors.HardnegError`
naming the key (and the YAML file) and what it takes. YAML reads ``1e-4`` (no dot)
as a string; numeric strings are accepted for number settings (``"1e-4"`` → 0.0001,
``"32"`` → 32), anything else ("fast") is an error. Rules that involve several
settings (``refresh_every`` is for ance, ...) are checked by :meth:`TrainConfig.validate`,
which the trainer runs before any compute.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from hardneg.errors import HardnegError
from hardneg.negatives.rules import NegativeRules
from hardneg.train import resume_keys
from hardneg.train.feature_checks import check_features, flag_for
from hardneg.train.methods import method_names, method_spec, method_specs, methods_that
from hardneg.train.methods.settings import check_distill, parse_adore_metric
from hardneg.train.report_to import check_installed

METHODS = method_names()
OPTIMIZERS = ("adamw", "lamb")
LAMB_VARIANTS = ("decoupled", "drhard")
EXAMPLES_PER_QUERY = ("each-positive", "one")
LOSSES = ("ranknet", "softmax")
PRECISIONS = ("fp32", "bf16", "fp16")
STAR_MIXINGS = ("alpha", "pairmean")
ADORE_LOSSES = ("lambda", "ranknet")
ADORE_POSITIVES = ("missing", "always")
ADORE_REDUCTIONS = ("query", "global")
DISTILL_KINDS = ("none", "margin-mse", "kl")  # hardneg.train.distill's (that module imports torch)

#: the negative-selection rules (issue 16), declared once by hardneg.negatives.rules.NegativeRules: TrainConfig's
#: fields of the same names are generated from them (their defaults: no rule active, today's behaviour)
SELECTION_SETTINGS = NegativeRules.settings()
SELECTION_DEFAULTS: dict[str, Any] = NegativeRules.defaults()

#: where ``report_to`` may send the log's scalars (besides ``train_log.jsonl``, always written)
REPORT_TO = ("tensorboard", "mlflow", "wandb")

#: help panels of ``hardneg train --help`` (a setting without one is listed under "Options")
OPTIMISATION, ENCODER, NEGATIVES, ADORE, EVALUATION, CHECKPOINTS = (
    "Optimisation", "Encoder", "Negatives and loss", "ADORE", "Evaluation", "Checkpoints")
LORA = "LoRA"

#: one-of settings and what they allow
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS, "optimizer": OPTIMIZERS, "loss": LOSSES, "precision": PRECISIONS,
    "star_mixing": STAR_MIXINGS, "adore_loss": ADORE_LOSSES, "adore_positives": ADORE_POSITIVES,
    "adore_reduction": ADORE_REDUCTIONS, **{s.name: s.choices for s in SELECTION_SETTINGS if s.choices},
    "dev_carve": ("queries", "documents"), "lamb_variant": LAMB_VARIANTS, "examples_per_query": EXAMPLES_PER_QUERY,
    "distill": DISTILL_KINDS,
    "lora_save": ("merged", "adapter"),
    "batch_composition": ("random", "tas"),
}
#: whole-number settings that must be at least 1
AT_LEAST_ONE = ("max_steps", "batch_size", "grad_accum", "n_negatives", "topk", "dev_every", "save_every",
                "keep_checkpoints", "query_max_length", "batch_encode_size", "train_chunk", "adore_topk",
                "nprobe", "ef_search", "mine_query_max_length", "mine_doc_max_length", "mini_batch", "tas_clusters",
                "tas_clusters_per_batch")


def setting(default: Any = None, help: str = "", *, panel: str | None = None, flags: tuple[str, ...] = (),
            cli: bool = True, path: bool = False, **kwargs: Any) -> Any:
    """A :class:`TrainConfig` field: ``help`` is the description and the CLI flag's help; ``panel`` its
    help panel; ``flags`` replaces the flag names (default ``--<name>``); ``cli=False``: no flag;
    ``path``: the flag takes a path (stored as a string)."""
    extra = {"panel": panel, "flags": list(flags), "cli": cli, "path": path}
    return Field(default, description=help, json_schema_extra=extra, **kwargs)


class TrainConfig(BaseModel):
    """Every setting of a training run; each has a CLI flag and a YAML key of the same name."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    method: str = setting("star", "Training method (the command's METHOD argument).", cli=False)
    data: str = setting("", "Training data `path[:split]` (split defaults to train).", flags=("--data", "-d"))
    model: str = setting("minilm", "Start encoder (default minilm).", flags=("--model", "-m"))
    out: str = setting("runs/train", "Output folder (model/, logs, checkpoints/).", flags=("--out", "-o"))
    # schedule
    max_steps: int = setting(100, "Optimiser steps.", panel=OPTIMISATION)
    batch_size: int = setting(32, "Queries per micro-batch.", panel=OPTIMISATION)
    grad_accum: int = setting(1, "Micro-batches per optimiser step.", panel=OPTIMISATION)
    lr: float = setting(2e-5, "Peak learning rate.", panel=OPTIMISATION)
    optimizer: str = setting("adamw", "adamw or lamb.", panel=OPTIMISATION)
    lamb_variant: str = setting(
        "decoupled", "lamb: decoupled (pytorch-optimizer's Lamb: decoupled weight decay, eps 1e-6) or drhard "
        "(DRhard's lamb.py: weight decay as L2 inside the trust ratio, eps 1e-8).", panel=OPTIMISATION)
    weight_decay: float = setting(0.01, "Weight decay.", panel=OPTIMISATION)
    warmup_ratio: float = setting(0.1, "Share of steps in linear warm-up.", panel=OPTIMISATION)
    schedule_epochs: float | None = setting(
        None, "The linear LR decay reaches 0 after this many epochs of the training examples instead of at "
        "--max-steps (DRhard: star/train.py 100, adore/train.py 6; its runs stop before).", panel=OPTIMISATION)
    examples_per_query: str = setting(
        "each-positive", "each-positive: one training example per (query, positive) pair; one: one per query, "
        "its positive drawn anew each time it comes up (DRhard's datasets). ADORE: always one per query.",
        panel=OPTIMISATION)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.", panel=OPTIMISATION)
    precision: str = setting(
        "fp32", "fp32, bf16 or fp16: autocast around the encoder forward passes only, scores and losses in "
        "fp32; fp16 adds dynamic loss scaling (bf16 is ~7x slower on most CPUs).", panel=OPTIMISATION)
    device: str = setting("auto", "auto (CUDA when present, else CPU), cpu, cuda or cuda:N; under torchrun "
                          "each rank's GPU. May change on --resume.", panel=OPTIMISATION)
    dist_timeout: float = setting(
        3600.0, "Under torchrun: seconds a rank may wait in a collective for the others (the process group's "
        "timeout). The long work (corpus encoding, mining) is shared by the ranks, so no rank waits for another's "
        "whole share. May change on --resume.", panel=OPTIMISATION, gt=0)
    gradient_checkpointing: bool = setting(False, "Trade compute for memory.", panel=OPTIMISATION)
    seed: int = setting(42, "Seed of data order, sampling and dropout.", panel=OPTIMISATION)
    # encoder
    pooling: str | None = setting(None, "cls or mean (default: the model's).", panel=ENCODER)
    normalize: bool | None = setting(None, "L2-normalise (default: the model's).", panel=ENCODER)
    query_max_length: int = setting(64, "Query max length in tokens.", panel=ENCODER)
    doc_max_length: int | None = setting(None, "Document max length in tokens.", panel=ENCODER)
    # loss
    loss: str = setting("ranknet", "ranknet (paper Eq. 14) or softmax.", panel=NEGATIVES)
    score_scale: float | None = setting(
        None, "Multiply scores before the loss (default 20 for normalised encoders, else 1).", panel=NEGATIVES)
    # negatives
    n_negatives: int = setting(1, "Sampled negatives per query.", panel=NEGATIVES)
    topk: int = setting(200, "Hard negatives come from each query's top-k.", panel=NEGATIVES)
    negatives: str | None = setting(
        None, "Negatives file (static, star): TSV, TREC run, Tevatron JSONL or sentence-transformers "
        "JSONL/datasets folder; default: mined with the start model.", panel=NEGATIVES)
    alpha: float = setting(1.0, "STAR: weight of the random-negative loss.", panel=NEGATIVES)
    star_mixing: str = setting("alpha", "STAR: alpha (L_s + a L_r) or pairmean (DRhard's formula).",
                               panel=NEGATIVES)
    refresh_every: int = setting(0, "ance: re-mine negatives every N steps.", panel=NEGATIVES)
    mine_query_max_length: int | None = setting(
        None, "static, star, ance: query max length when mining with the start model (default "
        "--query-max-length; DRhard's prepare_hardneg.py: 32).", panel=NEGATIVES)
    mine_doc_max_length: int | None = setting(
        None, "static, star, ance: document max length when mining with the start model (default "
        "--doc-max-length; DRhard: 256 passage, 512 document).", panel=NEGATIVES)
    rand_batch_positives: bool = setting(
        True, "rand: the batch's other positives are negatives too (default), or only the sampled "
        "negatives of the batch (DRhard's RobertaDot_Rand: --no-rand-batch-positives).", panel=NEGATIVES)
    # negative-selection rules: one field per NegativeRules setting (name, type, default, help), generated here in
    # declaration order from their one declaration (hardneg.negatives.rules; sentence-transformers' names)
    __annotations__.update({s.name: s.type for s in SELECTION_SETTINGS})
    locals().update({s.name: setting(s.default, s.help, panel=NEGATIVES) for s in SELECTION_SETTINGS})
    # adore: ``model`` (CLI --model or --doc-model) is the fixed document encoder; training starts the
    # query tower from it (or from its query_tower/ when it is itself an ADORE output)
    index: str = setting("flat", "adore: the fixed index searched every step: a kind hardneg builds (flat, pq<M>, "
                         "ivfpq, ...; default flat) or an index you have: a Pyserini index folder, a Faiss file or "
                         "an embeddings .npy (with --index-ids).", panel=ADORE)
    metric: str = setting("mrr@200", "adore: mrr@k or ndcg@k, whose change weights each pair "
                          "(default mrr@200).", panel=ADORE)
    adore_topk: int = setting(200, "adore: documents retrieved per query each step (default 200).",
                              panel=ADORE)
    adore_loss: str = setting("lambda", "adore: lambda (ΔM-weighted, default) or ranknet (unweighted "
                              "ablation).", panel=ADORE)
    adore_positives: str = setting(
        "missing", "adore: missing (DRhard, default: append unretrieved positives after rank K only when "
        "none was retrieved) or always (append every unretrieved positive).", panel=ADORE)
    adore_reduction: str = setting(
        "query", "adore: query (DRhard, default: mean of each query's pair losses, then over queries) or "
        "global (mean over all pairs).", panel=ADORE)
    nprobe: int | None = setting(
        None, "adore: IVF lists visited per search (ivf/ivfpq indexes; default the index's own).", panel=ADORE)
    ef_search: int | None = setting(
        None, "adore: HNSW search breadth (hnsw indexes; default the index's own).", panel=ADORE)
    index_fp16: bool = setting(
        False, "adore: the flat index stored in float16 on the GPU (half the memory: MS MARCO's 8.8M x 768 "
        "fits in 14 GB instead of 27; ranks from fp16 vectors, scores from the fp32 ones).", panel=ADORE)
    # development split and checkpoints
    dev_split: str | None = setting(None, "Use this split as dev instead of carving one out of train.",
                                    panel=EVALUATION)
    dev_fraction: float = setting(0.1, "Share of training queries carved out as dev.", panel=EVALUATION)
    dev_carve: str = setting(
        "queries", "How dev is carved out of train: queries (a seeded share) or documents (whole groups of "
        "queries sharing a relevant document, so dev's relevant documents are never training positives).",
        panel=EVALUATION)
    dev_every: int = setting(50, "Evaluate on dev every N steps.", panel=EVALUATION)
    dev_metric: str = setting("RR@10", "ir-measures name selecting the best model (dev is ranked as deep as its "
                              "cut-off needs, at least 100: R@1000 ranks 1000 deep).", panel=EVALUATION)
    dev_at_start: bool = setting(True, "Also evaluate the start model (step 0).", panel=EVALUATION)
    patience: int = setting(
        0, "Early stopping: stop after N dev evaluations without a better --dev-metric (the best model is "
        "kept; --max-steps is the cap). 0 = off.", panel=EVALUATION)
    dev_pool: int = setting(20, "Dev ranks BM25 top-N per dev query + positives; 0 = full corpus.",
                            panel=EVALUATION)
    save_every: int = setting(50, "Checkpoint every N steps.", panel=CHECKPOINTS)
    keep_checkpoints: int = setting(2, "Checkpoints kept.", panel=CHECKPOINTS)
    batch_encode_size: int = setting(64, "Texts per batch when encoding for dev evaluation and mining.",
                                     panel=OPTIMISATION)
    train_chunk: int = setting(16, "Rows per length-sorted forward pass in a training step.",
                               panel=OPTIMISATION)
    track_every: int = setting(0, "Log static/dynamic negative overlap and train MRR@10 every N steps "
                               "(costs a corpus encoding; 0 = off).", panel=EVALUATION)
    track_queries: int = setting(0, "Training queries sampled for --track-every (0 = all).", panel=EVALUATION)
    report_to: list[str] = setting(
        ["tensorboard"], "Also send the log's scalars to tensorboard, mlflow or wandb (repeat the flag for several; "
        "none = train_log.jsonl only). Rank 0 only.", panel=EVALUATION)
    cache_dir: str | None = setting(None, "Where tokenized stores, embeddings and indexes are cached "
                                    "(default $HARDNEG_CACHE_DIR or ~/.cache/hardneg).", path=True)
    quiet: bool = setting(False, "No progress bars or info messages (the global --quiet).", cli=False)
    # distillation from a teacher's scores (issue 28; hardneg.train.distill)
    distill: str = setting("none", "Distil the --teacher's scores: margin-mse (Hofstatter et al.) or kl (listwise); "
                           "the loss of static/bm25neg/ance, STAR's hard-negative term, an added term for adore.",
                           panel=NEGATIVES)
    distill_weight: float = setting(1.0, "Weight W of the distillation loss (W x L_distill; adore: L + W x "
                                    "L_distill).", panel=NEGATIVES)
    distill_temperature: float = setting(1.0, "--distill kl: softmax temperature T (the loss is scaled by T^2).",
                                         panel=NEGATIVES)
    distill_teacher_scale: float = setting(
        1.0, "Multiply the teacher's scores by this before the distillation loss, to put them on the student's "
        "scale (scale x cosine, 20 for MiniLM): e.g. 10 for a fusion teacher (scores in [0, 2]).", panel=NEGATIVES)
    # GradCache and --compile (issue 28)
    grad_cache: bool = setting(
        False, "GradCache (Gao et al., 2021): the whole batch's loss and gradient with the activation memory of "
        "one --mini-batch (document-side methods).", panel=OPTIMISATION)
    mini_batch: int | None = setting(
        None, "--grad-cache: rows per forward pass (default --train-chunk, which gives the plain step's dropout).",
        panel=OPTIMISATION)
    compile: bool = setting(False, "torch.compile the encoder towers (in place: checkpoint and model keys "
                            "unchanged), for training and encoding. May change on --resume.", panel=OPTIMISATION)
    compile_backend: str = setting("inductor", "--compile: torch.compile backend (inductor; eager/aot_eager to "
                                   "debug). May change on --resume.", panel=OPTIMISATION)
    extra: dict[str, Any] = Field(default_factory=dict, description="Free-form notes kept with the run.",
                                  json_schema_extra={"cli": False})
    # ADORE on an index you already have (issue 29)
    index_ids: str | None = setting(
        None, "adore with --index FILE (a Faiss file or an embeddings .npy): the document id of each index row, "
        "one per line (a Pyserini folder has its own docid file).", panel=ADORE, path=True)
    index_build: str = setting(
        "flat", "adore with --index EMBEDDINGS.npy: the index hardneg builds over them (flat, pq<M>, ivfpq, hnsw, "
        "...; default flat).", panel=ADORE)
    index_check: float = setting(
        0.5, "adore with --index PATH: stop before training when the training positives' median rank under the "
        "start query encoder is past this share of the index (0.5: the bottom half, near-random: a pooling, "
        "normalisation, prompt or model mismatch); 0 turns the check off.", panel=ADORE)
    # LoRA adapters (issue 28; hardneg.model.lora): only the adapters of the trained towers train
    lora_r: int = setting(
        0, "LoRA rank: train low-rank adapters (peft) instead of the whole encoder; 0 = off. ADORE: on the "
        "query tower only (the document tower and its index stay as they are).", panel=LORA, ge=0)
    lora_alpha: float | None = setting(None, "LoRA scaling numerator alpha (the update is scaled by alpha/r; "
                                       "default 2 x --lora-r).", panel=LORA, gt=0)
    lora_dropout: float = setting(0.1, "Dropout on the LoRA adapters' input.", panel=LORA, ge=0, lt=1)
    lora_targets: str | None = setting(
        None, "Comma list of module names that get adapters (e.g. query,key,value), or all-linear; default: "
        "peft's for the model type (the attention query and value projections for BERT/RoBERTa).", panel=LORA)
    lora_save: str = setting(
        "merged", "OUT/model with LoRA: merged (adapters merged into the weights: a plain transformers / "
        "sentence-transformers folder) or adapter (peft's adapter files and the base model's name; hardneg "
        "merges them on load).", panel=LORA)
    # TAS batches (issue 28; hardneg.train.tas): micro-batches drawn from k-means clusters of the queries
    batch_composition: str = setting(
        "random", "random (a seeded permutation per epoch) or tas (each batch from --tas-clusters-per-batch "
        "k-means clusters of the start model's query vectors; Hofstätter et al. 2021).", panel=NEGATIVES)
    tas_clusters: int | None = setting(
        None, "tas: k-means clusters of the training queries (default 2000 as TAS-B, at most one per 20 "
        "queries).", panel=NEGATIVES)
    tas_clusters_per_batch: int = setting(1, "tas: clusters each batch is drawn from (default 1, as TAS-B).",
                                          panel=NEGATIVES)

    # ------------------------------------------------------------------ construction
    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error(exc) from exc

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise config_error(exc) from exc

    @field_validator(*CHOICES)
    @classmethod
    def _one_of(cls, value: str, info: ValidationInfo) -> str:
        return _checked(info.field_name, value)

    @field_validator(*AT_LEAST_ONE, "track_every", "track_queries", "lr", "warmup_ratio", "alpha",
                     "score_scale", "schedule_epochs")
    @classmethod
    def _in_range(cls, value: Any, info: ValidationInfo) -> Any:
        return _checked(info.field_name, value)

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_targets(cls, value: Any) -> Any:
        if isinstance(value, str):  # YAML ``report_to: mlflow``, or ``mlflow,wandb``
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"report_to takes a list of {', '.join(REPORT_TO)} (or none), not {value!r}")
        names = [v.strip().lower() for v in value]
        bad = [v for v in names if v not in (*REPORT_TO, "none")]
        if bad:
            raise ValueError(f"report_to must be {', '.join(REPORT_TO)} or none, not {bad[0]!r}")
        return list(dict.fromkeys(v for v in names if v != "none"))

    @field_validator("lora_targets", mode="before")
    @classmethod
    def _targets_list(cls, value: Any) -> Any:
        """YAML may list the LoRA target modules (``[query, value]``): kept as the flag's comma list."""
        return ",".join(map(str, value)) if isinstance(value, list | tuple) else value

    @field_validator("metric", mode="before")
    @classmethod
    def _metric_is_text(cls, value: Any) -> Any:
        if not isinstance(value, str):  # None, 10, ...: the message says what a metric looks like
            try:
                parse_adore_metric(value)
            except HardnegError as exc:
                raise ValueError(str(exc)) from None
        return value

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:  # type: ignore[override]  # (pydantic's deprecated classmethod)
        """Raise a clear HardnegError for a bad configuration, before any compute."""
        for name in (*CHOICES, *AT_LEAST_ONE, "track_every", "track_queries", "lr", "warmup_ratio", "alpha",
                     "score_scale", "schedule_epochs"):
            try:
                _checked(name, getattr(self, name))
            except ValueError as exc:
                raise HardnegError(str(exc)) from None
        if not self.data:
            raise HardnegError("no training data: give --data path[:split] (split defaults to train)")
        if self.lamb_variant != _default("lamb_variant") and self.optimizer != "lamb":
            raise HardnegError(f"--lamb-variant {self.lamb_variant} is for --optimizer lamb, not {self.optimizer}")
        check_installed(self.report_to)  # a missing mlflow / wandb names the extra before any compute
        if not 0 < self.dev_fraction < 1 and self.dev_split is None:
            raise HardnegError(f"dev_fraction must be in (0, 1), not {self.dev_fraction}")
        spec = method_spec(self.method)  # what the method takes and needs: the registry says, not its name
        self._refuse_others_settings()
        check_distill(self, spec)  # --distill: a method that distils, a --teacher (before the teacher's own check)
        if self.negatives and not spec.negatives_file:
            raise HardnegError(f"--negatives is for the {methods_that(lambda s: s.negatives_file)} methods, "
                               f"not {self.method}")
        if self.negatives and not Path(self.negatives).exists():
            raise HardnegError(f"{self.negatives}: negatives/run file not found (write one with 'hardneg mine')")
        changed = [k for k, v in SELECTION_DEFAULTS.items() if getattr(self, k) != v]
        if changed and not spec.selection_rules:
            flags = ", ".join(flag_for(k, getattr(self, k)) for k in changed)
            raise HardnegError(f"{flags}: negative-selection rules are for "
                               f"{methods_that(lambda s: s.selection_rules)}, not {self.method}")
        if changed:
            NegativeRules.from_config(self)  # its own checks (ranges, margins), as a HardnegError
        check_features(self, spec)  # LoRA, GradCache / --compile, TAS batches (hardneg.train.feature_checks)
        if spec.check is not None:
            spec.check(self)  # the method's own settings together (e.g. ance's --refresh-every, adore's --metric)

    def _refuse_others_settings(self) -> None:
        """A setting another method takes alone (its spec's ``settings``) must keep its default here."""
        for other in method_specs():
            if other.name == self.method:
                continue
            changed = [k for k in other.settings if getattr(self, k) != _default(k)]
            if changed:
                flags = ", ".join(flag_for(k, getattr(self, k)) for k in changed)
                raise HardnegError(f"{flags}: for the {other.name} method, not {self.method}")

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied (``dataclasses.replace`` for this model)."""
        return type(self)(**{**self.to_dict(), **changes})

    def fingerprint(self, *, locations: bool = False) -> str:
        """Hash of the settings that must not change across ``--resume``
        (:func:`hardneg.train.resume_keys.fingerprint`)."""
        return resume_keys.fingerprint(self.to_dict(), locations=locations)

    def fingerprints(self) -> tuple[str, str]:
        """The fingerprints a checkpoint of these settings may carry
        (:func:`hardneg.train.resume_keys.fingerprints`)."""
        return resume_keys.fingerprints(self.to_dict())

    def changed(self, before: dict[str, Any]) -> list[str]:
        """``setting: old -> new`` for each setting that differs from ``before`` (a run's ``config.json``) and may
        not change across ``--resume`` (:func:`hardneg.train.resume_keys.changed`)."""
        return resume_keys.changed(self.to_dict(), before)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> TrainConfig:
        """Build from a mapping of settings; errors name ``source`` (a file) when given."""
        if not isinstance(data, dict):
            raise HardnegError(f"{_where(source)}a training config is a mapping of settings")
        try:
            return cls.model_validate(data)  # runs __init__: a problem is a HardnegError
        except HardnegError as exc:
            if source is None:
                raise
            raise HardnegError(f"{source}: {exc}") from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(load_settings(path), source=path)


def load_settings(path: str | Path) -> dict[str, Any]:
    """The mapping of settings in a YAML file (safe loader; not checked against TrainConfig)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise HardnegError(f"{path}: cannot read the training config: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise HardnegError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise HardnegError(f"{path}: a training config is a mapping of settings")
    return data


def _checked(name: str, value: Any) -> Any:
    """``value`` if it is allowed for setting ``name`` (a one-of or range rule), else ValueError."""
    if name in CHOICES and value not in CHOICES[name]:
        raise ValueError(f"{name} must be one of {', '.join(CHOICES[name])}, not {value!r}")
    if name in AT_LEAST_ONE and value is not None and value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    if name in ("track_every", "track_queries") and value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
    if name in ("lr", "score_scale", "schedule_epochs") and value is not None and value <= 0:
        raise ValueError(f"{name} must be positive, not {value}")
    if name == "warmup_ratio" and not 0 <= value < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), not {value}")
    if name == "alpha" and value < 0:
        raise ValueError(f"alpha must be >= 0, not {value}")
    return value


def _default(name: str) -> Any:
    return TrainConfig.model_fields[name].get_default(call_default_factory=True)


def _where(source: str | Path | None) -> str:
    return f"{source}: " if source is not None else ""


_KINDS = {int: "a whole number", float: "a number (e.g. 1e-4)", bool: "true or false", str: "a string", list: "a list",
          dict: "a mapping"}


def _takes(name: str) -> str:
    """What setting ``name`` takes, in words, e.g. ``a whole number, default 32``."""
    info = TrainConfig.model_fields[name]
    types = [t for t in (get_args(info.annotation) or (info.annotation,)) if t is not type(None)]
    kind = " or ".join(_KINDS.get(getattr(t, "__origin__", t), str(t)) for t in types)
    if type(None) in get_args(info.annotation):
        kind += " or null"
    default = info.get_default(call_default_factory=True)
    return f"{kind}, default {default!r}"


def config_error(exc: ValidationError, source: str | Path | None = None) -> HardnegError:
    """One HardnegError for all of a validation's problems: the key, what was wrong, what is allowed."""
    known = list(TrainConfig.model_fields)
    problems = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "config"
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown training setting {key!r}{hint}; allowed: {', '.join(known)}")
        elif error["type"] == "value_error":
            problems.append(str(error["ctx"]["error"]))
        else:
            message = error["msg"][0].lower() + error["msg"][1:]
            takes = f"; {key} takes {_takes(key)}" if key in TrainConfig.model_fields else ""
            problems.append(f"{key}: {message} (got {error['input']!r}){takes}")
    return HardnegError(_where(source) + "; ".join(problems))
