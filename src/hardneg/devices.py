"""One place that decides where things run: the encoder, its inputs and Faiss.

``--device`` takes ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or
``cuda:N``. Asking for CUDA where there is none is a :class:`DeviceError`
(exit 2) that says what was found. Under torchrun the rank's GPU wins: the
launcher already chose it (``LOCAL_RANK``), so ``auto``/``cuda`` map to it.
"""

from __future__ import annotations

import logging
import os
import re

import torch

from hardneg.errors import HardnegError
from hardneg.index import faiss_index

log = logging.getLogger(__name__)

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


class DeviceError(HardnegError):
    """A device was asked for that this machine does not have."""


def _found() -> str:
    if not torch.cuda.is_available():
        return "this machine has no CUDA device (torch.cuda.is_available() is False" + (
            f"; torch {torch.__version__} was built without CUDA)" if torch.version.cuda is None else ")"
        )
    n = torch.cuda.device_count()
    names = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(n))
    return f"found {n} CUDA device(s): {names}"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a ``--device`` value into a :class:`torch.device`, or explain why not."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    match = _SPEC.match(text)
    if not match or (match.group(1) != "cuda" and match.group(2) is not None):
        raise DeviceError(f"--device {spec!r} is not a device; use {DEVICE_CHOICES}")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        return torch.device("cpu")
    local_rank = os.environ.get("LOCAL_RANK")
    if kind == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(local_rank) if local_rank is not None else 0)
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {spec} was asked for, but {_found()}; use --device cpu or auto")
    if index is None:
        return torch.device("cuda", int(local_rank) if local_rank is not None else 0)
    i = int(index)
    if i >= torch.cuda.device_count():
        raise DeviceError(f"--device {spec} was asked for, but {_found()}; pick an index below "
                          f"{torch.cuda.device_count()}")
    return torch.device("cuda", i)


def faiss_gpus() -> int:
    """How many GPUs the installed Faiss can use (0 for faiss-cpu)."""
    return faiss_index.gpu_count()


def faiss_placement(device: torch.device, *, quiet: bool = False) -> str:
    """``"gpu"`` when searches can run on GPU Faiss for this device, else ``"cpu"``.

    A CUDA device with a CPU-only Faiss build is not an error (search is
    correct, only slower), but it is said once, never silently.
    """
    if device.type != "cuda":
        return "cpu"
    if faiss_gpus() > 0:
        return "gpu"
    if not quiet:
        log.warning("the encoder runs on %s but the installed Faiss has no GPU support, so searches run "
                    "on the CPU (pip install faiss-gpu-cu12 for GPU search)", device)
    return "cpu"
