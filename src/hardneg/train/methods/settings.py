"""Checks of the settings a method takes alone (named in its :class:`~hardneg.train.methods.MethodSpec`).

Light: no torch. :meth:`TrainConfig.validate <hardneg.train.config.TrainConfig.validate>` calls a method's
check (``MethodSpec.check``) before any compute; each raises a :class:`~hardneg.errors.HardnegError` naming
the flag and what it takes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hardneg.errors import HardnegError

if TYPE_CHECKING:
    from hardneg.train.config import TrainConfig


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


#: file endings that make an ``--index`` value a path even before it exists (a typo is then "not found")
INDEX_FILE_SUFFIXES = (".npy", ".faiss", ".index", ".bin")


def is_index_path(value: str) -> bool:
    """Whether ADORE's ``--index`` value names an index on disk (a Pyserini folder, a Faiss file, an embeddings
    ``.npy``) rather than a kind for hardneg to build (``flat``, ``pq48``, ``factory:...``)."""
    value = value.strip()
    if not value or value.lower().startswith("factory:"):
        return False
    return Path(value).exists() or "/" in value or Path(value).suffix.lower() in INDEX_FILE_SUFFIXES


def check_external_index(cfg: TrainConfig) -> None:
    """The settings of ADORE on an index hardneg did not build (``--index PATH``) together."""
    external = is_index_path(cfg.index)
    if not external:
        for name, flag in (("index_ids", "--index-ids"), ("index_build", "--index-build")):
            if getattr(cfg, name) not in (None, "flat"):
                raise HardnegError(f"{flag} is for --index PATH (a Faiss file or an embeddings .npy), not a kind "
                                   f"hardneg builds ({cfg.index!r})")
        return
    if not Path(cfg.index).exists():
        raise HardnegError(f"--index {cfg.index}: no such index file or folder (give a Pyserini index folder, a "
                           "Faiss file with --index-ids, an embeddings .npy with --index-ids, or a kind: flat, pq48, "
                           "ivfpq, hnsw, ...)")
    if cfg.index_build != "flat" and Path(cfg.index).suffix.lower() != ".npy":
        raise HardnegError(f"--index-build {cfg.index_build}: hardneg builds an index only over embeddings (.npy); "
                           f"{cfg.index} is an index already")
    if cfg.index_fp16:
        raise HardnegError("--index-fp16 is for a flat index hardneg builds (--index flat); an external index is "
                           "searched as it is")
    if cfg.track_every:
        raise HardnegError("--track-every re-encodes the corpus with a document encoder; ADORE on an external "
                           "--index has none (leave --track-every 0)")
    if not 0 <= cfg.index_check <= 1:
        raise HardnegError(f"--index-check must be in [0, 1] (a share of the index; 0 turns the check off), not "
                           f"{cfg.index_check}")


def check_ance(cfg: TrainConfig) -> None:
    """ance re-mines every ``refresh_every`` steps, so it needs one."""
    if cfg.refresh_every < 1:
        raise HardnegError(f"{cfg.method} re-mines its negatives every N steps: give --refresh-every N (N >= 1)")


def check_adore(cfg: TrainConfig) -> None:
    """ADORE's metric parses, it has an index kind, and its loss is chosen with ``--adore-loss``."""
    parse_adore_metric(cfg.metric)
    if not cfg.index.strip():
        raise HardnegError(f"{cfg.method} needs an index kind: --index flat, pq<M>, ivfpq, ...")
    if cfg.loss != "ranknet":
        raise HardnegError(f"{cfg.method}'s loss is chosen with --adore-loss (lambda or ranknet), not --loss")
    check_external_index(cfg)
    if cfg.index_fp16 and cfg.index.strip().lower() != "flat":
        raise HardnegError(f"--index-fp16 stores a flat index in float16; --index {cfg.index} is not flat "
                           "(leave the flag out: PQ kinds get float16 lookup tables where Faiss needs them)")


def check_distill(cfg: TrainConfig, spec: Any) -> None:
    """``--distill`` (hardneg.train.distill): a method that distils (``spec.distill``), a ``--teacher``, a
    positive weight and temperature (the temperature for ``kl`` only, the weight with a ``--distill``); STAR's
    hard-negative term replaced needs ``--star-mixing alpha``."""
    for name in ("distill_weight", "distill_temperature", "distill_teacher_scale"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value > 0):
            raise HardnegError(f"--{name.replace('_', '-')} must be a positive number, not {value!r}")
    if cfg.distill != "kl" and cfg.distill_temperature != 1.0:
        raise HardnegError(f"--distill-temperature is for --distill kl, not --distill {cfg.distill}")
    if cfg.distill == "none":
        for name in ("distill_weight", "distill_teacher_scale"):
            if getattr(cfg, name) != 1.0:
                raise HardnegError(f"--{name.replace('_', '-')} is a setting of the distillation loss: give "
                                   "--distill margin-mse or kl")
        return
    if spec.distill is None:
        raise HardnegError(f"--distill {cfg.distill}: {cfg.method} has no hard negatives a teacher scores; use "
                           "bm25neg, static, ance, star or adore")
    if cfg.teacher is None:
        raise HardnegError(f"--distill {cfg.distill} needs a --teacher: a CrossEncoder folder, a bi-encoder, bm25, "
                           "or a fusion such as fusion:bm25+minilm (min-max sum) or rrf:bm25+minilm")
    if spec.distill == "hard-term" and cfg.star_mixing != "alpha":
        raise HardnegError(f"--distill replaces {cfg.method}'s hard-negative term and keeps alpha x the random one: "
                           f"use --star-mixing alpha, not {cfg.star_mixing}")
