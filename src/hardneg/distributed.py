"""Data-parallel training with ``torch.distributed`` (launched by ``torchrun``): process group, collectives.

``torchrun --nproc_per_node N -m hardneg train …`` starts N processes; each
reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and joins one process group
(:func:`init_from_env`: NCCL on GPUs, gloo on CPUs). Without those variables
everything here is a no-op and a single process runs exactly as before.

How N processes with batch B equal one process with batch N·B
--------------------------------------------------------------
* The data order hands out the *global* micro-batch of N·B examples; rank
  ``r`` encodes slice ``r`` of it. Negative sampling is counter-based on the
  example's global position, so every example gets the negatives it would get
  in the single-process run.
* Each rank encodes its own queries and documents; the document embeddings are
  gathered across ranks with :func:`all_gather_with_grad` (backward: the
  gradients every rank computed for a slice are summed onto the rank that owns
  it) and laid out as the single-process batch would be, so in-batch / STAR /
  random negatives and the collision masks are those of the global batch.
* A rank scores *its* queries against all gathered documents. Every loss is a
  sum over pairs (or queries) divided by a count; :func:`global_mean` divides
  the rank's partial sum by the count summed over all ranks and multiplies by
  N. Gradients are then averaged over ranks (:func:`average_gradients`), which
  gives exactly the single-process gradient of the global-batch loss.

Gradients are averaged by one flat all-reduce per optimiser step (after all
micro-batches) rather than by ``DistributedDataParallel``: a step runs many
forward passes (length-sorted chunks, query and document towers) before its
backward, which DDP's reducer does not support.

Corpus encoding shared out over the ranks (or over separate shard jobs) is in
:mod:`hardneg.index.shards`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

from hardneg.errors import HardnegError


# ----------------------------------------------------------------------------- process group
def init_from_env(timeout_minutes: float = 60.0) -> bool:
    """Join the process group described by torchrun's variables; ``False`` (no-op) without them.

    Backend: NCCL when CUDA is available (and each process uses GPU ``LOCAL_RANK``), gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return False
    world = int(os.environ["WORLD_SIZE"])
    if world < 1:
        raise HardnegError(f"WORLD_SIZE must be at least 1, not {world}")
    if not dist.is_available():
        raise HardnegError("this torch build has no torch.distributed: cannot run under torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def is_initialized() -> bool:
    """A process group exists (torchrun started this process, possibly as its only rank)."""
    return dist.is_available() and dist.is_initialized()


def device_of_group() -> torch.device:
    """Where collective tensors (and the model) live: the rank's GPU for NCCL, the CPU for gloo."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (building shared caches), then the other ranks (loading them).

    The block must not itself run collective operations.
    """
    if not is_distributed():
        yield
        return
    if not is_main():
        dist.barrier()
    try:
        yield
    finally:
        if is_main():
            dist.barrier()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- collectives
class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 (equal shapes); backward sums every rank's gradient of the owner's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """``cat([t_0, …, t_{N-1}])`` of every rank's ``tensor`` (same shape on all ranks), differentiable.

    The backward pass gives each rank the sum over ranks of the gradient of its own slice, so with
    per-rank losses ``ℓ_r`` the rank's parameters receive ``∂(Σ_r ℓ_r)/∂θ`` through its own rows.
    One process: the tensor itself.
    """
    if not is_distributed():
        return tensor
    shapes = all_gather_object(tuple(tensor.shape))
    if len(set(shapes)) != 1:
        raise HardnegError(f"all_gather_with_grad needs the same shape on every rank; got {shapes}")
    return _AllGatherWithGrad.apply(tensor)


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks of a tensor without gradient (a copy; the input is left alone)."""
    if not is_distributed():
        return tensor
    buf = tensor.detach().clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf


def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / max(count, 1)`` where ``total`` and ``count`` are sums over the *global* batch.

    One process: exactly ``total / count.clamp(min=1)``. N processes: ``total`` is this rank's partial
    sum (with gradient), the count is summed over ranks, and the result is multiplied by N, so that
    averaging the ranks' gradients (:func:`average_gradients`) gives the gradient of the global mean,
    and the mean of the ranks' values is the global loss.
    """
    if not is_distributed():
        return total / count.clamp(min=1.0)
    g = all_reduce_sum(count.detach().to(device_of_group())).to(count.device)
    return world_size() * total / g.clamp(min=1.0)


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Replace every gradient with its mean over ranks (one flat all-reduce per dtype).

    Parameters without a gradient stay without one (the same on every rank: the graphs match).
    """
    if not is_distributed():
        return
    params = [p for p in parameters if p.grad is not None]
    counts = all_gather_object(len(params))
    if len(set(counts)) != 1:
        raise HardnegError(f"ranks disagree on which parameters have gradients: {counts}")
    device = device_of_group()
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    n = world_size()
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group]).to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= n
        offset = 0
        for p in group:
            k = p.grad.numel()
            p.grad.copy_(flat[offset : offset + k].view_as(p.grad))
            offset += k


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (the same start everywhere)."""
    if not is_distributed():
        return
    device = device_of_group()
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            buf = t.detach().to(device).clone()
            dist.broadcast(buf, src=0)
            t.copy_(buf.to(t.device))


def reduce_records(record: dict[str, float], sums: Sequence[str] = ()) -> dict[str, float]:
    """Combine per-rank log values: keys in ``sums`` are summed over ranks, the others averaged."""
    if not is_distributed():
        return record
    keys = sorted(record)
    values = torch.tensor([float(record[k]) for k in keys], dtype=torch.float64)
    total = all_reduce_sum(values.to(device_of_group())).cpu()
    n = world_size()
    return {k: float(total[i]) if k in sums else float(total[i]) / n for i, k in enumerate(keys)}


# ----------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    """This process's torch RNG state (CPU, and the current GPU's when there is one)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
