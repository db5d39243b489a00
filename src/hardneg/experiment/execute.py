"""Executing an experiment's stages: their ``stage.json`` state files, resume, ``--keep-going``, the heartbeat.

What the stages are (their functions, settings, keys and dependencies) is :mod:`hardneg.experiment.runner`'s
business; this module only runs a list of them. Each stage writes into its own folder; its ``stage.json`` holds
the stage's name, key, settings and dependencies, its ``status`` (``running``, ``done`` or ``failed``), the
number of ``attempts``, the wall-clock ``seconds`` of all of them, the CPU time of the process's threads over
them (``cpu_seconds``: about the wall-clock times ``threads``, torch's intra-op threads, when the cores were the
stage's alone; less when other work shared them), their peak memory (:func:`peaks`) and the ``machines`` they
ran on (:func:`machines`: wall-clocks of stages run on other machines are not comparable). A stage
done with the same key is only read back; one left ``running`` (its process was killed) or ``failed`` runs again
in the same folder, resuming what it had written; one whose key changed starts afresh in an emptied folder.
"""

from __future__ import annotations

import gc
import logging
import shutil
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from hardneg.devices import PeakMemory, distinct_machines, machine_record, same_host
from hardneg.errors import HardnegError
from hardneg.experiment.stages import Stage, stops_the_run
from hardneg.io import read_json, write_json

logger = logging.getLogger("hardneg.experiment")

#: each stage folder's state file
STATE_FILE = "stage.json"
#: how often a running stage's stage.json gets its wall-clock so far (:class:`Heartbeat`)
HEARTBEAT_SECONDS = 60.0
#: a ``running`` stage.json not rewritten for this many heartbeats has no live run behind it
#: (:func:`describe`, when the run's process cannot be looked up: another host)
SILENT_BEATS = 5


