"""The shipped MS MARCO recipes follow the paper (Zhan et al. 2021; DRhard's code), ``base:`` for every trained
method, the dev-split rule and the recipe's ``device`` key; and the passage recipe end to end on a tiny sample.
DRhard's behaviours that are options (LAMB variant, LR span, examples per query, mining lengths, document
fields): tests/unit/test_drhard_options.py."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import FILLER_WORDS, TRAIN_TOPICS
from hardneg.errors import HardnegError
from hardneg.experiment import Experiment, Recipe
from hardneg.train.presets import PRESETS

CONFIGS = Path(__file__).parents[2] / "configs"
#: Table 2's ADORE systems (one on top of every trained baseline and STAR)
TABLE2_ADORE = ["adore+inbatch", "adore+rand", "adore+bm25neg", "adore+ance", "adore+star"]


def _shipped(name: str) -> Experiment:
    return Experiment(Recipe.from_yaml(CONFIGS / f"{name}.yaml", data_dir="/data"), "/nonexistent/out")


@pytest.mark.parametrize(("name", "split"), [("msmarco-passage", "dev.small"), ("msmarco-doc", "dev")])
def test_shipped_msmarco_recipes_follow_the_paper(name, split):
    exp = _shipped(name)
    r = exp.recipe
    warmup = r.system("bm25neg")
    for s in ("star", "ance"):  # DRhard: STAR --init_path warmup; ANCE starts from the BM25 warm-up too
        stage = exp.stages[f"train-{s}"]
        assert stage.deps == ["train-bm25neg"], s
        assert stage.settings["model"] == exp.model_path(warmup) == str(exp.stage_dir("train-bm25neg") / "model")
    for s in ("inbatch", "rand", "bm25neg"):  # from RoBERTa-base
        assert exp.stages[f"train-{s}"].settings["model"] == "roberta-base" and exp.stages[f"train-{s}"].deps == []
    star = exp.stages["train-star"].settings
    assert star["star_mixing"] == "pairmean" and star["topk"] == 200 and star["n_negatives"] == 1
    # model selection never looks at the reported split
    assert r.eval.split == split
    for stage_name, stage in exp.stages.items():
        if stage_name.startswith("train-"):
            assert stage.settings["dev_split"] is None and 0 < stage.settings["dev_fraction"] < 1, stage_name
    # every Table-2 ADORE system trains against, and is tested on, the flat index
    for s in TABLE2_ADORE:
        assert exp.stages[f"train-{s}"].settings["index"] == "flat", s
        assert exp.stages[f"test-{s}"].settings["index"] == "flat", s
    for s in r.dense:  # ... and so is every other system of the main table, except the Table 3 PQ-trained one
        expected = "pq96" if s.name == "adore-pq96+bm25neg" else "flat"
        assert exp.stages[f"test-{s.name}"].settings["index"] == expected, s.name
    # Table 3 is on ADORE+BM25 Neg: the warm-up, ADORE on it, and ADORE trained on the PQ index
    pq = exp.stages["analysis-pq"].settings
    assert "pq96" in pq["indexes"] and pq["systems"] == ["bm25neg", "adore+bm25neg", "adore-pq96+bm25neg"]
    assert r.system("adore-pq96+bm25neg").base == "bm25neg"


#: section 7.3 (and DRhard's README STAR command for STAR on passages): (optimizer, batch, lr) per method and task
SECTION_7_3 = {("msmarco-passage", "star"): ("lamb", 256, 1e-4), ("msmarco-doc", "star"): ("adamw", 60, 2e-6),
               **{(task, m): ("lamb", 256, 2e-4) for task in ("msmarco-passage", "msmarco-doc")
                  for m in ("inbatch", "rand")}}
#: section 7.3: ADORE's M per task; section 8.4.1: its 60k steps
ADORE_METRIC = {"msmarco-passage": "mrr@200", "msmarco-doc": "mrr@10"}


@pytest.mark.parametrize("name", ["msmarco-passage", "msmarco-doc"])
def test_recipes_take_section_7_3s_values(name):
    """Optimizer, batch and lr per method and task, ADORE's metric per task, In-Batch/Rand trained on passages
    only, and every LAMB the DRhard variant, read from the configs each stage trains with."""
    exp = _shipped(name)
    passage = _shipped("msmarco-passage")
    for method in ("star", "inbatch", "rand"):
        cfg = exp.stages[f"train-{method}"].settings
        optimizer, batch, lr = SECTION_7_3[name, method]
        assert (cfg["optimizer"], cfg["batch_size"]) == (optimizer, batch) and cfg["lr"] == pytest.approx(lr), method
        assert cfg["train_chunk"] >= cfg["batch_size"], method  # a whole batch per forward pass
        assert cfg.get("lamb_variant", "decoupled") == ("drhard" if cfg["optimizer"] == "lamb" else "decoupled")
        assert cfg["examples_per_query"] == "one" and cfg["schedule_epochs"] == 100  # star/train.py's dataset, span
    for method in ("inbatch", "rand"):  # trained on the passage task: the very run of the passage recipe
        assert exp.stages[f"train-{method}"].settings["data"] == "/data/msmarco/passage"
        mine, theirs = dict(exp.stages[f"train-{method}"].settings), dict(passage.stages[f"train-{method}"].settings)
        assert {k: v for k, v in mine.items() if k != "out"} == {k: v for k, v in theirs.items() if k != "out"}
    for method in ("bm25neg", "ance", "star"):  # the others train on this task's data
        assert exp.stages[f"train-{method}"].settings["data"] == f"/data/msmarco/{name.split('-')[1]}"
    assert exp.stages["train-rand"].settings["rand_batch_positives"] is False  # model.py randneg_train
    star = exp.stages["train-star"].settings
    doc_len = 512 if name == "msmarco-doc" else 256
    assert (star["mine_query_max_length"], star["mine_doc_max_length"]) == (32, doc_len)  # prepare_hardneg.py
    for s in exp.recipe.systems:
        if s.method == "adore":
            cfg = exp.stages[f"train-{s.name}"].settings
            assert cfg["metric"] == ADORE_METRIC[name] and cfg["max_steps"] == 60000, s.name
            assert cfg["schedule_epochs"] == 6 and int(cfg["warmup_ratio"] * cfg["max_steps"]) == 2000, s.name
            assert exp.query_length(s) == 64 == exp.stages[f"test-{s.name}"].settings["query_max_length"], s.name
        elif s.kind != "bm25":
            assert exp.query_length(s) == 32 == exp.stages[f"test-{s.name}"].settings["query_max_length"], s.name


@pytest.mark.parametrize("name", ["msmarco-passage", "msmarco-doc"])
def test_recipes_state_their_dev_cost(name):
    """Dev runs on a BM25 pool, not the corpus, and the recipe's comment counts the evaluations its values make."""
    exp = _shipped(name)
    text = re.sub(r"\s*\n#\s*", " ", (CONFIGS / f"{name}.yaml").read_text())  # the comments as one text
    for stage in ("train-star", "train-bm25neg"):
        cfg = exp.stages[stage].settings
        assert cfg["dev_pool"] > 0
        evaluations = cfg["max_steps"] // cfg["dev_every"] + 1  # and the start model's (dev_at_start)
        assert f"{evaluations} evaluations per trained system" in text, (stage, evaluations)
    adore = exp.stages["train-adore+star"].settings
    assert f"ADORE's dev is ranked in its fixed index: {adore['max_steps'] // adore['dev_every'] + 1} evaluations" \
        in text


