from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardneg.errors import HardnegError, InputError
from hardneg.negatives.formats.files import write_negatives
from hardneg.negatives.formats.tsv import read_negatives
from hardneg.negatives.sampling import (
    RandomNegatives,
    StaticNegatives,
    check_sample_size,
    check_topk,
    mine_negatives,
)
from hardneg.negatives.sources import load_candidates
from hardneg.retrieval.runs import write_trec

CORPUS = [f"d{i}" for i in range(1000)]
QRELS = {"q1": {"d1": 1, "d2": 2, "d3": 0}, "q2": {"d10": 1}, "q3": {"d5": 0}}


# --------------------------------------------------------------------------- property: never a positive


@st.composite
def _setups(draw):
    n_docs = draw(st.integers(1, 30))
    docs = [f"d{i}" for i in range(n_docs)]
    qids = [f"q{i}" for i in range(draw(st.integers(1, 4)))]
    qrels = {
        qid: draw(
            st.dictionaries(st.sampled_from(docs + ["ghost"]), st.integers(-1, 3), max_size=8)
        )
        for qid in qids
    }
    cands = {
        qid: draw(st.lists(st.sampled_from(docs), max_size=20))
        for qid in qids
        if draw(st.booleans())
    }
    qid = draw(st.sampled_from(qids))
    n_pos = sum(1 for d, g in qrels[qid].items() if g >= 1 and d in docs)
    n = draw(st.integers(0, n_docs - n_pos))
    topk = draw(st.integers(1, n_docs))
    step = draw(st.integers(0, 10**6))
    seed = draw(st.integers(0, 2**32))
    return docs, qrels, cands, qid, n, topk, step, seed


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_setups())
def test_no_source_returns_a_positive(setup) -> None:
    docs, qrels, cands, qid, n, topk, step, seed = setup
    positives = {d for d, g in qrels[qid].items() if g >= 1}
    rnd = RandomNegatives(docs, qrels, seed=seed).sample(qid, n, step)
    static = StaticNegatives(cands, qrels, docs, topk=topk, seed=seed)
    hard = static.sample(qid, n, step)
    for got in (rnd, hard):
        assert len(got) == n
        assert len(set(got)) == n  # distinct
        assert not set(got) & positives
        assert set(got) <= set(docs)
    pool = static.pool(qid)
    assert len(pool) <= topk and not set(pool) & positives
    if len(pool) >= n:
        assert set(hard) <= set(pool)
    else:
        assert set(pool) <= set(hard)
    mined = mine_negatives({qid: [(d, 1.0) for d in cands.get(qid, [])]}, qrels, topk)
    assert not set(mined[qid]) & positives


# --------------------------------------------------------------------------- determinism


def test_random_negatives_are_deterministic_per_seed_step_qid() -> None:
    a = RandomNegatives(CORPUS, QRELS, seed=7)
    b = RandomNegatives(CORPUS, QRELS, seed=7)
    first = a.sample("q1", 10, step=3)
    # other draws in between (and in another order) do not matter
    b.sample("q2", 10, step=3)
    b.sample("q1", 10, step=2)
    assert b.sample("q1", 10, step=3) == first
    assert a.sample("q1", 10, step=4) != first
    assert a.sample("q2", 10, step=3) != first
    assert RandomNegatives(CORPUS, QRELS, seed=8).sample("q1", 10, step=3) != first


def test_random_negatives_cover_the_corpus_minus_positives() -> None:
    docs = [f"d{i}" for i in range(6)]
    qrels = {"q": {"d0": 1, "d1": 0, "d2": -1}}
    src = RandomNegatives(docs, qrels)
    seen = set()
    for step in range(200):
        seen.update(src.sample("q", 2, step))
    assert seen == set(docs) - {"d0"}  # grade 0 and -1 docs are fair negatives
    assert sorted(src.sample("q", 5, 0)) == ["d1", "d2", "d3", "d4", "d5"]


