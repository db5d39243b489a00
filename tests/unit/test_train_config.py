"""TrainConfig's typing and validation, and how `hardneg train` resolves preset + YAML + flags."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from hardneg.cli import app
from hardneg.cli.train import setting_options
from hardneg.errors import HardnegError
from hardneg.train.config import TrainConfig
from hardneg.train.presets import PRESETS, resolve_config

runner = CliRunner()


def _yaml(tmp_path, text: str):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def _hardneg(*args, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hardneg", *map(str, args)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               "HARDNEG_CACHE_DIR": str(tmp_path / "cache")})


# --------------------------------------------------------------------------- the model
def test_yaml_numbers_are_typed(tmp_path):
    """YAML reads `1e-4` (no dot) as a string: number settings take numeric strings, nothing else."""
    assert yaml.safe_load("lr: 1e-4")["lr"] == "1e-4"
    cfg = TrainConfig.from_yaml(_yaml(tmp_path, 'lr: 1e-4\nbatch_size: "32"\nalpha: 1\n'))
    assert cfg.lr == 0.0001 and isinstance(cfg.lr, float)
    assert cfg.batch_size == 32 and isinstance(cfg.batch_size, int)
    assert cfg.alpha == 1.0 and isinstance(cfg.alpha, float)
    with pytest.raises(HardnegError, match=r"train\.yaml: batch_size: input should be a valid integer.*'fast'"
                                           r".*batch_size takes a whole number, default 32"):
        TrainConfig.from_yaml(_yaml(tmp_path, "batch_size: fast\n"))
    with pytest.raises(HardnegError, match=r"lr: input should be a valid number.*got 'fast'"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(HardnegError, match=r"batch_size: .*valid integer.*got 2\.5"):
        TrainConfig(batch_size=2.5)


def test_unknown_keys_suggest_the_closest_setting(tmp_path):
    with pytest.raises(HardnegError, match=r"train\.yaml: unknown training setting 'batch_szie' "
                                           r"\(did you mean 'batch_size'\?\); allowed: method, data, "):
        TrainConfig.from_yaml(_yaml(tmp_path, "batch_szie: 8\n"))
    with pytest.raises(HardnegError, match=r"unknown training setting 'colour'; allowed"):
        TrainConfig.from_dict({"colour": "red"})


def test_bad_values_name_the_key_and_what_is_allowed(tmp_path):
    with pytest.raises(HardnegError, match=r"train\.yaml: optimizer must be one of adamw, lamb, not 'sgd'"):
        TrainConfig.from_yaml(_yaml(tmp_path, "optimizer: sgd\n"))
    with pytest.raises(HardnegError, match="method must be one of inbatch, rand, .*adore, not 'dpr'"):
        TrainConfig(method="dpr")
    with pytest.raises(HardnegError, match="warmup_ratio must be in"):
        TrainConfig(warmup_ratio=1.5)
    with pytest.raises(HardnegError, match="lr must be positive"):
        TrainConfig(lr=0)
    cfg = TrainConfig(data="x")
    with pytest.raises(HardnegError, match="max_steps must be at least 1"):  # assignment is checked too
        cfg.max_steps = 0
    cfg.max_steps = "7"
    assert cfg.max_steps == 7
    with pytest.raises(HardnegError, match=r"train\.yaml: a training config is a mapping"):
        TrainConfig.from_yaml(_yaml(tmp_path, "- lr\n"))


def test_dict_round_trip_replace_and_fingerprint():
    cfg = TrainConfig(method="inbatch", data="d", lr=1e-3, cache_dir="c")
    data = cfg.to_dict()
    assert list(data)[:4] == ["method", "data", "model", "out"] and data["extra"] == {}
    assert TrainConfig.from_dict(data) == cfg and TrainConfig(**data).fingerprint() == cfg.fingerprint()
    other = cfg.replace(out="elsewhere")
    assert other.out == "elsewhere" and cfg.out == "runs/train" and other.lr == cfg.lr
    assert cfg.replace(max_steps=3).fingerprint() == cfg.fingerprint()  # max_steps may change on --resume
    assert cfg.replace(lr=2e-3).fingerprint() != cfg.fingerprint()
    with pytest.raises(HardnegError, match="lr: input should be a valid number"):
        cfg.replace(lr="fast")


def test_every_setting_has_help_and_presets_are_valid():
    for name, field in TrainConfig.model_fields.items():
        assert field.description, name
    for name, values in PRESETS.items():
        TrainConfig(**values)  # every preset value passes the field checks
        assert set(values) <= set(TrainConfig.model_fields), name
    names = {p.name for p in setting_options()}
    assert "lr" in names and "track_queries" in names and not names & {"method", "quiet", "extra"}


def test_resolve_config_preset_then_yaml_then_flags(tmp_path):
    path = _yaml(tmp_path, "lr: 1e-4\nbatch_size: 8\n")
    cfg, explicit = resolve_config("cpu-demo", path, {"batch_size": 4, "method": "star"})
    assert cfg.lr == 1e-4 and cfg.batch_size == 4  # the file beats the preset, the flag beats the file
    assert cfg.max_steps == PRESETS["cpu-demo"]["max_steps"]  # the preset fills the rest
    assert explicit == {"lr", "batch_size", "method"}


# --------------------------------------------------------------------------- the command
def test_print_config_shows_the_resolved_settings(tmp_path):
    path = _yaml(tmp_path, 'lr: 1e-4\nbatch_size: "32"\n')
    result = runner.invoke(app, ["train", "adore", "--config", str(path), "--preset", "cpu-demo",
                                 "--data", "somewhere/scifact", "--max-steps", "5", "--metric", "ndcg@10",
                                 "--no-dev-at-start", "--print-config"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown == {**TrainConfig().to_dict(), **PRESETS["cpu-demo"], "method": "adore", "lr": 0.0001,
                     "batch_size": 32, "data": "somewhere/scifact", "max_steps": 5, "metric": "ndcg@10",
                     "dev_at_start": False, "out": "runs/train-scifact-adore"}
    assert isinstance(shown["lr"], float) and TrainConfig(**shown).lr == 0.0001  # reads back as --config
    result = runner.invoke(app, ["train", "star", "--doc-model", "m", "--print-config"])
    assert result.exit_code != 0 and "--doc-model is for adore" in str(result.exception)


def test_yaml_errors_exit_2_with_one_line_and_no_traceback(tmp_path):
    proc = _hardneg("train", "star", "--config", _yaml(tmp_path, "lr: fast\n"), "--print-config",
                    tmp_path=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not proc.stdout
    assert "train.yaml: lr: input should be a valid number" in proc.stderr and "'fast'" in proc.stderr
    proc = _hardneg("train", "star", "--config", _yaml(tmp_path, "lrr: 1e-4\n"), tmp_path=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown training setting 'lrr' (did you mean 'lr'?)" in proc.stderr
    proc = _hardneg("train", "star", "--config", tmp_path / "missing.yaml", tmp_path=tmp_path)
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_yaml_lr_trains_with_that_lr(tiny_beir, tiny_model_dir, tmp_path):
    """`lr: 1e-4` in a YAML config (a string to YAML) trains with lr 0.0001: config.json and the optimiser."""
    shutil.copy(tiny_beir / "qrels" / "test.tsv", tiny_beir / "qrels" / "train.tsv")
    path = _yaml(tmp_path, 'lr: 1e-4\nbatch_size: "2"\nmax_steps: 1\nwarmup_ratio: 0\ndev_fraction: 0.34\n'
                           "dev_every: 1\nsave_every: 1\ndev_pool: 0\ndoc_max_length: 32\ntopk: 5\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["--quiet", "train", "inbatch", "--config", str(path), "--data", str(tiny_beir),
                                 "--model", str(tiny_model_dir), "--out", str(out),
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["lr"] == 0.0001 and saved["batch_size"] == 2 and saved["method"] == "inbatch"
    assert set(saved) == set(TrainConfig.model_fields)
    assert TrainConfig(**saved).fingerprint() == TrainConfig.from_yaml(path).replace(
        method="inbatch", data=str(tiny_beir), model=str(tiny_model_dir), out=str(out),
        cache_dir=str(tmp_path / "cache"), quiet=True).fingerprint()


def test_train_help_is_generated_from_the_settings():
    result = runner.invoke(app, ["train", "--help"], env={"TERMINAL_WIDTH": "240", "COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    for panel in ("Optimisation", "Encoder", "Negatives and loss", "ADORE", "Evaluation", "Checkpoints"):
        assert panel in result.output
    for name, field in TrainConfig.model_fields.items():
        if (field.json_schema_extra or {}).get("cli", True):
            assert "--" + name.replace("_", "-") in result.output, name
    assert TrainConfig.model_fields["warmup_ratio"].description in result.output
    assert "--print-config" in result.output and "--doc-model" in result.output


def test_validation_asks_the_method_registry(tmp_path, monkeypatch):
    """What a method takes is its MethodSpec's say, not its name's: a spec that declares a negatives file, a
    setting of its own or a check changes what TrainConfig accepts, and the messages name the methods from the
    specs."""
    import dataclasses

    from hardneg.train import methods

    run = tmp_path / "run.tsv"
    run.write_text("q1\td1\n")
    with pytest.raises(HardnegError, match=r"--negatives is for the static and star methods, not inbatch"):
        TrainConfig(method="inbatch", data="x", negatives=str(run)).validate()
    inbatch = methods.method_spec("inbatch")

    def no_alpha(cfg):
        if cfg.alpha > 1:
            raise HardnegError("alpha above 1 refused by inbatch's check")

    monkeypatch.setitem(methods._REGISTRY, "inbatch", dataclasses.replace(
        inbatch, negatives_file=True, settings=("alpha",), check=no_alpha))
    TrainConfig(method="inbatch", data="x", negatives=str(run), alpha=0.5).validate()
    with pytest.raises(HardnegError, match=r"--negatives is for the inbatch, static and star methods, not rand"):
        TrainConfig(method="rand", data="x", negatives=str(run)).validate()
    with pytest.raises(HardnegError, match=r"--alpha: for the inbatch method, not star"):
        TrainConfig(method="star", data="x", alpha=0.5).validate()
    with pytest.raises(HardnegError, match="refused by inbatch's check"):
        TrainConfig(method="inbatch", data="x", alpha=2.0).validate()
    # a later method's settings stay out of the others' fingerprints (ADORE's: old checkpoints still resume)
    star = TrainConfig(method="star", data="x")
    monkeypatch.setitem(methods._REGISTRY, "inbatch", dataclasses.replace(inbatch, settings=("lr",),
                                                                          later_settings=True))
    assert star.fingerprint() == star.replace(lr=1.0).fingerprint()
    assert TrainConfig(method="inbatch", data="x").fingerprint() != TrainConfig(method="inbatch", data="x",
                                                                                 lr=1.0).fingerprint()
