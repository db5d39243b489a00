"""Mismatch refusals (checked from manifests, before any compute) and safe loading.

Artifacts that must agree -- tokenized store, embeddings, index, model, tokenizer, corpus -- are
refused with a :class:`~hardneg.errors.MismatchError` when the dimension, tokenizer, weights,
pooling, normalisation, max length, prefix or corpus hash differ. Nothing executes code from a config
or checkpoint: weights load through safetensors or ``torch.load(weights_only=True)``, YAML through
``safe_load``, no ``trust_remote_code``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import _tiny_bert, write_tiny_train
from hardneg.artifacts import index_mismatches
from hardneg.cli import app
from hardneg.data.tokenized import StoreSpec, TokenizedStore, build_store, texts_fingerprint
from hardneg.errors import HardnegError, MismatchError
from hardneg.index.encode import Embeddings, embeddings_key, encode_store
from hardneg.index.faiss_index import FaissIndex
from hardneg.model.encoder import DualEncoder
from hardneg.model.fingerprints import tokenizer_fingerprint

SRC = Path(__file__).resolve().parents[2] / "src"
RECORDS = [(f"d{i}", f"document number {i} about topic {i % 3}") for i in range(40)]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DualEncoder.from_pretrained(tiny_model_dir, doc_max_length=16)


@pytest.fixture(scope="module")
def built(tmp_path_factory, model):
    """A store, its embeddings and a flat index made with ``model``."""
    root = tmp_path_factory.mktemp("mismatch")
    spec = StoreSpec(tokenizer_fingerprint(model.tokenizer), 16, "", texts_fingerprint(RECORDS))
    store = build_store(iter(RECORDS), model.tokenizer, spec, root / "store", show_progress=False)
    emb = encode_store(model, store, "doc", root / "emb", batch_size=8, show_progress=False)
    index = FaissIndex.from_embeddings(emb, "flat")
    index.save(root / "index")
    return root, spec, store, emb


def variant(model, **config) -> DualEncoder:
    return DualEncoder(model.doc_model, model.tokenizer, replace(model.config, **config), source="variant")


# --------------------------------------------------------------------------- tokenized store
@pytest.mark.parametrize("field, value", [
    ("tokenizer", "another-tokenizer"), ("max_length", 32), ("prefix", "query: "), ("content", "other-corpus"),
])
def test_store_refuses_another_tokenizer_length_prefix_or_corpus(built, field, value):
    root, spec, _, _ = built
    with pytest.raises(MismatchError, match=field):
        TokenizedStore(root / "store", expect=replace(spec, **{field: value}))


# --------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("change", [
    {"pooling": "mean"}, {"normalize": True}, {"doc_max_length": 32}, {"doc_prefix": "passage: "},
])
def test_embeddings_refuse_another_pooling_normalisation_length_or_prefix(built, model, change):
    root, _, store, _ = built
    other = variant(model, **change)
    key = embeddings_key(other.side_identity("doc"), store.manifest, "doc")
    with pytest.raises(MismatchError, match="another encoder"):
        Embeddings(root / "emb", expect_key=key)


def test_embeddings_of_other_weights_are_refused_before_encoding(built, tmp_path, monkeypatch):
    root, _, store, _ = built
    other = DualEncoder.from_pretrained(_tiny_bert(tmp_path / "other", seed=5), doc_max_length=16)
    monkeypatch.setattr(type(other), "forward", lambda *a, **k: pytest.fail("encoded before the check"))
    with pytest.raises(MismatchError):
        encode_store(other, store, "doc", root / "emb", show_progress=False)


# --------------------------------------------------------------------------- index
def test_index_refuses_other_embeddings(built):
    root, *_ = built
    with pytest.raises(MismatchError, match="other embeddings"):
        FaissIndex.load(root / "index", expect_key="0123456789abcdef")


@pytest.mark.parametrize("change, problem", [
    ({"pooling": "mean"}, "pooling"), ({"normalize": True}, "normalisation"),
])
def test_index_manifest_refuses_another_pooling_or_normalisation(built, model, change, problem):
    root, *_ = built
    manifest = json.loads((root / "index" / "manifest.json").read_text())
    assert index_mismatches(manifest, model) == []
    assert any(problem in p for p in index_mismatches(manifest, variant(model, **change)))


def test_index_manifest_refuses_another_dimension_tokenizer_and_weights(built, model, tmp_path):
    root, *_ = built
    manifest = json.loads((root / "index" / "manifest.json").read_text())
    wide = DualEncoder.from_pretrained(_tiny_bert(tmp_path / "wide", hidden=64), doc_max_length=16)
    problems = " ".join(index_mismatches(manifest, wide))
    assert "dimension 32" in problems and "weights" in problems
    tampered = json.loads(json.dumps(manifest))
    tampered["source"]["encoder"]["tokenizer"] = "not-this-one"
    assert any("tokenizer" in p for p in index_mismatches(tampered, model))


def test_query_vectors_of_another_dimension_are_refused(built):
    root, *_ = built
    index = FaissIndex.load(root / "index")
    with pytest.raises(MismatchError, match="dimension"):
        index.search(np.zeros((2, 48), dtype=np.float32), 5)


def test_cli_search_refuses_an_index_of_another_corpus_before_reading_it(tmp_path, tiny_model_dir, monkeypatch):
    """The index was built over one corpus; searching it for a dataset with another corpus is refused
    from the manifest alone (the index file is never read)."""
    monkeypatch.setenv("HARDNEG_CACHE_DIR", str(tmp_path / "cache"))
    data = write_tiny_train(tmp_path / "a")
    other = write_tiny_train(tmp_path / "b", filler=3)
    runner = CliRunner()
    for args in (["encode", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "emb"),
                  "--max-length", "16"],
                 ["index", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]):
        assert runner.invoke(app, ["--quiet", *args]).exit_code == 0
    monkeypatch.setattr(FaissIndex, "load", classmethod(lambda *a, **k: pytest.fail("index read before the check")))
    result = runner.invoke(app, ["--quiet", "search", str(tmp_path / "idx"), f"{other}:train",
                                 "--model", str(tiny_model_dir)])
    assert isinstance(result.exception, MismatchError)
    assert "another corpus" in str(result.exception)


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    from hardneg.train.config import TrainConfig
    from hardneg.train.trainer import Trainer

    root = tmp_path_factory.mktemp("ckpt")
    data = write_tiny_train(root / "data")
    cfg = TrainConfig(method="inbatch", data=str(data), model=str(tiny_model_dir), out=str(root / "out"),
                      max_steps=2, batch_size=4, lr=1e-3, dev_fraction=0.25, dev_every=2, save_every=2,
                      dev_pool=0, cache_dir=str(root / "cache"), quiet=True, query_max_length=16,
                      doc_max_length=32, warmup_ratio=0.0, topk=8)
    Trainer(cfg).train()
    return cfg


def _resume(cfg, **change):
    from hardneg.train.trainer import Trainer

    trainer = Trainer(cfg.replace(**change))
    trainer.setup()
    return trainer.train(resume=True)


def _checkpoint(cfg) -> Path:
    return next((Path(cfg.out) / "checkpoints").glob("step-*"))


def test_checkpoint_of_another_code_version_is_refused(trained, tmp_path):
    cfg = trained.replace(out=str(tmp_path / "out"))
    shutil.copytree(trained.out, cfg.out)
    state_file = _checkpoint(cfg) / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["version"] = 999
    state_file.write_text(json.dumps(state))
    with pytest.raises(HardnegError, match="checkpoint format 999 .* another hardneg version"):
        _resume(cfg, max_steps=4)


def test_checkpoint_of_another_config_is_refused_naming_the_setting(trained, tmp_path):
    cfg = trained.replace(out=str(tmp_path / "out"))
    shutil.copytree(trained.out, cfg.out)
    with pytest.raises(HardnegError, match=r"other training settings \(lr: 0.001 -> 0.0005\)"):
        _resume(cfg, max_steps=4, lr=5e-4)


def test_a_moved_run_folder_and_another_cache_still_resume(trained, tmp_path):
    """The run's folder and cache are where it writes, not what it computes: a copy elsewhere resumes from its
    step-2 checkpoint (not from step 0) with a cache elsewhere too."""
    cfg = trained.replace(out=str(tmp_path / "moved"), cache_dir=str(tmp_path / "other-cache"))
    shutil.copytree(trained.out, cfg.out)
    _resume(cfg, max_steps=4)
    steps = [json.loads(line)["step"] for line in (Path(cfg.out) / "train_log.jsonl").read_text().splitlines()
             if json.loads(line).get("kind") == "train"]
    assert steps == [1, 2, 3, 4], steps  # before the move, 1 and 2; resumed, 3 and 4 (a refusal raises)
    assert {p.name for p in (Path(cfg.out) / "checkpoints").glob("step-*")} >= {"step-0000004"}


def test_a_checkpoint_hashed_with_its_folder_and_cache_resumes_moved(trained, tmp_path):
    """Checkpoints written before the folder and cache left the hash carry the old fingerprint, computed with the
    run's own locations, which its config.json keeps: copied elsewhere and given another cache, it resumes."""
    cfg = trained.replace(out=str(tmp_path / "old"), cache_dir=str(tmp_path / "old-cache"))
    shutil.copytree(trained.out, cfg.out)
    state_file = _checkpoint(cfg) / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["config_fingerprint"] = cfg.fingerprint(locations=True)
    assert state["config_fingerprint"] not in cfg.replace(out=str(tmp_path / "elsewhere")).fingerprints()
    state_file.write_text(json.dumps(state))
    shutil.copytree(state_file.parent, Path(cfg.out) / "checkpoints" / "step-0000001")  # an older kept checkpoint
    config_file = Path(cfg.out) / "config.json"  # as the run written in "old" left it
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "out": cfg.out,
                                       "cache_dir": cfg.cache_dir}))
    moved = cfg.replace(out=str(tmp_path / "elsewhere"), cache_dir=str(tmp_path / "new-cache"))
    shutil.copytree(cfg.out, moved.out)
    with pytest.raises(HardnegError, match=r"other training settings \(lr: 0.001 -> 0.0005\)"):
        _resume(moved, max_steps=4, lr=5e-4)
    _resume(moved, max_steps=2)  # at its cap already: saves no checkpoint, but rewrites config.json with "elsewhere"
    assert json.loads(state_file.read_text())["config_fingerprint"] == cfg.fingerprint(locations=True)  # "old"'s
    for kept in ("step-0000001", "step-0000002"):  # the accepted checkpoint now carries today's hash, as does every
        state = json.loads((Path(moved.out) / "checkpoints" / kept / "trainer_state.json").read_text())  # kept one
        assert state["config_fingerprint"] == moved.fingerprint(), kept
    _resume(moved, max_steps=4)  # so a second resume (a job killed before its next save) is not refused
    assert (Path(moved.out) / "checkpoints" / "step-0000004").is_dir()


