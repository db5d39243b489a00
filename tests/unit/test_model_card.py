"""``hardneg export``'s model card (README.md, sentence-transformers layout, MTEB training data) and
``--push-to-hub`` up to the upload call."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import write_tiny_train
from hardneg.cli import app
from hardneg.errors import HardnegError
from hardneg.export.card import metric_id, read_front_matter, train_command, write_model_card
from hardneg.export.sources import Dataset, find_run
from hardneg.train.config import TrainConfig

runner = CliRunner()
TEST_METRICS = {"RR@10": 0.5125, "R@100": 0.875, "nDCG@10": 0.5625}
TRANSFER_METRICS = {"RR@10": 0.25, "R@100": 0.5, "nDCG@10": 0.3125}


def invoke(*args):
    result = runner.invoke(app, ["--quiet", *map(str, args)], catch_exceptions=True)
    return result


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_model_dir):
    """A tiny STAR run trained as an experiment's training stage, with test and transfer stages beside it
    (the files ``hardneg experiment`` writes: recipe.json, stages/<name>/stage.json + metrics.json)."""
    from hardneg.train.trainer import Trainer

    root = tmp_path_factory.mktemp("card")
    model = tiny_model_dir
    data = write_tiny_train(root / "scifact")
    exp = root / "exp"
    stage = exp / "stages" / "train-star"
    cfg = TrainConfig(method="star", data=str(data), model=str(model), out=str(stage), max_steps=2, batch_size=4,
                      lr=1e-3, topk=8, dev_fraction=0.25, dev_every=2, save_every=2, dev_pool=0,
                      cache_dir=str(root / "cache"), quiet=True, query_max_length=16, doc_max_length=32,
                      warmup_ratio=0.0, report_to=["none"])
    trainer = Trainer(cfg)
    trainer.setup()
    trainer.train()
    (exp / "recipe.json").write_text(json.dumps({"name": "demo", "systems": [{"name": "star"}]}))
    for name, spec, metrics in (("test-star", f"{data}:test", TEST_METRICS),
                                ("transfer-star-nfcorpus-test", "../data/nfcorpus:test", TRANSFER_METRICS)):
        (exp / "stages" / name).mkdir(parents=True)
        (exp / "stages" / name / "stage.json").write_text(json.dumps(
            {"name": name, "status": "done", "settings": {"data": spec, "system": "star"}}))
        (exp / "stages" / name / "metrics.json").write_text(json.dumps(metrics))
    return {"root": root, "stage": stage, "data": data, "config": cfg}


def test_names_and_metric_ids():
    d = Dataset.from_spec("../shared/data/scifact:test")
    assert (d.name, d.split, d.mteb_task, d.hub_id) == ("scifact", "test", "SciFact", "mteb/scifact")
    d = Dataset.from_spec("irds:beir/nfcorpus/test")
    assert (d.name, d.mteb_task) == ("beir/nfcorpus/test", "NFCorpus")
    d = Dataset.from_spec("/data/classic/cranfield", "train")
    assert (d.name, d.split, d.mteb_task, d.hub_id) == ("cranfield", "train", None, None)
    assert [metric_id(m) for m in ("nDCG@10", "RR@10", "R@100", "P@5", "AP")] == [
        "ndcg_at_10", "mrr_at_10", "recall_at_100", "precision_at_5", "map"]


def test_train_command_round_trips_the_settings():
    """The card's command, parsed by the real ``hardneg train`` flags, gives back the same settings."""
    from hardneg.train.presets import resolve_config

    cfg = TrainConfig(method="rand", data="d", model="m", out="o", lr=1e-4, max_steps=7, precision="bf16",
                      rand_batch_positives=False, normalize=True, report_to=["mlflow", "wandb"])
    command = train_command(cfg.to_dict())
    assert command.startswith("hardneg train rand --data d --model m --out o ")
    assert "--no-rand-batch-positives" in command and "--report-to mlflow --report-to wandb" in command
    result = runner.invoke(app, ["train", *shlex.split(command)[2:], "--print-config"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    again, _ = resolve_config(None, None, printed)
    assert again.to_dict() == {**cfg.to_dict(), "quiet": again.quiet}


def test_export_writes_a_card_with_its_metrics(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    stage, cfg = experiment["stage"], experiment["config"]
    out = tmp_path / "st"
    result = invoke("export", stage / "model", "--out", out)
    assert result.exit_code == 0, result.output
    text = (out / "README.md").read_text()
    meta = read_front_matter(out / "README.md")
    assert meta["tags"] == ["sentence-transformers", "sentence-similarity", "feature-extraction", "hardneg", "star"]
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert "base_model" not in meta  # a local start folder is no hub id
    assert meta["datasets"] == ["mteb/scifact"]
    assert meta["train_datasets"] == [{"name": "scifact", "split": "train", "mteb_task": "SciFact",
                                       "id": "mteb/scifact", "method": "star"}]
    (index,) = meta["model-index"]
    got = {(r["dataset"]["name"], r["dataset"]["split"], m["type"]): (m["value"], r["dataset"]["args"]["zero_shot"])
           for r in index["results"] for m in r["metrics"]}
    assert got == {("SciFact", "test", "mrr_at_10"): (0.5125, False),
                   ("SciFact", "test", "recall_at_100"): (0.875, False),
                   ("SciFact", "test", "ndcg_at_10"): (0.5625, False),
                   ("NFCorpus", "test", "mrr_at_10"): (0.25, True),
                   ("NFCorpus", "test", "recall_at_100"): (0.5, True),
                   ("NFCorpus", "test", "ndcg_at_10"): (0.3125, True)}
    # the body: sentence-transformers' section names, the numbers, the command
    for heading in ("## Model Details", "### Model Description", "## Usage", "## Evaluation", "## Training Details",
                    "#### Training Hyperparameters", "#### Training Logs", "### Framework Versions", "## Citation"):
        assert f"\n{heading}\n" in text, heading
    summary = json.loads((stage / "summary.json").read_text())
    dev = json.loads((stage / "dev_metrics.json").read_text())
    assert f"* Steps: 2 (best dev RR@10 at step {summary['best_step']})" in text
    assert f"**{dev['RR@10']:.4f}**" in text  # the saved checkpoint's row is bold
    log = [json.loads(x) for x in (stage / "train_log.jsonl").read_text().splitlines()]
    assert text.count("\n| **") + text.count("\n| ") >= len([r for r in log if r["kind"] == "dev"])
    assert "| nDCG@10 | 0.5625 |" in text and "| nDCG@10 | 0.3125 |" in text
    assert "**In-domain**" in text and "**Zero-shot**" in text
    assert train_command(cfg.to_dict()) in text
    assert 'training_datasets = {"SciFact": ["train"]}' in text
    assert "- **Output Dimensionality:** 32 dimensions" in text and "- **Similarity Function:** Dot Product" in text
    assert "Transformer" in text.split("### Full Model Architecture")[1].split("## Usage")[0]
    # the folder still loads, card and all
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out), device="cpu").encode(["x"]).shape == (1, 32)


def test_lineage_reaches_the_hub_base_and_every_training_set(experiment, tmp_path):
    """ADORE on STAR: base_model is STAR's start (a hub id), and both runs' data are listed."""
    stage = experiment["stage"]
    star = tmp_path / "star"
    shutil.copytree(stage, star, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    config = json.loads((star / "config.json").read_text())
    (star / "config.json").write_text(json.dumps({**config, "model": "minilm"}))
    adore = tmp_path / "adore"
    shutil.copytree(star, adore)
    (adore / "config.json").write_text(json.dumps({**config, "method": "adore", "model": str(star / "model"),
                                                   "data": "../data/nfcorpus"}))
    out = tmp_path / "card"
    out.mkdir()
    meta = read_front_matter(write_model_card(out, str(adore / "model")))
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["tags"][-2:] == ["star", "adore"]
    assert [(d["name"], d["method"]) for d in meta["train_datasets"]] == [("scifact", "star"), ("nfcorpus", "adore")]
    assert meta["datasets"] == ["mteb/scifact", "mteb/nfcorpus"]
    assert "model-index" not in meta  # a plain run folder has no test metrics
    assert find_run(tmp_path / "card") is None


def test_eval_folder_and_bad_eval(experiment, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"nDCG@10": 0.375}))
    (run_dir / "settings.json").write_text(json.dumps({"command": "retrieve", "data": "../data/fiqa:test"}))
    out = tmp_path / "st"
    assert invoke("export", experiment["stage"] / "model", "--out", out, "--eval", run_dir).exit_code == 0
    meta = read_front_matter(out / "README.md")
    results = {r["dataset"]["name"]: r for r in meta["model-index"][0]["results"]}
    assert results["FiQA2018"]["metrics"] == [{"type": "ndcg_at_10", "value": 0.375, "name": "nDCG@10"}]
    (run_dir / "settings.json").write_text(json.dumps({"command": "retrieve"}))
    result = invoke("export", experiment["stage"] / "model", "--out", tmp_path / "st2", "--eval", run_dir)
    assert isinstance(result.exception, HardnegError) and "settings.json: no 'data' key" in str(result.exception)
    assert not (tmp_path / "st2").exists()  # refused before the export


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(experiment, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw, self.token))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        folder = Path(kw["folder_path"])
        calls.append(("upload_folder", kw["repo_id"], {k: v for k, v in kw.items() if k != "folder_path"},
                      sorted(p.name for p in folder.iterdir())))
        assert f"SentenceTransformer({kw['repo_id']!r})" in (folder / "README.md").read_text()  # the card's usage
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    out = tmp_path / "st"
    result = invoke("export", experiment["stage"] / "model", "--out", out, "--push-to-hub", "me/star-tiny", "--private")
    assert result.exit_code == 0, result.output
    (create, upload) = calls
    assert create == ("create_repo", "me/star-tiny", {"private": True, "exist_ok": True, "repo_type": "model"},
                      "hf_from_env")
    assert upload[1] == "me/star-tiny" and upload[2]["repo_type"] == "model"
    assert {"README.md", "config.json", "modules.json", "model.safetensors"} <= set(upload[3])
    calls.clear()
    assert invoke("export", experiment["stage"] / "model", "--out", out, "--push-to-hub", "me/x",
                  "--token", "hf_flag").exit_code == 0
    assert calls[0][2]["private"] is False and calls[0][3] == "hf_flag"


