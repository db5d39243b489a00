"""The bodies of the analysis stages of an experiment (the paper's Table 1 / Fig. 3, Table 3, Fig. 6): each
function takes the :class:`~hardneg.experiment.runner.Experiment` and returns the stage's ``run(folder)``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hardneg.artifacts import corpus_index
from hardneg.data.load import load_dataset
from hardneg.evaluate.analysis import model_pairwise_errors, tsne_points
from hardneg.evaluate.metrics import evaluate, evaluate_per_query
from hardneg.experiment.stages import pairwise_system, pq_per_query_file, pq_system
from hardneg.io import read_json, write_json
from hardneg.retrieval.dense import search

__all__ = ["pairwise_stage", "pairwise_system_stage", "pq_stage", "pq_system_stage", "tsne_stage"]


def pairwise_system_stage(exp: Any, name: str, topk: int) -> Callable[[Path], dict[str, Any]]:
    """Stage ``pairwise-<system>``: one system's pairwise ranking errors (Table 1 / Fig. 3), in total and in its
    top-``topk``, computed while its model is at hand (right after its training, like its test), so that
    :func:`pairwise_stage` reads numbers only: a grid split over jobs (``--records``) never needs every model at
    once."""
    def run(folder: Path) -> dict[str, Any]:
        dataset = load_dataset(exp.test_spec(), cache_dir=exp.cache_dir)
        # chunked over the cached corpus embeddings (a memmap): no queries × corpus matrix
        errors = model_pairwise_errors(exp._encoder(exp.recipe.system(name)), dataset, exp.cache_dir, topk,
                                       qrels=dataset.qrels(), show_progress=not exp.quiet)
        write_json(folder / f"{name}.json", errors)
        return {"total": errors["mean_total"], f"top{topk}": errors["mean_topk"]}

    return run


def pairwise_stage(exp: Any, systems: list[str], topk: int) -> Callable[[Path], dict[str, Any]]:
    """Stage ``analysis-pairwise`` (Table 1 / Fig. 3): every analysed system's ``pairwise-<system>`` numbers,
    gathered (each system's errors copied beside the table, for Fig. 3)."""
    def run(folder: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for name in systems:
            part = exp.stage_dir(pairwise_system(name))
            write_json(folder / f"{name}.json", read_json(part / f"{name}.json"))
            result[name] = read_json(part / "stage.json")["result"]
        return result

    return run


def pq_system_stage(exp: Any, name: str, indexes: list[str]) -> Callable[[Path], dict[str, Any]]:
    """Stage ``pq-<system>``: one system's test metrics on each index kind (Table 3), its per-query scores on
    each (:func:`~hardneg.experiment.stages.pq_per_query_file`), and the index sizes, while its model is at hand
    (see :func:`pairwise_system_stage`)."""
    def run(folder: Path) -> dict[str, Any]:
        ev = exp.recipe.eval
        dataset = load_dataset(exp.test_spec(), cache_dir=exp.cache_dir)
        encoder = exp._encoder(exp.recipe.system(name))
        metrics: dict[str, Any] = {}
        sizes: dict[str, int] = {}
        for kind in indexes:
            index = corpus_index(encoder, dataset, kind, exp.cache_dir, show_progress=not exp.quiet)
            run_ = search(index, encoder, dataset.queries(), int(ev.k))
            metrics[kind] = evaluate(run_, dataset.qrels(), ev.measures)
            # per-query scores, so that the report's finding on compressed indexes is a paired test
            write_json(folder / pq_per_query_file(kind), evaluate_per_query(run_, dataset.qrels(), ev.measures))
            sizes[kind] = int(index.manifest.get("bytes", 0)) if hasattr(index, "manifest") else 0
        return {"metrics": metrics, "bytes": sizes, "dim": int(encoder.dim), "docs": dataset.doc_count()}

    return run


def pq_stage(exp: Any, systems: list[str], indexes: list[str]) -> Callable[[Path], dict[str, Any]]:
    """Stage ``analysis-pq`` (Table 3): every analysed system's ``pq-<system>`` numbers, gathered: each system's
    test metrics on each index kind, the index sizes, each model's dimension (the report's bytes per document:
    flat = 4·dim)."""
    def run(folder: Path) -> dict[str, Any]:
        grid: dict[str, Any] = {}
        sizes: dict[str, int] = {}
        dims: dict[str, int] = {}
        docs = 0
        for name in systems:
            part = read_json(exp.stage_dir(pq_system(name)) / "stage.json")["result"]
            grid[name], dims[name], docs = part["metrics"], part["dim"], part["docs"]
            sizes.update({k: v for k, v in part["bytes"].items() if v})
        result = {"metrics": grid, "bytes": {k: sizes.get(k, 0) for k in indexes}, "dims": dims, "docs": docs}
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
