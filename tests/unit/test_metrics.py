from __future__ import annotations

import math

import pytest
from scipy import stats

from hardneg.errors import HardnegError
from hardneg.evaluate import (
    DEFAULT_MEASURES,
    compare,
    evaluate,
    evaluate_per_query,
    evaluated_queries,
    format_table,
    paired_ttest,
    parse_measures,
    render_table,
)

log2 = math.log2

QRELS = {
    "q1": {"d1": 1, "d2": 0, "d3": 1},
    "q2": {"d4": 2, "d5": 1},
    "q3": {"d6": 1},  # missing from the run -> 0 everywhere
    "q4": {"d7": 0},  # no relevant document -> not evaluated at all
}
RUN = {
    # relevant at ranks 2 and 4
    "q1": [("d2", 3.0), ("d1", 2.0), ("d9", 1.5), ("d3", 1.0)],
    # grade 1 at rank 1, grade 2 at rank 3
    "q2": [("d5", 0.9), ("dx", 0.8), ("d4", 0.7)],
    "q9": [("d1", 1.0)],  # not in the qrels -> ignored
}

# hand-computed per-query values
RR = {"q1": 1 / 2, "q2": 1.0, "q3": 0.0}
R2 = {"q1": 1 / 2, "q2": 1 / 2, "q3": 0.0}
R100 = {"q1": 1.0, "q2": 1.0, "q3": 0.0}
AP = {"q1": (1 / 2 + 2 / 4) / 2, "q2": (1 / 1 + 2 / 3) / 2, "q3": 0.0}
# trec_eval nDCG: linear gain = grade, discount log2(rank + 1); ideal from the qrels
NDCG = {
    "q1": (1 / log2(3) + 1 / log2(5)) / (1 / log2(2) + 1 / log2(3)),
    "q2": (1 / log2(2) + 2 / log2(4)) / (2 / log2(2) + 1 / log2(3)),
    "q3": 0.0,
}


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values)


def test_hand_computed_values() -> None:
    per = evaluate_per_query(RUN, QRELS, ["RR@10", "R@2", "R@100", "nDCG@10", "AP"])
    assert per["RR@10"] == pytest.approx(RR)
    assert per["R@2"] == pytest.approx(R2)
    assert per["R@100"] == pytest.approx(R100)
    assert per["AP"] == pytest.approx(AP)
    assert per["nDCG@10"] == pytest.approx(NDCG)
    assert NDCG["q2"] == pytest.approx(2 / (2 + 1 / log2(3)))

    means = evaluate(RUN, QRELS, ["RR@10", "R@2", "R@100", "nDCG@10", "AP"])
    assert list(means) == ["RR@10", "R@2", "R@100", "nDCG@10", "AP"]
    assert means["RR@10"] == pytest.approx(_mean(RR))
    assert means["R@2"] == pytest.approx(_mean(R2))
    assert means["nDCG@10"] == pytest.approx(_mean(NDCG))
    assert means["AP"] == pytest.approx(_mean(AP))


def test_query_set_convention() -> None:
    assert evaluated_queries(QRELS) == ["q1", "q2", "q3"]
    per = evaluate_per_query(RUN, QRELS, ["RR@10"])
    assert set(per["RR@10"]) == {"q1", "q2", "q3"}  # q4 (no relevant) and q9 (no qrels) out
    assert per["RR@10"]["q3"] == 0.0  # missing from the run counts as 0
    empty_list = dict(RUN, q3=[])
    assert evaluate(empty_list, QRELS) == evaluate(RUN, QRELS)
    # an empty run is all zeros, not an error
    assert evaluate({}, QRELS) == dict.fromkeys(DEFAULT_MEASURES, 0.0)
    with pytest.raises(HardnegError, match="no query in the qrels has a relevant"):
        evaluate(RUN, {"q4": {"d7": 0}})


def test_rr_cutoff_and_unsorted_input() -> None:
    qrels = {"q": {"rel": 1}}
    deep = {"q": [(f"n{i}", 100.0 - i) for i in range(10)] + [("rel", 1.0)]}
    assert evaluate(deep, qrels, ["RR@10", "RR"]) == {"RR@10": 0.0, "RR": pytest.approx(1 / 11)}
    # lists are ranked by score even when not given sorted
    unsorted = {"q": [("n1", 0.1), ("rel", 0.9), ("n2", 0.5)]}
    assert evaluate(unsorted, qrels, ["RR@10"]) == {"RR@10": 1.0}


def test_ties_keep_run_order_for_every_measure() -> None:
    # trec_eval would break this tie by doc id ("b" before "a"), the MS MARCO
    # code by input order; evaluate() always uses the run's order.
    qrels = {"q": {"a": 1}}
    tied = {"q": [("a", 1.0), ("b", 1.0)]}
    assert evaluate(tied, qrels, ["RR@10", "RR", "nDCG@10"]) == {
        "RR@10": 1.0,
        "RR": 1.0,
        "nDCG@10": 1.0,
    }
    swapped = {"q": [("b", 1.0), ("a", 1.0)]}
    assert evaluate(swapped, qrels, ["RR@10", "RR", "nDCG@10"]) == {
        "RR@10": 0.5,
        "RR": 0.5,
        "nDCG@10": pytest.approx(1 / log2(3)),
    }


