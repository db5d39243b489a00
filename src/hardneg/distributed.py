"""Data-parallel training with ``torch.distributed`` (launched by ``torchrun``): process group, collectives.

``torchrun --nproc_per_node N -m hardneg train …`` starts N processes; each
reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and joins one process group
(:func:`init_from_env`: NCCL on GPUs, gloo on CPUs). Without those variables
everything here is a no-op and a single process runs exactly as before.
A process trains on GPU ``LOCAL_RANK``, or on cuda:0 when it sees only one GPU
(launchers that give each process its own: :func:`cuda_index_for`).

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
import logging
import os
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from hardneg.errors import HardnegError

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- process group
def init_from_env(timeout_minutes: float = 60.0) -> bool:
    """Join the process group described by torchrun's variables; ``False`` (no-op) without them.

    Backend: NCCL when CUDA is available (each process on the GPU :func:`local_cuda_index` picks), gloo
    otherwise.
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
    if torch.cuda.is_available():
        torch.cuda.set_device(local_cuda_index())
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


def cuda_index_for(local_rank: int, device_count: int) -> int:
    """The GPU a process with ``local_rank`` trains on when it sees ``device_count`` GPUs.

    The rule: GPU ``local_rank`` when ``local_rank < device_count`` (torchrun on a node whose processes all
    see every GPU); GPU 0 when the process sees exactly one GPU (a launcher that gives each process its
    own, e.g. SLURM's ``--gpus-per-task=1`` or a per-process ``CUDA_VISIBLE_DEVICES``); anything else is
    ambiguous and refused.
    """
    if device_count < 1:
        raise HardnegError("no CUDA device is visible to this process (torch.cuda.device_count() is 0); "
                           "check CUDA_VISIBLE_DEVICES, or run with --device cpu")
    if 0 <= local_rank < device_count:
        return local_rank
    if device_count == 1:
        return 0
    raise HardnegError(
        f"LOCAL_RANK {local_rank} but this process sees {device_count} GPUs: give every process all of the "
        "node's GPUs (unset CUDA_VISIBLE_DEVICES per process) or exactly one (e.g. SLURM --gpus-per-task=1)"
    )


def local_cuda_index() -> int:
    """:func:`cuda_index_for` this process's ``LOCAL_RANK`` (0 without one) and visible GPUs."""
    return cuda_index_for(local_rank(), torch.cuda.device_count())


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
def rng_state(device: torch.device | str | None = None) -> dict:
    """Every RNG of this process, for a checkpoint; :func:`set_rng_state` restores it.

    ``python`` (the Mersenne Twister words of ``random``) and ``python_gauss``; ``numpy`` (the global
    generator: key words, position, cached Gaussian); ``torch`` (the CPU generator); and, when this process
    has initialised CUDA, ``cuda``: every visible GPU's generator (``torch.cuda.get_rng_state_all()``) with
    ``cuda_current``, the GPU this process works on. (A process that never initialised CUDA drew nothing
    from its GPU generators: ``torch.manual_seed`` queues their seeding, and a resumed run queues the same.)
    ``device_type``: where the run trains (``device``; default :func:`device_of_group`), since dropout
    draws from that device's generator. Tensors, numbers and strings only: it loads with
    ``weights_only=True``.
    """
    device = torch.device(device) if device is not None else device_of_group()
    _, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "device_type": device.type,
        "python": tuple(words),
        "python_gauss": gauss,
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
        state["cuda_current"] = int(torch.cuda.current_device())
    return state


def set_rng_state(state: dict, device: torch.device | str | None = None) -> None:
    """Restore a :func:`rng_state` (or the part an older checkpoint holds) into a run on ``device``.

    CUDA states are restored only where CUDA is present: all of them when this process sees as many GPUs
    as the writer did, and always the writer's working GPU's state onto ``device`` (so a rank whose GPU
    index changed, e.g. under a per-process-GPU launcher, continues its own stream). A checkpoint written
    on another kind of device than ``device`` resumes with a warning: everything but dropout continues
    exactly, dropout draws from this device's generator.
    """
    device = torch.device(device) if device is not None else device_of_group()
    if "python" in state:
        random.setstate((3, tuple(int(w) for w in state["python"]), state.get("python_gauss")))
    saved_np = state.get("numpy")
    if saved_np is not None:
        np.random.set_state(("MT19937", saved_np["keys"].numpy().astype(np.uint32), int(saved_np["pos"]),
                             int(saved_np["has_gauss"]), float(saved_np["gauss"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        _set_cuda_rng_state(state, device)
    written_on = state.get("device_type") or ("cuda" if "cuda" in state else None)  # older: no device_type
    if written_on is not None and written_on != device.type:
        if is_main():
            logger.warning(
                "resuming on %s a checkpoint written on %s: weights, optimiser, scheduler, loss scale, data order "
                "and negatives continue exactly, but dropout now draws from the %s generator, so the run "
                "differs from an uninterrupted %s run from here on", device, written_on, device.type, written_on)
    elif device.type == "cuda" and "cuda" not in state and is_main():
        logger.warning("the checkpoint holds no CUDA RNG state (written on the CPU or by an older hardneg): "
                       "dropout on %s continues from a freshly seeded generator, not the uninterrupted run's "
                       "stream", device)


def _set_cuda_rng_state(state: dict, device: torch.device) -> None:
    saved = state["cuda"]
    if isinstance(saved, torch.Tensor):  # older checkpoints: the working GPU's state only
        states, current = [saved], 0
    else:
        states, current = list(saved), int(state.get("cuda_current", 0))
    seen = torch.cuda.device_count()
    if len(states) == seen:
        torch.cuda.set_rng_state_all(states)
    if device.type != "cuda" or not states:
        return
    target = device.index if device.index is not None else torch.cuda.current_device()
    if len(states) != seen or target != current:
        torch.cuda.set_rng_state(states[min(current, len(states) - 1)], target)
        logger.info("CUDA RNG: the checkpoint's GPU %d state continues on cuda:%d (it holds %d GPU state(s), "
                    "this process sees %d)", current, target, len(states), seen)
