"""``--report-to``: the training log's scalars in TensorBoard, MLflow (local file store) and W&B (offline)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import write_tiny_train
from hardneg.errors import HardnegError
from hardneg.train.checkpoint import RunLog
from hardneg.train.config import TrainConfig
from hardneg.train.report_to import flat_params, mlflow_key, scalars

RECORDS = [({"step": 0, "RR@10": 0.25, "nDCG@10": 0.5}, "dev"),
           ({"step": 1, "loss": 0.75, "lr": 1e-3, "epoch": 0}, "train"),
           ({"step": 2, "loss": 0.5, "lr": 2e-3, "epoch": 1}, "train"),
           ({"step": 2, "RR@10": 0.5, "nDCG@10": 0.625}, "dev"),
           ({"step": 2, "queries": 4, "train_RR@10": 0.125, "overlap@8": 0.875}, "track")]


def expected() -> dict[str, dict[int, float]]:
    """What the JSONL log holds, as ``{kind/key: {step: value}}``: what every target must show."""
    out: dict[str, dict[int, float]] = {}
    for record, kind in RECORDS:
        for key, value in scalars(record, kind).items():
            out.setdefault(key, {})[record["step"]] = value
    return out


def write_log(out: Path, report_to: list[str], resume_step: int | None = None, records=RECORDS) -> None:
    log = RunLog(out, resume_step, report_to=report_to, params={"method": "star", "lr": 1e-3, "report_to": report_to})
    for record, kind in records:
        log.write(record, kind)
    log.close()


def jsonl(out: Path) -> dict[str, dict[int, float]]:
    got: dict[str, dict[int, float]] = {}
    for line in (out / "train_log.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in scalars({k: v for k, v in record.items() if k != "kind"}, record["kind"]).items():
            got.setdefault(key, {})[record["step"]] = value
    return got


def test_scalars_and_names():
    record = {"step": 3, "loss": 0.5, "note": "x", "epoch": 1}
    assert scalars(record, "train") == {"train/loss": 0.5, "train/epoch": 1.0}
    assert mlflow_key("dev/RR@10") == "dev/RR_at_10" and mlflow_key("track/overlap@200") == "track/overlap_at_200"
    assert mlflow_key("dev/P(rel)") == "dev/P_rel_"
    assert flat_params({"report_to": ["mlflow", "wandb"], "extra": {"a": 1, "b": [1, 2]}, "lr": 0.1}) == {
        "report_to": "mlflow,wandb", "extra.a": "1", "extra.b": "[1, 2]", "lr": "0.1"}


def test_config_report_to():
    assert TrainConfig().report_to == ["tensorboard"]
    assert TrainConfig(report_to="mlflow, wandb").report_to == ["mlflow", "wandb"]
    assert TrainConfig(report_to=["MLflow", "mlflow", "none"]).report_to == ["mlflow"]
    assert TrainConfig(report_to=["none"]).report_to == []
    with pytest.raises(HardnegError, match="report_to must be tensorboard, mlflow, wandb or none, not 'comet'"):
        TrainConfig(report_to=["comet"])
    with pytest.raises(HardnegError, match="report_to takes a list"):
        TrainConfig(report_to=3)
    # a resumed run may report elsewhere: report_to is not part of the fingerprint
    assert TrainConfig(report_to=["mlflow"]).fingerprint() == TrainConfig().fingerprint()


def test_tensorboard_still_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_log(tmp_path, ["tensorboard"])
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    got = {tag: {e.step: round(e.value, 6) for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    assert got == {k: {s: round(v, 6) for s, v in steps.items()} for k, steps in expected().items()}  # float32
    assert jsonl(tmp_path) == expected()
    assert not (tmp_path / "mlruns").exists()


def test_mlflow_file_store_holds_the_logged_metrics(tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "unit")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    out = tmp_path / "run-a"
    out.mkdir()
    write_log(out, ["mlflow"])
    state = json.loads((out / "report_to.json").read_text())
    run_id = state["mlflow"]["run_id"]
    (run_dir,) = [p for p in store.glob(f"*/{run_id}") if p.is_dir()]
    metrics = {}
    for path in (run_dir / "metrics").rglob("*"):
        if path.is_file():  # one line per point: "<timestamp> <value> <step>"
            key = path.relative_to(run_dir / "metrics").as_posix()
            metrics[key] = {int(s): float(v) for _, v, s in (line.split() for line in path.read_text().splitlines())}
    assert metrics == {mlflow_key(k): v for k, v in expected().items()}
    assert (run_dir / "params" / "method").read_text() == "star"
    assert (run_dir / "params" / "report_to").read_text() == "mlflow"
    assert "status: 3" in (run_dir / "meta.yaml").read_text()  # RunStatus.FINISHED
    assert (run_dir.parent / "meta.yaml").read_text().count("name: unit") == 1
    # --resume continues the same run: the steps after the checkpoint are logged again, the same values
    write_log(out, ["mlflow"], resume_step=1, records=RECORDS[2:])
    assert json.loads((out / "report_to.json").read_text())["mlflow"]["run_id"] == run_id
    assert len([p for p in store.glob("*/*/meta.yaml")]) == 1
    lines = (run_dir / "metrics" / "train" / "loss").read_text().splitlines()
    assert [(float(v), int(s)) for _, v, s in map(str.split, lines)] == [(0.75, 1), (0.5, 2), (0.5, 2)]


def test_mlflow_default_store_is_in_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    write_log(tmp_path, ["mlflow"], records=RECORDS[:2])
    assert json.loads((tmp_path / "report_to.json").read_text())["mlflow"]["tracking_uri"] == (
        (tmp_path / "mlruns").resolve().as_uri())
    assert list((tmp_path / "mlruns").glob("*/*/metrics/train/loss"))


def wandb_history(run_file: Path) -> dict[str, dict[int, float]]:
    """The history records of an offline ``run-<id>.wandb`` file (LevelDB-style log of protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, got = 7, b"", {}
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                for key, value in items.items():
                    if not key.startswith("_"):
                        got.setdefault(key, {})[int(items["_step"])] = value
    return got


def test_wandb_offline_run_has_the_history(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    out = tmp_path / "run-w"
    out.mkdir()
    write_log(out, ["wandb", "tensorboard"])
    run_id = json.loads((out / "report_to.json").read_text())["wandb"]["id"]
    (run_file,) = (tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    import time

    for _ in range(40):  # wandb's service process may still be flushing the offline file after finish()
        if wandb_history(run_file) == expected():
            break
        time.sleep(0.25)
    assert wandb_history(run_file) == expected(), f"{run_file}: {run_file.stat().st_size} bytes"
    assert (out / "tensorboard").is_dir()


def test_missing_backend_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(HardnegError, match=r"--report-to mlflow needs the mlflow package.*hardneg\[tracking\]"):
        write_log(tmp_path, ["tensorboard", "mlflow"])
    assert not (tmp_path / "train_log.jsonl").exists() and not (tmp_path / "tensorboard").exists()
    cfg = TrainConfig(data=str(tmp_path), report_to=["mlflow"])
    with pytest.raises(HardnegError, match="hardneg\\[tracking\\]"):
        cfg.validate()  # before any compute


def test_train_reports_to_mlflow_on_rank_0(tmp_path, monkeypatch, tiny_model_dir):
    """A real (tiny) training run: the MLflow run holds the JSONL log's every scalar."""
    from hardneg.train.trainer import Trainer

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "store").as_uri())
    data = write_tiny_train(tmp_path / "data")
    cfg = TrainConfig(method="inbatch", data=str(data), model=str(tiny_model_dir), out=str(tmp_path / "out"),
                      max_steps=2, batch_size=4, lr=1e-3, topk=8, dev_fraction=0.25, dev_every=2, save_every=2,
                      dev_pool=0, cache_dir=str(tmp_path / "cache"), quiet=True, query_max_length=16, doc_max_length=32,
                      report_to=["mlflow", "tensorboard"])
    trainer = Trainer(cfg)
    trainer.setup()
    trainer.train()
    out = tmp_path / "out"
    run_id = json.loads((out / "report_to.json").read_text())["mlflow"]["run_id"]
    (run_dir,) = (tmp_path / "store").glob(f"*/{run_id}")
    logged = {p.relative_to(run_dir / "metrics").as_posix(): len(p.read_text().splitlines())
              for p in (run_dir / "metrics").rglob("*") if p.is_file()}
    want = {mlflow_key(k): len(v) for k, v in jsonl(out).items()}
    assert logged == want and logged["train/loss"] == 2 and logged["dev/RR_at_10"] == 2
    assert (run_dir / "params" / "method").read_text() == "inbatch"
    assert (out / "tensorboard").is_dir()
