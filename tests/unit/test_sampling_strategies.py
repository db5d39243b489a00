"""SimANS negatives (``--sampling-strategy simans``) and TAS batches (``--batch-composition tas``): the sampling law
against its formula, the batches' clusters and coverage, exact resume, training end to end, bad values."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import train_config, write_tiny_train
from hardneg.errors import HardnegError
from hardneg.negatives.rules import NegativeRules
from hardneg.negatives.sampling import StaticNegatives, balanced_logits, simans_logits, weighted_draw
from hardneg.negatives.selection import select_negatives, select_one, selection_rng
from hardneg.train.config import TrainConfig
from hardneg.train.tas import TasOrder, query_clusters
from hardneg.train.trainer import Trainer

POOL = [f"n{i}" for i in range(8)]
POOL_SCORES = [0.95, 0.9, 0.8, 0.7, 0.55, 0.4, 0.2, -0.1]


def _simans_p(scores, pos, a, b):
    w = np.exp(-a * (np.asarray(scores) - pos - b) ** 2)
    return w / w.sum()


def _within_binomial(counts: np.ndarray, p: np.ndarray, draws: int) -> None:
    """Each category's frequency within 5 binomial standard deviations sqrt(p(1-p)/N) of p (a false alarm has
    probability < 1e-5 over 8 categories), and Pearson's chi-square below its 99.99% point for 7 degrees of
    freedom (29.9)."""
    freq = counts / draws
    sd = np.sqrt(p * (1 - p) / draws)
    assert np.all(np.abs(freq - p) <= 5 * sd + 1e-12), (freq, p)
    chi2 = float(((counts - draws * p) ** 2 / (draws * p)).sum())
    assert chi2 < 29.9, chi2


def test_simans_static_draws_follow_the_formula_with_the_examples_own_positive():
    """10^5 single draws (one per step) from an 8-document pool: frequencies match p ∝ exp(-a (s - s⁺ - b)²),
    s⁺ being the example's own positive; without one, the mean of the query's positives."""
    docs = [*POOL, "p1", "p2", "x"]
    qrels = {"q": {"p1": 1, "p2": 1}}
    a, b = 8.0, -0.1
    source = StaticNegatives({"q": POOL}, qrels, docs, topk=8, seed=3, law=("simans", a, b))
    source.set_scores({"q": {**dict(zip(POOL, POOL_SCORES, strict=True)), "p1": 0.85, "p2": 0.45}})
    draws = 100_000
    for pos, ref in (("p1", 0.85), (None, 0.65)):
        counts = np.zeros(len(POOL))
        for step in range(draws):
            counts[POOL.index(source.sample("q", 1, step, pos)[0])] += 1
        _within_binomial(counts, _simans_p(POOL_SCORES, ref, a, b), draws)
    again = StaticNegatives({"q": POOL}, qrels, docs, topk=8, seed=3, law=("simans", a, b))
    again.set_scores({"q": source.scores("q")})
    assert [again.sample("q", 3, s, "p1") for s in range(50)] == [source.sample("q", 3, s, "p1") for s in range(50)]
    assert all(len(set(source.sample("q", 5, s, "p2"))) == 5 for s in range(50))  # without replacement


def test_weighted_draw_first_pick_follows_p_and_survives_underflow():
    """The first index of a Gumbel-top-k draw of 3 has probability p; a law whose weights underflow in exp()
    still draws (the logits are used, not the weights)."""
    logits = simans_logits(POOL_SCORES, 0.6, 3.0, 0.0)
    p = np.exp(logits) / np.exp(logits).sum()
    draws = 100_000
    rng = np.random.default_rng(0)
    counts = np.bincount([weighted_draw(rng, logits, 3)[0] for _ in range(draws)], minlength=len(POOL))
    _within_binomial(counts, p, draws)
    huge = simans_logits(POOL_SCORES, 0.6, 1e6, 0.0)
    assert np.all(np.exp(huge)[[0, 7]] == 0) and len(set(weighted_draw(rng, huge, 8))) == 8


def test_simans_selection_draws_the_window_around_the_mean_positive():
    """select_one with simans and one negative: frequencies over seeds match the law around the mean of the
    positives' scores; the kept list is sorted by score like random's."""
    rules = NegativeRules(sampling_strategy="simans", num_negatives=1, simans_a=5.0, simans_b=0.1)
    docs, scores = ["p", *POOL], [0.7, *POOL_SCORES]
    draws = 20_000
    counts = np.zeros(len(POOL))
    for step in range(draws):
        sel = select_one(docs, scores, ["p"], [0.7, 0.5], rules, 1, 20, selection_rng(0, step, "q"))
        counts[POOL.index(sel.kept[0])] += 1
    _within_binomial(counts, _simans_p(POOL_SCORES, 0.6, 5.0, 0.1), draws)
    sel = select_one(docs, scores, ["p"], [0.7], NegativeRules(sampling_strategy="simans", num_negatives=4), 4, 20,
                     selection_rng(0, 1, "q"))
    assert sel.kept_scores == sorted(sel.kept_scores, reverse=True) and "p" not in sel.kept


def test_simans_scores_out_and_bad_values():
    rules = NegativeRules(sampling_strategy="simans", num_negatives=2)
    cands = {"q": [("p", 0.9), ("a", 0.8), ("b", 0.5), ("c", 0.1)]}
    out: dict = {}
    kept = select_negatives(cands, {"q": {"p": 1}}, rules, default_n=2, scores_out=out,
                            positive_scores=lambda q, ids: np.array([0.75] * len(ids)))
    assert set(out["q"]) == {"p", *kept["q"]} and out["q"]["p"] == 0.75 and len(kept["q"]) == 2
    assert all(out["q"][d] == dict(cands["q"])[d] for d in kept["q"])
    with pytest.raises(HardnegError, match="simans need the positives' scores"):  # BM25: positive not in the run
        select_negatives({"q": cands["q"][1:]}, {"q": {"p": 1}}, rules, default_n=2)
    for bad, match in (({"simans_a": 0.0}, "simans_a must be > 0"), ({"simans_a": math.inf}, "finite"),
                       ({"simans_b": "x"}, "finite")):
        with pytest.raises(HardnegError, match=match):
            NegativeRules(sampling_strategy="simans", **bad)
    with pytest.raises(HardnegError, match="for --sampling-strategy simans"):
        NegativeRules(simans_a=2.0)
    source = StaticNegatives({"q": ["a", "b", "c"]}, {"q": {"p": 1}}, ["p", "a", "b", "c"], topk=3,
                             law=("simans", 1, 0))
    with pytest.raises(HardnegError, match="simans needs the mining scores"):  # candidates given without their scores
        source.sample("q", 1, 0, "p")


def test_balanced_draws_each_margin_bin_equally_often():
    """TAS-B's balanced law: margins s⁺ - s in 10 equal bins over their range; a bin uniformly, then a document
    in it. Pool margins (s⁺ = 1.0): 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.1 over [0.05, 1.1]: bins of width
    0.105 hold {0.05, 0.1}, {0.2}, {0.3}, {0.45}, {0.6}, {0.8}, {1.1}: 7 bins, the first with two documents."""
    docs = [*POOL, "p"]
    source = StaticNegatives({"q": POOL}, {"q": {"p": 1}}, docs, topk=8, seed=1, law=("balanced",))
    source.set_scores({"q": {**dict(zip(POOL, POOL_SCORES, strict=True)), "p": 1.0}})
    p = np.array([1 / 14, 1 / 14, 1 / 7, 1 / 7, 1 / 7, 1 / 7, 1 / 7, 1 / 7])
    draws = 100_000
    counts = np.zeros(len(POOL))
    for step in range(draws):
        counts[POOL.index(source.sample("q", 1, step, "p")[0])] += 1
    _within_binomial(counts, p, draws)
    assert np.allclose(np.exp(balanced_logits(POOL_SCORES, 1.0)) / np.exp(balanced_logits(POOL_SCORES, 1.0)).sum(),
                       p)
    assert np.all(balanced_logits([0.3, 0.3, 0.3], 1.0) == 0)  # one margin: uniform
    rules = NegativeRules(sampling_strategy="balanced", num_negatives=3, range_max=20)
    assert rules.law == ("balanced",) and rules.weighted and not rules.simans
    with pytest.raises(HardnegError, match="balanced need the positives' scores"):
        select_negatives({"q": [("a", 0.8), ("b", 0.5)]}, {"q": {"p": 1}}, rules, default_n=1)


# ----------------------------------------------------------------------------- TAS
def _clusters(n: int = 120, k: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, size=n)


@pytest.mark.parametrize("per_batch, batch", [(1, 8), (2, 8), (3, 12)])
def test_tas_batches_hold_at_most_c_clusters_and_cover_every_example(per_batch, batch):
    clusters = _clusters()
    order = TasOrder(clusters, batch, 1, seed=5, per_batch=per_batch)
    for epoch in range(3):
        batches = order.epoch(epoch)
        assert all(len(b) == batch and len(set(b.tolist())) == batch for b in batches)
        assert all(len(set(clusters[b].tolist())) <= per_batch for b in batches)
        seen = np.concatenate(batches)
        assert set(seen.tolist()) == set(range(len(clusters)))  # every example, at least once
        assert len(seen) - len(clusters) < batch * len(np.unique(clusters))  # repeats: at most a batch per cluster
    # indices() walks the epochs in order; a fresh order (a resumed run) gives the same micro-batches
    fresh = TasOrder(clusters, batch, 2, seed=5, per_batch=per_batch)
    flat = [b.tolist() for e in range(3) for b in order.epoch(e)]
    assert [fresh.indices(s, m)[0] for s in range(len(flat) // 2) for m in range(2)] == flat[: len(flat) // 2 * 2]
    assert fresh.indices(3, 1)[1] == 7 * batch and fresh.epoch_of(0) == 0.0
    assert TasOrder(clusters, batch, 1, seed=6, per_batch=per_batch).epoch(0)[0].tolist() != flat[0]


def test_tas_small_clusters_take_more_clusters_only_when_c_cannot_fill_a_batch():
    clusters = np.repeat(np.arange(10), 3)  # 3 examples per cluster, batches of 8 from 2 clusters: impossible
    order = TasOrder(clusters, 8, 1, seed=0, per_batch=2)
    batches = order.epoch(0)
    assert set(np.concatenate(batches).tolist()) == set(range(30))
    assert all(len(set(b.tolist())) == 8 for b in batches)


def test_kmeans_clusters_are_seeded_and_follow_the_vectors():
    """Two well-separated blobs of query vectors are the two clusters (k-means from a random start may merge
    blobs when k > 2, so the check uses two); the same seed gives the same labels."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = np.concatenate([c + rng.normal(size=(25, 16)) for c in rng.normal(size=(2, 16)) * 10])
        a = query_clusters(x, 2, seed=seed)
        assert np.array_equal(a, query_clusters(x, 2, seed=seed))
        assert len(set(a[:25].tolist())) == len(set(a[25:].tolist())) == 1 and a[0] != a[25]
    with pytest.raises(HardnegError, match="--tas-clusters"):
        query_clusters(x, 51, seed=1)


