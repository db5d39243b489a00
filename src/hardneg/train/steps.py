"""What one training step is made of, shared by the loop and the methods: encoding token rows with
gradients, mixed precision, the step's timed parts, the optimiser and its schedule, seeding.

Mixed precision follows DRhard (``train.py`` with ``--fp16``, ``model.py``'s
``amp.autocast(enabled=False)`` around the scores): autocast covers only the
encoder forward passes; embeddings are cast to fp32, and the score matrix and
every loss are computed in fp32.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch

from hardneg.errors import HardnegError
from hardneg.index.encode import encode_batches, length_sorted_batches

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
    with autocast(precision, model.device):  # the generator runs the forward passes: consume it inside
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
def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    from pytorch_optimizer import Lamb

    return Lamb(groups, lr=config.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    from transformers import get_linear_schedule_with_warmup

    warmup = int(config.warmup_ratio * config.max_steps)
    return get_linear_schedule_with_warmup(optimizer, warmup, config.max_steps)


def autocast(precision: str, device: torch.device):
    """Autocast for the encoder forward passes at ``precision`` (nothing for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_precision(precision: str, device: torch.device) -> None:
    """A clear error when ``device`` cannot run ``precision`` (before any work)."""
    if precision == "fp32":
        return
    if not torch.amp.is_autocast_available(device.type):
        raise HardnegError(f"--precision {precision}: torch {torch.__version__} has no autocast on {device}; "
                           "use --precision fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise HardnegError(f"--precision bf16: {device} ({torch.cuda.get_device_name(device)}) does not "
                           "support bfloat16; use --precision fp16 or fp32")


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch's CPU and every GPU's generator
    (``torch.manual_seed`` seeds all CUDA devices, lazily when CUDA is not initialised yet). A checkpoint
    saves and restores all of them (:func:`hardneg.distributed.rng_state`)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