def test_a_moved_experiment_resumes_a_run_whose_start_model_moved_with_it(trained, tmp_path):
    """An experiment's ADORE stage starts from another stage's model, inside the experiment folder: the folder moved
    (scratch disk to project space), the stage resumes; a start model that is not the moved one is still refused."""
    from hardneg.train.trainer import Trainer

    old = tmp_path / "scratch" / "exp"
    shutil.copytree(trained.model, old / "stages" / "train-base" / "model")
    cfg = trained.replace(model=str(old / "stages" / "train-base" / "model"), out=str(old / "stages" / "train-x"))
    Trainer(cfg).train()
    new = tmp_path / "project" / "exp"
    shutil.copytree(old, new)
    moved = cfg.replace(model=str(new / "stages" / "train-base" / "model"), out=str(new / "stages" / "train-x"))
    elsewhere = tmp_path / "other-model"
    shutil.copytree(trained.model, elsewhere)
    with pytest.raises(HardnegError, match=r"other training settings \(model: '.*scratch/exp/stages/train-base/"
                                           r"model' -> '.*other-model'\)"):
        _resume(moved, model=str(elsewhere), max_steps=4)
    _resume(moved, max_steps=4)
    assert (Path(moved.out) / "checkpoints" / "step-0000004").is_dir()


