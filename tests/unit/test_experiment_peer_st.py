"""The ``peer-st`` system kind: sentence-transformers' recipe run as a stage of an experiment
(:mod:`hardneg.experiment.peer_st`), on the tiny data and a tiny sentence-transformers model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats

from conftest import _tiny_bert, st_layout, write_tiny_train
from hardneg.data.load import load_dataset
from hardneg.errors import HardnegError
from hardneg.evaluate.metrics import evaluate, evaluate_per_query
from hardneg.experiment import Experiment, ExperimentResults, Recipe, stages
from hardneg.experiment.context import ReportContext
from hardneg.experiment.peer_st import PeerSettings, dev_pool, peer_data
from hardneg.experiment.sections.peer import Column, PeerRow, against_peer
from hardneg.experiment.stats import holm
from hardneg.model.encoder import DualEncoder
from hardneg.retrieval.dense import retrieve
from hardneg.retrieval.runs import read_run
from hardneg.train.dev import dev_pool_rows
from hardneg.train.trainer import Trainer

TRAIN = {"max_steps": 1, "batch_size": 4, "topk": 8, "dev_fraction": 0.25, "dev_every": 1, "save_every": 1,
         "dev_pool": 0, "query_max_length": 16, "doc_max_length": 32, "warmup_ratio": 0.0, "lr": 1e-3}
PEER = {"name": "st", "kind": "peer-st", "num_train_epochs": 3, "per_device_train_batch_size": 4,
        "max_seq_length": 32, "learning_rate": 5e-3, "warmup_ratio": 0.0, "relative_margin": 0.0, "num_negatives": 3}


def tiny_data(folder: Path) -> Path:
    data = write_tiny_train(folder, filler=60)
    test = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}-0\t1" for i in range(6)]
    test += [f"q{i}\td{i}-2\t1" for i in range(6, 12)]
    (data / "qrels" / "test.tsv").write_text("\n".join(test) + "\n")
    return data


def tiny_st(folder: Path) -> Path:
    """A tiny sentence-transformers folder (mean pooling + Normalize) whose texts get distinct vectors, so mining
    finds negatives below the positives."""
    return st_layout(_tiny_bert(folder, seed=3, init_range=0.5), max_seq_length=32)


def recipe_dict(root: Path, **peer) -> dict:
    return {"name": "peer", "data": str(root / "data"), "model": str(root / "model"), "cache_dir": str(root / "cache"),
            "train": dict(TRAIN), "eval": {"max_length": 32, "query_max_length": 16, "k": 50},
            "transfer": [f"{root / 'transfer'}:test"],
            "systems": [{"name": "zeroshot", "kind": "zeroshot"}, {**PEER, **peer},
                        {"name": "rand", "method": "rand"}]}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("peer")
    tiny_data(root / "data")
    transfer = write_tiny_train(root / "transfer", filler=10)
    (transfer / "qrels" / "test.tsv").write_text("q0\td0-0\t1\nq1\td1-0\t1\nq2\td2-1\t1\nq3\td3-2\t1\n")
    tiny_st(root / "model")
    return root


@pytest.fixture(scope="module")
def finished(root):
    """The recipe run to its report (hardneg's ``rand`` system too: one step)."""
    exp = Experiment(Recipe.from_dict(recipe_dict(root)), root / "out", quiet=True)
    outcome = exp.run()
    return exp, outcome


def test_peer_runs_to_the_report_and_its_test_is_hardneg_retrieval_of_its_model(finished, root):
    exp, outcome = finished
    assert outcome[stages.train_stage("st")] == outcome[stages.test_stage("st")] == "done"
    assert exp.model_path(exp.recipe.system("st")) == str(exp.stage_dir("train-st") / "model")
    model = DualEncoder.from_pretrained(exp.stage_dir("train-st") / "model", doc_max_length=32, query_max_length=16)
    test = load_dataset(exp.recipe.data + ":test", cache_dir=root / "cache")
    direct = evaluate(retrieve(model, test, k=50, cache_dir=root / "direct-cache", show_progress=False), test.qrels(),
                      ["RR@10", "R@100", "nDCG@10"])
    staged = json.loads((exp.stage_dir("test-st") / "metrics.json").read_text())
    assert staged == pytest.approx(direct, abs=1e-12)
    zeroshot = json.loads((exp.stage_dir("test-zeroshot") / "metrics.json").read_text())
    assert staged != zeroshot  # the peer's model is not the start model
    report = (exp.out / "report.md").read_text()
    assert "sentence-transformers (MNRL)" in report
    results = json.loads((exp.out / "results.json").read_text())["systems"]["st"]
    summary = json.loads((exp.stage_dir("train-st") / "summary.json").read_text())
    assert results["steps"] == summary["epochs"] == 3 and results["kind"] == "sentence-transformers (MNRL)"
    assert results["dev"]["RR@10"] == summary["best_dev"]


def _pq(exp: Experiment, stage: str) -> dict:
    return json.loads((exp.stage_dir(stage) / "per_query.json").read_text())["nDCG@10"]


def test_each_hardneg_system_is_set_against_the_peer_per_column(finished, root):
    exp, _ = finished
    rows = {r.system: r for r in against_peer(ReportContext(ExperimentResults(exp.out), exp.out))}
    assert set(rows) == {"rand"}  # hardneg's trained systems only: not the start model, not the peer itself
    row = rows["rand"]
    unseen = [f"q{i}" for i in range(6, 12)]  # their relevant documents are no training query's
    mine, ref = _pq(exp, "test-rand"), _pq(exp, "test-st")
    t_mine, t_ref = _pq(exp, "transfer-rand-transfer-test"), _pq(exp, "transfer-st-transfer-test")
    # the transfer stage's per-query file is its run scored against the transfer qrels
    qrels = load_dataset(f"{root / 'transfer'}:test").qrels()
    run = read_run(exp.stage_dir("transfer-rand-transfer-test") / "run.trec")
    assert evaluate_per_query(run, qrels, ["nDCG@10"])["nDCG@10"] == pytest.approx(t_mine)
    expected = {"all": (mine, ref, sorted(mine)), "unseen-doc": (mine, ref, unseen),
                "transfer-test": (t_mine, t_ref, sorted(t_mine))}
    assert [c.label for c in row.columns] == list(expected)
    raw = []
    for c in row.columns:
        a, b, qids = expected[c.label]
        assert c.delta == pytest.approx(np.mean([a[q] for q in qids]) - np.mean([b[q] for q in qids]))
        p = stats.ttest_rel([a[q] for q in qids], [b[q] for q in qids]).pvalue
        assert c.p == pytest.approx(p, nan_ok=True)
        raw.append(c.p)
    assert [c.p_holm for c in row.columns] == pytest.approx(holm(raw), nan_ok=True)  # the family: the table's
    seconds = {n: json.loads((exp.stage_dir(f"train-{n}") / "stage.json").read_text())["seconds"]
               for n in ("rand", "st")}
    assert (row.seconds, row.peer_seconds) == pytest.approx((seconds["rand"], seconds["st"]))
    # results.json and the report carry the same row
    vs = json.loads((exp.out / "results.json").read_text())["systems"]["rand"]["vs_peer"][0]
    assert vs["system"] == "st" and vs["verdict"] == row.verdict()
    assert vs["columns"]["all"]["delta"] == pytest.approx(row.columns[0].delta)
    report = (exp.out / "report.md").read_text()
    assert "## Against sentence-transformers' recipe" in report
    assert any(line.startswith("| rand | st |") and line.rstrip(" |").endswith(row.verdict())
               for line in report.splitlines())


def test_a_transfer_stage_without_its_per_query_file_is_scored_from_its_run(finished, tmp_path):
    exp, _ = finished
    copy = tmp_path / "out"
    shutil.copytree(exp.out, copy, ignore=shutil.ignore_patterns("checkpoints", "model"))
    before = [(c.label, c.delta, c.p) for c in against_peer(ReportContext(ExperimentResults(copy), copy))[0].columns]
    for stage in ("transfer-rand-transfer-test", "transfer-st-transfer-test"):
        (copy / "stages" / stage / "per_query.json").unlink()
    after = [(c.label, c.delta, c.p) for c in against_peer(ReportContext(ExperimentResults(copy), copy))[0].columns]
    assert [a[0] for a in after] == [b[0] for b in before] == ["all", "unseen-doc", "transfer-test"]
    assert [x for a in after for x in a[1:]] == pytest.approx([x for b in before for x in b[1:]], nan_ok=True)


@pytest.mark.parametrize(("verdicts", "ratio", "beats", "says"), [
    (["better", "better", "better"], 0.5, True, "beats it on every column at no more wall-clock"),
    (["better", "better", "better"], 1.5, False, "better on all, unseen-doc, med; more wall-clock"),
    (["better", "worse", "tie"], 0.5, False, "better on all; worse on unseen-doc"),
    (["tie", "tie", "tie"], 1.0, False, "no significant difference"),
])
def test_peer_verdict_names_every_column_it_loses(verdicts, ratio, beats, says):
    sign = {"better": (0.1, 0.001), "worse": (-0.1, 0.001), "tie": (0.1, 0.5)}
    labels = ["all", "unseen-doc", "med"]
    cols = [Column(label, *sign[v], p_holm=sign[v][1]) for label, v in zip(labels, verdicts, strict=True)]
    row = PeerRow("adore", "st", cols, seconds=100.0 * ratio, peer_seconds=100.0)
    assert [c.verdict for c in cols] == verdicts
    assert row.beats is beats and row.verdict() == says


def test_wall_clock_is_compared_only_where_one_machine_trained_both():
    cols = [Column(label, 0.1, 0.001, p_holm=0.001) for label in ("all", "unseen-doc", "med")]
    here = {"cpu": "A CPU", "cpu_features": ["avx2"], "cache": "1 KB", "cores": 2, "gpu": None, "gflops": 100.0}
    same = PeerRow("adore", "st", cols, seconds=50.0, peer_seconds=100.0, machines=[here])
    unrecorded = PeerRow("adore", "st", cols, seconds=50.0, peer_seconds=100.0, machines=[here, {}])
    assert same.beats and unrecorded.beats and unrecorded.ratio == 0.5  # a stage without a record: as before
    other = PeerRow("adore", "st", cols, seconds=50.0, peer_seconds=100.0,
                    machines=[here, {**here, "cpu": "Another CPU", "gflops": 300.0}])
    assert other.ratio is None and not other.beats and other.to_json()["same_machine"] is False
    assert other.verdict() == ("better on all, unseen-doc, med; trained on other machines than the reference: "
                               "wall-clock not compared")


def test_model_is_the_dev_best_epoch(finished):
    exp, _ = finished
    folder = exp.stage_dir("train-st")
    points = [json.loads((folder / "dev" / f"epoch-{e}.json").read_text()) for e in (1, 2, 3)]
    values = [p["RR@10"] for p in points]
    assert len(set(values)) > 1  # the pick is a real choice
    best = points[values.index(max(values))]  # the first of the best: ties go to the earlier epoch
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["best_step"] == best["epoch"] and summary["best_dev"] == max(values)
    chosen = load_file(folder / "model" / "model.safetensors")
    for p in points:
        weights = load_file(folder / "checkpoints" / p["checkpoint"] / "model.safetensors")
        same = all(torch.equal(chosen[k], weights[k]) for k in chosen)
        assert same == (p["epoch"] == best["epoch"]), p["epoch"]
    # the dev records the report plots are these points, at the epochs' optimiser steps
    log = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [(x["epoch"], x["RR@10"]) for x in log if x["kind"] == "dev"] == [(p["epoch"], p["RR@10"]) for p in points]
    assert [x["step"] for x in log if x["kind"] == "train"] == list(range(1, summary["steps"] + 1))
    # a finished run keeps each epoch's weights, not the trainer state only a resume needs
    assert not list((folder / "checkpoints").glob("*/optimizer.pt"))


def test_dev_carve_out_is_the_trained_systems_one(finished, root):
    exp, _ = finished
    peer_dev = json.loads((exp.stage_dir("train-st") / "peer.json").read_text())["data"]["dev_query_ids"]
    cfg = exp.recipe.train_config(exp.recipe.system("rand"), root / "rand-out")
    cfg.quiet = True
    trainer = Trainer(cfg)
    trainer.setup()
    assert peer_dev == list(trainer.dev_qrels) and len(peer_dev) == 3
    _, qrels, _ = Experiment.dev_set(cfg)
    assert sorted(peer_dev) == sorted(qrels)
    # the dev pool (BM25's top-20 of each dev query + its positives) is the trainer's too
    data = peer_data(exp.recipe.peer_config(exp.recipe.system("st")))
    trainer.config.dev_pool = 20
    rows = dev_pool_rows(trainer.context, trainer.doc_row)
    assert dev_pool(data, root / "cache", 20) == sorted(trainer.context.doc_ids[r] for r in rows)
    assert len(rows) < len(data.docs)
    # another seed: another carve-out, for the trained systems and the peer alike
    other = Recipe.from_dict({**recipe_dict(root, seed=7)})
    assert other.peer_config(other.system("st")).seed == 7 != exp.recipe.peer_config(exp.recipe.system("st")).seed


def test_rerun_is_cached_and_a_changed_setting_reruns_the_peer_only(finished, root):
    exp, _ = finished
    again = Experiment(Recipe.from_dict(recipe_dict(root)), exp.out, quiet=True)
    outcome = again.run()
    assert {n for n, v in outcome.items() if v != "cached"} == {"report"}
    changed = dict(Experiment(Recipe.from_dict(recipe_dict(root, learning_rate=1e-3)), exp.out).status())
    stale = {n for n, s in changed.items() if s.startswith("stale")} - {"report"}  # the report reads everything
    assert stale == {"train-st", "test-st", "transfer-st-transfer-test"}
    assert changed["test-zeroshot"] == "done"


def test_a_killed_peer_resumes_to_the_weights_of_a_straight_run(finished, root, monkeypatch):
    from sentence_transformers import SentenceTransformerTrainer

    exp, _ = finished
    original = SentenceTransformerTrainer._save_checkpoint

    def killed_after_epoch_one(self, model, trial):
        original(self, model, trial)
        if self.state.epoch is not None and round(self.state.epoch) == 1:
            raise KeyboardInterrupt

    killed = Experiment(Recipe.from_dict(recipe_dict(root)), root / "killed", quiet=True)
    monkeypatch.setattr(SentenceTransformerTrainer, "_save_checkpoint", killed_after_epoch_one)
    with pytest.raises(KeyboardInterrupt):
        killed.run(only=["train-st"])
    monkeypatch.setattr(SentenceTransformerTrainer, "_save_checkpoint", original)
    folder = killed.stage_dir("train-st")
    assert _steps_per_epoch(exp) >= 2  # the resumed epochs go through several optimiser steps
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["checkpoint-" + str(_steps_per_epoch(exp))]
    assert killed.run(only=["train-st"]) == {"train-st": "done"}
    assert json.loads((folder / "stage.json").read_text())["attempts"] == 2
    straight = exp.stage_dir("train-st")
    for name in ("model", *(f"checkpoints/{p.name}" for p in (straight / "checkpoints").iterdir())):
        a, b = load_file(straight / name / "model.safetensors"), load_file(folder / name / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    steps = [json.loads(x)["step"] for x in (folder / "train_log.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    assert steps == sorted(set(steps))  # the killed attempt's records are not doubled


def _steps_per_epoch(exp: Experiment) -> int:
    return json.loads((exp.stage_dir("train-st") / "dev" / "epoch-1.json").read_text())["step"]


@pytest.mark.parametrize("change, message", [
    ({"learnin_rate": 1e-3},
     "systems[1].learnin_rate: not a setting of a peer-st system (did you mean 'learning_rate'?); allowed: loss, "),
    ({"loss": "triplet"}, "systems[1].loss: input should be 'mnrl' or 'cmnrl'"),
    ({"learning_rate": -1.0}, "systems[1].learning_rate: input should be greater than 0"),
    ({"num_train_epochs": 0}, "systems[1].num_train_epochs: input should be greater than or equal to 1"),
    ({"method": "star"}, "systems[1].kind: a peer-st system trains with sentence-transformers' recipe, not a "),
    ({"base": "nowhere"}, "systems[1].base: no system named 'nowhere'"),
    ({"base": "rand"}, "systems[1].base: system 'st' needs its base 'rand' listed before it"),
])
def test_bad_peer_settings_name_the_key(root, change, message):
    with pytest.raises(HardnegError) as err:
        Recipe.from_dict(recipe_dict(root, **change))
    assert message in str(err.value)


def test_a_peer_starts_from_a_trained_system_but_not_from_an_adore_query_tower(root):
    raw = recipe_dict(root)
    raw["systems"] = [raw["systems"][2], {**raw["systems"][1], "base": "rand"}]
    exp = Experiment(Recipe.from_dict(raw), root / "based")
    stage = exp.stages["train-st"]
    assert stage.deps == ["train-rand"] and stage.settings["model"] == str(exp.stage_dir("train-rand") / "model")
    raw["adore"] = {"max_steps": 1, "adore_topk": 8, "dev_fraction": 0.25}
    raw["systems"] = [{"name": "adore", "method": "adore"}, {**raw["systems"][1], "base": "adore"}]
    with pytest.raises(HardnegError, match=r"systems\[1\].base: peer-st system 'st' trains one shared encoder"):
        Recipe.from_dict(raw)


def test_settings_defaults_follow_sentence_transformers_recipe():
    assert PeerSettings().per_device_train_batch_size == 32
    cached = PeerSettings(loss="cmnrl")
    assert cached.per_device_train_batch_size == 256 and cached.mini_batch_size == 32
    assert cached.label == "sentence-transformers (CachedMNRL)"
    assert PeerSettings(loss="cmnrl", per_device_train_batch_size=64).per_device_train_batch_size == 64


def test_a_seeded_peer_gets_a_replica_per_seed(root, tmp_path):
    """``seeds`` on a peer-st system: the first seed is the system's own stage (key unchanged), each other seed a
    replica stage whose settings differ in the seed only."""
    plain = Experiment(Recipe.from_dict(recipe_dict(root)), tmp_path / "a")
    seeded = Experiment(Recipe.from_dict(recipe_dict(root, seeds=[42, 7])), tmp_path / "b")
    assert seeded.stages["train-st"].key == plain.stages["train-st"].key
    first, other = seeded.stages["train-st"].settings, seeded.stages["train-st.seed7"].settings
    differ = {k for k in first if first[k] != other[k]}
    assert "test-st.seed7" in seeded.stages and differ == {"seed"} and other["seed"] == 7
