"""An experiment's *records*: each finished stage's small files, kept in a second folder that outlives the first.

A grid of tens of hours runs as a series of jobs (a cluster's time limit, preemptible machines, sessions) whose
disks need not last. ``hardneg experiment RECIPE --records DIR`` copies, as each stage finishes, the stage's small
files (its ``stage.json``, metrics, per-query scores, training log and summary, the analyses' numbers: every file
directly in its folder up to :data:`RECORD_LIMIT`, runs excepted, and the files of its subfolders the stage names in
:attr:`~hardneg.experiment.stages.Stage.record_also`) to ``DIR/stages/<stage>/``, beside the recipe
and the plan; DIR is what to keep (commit it, copy it to lasting storage). Models, checkpoints, indexes and runs
stay behind: a record's ``stage.json`` names what was left out (``left_out``).

Run in a fresh folder with the same ``--records``, a stage whose record is done with the stage's current settings
(the key: :func:`hardneg.experiment.execute.same_settings`, portable across folders) is taken from it, not run:
its files are copied in and its ``stage.json`` says ``restored_from``. A restored stage whose files a stage still
to run needs (its model: through any chain of dependencies) runs again first, from scratch, and its record is
replaced by the new one. ``hardneg report DIR`` writes the report from the records alone.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardneg.experiment.execute import STATE_FILE, is_finished, read_state
from hardneg.experiment.stages import Stage, run_order
from hardneg.io import atomic_write, write_json

#: the largest file a record keeps (a test run at k = 1000 is ~10 MB and stays behind; metrics, per-query scores,
#: logs and the analyses' numbers are far smaller)
RECORD_LIMIT = 2 * 2**20
#: runs (TREC format): a record keeps their metrics and per-query scores, not the ranked lists (a transfer run on a
#: small collection is under the limit, but 30 queries x 1000 documents is still 1.6 MB a system)
RUN_SUFFIXES = (".trec",)
#: the experiment-level files a record folder keeps beside ``stages/`` (the report reads them)
TOP_FILES = ("recipe.json", "plan.json")
#: a restored stage's ``stage.json`` key: the records folder it came from
RESTORED = "restored_from"


def small_files(folder: Path, also: Collection[str] = ()) -> tuple[list[str], list[str]]:
    """The files of a stage ``folder`` a record keeps, as paths relative to it: those directly in it and those
    matching the globs ``also`` (:attr:`~hardneg.experiment.stages.Stage.record_also`), each at most
    :data:`RECORD_LIMIT` bytes, not temp files, not runs (a run's metrics and per-query scores are kept); and the
    names of what it leaves out (runs, larger files, and folders: models, checkpoints, indexes; a folder ``also``
    takes files from is named by what stays in it)."""
    candidates = [p for p in folder.iterdir() if p.is_file()]
    taken_from = set()
    for pattern in also:
        matches = [p for p in folder.glob(pattern) if p.is_file()]
        candidates += matches
        taken_from |= {p.parent for p in matches}
    keep: list[str] = []
    left: list[str] = []
    for path in sorted(set(candidates)):
        if path.name.startswith(".") or ".tmp" in path.name:
            continue
        rel = path.relative_to(folder).as_posix()
        if path.stat().st_size <= RECORD_LIMIT and path.suffix not in RUN_SUFFIXES:
            keep.append(rel)
        else:
            left.append(rel)
    kept = set(keep)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub not in taken_from:
            left.append(f"{sub.name}/")
            continue
        left += [p.relative_to(folder).as_posix() for p in sorted(sub.rglob("*"))
                 if p.is_file() and p.relative_to(folder).as_posix() not in kept]
    return keep, left


def _files(folder: Path) -> list[str]:
    """Every file under ``folder``, relative to it."""
    return [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fh, atomic_write(dst, "wb", encoding=None) as out:
        shutil.copyfileobj(fh, out)


def save(stage: Stage, folder: Path, record: Path) -> None:
    """Make ``record`` (``DIR/stages/<stage>``) hold the small files of ``stage``, finished in ``folder``, and only
    them: files of an earlier record that the stage no longer has go; its ``stage.json`` is written last (a record
    without one is not a record), with ``left_out`` naming what stayed behind, and the stage's portable key (a
    folder keyed before keys were portable is recorded as the same settings anywhere)."""
    keep, left = small_files(folder, stage.record_also)
    record.mkdir(parents=True, exist_ok=True)
    state_path = record / STATE_FILE
    if state_path.exists():  # replaced: a half-written record must not read as the old one finished
        state_path.unlink()
    for old in _files(record):
        if old not in keep:
            (record / old).unlink()
    for sub in sorted((p for p in record.rglob("*") if p.is_dir()), reverse=True):  # deepest first
        if not any(sub.iterdir()):
            sub.rmdir()
    for rel in keep:
        if rel != STATE_FILE:
            (record / rel).parent.mkdir(parents=True, exist_ok=True)
            _copy(folder / rel, record / rel)
    state = read_state(folder) or {}
    state.pop(RESTORED, None)
    write_json(state_path, {**state, "key": stage.key, "left_out": left})


def save_top(out: Path, records: Path) -> None:
    """Copy the experiment's own files (:data:`TOP_FILES`) into ``records``."""
    records.mkdir(parents=True, exist_ok=True)
    for name in TOP_FILES:
        if (out / name).is_file():
            _copy(out / name, records / name)


