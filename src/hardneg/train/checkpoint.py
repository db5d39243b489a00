"""Checkpoints and training logs of the one training loop.

A checkpoint folder holds the model's unique tensors (``model.safetensors``; with LoRA the adapters alone),
optimiser, scheduler, fp16 loss-scaler (``scaler.pt``) and every RNG (``rng.pt``: Python's, numpy's,
torch's CPU generator and every GPU's, per rank under torchrun; see :func:`hardneg.distributed.rng_state`),
any extra files (mined negatives) and ``trainer_state.json``. Every file loads with ``weights_only=True``
and ``map_location="cpu"`` whatever device wrote it (:data:`MAP_LOCATION`), and ``load_state_dict`` puts
each state where the resuming run keeps it: a GPU checkpoint resumes on a CPU machine, and each torchrun
rank's optimiser state lands on that rank's own GPU, never on cuda:0. A checkpoint is written to a
temporary folder and renamed, so a kill never leaves a half-written one that looks complete.
``train_log.jsonl`` (and TensorBoard) is cut back to the resumed step so a resumed run's log equals an
uninterrupted one's.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path

import safetensors.torch
import torch
from safetensors.torch import load_file

from hardneg import distributed as dist
from hardneg.errors import HardnegError, MismatchError
from hardneg.io import atomic_write, commit_dir, read_json, write_json, writing
from hardneg.model.lora import adapted_sides, adapter_state, load_adapter_state
from hardneg.train.report_to import Reporters, open_reporters, scalars

CHECKPOINT_VERSION = 1

#: where ``torch.load`` puts a checkpoint's tensors before ``load_state_dict`` places them. The CPU, not the
#: run's GPU: ``Optimizer.load_state_dict`` moves every state onto its parameter's device (the rank's GPU)
#: except the ``step`` counters, which a fresh AdamW keeps on the CPU; loading onto the GPU would leave
#: them there (a GPU sync per parameter per step) and the resumed optimiser unlike the uninterrupted one.
#: RNG states must be CPU tensors anyway.
MAP_LOCATION = "cpu"

logger = logging.getLogger("hardneg.train")


# ----------------------------------------------------------------------------- checkpoints
def _unique_state_dict(model) -> dict[str, torch.Tensor]:
    if getattr(model, "lora", None) is not None:  # LoRA: the adapters alone (the base weights never change)
        state = {f"{side}.{k}": v for side, tower in adapted_sides(model).items()
                 for k, v in adapter_state(tower).items()}
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}
    state = {f"doc.{k}": v for k, v in model.doc_model.state_dict().items()}
    if model.query_model is not model.doc_model:
        state.update({f"query.{k}": v for k, v in model.query_model.state_dict().items()})
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _load_unique_state_dict(model, state: dict[str, torch.Tensor]) -> None:
    if getattr(model, "lora", None) is not None:
        for side, tower in adapted_sides(model).items():
            load_adapter_state(tower, {k[len(side) + 1:]: v for k, v in state.items() if k.startswith(side + ".")})
        return
    doc = {k[4:]: v for k, v in state.items() if k.startswith("doc.")}
    model.doc_model.load_state_dict(doc)
    if model.query_model is not model.doc_model:
        model.query_model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("query.")})


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: dict, extra_files: dict[str, Path],
                    rng_extra: dict | None = None, scaler=None) -> None:
    """Write a checkpoint folder atomically (temp folder, then rename).

    ``rng.pt`` holds this process's RNGs (:func:`hardneg.distributed.rng_state` on the model's device) and
    ``rng_extra`` (under DDP: ``ranks``, every rank's); an enabled ``scaler`` (fp16's ``GradScaler``) goes
    in ``scaler.pt``."""
    with writing(folder, "checkpoint"):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with writing(folder, "checkpoint"):
            safetensors.torch.save_file(_unique_state_dict(model), str(tmp / "model.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if scaler is not None and scaler.is_enabled():
                torch.save(scaler.state_dict(), tmp / "scaler.pt")
            torch.save({**dist.rng_state(model_device(model)), **(rng_extra or {})}, tmp / "rng.pt")
            for name, src in extra_files.items():
                shutil.copyfile(src, tmp / name)
            write_json(tmp / "trainer_state.json", state)
            commit_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def adopt_fingerprint(out: Path, accepted: Collection[str], fingerprint: str) -> None:
    """Give every checkpoint kept in ``out`` whose fingerprint is one of ``accepted`` (older hashes of the same
    settings) ``fingerprint``, today's: they stay resumable once the run's ``config.json`` is rewritten."""
    for folder in (out / "checkpoints").glob("step-*"):
        path = folder / "trainer_state.json"
        state = read_json(path) if path.is_file() else {}
        if state.get("config_fingerprint") in accepted:
            write_json(path, {**state, "config_fingerprint": fingerprint})


def latest_checkpoint(out: Path) -> Path | None:
    folders = sorted((out / "checkpoints").glob("step-*"), key=lambda p: p.name)
    complete = [f for f in folders if (f / "trainer_state.json").is_file()]
    return complete[-1] if complete else None


def model_device(model) -> torch.device:
    """Where the model's (document tower's) parameters live: the run's device."""
    return next(model.doc_model.parameters()).device


