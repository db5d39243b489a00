"""`interpolate:` (WiSE-FT rows picked on dev), Holm–Bonferroni p-values and ``results.json`` of `hardneg report`."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch
from test_experiment import ADORE, TRAIN, tiny_data

from conftest import write_tiny_train
from hardneg.devices import machine_identity, machine_label, machine_record
from hardneg.errors import HardnegError
from hardneg.evaluate.metrics import paired_ttest
from hardneg.experiment import Experiment, ExperimentResults, Recipe
from hardneg.experiment import report as report_module
from hardneg.experiment.context import ReportContext
from hardneg.experiment.execute import machines
from hardneg.experiment.figures import system_colours
from hardneg.experiment.stats import holm


def _tiny_recipe(data, model, cache, transfer) -> dict:
    return {
        "name": "wise", "data": str(data), "model": str(model), "cache_dir": str(cache),
        "train": dict(TRAIN), "adore": dict(ADORE),
        "eval": {"max_length": 32, "query_max_length": 16, "k": 50, "baselines": ["rand"],
                 "pairs": [["rand", "adore+zeroshot"], ["zeroshot", "rand"], ["zeroshot", "rand+wise"]]},
        "transfer": [f"{transfer}:test"],
        "systems": [{"name": "zeroshot", "kind": "zeroshot"}, {"name": "rand", "method": "rand"},
                    {"name": "adore+zeroshot", "method": "adore"}],
        "interpolate": {"alphas": [0.0, 0.5, 1.0]},
    }


@pytest.fixture(scope="module")
def wise(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("wise")
    data = tiny_data(root / "data")
    transfer = write_tiny_train(root / "transfer")
    (transfer / "qrels" / "test.tsv").write_text("q0\td0-0\t1\nq1\td1-0\t1\n")
    raw = _tiny_recipe(data, tiny_model_dir, root / "cache", transfer)
    exp = Experiment(Recipe.from_dict(raw), root / "out", quiet=True)
    exp.run()
    return exp, raw


def _csv(path) -> dict[str, dict[str, str]]:
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    return {r[next(iter(r))]: r for r in rows}


def test_holm_matches_a_hand_computed_example():
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.02, math.nan, 0.5, 0.9])  # NaN is not counted: m = 3
    assert out[0] == pytest.approx(0.06) and math.isnan(out[1]) and out[2:] == pytest.approx([1.0, 1.0])
    assert holm([0.2, 0.4]) == pytest.approx([0.4, 0.4]) and holm([]) == []


def test_interpolate_stages_pick_on_dev_and_test_the_pick_once(wise):
    from hardneg.model.encoder import DualEncoder
    from hardneg.train.order import split_dev

    exp, _ = wise
    assert {"wise-rand-a0", "wise-rand-a0.5", "wise-rand-a1", "wise-rand", "test-rand+wise",
            "transfer-rand+wise-transfer-test", "wise-rand-curve", "test-adore+zeroshot+wise"} <= set(exp.stages)
    start = DualEncoder.from_pretrained(exp.recipe.model).doc_model.state_dict()
    trained = DualEncoder.from_pretrained(exp.stage_dir("train-rand") / "model").doc_model.state_dict()
    a0 = DualEncoder.from_pretrained(exp.stage_dir("wise-rand-a0") / "model").doc_model.state_dict()
    a1 = DualEncoder.from_pretrained(exp.stage_dir("wise-rand-a1") / "model").doc_model.state_dict()
    half = DualEncoder.from_pretrained(exp.stage_dir("wise-rand-a0.5") / "model").doc_model.state_dict()
    name = "encoder.layer.0.attention.self.query.weight"
    name = name if name in start else next(k for k, v in start.items() if v.dtype == torch.float32 and v.dim() == 2)
    assert all(torch.equal(a0[k], start[k]) for k in start) and all(torch.equal(a1[k], trained[k]) for k in trained)
    assert torch.allclose(half[name], 0.5 * start[name] + 0.5 * trained[name], atol=1e-6)
    # ADORE: only the query tower moves, half way; the document tower is the base's, bit for bit
    ad = DualEncoder.from_pretrained(exp.stage_dir("wise-adore+zeroshot-a0.5") / "model")
    q_end = DualEncoder.from_pretrained(exp.stage_dir("train-adore+zeroshot") / "model").query_model.state_dict()
    assert not torch.equal(q_end[name], start[name])  # ADORE's best step moved the query tower
    assert torch.allclose(ad.query_model.state_dict()[name], 0.5 * start[name] + 0.5 * q_end[name], atol=1e-6)
    assert not ad.config.shared and all(torch.equal(v, start[k]) for k, v in ad.doc_model.state_dict().items())
    # dev = the trainer's own carve-out (seed, dev_fraction), never the test queries
    cfg = exp.recipe.train_config(exp.recipe.system("rand"), exp.stage_dir("train-rand"))
    ds, qrels, queries = exp.dev_set(cfg)
    _, expected = split_dev([q for q in ds.qrels() if q in ds.queries()], 0.25, 42)
    assert sorted(qrels) == expected == sorted(queries)
    state = json.loads((exp.stage_dir("wise-rand") / "stage.json").read_text())["result"]
    curve = {c["alpha"]: c["RR@10"] for c in state["curve"]}
    assert state["alpha"] == min(curve, key=lambda a: (-curve[a], a)) and state["dev"]["RR@10"] == curve[state["alpha"]]
    alpha_stage = json.loads((exp.stage_dir(f"wise-rand-a{state['alpha']:g}") / "stage.json").read_text())
    assert alpha_stage["result"]["dev_queries"] == len(expected)
    # the pick's test row = the same model's test point on the curve
    test = json.loads((exp.stage_dir("test-rand+wise") / "metrics.json").read_text())
    on_curve = json.loads((exp.stage_dir("wise-rand-curve") / "stage.json").read_text())["result"]["test"]
    assert test == pytest.approx(on_curve[f"{state['alpha']:g}"], abs=1e-9)


def test_a_changed_endpoint_reruns_its_merged_models(wise):
    exp, raw = wise
    changed = json.loads(json.dumps(raw))
    changed["systems"][1]["lr"] = 5e-4  # rand
    status = dict(Experiment(Recipe.from_dict(changed), exp.out).status())
    stale = {n for n, s in status.items() if s.startswith("stale")} - {"report"}
    assert stale == {"train-rand", "test-rand", "transfer-rand-transfer-test", "wise-rand-a0", "wise-rand-a0.5",
                     "wise-rand-a1", "wise-rand", "test-rand+wise", "transfer-rand+wise-transfer-test",
                     "wise-rand-curve"}


def test_report_curve_holm_columns_and_results_json(wise, tmp_path):
    exp, _ = wise
    results = ExperimentResults(exp.out)
    report = ReportContext(results, tmp_path)
    report_module.write(report)
    text = (tmp_path / "report.md").read_text()
    assert "## Weight interpolation (WiSE-FT)" in text and "not used for selection" in text.lower()
    assert "| rand+wise |" in text and "Holm" in text
    fig = report.drawn["wise_interpolation.png"]
    pick = results.wise_pick("rand")
    colour = system_colours(results.names)["rand"]
    assert fig["rand dev RR@10"]["colour"] == colour and fig["rand dev RR@10"]["x"] == [0.0, 0.5, 1.0]
    assert fig["rand dev RR@10"]["y"] == pytest.approx([c["RR@10"] for c in pick["curve"]])
    curve = results.stage("wise-rand-curve")["result"]
    assert fig["rand test all"]["y"] == pytest.approx([curve["test"][a]["nDCG@10"] for a in ("0", "0.5", "1")])
    assert fig["rand transfer-test"]["y"] == pytest.approx(
        [curve["transfer"]["transfer-test"][a]["nDCG@10"] for a in ("0", "0.5", "1")])
    # results.json: the tables' numbers (CSV, full precision)
    res = json.loads((tmp_path / "results.json").read_text())["systems"]
    table2 = _csv(tmp_path / "tables" / "table2_effectiveness.csv")
    assert set(res) == {"zeroshot", "rand", "adore+zeroshot", "rand+wise", "adore+zeroshot+wise"}
    for name, row in table2.items():
        for key, column in (("nDCG@10", "nDCG@10"), ("RR@10", "RR@10"), ("R@100", "R@100"),
                            ("nDCG@10_unseen", "nDCG@10 unseen-doc")):
            assert res[name][key] == pytest.approx(float(row[column]), abs=1e-12), (name, key)
        assert res[name]["transfer"]["transfer-test"] == pytest.approx(float(row["nDCG@10 transfer-test"]), abs=1e-12)
    gen = _csv(tmp_path / "tables" / "generalisation.csv")
    zero_seen = res["zeroshot"]["nDCG@10_seen"]
    assert res["rand"]["nDCG@10_seen"] - zero_seen == pytest.approx(float(gen["rand"]["ΔnDCG@10 seen-doc (6)"]))
    table4 = _csv(tmp_path / "tables" / "table4_training_time.csv")
    assert res["rand"]["train_seconds"] == pytest.approx(float(table4["rand"]["stage (min)"]) * 60)
    train_state = results.stage("train-rand")
    assert train_state["peak_rss_mb"] > 0 and train_state["peak_rss_scope"] == "block"  # Linux: the stage's own
    assert float(table4["rand"]["peak RAM (GiB)"]) == pytest.approx(train_state["peak_rss_mb"] / 1024, abs=1e-9)
    assert f"| {train_state['peak_rss_mb'] / 1024:.2f} |" in text.split("## Table 4 analogue")[1].split("\n## ")[0]
    assert "peak GPU (GiB)" not in table4["rand"]  # no CUDA here: no column
    assert train_state["cpu_seconds"] > 0 and train_state["threads"] >= 1
    assert float(table4["rand"]["CPU (min)"]) == pytest.approx(train_state["cpu_seconds"] / 60, abs=1e-9)
    assert res["rand"]["train_cpu_seconds"] == train_state["cpu_seconds"]
    assert res["zeroshot"]["train_cpu_seconds"] is None
    assert res["rand"]["steps"] == 2 and res["zeroshot"]["steps"] is None and res["zeroshot"]["dev"] is None
    assert res["rand"]["dev"]["step"] in (0, 1, 2) and "RR@10" in res["rand"]["dev"]
    assert res["rand+wise"]["dev"]["alpha"] == pick["alpha"] and res["rand+wise"]["steps"] == 2
    # Holm beside every raw p; family = the whole table
    raw = [float(gen[n][c]) for n in gen for c in ("p seen-doc", "p unseen-doc")]
    adj = [float(gen[n][c]) for n in gen for c in ("p Holm seen-doc", "p Holm unseen-doc")]
    assert adj == pytest.approx(holm(raw))
    # eval.pairs: system minus reference per stratum, the t-test of the per-query values, Holm over the table
    assert "## Head-to-head" in text
    pairs = list(csv.DictReader((tmp_path / "tables" / "pairs.csv").open(encoding="utf-8")))
    assert [(r["system"], r["reference"]) for r in pairs] == [("adore+zeroshot", "rand"), ("rand", "zeroshot"),
                                                              ("rand+wise", "zeroshot")]
    # an interpolation's row can be paired: its delta is that of its own test row
    assert float(pairs[2][next(c for c in pairs[2] if c.startswith("ΔnDCG@10 all"))]) == pytest.approx(
        res["rand+wise"]["nDCG@10"] - res["zeroshot"]["nDCG@10"])
    row, per_query = pairs[0], {n: results.per_query(n)["nDCG@10"] for n in ("rand", "adore+zeroshot")}

    def col(prefix):
        return next(c for c in row if c.startswith(prefix))

    def num(x):
        return math.nan if x in ("", "n/a") else float(x)

    assert float(row[col("ΔnDCG@10 all")]) == pytest.approx(res["adore+zeroshot"]["nDCG@10"] - res["rand"]["nDCG@10"])
    assert float(row[col("ΔnDCG@10 unseen-doc")]) == pytest.approx(
        res["adore+zeroshot"]["nDCG@10_unseen"] - res["rand"]["nDCG@10_unseen"])
    qids = sorted(per_query["rand"])
    want_p = paired_ttest([per_query["adore+zeroshot"][q] for q in qids], [per_query["rand"][q] for q in qids])
    assert num(row["p all"]) == pytest.approx(want_p, abs=1e-12, nan_ok=True)
    raw_p = [num(r[c]) for r in pairs for c in ("p all", "p seen-doc", "p unseen-doc")]
    holm_p = [num(r[c]) for r in pairs for c in ("p Holm all", "p Holm seen-doc", "p Holm unseen-doc")]
    assert holm_p == pytest.approx(holm(raw_p), nan_ok=True)
    assert float(row["ΔnDCG@10 transfer-test"]) == pytest.approx(
        res["adore+zeroshot"]["transfer"]["transfer-test"] - res["rand"]["transfer"]["transfer-test"])
    assert float(row["Δ best dev nDCG@10"]) == pytest.approx(
        res["adore+zeroshot"]["dev"]["nDCG@10"] - res["rand"]["dev"]["nDCG@10"])
    assert pairs[1]["Δ best dev nDCG@10"] == "" and "| rand | zeroshot |" in text  # zero-shot has no dev curve


def test_findings_show_holm_and_say_in_domain_only():
    from hardneg.experiment.findings import Claim

    c = Claim("RQ1", "A beats B", "a", "b", "nDCG@10", (0.6, 0.5, 0.01),
              {"seen-doc": (0.7, 0.5, 0.001), "unseen-doc": (0.5, 0.5, 0.9)})
    assert c.pvalues() == [0.01, 0.001, 0.9]
    line = c.render(holm(c.pvalues()))  # 0.02, 0.003, 0.9
    assert "(p 0.010, Holm 0.020)" in line and "seen-doc stratum 0.700 vs 0.500 (p 0.001, Holm 0.003)" in line
    assert line.endswith("→ **agrees** (in-domain only).")
    both = Claim("RQ1", "A beats B", "a", "b", "nDCG@10", (0.6, 0.5, 0.01),
                 {"seen-doc": (0.7, 0.5, 0.001), "unseen-doc": (0.6, 0.5, 0.001)})
    assert "in-domain" not in both.render(holm(both.pvalues()))
    # a raw p under 0.05 that Holm lifts above it no longer agrees
    weak = Claim("RQ1", "A beats B", "a", "b", "nDCG@10", (0.6, 0.5, 0.03), {})
    assert weak.render([0.06]).endswith("**direction agrees, not significant**.")


@pytest.mark.parametrize("change, message", [
    ({"interpolate": {"alphas": [0.0, 1.5]}}, "interpolate.alphas: every weight must be in [0, 1]"),
    ({"interpolate": {"alphas": [0.5]}}, "interpolate.alphas: give at least two weights"),
    ({"interpolate": {"systems": ["zeroshot"]}}, "interpolate.systems[0]: 'zeroshot' is a zeroshot system"),
    ({"interpolate": {"systems": ["nope"]}}, "interpolate.systems[0]: no system named 'nope'"),
    ({"interpolate": {"alpha": [0.5]}}, "interpolate: unknown key 'alpha' (did you mean 'alphas'?)"),
    ({"eval": {"pairs": [["rand", "nope"]]}}, "eval.pairs[0][1]: no system named 'nope'"),
    ({"eval": {"pairs": [["rand", "rand"]]}}, "eval.pairs[0]: 'rand' against itself"),
    ({"eval": {"pairs": [["rand", "zeroshot+wise"]]}}, "eval.pairs[0][1]: no system named 'zeroshot+wise'"),
])
def test_bad_interpolate_keys_fail_before_compute(tmp_path, tiny_model_dir, change, message):
    raw = {**_tiny_recipe(tmp_path, tiny_model_dir, tmp_path / "cache", tmp_path), **change}
    with pytest.raises(HardnegError, match="^recipe: .*") as err:
        Recipe.from_dict(raw)
    assert message in str(err.value)


def test_table4_peak_memory_marks_what_was_not_recorded_or_not_the_stages_own(wise, tmp_path):
    """A stage run before hardneg recorded peaks shows "–" and is named under the table; a peak that is the
    process's so far (no reset possible) is an upper bound, "≤"; a GPU peak adds its column."""
    exp, _ = wise
    out = tmp_path / "out"
    shutil.copytree(exp.out, out)
    path = out / "stages" / "train-rand" / "stage.json"
    state = json.loads(path.read_text())
    for key in ("peak_rss_mb", "peak_rss_scope", "cpu_seconds"):
        state.pop(key)
    path.write_text(json.dumps(state))
    adore = out / "stages" / "train-adore+zeroshot" / "stage.json"
    state = json.loads(adore.read_text())
    adore.write_text(json.dumps({**state, "peak_rss_mb": 3072.0, "peak_rss_scope": "process",
                                 "peak_gpu_mb": 1536.0}))
    report_module.write(ReportContext(ExperimentResults(out), tmp_path / "r"))
    table4 = _csv(tmp_path / "r" / "tables" / "table4_training_time.csv")
    assert table4["rand"]["peak RAM (GiB)"] == "" and table4["rand"]["peak GPU (GiB)"] == ""  # not recorded
    adore_row = table4["adore+zeroshot"]
    assert float(adore_row["peak RAM (GiB)"]) == 3.0 and adore_row["peak RAM (GiB) marks"] == "≤"
    assert float(adore_row["peak GPU (GiB)"]) == 1.5
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| ≤3.00 | 1.50 |" in text and "| – | – |" in text
    assert "ran before hardneg recorded it: rand)" in text
    assert table4["rand"]["CPU (min)"] == "" and float(adore_row["CPU (min)"]) > 0
    assert "(\"–\": not recorded, the stage ran before hardneg recorded it: rand)" in text


