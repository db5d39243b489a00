"""`hardneg experiment` (stage caching, staleness) and `hardneg report` (its registered sections, the systems'
roles from the method specs). The SIGKILL-and-resume test is tests/reliability/test_experiment_kill.py."""

from __future__ import annotations

import csv
import errno
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import write_tiny_train
from hardneg.errors import HardnegError
from hardneg.experiment import Experiment, ExperimentResults, Recipe
from hardneg.experiment import report as report_module
from hardneg.experiment.context import ReportContext
from hardneg.experiment.figures import system_colours
from hardneg.experiment.sections.indexes import bytes_per_doc
from hardneg.experiment.sections.ranks import best_ranks
from hardneg.experiment.stages import portable, run_order, select_stages, stops_the_run
from hardneg.experiment.tables import Table, cell_value, fmt, fmt_p, marked, signed

TRAIN = {"max_steps": 2, "batch_size": 4, "topk": 8, "dev_fraction": 0.25, "dev_every": 1, "save_every": 1,
         "dev_pool": 0, "query_max_length": 16, "doc_max_length": 32, "warmup_ratio": 0.0, "lr": 1e-3}
ADORE = {"max_steps": 2, "batch_size": 4, "adore_topk": 8, "dev_fraction": 0.25, "dev_every": 1, "save_every": 1,
         "query_max_length": 16, "doc_max_length": 32, "lr": 1e-3, "metric": "mrr@10", "warmup_ratio": 0.0}


def tiny_data(folder: Path) -> Path:
    data = write_tiny_train(folder, filler=300)
    test = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}-0\t1" for i in range(6)]
    test += [f"q{i}\td{i}-2\t1" for i in range(6, 12)]  # documents no training query has: the unseen stratum
    (data / "qrels" / "test.tsv").write_text("\n".join(test) + "\n")
    return data


