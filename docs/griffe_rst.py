"""A griffe extension for the API pages: hardneg's docstrings are reST, mkdocstrings renders Markdown.

The docstrings use Sphinx cross-reference roles (``:func:`~hardneg.x.y```), simple tables (rows between
``====  ====`` borders), ``::`` before a literal block and reST links (```text <url>`_``). Rendered as
Markdown those show as raw markup, so this extension rewrites them when griffe loads a docstring (the
source is not touched):

* a role becomes inline code of its target (``~`` keeps the last component, a leading ``.`` is dropped,
  ``text <target>`` shows the text);
* a simple table becomes a Markdown table (continuation lines joined to their row);
* a trailing ``::`` becomes ``:`` (the indented block after it is already a Markdown code block);
* a reST link becomes a Markdown link.

``mkdocs.yml`` loads it by path (``extensions: [docs/griffe_rst.py]``); ``tests/unit/test_docs_links.py``
checks :func:`rst_to_markdown`.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const|type):`([^`]+)`")
REST_LINK = re.compile(r"`([^`<>]+?)\s*<(https?://[^>]+)>`__?")
BORDER = re.compile(r"^\s*=+(?:\s+=+)+\s*$")


def _role(match: re.Match[str]) -> str:
    target = match.group(1).strip()
    labelled = re.fullmatch(r"(.+?)\s*<([^>]+)>", target)
    if labelled:
        return f"`{labelled.group(1)}`"
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target.lstrip('.')}`"


def _table(block: list[str]) -> list[str]:
    """One reST simple table (its border lines included) as a Markdown table."""
    spans = [m.start() for m in re.finditer(r"=+", block[0])]

    def cells(line: str) -> list[str]:
        bounds = [*spans[1:], max(len(line), spans[-1])]
        return [line[a:b].strip().replace("|", "\\|") for a, b in zip(spans, bounds, strict=True)]

    borders = [j for j, line in enumerate(block) if BORDER.match(line)]
    header: list[list[str]] = []
    rows: list[list[str]] = []
    for j, line in enumerate(block):
        if BORDER.match(line):
            if len(borders) >= 3 and j == borders[1]:
                header, rows = rows, []
            continue
        row = cells(line)
        if rows and not row[0]:  # a continuation line: its text joins the row above
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], row, strict=True)]
        elif any(row):
            rows.append(row)
    head = [" ".join(col).strip() for col in zip(*header, strict=True)] if header else [""] * len(spans)
    return ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(spans),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def _tables(lines: list[str]) -> list[str]:
    """Every reST simple table (border, [header, border,] rows, border) rewritten as a Markdown table."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        end = i + 1  # the closing border: one followed by a blank line or the end of the docstring
        while BORDER.match(lines[i]) and end < len(lines) and not (
                BORDER.match(lines[end]) and (end + 1 == len(lines) or not lines[end + 1].strip())):
            end += 1
        if not BORDER.match(lines[i]) or end >= len(lines):  # not a table (or no closing border)
            out.append(lines[i])
            i += 1
            continue
        out += _table(lines[i:end + 1])
        i = end + 1
    return out


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with its reST roles, simple tables, ``::`` and links written as Markdown."""
    lines = _tables(text.splitlines())
    fenced = False
    result = []
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            line = REST_LINK.sub(r"[\1](\2)", ROLE.sub(_role, line))
            if line.rstrip().endswith("::"):
                line = line.rstrip()[:-2].rstrip() + ":"
        result.append(line)
    return "\n".join(result)


class RestToMarkdown(griffe.Extension):
    """Rewrites every loaded docstring with :func:`rst_to_markdown`."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
