"""ADORE with a tiny random model: pair weights by hand, frozen document side, PQ consistency, training, resume."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import train_config, write_tiny_train
from hardneg.errors import HardnegError
from hardneg.train.config import TrainConfig
from hardneg.train.methods.adore_pairs import build_pairs, retrieval_metrics
from hardneg.train.methods.settings import parse_adore_metric
from hardneg.train.trainer import Trainer


@pytest.fixture
def tiny_train(tmp_path):
    """test_train.py's tiny BEIR folder, plus filler documents (a PQ index needs >= 256 vectors to train),
    a graded qrel and a query whose only positive is not in the corpus."""
    return write_tiny_train(tmp_path / "tiny-train", filler=232, graded=True, lost_query=True)


@pytest.fixture(scope="module")
def pq_cache(tmp_path_factory):
    """One cache for the PQ tests: training a PQ index takes seconds, so it is built once and reused
    (cache entries are keyed by corpus content and encoder weights, not by folder)."""
    return tmp_path_factory.mktemp("pq-cache")


#: test_adore's runs: the shared tiny run as ADORE
adore_config = functools.partial(train_config, method="adore")


def tower(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- pairs and weights
def test_delta_mrr_weights_of_a_hand_ranking():
    # K = 4: the relevant row 3 sits at rank 3; rows 5, 7, 9 are non-relevant at ranks 1, 2, 4
    pairs = build_pairs(np.array([[5, 7, 3, 9]]), [{3: 1}], "mrr@10")
    assert pairs.pos_rows.tolist() == [[3]] and pairs.pos_ranks.tolist() == [[3]]
    assert pairs.mask[0, 0].tolist() == [True, True, False, True]
    expected = [abs(1 / 3 - 1), abs(1 / 3 - 1 / 2), 0.0, abs(1 / 3 - 1 / 4)]
    assert pairs.weights[0, 0].tolist() == pytest.approx(expected)
    assert pairs.n_pairs == 3 and pairs.skipped == 0
    # cut-off 2: the positive (rank 3) and rank 4 are beyond it
    cut = build_pairs(np.array([[5, 7, 3, 9]]), [{3: 1}], "mrr@2")
    assert cut.weights[0, 0].tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    # the unweighted ablation: weight 1 on every valid pair
    flat = build_pairs(np.array([[5, 7, 3, 9]]), [{3: 1}], "mrr@10", weighting="ranknet")
    assert flat.weights[0, 0].tolist() == [1.0, 1.0, 0.0, 1.0]


def test_delta_ndcg_weights_of_a_hand_ranking():
    # graded: row 3 (grade 2) at rank 2, row 9 (grade 1) at rank 4; rows 5, 7 non-relevant at ranks 1, 3
    idcg = 3 / math.log2(2) + 1 / math.log2(3)  # IDCG@3 of grades [2, 1]
    pairs = build_pairs(np.array([[5, 3, 7, 9]]), [{3: 2, 9: 1}], "ndcg@3", idcg=[idcg])
    d = {1: 1.0, 2: 1 / math.log2(3), 3: 0.5, 4: 0.0}  # discount, 0 beyond the cut-off 3
    assert pairs.pos_ranks.tolist() == [[2, 4]]
    w = pairs.weights[0]
    assert w[0].tolist() == pytest.approx([3 * (d[1] - d[2]) / idcg, 0, 3 * (d[2] - d[3]) / idcg, 0], abs=1e-6)
    assert w[1].tolist() == pytest.approx([1 * d[1] / idcg, 0, 1 * d[3] / idcg, 0], abs=1e-6)
    assert pairs.mask[0].sum() == 4


def test_always_appends_every_relevant_document_not_retrieved_at_rank_k_plus_1():
    pairs = build_pairs(np.array([[0, 1, 2], [4, 5, 6]]), [{7: 1}, {5: 1, 8: 1, 9: 1}], "mrr@10",
                        positives="always")
    # query 0: row 7 not retrieved -> rank K + 1 = 4, paired with every retrieved non-relevant doc
    assert pairs.pos_rows[0, 0] == 7 and pairs.pos_ranks[0, 0] == 4
    assert pairs.mask[0, 0].tolist() == [True, True, True]
    assert pairs.weights[0, 0].tolist() == pytest.approx([1 - 1 / 4, 1 / 2 - 1 / 4, 1 / 3 - 1 / 4])
    assert not pairs.pos_valid[0, 1:].any() and not pairs.mask[0, 1:].any()
    # query 1: row 5 retrieved at rank 2; rows 8, 9 appended at ranks 4, 5
    assert pairs.pos_rows[1].tolist() == [5, 8, 9] and pairs.pos_ranks[1].tolist() == [2, 4, 5]
    assert pairs.mask[1].tolist() == [[True, False, True]] * 3
    assert pairs.n_pairs == 3 + 6 and pairs.skipped == 0


def test_missing_appends_relevant_documents_only_when_none_was_retrieved():
    # DRhard's rule (the default): query 1 retrieved row 5, so rows 8 and 9 are not appended;
    # query 0 retrieved none of its positives, so both are appended at ranks K + 1, K + 2
    retrieved, relevant = np.array([[0, 1, 2], [4, 5, 6]]), [{7: 1, 3: 1}, {5: 1, 8: 1, 9: 1}]
    pairs = build_pairs(retrieved, relevant, "mrr@10")
    assert pairs.pos_rows[0, :2].tolist() == [7, 3] and pairs.pos_ranks[0, :2].tolist() == [4, 5]
    assert pairs.pos_valid.tolist() == [[True, True, False], [True, False, False]]
    assert pairs.pos_rows[1, 0] == 5 and pairs.pos_ranks[1, 0] == 2
    assert pairs.mask[1].tolist() == [[True, False, True], [False] * 3, [False] * 3]
    assert pairs.weights[1, 0].tolist() == pytest.approx([1 - 1 / 2, 0.0, 1 / 2 - 1 / 3])
    assert pairs.n_pairs == 6 + 2 and pairs.skipped == 0
    always = build_pairs(retrieved, relevant, "mrr@10", positives="always")
    assert always.n_pairs == 6 + 6 and torch.equal(always.mask[0], pairs.mask[0])
    # a query whose only positive is retrieved is the same under both rules
    one = [build_pairs(retrieved[1:], [{5: 1}], "mrr@10", positives=rule) for rule in ("missing", "always")]
    assert torch.equal(one[0].mask, one[1].mask) and torch.equal(one[0].weights, one[1].weights)
    with pytest.raises(HardnegError, match="positives must be"):
        build_pairs(retrieved, relevant, "mrr@10", positives="sometimes")


def test_queries_without_a_positive_are_skipped_and_missing_results_ignored():
    pairs = build_pairs(np.array([[0, 1, -1], [2, 3, -1]]), [{}, {3: 1}], "mrr@10")
    assert pairs.skipped == 1 and not pairs.mask[0].any()
    assert pairs.mask[1, 0].tolist() == [True, False, False]  # -1 = no result: never a negative
    metrics = retrieval_metrics(pairs.relevant_retrieved, [0, 2])
    assert metrics == {"train_mrr@10": pytest.approx(0.25), "train_r@10": pytest.approx(0.25)}


@pytest.mark.parametrize("metric", ["mrr", "mrr@0", "ndcg@x", None, "map@10", "mrr@-3", "ndcg@", 10])
def test_bad_metric_strings_fail_before_compute(metric, tmp_path, tiny_train, tiny_model_dir):
    with pytest.raises(HardnegError, match="metric must be mrr@k or ndcg@k"):
        Trainer(adore_config(tmp_path, tiny_train, tiny_model_dir, metric=metric))  # validation, no setup
    with pytest.raises(HardnegError, match="metric must be"):
        build_pairs(np.array([[0, 1]]), [{0: 1}], metric)


def test_metric_parsing_and_adore_only_settings():
    assert parse_adore_metric("MRR@200") == ("mrr", 200) and parse_adore_metric("ndcg@10") == ("ndcg", 10)
    with pytest.raises(HardnegError, match="--metric: for the adore method"):
        TrainConfig(method="star", data="x", metric="ndcg@10").validate()
    with pytest.raises(HardnegError, match="--adore-loss"):
        TrainConfig(method="adore", data="x", loss="softmax").validate()
    # other methods' fingerprints do not change with the ADORE settings' existence
    star = TrainConfig(method="star", data="x").to_dict()
    assert "index" in star and TrainConfig(**star).fingerprint() == TrainConfig(method="star", data="x").fingerprint()


# ----------------------------------------------------------------------------- the method in the loop
def test_no_gradient_reaches_the_document_side(tmp_path, tiny_train, tiny_model_dir):
    trainer = Trainer(adore_config(tmp_path, tiny_train, tiny_model_dir, max_steps=2, dev_every=100, save_every=100))
    trainer.setup()
    model = trainer.model
    assert model.query_model is not model.doc_model and not model.config.shared
    assert not model.doc_model.training
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.query_model.parameters()}
    assert not any(p.requires_grad for p in model.doc_model.parameters())
    doc_before, query_before = tower(model.doc_model), tower(model.query_model)
    examples, negatives = trainer.micro_batch(0, 0)
    loss, parts = trainer.batch_loss(examples, negatives)
    assert parts["pairs"] > 0 and 0 <= parts["train_mrr@10"] <= 1 and loss.item() > 0
    loss.backward()
    assert all(p.grad is None for p in model.doc_model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.query_model.parameters())
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.train()
    for k, v in tower(model.doc_model).items():
        assert torch.equal(v, doc_before[k]), k
    assert all(p.grad is None for p in model.doc_model.parameters())
    assert not model.doc_model.training  # the loop's train mode leaves the frozen tower in eval mode
    after = tower(model.query_model)
    assert any(not torch.equal(after[k], query_before[k]) for k in after)


def test_pq_scores_are_recomputed_from_the_vectors_the_index_ranks_with(tmp_path, tiny_train, tiny_model_dir,
                                                                        pq_cache):
    from hardneg.model.encoding import encode_token_lists

    trainer = Trainer(adore_config(tmp_path, tiny_train, tiny_model_dir, index="pq4", cache_dir=str(pq_cache)))
    trainer.setup()
    method = trainer.method
    assert method.index.manifest["factory"] == "PQ4np"
    qids = list(trainer.train_qrels)
    q = encode_token_lists(trainer.model, [trainer.query_tokens[x] for x in qids], "query")
    scores, rows = method.index.search(q, 20)
    _, s_neg = method.scores(torch.from_numpy(q), rows[:, :1], rows)
    assert np.abs(s_neg.numpy() / trainer.scale - scores).max() <= 1e-4
    # ranking every decoded vector by inner product reproduces the index's own top-20
    every = method.index.reconstruct(np.arange(len(method.index)))
    full = q @ every.T
    top = np.sort(full, axis=1)[:, ::-1][:, :20]
    assert np.abs(top - scores).max() <= 1e-4
    np.testing.assert_allclose(np.take_along_axis(full, rows, 1), scores, atol=1e-4)
    # and the decoded vectors are not the original ones (it is a lossy index)
    from hardneg.artifacts import corpus_embeddings

    original = np.asarray(corpus_embeddings(trainer.model, trainer.dataset, trainer.cache_dir,
                                            show_progress=False).vectors)
    assert np.abs(original - every).max() > 1e-3


@pytest.mark.parametrize("kind", ["flat", "pq4"])
def test_adore_trains_saves_and_the_model_searches_its_index(kind, tmp_path, tiny_train, tiny_model_dir, pq_cache):
    from hardneg.cli import app

    pq = kind.startswith("pq")
    cfg = adore_config(tmp_path, tiny_train, tiny_model_dir, index=kind, metric="ndcg@10" if pq else "mrr@10",
                 cache_dir=str(pq_cache if pq else tmp_path / "cache"))
    trainer = Trainer(cfg)
    trainer.setup()
    model_dir = trainer.train()
    out = tmp_path / "out-adore"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["pairs"] > 0 and "train_mrr@10" in r and "train_r@10" in r for r in steps)
    assert any("RR@10" in r for r in log)
    assert (model_dir / "query_tower" / "model.safetensors").is_file()
    from safetensors.torch import load_file

    root = load_file(str(model_dir / "model.safetensors"))
    query = load_file(str(model_dir / "query_tower" / "model.safetensors"))
    assert any(not torch.equal(root[k], query[k]) for k in root)
    info = json.loads((model_dir / "adore.json").read_text())
    assert info["index_kind"] == kind and info["topk"] == 20 and info["doc_model"] == str(tiny_model_dir)
    assert info["embeddings_key"] == trainer.method.embeddings_key
    from hardneg.index.faiss_index import FaissIndex

    assert FaissIndex.load(info["index"], expect_key=info["embeddings_key"]).manifest["index_kind"] == kind
    runner = CliRunner()
    res = runner.invoke(app, ["-q", "search", info["index"], f"{tiny_train}:train", "--model", str(model_dir),
                              "--k", "10", "--out", str(tmp_path / "search")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "search" / "run.trec").is_file() and (tmp_path / "search" / "metrics.json").is_file()
    if kind == "flat":  # retrieve with the trained model (both towers) works too
        res = runner.invoke(app, ["-q", "retrieve", f"{tiny_train}:train", "--model", str(model_dir), "--k", "10",
                                  "--out", str(tmp_path / "retrieve"), "--cache-dir", str(tmp_path / "cache")])
        assert res.exit_code == 0, res.output
        # the search over ADORE's index ranks exactly as retrieve's index of the same doc tower
        a = (tmp_path / "search" / "run.trec").read_text().split("\n")
        b = (tmp_path / "retrieve" / "run.trec").read_text().split("\n")
        assert [line.split()[:3] for line in a if line] == [line.split()[:3] for line in b if line]


def test_zero_shot_adore_reuses_the_cached_index_and_an_adore_output_continues(tmp_path, tiny_train, tiny_model_dir):
    from hardneg.artifacts import corpus_index
    from hardneg.data.load import load_dataset
    from hardneg.model.encoder import DualEncoder

    cache = tmp_path / "cache"
    encoder = DualEncoder.from_pretrained(str(tiny_model_dir), query_max_length=16, doc_max_length=32)
    index = corpus_index(encoder, load_dataset(f"{tiny_train}:train"), "flat", cache, show_progress=False)
    first = Trainer(adore_config(tmp_path, tiny_train, tiny_model_dir, max_steps=2))
    first.setup()
    assert first.method.embeddings_key == index.manifest["source"]["key"]  # what `retrieve` cached
    model_dir = first.train()
    # an ADORE output as --doc-model: its query tower continues, its doc tower (and cached index) is kept
    second = Trainer(adore_config(tmp_path, tiny_train, model_dir, out=str(tmp_path / "second")))
    second.setup()
    assert second.method.embeddings_key == index.manifest["source"]["key"]
    assert second.method.doc_source == str(tiny_model_dir)
    for k, v in second.model.query_model.state_dict().items():
        assert torch.equal(v, first.model.query_model.state_dict()[k]), k
    for k, v in second.model.doc_model.state_dict().items():
        assert torch.equal(v, encoder.doc_model.state_dict()[k]), k


def test_kill_and_resume_gives_identical_query_tower(tmp_path, tiny_train, tiny_model_dir, kill_and_resume):
    def make(name):
        return Trainer(adore_config(tmp_path, tiny_train, tiny_model_dir, out=str(tmp_path / name)))

    straight, resumed = kill_and_resume(make)
    reference = tower(straight.model.query_model)
    for k, v in tower(resumed.model.query_model).items():
        assert torch.equal(v, reference[k]), k
    log = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log if "loss" in x] == [1, 2, 3, 4]


def test_cli_train_adore(tmp_path, tiny_train, tiny_model_dir):
    from hardneg.cli import app

    runner = CliRunner()
    common = ["--data", str(tiny_train), "--max-steps", "2", "--batch-size", "4", "--dev-every", "2",
              "--save-every", "2", "--query-max-length", "16", "--doc-max-length", "32",
              "--cache-dir", str(tmp_path / "cache")]
    res = runner.invoke(app, ["-q", "train", "adore", "--doc-model", str(tiny_model_dir), "--index", "flat",
                              "--metric", "mrr@10", "--adore-topk", "20", "--out", str(tmp_path / "cli"), *common])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cli" / "model" / "adore.json").read_text())["metric"] == "mrr@10"
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert saved["model"] == str(tiny_model_dir) and saved["adore_topk"] == 20
    res = runner.invoke(app, ["-q", "train", "star", "--doc-model", str(tiny_model_dir), *common])
    assert res.exit_code != 0 and "--doc-model is for adore" in str(res.exception)
    res = runner.invoke(app, ["-q", "train", "adore", "--metric", "mrr", *common])
    assert res.exit_code != 0 and "metric must be" in str(res.exception)


@pytest.mark.parametrize("reduction", ["query", "global"])
def test_the_adore_step_trains_on_the_lambda_loss_function(reduction, tmp_path, tiny_train, tiny_model_dir,
                                                           monkeypatch):
    """One real ADORE step: the loss it used is losses.lambda_pairwise (the function the paper-formula
    tests check) on the scores and pairs the step produced, and the ΔMRR@10-weighted pairwise
    logistic loss written out by hand."""
    import hardneg.train.methods.adore as adore_module
    from hardneg.train.losses import lambda_pairwise

    trainer = Trainer(adore_config(tmp_path, tiny_train, tiny_model_dir, adore_reduction=reduction))
    trainer.setup()
    method = trainer.method
    seen = {}
    real_pairs, real_scores, real_batch_loss = adore_module.build_pairs, method.scores, method.batch_loss

    def pairs(*args, **kw):
        seen["pairs"] = real_pairs(*args, **kw)
        return seen["pairs"]

    def scores(*args):
        out = real_scores(*args)
        seen["scores"] = tuple(x.detach().clone() for x in out)
        return out

    def batch_loss(batch):
        out = real_batch_loss(batch)
        seen["loss"] = out[0].detach().clone()
        return out

    monkeypatch.setattr(adore_module, "build_pairs", pairs)
    method.scores, method.batch_loss = scores, batch_loss
    totals = trainer.step_gradients(0)
    (s_pos, s_neg), p, used = seen["scores"], seen["pairs"], seen["loss"]
    assert totals["loss"] == float(used) and p.n_pairs > 0
    assert torch.equal(used, lambda_pairwise(s_pos, s_neg, p.weights, p.mask, reduction=reduction))

    def recip(r):
        return 1.0 / r if r <= 10 else 0.0

    per_query: dict[int, list[float]] = {}
    for b, i, n in p.mask.nonzero().tolist():
        weight = abs(recip(int(p.pos_ranks[b, i])) - recip(n + 1))  # |ΔMRR@10| of swapping the two
        assert float(p.weights[b, i, n]) == pytest.approx(weight, abs=1e-7)
        loss = math.log1p(math.exp(float(s_neg[b, n]) - float(s_pos[b, i])))
        per_query.setdefault(b, []).append(weight * loss)
    terms = [t for q in per_query.values() for t in q]
    expected = (sum(sum(q) / len(q) for q in per_query.values()) / len(per_query) if reduction == "query"
                else sum(terms) / len(terms))
    assert used.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


# ----------------------------------------------------------------------------- multi-positive queries
def test_per_query_reduction_matches_a_hand_computation():
    from hardneg.train.losses import lambda_pairwise, lambda_pairwise_sum

    pos = torch.tensor([[1.0, 0.2], [0.5, 0.0], [2.0, 0.0]], dtype=torch.float64)
    neg = torch.tensor([[0.3, -1.0, 0.8], [0.9, 0.1, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    weights = torch.tensor([[[1.0, 0.5, 0.25], [0.2, 0.4, 0.6]],
                            [[0.7, 0.1, 9.0], [9.0, 9.0, 9.0]],
                            [[3.0, 3.0, 3.0], [3.0, 3.0, 3.0]]], dtype=torch.float64)
    mask = torch.tensor([[[True, True, False], [True, True, True]],  # query 0: 5 pairs
                         [[True, True, False], [False, False, False]],  # query 1: 2 pairs
                         [[False] * 3, [False] * 3]])  # query 2: no pair, left out of the mean

    def term(b, p, n):
        return float(weights[b, p, n]) * math.log1p(math.exp(float(neg[b, n]) - float(pos[b, p])))

    q0 = [term(0, 0, 0), term(0, 0, 1), term(0, 1, 0), term(0, 1, 1), term(0, 1, 2)]
    q1 = [term(1, 0, 0), term(1, 0, 1)]
    by_query = (sum(q0) / 5 + sum(q1) / 2) / 2
    total, count = lambda_pairwise_sum(pos, neg, weights, mask, reduction="query")
    assert count.item() == 2 and total.item() == pytest.approx(sum(q0) / 5 + sum(q1) / 2, abs=1e-12)
    assert lambda_pairwise(pos, neg, weights, mask, reduction="query").item() == pytest.approx(by_query, abs=1e-12)
    by_pair = (sum(q0) + sum(q1)) / 7
    assert lambda_pairwise(pos, neg, weights, mask, reduction="global").item() == pytest.approx(by_pair, abs=1e-12)
    assert lambda_pairwise(pos, neg, weights, mask).item() == pytest.approx(by_pair, abs=1e-12)  # the old default
    none = torch.zeros_like(mask)
    assert lambda_pairwise(pos, neg, weights, none, reduction="query").item() == 0.0
    with pytest.raises(HardnegError, match="reduction must be"):
        lambda_pairwise(pos, neg, weights, mask, reduction="sum")


def test_adore_positives_and_reduction_settings():
    cfg = TrainConfig(method="adore", data="x")
    assert (cfg.adore_positives, cfg.adore_reduction) == ("missing", "query")  # DRhard's
    TrainConfig(method="adore", data="x", adore_positives="always", adore_reduction="global").validate()
    with pytest.raises(HardnegError, match="adore_positives must be one of missing, always"):
        TrainConfig(method="adore", data="x", adore_positives="all").validate()
    with pytest.raises(HardnegError, match="adore_reduction must be one of query, global"):
        TrainConfig(method="adore", data="x", adore_reduction="mean").validate()
    with pytest.raises(HardnegError, match="--adore-reduction: for the adore method"):
        TrainConfig(method="star", data="x", adore_reduction="global").validate()
    star = TrainConfig(method="star", data="x")
    assert TrainConfig(**{**star.to_dict(), "adore_positives": "always"}).fingerprint() == star.fingerprint()


def write_multi_positive(folder):
    """12 topics × 4 documents and 150 filler documents. Training: one query per topic (its positive
    d<i>-0), plus 3 queries on each of 4 topics that also have 30 weakly judged positives among the
    filler (NFCorpus-like: deep positives that share no word with the query). Dev: one query per topic,
    its 4 documents relevant."""
    from conftest import FILLER_WORDS, TRAIN_TOPICS

    rng = np.random.default_rng(1)
    (folder / "qrels").mkdir(parents=True)
    head = "query-id\tcorpus-id\tscore"
    docs, queries, train, dev = [], [], [head], [head]
    for i, topic in enumerate(TRAIN_TOPICS):
        docs += [{"_id": f"d{i}-{j}", "title": "", "text": f"{topic} fact {j} " * (1 + j)} for j in range(4)]
        queries += [{"_id": f"q{i}", "text": f"tell me about {topic}"},
                    {"_id": f"v{i}", "text": f"what is known on {topic}"}]
        train.append(f"q{i}\td{i}-0\t1")
        dev += [f"v{i}\td{i}-{j}\t1" for j in range(4)]
    n_filler = 150
    docs += [{"_id": f"f{n}", "title": "", "text": f"{FILLER_WORDS[n % 17]} {FILLER_WORDS[(n * 7) % 17]} note {n}"}
             for n in range(n_filler)]
    for i, topic in enumerate(TRAIN_TOPICS[:4]):
        for r in range(3):
            queries.append({"_id": f"m{i}-{r}", "text": f"{topic} overview {r}"})
            train.append(f"m{i}-{r}\td{i}-{r}\t1")
            train += [f"m{i}-{r}\tf{n}\t1" for n in rng.choice(n_filler, 30, replace=False)]
    (folder / "corpus.jsonl").write_text("\n".join(map(json.dumps, docs)) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(map(json.dumps, queries)) + "\n")
    (folder / "qrels" / "train.tsv").write_text("\n".join(train) + "\n")
    (folder / "qrels" / "dev.tsv").write_text("\n".join(dev) + "\n")
    return folder


def test_adore_defaults_do_not_break_on_multi_positive_queries(tmp_path, tiny_model_dir):
    """The multi-positive regression: appending the many deep, weakly judged positives every step and
    averaging over pairs (``always`` + ``global``) drags the query tower to the filler and dev nDCG@10
    collapses below the start model's; DRhard's rules (the defaults) do not lower it."""
    data = write_multi_positive(tmp_path / "multi")

    def dev_curve(name, **kw):
        cfg = adore_config(tmp_path, data, tiny_model_dir, out=str(tmp_path / name), max_steps=10, batch_size=8,
                     lr=5e-4, dev_split="dev", dev_every=5, save_every=100, dev_metric="nDCG@10",
                     pooling="mean", normalize=True, adore_topk=20, metric="mrr@20", seed=1, **kw)
        trainer = Trainer(cfg)
        trainer.setup()
        trainer.train()
        log = [json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
        return [(r["step"], r["nDCG@10"]) for r in log if "nDCG@10" in r]

    defaults = dev_curve("defaults")
    assert [s for s, _ in defaults] == [0, 5, 10]
    start = defaults[0][1]
    assert start > 0.05  # the start model ranks some topic documents: there is something to lose
    assert all(v >= start for _, v in defaults), defaults
    # the same data under the former behaviour: the bug this test guards against
    former = dev_curve("former", adore_positives="always", adore_reduction="global")
    assert former[0][1] == pytest.approx(start) and former[-1][1] < start, former


# ----------------------------------------------------------------------------- step time split
ADORE_SPLIT = ("t_query_encode", "t_search", "t_reconstruct", "t_loss", "t_backward", "t_optimizer")


def test_adore_log_records_carry_the_step_time_split(tmp_path, tiny_train, tiny_model_dir, monkeypatch):
    """Every step record has the split; its parts are disjoint (sum <= the step's wall time) and summed
    over micro-batches: a search slowed by 30 ms shows as >= 60 ms with two micro-batches."""
    import time

    trainer = Trainer(adore_config(tmp_path, tiny_train, tiny_model_dir, max_steps=2, grad_accum=2, batch_size=2,
                             dev_every=2, save_every=2))
    trainer.setup()
    index, search = trainer.method.index, trainer.method.index.search

    def slow_search(*args, **kw):
        time.sleep(0.03)
        return search(*args, **kw)

    monkeypatch.setattr(index, "search", slow_search)
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "out-adore" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["kind"] == "train"]
    assert len(steps) == 2
    for r in steps:
        assert all(r[k] >= 0 for k in ADORE_SPLIT), r
        assert sum(r[k] for k in ADORE_SPLIT) <= r["seconds"]
        assert r["t_search"] >= 0.06  # two micro-batches' searches, summed
        assert "t_negatives" not in r and "t_doc_encode" not in r


def test_nprobe_and_ef_search_are_adore_settings_set_on_its_index(tmp_path, tiny_train, tiny_model_dir):
    # an IVF index over the tiny corpus: with every list probed it ranks as the flat index does
    cfg = adore_config(tmp_path, tiny_train, tiny_model_dir, index="factory:IVF4,Flat", nprobe=4, max_steps=2,
                 dev_every=100, save_every=100)
    trainer = Trainer(cfg)
    trainer.setup()
    assert trainer.method.index.search_params() == {"nprobe": 4}
    model_dir = trainer.train()
    assert json.loads((model_dir / "adore.json").read_text())["search"] == {"nprobe": 4}
    # a kind without the parameter is refused by name, before training
    bad = Trainer(adore_config(tmp_path, tiny_train, tiny_model_dir, index="flat", ef_search=16,
                         out=str(tmp_path / "out-bad")))
    with pytest.raises(HardnegError, match="--ef-search 16: the 'flat' index .* has no efSearch parameter"):
        bad.setup()
    with pytest.raises(HardnegError, match="nprobe must be at least 1"):
        TrainConfig(method="adore", data="x", nprobe=0).validate()
    with pytest.raises(HardnegError, match="--nprobe: for the adore method"):
        TrainConfig(method="star", data="x", nprobe=8).validate()
    # unset, they leave an ADORE run's fingerprint as it was before they existed (checkpoints still resume)
    plain = TrainConfig(method="adore", data="x")
    assert plain.fingerprints() == ("430cb2ff142ffe93", "7d20e4ecf29516f0")  # the second: before nprobe / ef_search
    assert plain.fingerprint() != plain.replace(nprobe=4).fingerprint()