def recipe_dict(data: Path, model: Path, cache: Path, transfer: Path | None = None) -> dict:
    return {
        "name": "tiny", "data": str(data), "model": str(model), "cache_dir": str(cache),
        "train": dict(TRAIN), "adore": dict(ADORE),
        "eval": {"max_length": 32, "query_max_length": 16, "k": 50, "baselines": ["rand"]},
        "transfer": [f"{transfer}:test"] if transfer else [],
        "systems": [
            {"name": "bm25", "kind": "bm25"},
            {"name": "zeroshot", "kind": "zeroshot"},
            {"name": "rand", "method": "rand"},
            {"name": "star", "method": "star", "track_every": 1},
            {"name": "adore+zeroshot", "method": "adore"},
            {"name": "adore+star", "method": "adore", "base": "star"},
            {"name": "adore-ranknet+zeroshot", "method": "adore", "adore_loss": "ranknet"},
            {"name": "adore-pq8+zeroshot", "method": "adore", "index": "pq8"},
        ],
        "analysis": {"pairwise": {"topk": 20},
                     "pq": {"indexes": ["flat", "pq8"],
                            "systems": ["zeroshot", "adore+zeroshot", "adore-pq8+zeroshot"]},
                     "tsne": {"before": "zeroshot", "after": "adore+zeroshot", "top": 5}},
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("experiment")
    data = tiny_data(root / "data")
    transfer = root / "transfer"
    write_tiny_train(transfer)
    (transfer / "qrels" / "test.tsv").write_text("q0\td0-0\t1\nq1\td1-0\t1\n")
    raw = recipe_dict(data, tiny_model_dir, root / "cache", transfer)
    exp = Experiment(Recipe.from_dict(raw), root / "out", quiet=True)
    outcome = exp.run()
    return exp, raw, outcome


def test_every_stage_runs_and_records_itself(finished):
    exp, _, outcome = finished
    assert set(outcome) == set(exp.stages) and set(outcome.values()) == {"done"}
    for name in exp.stages:
        state = json.loads((exp.stage_dir(name) / "stage.json").read_text())
        assert state["status"] == "done" and state["key"] == exp.stages[name].key and state["attempts"] == 1
    assert (exp.stage_dir("train-adore+star") / "model" / "adore.json").is_file()
    metrics = json.loads((exp.stage_dir("test-rand") / "metrics.json").read_text())
    assert set(metrics) == {"RR@10", "R@100", "nDCG@10"}
    assert "transfer-star-transfer-test" in exp.stages


def test_rerun_skips_every_finished_stage(finished):
    exp, raw, _ = finished
    again = Experiment(Recipe.from_dict(raw), exp.out, quiet=True)
    assert [s.key for s in again.stages.values()] == [s.key for s in exp.stages.values()]
    outcome = again.run()
    assert {n for n, v in outcome.items() if v != "cached"} == {"report"}  # the report is always rewritten


def test_changed_setting_makes_exactly_its_dependents_stale(finished):
    exp, raw, _ = finished
    changed = json.loads(json.dumps(raw))
    changed["systems"][2]["lr"] = 5e-4  # rand
    status = dict(Experiment(Recipe.from_dict(changed), exp.out).status())
    stale = {n for n, s in status.items() if s.startswith("stale")} - {"report"}  # the report reads everything
    assert stale == {"train-rand", "test-rand", "transfer-rand-transfer-test", "pairwise-rand", "analysis-pairwise"}
    assert all(status[n] == "done" for n in status if n not in stale and n != "report")


def test_report_has_tables_and_nonempty_figures(finished):
    exp, _, _ = finished
    text = (exp.out / "report.md").read_text()
    for heading in ("Table 2 analogue", "Generalisation", "Table 1 analogue", "Fig. 4 analogue", "Fig. 5 analogue",
                    "Table 4 analogue", "Tables 3 and 5", "Fig. 6 analogue", "Findings",
                    "Negative selection: what the rules removed"):
        assert f"## {heading}" in text, heading
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        data = (exp.out / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, image
    # Fig. 3, 4, 5, 6 (rank scatter and t-SNE), training curves, per-query Δ, PQ size vs quality, negatives
    assert len(re.findall(r"!\[", text)) == 9
    tables = _tables(text)
    assert len(tables) >= 6
    for header, rows in tables:
        assert rows and all(len(r) == len(header) for r in rows)
    main = next(t for t in tables if t[0][:4] == ["system", "RR@10", "R@100", "nDCG@10"])
    values = {r[0]: r for r in main[1]}
    test_metrics = json.loads((exp.stage_dir("test-star") / "metrics.json").read_text())
    assert float(values["star"][3].rstrip("†‡*")) == pytest.approx(test_metrics["nDCG@10"], abs=5e-4)
    pairwise = json.loads((exp.stage_dir("analysis-pairwise") / "stage.json").read_text())["result"]
    table1 = next(t for t in tables if t[0] == ["system", "total", "top-20"])
    assert float(dict((r[0], r[1]) for r in table1[1])["rand"]) == pytest.approx(pairwise["rand"]["total"], abs=0.05)
    # the negatives table sums every selection event of a system's diagnostics file
    negatives = next(t for t in tables if t[0][:4] == ["system", "rules", "events", "candidates"])
    by_name = {r[0]: r for r in negatives[1]}
    assert "star" in by_name  # (plain ADORE filters nothing and records no events)
    for name in ("star",):
        events = json.loads((exp.stage_dir(f"train-{name}") / "negatives_diagnostics.json").read_text())["events"]
        assert by_name[name][1] == "plain top-k" and by_name[name][2] == str(len(events))
        assert by_name[name][3] == str(sum(e["candidates"] for e in events)) != "0"
    # RQ3's step-cost finding: the medians of Table 4's step times, ADORE systems against the others
    table4 = {r[0]: r for r in next(t for t in tables if t[0][:5] == ["system", "method", "steps", "batch",
                                                                      "step time (s)"])[1]}
    adore = [float(r[4]) for n, r in table4.items() if r[1] == "adore"]
    others = [float(r[4]) for n, r in table4.items() if r[1] != "adore"]
    cheap = re.search(r"ADORE step is cheap.*Here ([\d.]+) s/step .* vs ([\d.]+) s/step", text)
    assert adore and others and cheap, table4
    assert float(cheap.group(1)) == pytest.approx(np.median(adore), abs=0.011)
    assert float(cheap.group(2)) == pytest.approx(np.median(others), abs=0.011)


def _tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("| "):
                    break
                rows.append([c.strip() for c in row.strip("|").split("|")])
            tables.append((header, rows))
    return tables


NEW_FIGURES = ("training_curves", "per_query_delta", "pq_size_vs_quality", "fig6_rank_before_after")


@pytest.fixture(scope="module")
def records(finished, tmp_path_factory):
    """The finished experiment's records without its models: a folder report tests may write into."""
    dst = tmp_path_factory.mktemp("records") / "out"
    shutil.copytree(finished[0].out, dst, ignore=shutil.ignore_patterns(
        "model", "checkpoints", "tensorboard", "figures", "tables", "report.md"))
    return dst


def _number(text: str) -> tuple[float | None, int, str]:
    """A markdown cell's number, its decimals and its markers ("–" and words: None)."""
    m = re.fullmatch(r"(<?)([+-]?\d+(?:\.(\d+))?)([^\d]*)", text)
    if not m or text in ("–", "n/a"):
        return None, 0, ""
    return float(m.group(2)), len(m.group(3) or ""), m.group(4)


def test_report_cli_writes_png_svg_csv_and_latex(records):
    """`hardneg report RUN --latex --svg`: every figure as PNG and SVG, every markdown table as a CSV whose numbers
    are the table's (to its rounding) and a LaTeX tabular."""
    from typer.testing import CliRunner

    from hardneg.cli import app

    result = CliRunner().invoke(app, ["--quiet", "report", str(records), "--latex", "--svg"])
    assert result.exit_code == 0, result.output
    text = (records / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {f"figures/{n}.png" for n in NEW_FIGURES} <= set(images)
    for image in images:
        png = (records / image).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, image
        svg = (records / image).with_suffix(".svg").read_text()
        assert "<svg" in svg[:2000] and svg.rstrip().endswith("</svg>"), image
    tables = _tables(text)
    csvs = {p.stem: list(csv.reader(p.open(encoding="utf-8"))) for p in (records / "tables").glob("*.csv")}
    assert len(csvs) == len(tables) and {"table2_effectiveness", "per_query_delta", "training_curves"} <= set(csvs)
    for header, rows in tables:
        name, data = next((n, c) for n, c in csvs.items() if [h for h in c[0] if not h.endswith(" marks")] == header)
        assert len(data) == len(rows) + 1 and len(set(data[0])) == len(data[0]), name
        for row, line in zip(rows, data[1:], strict=True):
            cells = dict(zip(data[0], line, strict=True))
            for h, cell in zip(header, row, strict=True):
                value, digits, marks = _number(cell)
                if value is None:
                    assert cells[h] == ("" if cell in ("–", "n/a") else cell), (name, h)
                    continue
                assert float(cells[h]) == pytest.approx(value, abs=0.5 * 10**-digits + 1e-12), (name, h, cell)
                if cell.startswith("<"):
                    assert float(cells[h]) < value
                assert cells.get(f"{h} marks", "") == marks, (name, h)
        tex = (records / "tables" / f"{name}.tex").read_text()
        assert "\\begin{tabular}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
        assert tex.count(r" \\") == len(rows) + 1  # header and rows
    import pandas as pd

    main = pd.read_csv(records / "tables" / "table2_effectiveness.csv")
    test_metrics = json.loads((records / "stages" / "test-star" / "metrics.json").read_text())
    assert main.set_index("system").loc["star", "nDCG@10"] == pytest.approx(test_metrics["nDCG@10"], abs=1e-12)


@pytest.fixture(scope="module")
def drawn(records, tmp_path_factory):
    """A report written without --svg/--latex, and what each of its figures draws: {figure: {label: {colour, x, y}}}."""
    results = ExperimentResults(records)
    ctx = ReportContext(results, tmp_path_factory.mktemp("drawn"))
    report_module.write(ctx)
    return results, ctx.drawn, ctx.out


def test_report_without_flags_writes_no_svg_or_latex(drawn):
    out = drawn[2]
    assert {p.stem for p in (out / "figures").glob("*.png")} >= set(NEW_FIGURES)
    assert not list((out / "figures").glob("*.svg"))
    assert list((out / "tables").glob("*.csv")) and not list((out / "tables").glob("*.tex"))


def test_a_system_has_one_colour_in_every_figure(drawn):
    results, figures, _ = drawn
    colours = system_colours(results.names)
    assert len(set(colours.values())) == len(results.names)  # distinct, and fixed by the recipe's order
    assert system_colours(["a", "b"]) == {"a": colours[results.names[0]], "b": colours[results.names[1]]}
    for fig in figures.values():
        for label, item in fig.items():
            if label.split(":", 1)[-1] in colours:
                assert item["colour"] == colours[label.split(":", 1)[-1]], label
    shared = [n for n in results.names if sum(n in f for f in figures.values()) >= 2]
    assert {"star", "adore+star", "adore+zeroshot"} <= set(shared)
    assert figures["training_curves.png"]["star"]["colour"] == figures["per_query_delta.png"]["star"]["colour"]


def test_figures_plot_the_recorded_numbers(drawn):
    """Training curves = train_log.jsonl; per-query bars = sorted per-query Δ against rand; PQ points = the grid
    at 4·dim / M bytes; rank scatter = the t-SNE analysis' whole-corpus best ranks, which are the test runs' (up to
    float ties) and consistent with per-query RR@10."""
    results, figures, _ = drawn
    for name in ("rand", "star", "adore+star"):
        log = results.train_log(name)
        curves = figures["training_curves.png"]
        assert curves[f"0:{name}"]["y"] == pytest.approx([r["loss"] for r in log if r["kind"] == "train"])
        assert curves[f"1:{name}"]["y"] == pytest.approx([r["nDCG@10"] for r in log if r["kind"] == "dev"])
        assert curves[f"1:{name}"]["x"] == [r["step"] for r in log if r["kind"] == "dev"]
    star = results.per_query("star")["nDCG@10"]
    rand = results.per_query("rand")["nDCG@10"]
    ad = results.per_query("adore+star")["nDCG@10"]
    assert figures["per_query_delta.png"]["adore+star"]["y"] == pytest.approx(
        sorted((ad[q] - rand[q] for q in ad), reverse=True))
    assert figures["per_query_delta.png"]["star"]["y"] == pytest.approx(
        sorted((star[q] - rand[q] for q in star), reverse=True))
    grid = results.stage("analysis-pq")["result"]
    line = figures["pq_size_vs_quality.png"]["adore-pq8+zeroshot"]
    dim = grid["dims"]["adore-pq8+zeroshot"]
    assert dim == 32 and line["x"] == [8, 4 * dim]
    assert line["y"] == pytest.approx([grid["metrics"]["adore-pq8+zeroshot"][k]["nDCG@10"] for k in ("pq8", "flat")])
    ctx = ReportContext(results, results.dir)
    ranks = best_ranks(ctx, "adore+zeroshot", 50)
    rr = results.per_query("adore+zeroshot")["RR@10"]
    assert set(ranks) == set(rr)
    for q, rank in ranks.items():  # RR@10 is 1/best rank within the top 10
        assert rr[q] == pytest.approx(1 / rank if rank <= 10 else 0.0), q
    pts = figures["fig6_rank_before_after.png"]["adore+zeroshot"]
    whole = json.loads((results.dir / "stages" / "analysis-tsne" / "points.json").read_text())["best_ranks"]
    assert set(whole) == set(ranks)
    for i, system in enumerate(("zeroshot", "adore+zeroshot")):  # the runs' ranks, up to float32 near-ties
        run, run_ranks = results.run(system), best_ranks(ctx, system, 50)
        for q, rank in run_ranks.items():
            score = run[q][rank - 1][1] if rank <= 50 else run[q][-1][1]
            # the tiny model's scores differ in the 6th digit, where Faiss and numpy round apart: a band of ties
            band = [j + 1 for j, (_, sc) in enumerate(run[q]) if abs(sc - score) < 1e-4]
            if rank > 50 or max(band) == 50:  # not in the run's top 50, or tied with its last: as far down at least
                assert whole[q][i] >= min(band), (system, q)
            else:
                assert min(band) <= whole[q][i] <= max(band), (system, q)
    for (x, y), q in zip(zip(pts["x"], pts["y"], strict=True), sorted(whole), strict=True):  # jittered by ±7%
        assert 0.92 < x / whole[q][0] < 1.08 and 0.92 < y / whole[q][1] < 1.08, q


def test_fig6_is_drawn_from_records_without_the_test_runs(records, tmp_path):
    """A report from records alone (no test run is kept) still draws Fig. 6's scatter: the t-SNE analysis keeps
    every query's best ranks; it said the runs were missing."""
    from hardneg.experiment import write_report

    book = tmp_path / "book"
    shutil.copytree(records, book)
    for run in (book / "stages").glob("test-*/run.trec"):
        run.unlink()
    text = write_report(book).read_text()
    assert (book / "figures" / "fig6_rank_before_after.png").is_file() and "are missing" not in text
    assert "Ranks are over the whole corpus" in text


def test_report_sections_come_from_the_registry_in_order(records, tmp_path, monkeypatch):
    """The report is the registered sections in their order: a section registered at 125 lands between Tables 3/5
    (120) and Fig. 6 (130), its facts reach the findings' input, and a clashing name or order is refused."""
    from hardneg.experiment.sections import Section, registered, registry, section

    names = [s.name for s in registered()]
    assert names[:3] == ["effectiveness", "generalisation", "pairs"] and names[-2:] == ["pq", "ranks"]
    assert [s.order for s in registered()] == sorted(s.order for s in registered())
    monkeypatch.setattr(registry, "_SECTIONS", dict(registry._SECTIONS))  # the probe is gone after the test
    seen: dict = {}
    monkeypatch.setattr(report_module.Findings, "section", lambda self, facts: seen.update(facts) or Section())

    @section("probe", 125)
    def probe(ctx: ReportContext) -> Section:
        return Section(f"## Probe\n\n{len(ctx.per_query)} systems with test scores\n", {"probe": ctx.main_measure})

    with pytest.raises(ValueError, match="clashes with 'probe'"):
        section("probe", 126)(probe)
    with pytest.raises(ValueError, match="clashes with 'pq'"):
        section("other", 120)(probe)
    text = report_module.render(ReportContext(ExperimentResults(records), tmp_path))
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    i = heads.index("## Probe")
    assert heads[i - 1].startswith("## Tables 3 and 5") and heads[i + 1].startswith("## Fig. 6 analogue")
    assert "\n8 systems with test scores\n" in text and seen["probe"] == "nDCG@10" and "step_median" in seen


def _results_folder(tmp_path: Path, systems: list[dict], per_query: dict[str, dict[str, float]]) -> ExperimentResults:
    """A bare experiment folder: recipe.json with ``systems`` and a done test stage for each of ``per_query``."""
    folder = tmp_path / "exp"
    (folder / "stages").mkdir(parents=True)
    full = [{"kind": "train" if s.get("method") else s["kind"], "method": None, "base": None, "settings": {}, **s}
            for s in systems]
    (folder / "recipe.json").write_text(json.dumps({"name": "roles", "data": str(tmp_path / "no-data"),
                                                    "systems": full, "eval": {"measures": ["nDCG@10"]}}))
    for name, scores in per_query.items():
        stage = folder / "stages" / f"test-{name}"
        stage.mkdir()
        (stage / "stage.json").write_text(json.dumps({"status": "done"}))
        (stage / "per_query.json").write_text(json.dumps({"nDCG@10": scores}))
    return ExperimentResults(folder)


def test_roles_come_from_the_method_specs_not_the_names(tmp_path, monkeypatch):
    """A method the report has never heard of, declared with STAR's traits, plays STAR; Rand (sampled random
    negatives) is preferred as the random-negative reference over In-Batch even when listed after it."""
    from dataclasses import replace

    from hardneg.experiment.results import RANDOM_NEGATIVES, is_frozen_doc, is_refreshed, is_star
    from hardneg.experiment.sections.per_query import headline
    from hardneg.train import methods

    monkeypatch.setitem(methods._REGISTRY, "mystar", replace(methods.method_spec("star"), name="mystar"))
    systems = [{"name": "z", "kind": "zeroshot"}, {"name": "ib", "method": "inbatch"}, {"name": "r", "method": "rand"},
               {"name": "s", "method": "mystar"}, {"name": "a", "method": "adore", "base": "s"},
               {"name": "a-rn", "method": "adore", "base": "s", "settings": {"adore_loss": "ranknet"}},
               {"name": "a0", "method": "adore"}]
    scores = {q: 0.5 for q in ("q1", "q2")}
    results = _results_folder(tmp_path, systems, {n: scores for n in ("z", "ib", "r", "s", "a", "a-rn")})
    assert results.first_with(*RANDOM_NEGATIVES) == "r" and results.first_with(*RANDOM_NEGATIVES, among={"ib"}) == "ib"
    assert results.with_trait(is_star) == ["s"] and results.with_trait(is_refreshed) == []
    assert results.with_trait(is_frozen_doc) == ["a", "a-rn", "a0"] and not results.frozen_doc("s")
    assert [results.base_of(n) for n in ("a", "a0", "s", "z")] == ["s", "z", None, None]
    assert [results.is_plain_adore(n) for n in ("a", "a-rn")] == [True, False]
    assert headline(ReportContext(results, tmp_path / "report")) == ("r", ["s", "a"])


@pytest.mark.parametrize(("tested", "says"), [
    (("z", "s", "a0"), "Not judged yet: a has no test result (so far the best dense system by nDCG@10 is a0)."),
    (("z", "s", "a0", "a"), "Here: a0 nDCG@10 0.850 vs a 0.550 (p <0.001, Holm <0.001) → **disagrees**."),
    (("z", "s", "a0", "a", "close"), "Here: a0 nDCG@10 0.850 vs a 0.840 (p 0.799, Holm 0.799) → "
                                     "**direction disagrees, not significant**."),
    (("z", "s", "a"), "Here the best dense system by nDCG@10 is a → **agrees**."),
])
def test_adore_star_is_judged_best_only_once_it_is_tested(tmp_path, tested, says):
    """RQ2's "ADORE+STAR is the best system": a partial run without ADORE+STAR's test says so, not "disagrees";
    where another system is higher, a paired test says whether it is significantly so (it is a finding of the
    Holm family)."""
    from hardneg.experiment.findings import Findings

    systems = [{"name": "z", "kind": "zeroshot"}, {"name": "s", "method": "star"},
               {"name": "a0", "method": "adore", "base": "z"}, {"name": "a", "method": "adore", "base": "s"}]
    level = {"z": 0.2, "s": 0.4, "a0": 0.9, "a": 0.6 if "a0" in tested else 0.95}
    qids = [f"q{i}" for i in range(8)]
    scores = {n: {q: level[n] - 0.1 * (i % 2) for i, q in enumerate(qids)} for n in tested if n != "close"}
    if "close" in tested:  # a below a0 by 0.01 on average, with a noisy difference
        scores["a"] = {q: scores["a0"][q] - (0.11 if i < 4 else -0.09) for i, q in enumerate(qids)}
    results = _results_folder(tmp_path, systems, scores)
    findings = Findings(ReportContext(results, tmp_path / "r"))
    lines = [x if isinstance(x, str) else x.render(x.pvalues()) for x in findings._effectiveness({})]
    lines = [x for x in lines if "ADORE+STAR is the best system" in x]
    assert len(lines) == 1 and lines[0].endswith(says), lines


def test_adore_star_is_not_judged_best_in_a_recipe_without_it(tmp_path):
    """A recipe with no ADORE on STAR (NFCorpus's: ADORE on zero-shot only) makes no "ADORE+STAR is the best
    system" line: there is nothing to judge, so it is neither agreed with nor contradicted."""
    from hardneg.experiment.findings import Findings

    systems = [{"name": "z", "kind": "zeroshot"}, {"name": "a0", "method": "adore", "base": "z"}]
    results = _results_folder(tmp_path, systems, {n: {"q1": 0.5, "q2": 0.4} for n in ("z", "a0")})
    lines = [x if isinstance(x, str) else x.render(x.pvalues())
             for x in Findings(ReportContext(results, tmp_path / "r"))._effectiveness({})]
    assert lines and not [x for x in lines if "ADORE+STAR is the best system" in x]


def test_settings_sections_are_recipe_keys():
    """Each method that freezes the document tower reads its own recipe section, named after it (adore:)."""
    from hardneg.experiment.recipe import SETTINGS_SECTIONS

    assert SETTINGS_SECTIONS == ("train", "adore")
    assert set(SETTINGS_SECTIONS) <= set(Recipe.model_fields) and set(SETTINGS_SECTIONS) <= set(Recipe._input_keys)
    system = Recipe.from_dict({"name": "t", "data": "/nonexistent", "systems": [{"name": "a", "method": "adore"},
                                                                                {"name": "s", "method": "star"}]})
    assert [s.section for s in system.systems] == ["adore", "train"] and system.system("a").frozen_doc


def test_bytes_per_document_and_table_cells():
    assert [bytes_per_doc(k, 768) for k in ("flat", "pq48", "PQ96", "ivf100pq16", "ivfpq", "hnsw32", "factory:X")] \
        == [3072, 48, 96, 16, 96, 3072, None]
    assert bytes_per_doc("flat", None) is None
    t = Table("t", ["system", "m", "p", "Δ"], [["a_b", marked(fmt(0.12345), "†*"), fmt_p(0.0002), signed(-0.5)],
                                               ["c", fmt(float("nan")), fmt_p(float("nan")), "7"]])
    assert t.markdown.splitlines()[2] == "| a_b | 0.123†* | <0.001 | -0.500 |"
    assert list(csv.reader(t.csv().splitlines())) == [["system", "m", "m marks", "p", "Δ"],
                                                      ["a_b", "0.12345", "†*", "0.0002", "-0.5"],
                                                      ["c", "", "", "", "7"]]
    assert cell_value("7") == 7 and cell_value("wins") == "wins"
    assert r"a\_b & 0.123$^{\dagger}$$^{*}$ & $<$0.001 & -0.500 \\" in t.latex()
    assert r"system & m & p & $\Delta$ \\" in t.latex()


@pytest.mark.parametrize(("change", "message"), [
    ({"systems": [{"name": "x", "method": "adore", "base": "later"}, {"name": "later", "method": "rand"}]},
     "listed before"),
    ({"systems": [{"name": "a", "kind": "zeroshot"}, {"name": "a", "kind": "bm25"}]}, "unique"),
    ({"systems": [{"name": "r", "method": "rand", "out": "x"}]}, "set by the runner"),
    ({"systems": [{"name": "r", "method": "nosuch"}]}, "method must be one of"),
    ({"systems": [{"name": "r", "method": "rand", "bogus": 1}]}, "unknown training setting"),
    ({"eval": {"baselines": ["missing"]}}, "no system named"),
    ({"colour": "red"}, "unknown recipe key"),
])
def test_bad_recipes_fail_before_compute(tmp_path, change, message):
    raw = {"name": "t", "data": str(tmp_path), "model": "minilm", "systems": [{"name": "zeroshot", "kind": "zeroshot"}],
           **change}
    with pytest.raises(HardnegError, match=message):
        Recipe.from_dict(raw)


def test_shipped_recipes_validate():
    """Every recipe in configs/ passes the dry-run checks (the MS MARCO ones are not runnable here)."""
    configs = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
    assert {p.stem for p in configs} >= {"demo", "scifact"}
    for path in configs:
        exp = Experiment(Recipe.from_yaml(path, data_dir="/data"), "/nonexistent/out")
        kinds = ("index-", "train-", "test-", "transfer-", "pairwise-", "pq-", "analysis-", "wise-", "report")
        assert "report" in exp.stages and all(s.startswith(kinds) for s in exp.stages)


STAR_DEMO = """\
name: demo
description: a short STAR + ADORE run on SciFact (CPU, minutes), ending with the comparison table
data: "{data_dir}/scifact"
model: minilm
seed: 42
train:
  preset: cpu-demo           # batch 16, 60 steps, q/d 64/128 tokens
  dev_every: 30
  save_every: 30
adore:
  max_steps: 60
  batch_size: 32
  lr: 1.0e-5
  query_max_length: 64
  doc_max_length: 256
  dev_every: 30
  save_every: 30
eval:
  split: test
  max_length: 256
  k: 1000
  measures: [RR@10, R@100, nDCG@10]
  baselines: [zeroshot]
systems:
  - {name: bm25, kind: bm25}
  - {name: zeroshot, kind: zeroshot}
  - {name: star, method: star}
  - {name: adore+star, method: adore, base: star}
"""  # configs/demo.yaml as it was when the stage key below was recorded


def test_settings_added_later_leave_stage_keys_unchanged_at_their_default(tmp_path):
    """A setting added after experiments existed keys a training stage only when it is set: at its default
    it computes what the stage did before, so finished stages stay finished: the STAR demo recipe's train-star
    key equals that of the version before those settings existed (computed there with data_dir /data)."""
    from hardneg.train.resume_keys import LATER_DEFAULTS

    path = tmp_path / "star-demo.yaml"
    path.write_text(STAR_DEMO)
    exp = Experiment(Recipe.from_yaml(path, data_dir="/data"), "/nonexistent/out")
    assert exp.stages["train-star"].legacy_key == "51d08637c6cbccb0"  # what folders of then hold
    settings = exp.stages["train-star"].settings
    assert not set(LATER_DEFAULTS) & set(settings) and "device" not in settings and "report_to" not in settings
    text = path.read_text().replace("{name: star, method: star}", "{name: star, method: star, relative_margin: 0.05}")
    assert "relative_margin" in text
    changed_path = tmp_path / "demo.yaml"
    changed_path.write_text(text)
    changed = Experiment(Recipe.from_yaml(changed_path, data_dir="/data"), "/nonexistent/out").stages["train-star"]
    assert changed.settings["relative_margin"] == 0.05 and changed.key != exp.stages["train-star"].key


def test_stage_keys_name_the_experiment_and_data_folders_not_where_they_lie(tmp_path):
    """A stage's key names its paths relative to ``{out}`` and ``{data_dir}``: the same recipe run into another
    folder, with the data reached by another path, has every stage's key unchanged; the keys as they were
    (absolute paths: :attr:`Stage.legacy_key`) differ, as they did."""
    path = tmp_path / "star-demo.yaml"
    path.write_text(STAR_DEMO)
    here = Experiment(Recipe.from_yaml(path, data_dir="/data"), "/scratch/job1/out")
    there = Experiment(Recipe.from_yaml(path, data_dir="../shared/data/"), "runs/moved")
    assert [s.key for s in here.stages.values()] == [s.key for s in there.stages.values()]
    assert here.stages["test-star"].settings["model"] == "/scratch/job1/out/stages/train-star/model"
    assert here.stages["train-star"].legacy_key != there.stages["train-star"].legacy_key
    path.write_text(STAR_DEMO.replace("seed: 42", "seed: 7"))
    changed = Experiment(Recipe.from_yaml(path, data_dir="/data"), "/scratch/job1/out")
    assert changed.stages["train-star"].key != here.stages["train-star"].key  # settings still key it


def test_portable_rewrites_only_whole_leading_folders():
    folders = {"out": "/w/exp", "data_dir": "/w"}
    assert portable({"a": ["/w/exp/stages/m", "/w/scifact:test", "/w/expx/m", "/wx", "/w"], "b": 3},
                    folders) == {"a": ["{out}/stages/m", "{data_dir}/scifact:test", "{data_dir}/expx/m", "/wx",
                                       "{data_dir}"], "b": 3}
    assert portable("rel/out/m", {"out": "rel/out", "data_dir": ""}) == "{out}/m"


def test_a_moved_experiment_keeps_its_finished_stages(finished, tmp_path):
    exp, raw, _ = finished
    moved = tmp_path / "moved"
    shutil.copytree(exp.out, moved)
    again = Experiment(Recipe.from_dict(raw), moved, quiet=True)
    status = dict(again.status())
    assert all(v == "done" for n, v in status.items() if n != "report"), status


def test_folders_keyed_before_keys_were_portable_stay_done(finished, tmp_path):
    """A stage.json holding the key over absolute paths (as every folder made before portable keys) is read
    back as done where it lies; one with any other key is stale."""
    exp, raw, _ = finished
    old = tmp_path / "old"
    shutil.copytree(exp.out, old)
    again = Experiment(Recipe.from_dict(raw), old, quiet=True)
    for name, stage in again.stages.items():
        path = again.stage_dir(name) / "stage.json"
        if path.is_file():
            state = json.loads(path.read_text())
            path.write_text(json.dumps({**state, "key": stage.legacy_key}))
    assert all(v == "done" for n, v in again.status() if n != "report")
    assert set(again.run(only=["test-rand"], records=tmp_path / "records").values()) == {"cached"}
    recorded = json.loads((tmp_path / "records" / "stages" / "test-rand" / "stage.json").read_text())
    assert recorded["key"] == again.stages["test-rand"].key  # recorded under the key that holds anywhere
    path = again.stage_dir("test-rand") / "stage.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "key": "0123456789abcdef"}))
    assert dict(again.status())["test-rand"].startswith("stale")


def _recipe_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: t\ndata: {tmp_path}\n{text}")
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("modle: minilm\nsystems: [{name: zeroshot, kind: zeroshot}]\n",
     r"unknown recipe key 'modle' \(did you mean 'model'\?\); allowed: name, data, model, "),
    ("systems: [{name: zeroshot, kind: zeroshot}]\neval: {measure: [RR@10]}\n",
     r"eval: unknown key 'measure' \(did you mean 'measures'\?\); allowed: split, "),
    ("systems: [{name: zeroshot, kind: zeroshot}]\nanalysis: {pairwize: {topk: 5}}\n",
     r"analysis: unknown key 'pairwize' \(did you mean 'pairwise'\?\)"),
    ("systems: [{name: zeroshot, kind: zeroshot}]\nseed: forty-two\n", r"seed: input should be a valid integer"),
    ("systems: [{name: zeroshot, kind: zeroshot}]\neval: {k: lots}\n", r"eval\.k: input should be a valid integer"),
    ("systems: [{name: zeroshot, kind: zeroshot}]\nanalysis: {pairwise: {topk: [1]}}\n",
     r"analysis\.pairwise\.topk: input should be a valid integer"),
    ("systems: [{name: zeroshot, kind: zeroshot}]\ntrain: [lr, 1]\n", r"train: input should be a valid dictionary"),
    ("systems: [{name: zeroshot, kind: zeroshot}, {name: bm25, kind: bm25}, {name: x, method: nosuch}]\n",
     r"systems\[2\]\.method: method must be one of inbatch, rand, .*adore, not 'nosuch'"),
    ("systems: [{name: zeroshot, kind: dense}]\n", r"systems\[0\]\.kind: kind must be one of bm25, zeroshot, train"),
    ("systems: [{name: zeroshot, kind: zeroshot}, zeroshot]\n", r"systems\[1\]: must be a mapping with a 'name'"),
    ("systems: [{name: z, kind: zeroshot, base: star}]\n", r"systems\[0\]\.base: 'base' is for ADORE systems"),
    ("systems: [{name: zeroshot, kind: zeroshot}]\neval: {baselines: [rand]}\n",
     r"eval\.baselines\[0\]: no system named 'rand'; systems: zeroshot"),
])
def test_recipe_schema_errors_name_the_file_and_the_key(tmp_path, text, message):
    path = _recipe_file(tmp_path, text)
    with pytest.raises(HardnegError, match=rf"^{re.escape(str(path))}: {message}"):
        Recipe.from_yaml(path)


def test_recipe_types_and_defaults(tmp_path):
    path = _recipe_file(tmp_path, "seed: '7'\nsystems: [{name: zeroshot, kind: zeroshot}, {name: r, method: rand}]\n"
                                  "eval: {k: 10}\nanalysis: {pairwise: }\n")
    recipe = Recipe.from_yaml(path)
    assert recipe.seed == 7 and recipe.eval.k == 10 and recipe.eval.measures == ["RR@10", "R@100", "nDCG@10"]
    assert recipe.system("r").kind == "train" and recipe.system("zeroshot").settings == {}
    saved = recipe.to_dict()  # what recipe.json records: defaults of eval filled in, analysis as given
    assert saved["eval"]["query_max_length"] == 64 and saved["analysis"] == {"pairwise": None}
    assert saved["systems"][1] == {"name": "r", "kind": "train", "method": "rand", "base": None, "settings": {}}
    assert "analysis-pairwise" in Experiment(recipe, tmp_path / "out").stages


def test_train_sections_go_to_train_config_untouched(tmp_path, monkeypatch):
    """`train:`/`adore:` and a system's own keys are TrainConfig settings: the recipe hands them on as written
    (YAML reads `1e-4` without a dot as a string; converting it is TrainConfig's business)."""
    from hardneg.train.config import TrainConfig

    path = _recipe_file(tmp_path, "train: {lr: 1e-4, batch_size: 8}\nadore: {lr: 2.0e-5}\n"
                                  "systems: [{name: zeroshot, kind: zeroshot}]\n")
    recipe = Recipe.from_yaml(path)
    lr = yaml.safe_load("lr: 1e-4")["lr"]
    assert recipe.train == {"lr": lr, "batch_size": 8} and recipe.adore == {"lr": 2.0e-5}
    seen = []
    original = TrainConfig.from_dict.__func__
    monkeypatch.setattr(TrainConfig, "from_dict", classmethod(lambda cls, d: seen.append(d) or original(cls, d)))
    rand = recipe.system("zeroshot").model_copy(update={"name": "r", "kind": "train", "method": "rand"})
    recipe.train_config(rand, tmp_path / "out")
    adore = rand.model_copy(update={"method": "adore", "settings": {"adore_topk": 5}})
    recipe.train_config(adore, tmp_path / "out")
    assert seen == [{"seed": 42, "lr": lr, "batch_size": 8}, {"seed": 42, "lr": 2.0e-5, "adore_topk": 5}]


def test_device_flag_replaces_the_recipe_key_and_leaves_every_stage_key_alone(tmp_path, monkeypatch):
    """`hardneg experiment --device`: every training config and encoder gets it, recipe.json records it as it
    records the recipe's key, and no stage key changes (a CPU run keeps its keys; the STAR demo's train-star key
    is the one recorded above). A recipe asking for CUDA runs on a CPU-only machine with --device cpu."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "star-demo.yaml"
    path.write_text(STAR_DEMO)
    plain = Experiment(Recipe.from_yaml(path, data_dir="/data"), tmp_path / "a")
    flagged = Experiment(Recipe.from_yaml(path, data_dir="/data", device="cpu"), tmp_path / "a")
    assert {n: s.key for n, s in flagged.stages.items()} == {n: s.key for n, s in plain.stages.items()}
    assert flagged.stages["train-star"].legacy_key == "51d08637c6cbccb0"
    assert plain.recipe.device == "auto" and flagged.recipe.to_dict()["device"] == "cpu"
    star = flagged.recipe.system("star")
    assert flagged.recipe.train_config(star, tmp_path / "t").device == "cpu" and flagged.device.type == "cpu"
    cuda = tmp_path / "cuda.yaml"
    cuda.write_text(STAR_DEMO.replace("seed: 42\n", "seed: 42\ndevice: cuda\n"))
    with pytest.raises(HardnegError, match=r"cuda\.yaml: device: --device cuda was asked for, but"):
        Recipe.from_yaml(cuda, data_dir="/data")
    moved = Experiment(Recipe.from_yaml(cuda, data_dir="/data", device="cpu"), tmp_path / "a")
    assert {n: s.key for n, s in moved.stages.items()} == {n: s.key for n, s in plain.stages.items()}
    with pytest.raises(HardnegError, match=r"^--device cuda:1 was asked for, but"):
        Recipe.from_yaml(path, data_dir="/data", device="cuda:1")
    with pytest.raises(HardnegError, match=r"^--device 'gpu' is not a device"):
        Recipe.from_yaml(path, data_dir="/data", device="gpu")


def test_experiment_cli_device_flag(tmp_path, tiny_model_dir, monkeypatch):
    import torch
    from typer.testing import CliRunner

    from hardneg.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = tiny_data(tmp_path / "data")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "data": str(data), "model": str(tiny_model_dir), "device": "cuda",
                                    "cache_dir": str(tmp_path / "cache"),
                                    "systems": [{"name": "bm25", "kind": "bm25"}]}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["--quiet", "experiment", str(path), "--out", str(out), "--device", "cuda",
                                      "--dry-run"])
    assert isinstance(result.exception, HardnegError) and "--device cuda was asked for" in str(result.exception)
    result = CliRunner().invoke(app, ["--quiet", "experiment", str(path), "--out", str(out), "--device", "cpu",
                                      "--only", "test-bm25"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "recipe.json").read_text())["device"] == "cpu"
    assert json.loads((out / "stages" / "test-bm25" / "stage.json").read_text())["status"] == "done"
    # the run lists the recipe's stages (even with --only) so a report on the folder knows what is left
    assert json.loads((out / "plan.json").read_text())["stages"] == ["test-bm25", "report"]
    states = {"test-bm25": json.loads((out / "stages" / "test-bm25" / "stage.json").read_text())}
    assert report_module.stages_line(out, states) == "stages done: all 1"  # the report is not a stage left to do


def test_only_globs_take_plus_in_system_names_literally(tmp_path, tiny_model_dir):
    """`--only 'transfer-adore+star-*'`: a '+' in a system name is a character, not a regex quantifier."""
    data = tiny_data(tmp_path / "data")
    transfer = write_tiny_train(tmp_path / "transfer")
    exp = Experiment(Recipe.from_dict(recipe_dict(data, tiny_model_dir, tmp_path / "cache", transfer)), tmp_path / "o")
    picked = select_stages(exp.stages, ["transfer-adore+star-*"])
    assert [n for n in picked if n.startswith("transfer-")] == ["transfer-adore+star-transfer-test"]
    assert {"train-star", "train-adore+star"} <= set(picked) and "train-rand" not in picked
    with pytest.raises(HardnegError, match="no stage matches 'test-adore[+]nothing'"):
        select_stages(exp.stages, ["test-adore+nothing"])


def test_run_order_finishes_each_system_before_the_next_one_trains(tmp_path, tiny_model_dir):
    """The plan lists every training before any test; the run order puts each system's test and transfer stages
    right after its training (a grid stopped part-way leaves whole rows; so do its pairwise and PQ numbers: a
    grid split over jobs never needs every model at once), keeps dependencies first, the report
    last, and with --only runs just the selection."""
    data = tiny_data(tmp_path / "data")
    transfer = write_tiny_train(tmp_path / "transfer")
    exp = Experiment(Recipe.from_dict(recipe_dict(data, tiny_model_dir, tmp_path / "cache", transfer)), tmp_path / "o")
    plan = list(exp.stages)
    assert plan.index("test-star") > plan.index("train-adore+star")  # what the order changes
    order = run_order(exp.stages, plan)
    assert sorted(order) == sorted(plan) and order[-1] == "report"
    for i, name in enumerate(order):
        assert set(exp.stages[name].deps) <= set(order[:i]), name
    trains = [i for i, n in enumerate(order) if n.startswith("train-")]
    for i, j in zip(trains, [*trains[1:], len(order)], strict=True):
        system = order[i].removeprefix("train-")
        finishing = [n for n in plan if n in (f"test-{system}", f"pairwise-{system}", f"pq-{system}")
                     or n.startswith(f"transfer-{system}-")]  # the analyses' numbers too, while the model is here
        assert finishing and set(finishing) <= set(order[i:j]), (system, order[i:j])
    # a model's dependants train right after it (and its tests), before a system that does not build on it: the
    # plan lists ADORE on zero-shot first, the order takes ADORE on STAR straight after STAR
    assert plan.index("train-adore+zeroshot") < plan.index("train-adore+star")
    star, child = order.index("train-star"), order.index("train-adore+star")
    assert child < order.index("train-adore+zeroshot")
    assert not any(n.startswith("train-") for n in order[star + 1:child]), order[star:child]
    # a job resumed after a base finished trains what builds on it before any system that starts afresh
    resumed = run_order(exp.stages, plan, {"train-star"})
    assert next(n for n in resumed if n.startswith("train-") and n != "train-star") == "train-adore+star"
    picked = select_stages(exp.stages, ["test-adore+star"])
    assert run_order(exp.stages, picked) == ["train-star", "train-adore+star", "test-adore+star"]
    # stages already done are read back first, so what they unblock runs before the next training
    finished = {"train-star", "train-adore+star"}
    order = run_order(exp.stages, plan, finished)
    assert order[:2] == ["train-star", "train-adore+star"]
    next_train = next(i for i, n in enumerate(order) if i >= 2 and n.startswith("train-"))
    assert {"test-star", "test-adore+star", "transfer-adore+star-transfer-test"} <= set(order[2:next_train])


def _two_test_recipe(tmp_path: Path, model: Path) -> dict:
    """Two untrained systems on the tiny data: stages ``test-zeroshot``, ``test-bm25`` (in that order), ``report``."""
    data = tiny_data(tmp_path / "data")
    return {**recipe_dict(data, model, tmp_path / "cache"), "analysis": {},
            "systems": [{"name": "zeroshot", "kind": "zeroshot"}, {"name": "bm25", "kind": "bm25"}],
            "eval": {"max_length": 32, "query_max_length": 16, "k": 50}}


@pytest.mark.parametrize(("exc", "stops"), [
    (RuntimeError("CUDA error: device-side assert triggered"), True),
    (RuntimeError("NCCL error in: ProcessGroupNCCL.cpp, unhandled cuda error"), True),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),  # the next may fit
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.ENOENT, "No such file"), False),
    (RuntimeError("disk on fire"), False),
    (HardnegError("bad input"), False),
])
def test_keep_going_stops_on_errors_every_later_stage_would_share(exc, stops):
    assert stops_the_run(exc) is stops


def test_keep_going_stops_at_a_dead_gpu_and_leaves_the_stage_to_resume(tmp_path, tiny_model_dir):
    raw = _two_test_recipe(tmp_path, tiny_model_dir)

    def dead(folder):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    exp = Experiment(Recipe.from_dict(raw), tmp_path / "out", quiet=True)
    exp.stages["test-zeroshot"].fn = dead
    with pytest.raises(RuntimeError, match="illegal memory access"):
        exp.run(keep_going=True)
    assert not exp.stage_dir("test-bm25").exists()  # not run on a dead device, not recorded as its failure
    state = json.loads((exp.stage_dir("test-zeroshot") / "stage.json").read_text())
    assert state["status"] == "running"  # resumes on the next run, as after a crash


def test_a_killed_attempt_still_counts_its_wall_clock(tmp_path, tiny_model_dir, monkeypatch):
    """The heartbeat keeps a running stage's seconds in stage.json: after an attempt dies (here Ctrl-C, as a
    session's end or the OOM killer would), the resumed attempt adds its own to them."""
    import threading
    import time

    from hardneg.experiment import execute

    monkeypatch.setattr(execute, "HEARTBEAT_SECONDS", 0.02)
    exp = Experiment(Recipe.from_dict(_two_test_recipe(tmp_path, tiny_model_dir)), tmp_path / "out", quiet=True)
    path = exp.stage_dir("test-bm25") / "stage.json"
    seen = []

    def killed(folder):
        time.sleep(0.3)
        seen.append(json.loads(path.read_text()))  # what a kill here would leave
        raise KeyboardInterrupt

    exp.stages["test-bm25"].fn = killed
    with pytest.raises(KeyboardInterrupt):
        exp.run(only=["test-bm25"])
    left = json.loads(path.read_text())
    # to the end of the attempt (written as it died), not only to its last beat
    assert left["status"] == "running" and left["attempts"] == 1 and left["seconds"] >= 0.3
    assert seen[0]["seconds"] >= 0.2 and seen[0]["key"] == exp.stages["test-bm25"].key
    assert not [t for t in threading.enumerate() if t.name == "hardneg-stage-heartbeat"]  # stopped with the stage

    def quick(folder):
        return {"ok": 1}

    exp.stages["test-bm25"].fn = quick
    assert exp.run(only=["test-bm25"])["test-bm25"] == "done"
    done = json.loads(path.read_text())
    assert done["status"] == "done" and done["attempts"] == 2 and done["seconds"] >= left["seconds"]


def test_a_stage_keeps_its_cpu_time_over_attempts(tmp_path, tiny_model_dir, monkeypatch):
    """stage.json keeps the CPU time of the stage's process (``cpu_seconds``, all attempts; Table 4's "CPU", which
    tells a stage that shared the cores from one that had them), and the threads it ran with. An attempt killed
    mid-way counts up to its end; a stage.json from before hardneg kept CPU time sums none, rather than a part."""
    import time

    import torch

    from hardneg.experiment import execute

    monkeypatch.setattr(execute, "HEARTBEAT_SECONDS", 0.02)
    exp = Experiment(Recipe.from_dict(_two_test_recipe(tmp_path, tiny_model_dir)), tmp_path / "out", quiet=True)
    path = exp.stage_dir("test-bm25") / "stage.json"

    def busy(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    def killed(folder):
        busy(0.3)
        raise KeyboardInterrupt

    exp.stages["test-bm25"].fn = killed
    with pytest.raises(KeyboardInterrupt):
        exp.run(only=["test-bm25"])
    left = json.loads(path.read_text())
    assert left["status"] == "running" and left["cpu_seconds"] >= 0.3
    assert left["threads"] == torch.get_num_threads()

    def quick(folder):
        busy(0.2)
        return {"ok": 1}

    exp.stages["test-bm25"].fn = quick
    assert exp.run(only=["test-bm25"])["test-bm25"] == "done"
    done = json.loads(path.read_text())
    assert done["attempts"] == 2 and done["cpu_seconds"] >= left["cpu_seconds"] + 0.2
    # an interrupted attempt from before the CPU time was kept: its share is unknown, so no total is claimed
    path.write_text(json.dumps({k: v for k, v in {**left, "seconds": 5.0}.items() if k != "cpu_seconds"}))
    assert exp.run(only=["test-bm25"])["test-bm25"] == "done"
    assert "cpu_seconds" not in json.loads(path.read_text())


def test_dry_run_tells_a_running_stage_from_one_a_killed_run_left(tmp_path, tiny_model_dir):
    """A killed run leaves its stage ``running`` in stage.json; ``--dry-run`` calls it running only while the
    process holding the experiment's lock lives and the stage's heartbeat is fresh, else interrupted. A holder on
    another host cannot be looked up: the heartbeat alone decides."""
    import os
    import socket
    import subprocess
    import sys

    from hardneg.experiment import execute
    from hardneg.locks import holder_alive, lock_path_for, output_lock

    exp = Experiment(Recipe.from_dict(_two_test_recipe(tmp_path, tiny_model_dir)), tmp_path / "out", quiet=True)
    path = exp.stage_dir("test-bm25") / "stage.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"name": "test-bm25", "key": exp.stages["test-bm25"].key, "status": "running",
                                "attempts": 1, "seconds": 5.0}))
    silent = execute.SILENT_BEATS * execute.HEARTBEAT_SECONDS

    def status(name="test-bm25"):
        return dict(exp.status())[name]

    assert holder_alive(exp.out) is False  # no lock file: nothing runs
    assert status() == "interrupted (resumes)" and status("test-zeroshot") == "todo"
    with output_lock(exp.out):  # this (live) process runs the experiment
        assert holder_alive(exp.out) is True
        assert status() == "running"
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - silent - 1))
        assert status() == "interrupted (resumes)"  # the live run is on another stage: this one was killed before
    lock = lock_path_for(exp.out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))  # as a SIGKILL leaves it
    path.touch()
    assert holder_alive(exp.out) is False and status() == "interrupted (resumes)"
    lock.write_text(json.dumps({"host": "another-node", "pid": 1}))
    assert holder_alive(exp.out) is None and status() == "running"  # fresh heartbeat
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime - silent - 1))
    assert status() == "interrupted (resumes)"


