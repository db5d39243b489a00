"""Under torchrun the long work is shared by the ranks: 2 processes (gloo, CPU) against 1.

STAR's warm-up mining and ADORE's index build run in both layouts, with every corpus batch slowed by an
injected delay in the 2-process worker (``_ddp_worker.py split``) and the process group's timeout set shorter
than one rank's encoding of the whole corpus:

* each rank encodes about half of the corpus (counted in the model's forward), and every row exactly once;
  STAR's training queries are searched in shares too;
* the mined negatives file is byte-identical to the 1-process run's (and so is the diagnostics file), and the
  trained weights equal the 1-process run's within the 2-process parity tests' bounds;
* the runs finish under that timeout, while a rank that waits in a collective for one rank's encoding of the
  whole corpus (what rank 0 alone did before) times out under it (the probe);
* set up again with ``--resume``, neither run encodes anything: the shared encodings and the mined negatives
  are found again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import WORKER, torchrun

from conftest import write_tiny_train
from hardneg.negatives.formats.tsv import read_negatives
from hardneg.retrieval.runs import run_from_arrays
from hardneg.train.config import TrainConfig
from hardneg.train.methods import mining
from hardneg.train.trainer import Trainer

B = 2  # per rank; the single-process reference uses 2 * B
BATCH = 4  # corpus rows per encoding batch: 100 documents are 25 batches
DELAY = 0.3  # seconds added to every corpus batch in the worker: one rank's whole corpus takes >= 7.5 s
TIMEOUT = 6.0  # the process group's timeout (seconds): longer than half of the corpus, shorter than all of it
MINING = {"QUERY_BATCH": 2, "SEARCH_QUERIES": 2}  # small search units: the 9 training queries are shared out too
STEPS = 3


def _no_dropout(src: Path, dest: Path) -> Path:
    """A copy of the tiny model without dropout: 1 and 2 processes then train the very same function."""
    dest.mkdir()
    for f in src.iterdir():
        dest.joinpath(f.name).write_bytes(f.read_bytes())
    config = json.loads((dest / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def _config(tmp: Path, data: Path, model: Path, method: str, procs: int) -> dict:
    cfg = dict(method=method, data=str(data), model=str(model), out=str(tmp / f"{method}-{procs}"),
               cache_dir=str(tmp / f"cache-{method}-{procs}"), max_steps=STEPS, batch_size=2 * B // procs, lr=1e-3,
               warmup_ratio=0.0, seed=3, dev_fraction=0.25, dev_every=STEPS, save_every=STEPS,
               dev_at_start=False, batch_encode_size=BATCH, query_max_length=16, doc_max_length=32, quiet=True)
    if method == "star":
        cfg.update(topk=8, n_negatives=2, dev_pool=5)
    else:
        cfg.update(adore_topk=10, metric="mrr@10", index="flat")
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("rank-split")
    data = write_tiny_train(tmp / "data", filler=52)
    model = _no_dropout(tiny_model_dir, tmp / "model")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in MINING.items():
            patch.setattr(mining, name, value)
        for method in ("star", "adore"):  # the single-process references, each with its own cache
            Trainer(TrainConfig(**_config(tmp, data, model, method, 1))).train()
    jobs = [{"name": m, "config": _config(tmp, data, model, m, 2)} for m in ("star", "adore")]
    args = tmp / "split.json"
    args.write_text(json.dumps({"jobs": jobs, "timeout": TIMEOUT, "delay": DELAY, "mining": MINING,
                                "results": str(tmp)}))
    start = time.perf_counter()
    torchrun(str(WORKER), "split", str(args))
    print(f"2-process STAR + ADORE runs, resumed setups and the probe: {time.perf_counter() - start:.1f}s")
    ranks = [json.loads((tmp / f"rank-{r}.json").read_text()) for r in range(2)]
    return {"tmp": tmp, "ranks": ranks, "docs": 100,
            "one": {m: _config(tmp, data, model, m, 1) for m in ("star", "adore")}}


@pytest.mark.parametrize("method", ["star", "adore"])
def test_each_rank_encodes_half_of_the_corpus(runs, method):
    doc = [r[method]["setup"]["doc"] for r in runs["ranks"]]
    assert sum(doc) == runs["docs"]  # every row once: nobody encodes the whole corpus, nothing twice
    assert all(0.4 * runs["docs"] <= n <= 0.6 * runs["docs"] for n in doc), doc
    if method == "star":  # the training queries are searched in shares as well
        queries = [r[method]["setup"]["query"] for r in runs["ranks"]]
        mined = json.loads((runs["tmp"] / "star-2" / "warmup" / "manifest.json").read_text())["queries"]
        assert sum(queries) == mined and all(n > 0 for n in queries), queries


def test_mined_negatives_are_byte_identical_to_one_process(runs):
    one, two = runs["tmp"] / "star-1", runs["tmp"] / "star-2"
    negatives = (one / "warmup" / "negatives.tsv").read_bytes()
    assert negatives.count(b"\n") > 9  # 9 training queries x their negatives
    assert (two / "warmup" / "negatives.tsv").read_bytes() == negatives
    # the start model's diagnostics event is every rank's share merged into one
    assert (two / "negatives_diagnostics.json").read_bytes() == (one / "negatives_diagnostics.json").read_bytes()
    assert not (two / ".mining").exists()  # the shares' files are gone once read


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / f"step-{STEPS:07d}" / "model.safetensors"))


def _gradient_rms(config: dict, monkeypatch) -> dict[str, torch.Tensor]:
    """Per trained weight (checkpoint key), the root mean square of its gradients over the run, read from the
    1-process run's AdamW state (``exp_avg_sq``, bias-corrected), through a trainer set up like that run."""
    for name, value in MINING.items():
        monkeypatch.setattr(mining, name, value)
    trainer = Trainer(TrainConfig(**config))
    trainer.setup()  # finds the run's mined negatives and index again
    out = Path(config["out"]) / "checkpoints" / f"step-{STEPS:07d}"
    trainer.optimizer.load_state_dict(torch.load(out / "optimizer.pt", weights_only=True))
    beta2 = trainer.optimizer.param_groups[0]["betas"][1]
    towers = {"doc": trainer.model.doc_model, "query": trainer.model.query_model}
    if trainer.model.query_model is trainer.model.doc_model:  # one shared encoder: saved once, as doc.*
        del towers["query"]
    rms = {}
    for prefix, tower in towers.items():
        for name, p in tower.named_parameters():
            state = trainer.optimizer.state.get(p)
            if state:
                rms[f"{prefix}.{name}"] = (state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))).sqrt()
    return rms


