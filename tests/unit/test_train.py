"""The training loop end to end with a tiny random model: every method, resume, bad configurations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import train_config, write_tiny_train
from hardneg.errors import HardnegError
from hardneg.train.losses import pairwise_loss, star_loss
from hardneg.train.order import DataOrder, split_dev, train_dev_split
from hardneg.train.trainer import Trainer


@pytest.fixture
def tiny_train(tmp_path):
    return write_tiny_train(tmp_path / "tiny-train")


def params(model):
    return {k: v.detach().clone() for k, v in model.doc_model.state_dict().items()}


@pytest.mark.parametrize("method", ["inbatch", "rand", "bm25neg", "static", "star"])
def test_every_method_trains_and_saves(method, tmp_path, tiny_train, tiny_model_dir):
    cfg = train_config(tmp_path, tiny_train, tiny_model_dir, method)
    trainer = Trainer(cfg)
    trainer.setup()
    before = params(trainer.model)
    model_dir = trainer.train()
    after = params(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter changed"
    assert (model_dir / "config.json").is_file() and (model_dir / "modules.json").is_file()
    log = [json.loads(line) for line in (tmp_path / f"out-{method}" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["loss"] == r["loss"] for r in steps)
    assert any("RR@10" in r for r in log)
    summary = json.loads((tmp_path / f"out-{method}" / "summary.json").read_text())
    assert summary["dev_queries"] == 3 and summary["best_step"] in (0, 2, 4)
    assert [r["step"] for r in log if "RR@10" in r] == [0, 2, 4]  # the start model is evaluated too


def test_kill_and_resume_gives_identical_parameters(tmp_path, tiny_train, tiny_model_dir, kill_and_resume):
    def make(name):
        return Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, out=str(tmp_path / name)))

    straight, resumed = kill_and_resume(make)
    reference = params(straight.model)
    for k, v in params(resumed.model).items():
        assert torch.equal(v, reference[k]), k
    log = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log if "loss" in x] == [1, 2, 3, 4]


def test_existing_checkpoints_need_resume(tmp_path, tiny_train, tiny_model_dir):
    first = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, max_steps=2))
    first.setup()
    first.train()
    again = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, max_steps=2))
    again.setup()
    with pytest.raises(HardnegError, match="--resume"):
        again.train()


def test_resume_refuses_changed_settings(tmp_path, tiny_train, tiny_model_dir):
    trainer = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, max_steps=2))
    trainer.setup()
    trainer.train()
    other = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, max_steps=4, lr=5e-4))
    other.setup()
    with pytest.raises(HardnegError, match="other training settings"):
        other.train(resume=True)


def test_ance_refreshes_its_negatives(tmp_path, tiny_train, tiny_model_dir):
    trainer = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, "ance", refresh_every=2, lr=5e-3))
    trainer.setup()
    first = {q: trainer.method.source.pool(q) for q in trainer.train_qrels}
    trainer.train()
    assert trainer.method.refreshes == 1
    second = {q: trainer.method.source.pool(q) for q in trainer.train_qrels}
    assert first != second
    for q, pool in second.items():
        assert not set(pool) & trainer.positives[q]
    # the re-mining is logged apart from the steps (Table 4 counts it): one record, at the refresh step,
    # naming the whole corpus and every training query as encoded
    log = [json.loads(line) for line in (tmp_path / "out-ance" / "train_log.jsonl").read_text().splitlines()]
    remine = [r for r in log if r["kind"] == "remine"]
    assert [r["step"] for r in remine] == [2]
    assert remine[0]["docs_encoded"] == len(trainer.doc_ids)
    assert remine[0]["queries_encoded"] == len(trainer.train_qrels)
    assert remine[0]["seconds"] > 0


@pytest.mark.parametrize("change, message", [
    ({"method": "dpr"}, "method must be one of"),
    ({"method": "static", "negatives": "/nonexistent/run.trec"}, "not found"),
    ({"method": "ance"}, "refresh-every"),
    ({"batch_size": 500}, "larger than the"),
    ({"topk": 10_000}, "larger than the corpus"),
    ({"optimizer": "sgd"}, "optimizer must be one of"),
])
def test_bad_configurations_fail_before_compute(change, message, tmp_path, tiny_train, tiny_model_dir):
    with pytest.raises(HardnegError, match=message):
        Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, **change)).setup()


def test_data_order_is_a_function_of_seed_and_step():
    order = DataOrder(10, 4, 1, seed=3)
    first = [order.indices(s, 0)[0] for s in range(5)]
    again = DataOrder(10, 4, 1, seed=3)
    assert [again.indices(s, 0)[0] for s in reversed(range(5))][::-1] == first
    flat = [i for batch in first for i in batch]
    assert sorted(flat[:10]) == list(range(10))  # the first epoch visits every example once


def test_split_dev_is_seeded_and_disjoint():
    qids = [f"q{i}" for i in range(50)]
    train, dev = split_dev(qids, 0.2, seed=1)
    assert len(dev) == 10 and not set(train) & set(dev) and set(train) | set(dev) == set(qids)
    assert split_dev(qids, 0.2, seed=1) == (train, dev)
    assert split_dev(qids, 0.2, seed=2)[1] != dev


def test_split_dev_by_documents_keeps_dev_positives_out_of_train():
    # q0-q9 share d-shared (one group); the rest are pairs sharing a document, or alone
    qrels = {f"q{i}": {"d-shared": 1, f"d{i}": 1} for i in range(10)}
    qrels.update({f"q{i}": {f"p{i // 2}": 1} for i in range(10, 40)})
    qrels.update({f"q{i}": {f"s{i}": 1, "judged-0": 0} for i in range(40, 60)})
    qrels["q40"]["judged-0"] = 0  # a grade-0 judgement links nothing
    qids = sorted(qrels)
    for seed in range(5):
        train, dev = split_dev(qids, 0.2, seed=seed, carve="documents", qrels=qrels)
        assert 12 <= len(dev) <= 18 and not set(train) & set(dev) and set(train) | set(dev) == set(qids)
        train_pos = {d for q in train for d, g in qrels[q].items() if g >= 1}
        assert not train_pos & {d for q in dev for d, g in qrels[q].items() if g >= 1}
        assert split_dev(qids, 0.2, seed=seed, carve="documents", qrels=qrels) == (train, dev)
    # a random carve-out of the same queries does share positives with train (what this option avoids)
    shared = 0
    for seed in range(5):
        train, dev = split_dev(qids, 0.2, seed=seed)
        train_pos = {d for q in train for d, g in qrels[q].items() if g >= 1}
        shared += bool(train_pos & {d for q in dev for d, g in qrels[q].items() if g >= 1})
    assert shared > 0
    giant = {f"g{i}": {"d": 1} for i in range(50)} | {f"s{i}": {f"s{i}": 1} for i in range(20)}
    assert all(q.startswith("s") for q in split_dev(sorted(giant), 0.2, 0, carve="documents", qrels=giant)[1])
    one_group = {f"q{i}": {"d": 1} for i in range(10)}
    with pytest.raises(HardnegError, match="too few groups"):
        split_dev(sorted(one_group), 0.2, seed=0, carve="documents", qrels=one_group)


def test_train_dev_split_is_the_one_selection_of_trainer_experiment_and_peer(tmp_path, tiny_train, tiny_model_dir):
    """A carve-out and a ``dev_split`` select the same training and dev queries for the trainer, an
    experiment's dev evaluations (WiSE-FT) and the sentence-transformers peer."""
    from hardneg.experiment.peer_st import peer_data
    from hardneg.experiment.runner import Experiment

    (tiny_train / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq5\td5-0\t1\nq1\td1-0\t1\n")
    all_qids = sorted(f"q{i}" for i in range(12))
    for kw in ({}, {"dev_split": "dev"}):
        cfg = train_config(tmp_path, tiny_train, tiny_model_dir, "star", **kw)
        split = train_dev_split(cfg)
        if kw:  # the named split is dev; every training query trains
            assert split.dev_qids == ["q1", "q5"] and split.train_qids == all_qids
            assert split.dev_dataset is not split.dataset and split.dev_qrels == {"q1": {"d1-0": 1}, "q5": {"d5-0": 1}}
        else:  # a quarter of the training queries, disjoint from the rest, seeded
            assert len(split.dev_qids) == 3 and sorted(split.train_qids + split.dev_qids) == all_qids
            assert split.dev_dataset is split.dataset
            assert train_dev_split(cfg.model_copy(update={"seed": cfg.seed + 1})).dev_qids != split.dev_qids
        assert set(split.train_queries) == set(split.train_qids) and set(split.dev_queries) == set(split.dev_qids)
        trainer = Trainer(cfg)
        trainer.setup()
        assert sorted(trainer.train_qrels) == split.train_qids and trainer.dev_qrels == split.dev_qrels
        assert Experiment.dev_set(cfg)[1] == split.dev_qrels
        peer = peer_data(cfg)
        assert (peer.train_qids, peer.dev_qids, peer.dev_qrels) == (split.train_qids, split.dev_qids, split.dev_qrels)
        assert set(peer.queries) == set(all_qids)


@pytest.mark.parametrize("method", ["static", "ance"])
def test_tracking_overlap(tmp_path, tiny_train, tiny_model_dir, method):
    """Unchanged weights: the static negatives *are* the dynamic ones (overlap 1); trained: logged per step."""
    extra = {"refresh_every": 2} if method == "ance" else {}
    frozen = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, method=method, lr=1e-30, track_every=2,
                            out=str(tmp_path / "frozen"), **extra))
    frozen.train()
    log = [json.loads(x) for x in (tmp_path / "frozen" / "train_log.jsonl").read_text().splitlines()]
    tracked = [r for r in log if r["kind"] == "track"]
    assert [r["step"] for r in tracked] == [2, 4]
    assert all(r["overlap@8"] == 1.0 and 0 <= r["train_RR@10"] <= 1 for r in tracked)
    moved = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, method=method, lr=5e-2, track_every=1,
                           out=str(tmp_path / "moved"), **extra))
    moved.train()
    log = [json.loads(x) for x in (tmp_path / "moved" / "train_log.jsonl").read_text().splitlines()]
    overlaps = [r["overlap@8"] for r in log if r["kind"] == "track"]
    assert len(overlaps) == 4 and min(overlaps) < 1.0  # a large learning rate moves the ranking