def test_table4_names_the_machine_and_a_column_where_stages_ran_on_several(wise, tmp_path):
    """Each stage records the machine it ran on; Table 4 names the one machine, and where a training stage ran on
    another one (or did not record it) a "machine" column with a legend says which row ran where."""
    exp, _ = wise
    here = machine_record()
    for name in ("train-rand", "train-adore+zeroshot"):
        state = json.loads((exp.stage_dir(name) / "stage.json").read_text())
        assert [machine_identity(m) for m in state["machines"]] == [machine_identity(here)], name
    report_module.write(ReportContext(ExperimentResults(exp.out), tmp_path / "one"))
    text = (tmp_path / "one" / "report.md").read_text().split("## Table 4 analogue")[1].split("\n## ")[0]
    assert f"Machine: {machine_label(state['machines'][0])}." in text
    assert "machine" not in _csv(tmp_path / "one" / "tables" / "table4_training_time.csv")["rand"]
    out = tmp_path / "out"
    shutil.copytree(exp.out, out)
    path = out / "stages" / "train-rand" / "stage.json"
    state = json.loads(path.read_text())
    other = {**here, "cpu": "Another CPU", "cores": 64, "gflops": 900.0}
    path.write_text(json.dumps({**state, "machines": [here, other]}))  # resumed on another machine
    adore = out / "stages" / "train-adore+zeroshot" / "stage.json"
    state = json.loads(adore.read_text())
    adore.write_text(json.dumps({k: v for k, v in state.items() if k != "machines"}))  # from before they were kept
    report_module.write(ReportContext(ExperimentResults(out), tmp_path / "r"))
    table4 = _csv(tmp_path / "r" / "tables" / "table4_training_time.csv")
    assert table4["rand"]["machine"] == "A+B" and table4["adore+zeroshot"]["machine"] == "C"
    text = (tmp_path / "r" / "report.md").read_text()
    assert (f"A = {machine_label(here)}; B = {machine_label(other)}; C = not recorded" in text
            and "wall-clocks on different machines are not comparable" in text)