def test_tas_settings_are_checked(tmp_path):
    data = write_tiny_train(tmp_path / "d")
    with pytest.raises(HardnegError, match="--tas-clusters.*for --batch-composition tas"):
        TrainConfig(data=str(data), tas_clusters=4).validate()
    with pytest.raises(HardnegError, match="--tas-clusters-per-batch 5 is more than"):
        TrainConfig(data=str(data), batch_composition="tas", tas_clusters=4, tas_clusters_per_batch=5).validate()
    with pytest.raises(HardnegError, match="batch_composition"):
        TrainConfig(data=str(data), batch_composition="topic")
    with pytest.raises(HardnegError, match="tas_clusters must be at least 1"):
        TrainConfig(data=str(data), batch_composition="tas", tas_clusters=0)


# ----------------------------------------------------------------------------- end to end
def _params(model):
    return {k: v.detach().clone() for k, v in model.doc_model.state_dict().items()}


def test_tas_training_batches_and_exact_resume(tmp_path, tiny_model_dir, kill_and_resume):
    """star with TAS batches: the clusters file is written, every micro-batch holds one cluster's queries, and a
    run killed after its step-2 checkpoint and resumed ends with the straight run's parameters bit for bit."""
    data = write_tiny_train(tmp_path / "data", filler=20)

    def make(name):
        return Trainer(train_config(tmp_path, data, tiny_model_dir, "star", out=str(tmp_path / name),
                                    batch_composition="tas", tas_clusters=3, tas_clusters_per_batch=1,
                                    batch_size=2))

    straight, resumed = kill_and_resume(make)
    saved = json.loads((tmp_path / "a" / "tas" / "clusters.json").read_text())
    assert saved["k"] == 3 and set(saved["clusters"]) == {e.qid for e in straight.examples}
    of = saved["clusters"]
    sizes = Counter(of[e.qid] for e in straight.examples)
    for step in range(4):  # one cluster, unless it holds fewer examples than a batch (the documented exception)
        found = {of[straight.examples[i].qid] for i in straight.order.indices(step, 0)[0]}
        assert len(found) == 1 or min(sizes[c] for c in found) < 2
    reference = _params(straight.model)
    for k, v in _params(resumed.model).items():
        assert torch.equal(v, reference[k]), k