def test_keep_going_records_a_failed_stage_skips_its_dependents_and_resumes_it(tmp_path, tiny_model_dir,
                                                                                 monkeypatch):
    """`--keep-going`: the failing stage is `failed` in its stage.json with the error, what needs it is skipped,
    the rest runs; the next run resumes it. Without the flag the first failure stops the run."""
    from typer.testing import CliRunner

    from hardneg.cli import app

    raw = _two_test_recipe(tmp_path, tiny_model_dir)

    def broken(folder):
        raise RuntimeError("disk on fire")

    exp = Experiment(Recipe.from_dict(raw), tmp_path / "out", quiet=True)
    real, exp.stages["test-zeroshot"].fn = exp.stages["test-zeroshot"].fn, broken
    with pytest.raises(RuntimeError, match="disk on fire"):
        exp.run()
    assert not exp.stage_dir("test-bm25").exists()  # the run stopped at the failure
    outcome = exp.run(keep_going=True)
    assert outcome == {"test-zeroshot": "failed", "test-bm25": "done", "report": "skipped"}
    state = json.loads((exp.stage_dir("test-zeroshot") / "stage.json").read_text())
    assert state["status"] == "failed" and state["error"] == "RuntimeError: disk on fire" and state["attempts"] == 2
    assert not (exp.out / "report.md").exists()
    exp.stages["test-zeroshot"].fn = real
    assert exp.run(keep_going=True) == {"test-zeroshot": "done", "test-bm25": "cached", "report": "done"}
    assert json.loads((exp.stage_dir("test-zeroshot") / "stage.json").read_text())["attempts"] == 3
    # the command: the other stages run, then exit 1 naming the failed stage
    init = Experiment.__init__

    def breaking_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.stages["test-zeroshot"].fn = broken

    monkeypatch.setattr(Experiment, "__init__", breaking_init)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["--quiet", "experiment", str(recipe_file), "-o", str(tmp_path / "cli"),
                                      "--keep-going"])
    assert result.exit_code == 1, result.output
    assert "1 stage(s) failed (test-zeroshot" in result.output and "1 skipped" in result.output
    assert json.loads((tmp_path / "cli" / "stages" / "test-bm25" / "stage.json").read_text())["status"] == "done"


