"""What the report reads off an experiment folder's stages: the wall-clock that made a model (every stage of its
chain) and how each training ended (early stop, or the cap, and whether dev was still rising there), on
hand-written stage folders."""

from __future__ import annotations

import json

import pytest

from hardneg.experiment import ExperimentResults
from hardneg.experiment.context import ReportContext
from hardneg.experiment.sections.training import budget


def test_chain_seconds_add_every_stage_that_made_the_model(tmp_path):
    (tmp_path / "recipe.json").write_text(json.dumps({"systems": [], "data": str(tmp_path)}))
    chain = {"test-a": (["train-a"], 1.0), "train-a": (["train-b", "index-x"], 10.0), "train-b": ([], 100.0),
             "index-x": ([], 1000.0), "test-b": (["train-b"], 7.0)}
    for name, (deps, seconds) in chain.items():
        (tmp_path / "stages" / name).mkdir(parents=True)
        (tmp_path / "stages" / name / "stage.json").write_text(json.dumps(
            {"name": name, "status": "done", "deps": deps, "seconds": seconds}))
    r = ExperimentResults(tmp_path)
    assert r.chain_seconds("a") == 1110.0 and r.chain_seconds("b") == 100.0  # tests are not training
    (tmp_path / "stages" / "train-b" / "stage.json").write_text(json.dumps({"status": "running", "deps": []}))
    assert r.chain_seconds("a") is None  # a stage of the chain unfinished: unknown, not a smaller number


@pytest.mark.parametrize(("kind", "settings", "steps", "dev", "says", "gain"), [
    # dev: (step, or epoch for the peer; its dev metric); hardneg's trainer evaluates at step 0 first
    ("train", {"max_steps": 4, "dev_metric": "RR@10"}, 3, [(0, 0.1), (2, 0.3), (3, 0.2)],
     "early stop at step 3 of 4 (best 2)", None),
    ("train", {"max_steps": 4, "dev_metric": "RR@10"}, 4, [(0, 0.1), (2, 0.2), (4, 0.35)],
     "cap 4, best at the cap (+0.1500 RR@10)", 0.15),
    ("train", {"max_steps": 4, "dev_metric": "RR@10"}, 4, [(0, 0.1), (2, 0.3), (4, 0.3)],
     "cap 4 (best step 2)", None),  # a tie keeps the earlier model: not rising
    ("peer-st", {"num_train_epochs": 2, "dev_metric": "nDCG@10"}, 4, [(1, 0.5), (2, 0.4)],
     "cap 2 (best epoch 1)", None),
])
def test_budget_says_how_training_ended_by_the_systems_own_dev_metric(tmp_path, kind, settings, steps, dev, says,
                                                                       gain):
    system = {"name": "s", "kind": kind, **({"method": "star"} if kind == "train" else {})}
    (tmp_path / "recipe.json").write_text(json.dumps({"systems": [system], "data": str(tmp_path / "none")}))
    folder = tmp_path / "stages" / "train-s"
    folder.mkdir(parents=True)
    (folder / "stage.json").write_text(json.dumps({"status": "done", "deps": [], "seconds": 1.0,
                                                   "settings": settings}))
    metric = settings["dev_metric"]
    other = "nDCG@10" if metric == "RR@10" else "RR@10"  # the other metric disagrees: it must not be read
    log = [{"kind": "train", "step": k, "loss": 1.0} for k in range(1, steps + 1)]
    for at, value in dev:
        where = {"epoch": at, "step": 2 * at} if kind == "peer-st" else {"step": at}
        log.append({"kind": "dev", **where, metric: value, other: 1.0 - value})
    (folder / "train_log.jsonl").write_text("\n".join(json.dumps(x) for x in log) + "\n")
    results = ExperimentResults(tmp_path)
    ended, rising = budget(ReportContext(results, tmp_path), "s", results.train_log("s"))
    assert ended == says
    assert rising == pytest.approx(gain) if gain is not None else rising is None