# ----------------------------------------------------------------------------- the loss that trains
def layout_oracle(trainer, examples, negatives):
    """The batch layout's masks, written out by hand: ``(own negatives, other documents)``."""
    b, n = len(examples), trainer.config.n_negatives
    doc_list = [e.pos for e in examples] + [x for negs in negatives for x in negs]
    own = torch.zeros(b, len(doc_list), dtype=torch.bool)
    other = torch.zeros_like(own)
    for i, e in enumerate(examples):
        for j, docid in enumerate(doc_list):
            if j == i or docid in trainer.positives[e.qid]:
                continue  # the own positive, or another copy of a known positive: never a negative
            (own if b + i * n <= j < b + (i + 1) * n else other)[i, j] = True
    return own, other


def ranknet_by_hand(scores, mask):
    """Paper Eq. 14 averaged over the valid pairs: mean of log(1 + exp(s⁻ − s⁺))."""
    terms = [math.log1p(math.exp(float(scores[i, j] - scores[i, i]))) for i, j in mask.nonzero().tolist()]
    return sum(terms) / max(len(terms), 1), len(terms)


def softmax_by_hand(scores, mask):
    rows = []
    for i in range(scores.shape[0]):
        logits = [float(scores[i, j]) for j in [i, *mask[i].nonzero().flatten().tolist()]]
        top = max(logits)
        rows.append(top + math.log(sum(math.exp(x - top) for x in logits)) - logits[0])
    return sum(rows) / len(rows)