def test_static_negatives_are_deterministic() -> None:
    cands = {"q1": CORPUS[:100]}
    a = StaticNegatives(cands, QRELS, CORPUS, topk=50, seed=1)
    b = StaticNegatives(cands, QRELS, CORPUS, topk=50, seed=1)
    assert a.sample("q1", 5, 9) == b.sample("q1", 5, 9)
    assert a.sample("q1", 5, 9) != a.sample("q1", 5, 10)


# --------------------------------------------------------------------------- static negatives


def test_static_negatives_draw_only_from_topk() -> None:
    # d1 and d2 are positives of q1: the pool is the first 5 non-positives.
    cands = {"q1": ["d1", "d20", "d2", "d21", "d22", "d3", "d23", "d24", "d25", "d26"]}
    src = StaticNegatives(cands, QRELS, CORPUS, topk=5)
    assert src.pool("q1") == ["d20", "d21", "d22", "d3", "d23"]  # d3 has grade 0
    seen = set()
    for step in range(100):
        got = src.sample("q1", 2, step)
        assert set(got) <= set(src.pool("q1"))
        seen.update(got)
    assert seen == set(src.pool("q1"))
    assert src.fallback_count == 0


def test_static_fallback_is_counted() -> None:
    src = StaticNegatives({"q1": ["d1", "d20", "d21"], "q2": []}, QRELS, CORPUS, topk=10)
    got = src.sample("q1", 4, 0)
    assert got[:2] in (["d20", "d21"], ["d21", "d20"])
    assert len(set(got)) == 4 and not {"d1", "d2"} & set(got)
    assert (src.fallback_count, src.fallback_docs) == (1, 2)
    src.sample("q2", 3, 0)  # no candidates at all
    src.sample("q3", 3, 0)  # query missing from the candidates
    assert (src.fallback_count, src.fallback_docs) == (3, 8)
    assert src.sample("q1", 2, 5) in (["d20", "d21"], ["d21", "d20"])
    assert src.fallback_count == 3


def test_replace_changes_the_negatives() -> None:
    src = StaticNegatives({"q1": CORPUS[100:150]}, QRELS, CORPUS, topk=50, seed=3)
    before = src.sample("q1", 8, step=42)
    assert set(before) <= set(CORPUS[100:150])
    src.replace({"q1": CORPUS[500:550]})
    after = src.sample("q1", 8, step=42)
    assert set(after) <= set(CORPUS[500:550])
    assert after != before


def test_from_run_and_mine_negatives() -> None:
    run = {
        "q1": [("d2", 9.0), ("d7", 8.0), ("d1", 7.0), ("d3", 6.0), ("d7", 5.0), ("d9", 4.0)],
        "q2": [("d10", 1.0)],
    }
    mined = mine_negatives(run, QRELS, topk=3)
    assert mined == {"q1": ["d7", "d3", "d9"], "q2": []}
    assert mine_negatives(run, QRELS, topk=1) == {"q1": ["d7"], "q2": []}
    src = StaticNegatives.from_run(run, QRELS, CORPUS, topk=2)
    assert src.pool("q1") == ["d7", "d3"]
    assert set(src.sample("q1", 2, 0)) == {"d7", "d3"}


# --------------------------------------------------------------------------- validation


