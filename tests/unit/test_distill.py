"""Distillation from teacher scores (--distill, hardneg.train.distill): MarginMSE and listwise KL equal their
formulas through the methods' own loss code, static and ADORE train with it, a second run scores nothing, the
fusion teachers equal their definitions, and the margin rules work with BM25 candidates."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import write_tiny_train
from hardneg.negatives.teachers import BM25Teacher, Teacher, TeacherScores
from hardneg.train.config import TrainConfig
from hardneg.train.methods.base import Method, StepBatch
from hardneg.train.methods.mining import TrainSelector


class TableTeacher(Teacher):
    """A teacher whose scores are a fixed table ``(query text, doc id) -> score`` (counts its calls)."""

    kind, fingerprint, uses_doc_text = "table", "table-1", False

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table, self.calls = table, 0

    def score_ids(self, queries, doc_ids, texts):
        self.calls += 1
        return np.array([self.table[(q, d)] for q, d in zip(queries, doc_ids, strict=True)])


# two queries, two sampled negatives each; q0's second "negative" a2 is a known positive of q0 (masked)
POSITIVES = {"q0": {"a", "a2"}, "q1": {"b"}}
NEGATIVES = [["a2", "n1"], ["n2", "n3"]]
DOCS = ["a", "b", "a2", "n1", "n2", "n3"]  # the layout: positives, then each example's negatives
SCORES = torch.tensor([[5.0, 1.0, 4.0, 2.0, 0.5, -1.0],
                       [0.0, 3.0, 1.5, 2.5, 1.0, -0.5]], dtype=torch.float64)
TEACHER = {("query zero", "a"): 9.0, ("query zero", "a2"): 8.0, ("query zero", "n1"): 4.0,
           ("query one", "b"): 2.0, ("query one", "n2"): 3.0, ("query one", "n3"): -2.0}


def _method(cls, **cfg):
    """A method object of class ``cls`` over the two-query batch, with the run's real selector and distiller."""
    from hardneg.train.distill import Distiller

    config = TrainConfig(data="x", method=cls.name, teacher="table", **cfg)
    ctx = SimpleNamespace(config=config, queries={"q0": SimpleNamespace(text="query zero"),
                                                  "q1": SimpleNamespace(text="query one")},
                          train_qrels={q: dict.fromkeys(p, 1) for q, p in POSITIVES.items()}, positives=POSITIVES,
                          doc_ids=DOCS, dataset=None)
    method = cls.__new__(cls)
    Method.__init__(method, ctx)
    method.n_negatives = 2
    selector = TrainSelector(ctx)
    selector._teacher = TeacherScores(TableTeacher(TEACHER))
    method.distiller = Distiller(config, selector, ctx.positives, ctx.doc_ids)
    batch = StepBatch(examples=[SimpleNamespace(qid="q0", pos="a"), SimpleNamespace(qid="q1", pos="b")],
                      negatives=NEGATIVES, doc_list=DOCS, row_offset=0, global_batch=2)
    return method, batch


def _valid_triples():
    """(s⁺, s⁻, t⁺, t⁻) of every valid (query, positive, negative): a2 is q0's positive, never its negative."""
    return [(5.0, 2.0, 9.0, 4.0), (3.0, 1.0, 2.0, 3.0), (3.0, -0.5, 2.0, -2.0)]


def _kl(s: list[float], t: list[float], temp: float) -> float:
    p = np.exp(np.array(t) / temp) / np.exp(np.array(t) / temp).sum()
    q = np.exp(np.array(s) / temp) / np.exp(np.array(s) / temp).sum()
    return float((p * np.log(p / q)).sum() * temp**2)


def test_margin_mse_through_the_static_loss():
    from hardneg.train.methods.static import StaticNeg

    method, batch = _method(StaticNeg, distill="margin-mse", distill_weight=0.5)
    scores = SCORES.clone().requires_grad_(True)
    loss, parts = method.loss(scores, batch)
    want = np.mean([((sp - sn) - (tp - tn)) ** 2 for sp, sn, tp, tn in _valid_triples()])
    assert parts["distill"] == pytest.approx(want) and float(loss.detach()) == pytest.approx(0.5 * want)
    loss.backward()
    assert scores.grad[0, 2] == 0  # the masked a2 column gets no gradient
    assert scores.grad[0, 3] != 0 and scores.grad[1, 5] != 0


