"""What the report reads off an experiment folder's stages: the wall-clock that made a model (every stage of its
chain) and how each training ended (early stop, or the cap, and whether dev was still rising there), on
hand-written stage folders."""

from __future__ import annotations

import json

import pytest

from hardneg.experiment import ExperimentResults
from hardneg.experiment.context import ReportContext
from hardneg.experiment.findings import Findings
from hardneg.experiment.report import stages_line
from hardneg.experiment.sections.training import budget, remine_seconds, timing


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
    # a training whose log holds more time than its stage.json (an attempt killed before the heartbeat): the log's
    log = [{"kind": "train", "step": 1, "seconds": 20.0}, {"kind": "remine", "step": 1, "seconds": 15.0},
           {"kind": "dev", "step": 1, "seconds": 99.0}]  # a dev record's fields are not the training's time
    (tmp_path / "stages" / "train-a" / "train_log.jsonl").write_text("\n".join(json.dumps(x) for x in log) + "\n")
    assert r.stage_seconds("train-a") == 35.0 and r.chain_seconds("a") == 1135.0
    (tmp_path / "stages" / "train-b" / "train_log.jsonl").write_text(json.dumps(log[0]) + "\n")
    assert r.stage_seconds("train-b") == 100.0  # less than stage.json's: stage.json's
    (tmp_path / "stages" / "train-b" / "stage.json").write_text(json.dumps({"status": "running", "deps": []}))
    assert r.chain_seconds("a") is None  # a stage of the chain unfinished: unknown, not a smaller number


