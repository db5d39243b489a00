"""Data-parallel training and sharded encoding on CPU with gloo: 2 processes (torchrun) against 1.

* 2 processes × batch B give the loss, gradients and optimiser update of 1 process × batch 2B
  (In-Batch, Rand, STAR with both mixings and the softmax loss, ADORE with per-rank retrieval);
* the batches shared out over ranks encode bit for bit like one process; ``hardneg encode --shard i/n``
  + ``encode-merge`` (and ``torchrun … encode``) equal the unsharded ``hardneg encode`` bit for bit;
* a 2-process run killed (SIGKILL of one rank) after a checkpoint and resumed ends with the weights of
  an uninterrupted 2-process run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import REPO, write_tiny_train
from hardneg.model.encoding import encode_token_lists
from hardneg.train.config import TrainConfig
from hardneg.train.trainer import Trainer

WORKER = Path(__file__).with_name("_ddp_worker.py")
B = 2  # per rank; the single-process reference uses 2 * B

#: name -> (method, extra settings)
CASES = {
    "inbatch": ("inbatch", {}),
    "rand": ("rand", {"n_negatives": 2}),
    "star": ("star", {"n_negatives": 2}),
    "star-pairmean": ("star", {"n_negatives": 1, "star_mixing": "pairmean"}),
    "star-softmax": ("star", {"n_negatives": 2, "loss": "softmax"}),
    "adore": ("adore", {"adore_topk": 10, "metric": "mrr@10", "index": "flat"}),
}


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def torchrun(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def make_config(tmp: Path, data: Path, model: Path, name: str, batch_size: int) -> dict:
    method, extra = CASES[name]
    cfg = dict(method=method, data=str(data), model=str(model), out=str(tmp / f"out-{name}-{batch_size}"),
               max_steps=4, batch_size=batch_size, lr=1e-3, topk=8, dev_fraction=0.25, dev_every=2,
               save_every=2, cache_dir=str(tmp / "cache"), quiet=True, query_max_length=16,
               doc_max_length=32, warmup_ratio=0.0, seed=3)
    if method != "adore":
        cfg["dev_pool"] = 0
    cfg.update(extra)
    return cfg


def cross_rank_collision_step(trainer: Trainer) -> int | None:
    """A step whose global batch holds one query twice, once in each rank's half (an in-batch collision
    the masks must see across ranks); None if there is none in the first 40 steps."""
    for step in range(40):
        idx, _ = trainer.order.indices(step, 0)
        halves = [{trainer.examples[i].qid for i in idx[r * B : (r + 1) * B]} for r in range(2)]
        if halves[0] & halves[1]:
            return step
    return None


@pytest.fixture(scope="module")
def two_vs_one(tmp_path_factory, tiny_model_dir):
    """For every case: the single-process (batch 2B) step and the 2-process (batch B each) step."""
    tmp = tmp_path_factory.mktemp("ddp-step")
    data = write_tiny_train(tmp / "tiny-train", filler=20)
    reference, jobs = {}, []
    for name in CASES:
        trainer = Trainer(TrainConfig(**make_config(tmp, data, tiny_model_dir, name, 2 * B)))
        trainer.setup()  # also fills the cache the 2 processes then read
        trainer.model.eval()
        docs = encode_token_lists(trainer.model, trainer.store.rows(range(len(trainer.store))), "doc", batch_size=3)
        mined = None  # with the start weights, as the 2 processes do
        if name == "star":
            from hardneg.train.methods import mine_with_model

            mined = mine_with_model(trainer, trainer.model, folder=tmp / "mine-1")
        collision = cross_rank_collision_step(trainer) if name != "adore" else None
        step = collision or 0
        totals = trainer.step_gradients(step)
        named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
        grads = {n: p.grad.detach().clone() for n, p in named if p.grad is not None}
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.max_grad_norm)
        clipped = {n: p.grad.detach().clone() for n, p in named if p.grad is not None}
        trainer.optimizer.step()
        reference[name] = {"mined": mined, "totals": totals, "grads": grads, "clipped": clipped, "collision": collision,
                           "docs": docs,
                           "weights": {n: p.detach().clone() for n, p in named}}
        jobs.append({"config": make_config(tmp, data, tiny_model_dir, name, B), "step": step,
                     "result": str(tmp / f"{name}.pt"), "mine": str(tmp / "mine-2") if mined else None})
    args = tmp / "jobs.json"
    args.write_text(json.dumps(jobs))
    start = time.perf_counter()
    torchrun(str(WORKER), "step", str(args))
    print(f"2-process steps of {len(jobs)} cases: {time.perf_counter() - start:.1f}s")
    return {name: (reference[name], torch.load(tmp / f"{name}.pt", weights_only=False)) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_with_the_double_batch(two_vs_one, name):
    one, two = two_vs_one[name]
    assert two["totals"].keys() == one["totals"].keys()
    for key, value in one["totals"].items():
        if key.startswith("t_"):  # the step's time split (seconds): not a result
            continue
        assert two["totals"][key] == pytest.approx(value, abs=1e-5, rel=1e-5), key
    assert one["totals"]["loss"] > 0
    assert two["grads"].keys() == one["grads"].keys() and one["grads"]
    worst = max(float((two["grads"][k] - g).abs().max()) for k, g in one["grads"].items())
    # the softmax loss's scores are scaled by 1/temperature before a log-sum-exp: float32 sums in
    # another order (two ranks, then an all-reduce) move its gradients by ~2e-5 (the same before the
    # one-loss-per-method restructure); the pairwise losses stay within 1e-5
    bound = 3e-5 if CASES[name][1].get("loss") == "softmax" else 1e-5
    assert worst <= bound, f"largest gradient difference {worst:.2e}"
    assert any(float(g.abs().max()) > 1e-4 for g in one["grads"].values())  # not trivially zero
    # the update: the clipped gradient the optimiser gets, and AdamW's step wherever it is well conditioned
    # (its first step is lr * g / (|g| + eps): for |g| near 0 float noise alone flips it by up to lr)
    worst = max(float((two["clipped"][k] - g).abs().max()) for k, g in one["clipped"].items())
    assert worst <= bound, f"largest clipped-gradient difference {worst:.2e}"
    for k, g in one["clipped"].items():
        w = one["weights"][k]
        sure = g.abs() > 1e-3
        assert torch.allclose(two["weights"][k][sure], w[sure], atol=2e-6, rtol=0), k


def test_cross_rank_collisions_are_exercised(two_vs_one):
    for name in ("inbatch", "rand", "star"):
        assert two_vs_one[name][0]["collision"] is not None, name


def test_batches_shared_over_ranks_encode_bit_for_bit(two_vs_one):
    one, two = two_vs_one["star"]
    assert np.array_equal(two["docs"].numpy(), one["docs"])


def test_sharded_mining_equals_one_process(two_vs_one):
    one, two = two_vs_one["star"]
    assert one["mined"] and two["mined"] == one["mined"]


def test_ance_refresh_tracking_and_adore_train_under_two_processes(tmp_path, tiny_model_dir):
    """Whole runs with every collective path (ANCE's sharded re-mining, tracking, dev evaluation, ADORE's
    per-rank retrieval) finish, and rank 0 alone writes the outputs."""
    data = write_tiny_train(tmp_path / "tiny-train", filler=20)
    ance = make_config(tmp_path, data, tiny_model_dir, "star", B)
    ance.update(method="ance", refresh_every=2, track_every=2, n_negatives=1, max_steps=4)
    adore = make_config(tmp_path, data, tiny_model_dir, "adore", B)
    for cfg in (ance, adore):  # the caches first (as a real run would find them)
        Trainer(TrainConfig(**{**cfg, "max_steps": 1, "out": cfg["out"] + "-warm", "dev_at_start": False}))\
            .setup()
    args = tmp_path / "train.json"
    args.write_text(json.dumps([{"config": ance}, {"config": adore}]))
    torchrun(str(WORKER), "train", str(args))
    for cfg in (ance, adore):
        out = Path(cfg["out"])
        log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4]
        assert [r["step"] for r in log if r["kind"] == "dev"] == [0, 2, 4]
        assert json.loads((out / "summary.json").read_text())["world_size"] == 2
        assert (out / "model").is_dir() and (out / "checkpoints" / "step-0000004").is_dir()
    assert (Path(ance["out"]) / "refresh" / "negatives.tsv").is_file()
    assert [r["step"] for r in map(json.loads, (Path(ance["out"]) / "train_log.jsonl").read_text().splitlines())
            if r["kind"] == "track"] == [2, 4]
    assert (Path(adore["out"]) / "model" / "adore.json").is_file()


# ----------------------------------------------------------------------------- sharded `hardneg encode`
def test_sharded_encode_equals_unsharded_bit_for_bit(tmp_path, tiny_model_dir):
    from hardneg.cli import app
    from hardneg.index.encode import Embeddings

    data = write_tiny_train(tmp_path / "tiny-train", filler=30)
    runner = CliRunner()
    common = [str(data), "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path / "cache"), "-b", "4"]

    def cli(*args):
        result = runner.invoke(app, ["--quiet", *args])
        return result

    assert cli("encode", *common, "--out", str(tmp_path / "whole")).exit_code == 0
    sharded = tmp_path / "sharded"
    assert cli("encode", *common, "--out", str(sharded), "--shard", "0/3").exit_code == 0
    assert cli("encode", *common, "--out", str(sharded), "--shard", "2/3").exit_code == 0
    incomplete = cli("encode-merge", str(sharded))
    assert incomplete.exit_code != 0 and "1-of-3" in str(incomplete.exception)
    assert not (sharded / "manifest.json").exists()
    assert cli("encode", *common, "--out", str(sharded), "--shard", "1/3").exit_code == 0
    merged = cli("encode-merge", str(sharded))
    assert merged.exit_code == 0, merged.output
    whole, parts = Embeddings(tmp_path / "whole"), Embeddings(sharded)
    assert np.array_equal(np.asarray(whole.vectors), np.asarray(parts.vectors))
    assert whole.ids == parts.ids and whole.manifest == parts.manifest
    assert (tmp_path / "whole" / "embeddings.npy").read_bytes() == (sharded / "embeddings.npy").read_bytes()
    assert not Path(f"{sharded}.shards").exists()

    launched = tmp_path / "torchrun"
    torchrun("-m", "hardneg", "--quiet", "encode", *common, "--out", str(launched))
    assert (tmp_path / "whole" / "embeddings.npy").read_bytes() == (launched / "embeddings.npy").read_bytes()
    assert Embeddings(launched).manifest == whole.manifest


def test_merge_refuses_shards_of_another_encoder(tmp_path, tiny_model_dir, tiny_st_dir):
    from hardneg.cli import app

    data = write_tiny_train(tmp_path / "tiny-train")
    runner = CliRunner()
    out = tmp_path / "mixed"
    for model, shard in ((tiny_model_dir, "0/2"), (tiny_st_dir, "1/2")):
        result = runner.invoke(app, ["--quiet", "encode", str(data), "--model", str(model), "--out", str(out),
                                     "--cache-dir", str(tmp_path / "cache"), "--shard", shard])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["encode-merge", str(out)])
    assert result.exit_code != 0 and "disagrees" in str(result.exception)


# ----------------------------------------------------------------------------- kill one rank, resume
def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    final = sorted((out / "checkpoints").glob("step-*"))[-1]
    assert final.name == "step-0000006"
    return load_file(str(final / "model.safetensors"))


@pytest.mark.slow
def test_resume_after_killing_one_rank_matches_an_uninterrupted_run(tmp_path, tiny_model_dir):
    """Slow (three 2-process launches, ~1-2 min on 2 busy cores): run with ``-m slow``."""
    data = write_tiny_train(tmp_path / "tiny-train")

    def argv(out: Path, *extra: str) -> list[str]:
        return ["--quiet", "train", "star", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out),
                "--max-steps", "6", "--batch-size", "2", "--lr", "1e-3", "--topk", "8", "--n-negatives", "2",
                "--dev-fraction", "0.25", "--dev-every", "2", "--save-every", "2", "--dev-pool", "0",
                "--query-max-length", "16", "--doc-max-length", "32", "--warmup-ratio", "0.1",
                "--cache-dir", str(tmp_path / "cache"), *extra]

    start = time.perf_counter()
    torchrun("-m", "hardneg", *argv(tmp_path / "straight"))
    straight = _final_weights(tmp_path / "straight")

    args = tmp_path / "killed.json"
    args.write_text(json.dumps({"argv": argv(tmp_path / "resumed"), "kill_at": 4, "kill_rank": 1}))
    killed = torchrun(str(WORKER), "train-killed", str(args), check=False)
    assert killed.returncode != 0  # rank 1 died, torchrun tore rank 0 down and failed
    assert "SIGKILL" in killed.stderr or "Signal 9" in killed.stderr or "-9" in killed.stderr
    done = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("step-*"))
    assert done[-1] == "step-0000004"  # died after the checkpoint of step 4, before step 6

    torchrun("-m", "hardneg", *argv(tmp_path / "resumed", "--resume"))
    resumed = _final_weights(tmp_path / "resumed")
    assert resumed.keys() == straight.keys()
    worst = max(float((resumed[k] - v).abs().max()) for k, v in straight.items())
    assert worst <= 1e-6, worst
    assert all(torch.equal(resumed[k], v) for k, v in straight.items())  # in fact bit for bit
    log = [json.loads(x) for x in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "step-0000006" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    print(f"straight + killed + resumed 2-process runs: {time.perf_counter() - start:.1f}s")


def test_resume_with_another_number_of_processes_is_refused(tmp_path, tiny_model_dir):
    """A 1-process resume of a 2-process checkpoint fails with a clear message (the state says 2)."""
    from hardneg.errors import HardnegError
    from hardneg.train.checkpoint import save_checkpoint

    data = write_tiny_train(tmp_path / "tiny-train")
    cfg = TrainConfig(**make_config(tmp_path, data, tiny_model_dir, "inbatch", 2))
    trainer = Trainer(cfg)
    trainer.setup()
    state = {"version": 1, "step": 2, "best": 0.0, "best_step": 0, "config_fingerprint": cfg.fingerprint(),
             "world_size": 2}
    save_checkpoint(Path(cfg.out) / "checkpoints" / "step-0000002", trainer.model, trainer.optimizer,
                    trainer.scheduler, state, {})
    with pytest.raises(HardnegError, match="same number of processes"):
        trainer.train(resume=True)
