from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardneg.errors import HardnegError, InputError
from hardneg.retrieval.runs import (
    read_run,
    run_from_arrays,
    sort_run,
    truncate,
    write_msmarco,
    write_trec,
)


def _close_scores_run() -> dict[str, list[tuple[str, float]]]:
    # Scores that %.6f would merge (cosine-like), float32-derived values, a
    # negative score and an exact tie (which must keep its list order).
    f32 = np.array([0.8123456789, 0.8123456, 0.3333333], dtype=np.float32)
    return {
        "q1": [
            ("d1", 0.123456789012345),
            ("d2", 0.123456789012340),
            ("d3", 0.1234567),
            ("d4", 0.1234567),
            ("d5", -2.5e-9),
        ],
        "q2": [("d9", float(f32[0])), ("d8", float(f32[1])), ("d7", float(f32[2]))],
    }


def test_trec_round_trip_is_exact(tmp_path: Path) -> None:
    run = _close_scores_run()
    path = tmp_path / "run.trec"
    write_trec(run, path, tag="mytag")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].split() == ["q1", "Q0", "d1", "1", repr(0.123456789012345), "mytag"]
    assert [line.split()[3] for line in lines[:5]] == ["1", "2", "3", "4", "5"]
    back = read_run(path)
    assert back == run  # same order, bit-identical scores
    assert list(back) == ["q1", "q2"]