def test_records_carry_a_grid_to_a_fresh_folder_and_rerun_only_what_a_stage_needs(finished, tmp_path):
    """--records: every finished stage's small files go to the records folder (not its model); a fresh folder
    run with them runs no finished stage, and the report from the records alone has the same numbers; a stage
    still to run there whose training was taken from the records trains it again first, and only it."""
    from hardneg.experiment import write_report
    from hardneg.experiment.records import RESTORED

    exp, raw, _ = finished
    book = tmp_path / "records"
    outcome = Experiment(Recipe.from_dict(raw), exp.out, quiet=True).run(records=book)
    assert {v for n, v in outcome.items() if n != "report"} == {"cached"}
    kept = book / "stages" / "train-rand"
    assert (kept / "summary.json").is_file() and not (kept / "model").exists()
    assert "model/" in json.loads((kept / "stage.json").read_text())["left_out"]
    assert "run.trec" in json.loads((book / "stages" / "test-rand" / "stage.json").read_text())["left_out"]
    assert not (book / "stages" / "test-rand" / "run.trec").exists()  # a run: its per-query scores are kept
    assert json.loads((book / "stages" / "test-rand" / "per_query.json").read_text()) == \
        json.loads((exp.stage_dir("test-rand") / "per_query.json").read_text())

    fresh = Experiment(Recipe.from_dict(raw), tmp_path / "fresh", quiet=True)
    assert {s for n, s in fresh.status(records=book) if n != "report"} == {"done (record)"}
    outcome = fresh.run(records=book)
    assert {v for n, v in outcome.items() if n != "report"} == {"cached"}
    assert json.loads((fresh.stage_dir("test-rand") / "stage.json").read_text())[RESTORED] == str(book)
    write_report(book)
    theirs = json.loads((exp.out / "results.json").read_text())["systems"]
    ours = json.loads((book / "results.json").read_text())["systems"]
    assert {n: r["nDCG@10"] for n, r in ours.items()} == {n: r["nDCG@10"] for n, r in theirs.items()}

    lost = "transfer-rand-transfer-test"  # a stage the records lack: it needs rand's model, which they never hold
    shutil.rmtree(book / "stages" / lost)
    shutil.rmtree(fresh.stage_dir(lost))
    listed = Experiment(Recipe.from_dict(raw), tmp_path / "fresh", quiet=True).status(records=book)
    states = dict(listed)  # --dry-run says what the run below will do, in its order
    assert states["train-rand"] == "rerun (files needed)" and states[lost] == "todo"
    assert {n for n, s in listed if s not in ("done", "done (record)")} == {"train-rand", lost}
    order = [n for n, _ in listed]
    assert order.index("train-rand") < order.index(lost)
    again = Experiment(Recipe.from_dict(raw), tmp_path / "fresh", quiet=True).run(records=book)
    assert {n for n, v in again.items() if v != "cached"} == {"train-rand", lost, "report"}
    assert list(again) == order  # the run took the stages in the order the dry run listed (one plan)
    assert (fresh.stage_dir("train-rand") / "model").is_dir()
    assert RESTORED not in json.loads((fresh.stage_dir("train-rand") / "stage.json").read_text())
    assert (book / "stages" / lost / "metrics.json").is_file()  # recorded as it finished