def load_checkpoint(folder: Path, model, optimizer, scheduler, fingerprint: str | Collection[str], scaler=None,
                    device: torch.device | str | None = None, changed: Collection[str] = ()) -> dict:
    """Restore a checkpoint into the given objects; returns its ``trainer_state.json``.

    Every file is read onto the CPU (:data:`MAP_LOCATION`) whatever device wrote it, then placed by
    ``load_state_dict`` (the optimiser's state on its parameters' device). ``device`` (default: the
    model's) is where the run trains: the RNGs are restored for this rank and that device
    (:func:`hardneg.distributed.set_rng_state`, which warns when it is another kind of device than the
    writer's: dropout then differs).
    An enabled ``scaler`` gets the saved loss scale; a checkpoint without ``scaler.pt`` (written
    before hardneg saved it) resumes with a fresh scale, said in a warning."""
    device = torch.device(device) if device is not None else model_device(model)
    state = read_json(folder / "trainer_state.json")
    if state.get("version") != CHECKPOINT_VERSION:
        raise HardnegError(
            f"{folder}: checkpoint format {state.get('version')} is not {CHECKPOINT_VERSION} "
            "(written by another hardneg version); start a new run or use that version"
        )
    accepted = {fingerprint} if isinstance(fingerprint, str) else set(fingerprint)
    if state.get("config_fingerprint") not in accepted:
        what = f" ({'; '.join(changed)})" if changed else ""
        raise HardnegError(
            f"{folder}: this checkpoint was written with other training settings{what}; resume with the "
            "same settings (only max_steps, dev_every, save_every, keep_checkpoints, patience, device, tracking "
            "and --compile may change, and the run folder and --cache-dir may move) or train into a new --out "
            "folder"
        )
    try:  # tensors only: weights_only refuses any pickled code in a checkpoint
        _load_unique_state_dict(model, load_file(str(folder / "model.safetensors")))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=MAP_LOCATION, weights_only=True))
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location=MAP_LOCATION, weights_only=True))
        rng = torch.load(folder / "rng.pt", map_location=MAP_LOCATION, weights_only=True)
        scaler_file = folder / "scaler.pt"
        if scaler is not None and scaler.is_enabled():
            if scaler_file.is_file():
                scaler.load_state_dict(torch.load(scaler_file, map_location=MAP_LOCATION, weights_only=True))
            else:
                logger.warning("%s: no fp16 loss-scaler state (an older checkpoint); resuming with a fresh "
                               "scale of %g", folder, scaler.get_scale())
    except Exception as exc:  # another architecture, damaged or unsafe files
        raise MismatchError(
            f"{folder}: the checkpoint does not fit this model or is damaged or unsafe "
            f"({str(exc).splitlines()[0][:300]}); resume with the model it was trained from, "
            "or train into a new --out folder"
        ) from exc
    ranks = rng.pop("ranks", None)
    if ranks is not None and len(ranks) == dist.world_size():  # each rank continues its own streams
        rng = {**rng, **ranks[dist.rank()]}  # (older checkpoints kept only rank 0's Python state)
    dist.set_rng_state(rng, device)
    return state


# ----------------------------------------------------------------------------- logging
def _log_step(line: str) -> float:
    """The step of a log line; a blank or torn (killed mid-write) line sorts after every step."""
    try:
        return float(json.loads(line).get("step", 0)) if line.strip() else math.inf
    except (ValueError, AttributeError):
        return math.inf


class RunLog:
    """JSONL log (one object per line) plus the ``report_to`` targets (TensorBoard by default).

    ``params``: the run's settings, for MLflow / W&B; see :mod:`hardneg.train.report_to`."""

    def __init__(self, out: Path, resume_step: int | None, report_to: list[str] | None = None,
                 params: dict | None = None) -> None:
        report_to = ["tensorboard"] if report_to is None else report_to
        params = {} if params is None else params
        # the targets first: a missing backend library fails before the log is touched
        self.reporters = Reporters(open_reporters(out, list(report_to), resume_step, params))
        self.path = out / "train_log.jsonl"
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if _log_step(line) <= resume_step]
            with atomic_write(self.path) as fh:  # a kill here must not lose the log
                fh.write("".join(line + "\n" for line in kept))
        elif self.path.exists():
            self.path.unlink()
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict, prefix: str) -> None:
        self._fh.write(json.dumps({**record, "kind": prefix}) + "\n")
        self._fh.flush()
        self.reporters.log(scalars(record, prefix), record["step"])

    def close(self) -> None:
        self._fh.close()
        self.reporters.close()


class NullLog:
    """What ranks other than 0 log to: nothing."""

    def write(self, record: dict, prefix: str) -> None:
        pass

    def close(self) -> None:
        pass