def test_only_inputs_beside_the_run_folder_count_as_moved_with_it():
    """The folder that moved is the one holding the run folder: an input beside it (another stage's model) at the
    same place is moved; one higher up (only its parent moved), a hub id, or a move out of a root is not."""
    from hardneg.train.resume_keys import moved_paths

    before = {"out": "/a/exp/stages/train-x", "model": "/a/exp/stages/train-base/model", "data": "/data/scifact"}
    assert moved_paths({**before, "out": "/b/exp/stages/train-x", "model": "/b/exp/stages/train-base/model"},
                       before) == {"model": "/a/exp/stages/train-base/model"}
    assert moved_paths({**before, "out": "/b/exp/stages/train-x", "model": "/b/exp/stages/other/model"}, before) == {}
    home = {"out": "/home/al/runs/adore", "model": "/home/al/ckpt/star"}
    assert moved_paths({"out": "/scratch/al/runs/adore", "model": "/scratch/al/ckpt/star"}, home) == {}
    assert moved_paths({"out": "/x/runs/adore", "model": "/x/runs/bert-base"},
                       {"out": "runs/adore", "model": "bert-base"}) == {}
    assert moved_paths({"out": "/b/adore", "model": "/b/m"}, {"out": "/adore", "model": "/m"}) == {}