def test_needed_again_follows_what_each_stage_that_runs_reads():
    from hardneg.experiment.records import needed_again
    from hardneg.experiment.stages import Stage

    def st(name, deps, records=False):
        return Stage(name, {}, deps, lambda f: {}, reads_records=records)

    graph = {s.name: s for s in [st("train-a", []), st("test-a", ["train-a"]), st("train-b", ["train-a"]),
                                 st("test-b", ["train-b"]), st("pair", ["test-a", "test-b"]),
                                 st("gather", ["test-a", "test-b"], records=True),
                                 st("report", ["pair", "gather"], records=True)]}
    restored = {"train-a", "test-a", "train-b", "test-b"}
    assert needed_again(graph, ["pair"], restored) == restored
    assert needed_again(graph, ["test-b"], restored) == {"train-b", "train-a"}  # b's base trains again for it
    assert needed_again(graph, ["report", "gather"], restored) == set()  # they read records only
    assert needed_again(graph, ["test-b"], {"test-a"}) == set()
    assert needed_again(graph, ["test-b"], {"train-a"}) == set()  # train-b finished here: its files are here


def test_a_restored_stage_whose_settings_changed_runs_and_is_recorded_again(tmp_path):
    """records.plan: a stage restored from records earlier whose settings have changed since is stale, not
    restored: the run redoes it and copies the new result to the records (were it `kept`, the records would keep
    the old result); its finished, restored training runs again only because that stale test needs its model."""
    from hardneg.experiment.records import RESTORED, plan
    from hardneg.experiment.stages import Stage
    from hardneg.io import write_json

    stages = {s.name: s for s in [Stage("train-a", {}, [], lambda f: {}, key="k-train"),
                                  Stage("test-a", {}, ["train-a"], lambda f: {}, key="k-test-new"),
                                  Stage("report", {}, ["test-a"], lambda f: {}, always=True, reads_records=True)]}
    write_json(tmp_path / "out" / "train-a" / "stage.json", {"status": "done", "key": "k-train", RESTORED: "b"})
    write_json(tmp_path / "out" / "test-a" / "stage.json", {"status": "done", "key": "k-test-old", RESTORED: "b"})
    book = tmp_path / "book"
    write_json(book / "stages" / "test-a" / "stage.json", {"status": "done", "key": "k-test-old"})
    made = plan(stages, list(stages), lambda n: tmp_path / "out" / n, book)
    assert made.order == ["train-a", "test-a", "report"] and made.taken == frozenset()
    assert made.again == {"train-a"} and made.kept == frozenset()
    assert plan(stages, ["train-a"], lambda n: tmp_path / "out" / n, book).kept == {"train-a"}


