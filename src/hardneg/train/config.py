"""Training configuration: one dataclass, named presets, YAML load, validation before compute."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hardneg.errors import HardnegError

METHODS = ("inbatch", "rand", "bm25neg", "static", "ance", "star")
OPTIMIZERS = ("adamw", "lamb")
LOSSES = ("ranknet", "softmax")
PRECISIONS = ("fp32", "bf16", "fp16")
STAR_MIXINGS = ("alpha", "pairmean")

#: settings that may change between a run and its ``--resume`` (they do not change the math so far)
RESUMABLE_CHANGES = {"max_steps", "dev_every", "save_every", "keep_checkpoints", "quiet"}


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
    # development split and checkpoints
    dev_split: str | None = None  # a split of the dataset; None: carve dev_fraction out of train
    dev_fraction: float = 0.1
    dev_every: int = 50
    dev_metric: str = "RR@10"
    dev_pool: int = 20  # rank dev queries over the union of BM25 top-N of the dev queries and their positives; 0 = full corpus
    save_every: int = 50
    keep_checkpoints: int = 2
    batch_encode_size: int = 64
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
        if not self.data:
            raise HardnegError("no training data: give --data path[:split] (split defaults to train)")
        for name in ("max_steps", "batch_size", "grad_accum", "n_negatives", "topk", "dev_every", "save_every",
                     "keep_checkpoints", "query_max_length", "batch_encode_size"):
            if int(getattr(self, name)) < 1:
                raise HardnegError(f"{name} must be at least 1, not {getattr(self, name)}")
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

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of the settings that must not change across ``--resume``."""
        data = {k: v for k, v in self.to_dict().items() if k not in RESUMABLE_CHANGES}
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