def test_validation_errors() -> None:
    with pytest.raises(HardnegError, match="topk"):
        check_topk(0)
    with pytest.raises(HardnegError, match="larger than the corpus"):
        StaticNegatives({}, QRELS, CORPUS[:10], topk=11)
    with pytest.raises(HardnegError, match="topk"):
        mine_negatives({}, QRELS, topk=0)
    with pytest.raises(HardnegError, match="cannot draw 9"):
        RandomNegatives(CORPUS[:10], QRELS).sample("q1", 9, 0)  # d1, d2 are positives
    assert len(RandomNegatives(CORPUS[:10], QRELS).sample("q1", 8, 0)) == 8
    with pytest.raises(HardnegError, match="cannot draw 9"):
        StaticNegatives({"q1": CORPUS[:10]}, QRELS, CORPUS[:10], topk=5).sample("q1", 9, 0)
    with pytest.raises(HardnegError, match="cannot draw 9"):
        RandomNegatives(CORPUS[:10], QRELS).validate(9)
    RandomNegatives(CORPUS[:10], QRELS).validate(8)
    with pytest.raises(HardnegError):
        check_sample_size(-1, 10)
    with pytest.raises(HardnegError, match="twice"):
        RandomNegatives(["a", "b", "a"], {})
    with pytest.raises(HardnegError, match="not in the corpus"):
        StaticNegatives({"q1": ["nope"]}, QRELS, CORPUS, topk=5)
    with pytest.raises(HardnegError, match="step"):
        RandomNegatives(CORPUS, QRELS).sample("q1", 1, -1)


# --------------------------------------------------------------------------- files


def test_write_read_round_trip(tmp_path: Path) -> None:
    negs = {"q1": ["d7", "d3", "d9"], "q2": ["d1"], "q3": []}
    path = tmp_path / "negs.tsv"
    write_negatives(path, negs)
    assert path.read_text().splitlines()[:2] == ["q1\td7\t1", "q1\td3\t2"]
    assert read_negatives(path) == {"q1": ["d7", "d3", "d9"], "q2": ["d1"]}
    with pytest.raises(HardnegError):
        write_negatives(tmp_path / "bad.tsv", {"q 1": ["d1"]})


def test_read_orders_by_rank(tmp_path: Path) -> None:
    path = tmp_path / "negs.tsv"
    path.write_text("q1\tb\t2\n\nq1\ta\t1\nq1\tc\t10\n")
    assert read_negatives(path) == {"q1": ["a", "b", "c"]}


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("q1\td1\t1\nq1\td2\n", 2, "3 columns"),
        ("q1\td1\t1\nq1\td2\tx\n", 2, "not an integer"),
        ("q1\td1\t0\n", 1, "not positive"),
        ("q1\td1\t1\n\nq1\td1\t2\n", 3, "appears twice"),
        ("q1\td1\t1\nq1\td2\t1\n", 2, "rank 1 appears twice"),
    ],
)
def test_malformed_negatives_name_file_and_line(
    tmp_path: Path, text: str, line: int, what: str
) -> None:
    path = tmp_path / "negs.tsv"
    path.write_text(text)
    with pytest.raises(InputError, match=what) as info:
        read_negatives(path)
    assert f"{path}:{line}" in str(info.value)
    assert info.value.line == line


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_negatives(tmp_path / "nope.tsv")
    with pytest.raises(InputError, match="not found"):
        load_candidates(tmp_path / "nope.tsv", 10)


def test_load_candidates_from_tsv_and_trec(tmp_path: Path) -> None:
    tsv = tmp_path / "negs.tsv"
    write_negatives(tsv, {"q1": ["d1", "d7", "d3", "d9"]})
    assert load_candidates(tsv, 2) == {"q1": ["d1", "d7"]}
    assert load_candidates(tsv, 2, positives=QRELS) == {"q1": ["d7", "d3"]}
    trec = tmp_path / "run.trec"
    write_trec({"q1": [("d1", 0.9), ("d7", 0.8), ("d3", 0.7)], "q2": [("d10", 0.5)]}, trec)
    assert load_candidates(trec, 5) == {"q1": ["d1", "d7", "d3"], "q2": ["d10"]}
    assert load_candidates(trec, 1, positives=QRELS) == {"q1": ["d7"], "q2": []}
    src = StaticNegatives(load_candidates(trec, 5), QRELS, CORPUS, topk=5)
    assert src.pool("q1") == ["d7", "d3"]
    bad = tmp_path / "bad.txt"
    bad.write_text("\nq1 d1\n")
    with pytest.raises(InputError, match="2 columns") as info:
        load_candidates(bad, 5)
    assert f"{bad}:2" in str(info.value)