def test_an_attempt_on_another_machine_adds_it_and_an_unrecorded_one_counts():
    here = machine_record()
    assert machines(None) == [here] and machines({"seconds": 0.0}) == [here]  # no earlier attempt ran
    assert here["gpu"] is None or torch.cuda.is_initialized()  # CUDA is not started to name a GPU
    assert machines({"seconds": 12.0, "attempts": 1}) == [{}, here]  # an attempt from before machines were kept
    other = {**here, "cpu": "Another CPU"}
    assert machines({"seconds": 12.0, "machines": [other]}) == [other, here]
    assert machines({"seconds": 12.0, "machines": [{**here, "gflops": 1.0}]}) == [{**here, "gflops": 1.0}]


def test_an_attempt_before_its_first_gpu_work_is_the_gpu_attempts_machine(monkeypatch):
    """One stage runs on one device: an attempt on this host that failed before it started CUDA records no GPU, and
    the attempt that names the GPU replaces it (and is not followed by a GPU-less one); another host stays."""
    from hardneg.experiment import execute

    cpu = {"cpu": "Xeon", "cpu_features": ["avx2"], "cache": "1 MB", "cores": 16, "gflops": 300.0}
    before, gpu, other = {**cpu, "gpu": None}, {**cpu, "gpu": "H100"}, {**cpu, "cpu": "EPYC", "gpu": None}
    monkeypatch.setattr(execute, "machine_record", lambda: gpu)
    assert machines({"seconds": 5.0, "machines": [before]}) == [gpu]
    assert machines({"seconds": 5.0, "machines": [other, before]}) == [other, gpu]
    monkeypatch.setattr(execute, "machine_record", lambda: before)  # resumed, not at its GPU work yet (or failed)
    assert machines({"seconds": 5.0, "machines": [gpu]}) == [gpu]
    assert machines({"seconds": 5.0, "machines": [other]}) == [other, before]