def test_dry_run_with_only_lists_just_the_stages_that_run_would_take(tmp_path, tiny_model_dir):
    """`--dry-run --only PATTERN` shows what `--only PATTERN` would run (the matches and what they need, in the
    run's order), not the whole recipe; a pattern that matches nothing is the same clear error as the run's."""
    from typer.testing import CliRunner

    from hardneg.cli import app

    data = tiny_data(tmp_path / "data")
    transfer = write_tiny_train(tmp_path / "transfer")
    raw = recipe_dict(data, tiny_model_dir, tmp_path / "cache", transfer)
    exp = Experiment(Recipe.from_dict(raw), tmp_path / "o")
    picked = select_stages(exp.stages, ["transfer-adore+star-*"])
    listed = [name for name, _ in exp.status(only=["transfer-adore+star-*"])]
    assert listed == run_order(exp.stages, picked, exp.finished())
    assert "transfer-adore+star-transfer-test" in listed and "train-rand" not in listed
    assert len(listed) < len(exp.status())
    with pytest.raises(HardnegError, match="no stage matches 'nothing'"):
        exp.status(only=["nothing"])
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["experiment", str(path), "--out", str(tmp_path / "o"), "--dry-run",
                                      "--only", "transfer-adore+star-*"])
    assert result.exit_code == 0, result.output
    rows = [line.split()[-1] for line in result.output.splitlines() if line.strip().startswith("todo")]
    assert rows == listed
    assert f"{len(exp.stages)} stages, {len(listed)} of them chosen by --only; recipe OK" in result.output


