"""DRhard's behaviours as options (each fails here if the option did nothing): DRhard's LAMB against a step
computed by hand, the LR schedule's span in epochs, one example per query, the warm-up mining's lengths, MS MARCO
documents read as ``url<sep>title<sep>body``, a recipe system trained on another dataset, and old fingerprints."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import train_config, write_tiny_train
from hardneg.data.load import load_dataset
from hardneg.errors import HardnegError, InputError
from hardneg.experiment import Recipe
from hardneg.train.config import TrainConfig
from hardneg.train.resume_keys import LATER_DEFAULTS
from hardneg.train.steps import DRhardLamb, make_optimizer, make_scheduler, schedule_steps
from hardneg.train.trainer import Trainer


@pytest.fixture
def tiny_train(tmp_path):
    return write_tiny_train(tmp_path / "tiny-train")


# ----------------------------------------------------------------------------- LAMB
def _lamb_by_hand(p, grads, lr, wd, betas=(0.9, 0.999), eps=1e-8):
    """DRhard's lamb.py step written out in float64: moments without bias correction, the L2 term inside the
    update u, trust ratio min(|p|, 10) / |u| (1 when either norm is 0)."""
    p, m, v = p.astype(np.float64), np.zeros_like(p, dtype=np.float64), np.zeros_like(p, dtype=np.float64)
    for g in grads:
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        u = m / (np.sqrt(v) + eps) + wd * p
        w_norm, u_norm = min(np.sqrt((p * p).sum()), 10.0), np.sqrt((u * u).sum())
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        p = p - lr * ratio * u
    return p


@pytest.mark.parametrize("start", [
    [[0.5, -1.0], [2.0, 0.25]],  # |p| < 10
    [[20.0, -20.0], [20.0, 20.0]],  # |p| = 40: clamped at 10
    [[0.0, 0.0], [0.0, 0.0]],  # |p| = 0: ratio 1
])
def test_drhard_lamb_takes_the_hand_computed_steps(start):
    grads = [np.array([[0.1, -0.2], [0.3, 0.05]]), np.array([[-0.4, 0.1], [0.2, 0.0]])]
    param = torch.nn.Parameter(torch.tensor(start, dtype=torch.float32))
    opt = DRhardLamb([param], lr=0.1, weight_decay=0.01)
    for g in grads:
        param.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
    expected = _lamb_by_hand(np.array(start), grads, lr=0.1, wd=0.01)
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-5, atol=1e-7)
    assert opt.defaults["eps"] == 1e-8  # star/train.py's adam_epsilon


def test_lamb_variant_chooses_the_optimizer_and_changes_the_step():
    """--lamb-variant drhard is DRhard's step; decoupled (pytorch-optimizer's Lamb) takes another one."""
    after = {}
    for variant in ("drhard", "decoupled"):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        cfg = TrainConfig(optimizer="lamb", lamb_variant=variant, lr=0.05, weight_decay=0.1)
        opt = make_optimizer(model, cfg)
        assert isinstance(opt, DRhardLamb) == (variant == "drhard")
        start = model.weight.detach().numpy().copy()
        model(torch.ones(2, 4)).pow(2).sum().backward()
        grad = model.weight.grad.numpy().copy()
        opt.step()
        after[variant] = model.weight.detach().numpy()
        if variant == "drhard":  # the decayed group (weights): the hand step with weight decay 0.1
            np.testing.assert_allclose(after[variant], _lamb_by_hand(start, [grad], lr=0.05, wd=0.1), rtol=1e-5)
    assert not np.allclose(after["drhard"], after["decoupled"], rtol=1e-4)
    with pytest.raises(HardnegError, match="--lamb-variant drhard is for --optimizer lamb, not adamw"):
        TrainConfig(method="star", data="x", optimizer="adamw", lamb_variant="drhard").validate()


# ----------------------------------------------------------------------------- the LR schedule's span
def _lr_after(cfg: TrainConfig, steps: int, **kw) -> float:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.lr)
    sched = make_scheduler(opt, cfg, **kw)
    for _ in range(steps):
        opt.step()
        sched.step()
    return sched.get_last_lr()[0]


def test_schedule_epochs_sets_where_the_lr_reaches_zero():
    cfg = TrainConfig(max_steps=10, warmup_ratio=0.0, lr=1.0)
    assert _lr_after(cfg, 10) == 0.0  # default: 0 at max_steps
    spanned = cfg.replace(schedule_epochs=2)
    # DRhard's count: ceil(41 / 4) = 11 steps per epoch, 2 epochs = 22 steps; at step 10 the LR is 1 - 10/22
    assert schedule_steps(spanned, 41, 4) == 22
    assert _lr_after(spanned, 10, n_examples=41, global_batch=4) == pytest.approx(1 - 10 / 22)
    assert schedule_steps(spanned.replace(grad_accum=2), 41, 4) == 10  # 11 micro-batches // 2 per step
    with pytest.raises(HardnegError, match=r"schedule_epochs 0\.5 spans 6 steps .* fewer than max_steps 10"):
        schedule_steps(cfg.replace(schedule_epochs=0.5), 41, 4)
    with pytest.raises(HardnegError, match="schedule_epochs must be positive"):
        TrainConfig(schedule_epochs=0)


def test_the_trainer_decays_over_the_epochs_span(tmp_path, tiny_train, tiny_model_dir):
    """9 training queries, one example each, batch 4: 3 steps per epoch; 2 epochs span 6 steps, so after the run's
    4 steps the logged LR is lr · (1 − 4/6), not 0."""
    cfg = train_config(tmp_path, tiny_train, tiny_model_dir, "inbatch", examples_per_query="one", schedule_epochs=2,
                       dev_every=4, save_every=4)
    trainer = Trainer(cfg)
    trainer.train()
    log = [json.loads(line) for line in (Path(cfg.out) / "train_log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in log if r.get("step") == 4 and "lr" in r]
    assert len(trainer.examples) == 9 and lrs == [pytest.approx(cfg.lr * (1 - 4 / 6))]
    with pytest.raises(HardnegError, match="fewer than max_steps 4"):
        Trainer(cfg.replace(schedule_epochs=1, out=str(tmp_path / "short"))).setup()


# ----------------------------------------------------------------------------- examples per query
def test_one_example_per_query_draws_each_positive_by_position(tmp_path, tiny_train, tiny_model_dir):
    pairs = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, "inbatch", out=str(tmp_path / "pairs")))
    pairs.setup()
    one_cfg = train_config(tmp_path, tiny_train, tiny_model_dir, "inbatch", examples_per_query="one",
                           out=str(tmp_path / "one"))
    one = Trainer(one_cfg)
    one.setup()
    queries = sorted(one.train_qrels)
    assert [e.qid for e in one.examples] == queries and len(pairs.examples) > len(queries)  # one per query
    drawn: dict[str, set[str]] = {}
    batches = [one.micro_batch(step, 0)[0] for step in range(30)]
    for batch in batches:
        for e in batch:
            assert e.pos in one.positives[e.qid]
            drawn.setdefault(e.qid, set()).add(e.pos)
    several = [q for q in queries if len(one.positives[q]) > 1]
    assert several and all(drawn[q] == one.positives[q] for q in several)  # every positive comes up
    again = Trainer(one_cfg.replace(out=str(tmp_path / "again")))
    again.setup()
    assert [again.micro_batch(step, 0)[0] for step in range(30)] == batches  # a function of (seed, position)


# ----------------------------------------------------------------------------- mining lengths
@pytest.mark.parametrize("method", ["star", "ance"])
def test_the_start_models_mining_reads_the_mining_lengths(method, tmp_path, tiny_train, tiny_model_dir, monkeypatch):
    from hardneg.train.methods import static

    seen = []
    original = static.mine_with_model

    def recording(ctx, model, *args, **kwargs):
        seen.append((model.max_length("query"), model.max_length("doc")))
        return original(ctx, model, *args, **kwargs)

    monkeypatch.setattr(static, "mine_with_model", recording)
    extra = {"refresh_every": 2} if method == "ance" else {}
    trainer = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, method, mine_query_max_length=8,
                                   mine_doc_max_length=12, **extra))
    trainer.setup()
    assert seen == [(8, 12)]  # DRhard mines at 32/256 while training at 24/120: here 8/12 against 16/32
    assert (trainer.model.max_length("query"), trainer.model.max_length("doc")) == (16, 32)  # training's again


# ----------------------------------------------------------------------------- MS MARCO document fields
def test_msmarco_documents_read_as_url_sep_title_sep_body(tmp_path):
    folder = tmp_path / "doc"
    folder.mkdir()
    (folder / "collection.tsv").write_text("D1\thttp://a.org/x \tA title\tThe body text.  \n"
                                           "D2\thttp://b.org/\t\tonly a body\n")
    (folder / "queries.train.tsv").write_text("1\twhat is x\n")
    (folder / "qrels.train.tsv").write_text("1 0 D1 1\n")
    docs = {d.doc_id: d.full_text() for d in load_dataset(f"{folder}:train").iter_docs()}
    assert docs == {"D1": "http://a.org/x<sep>A title<sep>The body text.", "D2": "http://b.org/<sep><sep>only a body"}
    (folder / "collection.tsv").write_text("D1\thttp://a.org/\tA title\tbody\nD2\tjust a passage\n")
    with pytest.raises(InputError, match=r"collection\.tsv:2.*expected 4 tab-separated columns"):
        list(load_dataset(f"{folder}:train").iter_docs())
    (folder / "collection.tsv").write_text("D1\t \t\t \n")
    with pytest.raises(InputError, match=r"collection\.tsv:1.*'D1' is empty"):
        list(load_dataset(f"{folder}:train").iter_docs())


# ----------------------------------------------------------------------------- a system trained on another dataset
def test_train_data_trains_a_system_on_another_dataset(tmp_path):
    doc, passage = tmp_path / "doc", tmp_path / "passage"
    systems = [{"name": "b", "kind": "bm25"}, {"name": "r", "method": "rand", "train_data": str(passage)}]
    recipe = Recipe.from_dict({"name": "t", "data": str(doc), "systems": systems})
    assert recipe.train_config(recipe.system("r"), tmp_path).data == str(passage)
    assert recipe.system("r").to_dict()["train_data"] == str(passage)
    with pytest.raises(HardnegError, match=r"systems\[0\]\.train_data: .*for trained systems"):
        Recipe.from_dict({"name": "t", "data": str(doc), "systems": [{**systems[0], "train_data": str(passage)}]})
    # its dev split may be any of that dataset's, except one the report reads (a transfer of that dataset)
    selects = [systems[1] | {"dev_split": "dl19"}]
    Recipe.from_dict({"name": "t", "data": str(doc), "eval": {"split": "dl19"}, "systems": selects})
    with pytest.raises(HardnegError, match=r"selects on the split it reports \('dl19' is transfer\[0\]\)"):
        Recipe.from_dict({"name": "t", "data": str(doc), "transfer": [f"{passage}:dl19"], "systems": selects})


# ----------------------------------------------------------------------------- fingerprints
NEW = {"lamb_variant": "drhard", "schedule_epochs": 100.0, "examples_per_query": "one", "mine_query_max_length": 32,
       "mine_doc_max_length": 256}


def test_new_settings_keep_old_fingerprints_at_their_defaults():
    """Each new setting is left out of the fingerprint at its default (a checkpoint written before it existed
    still resumes) and changes it otherwise (a run cannot resume under a different one)."""
    cfg = TrainConfig(method="star", data="x", optimizer="lamb")
    for name, value in NEW.items():
        assert LATER_DEFAULTS[name] == TrainConfig.model_fields[name].default, name
        assert cfg.replace(**{name: value}).fingerprint() != cfg.fingerprint(), name
    # with every new setting at its default, the fingerprint is that of the settings a run had before they existed
    without = {k: v for k, v in cfg.to_dict().items() if k not in NEW}
    before = SimpleNamespace(method=cfg.method, to_dict=lambda: without)  # an old run's config.json, as a config
    assert cfg.fingerprint() == TrainConfig.fingerprint(before)