@pytest.mark.parametrize("method, kw", [
    ("inbatch", {}),
    ("inbatch", {"loss": "softmax"}),
    ("rand", {}),
    ("rand", {"rand_batch_positives": False}),  # DRhard's randneg_train: the batch's sampled negatives only
    ("bm25neg", {}),
    ("static", {}),
    ("ance", {"refresh_every": 1}),
    ("star", {"alpha": 0.5}),
    ("star", {"star_mixing": "pairmean"}),
    ("star", {"loss": "softmax", "alpha": 2.0}),
])
def test_the_step_trains_on_the_paper_loss_function(method, kw, tmp_path, tiny_train, tiny_model_dir):
    """One real training step per method: the loss it used equals the pure loss function of
    hardneg.train.losses (the one the paper-formula tests check) on the scores the step produced,
    with the batch layout's masks written out by hand, and the paper's formula itself."""
    cfg = train_config(tmp_path, tiny_train, tiny_model_dir, method, batch_size=8, n_negatives=2, max_steps=3, **kw)
    trainer = Trainer(cfg)
    trainer.setup()
    seen = {}
    real_loss = trainer.method.loss

    def capture(scores, batch):
        out = real_loss(scores, batch)
        seen.update(scores=scores.detach().clone(), batch=batch, loss=out[0].detach().clone())
        return out

    trainer.method.loss = capture
    step = 0
    if method == "ance":  # the step after a refresh: the mining hook ran with the current weights
        trainer.step_gradients(0)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.method.after_step(1)
        assert trainer.method.refreshes == 1
        step = 1
    totals = trainer.step_gradients(step)
    scores, batch, used = seen["scores"], seen["batch"], seen["loss"]
    examples, negatives = trainer.micro_batch(step, 0)
    assert [e.qid for e in batch.examples] == [e.qid for e in examples] and batch.negatives == negatives
    assert scores.shape == (8, 8 + 8 * (2 if method != "inbatch" else 0))
    assert totals["loss"] == float(used)
    own, other = layout_oracle(trainer, examples, negatives)
    pos = scores.diagonal()
    loss_kind = cfg.loss
    if method == "inbatch":
        pure, hand = pairwise_loss(pos, scores, other, loss=loss_kind), other
    elif method == "rand":
        hand = own | other
        if not cfg.rand_batch_positives:  # no column of the batch's positives (the first 8)
            hand = hand.clone()
            hand[:, :8] = False
        pure = pairwise_loss(pos, scores, hand, loss=loss_kind)
    elif method in ("bm25neg", "static", "ance"):
        pure, hand = pairwise_loss(pos, scores, own, loss=loss_kind), own
    else:
        pure = star_loss(pos, scores, scores, own, other, alpha=cfg.alpha, mixing=cfg.star_mixing,
                         loss=loss_kind)
        hand = None
    assert torch.equal(used, pure)  # bit for bit: training calls exactly this function
    s = scores.double()
    if hand is not None:
        mean, count = ranknet_by_hand(s, hand) if loss_kind == "ranknet" else (softmax_by_hand(s, hand), None)
        assert used.item() == pytest.approx(mean, rel=1e-5, abs=1e-6)
        if count is not None:
            assert totals["pairs"] == count
    elif cfg.star_mixing == "pairmean":  # DRhard: (first_loss + second_loss) / (first_num + second_num)
        (m_h, n_h), (m_r, n_r) = ranknet_by_hand(s, own), ranknet_by_hand(s, other)
        assert used.item() == pytest.approx((m_h * n_h + m_r * n_r) / (n_h + n_r), rel=1e-5)
        assert (totals["hard_pairs"], totals["random_pairs"]) == (n_h, n_r)
    else:  # paper Eq. 13: L_s + α·L_r
        by_hand = ranknet_by_hand if loss_kind == "ranknet" else (lambda x, m: (softmax_by_hand(x, m), 0))
        expected = by_hand(s, own)[0] + cfg.alpha * by_hand(s, other)[0]
        assert used.item() == pytest.approx(expected, rel=1e-5)
    assert other.any() and (method == "inbatch" or own.any())


