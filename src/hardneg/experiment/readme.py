"""Results tables of a markdown page (the README) rendered from an experiment's ``results.json``.

A page marks each such table with the file it comes from::

    <!-- results-table:docs/results/scifact/results.json -->
    | system | steps | nDCG@10 | ... |
    ...
    <!-- /results-table -->

:func:`render_table` renders a ``results.json`` (written by :mod:`hardneg.experiment.report`) into that table:
one row per system, its training steps, the test measures (the main one first), the main measure on the seen- and
unseen-document strata and on each transfer set; a system with ``seeds`` as mean ± sample sd over its seeds, with
a seeds column; the best value of each column in bold; † where the report's paired t-test (``vs_start``) has a
trained system significantly above the zero-shot start model. :func:`refresh` rewrites every marked block of a page from
its file (``hardneg report --readme README.md``), and tells which were stale (``--check``, and the test that keeps
the README honest).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hardneg.errors import HardnegError
from hardneg.experiment.stats import ALPHA
from hardneg.experiment.tables import fmt_pm, table
from hardneg.io import atomic_write

#: a marked block: the results.json path (relative to the page's folder, or the root given to refresh) and the table
BLOCK = re.compile(r"(?P<open><!-- results-table:(?P<path>\S+?) -->\n)(?P<body>.*?)(?P<close><!-- /results-table -->)",
                   re.S)
#: the command that rewrites the README's blocks (named in the messages of a stale one)
COMMAND = "hardneg report --readme README.md"
#: results.json entry keys that are numbers but not test measures (the training's steps, wall-clock and CPU time)
NOT_MEASURES = ("steps", "train_seconds", "train_cpu_seconds")


def _main_measure(entries: list[dict[str, Any]]) -> str | None:
    """The measure the report's strata and transfer columns use: the ``<measure>`` of ``<measure>_unseen``, else
    nDCG@10 (the report's default main measure) or the last measure."""
    for entry in entries:
        for key in entry:
            if key.endswith("_unseen"):
                return key[: -len("_unseen")]
    measures = _measures(entries, None)
    return "nDCG@10" if "nDCG@10" in measures else (measures[-1] if measures else None)


def _measures(entries: list[dict[str, Any]], main: str | None) -> list[str]:
    """The test measures of the entries (the main one first), in results.json order."""
    nested = {k for e in entries for k, v in e.items() if isinstance(v, dict | list)}  # dev, transfer, seeds
    keys = [k for e in entries for k, v in e.items() if isinstance(v, int | float) and not isinstance(v, bool)
            and k not in nested and k not in NOT_MEASURES and not k.endswith(("_seen", "_unseen"))]
    keys = list(dict.fromkeys(keys))
    return ([main] if main in keys else []) + [k for k in keys if k != main]


def _value(entry: dict[str, Any], key: str, tag: str | None = None) -> tuple[float | None, float | None]:
    """``(mean, sd)`` of ``entry``'s ``key`` (a transfer set's with ``tag``); sd only for a seeded system."""
    value = (entry.get("transfer") or {}).get(tag) if tag else entry.get(key)
    sd_of = ((entry.get("seeds") or {}).get("sd") or {})
    sd = (sd_of.get("transfer") or {}).get(tag) if tag else sd_of.get(key)
    return value, sd


def render_table(results: dict[str, Any]) -> str:
    """The markdown table of a ``results.json`` (its ``systems``): system, steps, the test measures, the main
    measure on seen-/unseen-document queries and on each transfer set; seeded systems as mean ± sd."""
    systems: dict[str, dict[str, Any]] = results.get("systems") or {}
    if not systems:
        raise HardnegError("results.json has no systems (write it with `hardneg report RUN_DIR`)")
    entries = list(systems.values())
    main = _main_measure(entries)
    untested = [name for name, e in systems.items() if e.get(main) is None]  # a run in progress: not rows yet
    systems = {name: e for name, e in systems.items() if e.get(main) is not None}
    if not systems:
        raise HardnegError("results.json: no system has a test result yet (run the experiment's test stages)")
    entries = list(systems.values())
    columns: list[tuple[str, str, str | None]] = [(m, m, None) for m in _measures(entries, main)]
    if any(f"{main}_seen" in e for e in entries):
        columns += [(f"{main} seen-doc", f"{main}_seen", None), (f"{main} unseen-doc", f"{main}_unseen", None)]
    tags = list(dict.fromkeys(t for e in entries for t in (e.get("transfer") or {})))
    columns += [(f"{main} {t}", "transfer", t) for t in tags]
    seeded = any(e.get("seeds") for e in entries)
    values = {name: [_value(e, key, tag) for _, key, tag in columns] for name, e in systems.items()}
    best = [max((round(v[j][0], 3) for v in values.values() if v[j][0] is not None), default=None)
            for j in range(len(columns))]
    header = ["system", "steps", *(h for h, _, _ in columns), *(["seeds"] if seeded else [])]
    rows, starts = [], set()
    for name, entry in systems.items():
        cells = [name, str(entry["steps"]) if entry.get("steps") is not None else "–"]
        above = _above_start(entry, systems)
        starts |= {entry["vs_start"]["system"]} if above else set()
        for j, (x, sd) in enumerate(values[name]):
            text = str(fmt_pm(x, sd))  # the report's Table 2 cell: mean ± sd, or the value
            text = f"**{text}**" if x is not None and len(systems) > 1 and round(x, 3) == best[j] else text
            cells.append(text + ("†" if columns[j][1] in above and columns[j][2] is None else ""))
        rows.append(cells + ([str((entry.get("seeds") or {}).get("n", 1))] if seeded else []))
    notes = ["Bold: the best of a column"]
    if starts:
        notes.append(f"†: above {', '.join(sorted(starts))} (paired t-test, p < 0.05; on the seen-/unseen-doc "
                     "strata after Holm correction over the report's generalisation table)")
    if seeded:
        notes.append("mean ± sample standard deviation over the seeds; a seeded system's tests use its "
                     "seed-averaged run")
    if untested:
        more = f", … ({len(untested)} in all)" if len(untested) > 8 else ""
        notes.append(f"Not tested yet (a run in progress): {', '.join(untested[:8])}{more}")
    return table(header, rows) + f"\n\n{'. '.join(notes)}. Written by `{COMMAND}`.\n"


def _above_start(entry: dict[str, Any], systems: dict[str, dict[str, Any]]) -> set[str]:
    """The keys of ``entry`` (a trained system) significantly above the start model's (its ``vs_start``)."""
    vs = entry.get("vs_start") or {}
    start = systems.get(vs.get("system") or "", {})
    return {key for key, p in (vs.get("p") or {}).items() if p is not None and p < ALPHA
            and entry.get(key) is not None and start.get(key) is not None and entry[key] > start[key]}


def refresh(page: str | Path, root: str | Path | None = None) -> tuple[str, list[str]]:
    """The text of markdown ``page`` with every results-table block rendered from the results.json it names
    (relative to ``root``, default the page's folder), and the paths of the blocks that were stale."""
    page = Path(page)
    root = Path(root) if root is not None else page.parent
    try:
        text = page.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HardnegError(f"{page}: not found") from None
    stale: list[str] = []

    def render(match: re.Match[str]) -> str:
        path = root / match["path"]
        line = text.count("\n", 0, match.start()) + 1
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HardnegError(f"{page}:{line}: results-table names {match['path']}, which is not there "
                               f"(relative to {root})") from None
        except json.JSONDecodeError as exc:
            raise HardnegError(f"{path}: not valid JSON ({exc}); rewrite it with `hardneg report RUN_DIR`") from None
        body = render_table(results)
        if body != match["body"]:
            stale.append(match["path"])
        return match["open"] + body + match["close"]

    return BLOCK.sub(render, text), stale


def update(page: str | Path, *, check: bool = False, root: str | Path | None = None) -> list[str]:
    """Rewrite the results-table blocks of ``page`` (with ``check``: only say which are stale, as an error);
    returns the paths of the blocks that changed."""
    new, stale = refresh(page, root)
    if check and stale:
        raise HardnegError(f"{page}: the results table of {', '.join(stale)} does not match the file; "
                           f"run `{COMMAND}` (from the folder of {Path(page).name}) and commit the result")
    if stale:
        with atomic_write(Path(page)) as fh:
            fh.write(new)
    return stale