def test_teacher_scale_multiplies_the_teacher_scores():
    from hardneg.train.methods.static import StaticNeg

    method, batch = _method(StaticNeg, distill="margin-mse", distill_teacher_scale=10.0)
    _, parts = method.loss(SCORES.clone(), batch)
    want = np.mean([((sp - sn) - 10 * (tp - tn)) ** 2 for sp, sn, tp, tn in _valid_triples()])
    assert parts["distill"] == pytest.approx(want)
    method, batch = _method(StaticNeg, distill="kl", distill_teacher_scale=0.5)
    _, parts = method.loss(SCORES.clone(), batch)
    want = (_kl([5.0, 2.0], [4.5, 2.0], 1.0) + _kl([3.0, 1.0, -0.5], [1.0, 1.5, -1.0], 1.0)) / 2
    assert parts["distill"] == pytest.approx(want)


def test_listwise_kl_through_the_static_loss():
    from hardneg.train.methods.static import StaticNeg

    method, batch = _method(StaticNeg, distill="kl", distill_temperature=2.0)
    loss, parts = method.loss(SCORES.clone(), batch)
    want = (_kl([5.0, 2.0], [9.0, 4.0], 2.0) + _kl([3.0, 1.0, -0.5], [2.0, 3.0, -2.0], 2.0)) / 2
    assert parts["distill"] == pytest.approx(want) and float(loss) == pytest.approx(want)


def test_star_distils_its_hard_term_and_keeps_alpha_times_the_random_term():
    from hardneg.train.methods.star import Star

    method, batch = _method(Star, distill="margin-mse", alpha=0.25)
    loss, parts = method.loss(SCORES.clone(), batch)
    distill = np.mean([((sp - sn) - (tp - tn)) ** 2 for sp, sn, tp, tn in _valid_triples()])
    # the random term: RankNet over every other column but the row's positives (q0: a, a2) and own negatives
    other = [(5.0, 1.0), (5.0, 0.5), (5.0, -1.0), (3.0, 0.0), (3.0, 1.5), (3.0, 2.5)]
    rand = np.mean([math.log1p(math.exp(n - p)) for p, n in other])
    assert parts["distill"] == pytest.approx(distill) and parts["random_loss"] == pytest.approx(rand)
    assert float(loss) == pytest.approx(distill + 0.25 * rand)


def test_distill_settings_are_checked():
    from hardneg.errors import HardnegError

    with pytest.raises(HardnegError, match="needs a --teacher"):
        TrainConfig(data="x", method="static", distill="kl").validate()
    with pytest.raises(HardnegError, match="inbatch has no hard negatives"):
        TrainConfig(data="x", method="inbatch", distill="kl", teacher="bm25").validate()
    with pytest.raises(HardnegError, match="--star-mixing alpha"):
        TrainConfig(data="x", method="star", distill="kl", teacher="bm25", star_mixing="pairmean").validate()
    with pytest.raises(HardnegError, match="--distill-temperature"):
        TrainConfig(data="x", method="static", distill="kl", teacher="bm25", distill_temperature=0).validate()
    with pytest.raises(HardnegError, match="--distill-temperature is for --distill kl"):
        TrainConfig(data="x", method="static", distill="margin-mse", teacher="bm25", distill_temperature=2).validate()
    with pytest.raises(HardnegError, match="--distill-weight"):
        TrainConfig(data="x", method="static", distill_weight=2).validate()
    with pytest.raises(HardnegError, match="--distill-teacher-scale"):
        TrainConfig(data="x", method="static", distill_teacher_scale=10).validate()
    with pytest.raises(HardnegError, match="--distill-teacher-scale must be a positive"):
        TrainConfig(data="x", method="static", distill="kl", teacher="bm25", distill_teacher_scale=-1).validate()
    with pytest.raises(HardnegError, match="distill must be one of"):
        TrainConfig(data="x", method="static", distill="mse", teacher="bm25")
    TrainConfig(data="x", method="adore", distill="margin-mse", teacher="bm25").validate()
    # off by default: an older run's fingerprint is unchanged
    assert "distill" not in json.dumps(TrainConfig(data="x").fingerprint())


