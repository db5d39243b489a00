"""The install contract: every module imports, the installed versions meet pyproject's lower bounds,
Faiss is an extra whose absence is a clear error, and the optional import paths resolve."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import tomllib
import types
import warnings
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


ROUTER = "sentence_transformers.base.modules.router"  # sentence-transformers >= 6
LEGACY = "sentence_transformers.models"  # 5.x (still an alias in 6.x)


@pytest.mark.parametrize("path", ["current", "legacy"])
def test_two_tower_export_finds_router_on_either_import_path(tiny_model_dir, tmp_path, monkeypatch, path):
    """``hardneg export`` of separate towers imports Router from where sentence-transformers >= 6 has it, and
    from 5.x's place when that import fails; either way the folder loads as one Router model. Each case takes
    Router away from the other path, so the export can only succeed through the path under test."""
    from sentence_transformers import SentenceTransformer

    from hardneg.export.st_model import export_sentence_transformers
    from hardneg.model.encoder import DualEncoder

    if path == "current":
        if importlib.util.find_spec(ROUTER) is None:
            pytest.skip("sentence-transformers 5.x: only the legacy import path exists")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            legacy = importlib.import_module(LEGACY)
        without_router = types.ModuleType(LEGACY)  # the legacy module, less Router
        without_router.__dict__.update({k: v for k, v in vars(legacy).items() if k != "Router"})
        monkeypatch.setitem(sys.modules, LEGACY, without_router)
    else:
        monkeypatch.setitem(sys.modules, ROUTER, None)  # importing it fails, as on 5.x
    encoder = DualEncoder.from_pretrained(tiny_model_dir, shared=False)
    out = export_sentence_transformers(encoder, tmp_path / "st")
    monkeypatch.undo()
    model = SentenceTransformer(str(out), device="cpu")
    assert type(model[0]).__name__ == "Router" and len(model) == 1