def test_trec_write_sorts_by_score(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    write_trec({"q": [("low", 0.1), ("high", 0.9), ("mid", 0.5)]}, path)
    assert [line.split()[2] for line in path.read_text().splitlines()] == ["high", "mid", "low"]


def test_msmarco_round_trip(tmp_path: Path) -> None:
    run = _close_scores_run()
    path = tmp_path / "run.tsv"
    write_msmarco(run, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "q1\td1\t1"
    assert lines[4] == "q1\td5\t5"
    back = read_run(path)
    assert {q: [d for d, _ in r] for q, r in back.items()} == {
        q: [d for d, _ in r] for q, r in run.items()
    }
    # documented convention: score = 1 / rank (strictly decreasing)
    assert [s for _, s in back["q1"]] == [1.0, 0.5, 1 / 3, 0.25, 0.2]


def test_read_msmarco_orders_by_rank_and_accepts_crlf_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "run.tsv"
    path.write_bytes(b"q1\tb\t2\r\n\r\nq1\ta\t1\r\nq2\tc\t1\r\n")
    assert read_run(path) == {"q1": [("a", 1.0), ("b", 0.5)], "q2": [("c", 1.0)]}


def test_read_trec_sorts_by_score_then_rank(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    path.write_text(
        "q1 Q0 x 3 1.0 t\nq1 Q0 y 1 2.0 t\nq1 Q0 z 2 1.0 t\n",
        encoding="utf-8",
    )
    assert read_run(path) == {"q1": [("y", 2.0), ("z", 1.0), ("x", 1.0)]}


def test_empty_file_is_empty_run(tmp_path: Path) -> None:
    path = tmp_path / "empty.trec"
    path.write_text("\n", encoding="utf-8")
    assert read_run(path) == {}


@pytest.mark.parametrize(
    ("content", "line", "needle"),
    [
        ("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 abc t\n", 2, "not a number"),
        ("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 nan t\n", 2, "finite"),
        ("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.4\n", 2, "expected 6 columns"),
        ("q1 Q0 d1 1 0.5 t\n\nq1 Q0 d2 x 0.4 t\n", 3, "not an integer"),
        ("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n", 2, "first on line 1"),
        ("q1\td1\t1\nq1\td2\t0\n", 2, "not positive"),
        ("q1\td1\t1\nq1\td1\t2\n", 2, "appears twice"),
        ("q1\td1\t1\nq1 Q0 d2 2 0.4 t\n", 2, "expected 3 columns"),
        ("q1 d1 1 0.5\n", 1, "cannot tell the run format"),
    ],
)
def test_malformed_lines_name_file_and_line(
    tmp_path: Path, content: str, line: int, needle: str
) -> None:
    path = tmp_path / "bad.run"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_run(path)
    err = info.value
    assert err.line == line
    assert f"{path}:{line}: " in str(err)
    assert needle in str(err)
    assert err.hint  # says how to fix it


def test_missing_run_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_run(tmp_path / "nope.trec")


def test_write_is_atomic_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    write_trec({"q": [("d", 1.0)]}, path)
    before = path.read_bytes()
    with pytest.raises(HardnegError, match="whitespace"):
        write_trec({"q": [("ok", 2.0), ("bad id", 1.0)]}, path)
    with pytest.raises(HardnegError, match="non-finite"):
        write_trec({"q": [("ok", float("nan"))]}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.trec"]  # no temp files left


def test_run_from_arrays_skips_padding_and_sorts() -> None:
    docids = ["a", "b", "c", "d"]
    scores = np.array(
        [[0.9, 0.5, 0.7, -np.inf], [0.2, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
        dtype=np.float32,
    )
    indices = np.array([[0, 1, 2, -1], [3, 2, -1, -1], [-1, -1, -1, -1]])
    run = run_from_arrays(["q1", "q2", "q3"], docids, scores, indices)
    assert run["q1"] == [("a", pytest.approx(0.9)), ("c", pytest.approx(0.7)), ("b", 0.5)]
    assert run["q2"] == [("d", pytest.approx(0.2)), ("c", pytest.approx(0.2))]  # tie keeps order
    assert run["q3"] == []
    assert all(isinstance(s, float) for _, s in run["q1"])


def test_run_from_arrays_distances() -> None:
    run = run_from_arrays(
        ["q"], ["a", "b"], np.array([[1.0, 4.0]]), np.array([[1, 0]]), larger_is_better=False
    )
    assert run == {"q": [("b", -1.0), ("a", -4.0)]}


@pytest.mark.parametrize(
    ("qids", "scores", "indices", "needle"),
    [
        (["q"], np.zeros((1, 2)), np.zeros((1, 3), dtype=int), "same shape"),
        (["q", "r"], np.zeros((1, 2)), np.zeros((1, 2), dtype=int), "rows"),
        (["q"], np.zeros((1, 2)), np.array([[0, 5]]), "indices must lie"),
        (["q"], np.zeros((1, 2)), np.array([[0, -2]]), "indices must lie"),
        (["q", "q"], np.zeros((2, 1)), np.zeros((2, 1), dtype=int), "unique"),
    ],
)
def test_run_from_arrays_rejects_bad_input(
    qids: list[str], scores: np.ndarray, indices: np.ndarray, needle: str
) -> None:
    with pytest.raises(HardnegError, match=needle):
        run_from_arrays(qids, ["a", "b"], scores, indices)


def test_truncate_and_sort_run() -> None:
    run = {"q": [("a", 3.0), ("b", 2.0), ("c", 1.0)], "r": [("x", 1.0)]}
    assert truncate(run, 2) == {"q": [("a", 3.0), ("b", 2.0)], "r": [("x", 1.0)]}
    assert truncate(run, 0) == {"q": [], "r": []}
    assert run["q"][2] == ("c", 1.0)  # input untouched
    with pytest.raises(HardnegError):
        truncate(run, -1)
    assert sort_run({"q": [("a", 1.0), ("b", 2.0), ("c", 1.0)]}) == {
        "q": [("b", 2.0), ("a", 1.0), ("c", 1.0)]
    }


def test_save_run_and_metrics_writes_run_settings_and_metrics(tmp_path: Path) -> None:
    import json

    from hardneg.evaluate.metrics import evaluate, evaluate_per_query
    from hardneg.evaluate.results import evaluate_run, save_run_and_metrics

    run = {"q1": [("d1", 2.0), ("d2", 1.0)], "q2": [("d3", 0.5), ("d1", 0.25)]}
    qrels = {"q1": {"d2": 1}, "q2": {"d3": 1}}
    result = save_run_and_metrics(run, tmp_path / "a", tag="sys", fmt="both", qrels=qrels,
                                  measures=["RR@10"], settings={"k": 2}, per_query=True)
    write_trec(run, tmp_path / "ref.trec", tag="sys")
    write_msmarco(run, tmp_path / "ref.tsv")
    folder = tmp_path / "a"
    assert (folder / "run.trec").read_bytes() == (tmp_path / "ref.trec").read_bytes()
    assert (folder / "run.msmarco.tsv").read_bytes() == (tmp_path / "ref.tsv").read_bytes()
    assert json.loads((folder / "settings.json").read_text()) == {"k": 2} == result.settings
    assert result.metrics == evaluate(run, qrels, ["RR@10"]) == {"RR@10": 0.75}
    assert json.loads((folder / "metrics.json").read_text()) == result.metrics
    assert json.loads((folder / "per_query.json").read_text()) == evaluate_per_query(run, qrels, ["RR@10"])
    assert result.run is run
    # not evaluated (no qrels), no settings, trec only: just the run
    bare = save_run_and_metrics(run, tmp_path / "b", tag="sys")
    assert bare.metrics is None and bare.per_query is None
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["run.trec"]
    assert evaluate_run(run, qrels).metrics == evaluate(run, qrels)  # default measures
    with pytest.raises(HardnegError, match="run format"):
        save_run_and_metrics(run, tmp_path / "c", fmt="csv")
    assert not (tmp_path / "c").exists()
