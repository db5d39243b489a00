"""Mixed precision and --device in training: autocast around the encoders only, fp32 scores and losses,
fp16 loss scaling that checkpoints and resumes exactly, and a clear error for a missing GPU."""

from __future__ import annotations

import functools
import json
import math
import sys

import pytest
import torch

from conftest import train_config, write_tiny_train
from hardneg.train.checkpoint import load_checkpoint
from hardneg.train.steps import encode_rows
from hardneg.train.trainer import Trainer

LOW = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture
def tiny_train(tmp_path):
    return write_tiny_train(tmp_path / "tiny-train")


#: test_precision's runs: the shared tiny run with 2 negatives per query and no step-0 dev evaluation
precision_config = functools.partial(train_config, n_negatives=2, dev_at_start=False)


def linear_dtypes(model) -> list[torch.dtype]:
    """Output dtypes of every Linear layer of both towers, recorded by forward hooks."""
    seen: list[torch.dtype] = []
    towers = {id(model.doc_model): model.doc_model, id(model.query_model): model.query_model}.values()
    for tower in towers:
        for module in tower.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def params(model):
    return {k: v.detach().clone() for k, v in model.query_model.state_dict().items()}


# ----------------------------------------------------------------------------- autocast scope
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_encoders_run_low_precision_but_scores_and_loss_are_fp32(precision, tmp_path, tiny_train, tiny_model_dir):
    trainer = Trainer(precision_config(tmp_path, tiny_train, tiny_model_dir, precision=precision))
    trainer.setup()
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    linear = linear_dtypes(trainer.model)
    seen = []
    real_loss = trainer.method.loss

    def capture(scores, batch):
        out = real_loss(scores, batch)
        seen.append((scores.dtype, out[0].dtype, torch.is_autocast_enabled("cpu")))
        return out

    trainer.method.loss = capture
    before = params(trainer.model)
    losses, records = [], []
    for step in range(3):
        totals = trainer.step_gradients(step)
        records.append(trainer.optimizer_step())
        losses.append(totals["loss"])
    assert linear and set(linear) == {LOW[precision]}  # every encoder matmul ran in low precision
    assert seen == [(torch.float32, torch.float32, False)] * 3  # scores and loss: fp32, outside autocast
    assert all(math.isfinite(x) and x > 0 for x in losses)
    after = params(trainer.model)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before), "no step was taken"
    if precision == "fp16":  # the scale each step used, and whether the scaler skipped it (inf grads)
        assert records[0]["loss_scale"] == 65536.0 and all(r["skipped_step"] in (0, 1) for r in records)
        assert sum(1 - r["skipped_step"] for r in records) == trainer.scheduler.last_epoch
    else:
        assert "loss_scale" not in records[0] and trainer.scheduler.last_epoch == 3


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_adore_encodes_queries_low_precision_and_scores_fp32(precision, tmp_path, tiny_train, tiny_model_dir,
                                                              monkeypatch):
    import hardneg.train.methods.adore as adore

    trainer = Trainer(precision_config(tmp_path, tiny_train, tiny_model_dir, method="adore", precision=precision))
    trainer.setup()
    linear = linear_dtypes(trainer.model)
    seen = []
    real = adore.lambda_pairwise

    def capture(s_pos, s_neg, weights, mask, **kw):
        out = real(s_pos, s_neg, weights, mask, **kw)
        seen.append((s_pos.dtype, s_neg.dtype, out.dtype, torch.is_autocast_enabled("cpu")))
        return out

    monkeypatch.setattr(adore, "lambda_pairwise", capture)
    frozen = {k: v.clone() for k, v in trainer.model.doc_model.state_dict().items()}
    losses = []
    for step in range(2):
        losses.append(trainer.step_gradients(step)["loss"])
        trainer.optimizer_step()
    assert linear and set(linear) == {LOW[precision]}
    assert seen == [(torch.float32,) * 3 + (False,)] * 2
    assert all(math.isfinite(x) and x > 0 for x in losses)
    assert all(torch.equal(v, frozen[k]) for k, v in trainer.model.doc_model.state_dict().items())


def test_fp32_runs_no_autocast_and_no_scaler(tmp_path, tiny_train, tiny_model_dir):
    """fp32 is today's path: the encoder output is the plain forward pass, bit for bit, and no scale is logged
    (test_train's test_the_step_trains_on_the_paper_loss_function checks the loss bit for bit)."""
    trainer = Trainer(precision_config(tmp_path, tiny_train, tiny_model_dir))
    trainer.setup()
    assert not trainer.scaler.is_enabled()
    model = trainer.model.eval()
    rows = [trainer.store[i] for i in range(5)]
    got = encode_rows(model, rows, "doc", 16)
    from hardneg.model.encoding import pad_batch, pad_id

    ids, mask = pad_batch([rows[i] for i in range(5)], pad_id(model))
    with torch.no_grad():
        plain = model(ids, mask, side="doc")
        half = encode_rows(model, rows, "doc", 16, "bf16")
    assert got.dtype == torch.float32 and torch.allclose(got, plain, atol=1e-6)
    assert half.dtype == torch.float32 and not torch.equal(half, got)  # autocast really ran
    assert torch.allclose(half, got, atol=5e-2)
    trainer.train_mode()
    trainer.step_gradients(0)
    assert set(trainer.optimizer_step()) == {"grad_norm"}


