"""Token rows and texts → vectors with a :class:`~hardneg.model.encoder.DualEncoder`, in memory.

Batches are formed over rows sorted by token length (longest first), so a batch pads to its own longest row
and almost no compute is spent on padding; rows come back in their original order. Every encoding of token
rows (in memory, into a resumable memmap (:mod:`hardneg.index.encode`), sharded over ranks, and training's
encoding with gradients) runs :func:`encode_batches`, the one loop that pads each batch to its own longest row
and runs the model on it.

``precision`` (``fp32``, ``bf16``, ``fp16``; ``--precision``) runs each forward pass under
:func:`torch.autocast` for the model's device type (:func:`forward_autocast`); vectors come back float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from hardneg.errors import HardnegError

#: the precisions an encoder's forward pass may run at (``--precision``)
PRECISIONS = ("fp32", "bf16", "fp16")


def forward_autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context an encoder forward pass runs in at ``precision``: nothing for fp32, else
    :func:`torch.autocast` for ``device``'s type at bfloat16/float16."""
    if precision not in PRECISIONS:
        raise HardnegError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def check_encode_precision(precision: str, device: torch.device) -> None:
    """A clear error (before any work) when ``device`` cannot encode at ``precision``."""
    if precision not in PRECISIONS:
        raise HardnegError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return
    device = torch.device(device)
    if not torch.amp.is_autocast_available(device.type):
        raise HardnegError(f"--precision {precision}: torch {torch.__version__} has no autocast on {device}; "
                           "use --precision fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise HardnegError(f"--precision bf16: {device} ({torch.cuda.get_device_name(device)}) does not "
                           "support bfloat16; use --precision fp16 or fp32")


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length, longest first (deterministic)."""
    if batch_size < 1:
        raise HardnegError(f"batch size must be positive, not {batch_size}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(input_ids, attention_mask)`` tensors."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def pad_id(model) -> int:
    """The id padding fills batches with: the tokenizer's pad token, else 0."""
    pad = model.tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def encode_batches(
    model,
    rows_of: Callable[[np.ndarray], Sequence[Sequence[int]]],
    batches: Sequence[np.ndarray],
    side: str,
    *,
    start: int = 0,
    desc: str | None = None,
    show_progress: bool = False,
    precision: str = "fp32",
) -> Iterator[tuple[int, torch.Tensor]]:
    """The encoding loop: ``(b, embeddings of batch b)`` for ``b`` from ``start`` on, in order.

    ``rows_of(batches[b])`` gives batch ``b``'s token id lists; each batch is padded to its own
    longest row and encoded by ``model`` on its device, the forward pass under
    :func:`forward_autocast` at ``precision`` (the output is then bf16/fp16: the caller casts). The
    embeddings are the model's output tensors (in whatever grad mode the caller runs: inference for
    corpus encoding, with gradients in training); the model's train/eval mode is the caller's too.
    An autocast the caller holds around the loop (training's) stays in force at fp32.
    """
    pad = pad_id(model)
    device = model.device
    with tqdm(total=len(batches), initial=start, desc=desc, unit="batch",
              disable=not show_progress, mininterval=1.0) as bar:
        for b in range(start, len(batches)):
            ids, mask = pad_batch(rows_of(batches[b]), pad)
            with forward_autocast(precision, device):
                emb = model(ids.to(device), mask.to(device), side=side)
            yield b, emb
            bar.update(1)


def progress_label(side: str) -> str:
    """The progress bar's label for encoding ``side``."""
    return f"encode {'queries' if side == 'query' else 'docs'}"


@torch.inference_mode()
def encode_token_lists(
    model,
    token_lists: Sequence[Sequence[int]],
    side: str,
    *,
    batch_size: int = 64,
    show_progress: bool = False,
    precision: str = "fp32",
) -> np.ndarray:
    """Encode pre-tokenized rows held in memory (forward passes at ``precision``); returns float32
    ``(n, dim)`` in input order."""
    model.eval()
    out = np.empty((len(token_lists), model.dim), dtype=np.float32)
    if not len(token_lists):
        return out
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
    batches = length_sorted_batches(lengths, batch_size)
    for b, emb in encode_batches(model, lambda rows: [token_lists[i] for i in rows], batches, side,
                                 desc=progress_label(side), show_progress=show_progress, precision=precision):
        out[batches[b]] = emb.float().cpu().numpy()
    return out


def encode_texts(model, texts: Sequence[str], side: str, *, batch_size: int = 64,
                 show_progress: bool = False, precision: str = "fp32") -> np.ndarray:
    """Encode a list of texts with ``model``'s ``side`` tower (``"query"`` or ``"doc"``): tokenized with
    that side's prefix and max length, then :func:`encode_token_lists`; float32 ``(n, dim)`` in input order."""
    ids = model.tokenize(texts, side)["input_ids"]
    return encode_token_lists(model, ids, side, batch_size=batch_size, show_progress=show_progress,
                              precision=precision)
