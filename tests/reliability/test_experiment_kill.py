"""`hardneg experiment` survives a SIGKILL in the middle of a training stage, and the same command finishes it.

The kill is not a race against the run: the child process SIGKILLs itself right after the checkpoint of step 2
(of 6) is published, i.e. when the atomic rename that makes ``checkpoints/step-0000002`` complete returns. So the
run is always interrupted mid-stage, after a checkpoint exists, whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors.torch import load_file

from conftest import write_tiny_train

SRC = Path(__file__).resolve().parents[2] / "src"
#: run ``hardneg ARGS...`` and SIGKILL the process once the checkpoint folder named ARGV[1] has been renamed into
#: place (every complete checkpoint is published by one ``os.replace`` of its temporary folder: hardneg.io)
KILL_AFTER_CHECKPOINT = """
import os, signal, sys
from pathlib import PurePath

target, args = sys.argv[1], sys.argv[2:]
publish = os.replace


def replace_then_die(src, dst, *rest, **kw):
    publish(src, dst, *rest, **kw)
    path = PurePath(os.fsdecode(dst))
    if path.name == target and path.parent.name == "checkpoints":
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace_then_die
from hardneg.cli import main

sys.argv = ["hardneg", *args]
main()
"""


def _recipe(tmp_path: Path, model: Path) -> Path:
    data = write_tiny_train(tmp_path / "data", filler=300)
    raw = {
        "name": "kill", "data": str(data), "model": str(model), "cache_dir": str(tmp_path / "cache"),
        "train": {"max_steps": 6, "batch_size": 4, "topk": 8, "dev_fraction": 0.25, "dev_every": 6,
                  "save_every": 2, "dev_pool": 0, "query_max_length": 16, "doc_max_length": 32, "warmup_ratio": 0.0,
                  "lr": 1e-3},
        "eval": {"max_length": 32, "query_max_length": 16, "k": 50},
        "systems": [{"name": "rand", "method": "rand"}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_experiment_stage_survives_sigkill(tmp_path, tiny_model_dir):
    """A real SIGKILL after step 2's checkpoint of a 6-step training stage; the same command again finishes the
    stage from that checkpoint (attempt 2), with the log and the weights of an uninterrupted run."""
    recipe = _recipe(tmp_path, tiny_model_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def args(out: str) -> list[str]:
        return ["--quiet", "experiment", str(recipe), "--out", str(tmp_path / out), "--only", "train-rand"]

    subprocess.run([sys.executable, "-m", "hardneg", *args("straight")], env=env, check=True)
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT, "step-0000002", *args("killed")], env=env)
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed after step 2's checkpoint: {killed}"
    stage = tmp_path / "killed" / "stages" / "train-rand"
    checkpoints = stage / "checkpoints"
    assert json.loads((stage / "stage.json").read_text())["status"] == "running"
    assert [p.name for p in checkpoints.glob("step-*")] == ["step-0000002"]
    assert (checkpoints / "step-0000002" / "trainer_state.json").is_file()

    subprocess.run([sys.executable, "-m", "hardneg", *args("killed")], env=env, check=True)
    state = json.loads((stage / "stage.json").read_text())
    assert state["status"] == "done" and state["attempts"] == 2
    log = [json.loads(x) for x in (stage / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    last = sorted(checkpoints.glob("step-*"))[-1].name
    assert last == "step-0000006"
    a = load_file(tmp_path / "straight" / "stages" / "train-rand" / "checkpoints" / last / "model.safetensors")
    b = load_file(checkpoints / last / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
