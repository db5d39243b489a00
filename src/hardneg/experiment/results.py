"""What an experiment folder holds, the roles of its systems, and the report's statistics helpers.

A system's role in the report (the start model, a random-negative method, STAR,
a plain ADORE run ...) comes from the recipe: its ``kind``, ``method``,
``base`` and settings, never from its name.

Table cells are strings (the markdown); a number formatted by :func:`fmt`,
:func:`fmt_p`, :func:`signed` or :func:`marked` is a :class:`Num`, which also keeps
the value and the significance markers, so :class:`Table` writes CSV with numbers
as numbers and LaTeX.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.data.load import load_dataset, parse_spec
from hardneg.errors import HardnegError
from hardneg.evaluate.analysis import unseen_queries
from hardneg.evaluate.metrics import paired_ttest
from hardneg.experiment.recipe import START_MODEL, Recipe
from hardneg.experiment.stages import dataset_tag, test_stage, train_stage, wise_name, wise_stage
from hardneg.io import read_json
from hardneg.retrieval.runs import Run, read_run

ALPHA = 0.05
MARKERS = "†‡§¶#♯♮"
#: methods whose negatives are random (the paper's baselines for hard negatives), in order of preference
RANDOM_NEGATIVES = ("rand", "inbatch")


@dataclass
class Section:
    """One part of the report: its markdown ("" when there is nothing to show) and the facts findings use."""

    markdown: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


class ExperimentResults:
    """What an experiment folder holds, loaded lazily."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        if not (self.dir / "stages").is_dir():
            raise HardnegError(f"{self.dir}: not an experiment folder (no stages/); run `hardneg experiment` first")
        self.recipe = self._recipe()
        self.systems: list[dict[str, Any]] = list(self.recipe["systems"])
        self.systems += [{"name": wise_name(s), "kind": "wise", "method": None, "base": None, "settings": {},
                          "wise_of": s} for s in self.interpolated()]
        self.names = [s["name"] for s in self.systems]
        self.eval = self.recipe.get("eval", {})
        self.measures: list[str] = list(self.eval.get("measures") or ["RR@10", "R@100", "nDCG@10"])

    def _recipe(self) -> dict[str, Any]:
        path = self.dir / "recipe.json"
        if not path.is_file():
            raise HardnegError(f"{self.dir}: no recipe.json; run `hardneg experiment` first")
        data = read_json(path)
        if "systems" not in data:  # written by an older runner: read the recipe file itself
            data = Recipe.from_yaml(data["source"]).to_dict()
        return data

    def interpolated(self) -> list[str]:
        """The systems ``interpolate:`` merged with their start model (their rows are ``<name>+wise``)."""
        spec = self.recipe.get("interpolate")
        if not spec:
            return []
        names = spec.get("systems")
        return [s["name"] for s in self.recipe["systems"] if s.get("kind") == "train"
                and (names is None or s["name"] in names)]

    def wise_pick(self, system: str) -> dict[str, Any] | None:
        """The ``wise-<system>`` stage's result: the dev-picked weight, its dev metrics and the dev curve."""
        st = self.stage(wise_stage(system))
        return st["result"] if st else None

    def system(self, name: str) -> dict[str, Any]:
        return next(s for s in self.systems if s["name"] == name)

    def stage(self, name: str) -> dict[str, Any] | None:
        path = self.dir / "stages" / name / "stage.json"
        if not path.is_file():
            return None
        state = read_json(path)
        return state if state.get("status") == "done" else None

    def stage_file(self, name: str, file: str) -> Path:
        return self.dir / "stages" / name / file

    def per_query(self, system: str) -> dict[str, dict[str, float]] | None:
        if self.stage(test_stage(system)) is None:
            return None
        return read_json(self.stage_file(test_stage(system), "per_query.json"))

    def train_log(self, system: str) -> list[dict[str, Any]]:
        path = self.stage_file(train_stage(system), "train_log.jsonl")
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def run(self, system: str) -> Run | None:
        """A system's test run (``test-<system>/run.trec``), or None when its test stage has not finished."""
        path = self.stage_file(test_stage(system), "run.trec")
        return read_run(path) if self.stage(test_stage(system)) is not None and path.is_file() else None

    def test_qrels(self) -> dict[str, dict[str, int]] | None:
        """The qrels of the evaluated split (None when the data folder cannot be read any more)."""
        if not hasattr(self, "_test_qrels"):
            path, _ = parse_spec(self.recipe["data"])
            try:
                self._test_qrels = load_dataset(f"{path}:{self.eval.get('split', 'test')}",
                                                cache_dir=self.recipe.get("cache_dir")).qrels()
            except HardnegError:
                self._test_qrels = None
        return self._test_qrels

    def unseen(self) -> list[str] | None:
        """Test queries whose relevant documents are never relevant to a training query."""
        path, _ = parse_spec(self.recipe["data"])
        try:
            cache_dir = self.recipe.get("cache_dir")  # where the experiment unpacked a dataset archive
            train = load_dataset(f"{path}:train", cache_dir=cache_dir).qrels()
            test = load_dataset(f"{path}:{self.eval.get('split', 'test')}", cache_dir=cache_dir).qrels()
        except HardnegError:
            return None
        return unseen_queries(test, train)

    def transfer_tags(self) -> list[str]:
        return [dataset_tag(spec) for spec in self.recipe.get("transfer") or []]

    # ------------------------------------------------------------------ roles, from the recipe
    def with_method(self, method: str, among: Any = None) -> list[str]:
        """The systems trained with ``method``, in recipe order (only those in ``among``, if given)."""
        return [s["name"] for s in self.systems if s.get("method") == method and (among is None or s["name"] in among)]

    def first_with_method(self, methods: tuple[str, ...] | str, among: Any = None) -> str | None:
        """The first system of the first of ``methods`` that has one (in ``among``, if given)."""
        for method in (methods,) if isinstance(methods, str) else methods:
            names = self.with_method(method, among)
            if names:
                return names[0]
        return None

    def with_kind(self, *kinds: str) -> list[str]:
        return [s["name"] for s in self.systems if s.get("kind") in kinds]

    @property
    def start(self) -> str | None:
        """The zero-shot system: the recipe's starting encoder, untrained."""
        return next(iter(self.with_kind("zeroshot")), None)

    def is_adore(self, name: str) -> bool:
        return self.system(name).get("method") == "adore"

    def base_of(self, name: str) -> str | None:
        """An ADORE system's base: the system whose model it starts from (the start model by default)."""
        s = self.system(name)
        if s.get("method") != "adore":
            return None
        base = s.get("base")
        return self.start if base in (None, START_MODEL) and base not in self.names else base

    def is_plain_adore(self, name: str) -> bool:
        """ADORE as the paper runs it: LambdaLoss against the exact (flat) index."""
        s = self.system(name)
        settings = s.get("settings", {})
        return (s.get("method") == "adore" and settings.get("adore_loss", "lambda") == "lambda"
                and settings.get("index", "flat") == "flat")

    def adore_index(self, name: str) -> str:
        return str(self.system(name).get("settings", {}).get("index", "flat"))


