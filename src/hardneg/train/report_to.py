"""Where the training log's scalars go besides ``train_log.jsonl``: TensorBoard, MLflow, Weights & Biases.

``TrainConfig.report_to`` names the targets (``hardneg train --report-to``, repeatable; default
tensorboard). Each gets the same scalars as the JSONL log: every number of a ``train``, ``dev`` or
``track`` record, as ``<kind>/<key>`` at the record's ``step`` (MLflow names may not hold ``@``:
``dev/RR@10`` is logged there as ``dev/RR_at_10``). Only rank 0 reports (the trainer gives the
other ranks a :class:`~hardneg.train.checkpoint.NullLog`).

* tensorboard: ``OUT/tensorboard`` (purged back to the resumed step, as the JSONL log is cut).
* mlflow: the server or store of ``MLFLOW_TRACKING_URI``, else a file store in ``OUT/mlruns``
  (MLflow 3 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE=true``: for a ``file:`` store
  hardneg sets that when it is unset); experiment ``MLFLOW_EXPERIMENT_NAME`` or ``hardneg``, run
  name the ``--out`` folder's name, the settings as params.
* wandb: project ``WANDB_PROJECT`` or ``hardneg``, files under ``WANDB_DIR`` or ``OUT``;
  ``WANDB_MODE=offline`` works without an account.

A resumed run (``--resume``) continues the same MLflow / W&B run: their ids are kept in
``OUT/report_to.json``. Steps after the checkpoint that the killed run had already reported are
reported again with the same values (resume is exact); W&B drops them as already seen.
A target failing during training is a warning and that target is dropped; training goes on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from hardneg.errors import HardnegError
from hardneg.io import read_json, write_json

logger = logging.getLogger("hardneg.train")

STATE_FILE = "report_to.json"
#: the pip extra that installs the optional backends
EXTRA = "pip install 'hardneg[tracking]'"


def scalars(record: dict[str, Any], prefix: str) -> dict[str, float]:
    """``{"<prefix>/<key>": value}`` for every number of a log record but its step (what TensorBoard gets)."""
    return {f"{prefix}/{key}": float(value) for key, value in record.items()
            if key != "step" and isinstance(value, int | float)}


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """A run's settings as flat string params (lists joined by commas, mappings as JSON)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                out[f"{key}.{sub}"] = json.dumps(inner, default=str) if isinstance(inner, dict | list) else str(inner)
        elif isinstance(value, list | tuple):
            out[key] = ",".join(map(str, value))
        else:
            out[key] = str(value)
    return {k: v[:500] for k, v in out.items()}


def mlflow_key(key: str) -> str:
    """An MLflow metric name for a log key: ``@`` becomes ``_at_``, any other character MLflow refuses ``_``."""
    return re.sub(r"[^/\w.\- ]", "_", key.replace("@", "_at_"))


def _need(module: str, target: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise HardnegError(
            f"--report-to {target} needs the {target} package, which is not installed: {EXTRA} "
            f"(or drop {target} from --report-to / report_to)"
        ) from exc


def check_installed(targets: list[str]) -> None:
    """A :class:`HardnegError` naming the extra for a target whose library does not import."""
    for target in targets:
        if target in ("mlflow", "wandb"):
            _need(target, target)


def _failed() -> bool:
    """Whether an exception is propagating (``close`` runs in the trainer's ``finally``)."""
    return sys.exc_info()[0] is not None


class TensorBoardReporter:
    name = "tensorboard"

    def __init__(self, out: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class MlflowReporter:
    """One MLflow run through ``MlflowClient`` (no global active run is left behind)."""

    name = "mlflow"

    def __init__(self, out: Path, params: dict[str, Any], state: dict[str, Any]) -> None:
        _need("mlflow", "mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (out.resolve() / "mlruns").as_uri()
        if uri.startswith("file:") or "://" not in uri:  # MLflow 3: file stores are opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        old = state.get("mlflow") or {}
        if old.get("run_id") and old.get("tracking_uri") == uri:  # --resume: the same run
            self.run_id = old["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "hardneg"
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=out.name, tags={"hardneg.out": str(out)})
            self.run_id = run.info.run_id
            items = [Param(k, v) for k, v in flat_params(params).items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        state["mlflow"] = {"run_id": self.run_id, "tracking_uri": uri}

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_key(k), v, now, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if _failed() else "FINISHED")


class WandbReporter:
    name = "wandb"

    def __init__(self, out: Path, params: dict[str, Any], state: dict[str, Any]) -> None:
        wandb = _need("wandb", "wandb")
        old = (state.get("wandb") or {}).get("id")
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "hardneg", name=out.name,
                                  dir=os.environ.get("WANDB_DIR") or str(out), config=params,
                                  id=old, resume="allow" if old else None)
        except Exception as exc:  # not logged in, no network, ...
            raise HardnegError(
                f"--report-to wandb: could not start a W&B run ({str(exc).splitlines()[0][:300]}); "
                "log in with `wandb login`, or set WANDB_MODE=offline (sync later with `wandb sync`)"
            ) from exc
        state["wandb"] = {"id": self.run.id, "dir": str(self.run.dir)}

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish(exit_code=1 if _failed() else 0)


def open_reporters(out: Path, targets: list[str], resume_step: int | None,
                   params: dict[str, Any]) -> list[Any]:
    """The reporters of ``targets`` (a :class:`HardnegError` for a missing library, before any is opened)."""
    check_installed(targets)
    path = out / STATE_FILE
    state: dict[str, Any] = read_json(path) if resume_step is not None and path.is_file() else {}
    reporters: list[Any] = []
    try:
        for target in targets:
            if target == "tensorboard":
                try:
                    reporters.append(TensorBoardReporter(out, resume_step))
                except ImportError:
                    logger.warning("tensorboard is not installed: no TensorBoard log (train_log.jsonl only)")
            elif target == "mlflow":
                reporters.append(MlflowReporter(out, params, state))
            elif target == "wandb":
                reporters.append(WandbReporter(out, params, state))
            else:
                raise HardnegError(f"report_to: unknown target {target!r} (tensorboard, mlflow or wandb)")
    except BaseException:
        for reporter in reporters:
            reporter.close()
        raise
    if state:
        write_json(path, state)
    return reporters


class Reporters:
    """The open reporters of a run; one that fails is warned about and dropped."""

    def __init__(self, reporters: list[Any]) -> None:
        self.reporters = reporters

    def log(self, values: dict[str, float], step: int) -> None:
        if not values:
            return
        for reporter in list(self.reporters):
            try:
                reporter.log(values, step)
            except Exception as exc:
                logger.warning("--report-to %s failed at step %d (%s); no longer reporting to it",
                               reporter.name, step, str(exc).splitlines()[0][:300])
                self.reporters.remove(reporter)

    def close(self) -> None:
        for reporter in self.reporters:
            try:
                reporter.close()
            except Exception as exc:
                logger.warning("--report-to %s: closing failed (%s)", reporter.name, str(exc).splitlines()[0][:300])
        self.reporters = []


__all__ = ["Reporters", "check_installed", "flat_params", "mlflow_key", "open_reporters", "scalars"]