def test_records_keep_the_wise_curve_and_its_report_reads_the_same(wise, tmp_path):
    """The WiSE curve stage keeps its per-weight test scores in subfolders (``a<alpha>/``): its record keeps their
    metrics and per-query scores (not their runs), a fresh folder takes them back, and the report from the records
    alone has the curve table of the full folder, file for file."""
    from hardneg.experiment import write_report
    from hardneg.experiment.records import RESTORED

    exp, raw = wise
    book = tmp_path / "records"
    Experiment(Recipe.from_dict(raw), exp.out, quiet=True).run(records=book)
    curve = book / "stages" / "wise-rand-curve"
    for a in ("0", "0.5", "1"):
        assert (curve / f"a{a}" / "per_query.json").read_bytes() == \
            (exp.stage_dir("wise-rand-curve") / f"a{a}" / "per_query.json").read_bytes()
        assert (curve / f"a{a}" / "metrics.json").is_file() and not (curve / f"a{a}" / "run.trec").exists()
    assert "a0.5/run.trec" in json.loads((curve / "stage.json").read_text())["left_out"]
    assert "model/" in json.loads((book / "stages" / "wise-rand" / "stage.json").read_text())["left_out"]

    fresh = Experiment(Recipe.from_dict(raw), tmp_path / "fresh", quiet=True)
    fresh.run(records=book)
    taken = fresh.stage_dir("wise-rand-curve")
    assert json.loads((taken / "stage.json").read_text())[RESTORED] == str(book)
    assert (taken / "a0.5" / "per_query.json").read_bytes() == (curve / "a0.5" / "per_query.json").read_bytes()

    write_report(book)
    for name in ("wise_interpolation.csv",):
        ours, theirs = book / "tables" / name, exp.out / "tables" / name
        assert theirs.is_file() and ours.read_text() == theirs.read_text()
    # saved again over an older record: files the stage no longer has go, emptied folders too
    (curve / "a9").mkdir()
    (curve / "a9" / "per_query.json").write_text("{}")
    (book / "stages" / "wise-rand-curve" / "stage.json").unlink()
    Experiment(Recipe.from_dict(raw), exp.out, quiet=True).run(records=book)
    assert not (curve / "a9").exists() and (curve / "stage.json").is_file()