def test_a_refusal_names_only_settings_the_hash_covers(trained):
    """An older run's config.json lacks settings added since (another method's, ADORE's, which this run's hash
    leaves out): the refusal names the setting that differs, not those."""
    from hardneg.train.methods import method_spec

    adore = method_spec("adore").settings
    before = {k: v for k, v in trained.to_dict().items() if k not in adore}
    assert trained.changed({**before, "lr": 5e-4, "out": "/elsewhere", "max_steps": 9}) == ["lr: 0.0005 -> 0.001"]
    assert trained.changed(before) == []


def test_checkpoint_of_another_architecture_is_refused(trained, tmp_path):
    """The same settings (and model path) but the model folder now holds another architecture."""
    model_dir = tmp_path / "model"
    shutil.copytree(trained.model, model_dir)
    cfg = trained.replace(out=str(tmp_path / "out"), model=str(model_dir))
    shutil.copytree(trained.out, cfg.out)
    state_file = _checkpoint(cfg) / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["config_fingerprint"] = cfg.fingerprint()
    state_file.write_text(json.dumps(state))
    shutil.rmtree(model_dir)
    _tiny_bert(model_dir, hidden=64)
    with pytest.raises(MismatchError, match="does not fit this model"):
        _resume(cfg, max_steps=4)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/hardneg-pwned",))


def test_a_checkpoint_carrying_code_is_refused_not_run(trained, tmp_path):
    cfg = trained.replace(out=str(tmp_path / "out"))
    shutil.copytree(trained.out, cfg.out)
    marker = Path("/tmp/hardneg-pwned")
    marker.unlink(missing_ok=True)
    with open(_checkpoint(cfg) / "optimizer.pt", "wb") as fh:
        pickle.dump({"state": _Exploit()}, fh)
    with pytest.raises(MismatchError, match="unsafe"):
        _resume(cfg, max_steps=4)
    assert not marker.exists(), "code in a checkpoint was executed"


def test_model_weights_carrying_code_are_refused_not_run(tiny_model_dir, tmp_path):
    """A model folder with a pickled ``pytorch_model.bin`` (no safetensors): transformers loads it with
    weights_only, so the payload does not run."""
    folder = tmp_path / "evil"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, folder / name)
    marker = Path("/tmp/hardneg-pwned-model")
    marker.unlink(missing_ok=True)
    torch.save({"x": 1}, folder / "pytorch_model.bin")
    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"w": _Exploit2()}, fh)
    with pytest.raises(HardnegError):
        DualEncoder.from_pretrained(folder)
    assert not marker.exists(), "code in a weights file was executed"


class _Exploit2:
    def __reduce__(self):
        return (os.system, ("touch /tmp/hardneg-pwned-model",))