def test_negative_grades_and_graded_relevance_threshold() -> None:
    qrels = {"q": {"neg": -1, "zero": 0, "two": 2}}
    run = {"q": [("neg", 3.0), ("zero", 2.0), ("two", 1.0)]}
    out = evaluate(run, qrels, ["RR@10", "nDCG@10", "P@3"])
    assert out["RR@10"] == pytest.approx(1 / 3)
    assert out["P@3"] == pytest.approx(1 / 3)
    assert out["nDCG@10"] == pytest.approx((2 / log2(4)) / (2 / log2(2)))


def test_measure_names() -> None:
    assert [str(m) for m in parse_measures(DEFAULT_MEASURES)] == list(DEFAULT_MEASURES)
    # MS MARCO's MRR@10 is ir-measures' RR@10; duplicates are dropped
    assert [str(m) for m in parse_measures(["MRR@10", "RR@10", "ndcg_cut_10"])] == [
        "RR@10",
        "nDCG@10",
    ]
    assert list(evaluate(RUN, QRELS, ["MRR@10"])) == ["RR@10"]
    for bad in ["nDCG@ten", "Foo@10", "", "RR@"]:
        with pytest.raises(HardnegError, match="nDCG@10") as info:
            parse_measures([bad])
        assert "measure" in str(info.value)
    with pytest.raises(HardnegError, match="no measures"):
        parse_measures([])


def test_paired_ttest_matches_scipy() -> None:
    x = [0.5, 1.0, 0.0, 0.25, 0.8]
    y = [0.4, 0.7, 0.1, 0.25, 0.3]
    assert paired_ttest(x, y) == pytest.approx(stats.ttest_rel(x, y).pvalue)
    assert paired_ttest(x, x) == 1.0
    assert math.isnan(paired_ttest([1.0], [0.0]))
    with pytest.raises(HardnegError):
        paired_ttest([1.0, 2.0], [1.0])


def test_compare_uses_same_queries_and_scipy() -> None:
    better = {
        "q1": [("d1", 3.0), ("d3", 2.0)],  # RR 1
        "q2": [("d4", 1.0)],  # RR 1
        "q3": [("d6", 1.0)],  # RR 1
    }
    result = compare({"base": RUN, "better": better, "same": RUN}, QRELS, baseline="base")
    assert result.systems == ["base", "better", "same"]
    assert result.query_ids == ["q1", "q2", "q3"]
    assert result.measures == list(DEFAULT_MEASURES)
    assert result.means["base"] == evaluate(RUN, QRELS)
    assert result.means["better"] == evaluate(better, QRELS)
    assert result.pvalues["base"] == dict.fromkeys(DEFAULT_MEASURES)

    base_rr = [RR[q] for q in ["q1", "q2", "q3"]]
    better_rr = [1.0, 1.0, 1.0]
    expected = stats.ttest_rel(better_rr, base_rr).pvalue
    assert result.pvalues["better"]["RR@10"] == pytest.approx(expected)
    assert [result.per_query["better"]["RR@10"][q] for q in result.query_ids] == better_rr
    assert result.pvalues["same"]["nDCG@10"] == 1.0  # identical runs: no crash, p = 1
    assert not result.significant("same", "nDCG@10")
    assert not result.significant("base", "nDCG@10")

    with pytest.raises(HardnegError, match="baseline 'nope'"):
        compare({"base": RUN}, QRELS, baseline="nope")


def test_format_table_marks_significance() -> None:
    qrels = {f"q{i}": {"rel": 1} for i in range(8)}
    base = {q: [("x", 2.0), ("rel", 1.0)] for q in qrels}  # RR 0.5 everywhere
    good = {q: [("rel", 2.0)] for q in qrels}  # RR 1 everywhere
    noisy = {q: (good[q] if i == 0 else base[q]) for i, q in enumerate(qrels)}  # 1 of 8 better
    result = compare({"bm25": base, "dense": good, "mixed": noisy}, qrels, "bm25", ["RR@10"])
    assert result.pvalues["dense"]["RR@10"] == pytest.approx(0.0)
    text = render_table(format_table(result))
    dense_row = next(line for line in text.splitlines() if "dense" in line)
    assert "1.0000†" in dense_row
    assert "<0.0001" in dense_row
    mixed_row = next(line for line in text.splitlines() if "mixed" in line)
    assert "0.5625" in mixed_row
    p_mixed = result.pvalues["mixed"]["RR@10"]
    assert p_mixed is not None and p_mixed > 0.05
    assert "†" not in mixed_row
    assert f"{p_mixed:.4f}" in mixed_row
    assert "bm25 (baseline)" in text
    assert "paired two-sided t-test over 8 queries" in " ".join(text.split())  # caption wraps

    plain = render_table(format_table({"bm25": {"nDCG@10": 0.5}}))
    assert "0.5000" in plain and "nDCG@10" in plain
