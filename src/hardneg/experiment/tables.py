"""Report tables: formatted numbers that keep their values, and tables written as markdown, CSV and LaTeX.

Table cells are strings (the markdown); a number formatted by :func:`fmt`,
:func:`fmt_p`, :func:`signed` or :func:`marked` is a :class:`Num`, which also keeps
the value and the significance markers, so :class:`Table` writes CSV with numbers
as numbers and LaTeX.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from typing import Any


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


def fmt_pm(x: float | None, sd: float | None, digits: int = 3) -> Num:
    """A seeded system's mean ``x`` ± the sample standard deviation ``sd`` over its seeds (just ``x`` without
    one); the value is the mean."""
    if _missing(x) or _missing(sd):
        return fmt(x, digits)
    return Num(f"{x:.{digits}f} ± {sd:.{digits}f}", float(x))


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
          ">": r"$>$", "≥": r"$\geq$", "±": r"$\pm$", "≤": r"$\leq$", "·": r"$\cdot$"}
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