def test_paper_presets_are_drhards():
    passage, doc = PRESETS["paper-passage"], PRESETS["paper-doc"]
    assert passage["star_mixing"] == doc["star_mixing"] == "pairmean"  # model.py inbatch_train's pair mean
    assert (passage["query_max_length"], passage["doc_max_length"], passage["batch_size"]) == (24, 120, 256)
    assert (passage["optimizer"], passage["lamb_variant"], passage["lr"]) == ("lamb", "drhard", 1e-4)
    assert (doc["optimizer"], doc["batch_size"], doc["lr"]) == ("adamw", 60, 2e-6) and "lamb_variant" not in doc
    assert doc["doc_max_length"] == 512 and "alpha" not in passage
    for preset in (passage, doc):  # the whole batch in one encoder pass, DRhard's options on
        assert preset["train_chunk"] == preset["batch_size"]
        assert (preset["examples_per_query"], preset["schedule_epochs"], preset["mine_query_max_length"]) == \
            ("one", 100, 32)
    assert (passage["mine_doc_max_length"], doc["mine_doc_max_length"]) == (256, 512)


# ----------------------------------------------------------------------------- base: on any trained method
def _base_recipe(data: Path, model: Path, cache: Path) -> dict:
    train = {"max_steps": 2, "batch_size": 4, "topk": 8, "dev_fraction": 0.25, "dev_every": 2, "save_every": 2,
             "dev_pool": 0, "query_max_length": 16, "doc_max_length": 32, "warmup_ratio": 0.0, "lr": 1e-3}
    return {"name": "base", "data": str(data), "model": str(model), "cache_dir": str(cache), "train": train,
            "eval": {"max_length": 32, "query_max_length": 16, "k": 20},
            "systems": [{"name": "rand", "method": "rand"}, {"name": "st", "method": "static", "base": "rand"}]}


