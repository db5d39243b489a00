"""``seeds:`` on a recipe's systems: the replicas and their stages, the seed-averaged report and results.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats

from conftest import write_tiny_train
from hardneg.errors import HardnegError
from hardneg.experiment import Experiment, ExperimentResults, Recipe
from hardneg.experiment.context import ReportContext
from hardneg.experiment.stats import ttest
from hardneg.io import read_json

# dev_at_start off: a tiny random model two steps in need not beat its start on dev, and keeping the start would
# make every seed (and system) the same model, leaving the seed statistics nothing to compare
TRAIN = {"max_steps": 2, "batch_size": 4, "topk": 8, "dev_fraction": 0.25, "dev_every": 1, "save_every": 1,
         "dev_pool": 0, "query_max_length": 16, "doc_max_length": 32, "warmup_ratio": 0.0, "lr": 1e-3,
         "dev_at_start": False}
ADORE = {"max_steps": 2, "batch_size": 4, "adore_topk": 8, "dev_fraction": 0.25, "dev_every": 1, "save_every": 1,
         "query_max_length": 16, "doc_max_length": 32, "lr": 1e-3, "metric": "mrr@10", "warmup_ratio": 0.0}


def _recipe(data: Path, model: Path, cache: Path, *, seeds: dict[str, list[int]] | None = None,
            transfer: Path | None = None, **extra: object) -> dict:
    systems = [{"name": "bm25", "kind": "bm25"}, {"name": "zeroshot", "kind": "zeroshot"},
               {"name": "inbatch", "method": "inbatch"}, {"name": "star", "method": "star"},
               {"name": "adore+star", "method": "adore", "base": "star"}]
    for s in systems:
        if seeds and s["name"] in seeds:
            s["seeds"] = seeds[s["name"]]
    return {"name": "tiny", "data": str(data), "model": str(model), "cache_dir": str(cache), "train": dict(TRAIN),
            "adore": dict(ADORE), "eval": {"max_length": 32, "query_max_length": 16, "k": 50},
            "transfer": [f"{transfer}:test"] if transfer else [], "systems": systems, **extra}


def test_first_seed_keeps_the_systems_stage_keys_and_replicas_add_their_own(tmp_path):
    """The first seed is the system itself (every stage key as without ``seeds``, so a finished run stays cached);
    each other seed adds train/test/transfer stages of ``<name>.seed<k>`` whose training differs in the seed only."""
    data, model, cache, transfer = tmp_path / "d", tmp_path / "m", tmp_path / "c", tmp_path / "t"
    extra = {"interpolate": {"alphas": [0.0, 1.0], "systems": ["star"]}, "analysis": {"pairwise": {}}}
    plain = Experiment(Recipe.from_dict(_recipe(data, model, cache, transfer=transfer, **extra)), tmp_path / "a")
    seeded = Experiment(Recipe.from_dict(_recipe(data, model, cache, transfer=transfer,
                                                 seeds={"star": [42, 43, 44]}, **extra)), tmp_path / "a")
    keys = {n: st.key for n, st in seeded.stages.items()}
    new = sorted(set(keys) - set(plain.stages))
    assert new == sorted(f"{kind}-star.seed{k}{tail}" for k in (43, 44)
                         for kind, tail in [("train", ""), ("test", ""), ("transfer", "-t-test")])
    for name, stage in plain.stages.items():
        if name != "report":  # the report depends on every stage, the replicas' too
            assert keys[name] == stage.key, name
    a, b = plain.stages["train-star"].settings, seeded.stages["train-star.seed43"].settings
    assert b["seed"] == 43 and a["seed"] == 42 and {k: v for k, v in a.items() if k != "seed"} == \
        {k: v for k, v in b.items() if k != "seed"}
    # a system on a seeded base starts from its first seed; analyses and interpolation leave the replicas out
    assert seeded.stages["train-adore+star"].deps == ["train-star"]
    assert "star.seed43" not in seeded.stages["analysis-pairwise"].settings["systems"]
    assert not [n for n in keys if n.startswith("wise-star.seed")]
    # recipe.json records the key; it is never a TrainConfig setting
    assert seeded.recipe.to_dict()["systems"][3]["seeds"] == [42, 43, 44]
    assert "seeds" not in seeded.recipe.systems[3].settings


def test_replicas_transfer_only_with_their_system(tmp_path):
    raw = _recipe(tmp_path / "d", tmp_path / "m", tmp_path / "c", transfer=tmp_path / "t",
                  seeds={"star": [42, 7], "inbatch": [42, 9]})
    raw["eval"]["transfer_systems"] = ["star"]
    stages = Experiment(Recipe.from_dict(raw), tmp_path / "a").stages
    assert "transfer-star.seed7-t-test" in stages and "test-inbatch.seed9" in stages
    assert not [n for n in stages if n.startswith("transfer-inbatch")]


@pytest.mark.parametrize(("system", "seeds", "message"), [
    ("zeroshot", [42, 43], "systems[1].seeds: a zeroshot system has no seed to vary"),
    ("bm25", [42], "systems[0].seeds: a bm25 system has no seed to vary"),
    ("star", [43, 44], "systems[3].seeds: the first seed is system 'star' itself, which runs with seed 42"),
    ("star", [42, 42], "systems[3].seeds: give distinct seeds"),
    ("star", [], "systems[3].seeds: give distinct seeds"),
])
def test_bad_seeds_name_the_key(tmp_path, system, seeds, message):
    with pytest.raises(HardnegError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Recipe.from_dict(_recipe(tmp_path / "d", tmp_path / "m", tmp_path / "c", seeds={system: seeds}))


def test_seeds_follow_the_systems_own_seed_and_replica_names_must_be_free(tmp_path):
    raw = _recipe(tmp_path / "d", tmp_path / "m", tmp_path / "c", seeds={"star": [7, 8]})
    raw["systems"][3]["seed"] = 7
    assert [r.name for r in Recipe.from_dict(raw).replicas] == ["star.seed8"]
    raw["systems"].append({"name": "star.seed8", "method": "rand"})
    with pytest.raises(HardnegError, match=r"systems\[3\].seeds: the replica 'star.seed8' clashes"):
        Recipe.from_dict(raw)


# ----------------------------------------------------------------------------- a run with seeds, to the report
@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("seeds")
    data = write_tiny_train(root / "data", filler=20)
    test = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}-0\t1" for i in range(6)]
    test += [f"q{i}\td{i}-2\t1" for i in range(6, 12)]  # the unseen-document stratum
    (data / "qrels" / "test.tsv").write_text("\n".join(test) + "\n")
    transfer = write_tiny_train(root / "transfer")
    (transfer / "qrels" / "test.tsv").write_text("q0\td0-0\t1\nq1\td1-0\t1\nq2\td2-1\t1\n")
    raw = _recipe(data, tiny_model_dir, root / "cache", transfer=transfer, seeds={"inbatch": [42, 43], "star":
                                                                                   [42, 43, 44]})
    raw["systems"] = raw["systems"][1:4]  # zeroshot, inbatch (2 seeds), star (3 seeds)
    raw["eval"].update(baselines=["zeroshot"], pairs=[["inbatch", "star"], ["zeroshot", "star"]])
    exp = Experiment(Recipe.from_dict(raw), root / "out", quiet=True)
    exp.run()
    return exp


def _pq(exp: Experiment, run: str) -> dict:
    return read_json(exp.stage_dir(f"test-{run}") / "per_query.json")


def test_results_json_has_every_seed_and_numpys_mean_and_sd(seeded_run):
    res = read_json(seeded_run.out / "results.json")
    runs = ["star", "star.seed43", "star.seed44"]
    assert res["systems"]["star"]["seeds"]["runs"] == runs and res["systems"]["star"]["seeds"]["n"] == 3
    assert [res["replicas"][r]["seed"] for r in runs] == [42, 43, 44]
    for key in ("nDCG@10", "RR@10", "R@100", "nDCG@10_unseen", "nDCG@10_seen"):
        values = [res["replicas"][r][key] for r in runs]
        if key in ("nDCG@10", "RR@10"):  # each seed's own test mean, from its per-query file
            assert values == pytest.approx([np.mean(list(_pq(seeded_run, r)[key].values())) for r in runs])
        assert res["systems"]["star"][key] == pytest.approx(np.mean(values))
        assert res["systems"]["star"]["seeds"]["sd"][key] == pytest.approx(np.std(values, ddof=1))
        assert res["systems"]["star"]["seeds"]["min"][key] == min(values)
        assert res["systems"]["star"]["seeds"]["max"][key] == max(values)
    tvalues = [read_json(seeded_run.stage_dir(f"transfer-{r}-transfer-test") / "stage.json")["result"]["metrics"]
               ["nDCG@10"] for r in runs]
    assert res["systems"]["star"]["transfer"]["transfer-test"] == pytest.approx(np.mean(tvalues))
    assert res["systems"]["star"]["seeds"]["sd"]["transfer"]["transfer-test"] == pytest.approx(
        np.std(tvalues, ddof=1))
    assert "seeds" not in res["systems"]["zeroshot"] and "star.seed43" not in res["systems"]
    # the seeds differ (else the spread would say nothing): the replicas trained with their own seed
    assert read_json(seeded_run.stage_dir("train-star.seed43") / "stage.json")["settings"]["seed"] == 43


def test_paired_tests_use_the_seed_averaged_run(seeded_run):
    ctx = ReportContext(ExperimentResults(seeded_run.out), seeded_run.out)
    star = {q: np.mean([_pq(seeded_run, r)["nDCG@10"][q] for r in ("star", "star.seed43", "star.seed44")])
            for q in _pq(seeded_run, "star")["nDCG@10"]}
    inbatch = {q: np.mean([_pq(seeded_run, r)["nDCG@10"][q] for r in ("inbatch", "inbatch.seed43")]) for q in star}
    assert ctx.per_query["star"]["nDCG@10"] == pytest.approx(star)
    assert ctx.per_query["inbatch"]["nDCG@10"] == pytest.approx(inbatch)
    qids = sorted(star)
    assert star != inbatch  # two trained systems, so the test has a difference to test
    weights = [load_file(seeded_run.stage_dir(f"train-{r}") / "model" / "model.safetensors")
               for r in ("star", "star.seed43")]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the seeds are other models
    expected = stats.ttest_rel([star[q] for q in qids], [inbatch[q] for q in qids]).pvalue
    assert ttest(ctx.per_query["star"]["nDCG@10"], ctx.per_query["inbatch"]["nDCG@10"]) == pytest.approx(expected)
    # the head-to-head table of the report carries that p (eval.pairs: [inbatch, star])
    rows = (seeded_run.out / "tables" / "pairs.csv").read_text().splitlines()
    header, row = rows[0].split(","), next(r.split(",") for r in rows[1:] if r.startswith("star,inbatch,"))
    p = float(row[header.index("p all")])
    assert p == pytest.approx(expected, rel=1e-6) if not np.isnan(expected) else row[header.index("p all")] == ""


def test_report_shows_mean_plus_minus_sd_and_a_per_seed_table(seeded_run):
    text = (seeded_run.out / "report.md").read_text()
    res = read_json(seeded_run.out / "results.json")["systems"]["star"]
    row = next(line for line in text.splitlines() if line.startswith("| star |"))
    assert f"{res['nDCG@10']:.3f} ± {res['seeds']['sd']['nDCG@10']:.3f}" in row and row.rstrip(" |").endswith("3")
    assert "seed-averaged run" in text
    assert not [line for line in text.split("Per seed:")[0].splitlines() if line.startswith("| star.seed")]
    per_seed = (seeded_run.out / "tables" / "table2_seeds.csv").read_text().splitlines()
    assert [line.split(",")[2] for line in per_seed[1:]] == ["inbatch", "inbatch.seed43", "star", "star.seed43",
                                                            "star.seed44"]
    main = (seeded_run.out / "tables" / "table2_effectiveness.csv").read_text().splitlines()
    star = next(line.split(",") for line in main if line.startswith("star,"))
    assert float(star[main[0].split(",").index("nDCG@10")]) == pytest.approx(res["nDCG@10"])
    assert json.loads(json.dumps(res))  # plain JSON


def test_readme_table_of_a_seeded_run_shows_mean_plus_minus_sd(seeded_run):
    from hardneg.experiment.readme import render_table

    res = read_json(seeded_run.out / "results.json")
    star = next(line for line in render_table(res).splitlines() if line.startswith("| star |"))
    sd = res["systems"]["star"]["seeds"]["sd"]
    assert f"{res['systems']['star']['nDCG@10']:.3f}" in star and f" ± {sd['nDCG@10']:.3f} " in star
    assert f" ± {sd['transfer']['transfer-test']:.3f} " in star and star.endswith("| 3 |")
    assert "star.seed43" not in render_table(res)


def test_vs_start_p_is_the_seed_averaged_runs_ttest_against_zero_shot(seeded_run):
    res = read_json(seeded_run.out / "results.json")["systems"]
    runs = ("star", "star.seed43", "star.seed44")
    zero = _pq(seeded_run, "zeroshot")["nDCG@10"]
    qids = sorted(zero)
    star = [np.mean([_pq(seeded_run, r)["nDCG@10"][q] for r in runs]) for q in qids]
    expected = stats.ttest_rel(star, [zero[q] for q in qids]).pvalue
    assert res["star"]["vs_start"]["system"] == "zeroshot"
    assert res["star"]["vs_start"]["p"]["nDCG@10"] == pytest.approx(expected)
    assert "vs_start" not in res["zeroshot"]


def test_a_seed_not_finished_yet_is_left_out_of_the_mean_and_n(seeded_run, tmp_path):
    import shutil

    from hardneg.experiment import write_report

    out = tmp_path / "partial"
    shutil.copytree(seeded_run.out, out)
    shutil.rmtree(out / "stages" / "test-star.seed44")
    write_report(out)
    res = read_json(out / "results.json")
    star = res["systems"]["star"]
    values = [res["replicas"][r]["nDCG@10"] for r in ("star", "star.seed43")]
    assert res["replicas"]["star.seed44"]["nDCG@10"] is None
    assert star["nDCG@10"] == pytest.approx(np.mean(values))
    assert star["seeds"]["sd"]["nDCG@10"] == pytest.approx(np.std(values, ddof=1))
    row = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("| star |"))
    assert row.endswith("| 2 |") and star["seeds"]["n"] == 2


def test_training_curves_table_has_a_row_per_seed_with_its_own_budget(seeded_run):
    """Each seed of a seeded system is a row of the training-curves table, read from its own log: a seed that
    ended at its cap still rising must be named even when the first seed's curve had flattened."""
    import csv

    rows = list(csv.DictReader((seeded_run.out / "tables" / "training_curves.csv").open(encoding="utf-8")))
    assert [r["system"] for r in rows] == ["inbatch", "inbatch.seed43", "star", "star.seed43", "star.seed44"]
    column = next(c for c in rows[0] if c.startswith("best dev "))  # the report's main measure
    for row in rows:
        log = [json.loads(line) for line in
               (seeded_run.stage_dir(f"train-{row['system']}") / "train_log.jsonl").read_text().splitlines()]
        dev = [x[column.removeprefix("best dev ")] for x in log if x.get("kind") == "dev"]
        assert int(row["steps"]) == len([x for x in log if x.get("kind") == "train"])
        assert float(row[column]) == pytest.approx(max(dev))
        assert row["method"] == row["system"].split(".")[0]