def is_restored(state: Mapping[str, Any] | None) -> bool:
    return state is not None and state.get(RESTORED) is not None


def can_take(stage: Stage, folder: Path, record: Path) -> bool:
    """Whether :func:`restore` takes ``stage`` from its ``record``: the record is done with the stage's current
    settings and ``folder`` holds no finished stage of its own (that one has the files the record lacks)."""
    return is_finished(stage, read_state(record)) and not is_finished(stage, read_state(folder))


def restore(stage: Stage, folder: Path, record: Path) -> bool:
    """Take ``stage`` from its ``record`` into its empty (or never finished) ``folder`` when :func:`can_take`
    says so. Returns whether it did."""
    if not can_take(stage, folder, record):
        return False
    state = read_state(record)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for rel in _files(record):
        if rel != STATE_FILE:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            _copy(record / rel, folder / rel)
    write_json(folder / STATE_FILE, {**state, RESTORED: str(record.parent.parent)})
    return True


def needed_again(stages: Mapping[str, Stage], to_run: Collection[str], restored: Collection[str]) -> set[str]:
    """The ``restored`` stages that must run again because a stage that will run reads their files: a stage
    still to run needs its dependencies' folders (a test needs its training's model, which a record does not
    hold), except one that reads records only (:attr:`~hardneg.experiment.stages.Stage.reads_records`: the
    report, the analyses gathering per-system numbers); a restored stage that runs again needs its own
    dependencies in turn. A dependency that finished here has its files, and had its own when it ran."""
    again: set[str] = set()
    stack = list(to_run)
    while stack:
        stage = stages[stack.pop()]
        if stage.reads_records:
            continue
        for dep in stage.deps:
            if dep in restored and dep not in again:
                again.add(dep)
                stack.append(dep)
    return again


@dataclass(frozen=True)
class Plan:
    """What a run of ``wanted`` does, decided before it touches a folder: :func:`plan`."""

    #: the stages the run takes, in :func:`~hardneg.experiment.stages.run_order`
    order: list[str]
    #: the stages it takes from the records (:func:`restore`) before it starts
    taken: frozenset[str]
    #: the restored stages (taken now or before) it runs again: a stage still to run needs their files
    again: frozenset[str]
    #: the restored stages that stay restored (finished with current settings, not run again): their records
    #: are there already, so the run does not copy them back
    kept: frozenset[str]


def plan(stages: Mapping[str, Stage], wanted: list[str], stage_dir: Callable[[str], Path],
         records: Path | None) -> Plan:
    """The one plan both ``hardneg experiment`` and its ``--dry-run`` follow: with ``records``, the ``wanted``
    stages :func:`can_take` takes from them (never one that always runs, the report), the restored ones
    :func:`needed_again` sends back, and the order the run takes them in (finished stages first, they are only
    read back). Reads the stages' ``stage.json`` files only."""
    states = {n: read_state(stage_dir(n)) for n in stages}
    finished = {n for n, stage in stages.items() if is_finished(stage, states[n])}
    taken: set[str] = set()
    again: set[str] = set()
    restored: set[str] = set()
    if records is not None:
        taken = {n for n in wanted if not stages[n].always
                 and can_take(stages[n], stage_dir(n), records / "stages" / n)}
        finished |= taken
        # restored and still current: one restored earlier whose settings changed since is stale, so it runs
        # and its new result goes to the records like any other
        restored = taken | {n for n in wanted if n in finished and is_restored(states[n])}
        again = needed_again(stages, [n for n in wanted if n not in finished], restored)
    return Plan(order=run_order(stages, wanted, finished - again), taken=frozenset(taken),
                again=frozenset(again), kept=frozenset(restored - again))
