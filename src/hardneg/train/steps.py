"""What one training step is made of, shared by the loop and the methods: encoding token rows with
gradients, mixed precision, the step's timed parts, the optimiser and its schedule, seeding.

Mixed precision follows DRhard (``train.py`` with ``--fp16``, ``model.py``'s
``amp.autocast(enabled=False)`` around the scores): autocast covers only the
encoder forward passes; embeddings are cast to fp32, and the score matrix and
every loss are computed in fp32.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from hardneg.errors import HardnegError
from hardneg.model.encoding import encode_batches, forward_autocast, length_sorted_batches

if TYPE_CHECKING:
    from hardneg.train.config import TrainConfig

#: logged per-step values that are counts over the batch: summed over ranks (the others are averaged)
ADDITIVE_PARTS = ("pairs", "hard_pairs", "random_pairs", "skipped_queries", "candidates", "removed_positive",
                  "removed_absolute_margin", "removed_relative_margin", "removed_max_score", "removed_range_min",
                  "removed_range_max")


# ----------------------------------------------------------------------------- batching
def encode_rows(model, token_rows: Sequence[Sequence[int]], side: str, chunk: int,
                precision: str = "fp32") -> torch.Tensor:
    """fp32 embeddings of token rows with gradients, in the rows' order (on the model's device).

    Rows are sorted by length and encoded in chunks, each padded to its own
    longest row, so a batch mixing short and long texts wastes no compute on
    padding. With ``precision`` bf16/fp16 only the encoder forward passes run
    under autocast; the output is cast to fp32 outside it (DRhard computes scores
    under ``autocast(enabled=False)``).
    """
    lengths = np.fromiter((len(r) for r in token_rows), dtype=np.int64, count=len(token_rows))
    batches = length_sorted_batches(lengths, chunk)
    order = np.concatenate(batches)
    with forward_autocast(precision, model.device):  # the generator runs the forward passes: consume it inside
        parts = list(encode_batches(model, lambda rows: [token_rows[i] for i in rows], batches, side))
    emb = torch.cat([e for _, e in parts]).float()  # a no-op in fp32
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.from_numpy(order)] = torch.arange(len(order))
    return emb[inverse.to(emb.device)]


# ----------------------------------------------------------------------------- step timing
def clock(device: torch.device) -> float:
    """``time.perf_counter()``; on CUDA after the device's queued work has finished (no sync elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Laps:
    """Consecutive stretches of a step, timed: ``lap(key)`` adds the seconds since the previous lap (or the
    start) to ``seconds[key]``. The laps of one object never overlap, so their sum is at most the wall time.

    Logged per step as ``t_<part>`` (:data:`TIMING_PREFIX`), summed over micro-batches."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._last = clock(device)

    def lap(self, key: str) -> float:
        now = clock(self.device)
        spent = now - self._last
        self.seconds[key] = self.seconds.get(key, 0.0) + spent
        self._last = now
        return spent


#: logged per-step values that are seconds of a part of the step: summed over micro-batches
TIMING_PREFIX = "t_"


# ----------------------------------------------------------------------------- optimiser
#: DRhard's star/train.py passes ``--adam_epsilon`` (default 1e-8) to its Lamb
DRHARD_LAMB_EPS = 1e-8


class DRhardLamb(torch.optim.Optimizer):
    """LAMB as DRhard's ``lamb.py`` steps it (LAMB v3: no bias correction), with the weight decay as an L2
    term inside the update, so inside the trust ratio. For a parameter ``p`` with gradient ``g``::

        m ← β1·m + (1 − β1)·g          v ← β2·v + (1 − β2)·g²
        u = m / (√v + eps) + wd·p
        r = min(‖p‖, 10) / ‖u‖          (1 when ‖p‖ or ‖u‖ is 0)
        p ← p − lr·r·u

    pytorch-optimizer's ``Lamb`` differs: it decays the weights outside the update (``weight_decouple``)
    and divides by ``‖u‖ + eps``. The trust ratio stays a tensor (no host sync per parameter)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = DRHARD_LAMB_EPS, weight_decay: float = 0.0) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise HardnegError(f"LAMB: lr, eps and weight decay must be >= 0 and betas in [0, 1), not lr={lr}, "
                               f"eps={eps}, weight_decay={weight_decay}, betas={betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise HardnegError("LAMB does not take sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = exp_avg / exp_avg_sq.sqrt().add_(group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                weight_norm = torch.linalg.vector_norm(p).clamp(max=10.0)
                update_norm = torch.linalg.vector_norm(update)
                usable = (weight_norm > 0) & (update_norm > 0)
                ratio = torch.where(usable, weight_norm / torch.where(usable, update_norm, 1.0), 1.0)
                p.add_(update.mul_(ratio), alpha=-group["lr"])
        return loss


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (eps 1e-8, as DRhard's), or LAMB in ``config.lamb_variant``; no weight decay on biases and norms."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.lamb_variant == "drhard":
        return DRhardLamb(groups, lr=config.lr)
    from pytorch_optimizer import Lamb

    return Lamb(groups, lr=config.lr)


def schedule_steps(config: TrainConfig, n_examples: int, global_batch: int) -> int:
    """The step at which the linear schedule reaches 0: ``max_steps``, or with ``schedule_epochs`` E the
    steps of E epochs over ``n_examples`` at ``global_batch`` examples per micro-batch (as DRhard's trainers
    count them: ``ceil(n / batch) // grad_accum`` steps per epoch, ``ceil(E × that)`` in all)."""
    if config.schedule_epochs is None:
        return config.max_steps
    per_epoch = max(1, math.ceil(n_examples / global_batch) // config.grad_accum)
    span = max(1, math.ceil(config.schedule_epochs * per_epoch))
    if span < config.max_steps:
        raise HardnegError(
            f"schedule_epochs {config.schedule_epochs:g} spans {span} steps ({per_epoch} per epoch over "
            f"{n_examples} examples), fewer than max_steps {config.max_steps}: the learning rate would be 0 for "
            "the last steps; raise --schedule-epochs or lower --max-steps")
    return span


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, n_examples: int | None = None,
                   global_batch: int | None = None):
    """Linear warm-up over ``warmup_ratio × max_steps`` steps, then linear decay to 0 at
    :func:`schedule_steps` (``max_steps`` unless ``schedule_epochs`` is set, which needs ``n_examples`` and
    ``global_batch``)."""
    from transformers import get_linear_schedule_with_warmup

    warmup = int(config.warmup_ratio * config.max_steps)
    span = config.max_steps
    if config.schedule_epochs is not None:
        if n_examples is None or global_batch is None:
            raise HardnegError("schedule_epochs needs the number of training examples and the global batch")
        span = schedule_steps(config, n_examples, global_batch)
    return get_linear_schedule_with_warmup(optimizer, warmup, span)


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch's CPU and every GPU's generator
    (``torch.manual_seed`` seeds all CUDA devices, lazily when CUDA is not initialised yet). A checkpoint
    saves and restores all of them (:func:`hardneg.distributed.rng_state`)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
