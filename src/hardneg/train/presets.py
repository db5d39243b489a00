"""Named training presets (the paper's settings and DRhard's, a CPU demo) and how a run's config is resolved:
preset values, overridden by a YAML file's, overridden by command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hardneg.errors import HardnegError
from hardneg.train.config import TrainConfig, load_settings

#: The paper's settings (Zhan et al. 2021, sections 6.1 and 7.3) and DRhard's code, as named presets: STAR on
#: each task. Both forward a whole batch per encoder pass (``train_chunk`` = the batch, as DRhard does) instead of
#: the default 16 rows, and take every DRhard behaviour that is an option here: DRhard's LAMB, the LR schedule over
#: star/train.py's num_train_epochs 100 (its runs were stopped by hand long before: "converge within 50k steps"),
#: one example per query (dataset.py TrainInbatchWithHardDataset: a random positive each time), and the warm-up
#: mining lengths of star/prepare_hardneg.py (--max_query_length 32; --max_doc_length 256 passage, 512 document).
#: The warm-up share is a step count in DRhard (warmup_steps 1000): the recipes turn it into warmup_ratio.
_DRHARD_STAR: dict[str, Any] = {
    "model": "roberta-base", "pooling": "cls", "normalize": False,  # model.py RobertaDot: CLS, inner product
    "weight_decay": 0.01, "max_grad_norm": 1.0,  # star/train.py defaults
    "precision": "fp16", "gradient_checkpointing": True,  # README STAR command: --gradient_checkpointing --fp16
    # star/train.py hard_num=1, prepare_hardneg.py --topk 200; model.py inbatch_train: RankNet over the hard
    # negative and the batch's other documents, one mean over all pairs (star_mixing pairmean)
    "topk": 200, "n_negatives": 1, "loss": "ranknet", "score_scale": 1.0, "star_mixing": "pairmean",
    "examples_per_query": "one", "schedule_epochs": 100, "mine_query_max_length": 32,
}
PRESETS: dict[str, dict[str, Any]] = {
    # MS MARCO passage, STAR. README "Train/STAR" command: --max_query_length 24 --max_doc_length 120
    # --optimizer_str lamb --learning_rate 1e-4; star/train.py: per_device_train_batch_size 256, its Lamb with
    # adam_epsilon 1e-8 (lamb_variant drhard). The paper's In-Batch and Rand Neg use LAMB, batch 256 and lr 2e-4
    # (section 7.3): the recipes give those systems lr 2e-4 over this preset.
    "paper-passage": {
        **_DRHARD_STAR, "query_max_length": 24, "doc_max_length": 120, "batch_size": 256, "train_chunk": 256,
        "optimizer": "lamb", "lamb_variant": "drhard", "lr": 1e-4, "mine_doc_max_length": 256,
    },
    # MS MARCO document (url <sep> title <sep> body, first 512 tokens), STAR. Section 7.3: STAR on documents
    # "uses AdamW optimizer, batch size of 60, and learning rate of 2e-6" (AdamW eps 1e-8, as star/train.py's);
    # star/train.py's comments: max_doc_length "512 for doc", max_query_length "24"; prepare_hardneg.py's
    # default --max_doc_length 512. fp16 and gradient checkpointing: the passage command's (not stated for
    # documents).
    "paper-doc": {
        **_DRHARD_STAR, "query_max_length": 24, "doc_max_length": 512, "batch_size": 60, "train_chunk": 60,
        "optimizer": "adamw", "lr": 2e-6, "mine_doc_max_length": 512,
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


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   given: dict[str, Any] | None = None) -> tuple[TrainConfig, set[str]]:
    """The config of a run: a preset's values, overridden by a YAML file's, overridden by ``given``
    (command-line flags). Returns it with the keys set explicitly (by the file or ``given``)."""
    given = dict(given or {})
    file_settings = load_settings(config_file) if config_file else {}
    if config_file:
        TrainConfig.from_dict(file_settings, source=config_file)  # the file's own mistakes name the file
    explicit = set(file_settings) | set(given)
    cfg = TrainConfig.from_dict({**file_settings, **given})
    return apply_preset(cfg, preset, explicit), explicit