class Heartbeat:
    """While a stage runs, rewrite its ``stage.json`` every :data:`HEARTBEAT_SECONDS` with the wall-clock so far
    (``seconds``: the earlier attempts' plus this one's). An attempt that is killed (a session's end, the OOM
    killer, Ctrl-C) then still counts, to within the interval, when the next run resumes the stage: the report's
    wall-clock comparisons (Table 4, the chain behind a model) are not shortened by interruptions; so do the
    attempt's CPU time and peak memory so far (``usage``: :func:`_attempt`'s ``cpu_seconds`` and :func:`peaks`).
    The file's
    age also tells ``--dry-run`` whether a run is still behind a ``running`` stage (:func:`describe`)."""

    def __init__(self, path: Path, state: dict[str, Any], seconds: float, tic: float,
                 usage: Callable[[], dict[str, Any]] = dict) -> None:
        self.path, self.state, self.seconds, self.tic, self.usage = path, state, seconds, tic, usage
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="hardneg-stage-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self._write()

    def _write(self) -> None:
        try:
            write_json(self.path, {**self.state, "seconds": self.seconds + time.perf_counter() - self.tic,
                                   **self.usage()})
        except Exception as exc:  # a full disk: the stage itself will say so; the clock is not worth a crash
            logger.warning("could not update %s: %s", self.path, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        self._thread.join()  # no write of its own can land after the stage's final stage.json
        if exc_type is not None:  # the stage is dying (an error, Ctrl-C): its time to the end, for the resume
            self._write()


def read_state(folder: Path) -> dict[str, Any] | None:
    """A stage folder's ``stage.json``, or ``None`` when the stage never started."""
    path = folder / STATE_FILE
    return read_json(path) if path.is_file() else None


def same_settings(stage: Stage, state: dict[str, Any]) -> bool:
    """``state`` (a stage.json) was written with ``stage``'s current settings: its key is the stage's key, or the
    stage's :attr:`~hardneg.experiment.stages.Stage.legacy_key` (a folder from before keys named paths relative
    to the experiment and data folders: it stays done where it is)."""
    return state.get("key") in (stage.key, stage.legacy_key or stage.key)


def is_finished(stage: Stage, state: dict[str, Any] | None) -> bool:
    """Done with the stage's current settings: a run only reads it back (the report, ``always``, reruns)."""
    return (state is not None and not stage.always and same_settings(stage, state)
            and state.get("status") == "done")


def describe(stage: Stage, state: dict[str, Any] | None, folder: Path, run_alive: bool | None) -> str:
    """The stage's status for ``hardneg experiment --dry-run``: ``todo``, ``done``, ``failed``, ``stale (settings
    changed)``, ``running``, or ``interrupted`` for a ``running`` stage.json with no run behind it (a killed
    process leaves it so; the next run resumes the stage). A stage runs when the process holding the
    experiment's lock lives (``run_alive``, :func:`hardneg.locks.holder_alive`; ``None``: it runs on another
    host, where this process cannot tell) and its heartbeat is fresh (stage.json rewritten within
    :data:`SILENT_BEATS` heartbeats): a live run working on another stage leaves an earlier killed one
    interrupted."""
    if state is None:
        return "todo"
    if not same_settings(stage, state):
        return "stale (settings changed)"
    status = str(state.get("status"))
    if status != "running":
        return status
    fresh = time.time() - (folder / STATE_FILE).stat().st_mtime < SILENT_BEATS * HEARTBEAT_SECONDS
    return "running" if run_alive is not False and fresh else "interrupted (resumes)"


def peaks(earlier: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, Any]:
    """A stage's peak memory over its attempts: the largest of the ``earlier`` state's and this attempt's
    (:meth:`hardneg.devices.PeakMemory.read`: ``peak_rss_mb``, ``peak_rss_scope``, ``peak_gpu_mb``). The scope is
    ``process`` when any attempt's could not be reset to the stage's own."""
    earlier = earlier or {}
    out = dict(now)
    for key in ("peak_rss_mb", "peak_gpu_mb"):
        if isinstance(earlier.get(key), int | float):
            out[key] = max(float(earlier[key]), float(now.get(key, 0.0)))
    if "process" in (earlier.get("peak_rss_scope"), now.get("peak_rss_scope")):
        out["peak_rss_scope"] = "process"
    return out


def release_memory() -> None:
    """Free what a finished stage left behind: objects in reference cycles (``gc.collect()``), then, when
    CUDA is present, the caching allocator's unused blocks (``torch.cuda.empty_cache()``), so the next stage's
    model and Faiss GPU index find the memory free instead of falling back to the CPU."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_stages(stages: Mapping[str, Stage], order: list[str], stage_dir: Callable[[str], Path], *,
               echo: Callable[[str], None], keep_going: bool = False, again: Collection[str] = (),
               finished: Callable[[str, str], None] | None = None) -> dict[str, str]:
    """Run the stages named in ``order``, in that order (dependencies first: the caller's
    :func:`~hardneg.experiment.stages.run_order`); returns each one's outcome: ``cached``, ``done``, and with
    ``keep_going`` also ``failed`` / ``skipped``.

    ``keep_going`` (as ``make -k``): a stage that raises is recorded as ``failed`` in its ``stage.json`` (with the
    error), the stages that need it are ``skipped``, every other stage still runs; the next run resumes the failed
    stage. Without it the first failure stops the run; with it too, an error every later stage would share
    (:func:`~hardneg.experiment.stages.stops_the_run`: a CUDA error that leaves the device unusable, a full disk).
    After every stage that ran, :func:`release_memory`. ``again``: finished stages to run anew from an emptied
    folder (restored from records without the files a later stage needs: :mod:`hardneg.experiment.records`).
    ``finished(name, outcome)`` is called for every stage done or read back (``cached``): the records' copy."""
    outcome: dict[str, str] = {}
    for name in order:
        stage = stages[name]
        blocked = [d for d in stage.deps if outcome.get(d) in ("failed", "skipped")]
        if blocked:
            outcome[name] = "skipped"
            echo(f"[skip]   {name}: needs {', '.join(blocked)}")
            continue
        folder = stage_dir(name)
        state = read_state(folder)
        if name in again and folder.exists():
            echo(f"[again]  {name}: restored from records, its model (or other files) needed by a later stage")
            shutil.rmtree(folder)
            state = None
        if is_finished(stage, state):
            outcome[name] = "cached"
            echo(f"[cached] {name}")
            if finished is not None:
                finished(name, "cached")
            continue
        if state is not None and not same_settings(stage, state) and folder.exists():
            echo(f"[stale]  {name}: settings changed, starting it afresh")
            shutil.rmtree(folder)
            state = None
        outcome[name] = _attempt(stage, folder, state, echo=echo, keep_going=keep_going)
        if outcome[name] == "done" and finished is not None:
            finished(name, "done")
    return outcome


def _ran(state: Mapping[str, Any] | None) -> bool:
    """Whether an earlier attempt ran (for some seconds): what it measured is summed with this attempt's, and
    what it did not record (a stage.json from before hardneg kept it) is unknown, not zero."""
    return bool(state) and float(state.get("seconds") or 0.0) > 0


def machines(state: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The machines a stage's attempts ran on (:func:`hardneg.devices.machine_record`): an earlier attempt's, then
    this process's where it is another machine. An earlier attempt from before hardneg kept them counts as an
    empty record: a machine not recorded. One stage runs on one device: an attempt on this host that had not
    started CUDA yet (it failed, or was killed, before its first GPU work) and one that names the GPU are one
    machine, the GPU's."""
    if _ran(state) and "machines" not in state:
        earlier: list[dict[str, Any]] = [{}]
    else:
        earlier = [m for m in ((state or {}).get("machines") or []) if isinstance(m, dict)]
    here = machine_record()
    if here.get("gpu"):
        earlier = [m for m in earlier if not (same_host(m, here) and not m.get("gpu"))]
    elif any(same_host(m, here) and m.get("gpu") for m in earlier):
        return distinct_machines(earlier)
    return distinct_machines([*earlier, here])


def _attempt(stage: Stage, folder: Path, state: dict[str, Any] | None, *, echo: Callable[[str], None],
             keep_going: bool) -> str:
    """One attempt at ``stage`` in ``folder`` (``state``: what an earlier attempt left, or None): ``done``, or
    ``failed`` when it raised and ``keep_going`` lets the run go on; its stage.json says so, with the wall-clock, CPU
    time and peak memory of all attempts (an earlier attempt's CPU time as far as its heartbeat kept it; a stage.json
    from before hardneg kept it has none, and then none is summed)."""
    attempts = int(state.get("attempts", 0)) + 1 if state else 1
    seconds = float(state.get("seconds", 0.0)) if state else 0.0
    cpu_before = state.get("cpu_seconds") if _ran(state) else 0.0
    echo(f"[resume] {stage.name} (attempt {attempts})" if state is not None else f"[run]    {stage.name}")
    folder.mkdir(parents=True, exist_ok=True)
    base = {"name": stage.name, "key": stage.key, "settings": stage.settings, "deps": stage.deps}
    running = {**base, "status": "running", "attempts": attempts}
    write_json(folder / STATE_FILE, {**running, "seconds": seconds, "machines": machines(state)})
    tic, cpu_tic = time.perf_counter(), time.process_time()
    with PeakMemory() as peak:
        def memory() -> dict[str, Any]:  # the machines too: the GPU is known once the stage has used it
            cpu = ({"cpu_seconds": float(cpu_before) + time.process_time() - cpu_tic}
                   if isinstance(cpu_before, int | float) else {})
            return {**peaks(state, peak.read()), **cpu, "threads": torch.get_num_threads(),
                    "machines": machines(state)}

        try:
            with Heartbeat(folder / STATE_FILE, running, seconds, tic, memory):
                result = stage.fn(folder)
        except Exception as exc:
            if not keep_going or stops_the_run(exc):  # a dead GPU or a full disk: every later stage too
                raise
            error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, HardnegError) else str(exc)
            logger.exception("stage %s failed", stage.name)
            write_json(folder / STATE_FILE, {**base, "status": "failed", "attempts": attempts,
                                              "seconds": seconds + time.perf_counter() - tic, "error": error,
                                              **memory()})
            echo(f"[failed] {stage.name}: {error}")
            return "failed"
        finally:
            release_memory()  # the stage's locals are gone: its GPU memory goes back before the next one
        write_json(folder / STATE_FILE, {**base, "status": "done", "attempts": attempts,
                                          "seconds": seconds + time.perf_counter() - tic, **memory(),
                                          "result": result})
    return "done"