def test_findings_compare_the_papers_star_not_a_variant_of_it(wise, tmp_path):
    """A distilled (or GradCache, TAS, LoRA, selection-rule) STAR is a row of its own: the findings' STAR is the one
    the paper runs; while it has no test result, RQ1 says it is not judged yet rather than comparing the variant.
    The same settings make an ADORE system other than plain ADORE."""
    from hardneg.experiment.findings import Findings

    exp, _ = wise
    out = tmp_path / "out"
    shutil.copytree(exp.out, out)
    recipe = json.loads((out / "recipe.json").read_text())
    recipe["systems"] += [
        {"name": "star-distill", "kind": "train", "method": "star", "settings": {"distill": "margin-mse"}},
        {"name": "star", "kind": "train", "method": "star", "settings": {"lr": 1e-5}},
        {"name": "star-simans", "kind": "train", "method": "star", "settings": {"sampling_strategy": "simans"}},
        {"name": "adore-lora+zeroshot", "kind": "train", "method": "adore", "base": "zeroshot",
         "settings": {"lora_r": 16}}]
    (out / "recipe.json").write_text(json.dumps(recipe))
    shutil.copytree(out / "stages" / "test-rand", out / "stages" / "test-star-distill")  # only the variant is tested
    results = ExperimentResults(out)
    assert results.paper_star() == "star" and results.paper_star(among=["star-distill", "star-simans"]) is None
    assert results.is_plain_adore("adore+zeroshot") and not results.is_plain_adore("adore-lora+zeroshot")
    ctx = ReportContext(results, tmp_path / "r")
    assert "star-distill" in ctx.per_query
    text = Findings(ctx).section({}).markdown
    assert "Not judged yet: star has no test result" in text and "star-distill nDCG@10" not in text
    shutil.copytree(out / "stages" / "test-rand", out / "stages" / "test-star")  # now the paper's STAR is tested
    text = Findings(ReportContext(ExperimentResults(out), tmp_path / "r2")).section({}).markdown
    assert "Here: star nDCG@10" in text and "star-distill nDCG@10" not in text and "Not judged yet: star" not in text
    recipe["adore"] = {**recipe.get("adore", {}), "lora_r": 16}  # set for every ADORE system, in adore:
    recipe["train"] = {**recipe.get("train", {}), "batch_composition": "tas"}  # and every other one, in train:
    (out / "recipe.json").write_text(json.dumps(recipe))
    results = ExperimentResults(out)
    assert not results.is_plain_adore("adore+zeroshot") and results.paper_star() is None
    assert results.settings_of("adore+zeroshot")["lora_r"] == 16 and "batch_composition" not in \
        results.settings_of("adore+zeroshot") and "lora_r" not in results.settings_of("zeroshot")


