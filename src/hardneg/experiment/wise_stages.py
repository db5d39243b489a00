"""The bodies of an experiment's WiSE-FT stages (``interpolate:``): one merged model per weight, ranked on the
dev set the system's training selected on; the pick of the best weight on dev; and the curve of every weight on
test and transfer (the report's figure only). Each function takes the
:class:`~hardneg.experiment.runner.Experiment` and returns the stage's ``run(folder)``."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hardneg.artifacts import corpus_index
from hardneg.data.load import load_dataset
from hardneg.devices import place_index
from hardneg.evaluate.metrics import evaluate
from hardneg.evaluate.results import save_run_and_metrics
from hardneg.experiment.execute import read_state
from hardneg.experiment.recipe import System
from hardneg.experiment.stages import dataset_tag, wise_alpha_stage
from hardneg.model.merge import interpolate
from hardneg.retrieval.dense import retrieve, search
from hardneg.train.config import TrainConfig

__all__ = ["alpha_run", "curve_run", "pick_run"]


def alpha_run(exp: Any, system: System, alpha: float, start: str, cfg: TrainConfig) -> Callable[[Path], dict[str, Any]]:
    """Stage ``wise-<system>-a<alpha>``: ``(1 - alpha) * start + alpha * system`` saved, and its metrics on the
    dev set ``cfg``'s training selected on, searched in an index of the system's kind."""
    def run(folder: Path) -> dict[str, Any]:
        ev = exp.recipe.eval
        merged = interpolate(exp._load(start, system), exp._load(exp.model_path(system), system), alpha)
        merged.save(folder / "model")
        dataset, qrels, queries = exp.dev_set(cfg)
        index = corpus_index(merged, dataset, system.index, exp.cache_dir, show_progress=not exp.quiet)
        place_index(index, exp.device)  # on the experiment's GPU when it runs on one, else nothing
        run_ = search(index, merged, queries, int(ev.k))
        metrics = evaluate(run_, qrels, list(dict.fromkeys([cfg.dev_metric, *ev.measures])))
        return {"alpha": alpha, "dev": metrics, "dev_queries": len(qrels)}

    return run


def pick_run(exp: Any, system: System, alphas: list[float], metric: str) -> Callable[[Path], dict[str, Any]]:
    """Stage ``wise-<system>``: the weight with the best dev ``metric`` (a tie goes to the smaller weight, closer
    to the start model); its model is copied into the stage folder."""
    def run(folder: Path) -> dict[str, Any]:
        curve = {a: read_state(exp.stage_dir(wise_alpha_stage(system.name, a)))["result"]["dev"]
                 for a in alphas}
        best = min(alphas, key=lambda a: (-curve[a][metric], a))
        target = folder / "model"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(exp.stage_dir(wise_alpha_stage(system.name, best)) / "model", target)
        return {"alpha": best, "dev_metric": metric, "dev": curve[best],
                "curve": [{"alpha": a, **curve[a]} for a in alphas]}

    return run


def curve_run(exp: Any, system: System, alphas: list[float]) -> Callable[[Path], dict[str, Any]]:
    """Stage ``wise-<system>-curve``: every weight's model on test (per-query scores kept) and on each transfer
    collection, for the report's figure; no choice is made from it."""
    def run(folder: Path) -> dict[str, Any]:
        ev = exp.recipe.eval
        test = load_dataset(exp.test_spec(), cache_dir=exp.cache_dir)
        transfers = {dataset_tag(spec): load_dataset(spec, cache_dir=exp.cache_dir) for spec in exp.recipe.transfer}
        out: dict[str, Any] = {"test": {}, "transfer": {t: {} for t in transfers}}
        for a in alphas:
            model = exp._load(str(exp.stage_dir(wise_alpha_stage(system.name, a)) / "model"), system)
            for tag, dataset in [("test", test), *transfers.items()]:
                run_ = retrieve(model, dataset, index_kind=system.index if tag == "test" else "flat",
                                k=int(ev.k), cache_dir=exp.cache_dir, show_progress=not exp.quiet,
                                use_gpu=exp.device.type == "cuda")
                if tag == "test":
                    res = save_run_and_metrics(run_, folder / f"a{a:g}", tag=f"{system.name}-a{a:g}",
                                               qrels=dataset.qrels(), measures=ev.measures, per_query=True)
                    out["test"][f"{a:g}"] = res.metrics
                else:
                    out["transfer"][tag][f"{a:g}"] = evaluate(run_, dataset.qrels(), ev.measures)
        return out

    return run