def test_base_of_a_static_system_is_its_start_and_mining_model(tmp_path, tiny_model_dir, monkeypatch):
    from conftest import write_tiny_train
    from hardneg.model.encoder import DualEncoder
    from hardneg.train.methods import static

    data = write_tiny_train(tmp_path / "data")
    raw = _base_recipe(data, tiny_model_dir, tmp_path / "cache")
    exp = Experiment(Recipe.from_dict(raw), tmp_path / "out", quiet=True)
    stage = exp.stages["train-st"]
    rand_model = exp.stage_dir("train-rand") / "model"
    assert stage.deps == ["train-rand"] and stage.settings["model"] == str(rand_model)

    mined_with = []
    original = static.mine_with_model

    def recording(ctx, model, *args, **kwargs):
        mined_with.append(model.identity()["weights"]["doc"])
        return original(ctx, model, *args, **kwargs)

    monkeypatch.setattr(static, "mine_with_model", recording)  # what static calls to mine with the start model
    exp.run(only=["train-st"])
    assert mined_with, "static mined no negatives"
    assert mined_with[0] == DualEncoder.from_pretrained(str(rand_model)).identity()["weights"]["doc"]
    assert mined_with[0] != DualEncoder.from_pretrained(str(tiny_model_dir)).identity()["weights"]["doc"]

    changed = copy.deepcopy(raw)
    changed["systems"][0]["lr"] = 5e-4  # the base trains differently: its dependent is stale too
    status = dict(Experiment(Recipe.from_dict(changed), exp.out).status())
    assert status["train-rand"].startswith("stale") and status["train-st"].startswith("stale")
    assert dict(Experiment(Recipe.from_dict(raw), exp.out).status())["train-st"] == "done"


@pytest.mark.parametrize(("systems", "message"), [
    ([{"name": "st", "method": "star", "base": "later"}, {"name": "later", "method": "rand"}],
     r"systems\[0\]\.base: system 'st' needs its base 'later' listed before it"),
    ([{"name": "st", "method": "star", "base": "nosuch"}], r"systems\[0\]\.base: no system named 'nosuch'"),
    ([{"name": "bm25", "kind": "bm25"}, {"name": "st", "method": "static", "base": "bm25"}],
     r"systems\[1\]\.base: system 'st' needs a dense base .*not BM25"),
    ([{"name": "r", "method": "rand"}, {"name": "st", "method": "star", "base": "r", "model": "minilm"}],
     r"systems\[1\]: system 'st' gives both 'base' and 'model'"),
    ([{"name": "st", "method": "star", "base": "st"}], r"systems\[0\]\.base: .*listed before it"),
])
def test_bad_bases_fail_before_compute(tmp_path, systems, message):
    with pytest.raises(HardnegError, match=message):
        Recipe.from_dict({"name": "t", "data": str(tmp_path), "systems": systems})


