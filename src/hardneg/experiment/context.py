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
        #: system → measure → query → test score, for every system whose test stage is done
        self.per_query = {n: pq for n in results.names if (pq := results.per_query(n)) is not None}
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
        """The main measure of ``system`` on the transfer set ``tag`` (None before its stage is done)."""
        st = self.r.stage(transfer_stage(system, tag)) if system is not None else None
        return st["result"]["metrics"].get(self.main_measure) if st else None

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