@pytest.mark.parametrize(("kind", "settings", "steps", "dev", "says", "gain"), [
    # dev: (step, or epoch for the peer; its dev metric); hardneg's trainer evaluates at step 0 first
    ("train", {"max_steps": 4, "dev_metric": "RR@10"}, 3, [(0, 0.1), (2, 0.3), (3, 0.2)],
     "early stop at step 3 of 4 (kept step 2, by RR@10)", None),
    ("train", {"max_steps": 4, "dev_metric": "RR@10"}, 4, [(0, 0.1), (2, 0.2), (4, 0.35)],
     "cap 4, best at the cap (+0.1500 RR@10)", 0.15),
    ("train", {"max_steps": 4, "dev_metric": "RR@10"}, 4, [(0, 0.1), (2, 0.3), (4, 0.3)],
     "cap 4 (kept step 2, by RR@10)", None),  # a tie keeps the earlier model: not rising
    ("peer-st", {"num_train_epochs": 2, "dev_metric": "nDCG@10"}, 4, [(1, 0.5), (2, 0.4)],
     "cap 2 (kept epoch 1, by nDCG@10)", None),
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


def _star_and_ance(tmp_path, ance_log_extra, ance_test_seconds=60.0):
    """A recipe of STAR and ANCE (re-mining every 2 of 4 steps), both trained, with hand-written logs: STAR at
    10 s/step (one slow outlier step), ANCE at 8 s/step; ANCE's test stage took ``ance_test_seconds``."""
    systems = [{"name": "star", "kind": "train", "method": "star"}, {"name": "ance", "kind": "train", "method": "ance"}]
    (tmp_path / "recipe.json").write_text(json.dumps({"systems": systems, "data": str(tmp_path / "none")}))
    for name, step_s, extra in (("star", [10, 10, 10, 500], []), ("ance", [8, 8, 8, 8], ance_log_extra)):
        folder = tmp_path / "stages" / f"train-{name}"
        folder.mkdir(parents=True)
        (folder / "stage.json").write_text(json.dumps({"status": "done", "deps": [], "seconds": 1000.0, "settings": {
            "max_steps": 4, "batch_size": 4, **({"refresh_every": 2} if name == "ance" else {})}}))
        log = [{"kind": "train", "step": k + 1, "seconds": s} for k, s in enumerate(step_s)] + extra
        (folder / "train_log.jsonl").write_text("\n".join(json.dumps(x) for x in log) + "\n")
    test = tmp_path / "stages" / "test-ance"
    test.mkdir(parents=True)
    (test / "stage.json").write_text(json.dumps({"status": "done", "deps": ["train-ance"],
                                                 "seconds": ance_test_seconds}))
    (test / "per_query.json").write_text(json.dumps({"nDCG@10": {"q1": 0.5}}))
    results = ExperimentResults(tmp_path)
    return ReportContext(results, tmp_path), results


@pytest.mark.parametrize(("extra", "test_s", "remined", "verdict"), [
    # logged: the remine records' seconds; STAR 4 × 10 s (median: its outlier step does not count) vs ANCE 4 × 8 s
    ([{"kind": "remine", "step": 2, "seconds": 5.0, "docs_encoded": 9}], 60.0, (5.0, False), "**disagrees**"),
    ([{"kind": "remine", "step": 2, "seconds": 30.0, "docs_encoded": 9}], 60.0, (30.0, False), "**agrees**"),
    # a log from before remine records: one re-mining (after step 2; none after the last, step 4) × the test stage
    ([], 60.0, (60.0, True), "**agrees**"),
    ([], 1.0, (1.0, True), "**disagrees**"),
])
def test_star_vs_ance_counts_re_mining_at_median_step_times(tmp_path, extra, test_s, remined, verdict):
    ctx, results = _star_and_ance(tmp_path, extra, test_s)
    section = timing(ctx)
    assert section.facts["remining"] == {"ance": remined}
    assert section.facts["steps"] == {"star": 4, "ance": 4}
    row = next(line for line in section.markdown.splitlines() if line.startswith("| ance |"))
    assert f"| {'≈' if remined[1] else ''}{remined[0] / 60:.1f} |" in row
    line = next(x for x in Findings(ctx)._efficiency(section.facts) if "STAR trains faster" in x)
    assert line.endswith(f"→ {verdict}.")
    assert "star's 4 steps take 0.7 min" in line  # 4 × the 10 s median, not the 530 s sum


def test_re_mining_is_only_counted_for_a_method_that_re_mines(tmp_path):
    ctx, results = _star_and_ance(tmp_path, [])
    star_log = results.train_log("star")
    assert remine_seconds(ctx, "star", star_log, 4) is None
    # ANCE stopped early at step 4 of a longer run: it re-mined after step 4 too
    settings = json.loads((tmp_path / "stages" / "train-ance" / "stage.json").read_text())
    settings["settings"]["max_steps"] = 10
    (tmp_path / "stages" / "train-ance" / "stage.json").write_text(json.dumps(settings))
    assert remine_seconds(ctx, "ance", results.train_log("ance"), 4) == (120.0, True)
    # a log resumed across the change: the second re-mining logged, the first not: that one is estimated
    log = results.train_log("ance") + [{"kind": "remine", "step": 4, "seconds": 7.0}]
    assert remine_seconds(ctx, "ance", log, 4) == (67.0, True)


def test_star_vs_ance_is_not_judged_while_re_mining_is_unknown(tmp_path):
    ctx, results = _star_and_ance(tmp_path, [])
    (tmp_path / "stages" / "test-ance" / "stage.json").unlink()  # no record and no test stage to estimate from
    section = timing(ctx)
    assert "ance" not in section.facts["remining"]
    line = next(x for x in Findings(ctx)._efficiency(section.facts) if "STAR trains faster" in x)
    assert "Not judged yet" in line and "agrees" not in line


def test_the_report_says_how_much_of_the_recipe_is_still_to_run(tmp_path):
    states = {f"s{i}": {"status": "done"} for i in range(3)} | {"s3": {"status": "running"}}
    assert stages_line(tmp_path, states) == "stages done: 3 of the 4 started"  # a folder from before plan.json
    (tmp_path / "plan.json").write_text(json.dumps({"stages": [f"s{i}" for i in range(10)] + ["report"]}))
    assert stages_line(tmp_path, states) == ("stages done: 3 of 10 (**a partial report**; not done yet: s3, s4, s5, "
                                             "s6, s7, … (7 in all))")
    # a leftover folder of a stage the recipe no longer has, and the report itself, are not counted
    states |= {"old-stage": {"status": "done"}, "report": {"status": "done"}}
    assert stages_line(tmp_path, states).startswith("stages done: 3 of 10 ")
    states |= {f"s{i}": {"status": "done"} for i in range(10)}
    assert stages_line(tmp_path, states) == "stages done: all 10"


def test_a_report_read_elsewhere_takes_the_data_from_data_dir(tmp_path):
    """Records (or a folder) read on a machine where the data lies elsewhere: --data-dir rewrites the recorded
    data folder in every data path of the recipe, so the test qrels and the unseen-document stratum are read."""
    from hardneg.errors import HardnegError

    data = tmp_path / "here" / "scifact"
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n')
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "b"}\n')
    (data / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    recipe = {"systems": [], "data": "/gone/data/scifact", "transfer": ["/gone/data/nfcorpus:test"],
              "data_dir": "/gone/data", "eval": {"split": "test"}}
    (tmp_path / "stages").mkdir()
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    assert ExperimentResults(tmp_path).unseen() is None  # the data is not where it was
    moved = ExperimentResults(tmp_path, data_dir=str(tmp_path / "here") + "/")
    assert moved.recipe["data"] == f"{tmp_path}/here/scifact"
    assert moved.recipe["transfer"] == [f"{tmp_path}/here/nfcorpus:test"]
    assert moved.unseen() == ["q2"]
    (tmp_path / "recipe.json").write_text(json.dumps({k: v for k, v in recipe.items() if k != "data_dir"}))
    with pytest.raises(HardnegError, match="no data_dir recorded"):
        ExperimentResults(tmp_path, data_dir=str(tmp_path))
