"""Checks of the settings a method takes alone (named in its :class:`~hardneg.train.methods.MethodSpec`).

Light: no torch. :meth:`TrainConfig.validate <hardneg.train.config.TrainConfig.validate>` calls a method's
check (``MethodSpec.check``) before any compute; each raises a :class:`~hardneg.errors.HardnegError` naming
the flag and what it takes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

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
    if cfg.index_fp16 and cfg.index.strip().lower() != "flat":
        raise HardnegError(f"--index-fp16 stores a flat index in float16; --index {cfg.index} is not flat "
                           "(leave the flag out: PQ kinds get float16 lookup tables where Faiss needs them)")