# ----------------------------------------------------------------------------- fp16 resume
def test_fp16_scaler_state_is_checkpointed_and_resumes_exactly(tmp_path, tiny_train, tiny_model_dir,
                                                               kill_and_resume, monkeypatch):
    # a scale that moves every step (x4 without overflow, /2 with one), so a resume with a fresh scaler
    # would use another scale than the straight run: after two steps it is never the initial 2**16
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, growth_factor=4.0,
                                                                   growth_interval=1))

    def make(name):
        return Trainer(precision_config(tmp_path, tiny_train, tiny_model_dir, precision="fp16",
                                        out=str(tmp_path / name)))

    straight, resumed = kill_and_resume(make)
    ref = {k: v.detach().clone() for k, v in straight.model.doc_model.state_dict().items()}
    for k, v in resumed.model.doc_model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()

    def scales(name):
        log = [json.loads(x) for x in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
        return [r["loss_scale"] for r in log if r["kind"] == "train"]

    assert scales("b") == scales("a") and len(scales("a")) == 4
    saved = torch.load(tmp_path / "b" / "checkpoints" / "step-0000002" / "scaler.pt", weights_only=True)
    assert saved["scale"] == scales("a")[2] != 65536.0  # step 3 ran with the scale step 2 saved
    fresh = make("b")
    fresh.setup()
    load_checkpoint(tmp_path / "b" / "checkpoints" / "step-0000002", fresh.model, fresh.optimizer,
                    fresh.scheduler, fresh.config.fingerprint(), scaler=fresh.scaler)
    assert fresh.scaler.get_scale() == saved["scale"] and fresh.scaler.state_dict() == saved


def test_checkpoint_without_scaler_state_still_resumes(tmp_path, tiny_train, tiny_model_dir, caplog):
    cfg = precision_config(tmp_path, tiny_train, tiny_model_dir, precision="fp16", max_steps=2)
    first = Trainer(cfg)
    first.train()
    folder = tmp_path / "out-star" / "checkpoints" / "step-0000002"
    (folder / "scaler.pt").unlink()  # as an older hardneg wrote it
    later = Trainer(cfg.replace(max_steps=3))
    with caplog.at_level("WARNING", logger="hardneg.train"):
        later.train(resume=True)
    assert "no fp16 loss-scaler state" in caplog.text
    steps = [json.loads(x)["step"] for x in (tmp_path / "out-star" / "train_log.jsonl").read_text().splitlines()
             if '"train"' in x]
    assert steps == [1, 2, 3]


def test_device_is_not_part_of_the_resume_fingerprint(tmp_path, tiny_train, tiny_model_dir):
    cfg = precision_config(tmp_path, tiny_train, tiny_model_dir)
    assert cfg.replace(device="cuda:1").fingerprint() == cfg.fingerprint()
    assert cfg.replace(precision="fp16").fingerprint() != cfg.fingerprint()


# ----------------------------------------------------------------------------- --device
def test_train_device_cuda_without_cuda_exits_2_with_one_line(tmp_path, tiny_train, tiny_model_dir, monkeypatch,
                                                              capsys):
    from typer.testing import CliRunner

    from hardneg.cli import app, main
    from hardneg.devices import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "o"
    args = ["train", "star", "--data", str(tiny_train), "--model", str(tiny_model_dir), "--device", "cuda",
            "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    result = CliRunner().invoke(app, ["--quiet", *args], catch_exceptions=True)
    assert isinstance(result.exception, DeviceError), result.output
    assert "--device cuda was asked for, but this machine has no CUDA device" in str(result.exception)
    # the console entry point: exit 2, one line on stderr, no traceback, nothing written
    monkeypatch.setattr(sys, "argv", ["hardneg", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()] and "Traceback" not in err
    assert "no CUDA device" in err and "--device cpu" in err
    assert not out.exists() and not (tmp_path / "c").exists()


def test_train_device_flag_and_bad_spelling(tmp_path, tiny_train, tiny_model_dir):
    from hardneg.devices import DeviceError

    trainer = Trainer(precision_config(tmp_path, tiny_train, tiny_model_dir, device="cpu", max_steps=1))
    trainer.setup()
    assert trainer.device == torch.device("cpu") == trainer.model.device
    with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
        Trainer(precision_config(tmp_path, tiny_train, tiny_model_dir, device="gpu")).setup()
