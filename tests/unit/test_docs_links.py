"""The docs stay true to the tree: links resolve, snippets' imports import, CI runs the README's test command.

``mkdocs build --strict`` (``make docs``) checks the links between pages inside ``docs/``; README.md lies
outside ``docs/`` and is read on GitHub, so its links are checked here, with every page's, as plain relative
paths. The Python snippets' ``hardneg`` imports are imported, so moving a module without updating the docs
fails here rather than in a reader's terminal.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])

#: ``[text](target)`` and ``![alt](target)``, target up to the first space or ``)`` (titles are allowed after)
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
MKDOCSTRINGS = re.compile(r"^::: *([\w.]+)", re.M)


def _prose(text: str) -> str:
    """The page without its fenced code blocks and inline code (a link there is an example, not a link)."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(page: Path) -> list[str]:
    """Every link of ``page`` that names a file by a relative path (no scheme, not a bare ``#anchor``)."""
    links = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
            continue
        links.append(target)
    return links


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    return broken


def snippet_imports(page: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` for every ``from hardneg… import name`` / ``import hardneg…`` in a python block."""
    found: list[tuple[str, str | None]] = []
    for lang, code in FENCE.findall(page.read_text(encoding="utf-8")):
        if lang not in ("python", "py"):
            continue
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "hardneg":
                found.extend((node.module, alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                found.extend((a.name, None) for a in node.names if a.name.split(".")[0] == "hardneg")
    return found


def test_the_pages_exist_and_the_readme_links_into_docs():
    assert (REPO / "README.md") in PAGES and len(PAGES) > 10
    readme_links = relative_links(REPO / "README.md")
    assert any(link.startswith("docs/") for link in readme_links), "README.md should link into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == [], f"{page.relative_to(REPO)}: links to files that do not exist"


def test_a_broken_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# there\n")
    page.write_text("[ok](there.md#top) [gone](missing.md) [web](https://example.org/x.md) [a](#anchor)\n"
                    "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n![img](figures/none.png)\n")
    assert broken_links(page) == ["missing.md", "figures/none.png"]


@pytest.mark.parametrize("page", [p for p in PAGES if snippet_imports(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_snippet_imports_import(page):
    for module, name in snippet_imports(page):
        mod = importlib.import_module(module)
        if name is not None and name != "*":
            assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}") is not None, \
                f"{page.relative_to(REPO)}: `from {module} import {name}` fails"


def test_api_pages_name_modules_that_exist():
    for page in (REPO / "docs" / "api").glob("*.md"):
        for module in MKDOCSTRINGS.findall(page.read_text(encoding="utf-8")):
            assert importlib.util.find_spec(module) is not None, f"{page.relative_to(REPO)}: no module {module}"


def test_ci_runs_exactly_the_readme_test_command():
    blocks = [code for lang, code in FENCE.findall((REPO / "README.md").read_text(encoding="utf-8"))
              if lang in ("bash", "sh", "")]
    commands = [line.split("#", 1)[0].strip() for code in blocks for line in code.splitlines()]
    test_command = next(c for c in commands if re.match(r"make test(\s|$)", c))
    ci = [line.split("#", 1)[0].strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci
    assert "make docs" in ci and ci.index("make lint") < ci.index("make docs") < ci.index(test_command)


def test_rst_docstrings_become_markdown_on_the_api_pages():
    """The griffe extension the API pages load (docs/griffe_rst.py, named in mkdocs.yml) rewrites reST."""
    pytest.importorskip("griffe")  # the [docs] extra (make docs installs it before CI's make test)
    assert "docs/griffe_rst.py" in (REPO / "mkdocs.yml").read_text()
    spec = importlib.util.spec_from_file_location("griffe_rst", REPO / "docs" / "griffe_rst.py")
    griffe_rst = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(griffe_rst)
    text = ("See :func:`~hardneg.x.evaluate`, :mod:`.rules`, :meth:`A.b <hardneg.a.A.b>` and "
            "`bm25s <https://x.org>`_.\nThe pipeline::\n\n    a -> b\n\n"
            "=====  ======\nname   what\n=====  ======\na      one\n       more\nb      two|x\n=====  ======\n")
    assert griffe_rst.rst_to_markdown(text).splitlines() == [
        "See `evaluate`, `rules`, `A.b` and [bm25s](https://x.org).", "The pipeline:", "", "    a -> b", "", "",
        "| name | what |", "|---|---|", "| a | one more |", "| b | two\\|x |"]