def test_push_to_hub_errors(experiment, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    result = invoke("export", experiment["stage"] / "model", "--out", tmp_path / "a", "--push-to-hub", "bad id!")
    assert isinstance(result.exception, HardnegError) and "not a valid repo id" in str(result.exception)
    assert not (tmp_path / "a").exists()

    def offline(self, repo_id, **kw):
        raise OSError("Cannot reach https://huggingface.co: offline mode is enabled")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    result = invoke("export", experiment["stage"] / "model", "--out", tmp_path / "b", "--push-to-hub", "me/x")
    assert isinstance(result.exception, HardnegError) and "the upload failed (OSError" in str(result.exception)
    assert (tmp_path / "b" / "README.md").is_file()  # the export itself stays


def test_export_of_a_model_without_a_run(tiny_st_dir, tmp_path):
    out = tmp_path / "st"
    assert invoke("export", tiny_st_dir, "--out", out).exit_code == 0
    meta = read_front_matter(out / "README.md")
    assert meta["train_datasets"] == [] and "model-index" not in meta and "base_model" not in meta
    assert "no hardneg training run was found" in (out / "README.md").read_text()
    assert invoke("export", tiny_st_dir, "--out", tmp_path / "nocard", "--no-card").exit_code == 0
    assert not (tmp_path / "nocard" / "README.md").exists()
