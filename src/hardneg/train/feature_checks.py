"""Checks of the training settings that only make sense together, for the features added with issue 28: LoRA
(``--lora-*`` need ``--lora-r``), GradCache and ``--compile`` (``--mini-batch`` needs ``--grad-cache``, which a
method with a frozen document tower refuses; a backend torch knows), TAS batches (``--tas-*`` need
``--batch-composition tas``). :meth:`TrainConfig.validate <hardneg.train.config.TrainConfig.validate>` runs
:func:`check_features`; every error names the flag and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hardneg.errors import HardnegError
from hardneg.train.methods import methods_that

if TYPE_CHECKING:
    from hardneg.train.config import TrainConfig
    from hardneg.train.methods import MethodSpec


def flag_for(name: str, value: Any) -> str:
    """The flag that sets ``name`` to ``value``: ``--refresh-every``, ``--no-rand-batch-positives``."""
    flag = name.replace("_", "-")
    return f"--no-{flag}" if value is False else f"--{flag}"


def _default(cfg: TrainConfig, name: str) -> Any:
    return type(cfg).model_fields[name].get_default(call_default_factory=True)


def check_features(cfg: TrainConfig, spec: MethodSpec) -> None:
    """LoRA, GradCache / ``--compile`` and TAS settings together (a HardnegError naming the flag)."""
    _check_lora(cfg)
    _check_grad_cache_and_compile(cfg, spec)
    _check_tas(cfg)


def _check_lora(cfg: TrainConfig) -> None:
    """The other LoRA settings need ``--lora-r``; the target list must parse."""
    changed = [k for k in ("lora_alpha", "lora_dropout", "lora_targets", "lora_save")
               if getattr(cfg, k) != _default(cfg, k)]
    if changed and not cfg.lora_r:
        flags = ", ".join(flag_for(k, getattr(cfg, k)) for k in changed)
        raise HardnegError(f"{flags}: LoRA settings need --lora-r N (the adapters' rank, e.g. 8)")
    if cfg.lora_r:
        from hardneg.model.lora import parse_targets

        parse_targets(cfg.lora_targets)

def _check_grad_cache_and_compile(cfg: TrainConfig, spec: MethodSpec) -> None:
    """GradCache needs a method whose trainer step encodes the whole batch (not ADORE's own step);
    --mini-batch is GradCache's; --compile-backend must be one torch knows."""
    if cfg.grad_cache and spec.frozen_doc:
        raise HardnegError(f"--grad-cache is for the methods that encode documents in the step "
                           f"({methods_that(lambda s: not s.frozen_doc)}), not {cfg.method}: ADORE trains "
                           "only its query tower against a fixed index; drop --grad-cache")
    if cfg.mini_batch is not None and not cfg.grad_cache:
        raise HardnegError(f"--mini-batch {cfg.mini_batch} is GradCache's: add --grad-cache, or drop "
                           "--mini-batch (--train-chunk sets the plain step's forward passes)")
    if cfg.compile_backend != _default(cfg, "compile_backend"):
        if not cfg.compile:
            raise HardnegError(f"--compile-backend {cfg.compile_backend} needs --compile")
        from torch._dynamo import list_backends

        known = sorted(set(list_backends(exclude_tags=())) | {"inductor"})
        if cfg.compile_backend not in known:
            raise HardnegError(f"--compile-backend must be one of {', '.join(known)}, "
                               f"not {cfg.compile_backend!r}")


def _check_tas(cfg: TrainConfig) -> None:
    """TAS settings go with ``--batch-composition tas``; a batch cannot draw on more clusters than exist."""
    tas = [k for k in ("tas_clusters", "tas_clusters_per_batch") if getattr(cfg, k) != _default(cfg, k)]
    if tas and cfg.batch_composition != "tas":
        raise HardnegError(f"{', '.join(flag_for(k, 1) for k in tas)}: for --batch-composition tas, not "
                           f"{cfg.batch_composition}")
    if cfg.tas_clusters is not None and cfg.tas_clusters_per_batch > cfg.tas_clusters:
        raise HardnegError(f"--tas-clusters-per-batch {cfg.tas_clusters_per_batch} is more than the "
                           f"--tas-clusters {cfg.tas_clusters}; lower it or raise --tas-clusters")
