"""benchmarks/gpu_check.py on the CPU: its DRhard paper-preset check passes and fails when the preset drifts, and
its exit codes (0 all passed or skipped, 1 a check failed, 2 no usable device) follow --require-gpu."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO, write_tiny_train

sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_check_train  # noqa: E402


def test_drhard_paper_check_trains_robertadot_under_the_paper_preset(tmp_path):
    data = write_tiny_train(tmp_path / "data", filler=20)
    detail = gpu_check_train.drhard_paper("cpu", tmp_path, data)
    assert "DRhardLamb" in detail and "ran in float16" in detail and "pairmean" in detail
    assert f"{gpu_check_train.STEPS} steps" in detail


def test_drhard_paper_check_fails_when_the_preset_loses_fp16(tmp_path, monkeypatch):
    from hardneg.train.presets import PRESETS

    monkeypatch.setitem(PRESETS, "paper-passage", {**PRESETS["paper-passage"], "precision": "fp32",
                                                   "gradient_checkpointing": False})
    data = write_tiny_train(tmp_path / "data", filler=20)
    with pytest.raises(AssertionError, match="fp16 loss scaler is off.*gradient checkpointing is off"):
        gpu_check_train.drhard_paper("cpu", tmp_path, data)


def test_exit_codes_and_require_gpu(capsys):
    assert gpu_check.main(["--device", "cpu", "--only", "environment,faiss-gpu,nccl"]) == 0
    out = capsys.readouterr().out
    assert "PASS environment" in out and "SKIP faiss-gpu" in out and "SKIP nccl" in out
    # --require-gpu: a GPU check skipped for want of a GPU fails
    assert gpu_check.main(["--device", "cpu", "--require-gpu", "--only", "faiss-gpu"]) == 1
    assert "FAIL faiss-gpu" in capsys.readouterr().out
    import torch

    if not torch.cuda.is_available():  # --device cuda without CUDA: exit 2 with --require-gpu, else runs on the CPU
        assert gpu_check.main(["--device", "cuda", "--require-gpu", "--only", "environment"]) == 2
        assert gpu_check.main(["--device", "cuda", "--only", "environment"]) == 0
        assert "running the checks on the CPU" in capsys.readouterr().out