@pytest.mark.parametrize("strategy, extra, law", [("simans", {"simans_a": 4.0}, ("simans", 4.0, 0.0)),
                                                   ("balanced", {}, ("balanced",))])
def test_weighted_static_training_draws_with_the_start_models_scores(tmp_path, tiny_model_dir, kill_and_resume,
                                                                     strategy, extra, law):
    """static with SimANS / balanced: the warm-up keeps the start model's scores of every pool document and
    positive (scores.json), the source draws with them, and resume is exact."""
    from hardneg.model.encoding import encode_texts

    data = write_tiny_train(tmp_path / "data", filler=20)

    def make(name):
        return Trainer(train_config(tmp_path, data, tiny_model_dir, "static", out=str(tmp_path / name),
                                    sampling_strategy=strategy, n_negatives=2, **extra))

    straight, resumed = kill_and_resume(make)
    scores = json.loads((tmp_path / "a" / "warmup" / "scores.json").read_text())
    source = straight.method.source
    assert source.law == law
    for q in straight.train_qrels:
        assert set(source.pool(q)) <= set(scores[q]) and straight.positives[q] <= set(scores[q])
        assert set(source.scores(q)) == set(source.pool(q)) | straight.positives[q]
        assert all(source.scores(q)[d] == scores[q][d] for d in source.scores(q))
    q = sorted(straight.train_qrels)[0]
    texts = {d.doc_id: d.full_text() for d in straight.dataset.iter_docs()}
    fresh = Trainer(train_config(tmp_path, data, tiny_model_dir, "static", out=str(tmp_path / "c")))
    fresh.setup()  # the start model's weights
    qv = encode_texts(fresh.model, [fresh.queries[q].text], "query")[0]
    docs = sorted(scores[q])
    dv = encode_texts(fresh.model, [texts[d] for d in docs], "doc")
    assert np.allclose(dv @ qv, [scores[q][d] for d in docs], atol=1e-4)
    reference = _params(straight.model)
    for k, v in _params(resumed.model).items():
        assert torch.equal(v, reference[k]), k