# ----------------------------------------------------------------------------- dev split and device
@pytest.mark.parametrize(("change", "key"), [
    ({"train": {"dev_split": "test"}}, "train.dev_split"),
    ({"systems": [{"name": "r", "method": "rand", "dev_split": "test"}]}, r"systems\[0\]\.dev_split"),
    ({"adore": {"dev_split": "test"}, "systems": [{"name": "a", "method": "adore"}]}, "adore.dev_split"),
    ({"train": {"dev_split": "dl19"}, "transfer": ["{data}:dl19"]}, "train.dev_split"),
])
def test_dev_split_equal_to_a_reported_split_is_refused(tmp_path, change, key):
    raw = {"name": "t", "data": str(tmp_path), "eval": {"split": "test"},
           "systems": [{"name": "r", "method": "rand"}], **change}
    raw["transfer"] = [t.replace("{data}", str(tmp_path)) for t in raw.get("transfer", [])]
    with pytest.raises(HardnegError, match=rf"^recipe: {key}: system '\w+' selects on the split it reports"):
        Recipe.from_dict(raw)
    ok = {**raw, "transfer": [f"{tmp_path}/other:dl19"]} if raw["transfer"] else None  # another data set's split
    if ok is not None:
        Recipe.from_dict(ok)


def test_device_cuda_is_refused_before_compute(tmp_path, monkeypatch, capsys):
    """`device: cuda` where there is none: exit 2 naming the recipe key, no traceback, nothing written."""
    from hardneg.cli import app
    from hardneg.cli.common import run_app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: t\ndata: {tmp_path}\ndevice: cuda\nsystems: [{{name: r, method: rand}}]\n")
    with pytest.raises(HardnegError, match=rf"^{path}: device: .*cuda.*no CUDA device"):
        Recipe.from_yaml(path)
    monkeypatch.setattr("sys.argv", ["hardneg", "experiment", str(path), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        run_app(app)
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2 and f"{path}: device:" in stderr.replace("\n", "") and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()  # nothing was computed or written
    for bad in ({"train": {"device": "cpu"}}, {"systems": [{"name": "r", "method": "rand", "device": "cpu"}]}):
        with pytest.raises(HardnegError, match="give it at the top level"):
            Recipe.from_dict({"name": "t", "data": str(tmp_path), "systems": [{"name": "r", "method": "rand"}],
                              **bad})
    recipe = Recipe.from_dict({"name": "t", "data": str(tmp_path), "device": "cpu",
                               "systems": [{"name": "r", "method": "rand"}, {"name": "a", "method": "adore"}]})
    assert [recipe.train_config(s, tmp_path).device for s in recipe.systems] == ["cpu", "cpu"]
    exp = Experiment(recipe, tmp_path / "exp")
    assert exp.device == torch.device("cpu") and "device" not in exp.stages["train-r"].settings


# ----------------------------------------------------------------------------- end to end on CPU
def write_tiny_msmarco(root: Path) -> Path:
    """``{root}/msmarco/passage`` (collection, train and dev.small queries/qrels) and
    ``{root}/msmarco/passage-eval`` (the DL19 transfer set) in MS MARCO's file layout."""
    passage, dl19 = root / "msmarco" / "passage", root / "msmarco" / "passage-eval"
    passage.mkdir(parents=True)
    dl19.mkdir(parents=True)
    docs = [(f"{i}{j:02d}", f"{topic} fact {j} " * (1 + j)) for i, topic in enumerate(TRAIN_TOPICS, 1)
            for j in range(4)]
    docs += [(f"9{n:04d}", f"{FILLER_WORDS[n % 17]} {FILLER_WORDS[(n * 7) % 17]} note {n}") for n in range(300)]
    collection = "".join(f"{pid}\t{text}\n" for pid, text in docs)
    for folder in (passage, dl19):
        (folder / "collection.tsv").write_text(collection)
    topics = list(enumerate(TRAIN_TOPICS, 1))
    (passage / "queries.train.tsv").write_text("".join(f"{i}\ttell me about {t}\n" for i, t in topics))
    (passage / "qrels.train.tsv").write_text("".join(f"{i}\t0\t{i}00\t1\n" for i, _ in topics))
    (passage / "queries.dev.small.tsv").write_text("".join(f"{100 + i}\twhat is {t}\n" for i, t in topics[:6]))
    (passage / "qrels.dev.small.tsv").write_text("".join(f"{100 + i}\t0\t{i}02\t1\n" for i, _ in topics[:6]))
    (dl19 / "queries.dl19-passage.tsv").write_text("".join(f"{200 + i}\t{t}\n" for i, t in topics[6:]))
    (dl19 / "qrels.dl19-passage.tsv").write_text("".join(f"{200 + i} 0 {i}01 2\n" for i, _ in topics[6:]))
    return root


#: what the test makes tiny: the model, the data (via {data_dir}), steps, batches, lengths, dev size
TINY = {
    "train": {"max_steps": 2, "batch_size": 4, "topk": 8, "dev_fraction": 0.25, "dev_every": 2, "save_every": 2,
              "query_max_length": 16, "doc_max_length": 32, "batch_encode_size": 128, "precision": "fp32",
              "gradient_checkpointing": False, "warmup_ratio": 0.0, "dev_at_start": False},
    "adore": {"max_steps": 2, "batch_size": 4, "adore_topk": 8, "metric": "mrr@8", "dev_fraction": 0.25,
              "dev_every": 2, "save_every": 2, "query_max_length": 16, "doc_max_length": 32, "warmup_ratio": 0.0,
              "dev_at_start": False},
    "eval": {"max_length": 32, "query_max_length": 16, "k": 50},
    "analysis": {"pairwise": {"topk": 20}},
}


def tiny_passage_recipe(data_dir: Path, model: Path, cache: Path) -> dict:
    """The shipped configs/msmarco-passage.yaml (its systems, bases, splits, indexes and analyses as shipped)
    with :data:`TINY` merged over its sections."""
    path = CONFIGS / "msmarco-passage.yaml"
    raw = yaml.safe_load(path.read_text().replace("{data_dir}", str(data_dir)))
    for section, values in TINY.items():
        raw[section] = {**raw[section], **values}
    return {**raw, "model": str(model), "cache_dir": str(cache)}


def test_msmarco_passage_recipe_end_to_end_on_cpu(tmp_path, tiny_roberta_dir):
    root = write_tiny_msmarco(tmp_path / "data")
    raw = tiny_passage_recipe(root, tiny_roberta_dir, tmp_path / "cache")
    recipe = Recipe.from_dict(raw, source=str(CONFIGS / "msmarco-passage.yaml"))
    exp = Experiment(recipe, tmp_path / "out", quiet=True)
    outcome = exp.run()
    assert set(outcome) == set(exp.stages) and set(outcome.values()) == {"done"}
    assert {f"train-{s.name}" for s in recipe.systems if s.kind == "train"} <= set(outcome)
    text = (exp.out / "report.md").read_text()
    assert "## Table 2 analogue" in text and "## Tables 3 and 5 analogue" in text
    star = json.loads((exp.stage_dir("train-star") / "stage.json").read_text())
    assert star["deps"] == ["train-bm25neg"] and star["settings"]["model"].endswith("train-bm25neg/model")
    summary = json.loads((exp.stage_dir("train-star") / "summary.json").read_text())
    assert summary["best_step"] == 2  # dev ran at the last step (the only dev evaluation)
    metrics = json.loads((exp.stage_dir("test-adore+star") / "metrics.json").read_text())
    assert set(metrics) == {"RR@10", "R@100", "nDCG@10"} and 0 <= metrics["R@100"] <= 1
    grid = json.loads((exp.stage_dir("analysis-pq") / "grid.json").read_text())
    assert set(grid["metrics"]["adore-pq96+bm25neg"]) == {"flat", "pq96", "pq48"}
    assert grid["bytes"]["pq96"] < grid["bytes"]["flat"]
