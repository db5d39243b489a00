"""The bodies of the analysis stages of an experiment (the paper's Table 1 / Fig. 3, Table 3, Fig. 6): each
function takes the :class:`~hardneg.experiment.runner.Experiment` and returns the stage's ``run(folder)``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hardneg.artifacts import corpus_index
from hardneg.data.load import load_dataset
from hardneg.evaluate.analysis import model_pairwise_errors, tsne_points
from hardneg.evaluate.metrics import evaluate
from hardneg.io import write_json
from hardneg.retrieval.dense import search

__all__ = ["pairwise_stage", "pq_stage", "tsne_stage"]


def pairwise_stage(exp: Any, systems: list[str], topk: int) -> Callable[[Path], dict[str, Any]]:
    """Stage ``analysis-pairwise`` (Table 1 / Fig. 3): each system's pairwise ranking errors, in total and in its
    top-``topk``."""
    def run(folder: Path) -> dict[str, Any]:
        dataset = load_dataset(exp.test_spec(), cache_dir=exp.cache_dir)
        qrels = dataset.qrels()
        result: dict[str, Any] = {}
        for name in systems:
            # chunked over the cached corpus embeddings (a memmap): no queries × corpus matrix
            errors = model_pairwise_errors(exp._encoder(exp.recipe.system(name)), dataset, exp.cache_dir,
                                           topk, qrels=qrels, show_progress=not exp.quiet)
            write_json(folder / f"{name}.json", errors)
            result[name] = {"total": errors["mean_total"], f"top{topk}": errors["mean_topk"]}
        return result

    return run

def pq_stage(exp: Any, systems: list[str], indexes: list[str]) -> Callable[[Path], dict[str, Any]]:
    """Stage ``analysis-pq`` (Table 3): each system's test metrics on each index kind, and the index sizes."""
    def run(folder: Path) -> dict[str, Any]:
        ev = exp.recipe.eval
        dataset = load_dataset(exp.test_spec(), cache_dir=exp.cache_dir)
        grid: dict[str, Any] = {}
        sizes: dict[str, int] = {}
        dims: dict[str, int] = {}  # per model: the report's bytes per document (flat = 4·dim)
        for name in systems:
            encoder = exp._encoder(exp.recipe.system(name))
            dims[name] = int(encoder.dim)
            for kind in indexes:
                index = corpus_index(encoder, dataset, kind, exp.cache_dir, show_progress=not exp.quiet)
                run_ = search(index, encoder, dataset.queries(), int(ev.k))
                grid.setdefault(name, {})[kind] = evaluate(run_, dataset.qrels(), ev.measures)
                sizes[kind] = int(index.manifest.get("bytes", 0)) if hasattr(index, "manifest") else 0
        result = {"metrics": grid, "bytes": sizes, "dims": dims, "docs": dataset.doc_count()}
        write_json(folder / "grid.json", result)
        return result

    return run

def tsne_stage(exp: Any, settings: dict[str, Any]) -> Callable[[Path], dict[str, Any]]:
    """Stage ``analysis-tsne`` (Fig. 6): a query's top documents before and after training, in 2-d."""
    def run(folder: Path) -> dict[str, Any]:
        dataset = load_dataset(exp.test_spec(), cache_dir=exp.cache_dir)
        before = exp._encoder(exp.recipe.system(settings["before"]))
        after = exp._encoder(exp.recipe.system(settings["after"]))
        points = tsne_points(before, after, dataset, exp.cache_dir, top=settings["top"], qid=settings["query"],
                             seed=settings["seed"])
        write_json(folder / "points.json", points)
        return {"query": points["query_id"]}

    return run