def test_simans_ance_refresh_keeps_its_scores_across_resume(tmp_path, tiny_model_dir, kill_and_resume):
    """ance re-mines at step 2 with SimANS: the refresh's scores are checkpointed with its negatives, so a run
    killed right after that checkpoint resumes drawing with them (parameters equal bit for bit)."""
    data = write_tiny_train(tmp_path / "data", filler=20)

    def make(name):
        return Trainer(train_config(tmp_path, data, tiny_model_dir, "ance", out=str(tmp_path / name),
                                    sampling_strategy="simans", simans_a=4.0, n_negatives=2, refresh_every=2))

    straight, resumed = kill_and_resume(make)
    assert (tmp_path / "b" / "checkpoints" / "step-0000002" / "scores.json").is_file()
    qids = sorted(straight.train_qrels)
    assert [resumed.method.source.scores(q) for q in qids] == [straight.method.source.scores(q) for q in qids]
    assert any(straight.method.source.scores(q) for q in qids)
    reference = _params(straight.model)
    for k, v in _params(resumed.model).items():
        assert torch.equal(v, reference[k]), k


def test_simans_bm25neg_weighs_with_bm25s_scores_or_a_teachers(tmp_path, tiny_model_dir):
    """bm25neg with simans: without a teacher BM25 scores the pool and the positives (its own scores, which the
    SimANS law compares); with one, the teacher's."""
    data = write_tiny_train(tmp_path / "data", filler=20)
    plain = Trainer(train_config(tmp_path, data, tiny_model_dir, "bm25neg", sampling_strategy="simans",
                                 max_steps=1))
    plain.setup()
    source = plain.method.source
    for q in plain.train_qrels:
        assert set(source.pool(q)) <= set(source.scores(q))
        assert plain.positives[q] & set(source.scores(q)), q  # the positives' BM25 scores are there
    trainer = Trainer(train_config(tmp_path, data, tiny_model_dir, "bm25neg", sampling_strategy="simans",
                                   max_steps=1, teacher=str(tiny_model_dir), out=str(tmp_path / "t")))
    trainer.setup()
    source = trainer.method.source
    assert all(set(source.pool(q)) <= set(source.scores(q)) for q in trainer.train_qrels)
    trainer.train()