# ----------------------------------------------------------------------------- statistics
def mean(values: dict[str, float], qids: list[str] | None = None) -> float:
    keys = list(values) if qids is None else [q for q in qids if q in values]
    return float(np.mean([values[q] for q in keys])) if keys else math.nan


def ttest(a: dict[str, float], b: dict[str, float], qids: list[str] | None = None) -> float:
    keys = sorted(set(a) & set(b) if qids is None else set(qids) & set(a) & set(b))
    return paired_ttest([a[q] for q in keys], [b[q] for q in keys])


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979), in the input order; NaN stays NaN and is not counted.

    Sorted ascending, p_(i) becomes max_{j ≤ i} min(1, (m − j + 1)·p_(j)) (1-based), so rejecting where the
    adjusted p < α controls the family-wise error rate at α.
    """
    idx = [i for i, p in enumerate(pvalues) if not _missing(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


class Num(str):
    """A formatted number: the text of a table cell, with its ``value`` (None: missing) and ``marks``."""

    value: float | int | None
    marks: str

    def __new__(cls, text: str, value: float | int | None, marks: str = "") -> Num:
        obj = super().__new__(cls, text)
        obj.value = value
        obj.marks = marks
        return obj


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x: float | None, digits: int = 3) -> Num:
    return Num("–", None) if _missing(x) else Num(f"{x:.{digits}f}", float(x))


def signed(x: float | None, digits: int = 3) -> Num:
    """``x`` with its sign (a difference)."""
    return Num("–", None) if _missing(x) else Num(f"{x:+.{digits}f}", float(x))


def fmt_p(p: float) -> Num:
    if math.isnan(p):
        return Num("n/a", None)
    return Num("<0.001" if p < 0.001 else f"{p:.3f}", float(p))


def marked(num: Num, marks: str) -> Num:
    """``num`` followed by significance markers (kept apart in CSV)."""
    return Num(num + marks, num.value, marks) if marks else num


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def cell_value(cell: str) -> float | int | str | None:
    """What a CSV holds for a table cell: a :class:`Num`'s value, a plain number parsed, "–"/"n/a" empty."""
    if isinstance(cell, Num):
        return cell.value
    text = str(cell).strip()
    if text in ("", "–", "n/a"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


_LATEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
          "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
          "†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$", "§": r"$^{\S}$", "¶": r"$^{\P}$", "♯": r"$^{\sharp}$",
          "♮": r"$^{\natural}$", "*": r"$^{*}$", "Δ": r"$\Delta$", "×": r"$\times$", "–": "--", "<": r"$<$",
          ">": r"$>$", "≥": r"$\geq$", "≤": r"$\leq$", "·": r"$\cdot$"}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in sorted(_LATEX, key=len, reverse=True)))