# ----------------------------------------------------------------------------- training runs
def _log(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def _count_bm25_calls(monkeypatch) -> list[int]:
    calls = [0]
    original = BM25Teacher.score_ids

    def counted(self, queries, doc_ids, texts):
        calls[0] += len(doc_ids)
        return original(self, queries, doc_ids, texts)

    monkeypatch.setattr(BM25Teacher, "score_ids", counted)
    return calls


def test_static_distils_bm25_and_a_second_run_scores_nothing(tmp_path, tiny_model_dir, monkeypatch):
    from conftest import train_config
    from hardneg.train.trainer import Trainer

    data = write_tiny_train(tmp_path / "data", filler=20)
    calls = _count_bm25_calls(monkeypatch)
    kw = dict(distill="margin-mse", teacher="bm25", n_negatives=2, dev_at_start=False)
    first = Trainer(train_config(tmp_path, data, tiny_model_dir, "static", **kw))
    first.train()
    scored = calls[0]
    assert scored > 0 and list((tmp_path / "cache" / "teacher_scores").rglob("part-*.tsv"))
    steps = _log(tmp_path / "out-static")
    assert len(steps) == 4 and all(math.isfinite(r["distill"]) and r["loss"] == pytest.approx(r["distill"])
                                   for r in steps)
    # every query's pool and positives were scored before the first step
    pools = {q: first.method.source.pool(q) for q in first.train_qrels}
    assert scored >= sum(map(len, pools.values()))
    second = Trainer(train_config(tmp_path, data, tiny_model_dir, "static", out=str(tmp_path / "again"), **kw))
    second.train()
    assert calls[0] == scored  # the same teacher over the same data: every score from the cache
    assert second.method.distiller.teacher.scored == 0 and second.method.distiller.teacher.hits > 0


def test_adore_adds_the_distillation_term(tmp_path, tiny_model_dir):
    from conftest import train_config
    from hardneg.train.trainer import Trainer

    data = write_tiny_train(tmp_path / "data", filler=20)
    cfg = train_config(tmp_path, data, tiny_model_dir, "adore", distill="kl", distill_weight=0.5,
                       teacher=f"rrf:bm25+{tiny_model_dir}", adore_topk=10, dev_at_start=False, max_steps=2)
    Trainer(cfg).train()
    steps = _log(tmp_path / "out-adore")
    assert len(steps) == 2
    for r in steps:
        assert r["distill"] > 0 and r["loss"] == pytest.approx(r["rank_loss"] + 0.5 * r["distill"], rel=1e-5)


# ----------------------------------------------------------------------------- teachers
def test_fusion_teachers_equal_their_definitions(tmp_path, tiny_st_dir):
    from hardneg.data.load import load_dataset
    from hardneg.model.encoding import encode_texts
    from hardneg.negatives.fusion import open_teacher
    from hardneg.negatives.teachers import doc_texts, load_teacher
    from hardneg.retrieval.bm25 import cached_bm25

    data = write_tiny_train(tmp_path / "data")
    ds = load_dataset(f"{data}:train")
    queries = ds.queries()
    docs = ["d0-0", "d0-1", "d0-3", "d1-0", "d5-2"]
    qtext = {"q0": queries["q0"].text}
    # by hand: BM25 from its own search (every document matching a term; the others score 0), the bi-encoder
    # as <q, d> of its encodings
    run = dict(cached_bm25(ds, tmp_path / "cache").search({"q0": queries["q0"]}, k=1000, show_progress=False)["q0"])
    bm25 = np.array([run.get(d, 0.0) for d in docs])
    texts = doc_texts(ds)(docs)
    model = load_teacher(str(tiny_st_dir)).model
    dense = encode_texts(model, [texts[d] for d in docs], "doc") @ encode_texts(model, [qtext["q0"]], "query")[0]
    minmax = sum((x - x.min()) / (x.max() - x.min()) for x in (bm25, dense))
    rrf = sum(1 / (60 + np.argsort(np.argsort(-x, kind="stable"), kind="stable") + 1) for x in (bm25, dense))
    for name, want in ((f"fusion:bm25+{tiny_st_dir}", minmax), (f"rrf:bm25+{tiny_st_dir}", rrf)):
        fused = open_teacher(name, dataset=ds, cache_dir=tmp_path / "cache")
        got = fused.scores({"q0": docs}, qtext, doc_texts(ds))["q0"]
        np.testing.assert_allclose(got, want, rtol=1e-5)
    again = open_teacher(f"fusion:bm25+{tiny_st_dir}", dataset=ds, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(again.scores({"q0": docs}, qtext, doc_texts(ds))["q0"], minmax, rtol=1e-5)
    assert again.scored == 0 and again.hits == 2 * len(docs)  # both components from their caches


def test_bad_fusion_name_is_an_error(tmp_path):
    from hardneg.errors import HardnegError
    from hardneg.negatives.fusion import parse_fusion

    assert parse_fusion("minilm") is None and parse_fusion("fusion:bm25+minilm") == ("minmax", ["bm25", "minilm"])
    with pytest.raises(HardnegError, match="two or more"):
        parse_fusion("rrf:bm25")


def test_margin_rules_with_bm25_candidates(tmp_path):
    """``hardneg mine --model bm25 --absolute-margin``: BM25 scores the positives too (retrieved or not; a qrels
    document not in the corpus is skipped), and no kept negative scores above (lowest positive - margin)."""
    from hardneg.data.load import load_dataset
    from hardneg.negatives.rules import NegativeRules
    from hardneg.negatives.stream import mine_streamed
    from hardneg.retrieval.bm25 import cached_bm25

    data = write_tiny_train(tmp_path / "data", filler=20, lost_query=True)
    ds = load_dataset(f"{data}:train")
    qrels, queries = ds.qrels(), ds.queries()
    # BM25 ranks a topic's positive d<i>-0 (its shortest document) below the topic's other three: a margin of -1
    # keeps the negatives scoring at most 1 above it and removes the rest
    margin = -1.0
    rules = NegativeRules(absolute_margin=margin, num_negatives=3)
    out = tmp_path / "hard.tsv"
    mine_streamed(ds, qrels, queries, "bm25", rules, 3, tmp_path / "cache", out, open_encoder=lambda: None)
    bm25 = cached_bm25(ds, tmp_path / "cache")
    run = bm25.search(queries, k=1000, show_progress=False)
    kept: dict[str, list[str]] = {}
    for line in out.read_text().splitlines():
        q, d, _ = line.split("\t")
        kept.setdefault(q, []).append(d)
    assert kept
    removed_some = False
    for q, docs in kept.items():
        by_bm25 = dict(run[q])
        ref = min(by_bm25.get(d, 0.0) for d, g in qrels[q].items() if g >= 1 and d in bm25.positions())
        assert all(by_bm25[d] + margin <= ref for d in docs)
        removed_some |= any(s + margin > ref and d not in qrels[q] for d, s in run[q])
    assert removed_some  # the rule did act


def test_bm25neg_trains_with_a_margin_rule(tmp_path, tiny_model_dir):
    """bm25neg with --absolute-margin (no teacher): BM25 scores the positives, and every pool obeys the margin."""
    from conftest import train_config
    from hardneg.retrieval.bm25 import cached_bm25
    from hardneg.train.trainer import Trainer

    data = write_tiny_train(tmp_path / "data", filler=20)
    trainer = Trainer(train_config(tmp_path, data, tiny_model_dir, "bm25neg", absolute_margin=-1.0, max_steps=1,
                                   dev_at_start=False))
    trainer.train()
    bm25 = cached_bm25(trainer.dataset, tmp_path / "cache")
    pools = {q: trainer.method.source.pool(q) for q in trainer.train_qrels}
    assert any(pools.values())
    for q, pool in pools.items():
        text = trainer.queries[q].text
        ref = bm25.score_docs(text, sorted(trainer.positives[q])).min()
        assert all(s - 1.0 <= ref for s in bm25.score_docs(text, pool))


def test_a_cache_reloads_what_another_process_scored(tmp_path):
    """What a torchrun rank's Distiller.prepare relies on: another process's part files, read by reload()."""
    one, other = TableTeacher(TEACHER), TableTeacher(TEACHER)
    a, b = TeacherScores.under(one, tmp_path, "corpus"), TeacherScores.under(other, tmp_path, "corpus")
    qtext = {"q0": "query zero"}
    a.scores({"q0": ["a", "n1"]}, qtext, None)
    b.reload()
    got = b.scores({"q0": ["n1", "a"]}, qtext, None)["q0"]
    assert got.tolist() == [4.0, 9.0] and other.calls == 0 and b.hits == 2
