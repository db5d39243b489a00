"""What every report section reads and where it writes: :class:`ReportContext`.

A section (:mod:`hardneg.experiment.sections`) is a function of one context: the experiment's
results, the per-query test scores of every finished system, the unseen-document stratum and the
main measure; it adds its tables (:meth:`ReportContext.table`) and figures
(:meth:`ReportContext.save`) to the context, from which :mod:`hardneg.experiment.report` writes them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from hardneg.experiment.figures import save_figure, system_colours
from hardneg.experiment.results import ExperimentResults
from hardneg.experiment.stages import train_stage, transfer_stage
from hardneg.experiment.stats import mean, seed_average, spread
from hardneg.experiment.tables import Table
from hardneg.io import read_json


class ReportContext:
    """The state a report is written from, and the tables and figures written so far."""

    def __init__(self, results: ExperimentResults, out: Path, *, svg: bool = False) -> None:
        self.r = results
        self.out = out
        self.fig_dir = out / "figures"
        self.svg = svg
        #: every table of the report by name (written as tables/<name>.csv and .tex)
        self.tables: dict[str, Table] = {}
        #: figure file → {label: {colour, x, y}} of what it draws
        self.drawn: dict[str, dict[str, dict[str, Any]]] = {}
        #: system → measure → query → test score, for every system whose test stage is done (a seeded system: its
        #: seed-averaged run, each query's score averaged over the seeds whose test stage is done)
        self.per_query = {n: pq for n in results.names if (pq := results.per_query(n)) is not None}
        #: seeded system → run (the system itself, then ``<name>.seed<k>``) → its per-query test scores (done runs)
        self.seed_runs: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
        for n in results.names:
            if results.seed_runs(n):
                runs = {run: pq for _, run in results.seed_runs(n) if (pq := results.per_query(run)) is not None}
                self.seed_runs[n] = runs
                self.per_query.pop(n, None)
                if runs:
                    self.per_query[n] = seed_average(list(runs.values()))
        #: the test queries none of whose relevant documents is relevant to a training query (None: unknown)
        self.unseen = results.unseen()
        self.main_measure = "nDCG@10" if "nDCG@10" in results.measures else results.measures[-1]

    @property
    def colours(self) -> dict[str, str]:
        return system_colours(self.r.names)

    def table(self, name: str, header: list[str], rows: list[list[str]]) -> str:
        """Keep table ``name`` for ``tables/<name>.csv`` (and ``.tex``); returns its markdown."""
        self.tables[name] = Table(name, header, rows)
        return self.tables[name].markdown

    def save(self, fig: Any, name: str) -> str:
        """Write figure ``name`` (see :func:`~hardneg.experiment.figures.save_figure`); returns its report path."""
        path, self.drawn[name] = save_figure(fig, self.fig_dir, name, svg=self.svg)
        return path

    def transfer_metric(self, system: str | None, tag: str) -> float | None:
        """The main measure of ``system`` on the transfer set ``tag`` (None before its stage is done); of a seeded
        system, the mean over its seeds whose transfer stage is done."""
        if system in self.seed_runs:
            return spread(self.transfer_values(system, tag))["mean"]
        st = self.r.stage(transfer_stage(system, tag)) if system is not None else None
        return st["result"]["metrics"].get(self.main_measure) if st else None

    def runs(self, system: str) -> list[str]:
        """The runs of ``system``: each seed's (``<system>.seed<k>``, the first seed being ``system``), or itself."""
        return [run for _, run in self.r.seed_runs(system)] or [system]

    def transfer_values(self, system: str, tag: str) -> list[float | None]:
        """The main measure on the transfer set ``tag`` of each seed run of a seeded system (None: not done)."""
        runs = self.runs(system)
        states = [self.r.stage(transfer_stage(run, tag)) for run in runs]
        return [st["result"]["metrics"].get(self.main_measure) if st else None for st in states]

    def transfer_per_query(self, system: str, tag: str) -> dict[str, dict[str, float]] | None:
        """``system``'s per-query scores on the transfer set ``tag`` (None: not done); of a seeded system, its
        seed-averaged run over the seeds whose transfer stage is done."""
        runs = self.runs(system)
        done = [pq for run in runs if (pq := self.r.transfer_per_query(run, tag)) is not None]
        if not done:
            return None
        return done[0] if len(runs) == 1 else seed_average(done)

    def chain_seconds(self, system: str) -> float | None:
        """The wall-clock that produced ``system``'s model (:meth:`ExperimentResults.chain_seconds`); of a seeded
        system, the mean over its seeds whose chain is done."""
        runs = self.runs(system)
        return spread([self.r.chain_seconds(run) for run in runs])["mean"]

    def chain_machines(self, system: str) -> list[dict[str, Any]]:
        """The machines that ran the stages producing ``system``'s model (every seed's; :meth:`ExperimentResults.chain`,
        :meth:`ExperimentResults.machines`); empty before they are done."""
        runs = self.runs(system)
        chains = [self.r.chain(run) for run in runs]
        return self.r.machines([name for chain in chains if chain for name in chain])

    def seed_values(self, system: str, measure: str, qids: list[str] | None = None) -> list[float]:
        """A seeded system's mean ``measure`` (over ``qids``, if given) in each seed run whose test is done."""
        return [mean(pq[measure], qids) for pq in self.seed_runs.get(system, {}).values()]

    def dev_metrics(self, trained: str) -> dict[str, Any] | None:
        """The best dev metrics of a trained system (its ``dev_metrics.json``); None for an untrained one."""
        path = self.r.stage_file(train_stage(trained), "dev_metrics.json")
        return read_json(path) if self.r.stage(train_stage(trained)) and path.is_file() else None


def short_path(path: str) -> str:
    """A data path without the machine-specific prefix before the shared data folder."""
    marker = "shared/data/"
    return path[path.index(marker):] if marker in path else path


def machine() -> str:
    """This machine in one line: CPU architecture and cores, torch version, GPU."""
    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
