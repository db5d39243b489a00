"""The install contract: every module imports, the installed versions meet pyproject's lower bounds,
Faiss is an extra whose absence is a clear error, and the optional import paths resolve."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version

import pytest
from packaging.requirements import Requirement

import hardneg
from conftest import REPO
from hardneg.errors import HardnegError


def _requirements(group: str | None = None) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return [Requirement(s) for s in specs]


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(hardneg.__path__, "hardneg.") if m.name != "hardneg.__main__"]
    assert len(names) > 40
    for name in names:
        importlib.import_module(name)


@pytest.mark.parametrize("group", [None, "cpu", "dev"])
def test_installed_versions_meet_the_declared_lower_bounds(group):
    for req in _requirements(group):
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{req.name} is declared ({req}) but not installed")
        assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} does not meet {req}"


def test_faiss_is_an_extra_not_a_hard_dependency():
    names = {r.name for r in _requirements()}
    assert not {n for n in names if n.startswith("faiss")}
    assert {r.name for r in _requirements("cpu")} == {"faiss-cpu"}
    assert {r.name for r in _requirements("gpu")} == {"faiss-gpu-cu12"}


def test_missing_faiss_is_a_clear_error(monkeypatch):
    from hardneg.devices import faiss_gpus
    from hardneg.index.faiss_index import FaissIndex, import_faiss

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(HardnegError, match=r"hardneg\[cpu\].*hardneg\[gpu\]"):
        import_faiss()
    with pytest.raises(HardnegError, match="Faiss is not installed"):
        faiss_gpus()
    import numpy as np

    with pytest.raises(HardnegError, match="Faiss is not installed"):
        FaissIndex.build(np.zeros((4, 8), dtype=np.float32), [str(i) for i in range(4)], kind="flat")


def test_both_router_import_paths_of_the_export_resolve():
    """Two-tower export needs Router: sentence-transformers >= 6 (base.modules.router) or 5.x (.models)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers.models import Router as legacy
    try:
        from sentence_transformers.base.modules.router import Router as current
    except ImportError:  # 5.x: only the legacy path exists
        current = legacy
    assert current is legacy and hasattr(current, "for_query_document")
