"""The README's results tables are renderings of the results.json they name: an edited number or a table left
behind by a new results.json fails here (``hardneg report --readme README.md`` rewrites them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hardneg.cli import app
from hardneg.errors import HardnegError
from hardneg.experiment.readme import BLOCK, COMMAND, refresh, render_table

REPO = Path(__file__).resolve().parents[2]


def test_every_readme_results_table_matches_its_results_json():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = list(BLOCK.finditer(text))
    assert [b["path"] for b in blocks] == ["docs/results/scifact/results.json"]
    for block in blocks:
        rendered = render_table(json.loads((REPO / block["path"]).read_text(encoding="utf-8")))
        assert block["body"] == rendered, (f"README.md: the results table of {block['path']} is not that file's "
                                           f"rendering; run `{COMMAND}` and commit README.md")


def test_the_table_carries_the_files_numbers():
    """Every system row holds results.json's test means, strata and transfer at 3 decimals, and a seeded system's
    sample sd over its seeds after "±" (a round trip)."""
    results = json.loads((REPO / "docs/results/scifact/results.json").read_text(encoding="utf-8"))
    lines = render_table(results).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {r[0]: r for r in ([c.strip().replace("**", "") for c in line.strip("|").split("|")]
                              for line in lines[2:] if line.startswith("| "))}
    tested = {n: e for n, e in results["systems"].items() if e["nDCG@10"] is not None}
    assert list(rows) == list(tested)
    keys = {"nDCG@10": "nDCG@10", "RR@10": "RR@10", "R@100": "R@100", "nDCG@10 seen-doc": "nDCG@10_seen",
            "nDCG@10 unseen-doc": "nDCG@10_unseen"}  # column → results.json key
    for name, entry in tested.items():
        row = rows[name]
        sd = (entry.get("seeds") or {}).get("sd") or {}
        expect = {**{column: (entry[key], sd.get(key)) for column, key in keys.items()},
                  **{f"nDCG@10 {t}": (v, (sd.get("transfer") or {}).get(t)) for t, v in entry["transfer"].items()}}
        assert row[header.index("steps")] == ("–" if entry["steps"] is None else str(entry["steps"])), name
        for column, (value, spread) in expect.items():
            cell = row[header.index(column)].removesuffix("†")  # the marker: test_dagger_marks_…
            text = "–" if value is None else f"{value:.3f}" + ("" if spread is None else f" ± {spread:.3f}")
            assert cell == text, (name, column)
    assert any((e.get("seeds") or {}).get("n", 1) > 1 for e in tested.values()), "the file has no seeded system"


def _page(tmp_path: Path, body: str) -> Path:
    results = {"systems": {"a": {"nDCG@10": 0.5, "transfer": {}, "steps": 3},
                           "b": {"nDCG@10": 0.61234, "transfer": {}, "steps": None,
                                 "seeds": {"n": 2, "sd": {"nDCG@10": 0.01}}}}}
    (tmp_path / "r.json").write_text(json.dumps(results))
    page = tmp_path / "page.md"
    page.write_text(f"intro\n<!-- results-table:r.json -->\n{body}<!-- /results-table -->\noutro\n")
    return page


def test_stale_block_is_caught_by_check_and_rewritten_by_the_command(tmp_path):
    page = _page(tmp_path, "| an old | hand-written table |\n")
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--readme", str(page), "--check"])
    assert isinstance(result.exception, HardnegError) and COMMAND in str(result.exception)
    assert "hand-written" in page.read_text()
    result = runner.invoke(app, ["report", "--readme", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert text.startswith("intro\n<!-- results-table:r.json -->\n| system | steps | nDCG@10 | seeds |")
    assert "| a | 3 | 0.500 | 1 |" in text and "| b | – | **0.612 ± 0.010** | 2 |" in text
    assert text.endswith("<!-- /results-table -->\noutro\n") and refresh(page)[1] == []
    assert runner.invoke(app, ["report", "--readme", str(page), "--check"]).exit_code == 0


def test_a_missing_results_file_names_the_page_and_line(tmp_path):
    page = _page(tmp_path, "")
    (tmp_path / "r.json").unlink()
    with pytest.raises(HardnegError, match=r"page.md:2: results-table names r.json, which is not there"):
        refresh(page)


def test_dagger_marks_numbers_significantly_above_the_start_model():
    vs = {"system": "zs", "p": {"nDCG@10": 0.01, "nDCG@10_seen": 0.2, "nDCG@10_unseen": 0.001}}
    results = {"systems": {
        "zs": {"nDCG@10": 0.5, "nDCG@10_unseen": 0.5, "nDCG@10_seen": 0.5, "transfer": {}, "steps": None},
        "up": {"nDCG@10": 0.6, "nDCG@10_unseen": 0.4, "nDCG@10_seen": 0.7, "transfer": {}, "steps": 5,
               "vs_start": vs}}}
    lines = render_table(results).splitlines()
    # all: p 0.01 and above → †; seen: above but p 0.2; unseen: p 0.001 but below the start model
    assert lines[3] == "| up | 5 | **0.600**† | **0.700** | 0.400 |"
    assert "†: above zs (paired t-test, p < 0.05" in render_table(results)
    assert "†" not in render_table({"systems": {k: {**v, "vs_start": None} for k, v in results["systems"].items()}})


def test_a_run_in_progress_lists_its_untested_systems_under_the_table():
    """A results.json written while the grid runs: systems with no test yet are named under the table, not rows of
    dashes, and the best of a column is among the tested ones."""
    tested = {"nDCG@10": 0.5, "transfer": {}, "steps": 3}
    waiting = {"nDCG@10": None, "transfer": {}, "steps": None}
    results = {"systems": {"a": tested, **{f"w{i}": waiting for i in range(9)}, "b": {**tested, "nDCG@10": 0.4}}}
    text = render_table(results)
    rows = [line.split(" | ")[0].strip("| ") for line in text.splitlines()[2:] if line.startswith("| ")]
    assert rows == ["a", "b"] and "| a | 3 | **0.500** |" in text
    assert "Not tested yet (a run in progress): w0, w1, w2, w3, w4, w5, w6, w7, … (9 in all)." in text
    assert "Not tested" not in render_table({"systems": {"a": tested}})
    with pytest.raises(HardnegError, match="no system has a test result yet"):
        render_table({"systems": {"w": waiting}})