def test_one_registry_names_every_method():
    from hardneg.train.methods import make_method, method_class, method_help, method_names, method_spec

    names = method_names()
    assert names == ("inbatch", "rand", "bm25neg", "static", "ance", "star", "adore")
    for name in names:
        assert method_class(name).name == name
        text = method_help(name)
        assert text and "\n" not in text and len(text) < 100
    assert method_spec("adore").frozen_doc and not method_spec("star").frozen_doc
    for call in (method_help, method_class, lambda n: make_method(n, None)):
        with pytest.raises(HardnegError, match="unknown method 'dpr'; known: inbatch, rand"):
            call("dpr")


def test_patience_stops_after_n_dev_evaluations_without_improvement_and_resume_keeps_it(
        tmp_path, tiny_train, tiny_model_dir):
    """lr 1e-12 (below float32 resolution) keeps every dev evaluation equal to step 0's: with patience 2 and
    dev every step the run stops at step 2 of 10, keeps the step-0 model, and ``--resume`` of the stopped run
    trains no further."""
    import json

    cfg = train_config(tmp_path, tiny_train, tiny_model_dir, "inbatch", lr=1e-12, max_steps=10, dev_every=1,
                 save_every=5, patience=2)
    Trainer(cfg).train()
    out = Path(cfg.out)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["stopped_early"], summary["best_step"]) == (2, 0)
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]
    Trainer(cfg).train(resume=True)
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2]  # nothing trained after the stop
    assert json.loads((out / "summary.json").read_text())["stopped_early"] == 2
    # without patience the same run goes to the cap
    full = train_config(tmp_path, tiny_train, tiny_model_dir, "inbatch", lr=1e-12, max_steps=3, dev_every=1,
                  out=str(tmp_path / "full"))
    Trainer(full).train()
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["stopped_early"] is None


