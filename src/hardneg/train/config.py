"""Training configuration: one dataclass, named presets, YAML load, validation before compute."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hardneg.errors import HardnegError

METHODS = ("inbatch", "rand", "bm25neg", "static", "ance", "star", "adore")
OPTIMIZERS = ("adamw", "lamb")
LOSSES = ("ranknet", "softmax")
PRECISIONS = ("fp32", "bf16", "fp16")
STAR_MIXINGS = ("alpha", "pairmean")
ADORE_LOSSES = ("lambda", "ranknet")

#: ADORE's own settings and their defaults; any other method refuses a non-default value, and they
#: are left out of other methods' fingerprints (so checkpoints written before ADORE existed still resume)
ADORE_DEFAULTS: dict[str, Any] = {"index": "flat", "metric": "mrr@200", "adore_topk": 200, "adore_loss": "lambda"}

#: settings that may change between a run and its ``--resume`` (they do not change the math so far)
RESUMABLE_CHANGES = {"max_steps", "dev_every", "save_every", "keep_checkpoints", "quiet", "track_every",
                     "track_queries"}


@dataclass
class TrainConfig:
    """Every setting of a training run; each has a CLI flag and a YAML key of the same name."""

    method: str = "star"
    data: str = ""
    model: str = "minilm"
    out: str = "runs/train"
    # schedule
    max_steps: int = 100
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 2e-5
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 42
    # encoder
    pooling: str | None = None
    normalize: bool | None = None
    query_max_length: int = 64
    doc_max_length: int | None = None
    # loss
    loss: str = "ranknet"
    score_scale: float | None = None  # None: 20 for normalised encoders (cosine), 1 otherwise
    # negatives
    n_negatives: int = 1
    topk: int = 200
    negatives: str | None = None  # run / negatives file for static and star (mined by the start model if None)
    alpha: float = 1.0
    star_mixing: str = "alpha"
    refresh_every: int = 0  # ance: re-mine every N steps
    # adore: ``model`` (CLI --model or --doc-model) is the fixed document encoder; training starts the
    # query tower from it (or from its query_tower/ when it is itself an ADORE output)
    index: str = "flat"  # the fixed index ADORE retrieves from (flat, pq<M>, ivfpq, ...)
    metric: str = "mrr@200"  # mrr@k or ndcg@k: the metric whose change weights each pair
    adore_topk: int = 200  # documents retrieved per training query each step
    adore_loss: str = "lambda"  # lambda (ΔM-weighted pairs) or ranknet (every weight 1: the ablation)
    # development split and checkpoints
    dev_split: str | None = None  # a split of the dataset; None: carve dev_fraction out of train
    dev_fraction: float = 0.1
    dev_every: int = 50
    dev_metric: str = "RR@10"
    dev_at_start: bool = True  # evaluate the start model too (step 0): it is the best model if training never beats it
    dev_pool: int = 20  # rank dev queries over the union of BM25 top-N of the dev queries and their positives; 0 = full corpus
    save_every: int = 50
    keep_checkpoints: int = 2
    batch_encode_size: int = 64  # texts per batch when encoding without gradients (dev, mining)
    train_chunk: int = 16  # rows per forward pass in a training step, length-sorted (less padding)
    track_every: int = 0  # log static/dynamic negative overlap and train MRR every N steps (0 = off; see tracking.py)
    track_queries: int = 0  # training queries tracked (a seeded sample; 0 = all)
    cache_dir: str | None = None
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise a clear HardnegError for a bad configuration, before any compute."""
        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise HardnegError(f"{name} must be one of {', '.join(options)}, not {getattr(self, name)!r}")

        choice("method", METHODS)
        choice("optimizer", OPTIMIZERS)
        choice("loss", LOSSES)
        choice("precision", PRECISIONS)
        choice("star_mixing", STAR_MIXINGS)
        choice("adore_loss", ADORE_LOSSES)
        if not self.data:
            raise HardnegError("no training data: give --data path[:split] (split defaults to train)")
        for name in ("max_steps", "batch_size", "grad_accum", "n_negatives", "topk", "dev_every", "save_every",
                     "keep_checkpoints", "query_max_length", "batch_encode_size", "train_chunk"):
            if int(getattr(self, name)) < 1:
                raise HardnegError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.track_every < 0 or self.track_queries < 0:
            raise HardnegError("track_every and track_queries must be >= 0")
        if self.lr <= 0:
            raise HardnegError(f"lr must be positive, not {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise HardnegError(f"warmup_ratio must be in [0, 1), not {self.warmup_ratio}")
        if not 0 < self.dev_fraction < 1 and self.dev_split is None:
            raise HardnegError(f"dev_fraction must be in (0, 1), not {self.dev_fraction}")
        if self.alpha < 0:
            raise HardnegError(f"alpha must be >= 0, not {self.alpha}")
        if self.method == "ance" and self.refresh_every < 1:
            raise HardnegError("ance re-mines its negatives every N steps: give --refresh-every N (N >= 1)")
        if self.method != "ance" and self.refresh_every:
            raise HardnegError(f"--refresh-every is for the ance method, not {self.method}")
        if self.negatives and self.method not in ("static", "star"):
            raise HardnegError(f"--negatives is for the static and star methods, not {self.method}")
        if self.negatives and not Path(self.negatives).is_file():
            raise HardnegError(f"{self.negatives}: negatives/run file not found (write one with 'hardneg mine')")
        if self.score_scale is not None and self.score_scale <= 0:
            raise HardnegError(f"score_scale must be positive, not {self.score_scale}")
        if self.method == "adore":
            parse_adore_metric(self.metric)
            if int(self.adore_topk) < 1:
                raise HardnegError(f"adore_topk must be at least 1, not {self.adore_topk}")
            if not isinstance(self.index, str) or not self.index.strip():
                raise HardnegError("adore needs an index kind: --index flat, pq<M>, ivfpq, ...")
            if self.loss != "ranknet":
                raise HardnegError("adore's loss is chosen with --adore-loss (lambda or ranknet), not --loss")
        else:
            changed = [k for k, v in ADORE_DEFAULTS.items() if getattr(self, k) != v]
            if changed:
                flags = ", ".join("--" + k.replace("_", "-") for k in changed)
                raise HardnegError(f"{flags}: for the adore method, not {self.method}")

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of the settings that must not change across ``--resume``."""
        data = {k: v for k, v in self.to_dict().items() if k not in RESUMABLE_CHANGES}
        if self.method != "adore":
            data = {k: v for k, v in data.items() if k not in ADORE_DEFAULTS}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HardnegError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        import yaml

        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise HardnegError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise HardnegError(f"{path}: a training config is a mapping of settings")
        return cls.from_dict(data)


def parse_adore_metric(metric: object) -> tuple[str, int]:
    """``"mrr@200"`` → ``("mrr", 200)``; ``mrr@k`` or ``ndcg@k`` with an integer ``k >= 1``, else HardnegError.

    There is no cut-off-free form: DRhard's default ``metric_cut=None`` silently zeroed every weight.
    """
    match = re.fullmatch(r"(mrr|ndcg)@(\d+)", metric.strip().lower()) if isinstance(metric, str) else None
    if match is None or int(match.group(2)) < 1:
        raise HardnegError(
            f"metric must be mrr@k or ndcg@k with an integer cut-off k >= 1 (e.g. mrr@200, ndcg@10), "
            f"not {metric!r}"
        )
    return match.group(1), int(match.group(2))


#: The paper's settings (Zhan et al. 2021, section 6.1), as named presets.
PRESETS: dict[str, dict[str, Any]] = {
    # MS MARCO passage, STAR: RoBERTa-base, CLS pooling, q/d lengths 24/120, batch 256, LAMB lr 1e-4
    "paper-passage": {
        "model": "roberta-base", "pooling": "cls", "normalize": False, "query_max_length": 24,
        "doc_max_length": 120, "batch_size": 256, "optimizer": "lamb", "lr": 1e-4, "topk": 200,
        "loss": "ranknet", "score_scale": 1.0, "star_mixing": "alpha", "alpha": 1.0,
    },
    # MS MARCO document (first 512 tokens), STAR
    "paper-doc": {
        "model": "roberta-base", "pooling": "cls", "normalize": False, "query_max_length": 32,
        "doc_max_length": 512, "batch_size": 128, "optimizer": "lamb", "lr": 1e-4, "topk": 100,
        "loss": "ranknet", "score_scale": 1.0,
    },
    # CPU-sized: MiniLM on SciFact in minutes on 2 cores
    "cpu-demo": {
        "model": "minilm", "batch_size": 16, "max_steps": 60, "lr": 2e-5, "query_max_length": 64,
        "doc_max_length": 128, "dev_every": 30, "save_every": 30, "dev_pool": 20,
    },
}


def apply_preset(config: TrainConfig, name: str | None, explicit: set[str]) -> TrainConfig:
    """Preset values fill every setting the user did not give explicitly."""
    if not name:
        return config
    if name not in PRESETS:
        raise HardnegError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    for key, value in PRESETS[name].items():
        if key not in explicit:
            setattr(config, key, value)
    return config
