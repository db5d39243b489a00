"""GradCache (--grad-cache, --mini-batch) and --compile of the training step.

* GradCache's parameter gradient (and loss, logged parts, RNG state after the step) equals the plain step's,
  with dropout on: with --mini-batch equal to --train-chunk both steps run the same forward passes in the same
  order, so they draw the same dropout masks; also under fp16 with the GradScaler, bf16, gradient
  checkpointing, gradient accumulation, and with a mini-batch other than the chunk (dropout off then); replayed
  without the saved RNG states it would not be;
* a run killed after a checkpoint and resumed ends bit for bit like the straight run, with --grad-cache and
  with --compile;
* --compile (eager / aot_eager backends, so that no C++ compiler runs) leaves the saved model's and
  checkpoint's keys as the eager ones and gives the eager run's losses and weights;
* bad settings are errors naming the flag.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import train_config, write_tiny_train
from hardneg.errors import HardnegError
from hardneg.train.trainer import Trainer


@pytest.fixture
def tiny_train(tmp_path):
    return write_tiny_train(tmp_path / "tiny-train", filler=20)


def one_step(tmp_path, data, model, method, name, *, dropout=True, step=0, **kw):
    """``(totals, gradients, RNG state after)`` of a fresh trainer's step ``step`` (dropout on unless told)."""
    cfg = train_config(tmp_path, data, model, method, out=str(tmp_path / name),
                       cache_dir=str(tmp_path / "cache"), **kw)
    trainer = Trainer(cfg)
    trainer.setup()
    trainer.train_mode()
    if not dropout:
        trainer.model.eval()
    totals = trainer.step_gradients(step)
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return totals, grads, torch.get_rng_state()