DOC_SPLIT = ("t_negatives", "t_query_encode", "t_doc_encode", "t_loss", "t_backward", "t_optimizer")


def test_star_log_records_carry_the_step_time_split(tmp_path, tiny_train, tiny_model_dir, monkeypatch):
    """Every step record has the split; the parts are disjoint (sum <= the step's wall time) and summed
    over micro-batches: negatives slowed by 30 ms show as >= 60 ms with two micro-batches."""
    import time

    trainer = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, "star", max_steps=2, grad_accum=2,
                             batch_size=2, dev_every=2, save_every=2))
    trainer.setup()
    draw = trainer.method.negatives

    def slow_negatives(*args, **kw):
        time.sleep(0.03)
        return draw(*args, **kw)

    monkeypatch.setattr(trainer.method, "negatives", slow_negatives)
    trainer.train()
    log = [json.loads(x) for x in (tmp_path / "out-star" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["kind"] == "train"]
    assert len(steps) == 2
    for r in steps:
        assert all(r[k] >= 0 for k in DOC_SPLIT), r
        assert sum(r[k] for k in DOC_SPLIT) <= r["seconds"]
        assert r["t_negatives"] >= 0.06
        assert "t_search" not in r


# ----------------------------------------------------------------------------- dev evaluation
@pytest.fixture(scope="module")
def spread_model_dir(tmp_path_factory):
    """A tiny random BERT whose vectors differ a lot from text to text (relevant documents land anywhere)."""
    from conftest import _tiny_bert

    return _tiny_bert(tmp_path_factory.mktemp("spread-bert"), init_range=0.5)


@pytest.mark.parametrize("method", ["inbatch", "adore"])
def test_dev_is_ranked_as_deep_as_the_dev_metric_needs(method, tmp_path, spread_model_dir):
    """``--dev-metric R@1000`` ranks dev 1000 deep (here: the whole corpus) for every method, in the dev pool
    (inbatch) or the method's own index (adore): on 448 documents the start model ranks a relevant dev
    document below 100 (R@100 < 1) and R@1000 is exactly 1; a top-100 ranking would give R@1000 = R@100."""
    data = write_tiny_train(tmp_path / "tiny-train", filler=400)
    trainer = Trainer(train_config(tmp_path, data, spread_model_dir, method, dev_metric="R@1000", dev_pool=0))
    trainer.setup()
    assert len(trainer.doc_ids) == 448 and len(trainer.dev_qrels) == 3
    metrics = trainer.evaluate_dev()
    assert metrics["R@100"] < 1.0
    assert metrics["R@1000"] == 1.0
    assert len(trainer.dev_index) == 448