def test_the_compressed_index_finding_is_a_paired_test_on_the_pq_stages_per_query_scores(records, tmp_path):
    """`pq-<system>` keeps each system's per-query scores on each index; the finding "ADORE trained against the
    compressed index beats ADORE trained against the exact one" is then a paired t-test in the Holm family like
    the others, and where a pq stage ran before the scores were kept it says it is not tested."""
    import numpy as np

    results = ExperimentResults(records)
    own, flat = results.pq_per_query("adore-pq8+zeroshot", "pq8"), results.pq_per_query("adore+zeroshot", "pq8")
    grid = results.stage("analysis-pq")["result"]["metrics"]
    for name, scores in (("adore-pq8+zeroshot", own), ("adore+zeroshot", flat)):
        assert np.mean(list(scores["nDCG@10"].values())) == pytest.approx(grid[name]["pq8"]["nDCG@10"])
    text = report_module.render(ReportContext(results, tmp_path / "r"))
    line = next(x for x in text.splitlines() if "compressed index (pq8)" in x)
    a, b = grid["adore-pq8+zeroshot"]["pq8"]["nDCG@10"], grid["adore+zeroshot"]["pq8"]["nDCG@10"]
    assert f"Here: adore-pq8+zeroshot nDCG@10 {a:.3f} vs adore+zeroshot {b:.3f} (p " in line
    assert "Holm" in line and "not tested" not in line
    old = tmp_path / "old"
    shutil.copytree(records, old)
    (old / "stages" / "pq-adore+zeroshot" / "per_query-pq8.json").unlink()  # a stage from before
    text = report_module.render(ReportContext(ExperimentResults(old), tmp_path / "r3"))
    line = next(x for x in text.splitlines() if "compressed index (pq8)" in x)
    assert "no per-query scores on pq8" in line and "Holm" not in line
    assert "**direction agrees, not tested**" in line or "**disagrees**" in line