def test_hardneg_mine_simans_chunked_equals_one_pass_with_or_without_a_teacher(tmp_path, tiny_model_dir):
    """hardneg mine's stream with simans (BM25 candidates, a bi-encoder teacher's scores): chunks of 5 give one
    pass's bytes (the draw is keyed per query), every list is drawn from the window; without a teacher, BM25's
    own scores (of the positives too) weigh the draw."""
    from hardneg.data.load import load_dataset
    from hardneg.negatives.diagnostics import diagnostics_path_for
    from hardneg.negatives.formats.files import read_negative_file
    from hardneg.negatives.stream import mine_streamed

    tiny = write_tiny_train(tmp_path / "tiny", filler=20)
    ds = load_dataset(f"{tiny}:train")

    def mine(out, rules, chunk):
        return mine_streamed(ds, ds.qrels(), ds.queries(), "bm25", rules, 4, tmp_path / "cache", out, "tsv",
                             chunk_size=chunk, open_encoder=None, diagnostics_path=diagnostics_path_for(out))

    rules = NegativeRules(teacher=str(tiny_model_dir), sampling_strategy="simans", simans_a=30.0, num_negatives=2,
                          range_max=10)
    one, work = tmp_path / "one" / "hard.tsv", tmp_path / "work" / "hard.tsv"
    mine(one, rules, 10_000)
    mine(work, rules, 5)
    assert work.read_bytes() == one.read_bytes()
    lists = read_negative_file(one)
    assert lists and all(len(v) == 2 for v in lists.values())
    assert json.loads(diagnostics_path_for(one).read_text())["events"][0]["removed"]["not_sampled"] > 0
    bm25 = tmp_path / "bm25" / "hard.tsv"  # no teacher: BM25 scores the positives too, the law uses its scores
    mine(bm25, NegativeRules(sampling_strategy="simans", num_negatives=2, range_max=10), 10_000)
    assert read_negative_file(bm25) and all(len(v) == 2 for v in read_negative_file(bm25).values())


def test_simans_in_adores_ranked_lists():
    """ADORE applies the rules to each step's top-K: with simans one negative is drawn per list (keyed by the
    generator it is given, so a step's draw is reproducible), the positives stay, the rest is dropped."""
    from hardneg.train.methods.adore_pairs import filter_ranked

    rules = NegativeRules(sampling_strategy="simans", num_negatives=1, simans_a=10.0, range_max=10)
    retrieved = np.array([[5, 0, 1, 2, 3, 4]])
    scores = np.array([[0.95, 0.9, 0.8, 0.6, 0.3, 0.1]])

    def run(step):
        return filter_ranked(retrieved, scores, [{0: 1}], [[0.9]], rules, rngs=[selection_rng(0, step, "q")])

    outs = [run(s) for s in range(300)]
    drawn = [next(int(r) for r in o[0] if r not in (0, -1)) for o in outs]
    assert all((o[0] >= 0).sum() == 2 and 0 in o[0] for o in outs)  # the positive and one negative
    counts = np.bincount(drawn, minlength=6)  # p ∝ exp(-10 (s - 0.9)²): 0.95 and 0.8 likeliest, 0.1 rarest
    assert min(counts[5], counts[1]) > counts[2] > counts[3] + counts[4]
    assert np.array_equal(run(7), outs[7])
