"""GradCache (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup")
and ``--compile`` of the encoder towers.

A contrastive loss couples every query with every document of the batch, so the
plain step keeps the activations of the whole batch until its backward pass.
GradCache splits the step in three, for the same gradient:

1. **representations**: every query and document of the batch is encoded without a
   graph, in mini-batches of ``--mini-batch`` rows (length-sorted, as the plain
   step's ``--train-chunk`` passes), saving the RNG state before each forward pass;
2. **the loss**: the embeddings become leaf tensors that require grad; scores, the
   method's loss (under torchrun after the all-gather of the documents) and its
   backward, scaled as the plain step's (GradScaler, ``/ grad_accum``), give the
   gradient of the loss w.r.t. every embedding;
3. **replay**: each mini-batch is encoded again with its graph, from its saved RNG
   state (the same dropout masks as in 1.) and under the same autocast, and
   ``(embedding · its gradient).sum()`` is backpropagated into the encoder.

By the chain rule the parameters receive the plain step's gradient; the peak memory
is that of one mini-batch's graph plus the batch's embeddings. Parity is exact up to
float summation order when both steps draw dropout in the same order: with
``--mini-batch`` equal to ``--train-chunk`` (its default) step 1 runs the plain
step's forward passes (same rows, same order, same shapes) and so the same
dropout masks, and the RNG ends the step where the plain step leaves it (resume
stays bit for bit).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hardneg.errors import HardnegError
from hardneg.model.encoding import forward_autocast, length_sorted_batches, pad_batch, pad_id

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- RNG
def rng_snapshot(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The generators dropout draws from: the CPU's and, on CUDA, ``device``'s."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def restore_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


# ----------------------------------------------------------------------------- GradCache
@dataclass
class _Pass:
    """One mini-batch's forward pass: its rows, where they go, and the RNG state it started from."""

    rep: int  # which cached representation tensor
    side: str
    tokens: list
    rows: torch.Tensor  # row indices in that tensor
    rng: tuple[torch.Tensor, torch.Tensor | None]


class GradCache:
    """One micro-batch's GradCache: :meth:`encode` (step 1), the caller's loss and backward (step 2),
    then :meth:`replay` (step 3)."""

    def __init__(self, model, mini_batch: int, precision: str = "fp32") -> None:
        if mini_batch < 1:
            raise HardnegError(f"--mini-batch must be at least 1, not {mini_batch}")
        self.model, self.mini_batch, self.precision = model, mini_batch, precision
        self.device = model.device
        self.reps: list[torch.Tensor] = []
        self.passes: list[_Pass] = []

    def _forward(self, tokens: Sequence[Sequence[int]], side: str) -> torch.Tensor:
        """The plain step's forward pass (:func:`hardneg.model.encoding.encode_batches`'s), cast to fp32."""
        ids, mask = pad_batch(tokens, pad_id(self.model))
        with forward_autocast(self.precision, self.device):
            emb = self.model(ids.to(self.device), mask.to(self.device), side=side)
        return emb.float()

    def encode(self, token_rows: Sequence[Sequence[int]], side: str) -> torch.Tensor:
        """fp32 embeddings of ``token_rows`` in their order, computed without a graph: a leaf tensor that
        requires grad (the loss's backward fills its ``.grad``)."""
        lengths = np.fromiter((len(r) for r in token_rows), dtype=np.int64, count=len(token_rows))
        out: torch.Tensor | None = None
        with torch.no_grad():
            for batch in length_sorted_batches(lengths, self.mini_batch):
                rng = rng_snapshot(self.device)
                tokens = [token_rows[i] for i in batch]
                emb = self._forward(tokens, side)
                if out is None:
                    out = emb.new_empty((len(token_rows), emb.shape[1]))
                rows = torch.from_numpy(batch).to(self.device)
                out[rows] = emb
                self.passes.append(_Pass(len(self.reps), side, tokens, rows, rng))
        if out is None:
            raise HardnegError("GradCache: nothing to encode")
        out.requires_grad_(True)
        self.reps.append(out)
        return out

    def replay(self) -> None:
        """Re-encode every mini-batch with its graph and backpropagate its embeddings' cached gradients.

        The RNG is left as before the replay: where the plain step's forward passes leave it."""
        grads = [rep.grad for rep in self.reps]
        after = rng_snapshot(self.device)
        try:
            for p in self.passes:
                grad = grads[p.rep]
                if grad is None:  # the loss did not depend on these embeddings: no gradient to pass on
                    continue
                restore_rng(p.rng, self.device)
                emb = self._forward(p.tokens, p.side)
                emb.backward(grad[p.rows])  # the gradient of (emb · grad).sum()
        finally:
            restore_rng(after, self.device)
        self.reps.clear()
        self.passes.clear()


# ----------------------------------------------------------------------------- --compile
def compile_towers(model, backend: str = "inductor") -> None:
    """``torch.compile`` every tower of a :class:`~hardneg.model.encoder.DualEncoder` in place
    (:meth:`torch.nn.Module.compile`: its ``state_dict`` keys stay those of the eager module, so saved
    models and checkpoints are the same files).

    ``dynamic=True``: a training step's forward passes are length-sorted chunks, each padded to its own
    longest row, and the last chunk of a batch is smaller, so both dimensions of the input change from one
    pass to the next; a shape-specialised graph would recompile for (nearly) every new length until
    dynamo's recompile limit and then fall back to eager. One graph with symbolic batch and length is
    compiled instead. Under inductor, random ops use eager's generator (``fallback_random``) so that
    dropout draws from the generator GradCache replays and a checkpoint restores."""
    if backend == "inductor":
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
    towers = {id(model.doc_model): model.doc_model, id(model.query_model): model.query_model}
    for tower in towers.values():
        tower.compile(backend=backend, dynamic=True)
    logger.info("compiled %d encoder tower(s) with torch.compile (backend %s, dynamic shapes)", len(towers),
                backend)