def assert_same_step(plain, cached, bound=1e-5):
    (t1, g1, rng1), (t2, g2, rng2) = plain, cached
    for key, value in t1.items():
        if not key.startswith("t_"):
            assert t2[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert "t_replay" in t2 and "t_replay" not in t1
    assert g1.keys() == g2.keys() and g1
    worst = max(float((g2[k] - g).abs().max()) for k, g in g1.items())
    assert worst <= bound, f"largest gradient difference {worst:.2e}"
    assert max(float(g.abs().max()) for g in g1.values()) > 1e-3  # not trivially zero
    assert torch.equal(rng1, rng2)  # the RNG ends where the plain step leaves it


@pytest.mark.parametrize("method, extra", [
    ("inbatch", {}), ("rand", {"n_negatives": 2}), ("static", {"n_negatives": 2}), ("star", {"n_negatives": 2}),
])
def test_grad_cache_gradient_equals_the_plain_step_with_dropout(tmp_path, tiny_train, tiny_model_dir, method,
                                                                extra):
    # batch 8 with 2 negatives each: 8 queries and 24 documents, in chunks of 3 (mini-batches of 3)
    common = dict(batch_size=8, train_chunk=3, **extra)
    plain = one_step(tmp_path, tiny_train, tiny_model_dir, method, "plain", **common)
    cached = one_step(tmp_path, tiny_train, tiny_model_dir, method, "cached", grad_cache=True, **common)
    assert_same_step(plain, cached)


def test_dropout_is_drawn_and_matters(tmp_path, tiny_train, tiny_model_dir):
    """The parity above is not a dropout-free one: another dropout stream moves the gradient."""
    common = dict(batch_size=8, train_chunk=3, n_negatives=2)
    a = one_step(tmp_path, tiny_train, tiny_model_dir, "star", "a", **common)
    b = one_step(tmp_path, tiny_train, tiny_model_dir, "star", "b", seed=7, **common)
    off = one_step(tmp_path, tiny_train, tiny_model_dir, "star", "off", dropout=False, **common)
    assert max(float((off[1][k] - g).abs().max()) for k, g in a[1].items()) > 1e-4
    assert not torch.equal(a[2], b[2])


def test_replay_without_the_saved_rng_states_misses_the_gradient(tmp_path, tiny_train, tiny_model_dir, monkeypatch):
    """The replay's dropout must be the first pass's: replayed from wherever the RNG happens to be, the forward
    passes draw other masks and the gradient is wrong (what the RNG restore in the parity above guards)."""
    import hardneg.train.grad_cache as grad_cache

    common = dict(batch_size=8, train_chunk=3, n_negatives=2)
    plain = one_step(tmp_path, tiny_train, tiny_model_dir, "star", "plain", **common)
    monkeypatch.setattr(grad_cache, "restore_rng", lambda state, device: None)
    unrestored = one_step(tmp_path, tiny_train, tiny_model_dir, "star", "cached", grad_cache=True, **common)
    assert unrestored[0]["loss"] == pytest.approx(plain[0]["loss"], rel=1e-6)  # the first pass is the plain one
    largest = max(float(g.abs().max()) for g in plain[1].values())
    assert max(float((unrestored[1][k] - g).abs().max()) for k, g in plain[1].items()) > 0.05 * largest


def test_grad_cache_with_another_mini_batch_equals_the_plain_step_without_dropout(tmp_path, tiny_train,
                                                                                  tiny_model_dir):
    common = dict(batch_size=8, train_chunk=16, n_negatives=2, dropout=False)
    plain = one_step(tmp_path, tiny_train, tiny_model_dir, "star", "plain", **common)
    cached = one_step(tmp_path, tiny_train, tiny_model_dir, "star", "cached", grad_cache=True, mini_batch=1,
                      **common)
    assert_same_step(plain, cached)


@pytest.mark.parametrize("extra", [
    {"precision": "fp16"}, {"precision": "bf16"}, {"gradient_checkpointing": True}, {"grad_accum": 2},
], ids=["fp16-scaler", "bf16", "gradient-checkpointing", "grad-accum"])
def test_grad_cache_keeps_parity_with_precision_checkpointing_and_accumulation(tmp_path, tiny_train,
                                                                               tiny_model_dir, extra):
    common = dict(batch_size=6, train_chunk=4, n_negatives=1, **extra)
    plain = one_step(tmp_path, tiny_train, tiny_model_dir, "star", "plain", **common)
    cached = one_step(tmp_path, tiny_train, tiny_model_dir, "star", "cached", grad_cache=True, **common)
    # half precision: the same forward passes, but the plain step's one autocast context casts each weight once
    # and sums the chunks' gradients of that cast in half precision, GradCache's sums them in fp32: a difference
    # of the half format's rounding, relative to the largest gradient (fp16's are of the loss scaled by 2^16)
    largest = max(float(g.abs().max()) for g in plain[1].values())
    bound = {"fp16": 2e-3 * largest, "bf16": 1e-2 * largest}.get(extra.get("precision"), 1e-5)
    assert_same_step(plain, cached, bound)


# ----------------------------------------------------------------------------- resume, --compile
def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _straight_and_resumed(tmp_path, data, model, kill_and_resume, **kw):
    def make(name):
        return Trainer(train_config(tmp_path, data, model, "star", out=str(tmp_path / name), batch_size=6,
                                    train_chunk=4, **kw))

    straight, resumed = kill_and_resume(make)
    reference = _params(straight.model)
    for k, v in _params(resumed.model).items():
        assert torch.equal(v, reference[k]), k
    return straight, resumed


def _losses(out):
    return [r["loss"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in r]


def test_grad_cache_resumes_bit_for_bit(tmp_path, tiny_train, tiny_model_dir, kill_and_resume):
    _straight_and_resumed(tmp_path, tiny_train, tiny_model_dir, kill_and_resume, grad_cache=True, mini_batch=4)
    assert _losses(tmp_path / "a")[2:] == _losses(tmp_path / "b")[2:]


@pytest.mark.parametrize("backend", ["eager", pytest.param("aot_eager", marks=pytest.mark.slow)])
def test_compile_keeps_keys_losses_and_resume(tmp_path, tiny_train, tiny_model_dir, kill_and_resume, backend):
    """--compile (a backend without a C++ compiler): the model's keys and files are the eager run's, the run
    resumes bit for bit, and with dropout from the same generator it trains like the eager run."""
    straight, _ = _straight_and_resumed(tmp_path, tiny_train, tiny_model_dir, kill_and_resume, compile=True,
                                        compile_backend=backend, grad_cache=True)
    assert straight.model.doc_model._compiled_call_impl is not None  # really compiled
    eager = Trainer(train_config(tmp_path, tiny_train, tiny_model_dir, "star", out=str(tmp_path / "eager"),
                                 batch_size=6, train_chunk=4, grad_cache=True))
    eager.train()
    assert _params(straight.model).keys() == _params(eager.model).keys()
    assert not any("_orig_mod" in k for k in _params(straight.model))
    saved = load_file(tmp_path / "a" / "model" / "model.safetensors")
    assert saved.keys() == load_file(tmp_path / "eager" / "model" / "model.safetensors").keys()
    checkpoint = sorted((tmp_path / "a" / "checkpoints").glob("step-*"))[-1]
    eager_checkpoint = sorted((tmp_path / "eager" / "checkpoints").glob("step-*"))[-1]
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(p.name for p in eager_checkpoint.iterdir())
    # eager: the captured graph runs the same ops; aot_eager: traced ATen ops, summed in another order
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-5, abs=1e-6)


# ----------------------------------------------------------------------------- settings
def test_bad_settings_name_the_flag(tmp_path, tiny_train, tiny_model_dir):
    with pytest.raises(HardnegError, match="--grad-cache is for .*not adore"):
        train_config(tmp_path, tiny_train, tiny_model_dir, "adore", grad_cache=True).validate()
    with pytest.raises(HardnegError, match="mini_batch must be at least 1"):
        train_config(tmp_path, tiny_train, tiny_model_dir, "star", grad_cache=True, mini_batch=0)
    with pytest.raises(HardnegError, match="--mini-batch 4 is GradCache's"):
        train_config(tmp_path, tiny_train, tiny_model_dir, "star", mini_batch=4).validate()
    with pytest.raises(HardnegError, match="--compile-backend eager needs --compile"):
        train_config(tmp_path, tiny_train, tiny_model_dir, "star", compile_backend="eager").validate()
    with pytest.raises(HardnegError, match="--compile-backend must be one of"):
        train_config(tmp_path, tiny_train, tiny_model_dir, "star", compile=True, compile_backend="nope").validate()
    base = train_config(tmp_path, tiny_train, tiny_model_dir, "star")
    assert base.replace(compile=True).fingerprint() == base.fingerprint()  # may change on --resume
    assert base.replace(grad_cache=True).fingerprint() != base.fingerprint()


@pytest.mark.parametrize("args, message", [
    (["adore", "--grad-cache", "--mini-batch", "4"], "--grad-cache is for"),
    (["star", "--mini-batch", "4"], "--mini-batch 4 is GradCache's"),
    (["star", "--compile-backend", "eager"], "--compile-backend eager needs --compile"),
])
def test_the_cli_takes_the_flags_and_refuses_bad_combinations(tmp_path, tiny_train, tiny_model_dir, args, message):
    from typer.testing import CliRunner

    from hardneg.cli import app

    result = CliRunner().invoke(app, ["--quiet", "train", *args, "--data", str(tiny_train), "--model",
                                      str(tiny_model_dir), "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, HardnegError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "out").exists()