def test_pq_per_query_files_have_portable_names():
    """A Faiss factory string is an index kind too: its per-query file name has no ':' or ',' (records are
    committed, and checked out on any system)."""
    from hardneg.experiment.stages import pq_per_query_file

    assert pq_per_query_file("pq48") == "per_query-pq48.json"
    name = pq_per_query_file("factory:IVF100,PQ16")
    assert name == "per_query-factory_IVF100_PQ16.json" and Path(name).name == name


def test_the_pairwise_errors_finding_is_a_paired_test_on_per_query_error_counts(records, tmp_path):
    """Table 1's "hard negatives cut the top-K pairwise errors" is a paired t-test of the random-negative model's
    per-query error counts against STAR's (the counts Fig. 3 draws), in the findings' Holm family."""
    import numpy as np

    results = ExperimentResults(records)
    counts = {n: json.loads((records / "stages" / "analysis-pairwise" / f"{n}.json").read_text())["top"]
              for n in ("rand", "star")}
    text = report_module.render(ReportContext(results, tmp_path / "r"))
    line = next(x for x in text.splitlines() if x.startswith("- Analysis (Table 1)"))
    a, b = np.mean(list(counts["rand"].values())), np.mean(list(counts["star"].values()))
    assert f"Here: rand top-20 pairwise errors per query {a:.1f} vs star {b:.1f} (p " in line and "Holm" in line