def test_model_config_asking_for_remote_code_loads_the_plain_class_and_runs_nothing(tiny_model_dir, tmp_path):
    """A config.json whose ``auto_map`` points at a model class in the folder's own ``evil.py``: without
    ``trust_remote_code`` transformers ignores it and builds the plain BERT class of ``model_type`` from the
    folder's weights; evil.py is never imported (with ``trust_remote_code=True`` it would be, and the tower
    would be its EvilModel)."""
    from transformers import BertModel

    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "remote-code-ran"
    (folder / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertModel\n\n\nclass EvilModel(BertModel):\n    pass\n")
    loaded = DualEncoder.from_pretrained(folder)
    assert not marker.exists(), "code named by a model's config was executed"
    assert type(loaded.doc_model) is BertModel
    plain = DualEncoder.from_pretrained(tiny_model_dir).doc_model.state_dict()
    weights = loaded.doc_model.state_dict()
    assert weights.keys() == plain.keys() and all(torch.equal(weights[k], plain[k]) for k in plain)


@pytest.mark.parametrize("loader", ["recipe", "train-config"])
def test_yaml_tags_that_would_run_code_are_refused(tmp_path, loader):
    from hardneg.experiment import Recipe
    from hardneg.train.config import TrainConfig

    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['touch /tmp/hardneg-pwned-yaml']\n")
    Path("/tmp/hardneg-pwned-yaml").unlink(missing_ok=True)
    with pytest.raises(HardnegError, match="not valid YAML"):
        (Recipe.from_yaml if loader == "recipe" else TrainConfig.from_yaml)(path)
    assert not Path("/tmp/hardneg-pwned-yaml").exists()


# --------------------------------------------------------------------------- static audit
UNSAFE = [
    (r"torch\.load\((?![^)]*weights_only=True)", "torch.load without weights_only=True"),
    (r"\byaml\.(load|unsafe_load|full_load)\(", "yaml.load (use yaml.safe_load)"),
    (r"\bpickle\.loads?\(|\bdill\.|\bcloudpickle\.", "pickle loading"),
    (r"(?<![\w.])eval\(|(?<![\w.])exec\(", "eval/exec"),
    (r"trust_remote_code\s*=\s*True", "trust_remote_code=True"),
    (r"allow_pickle\s*=\s*True", "numpy allow_pickle=True"),
]


def test_no_unsafe_loading_in_the_source():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern, what in UNSAFE:
            for m in re.finditer(pattern, text):
                line = text[: m.start()].count("\n") + 1
                found.append(f"{path.relative_to(SRC)}:{line}: {what}")
    assert not found, "\n".join(found)


def test_warm_up_negatives_mined_under_the_older_fingerprint_are_found(tmp_path):
    """STAR's mined negatives are keyed by the settings' fingerprint: the key no longer depends on the run folder,
    and negatives a run mined under the older fingerprint (folder included) are still found, not mined again."""
    from types import SimpleNamespace

    from hardneg.io import write_json
    from hardneg.train.config import TrainConfig
    from hardneg.train.methods import mining

    def ctx(out):
        return SimpleNamespace(config=TrainConfig(method="star", data="x", out=str(out)),
                               train_qrels={"q1": {"d1": 1}}, dataset=SimpleNamespace(fingerprint=lambda: "corpus"))

    model = SimpleNamespace(side_identity=lambda side: f"tower-{side}")
    new, old = mining._warmup_keys(ctx(tmp_path / "a"), model, 200)
    moved_new, moved_old = mining._warmup_keys(ctx(tmp_path / "b"), model, 200)
    assert new == moved_new and old != moved_old and new != old
    folder = tmp_path / "a" / "warmup"
    folder.mkdir(parents=True)
    (folder / "negatives.tsv").write_text("q1\td2\n")
    write_json(folder / "manifest.json", {"key": old})
    assert mining._warmup_found(folder, [new, old])
    write_json(folder / "manifest.json", {"key": moved_old})  # mined by an older run in another folder
    assert not mining._warmup_found(folder, [new, old])