def latex_escape(text: str) -> str:
    return _LATEX_RE.sub(lambda m: _LATEX[m.group(0)], str(text))


@dataclass
class Table:
    """A report table: written as markdown (in ``report.md``), CSV and, on request, LaTeX."""

    name: str
    header: list[str]
    rows: list[list[str]]

    @property
    def markdown(self) -> str:
        return table(self.header, self.rows)

    def _marked_columns(self) -> list[bool]:
        return [any(isinstance(r[j], Num) and r[j].marks for r in self.rows) for j in range(len(self.header))]

    def csv(self) -> str:
        """Numbers as numbers (full precision); a column with significance markers gets a ``<column> marks``
        column beside it."""
        marked_cols = self._marked_columns()
        header: list[str] = []
        for h, m in zip(self.header, marked_cols, strict=True):
            header += [h, f"{h} marks"] if m else [h]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for row in self.rows:
            out: list[Any] = []
            for cell, m in zip(row, marked_cols, strict=True):
                value = cell_value(cell)
                out.append("" if value is None else value)
                if m:
                    out.append(cell.marks if isinstance(cell, Num) else "")
            writer.writerow(out)
        return buf.getvalue()

    def latex(self) -> str:
        """A booktabs ``tabular`` with the markdown's rounded numbers and markers."""
        align = "l" + "".join("r" if any(isinstance(cell_value(r[j]), (int, float)) for r in self.rows) else "l"
                              for j in range(1, len(self.header)))
        lines = [f"% {self.name}: written by hardneg report (needs \\usepackage{{booktabs}})",
                 f"\\begin{{tabular}}{{{align}}}", "\\toprule",
                 " & ".join(latex_escape(h) for h in self.header) + r" \\", "\\midrule"]
        lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in self.rows]
        lines += ["\\bottomrule", "\\end{tabular}", ""]
        return "\n".join(lines)


def short_path(path: str) -> str:
    """A data path without the machine-specific prefix before the shared data folder."""
    marker = "shared/data/"
    return path[path.index(marker):] if marker in path else path


def machine() -> str:
    import torch  # heavy: only when a report is written

    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