@pytest.mark.parametrize("method", ["star", "adore"])
def test_trained_weights_equal_one_process(runs, method, monkeypatch):
    """Within the 2-process parity tests' bounds: wherever the gradient is sure (> 1e-3) the weights agree to
    2e-6, LayerNorm's to 2e-5, 2% of one AdamW step at lr 1e-3 (measured: up to 1.6e-5 in a few LayerNorm
    weights and biases of STAR, whose per-step gradients are small beside their RMS). Elsewhere AdamW's
    normalised step turns float noise in a near-zero gradient (the ranks sum in another order) into a step of
    either sign, so the whole update is compared as a norm: within 3% (measured: 0.8% for STAR, 1e-5 for ADORE;
    other negatives or another data order differ by tens of percent)."""
    one, two = _weights(runs["tmp"] / f"{method}-1"), _weights(runs["tmp"] / f"{method}-2")
    start = load_file(str(runs["tmp"] / "model" / "model.safetensors"))
    assert one.keys() == two.keys()
    rms = _gradient_rms(runs["one"][method], monkeypatch)
    assert rms and set(rms) <= set(one)
    sure = 0
    for key, g in rms.items():
        mask = g > 1e-3
        sure += int(mask.sum())
        atol = 2e-5 if "LayerNorm" in key else 2e-6
        assert torch.allclose(two[key][mask], one[key][mask], atol=atol, rtol=0), key
    assert sure >= 50
    update = sum(float(((one[k] - start[k.split(".", 1)[1]]) ** 2).sum()) for k in rms) ** 0.5
    apart = sum(float(((two[k] - one[k]) ** 2).sum()) for k in rms) ** 0.5
    assert update > 0.1 and apart <= 0.03 * update, (apart, update)
    frozen = set(one) - set(rms)  # ADORE's document tower: untouched in both
    assert all(torch.equal(one[k], two[k]) and torch.equal(one[k], start[k.split(".", 1)[1]]) for k in frozen)


def test_the_timeout_is_shorter_than_one_rank_encoding_the_whole_corpus(runs):
    first, second = runs["ranks"]
    whole = first["whole_corpus_batches"]
    assert whole == 25 and whole * DELAY > TIMEOUT  # one rank alone: longer than the timeout
    # ... and a rank waiting in a collective that long (rank 0 mining alone, as before) does time out under it
    assert second["probe"]["timed_out"], second["probe"]
    assert "Timed out" in second["probe"]["error"]