def test_step_time_findings_compare_only_stages_of_one_machine(wise, tmp_path):
    """"An ADORE step is cheap" and "STAR trains faster than ANCE" compare step times: only those of training stages
    that ran on one machine, and where no machine ran both kinds, the finding is not judged rather than wrong."""
    exp, _ = wise
    claim = "an ADORE step is cheap"
    out = tmp_path / "out"
    shutil.copytree(exp.out, out)
    recipe = json.loads((out / "recipe.json").read_text())
    recipe["systems"] += [{"name": "star", "kind": "train", "method": "star", "settings": {}},
                          {"name": "ance", "kind": "train", "method": "ance", "settings": {}}]
    (out / "recipe.json").write_text(json.dumps(recipe))
    for name in ("star", "ance"):  # the same log as rand's: trained where rand did
        shutil.copytree(out / "stages" / "train-rand", out / "stages" / f"train-{name}")

    def findings() -> str:
        return report_module.render(ReportContext(ExperimentResults(out), tmp_path / "r")).split("\n## ")[1]

    text = findings()  # one machine: judged, and no machine named
    assert claim in text and "ran on one machine" not in text
    assert "Not judged yet: ance's re-mining time is not known" in text  # compared (its log has no re-mining)
    here = machine_record()
    other = {**here, "cpu": "Another CPU", "cores": 64}
    path = out / "stages" / "train-ance" / "stage.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "machines": [other]}))
    text = findings()  # ANCE on another machine; ADORE and the document-side systems still share one
    assert "Not judged: star and ance did not train on one recorded machine" in text
    assert f"the 3 of 4 trained systems that ran on one machine, {machine_label(here)}" in text
    path = out / "stages" / "train-adore+zeroshot" / "stage.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "machines": [other]}))
    text = findings()  # ADORE now trained where ANCE did: that machine's pair is the one with both kinds
    assert "the 2 of 4 trained systems that ran on one machine, " + machine_label(other) in text
    for name in ("train-ance", "train-adore+zeroshot"):  # no machine ran both kinds: not compared at all
        path = out / "stages" / name / "stage.json"
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "machines"}))
    path = out / "stages" / "train-adore+zeroshot" / "stage.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "machines": [other]}))
    assert claim not in findings()