@pytest.mark.parametrize("method", ["star", "adore"])
def test_a_resumed_run_finds_the_shared_work_again(runs, method):
    for rank in runs["ranks"]:
        assert rank[method]["resume"] == {"doc": 0, "query": 0, "doc_batches": 0}, rank[method]


# ----------------------------------------------------------------------------- one process: the pieces
def test_merge_takes_this_splits_shards_and_opens_a_finished_merge(tmp_path, tiny_model_dir):
    """A stale shard of another split (an earlier run with another world size) is ignored and cleared; a
    second rank arriving after the merge opens the result instead of failing."""
    from typer.testing import CliRunner

    from hardneg.cli import app
    from hardneg.index.encode import Embeddings
    from hardneg.index.shards import merge_shards, shards_root

    data = write_tiny_train(tmp_path / "data", filler=10)
    common = [str(data), "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path / "cache"), "-b", "4"]
    runner = CliRunner()
    out = tmp_path / "emb"
    for args in (["--out", str(tmp_path / "whole")], ["--out", str(out), "--shard", "0/3"],
                 ["--out", str(out), "--shard", "0/2"], ["--out", str(out), "--shard", "1/2"]):
        result = runner.invoke(app, ["--quiet", "encode", *common, *args])
        assert result.exit_code == 0, result.output
    with pytest.raises(Exception, match="different splits"):  # without the split named: refused as before
        merge_shards(out)
    merged = merge_shards(out, n_shards=2, exist_ok=True)
    assert (out / "embeddings.npy").read_bytes() == (tmp_path / "whole" / "embeddings.npy").read_bytes()
    assert not shards_root(out).exists()  # the stale 0-of-3 went with the rest
    again = merge_shards(out, n_shards=2, exist_ok=True)
    assert isinstance(again, Embeddings) and again.manifest == merged.manifest
    with pytest.raises(Exception, match="already holds finished embeddings"):
        merge_shards(out)


def test_the_start_models_negatives_are_read_back_while_they_fit_the_run(tmp_path, tiny_model_dir, monkeypatch):
    """OUT/warmup/ is reused by a rerun of the same run (its file is read, not mined again), and mined again
    once anything they depend on changes (here the depth, topk)."""
    data = write_tiny_train(tmp_path / "data")
    cfg = dict(method="star", data=str(data), model=str(tiny_model_dir), out=str(tmp_path / "out"),
               cache_dir=str(tmp_path / "cache"), topk=8, n_negatives=2, batch_size=4, dev_fraction=0.25,
               quiet=True, query_max_length=16, doc_max_length=32, seed=3)
    Trainer(TrainConfig(**cfg)).setup()
    warm = tmp_path / "out" / "warmup"
    lines = (warm / "negatives.tsv").read_text().splitlines()
    (q, a, _), (q2, b, _) = lines[0].split("\t"), lines[1].split("\t")
    assert q == q2
    lines[0], lines[1] = f"{q}\t{b}\t1", f"{q}\t{a}\t2"  # a mark only a read of the file keeps
    (warm / "negatives.tsv").write_text("\n".join(lines) + "\n")
    searched, read = [], []
    monkeypatch.setattr(mining, "run_from_arrays", lambda *x, **k: searched.append(1) or run_from_arrays(*x, **k))
    monkeypatch.setattr(mining, "read_negatives", lambda path: read.append(read_negatives(path)) or read[-1])
    Trainer(TrainConfig(**cfg)).setup()
    assert not searched and read[0][q][:2] == [b, a]
    diagnostics = json.loads((tmp_path / "out" / "negatives_diagnostics.json").read_text())["events"]
    assert [e["where"] for e in diagnostics] == ["start model"]  # the event, read back with the file
    Trainer(TrainConfig(**{**cfg, "topk": 6})).setup()  # another depth: mined again, the file replaced
    assert searched and len(read) == 1
    assert not (warm / "negatives.tsv").read_text().startswith(f"{q}\t{b}\t1\n")


def test_train_passes_dist_timeout_to_the_process_group(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import hardneg.cli.train as train_cli
    from hardneg.cli import app

    asked = []

    def join(timeout_seconds=None):
        asked.append(timeout_seconds)
        raise SystemExit(3)  # stop before any training

    monkeypatch.setattr(train_cli, "join_torchrun", join)
    data = write_tiny_train(tmp_path / "data")
    result = CliRunner().invoke(app, ["train", "inbatch", "--data", str(data), "--out", str(tmp_path / "out"),
                                      "--dist-timeout", "90"])
    assert result.exit_code == 3 and asked == [90.0], result.output