def test_a_partial_report_leaves_out_fig5_until_a_twin_has_trained(wise, tmp_path):
    """Fig. 5 compares a LambdaLoss ADORE system with its RankNet twin: before either has a training log, the report
    has no empty figure (nor matplotlib's empty-legend warning); once one has, the section is there."""
    import warnings

    exp, _ = wise
    out = tmp_path / "out"
    shutil.copytree(exp.out, out)
    recipe = json.loads((out / "recipe.json").read_text())
    recipe["systems"] += [{"name": "adore-ranknet+zeroshot", "kind": "train", "method": "adore", "base": "zeroshot",
                           "settings": {"adore_loss": "ranknet"}}]
    (out / "recipe.json").write_text(json.dumps(recipe))
    shutil.rmtree(out / "stages" / "train-adore+zeroshot")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = report_module.render(ReportContext(ExperimentResults(out), tmp_path / "r"))
    assert "Fig. 5 analogue" not in text
    shutil.copytree(exp.stage_dir("train-adore+zeroshot"), out / "stages" / "train-adore+zeroshot")
    assert "Fig. 5 analogue" in report_module.render(ReportContext(ExperimentResults(out), tmp_path / "r2"))


def test_fig4_draws_the_overlap_panel_only_where_a_system_tracked_it(wise, tmp_path):
    """Fig. 4a plots the static negatives' overlap with the current model's; a report where no system tracked it
    draws panel (b) alone and says why, instead of an empty axis; one tracked system brings both panels back;
    without dev evaluations, panel (a) is drawn alone."""
    from matplotlib.image import imread

    exp, _ = wise
    out = tmp_path / "out"
    shutil.copytree(exp.out, out)

    def fig4(where) -> tuple[str, tuple[int, ...]]:
        ctx = ReportContext(ExperimentResults(out), tmp_path / where)
        text = report_module.render(ctx).split("## Fig. 4 analogue")[1].split("\n## ")[0]
        return text, imread(tmp_path / where / "figures" / "fig4_overlap_and_dev.png").shape

    text, (height, width, _) = fig4("r")
    assert "Panel (a)" in text and "is not drawn" in text and width < 1.5 * height  # one panel
    log = out / "stages" / "train-rand" / "train_log.jsonl"
    with log.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": "track", "step": 2, "overlap@20": 0.4}) + "\n")
    text, (height, width, _) = fig4("r2")
    assert "is not drawn" not in text and "- rand: overlap@20 of its static negatives" in text
    assert width > 2 * height  # both panels
    for path in (out / "stages").glob("train-*/train_log.jsonl"):  # tracked, but no dev evaluations
        recs = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        path.write_text("".join(json.dumps(r) + "\n" for r in recs if r.get("kind") != "dev"), encoding="utf-8")
    text, (height, width, _) = fig4("r3")
    assert "Panel (b), dev quality per step, is not drawn" in text and "Dev curves" not in text
    assert "Panel (a)" not in text and width < 1.5 * height
