"""``irds:`` ids inside recipes (with a fake registered ``ir_datasets``) and Hugging Face ``datasets`` folders."""

from __future__ import annotations

import json
import shutil
import sys
import types
from collections import namedtuple
from pathlib import Path

import pytest

from hardneg.data import load_dataset, parse_spec
from hardneg.data.load import irds_split_id
from hardneg.errors import HardnegError, InputError
from hardneg.evaluate.metrics import evaluate
from hardneg.experiment import Experiment, Recipe
from hardneg.experiment.stages import dataset_tag, transfer_stage
from hardneg.io import read_json
from hardneg.retrieval.bm25 import cached_bm25

D = namedtuple("D", "doc_id title text")
Q = namedtuple("Q", "query_id text")
R = namedtuple("R", "query_id doc_id relevance iteration")


class Handle:
    """An ``ir_datasets`` handle over a BEIR folder's corpus and queries and one split's qrels (or none)."""

    def __init__(self, folder: Path, split: str | None) -> None:
        self.folder, self.split = folder, split

    def has_docs(self) -> bool:
        return True

    def has_queries(self) -> bool:
        return True

    def has_qrels(self) -> bool:
        return self.split is not None

    def docs_iter(self):
        for line in (self.folder / "corpus.jsonl").read_text().splitlines():
            d = json.loads(line)
            yield D(d["_id"], d["title"], d["text"])

    def queries_iter(self):
        for line in (self.folder / "queries.jsonl").read_text().splitlines():
            q = json.loads(line)
            yield Q(q["_id"], q["text"])

    def qrels_iter(self):
        for line in (self.folder / "qrels" / f"{self.split}.tsv").read_text().splitlines()[1:]:
            qid, did, score = line.split("\t")
            yield R(qid, did, int(score), "0")


def two_splits(folder: Path) -> Path:
    """``tiny_beir`` with a train split too (its test qrels, other documents)."""
    test = (folder / "qrels" / "test.tsv").read_text().splitlines()
    train = [test[0].strip()] + [f"q{i}\td{i}-1\t1" for i in range(6)]
    (folder / "qrels" / "train.tsv").write_text("\n".join(train) + "\n")
    (folder / "qrels" / "test.tsv").write_text("\n".join(x.strip() for x in test) + "\n")
    return folder


@pytest.fixture
def fake_irds(tiny_beir, monkeypatch):
    """``ir_datasets`` with ``fake/tiny`` (docs + queries) and ``fake/tiny/{train,test}``; ``loaded`` logs ids."""
    folder = two_splits(tiny_beir)
    registry = {"fake/tiny": Handle(folder, None), "fake/tiny/train": Handle(folder, "train"),
                "fake/tiny/test": Handle(folder, "test")}
    module = types.ModuleType("ir_datasets")
    module.loaded = []  # type: ignore[attr-defined]

    def load(name: str) -> Handle:
        module.loaded.append(name)  # type: ignore[attr-defined]
        if name not in registry:
            raise KeyError(f"{name!r} not found")
        return registry[name]

    module.load = load  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ir_datasets", module)
    return folder, module


# --------------------------------------------------------------------------- irds specs


def test_irds_specs_name_a_split_after_the_id(fake_irds):
    folder, module = fake_irds
    assert parse_spec("irds:beir/scifact:test") == ("irds:beir/scifact", "test")
    assert parse_spec("irds:msmarco-passage:dev/small") == ("irds:msmarco-passage", "dev/small")
    assert parse_spec("irds:beir/scifact/test") == ("irds:beir/scifact/test", None)
    assert irds_split_id("msmarco-passage", "dev/small") == "msmarco-passage/dev/small"
    assert irds_split_id("beir/scifact/train", "train") == "beir/scifact/train"  # `train --data <train id>`
    for bad in ("irds:beir/scifact:", "irds::test"):
        with pytest.raises(InputError, match="names no"):
            parse_spec(bad)
    ds = load_dataset("irds:fake/tiny:test")
    assert (ds.irds_id, ds.name, ds.split) == ("fake/tiny/test", "fake_tiny", "test")
    folder_ds = load_dataset(f"{folder}:test")
    assert ds.docs() == folder_ds.docs() and ds.queries() == folder_ds.queries() and ds.qrels() == folder_ds.qrels()
    assert load_dataset("irds:fake/tiny/train:train").irds_id == "fake/tiny/train"
    # the fingerprint is the corpus's content: one for every split, another once a document changes
    train = load_dataset("irds:fake/tiny:train")
    assert train.fingerprint() == ds.fingerprint() == load_dataset("irds:fake/tiny").fingerprint()
    corpus = folder / "corpus.jsonl"
    corpus.write_text(corpus.read_text().replace("apple orchard", "apple orchards", 1))
    assert load_dataset("irds:fake/tiny:test").fingerprint() != ds.fingerprint()


def _recipe(**change) -> dict:
    return {"name": "t", "data": "irds:fake/tiny", "model": "minilm",
            "systems": [{"name": "bm25", "kind": "bm25"}, {"name": "zeroshot", "kind": "zeroshot"}], **change}


def test_irds_recipe_validates_and_keys_its_stages(fake_irds, tmp_path):
    _, module = fake_irds
    raw = _recipe(transfer=["irds:fake/tiny/train"], eval={"k": 10})
    raw["systems"].append({"name": "r", "method": "rand"})
    exp = Experiment(Recipe.from_dict(raw), tmp_path / "out")
    assert set(module.loaded) == {"fake/tiny/test", "fake/tiny/train"}  # opened by the check, nothing else
    assert exp.stages["test-bm25"].settings["data"] == "irds:fake/tiny:test"
    assert exp.stages["train-r"].settings["data"] == "irds:fake/tiny"
    assert exp.stages[transfer_stage("bm25", dataset_tag("irds:fake/tiny/train"))].settings["data"] == \
        "irds:fake/tiny/train"
    path, split = parse_spec(exp.stages["train-r"].settings["data"])  # what the trainer loads
    assert load_dataset(f"{path}:{split or 'train'}").irds_id == "fake/tiny/train"
    # a stage key follows the id: another split is another key
    other = Experiment(Recipe.from_dict({**raw, "eval": {"k": 10, "split": "train"}}), tmp_path / "out")
    assert other.stages["test-bm25"].key != exp.stages["test-bm25"].key
    assert other.stages["train-r"].key == exp.stages["train-r"].key


@pytest.mark.parametrize(("change", "message"), [
    ({"data": "irds:fake/nope"}, r"data: could not load ir_datasets dataset 'fake/nope/test'"),
    ({"data": "irds:fake/tiny/test", "systems": [{"name": "r", "method": "rand"}]},
     r"data: .*'fake/tiny/test/train'.*data is the dataset without a split"),
    ({"transfer": ["irds:fake/other/test"]}, r"transfer\[0\]: could not load .*'fake/other/test'"),
    ({"transfer": ["irds:fake/tiny/test", "/a/nfcorpus:test", "/b/nfcorpus:test"]},
     r"transfer\[2\]: '/b/nfcorpus:test' and transfer\[1\] .* both name their stages transfer-<system>-nfcorpus-test"),
    ({"transfer": ["irds:fake/tiny/train"], "systems": [{"name": "r", "method": "rand", "dev_split": "train"}]},
     r"systems\[0\].dev_split: .*selects on the split it reports \('train' is transfer\[0\]\)"),
])
def test_bad_irds_recipes_fail_before_compute(fake_irds, change, message):
    with pytest.raises(HardnegError, match=rf"^recipe: {message}"):
        Recipe.from_dict(_recipe(**change))


def test_irds_recipe_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "ir_datasets", None)
    with pytest.raises(HardnegError, match=r"^recipe: data: .*pip install 'hardneg\[irds\]'"):
        Recipe.from_dict(_recipe())


def test_irds_experiment_runs_bm25_like_the_folder(fake_irds, tmp_path):
    folder, _ = fake_irds
    raw = _recipe(transfer=["irds:fake/tiny/train"], cache_dir=str(tmp_path / "cache"), eval={"k": 10})
    exp = Experiment(Recipe.from_dict(raw), tmp_path / "out", quiet=True)
    assert dict(exp.status())["test-bm25"] == "todo"  # the dry run
    transfer = transfer_stage("bm25", dataset_tag("irds:fake/tiny/train"))
    assert exp.run(only=["test-bm25", transfer]) == {"test-bm25": "done", transfer: "done"}
    measures = ["RR@10", "R@100", "nDCG@10"]
    for stage, split in (("test-bm25", "test"), (transfer, "train")):
        ds = load_dataset(f"{folder}:{split}")
        expected = evaluate(cached_bm25(ds, tmp_path / "cache2").search(ds.queries(), k=10, show_progress=False),
                            ds.qrels(), measures)
        got = read_json(exp.stage_dir(stage) / "stage.json")["result"]["metrics"]
        assert got == pytest.approx(expected) and got["nDCG@10"] >= 0.5
    assert dict(exp.status())["test-bm25"] == "done"


# --------------------------------------------------------------------------- Hugging Face datasets folders


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _qrels_rows(path: Path) -> dict[str, list]:
    lines = [x.strip().split("\t") for x in path.read_text().splitlines()[1:] if x.strip()]
    return {"query-id": [x[0] for x in lines], "corpus-id": [x[1] for x in lines],
            "score": [int(x[2]) for x in lines]}


def hf_folder(beir: Path, out: Path, layout: str = "hub") -> Path:
    """``beir`` saved as a datasets folder: ``hub`` (corpus/ and queries/ DatasetDicts as on the hub, qrels/ a
    DatasetDict of splits), ``tsv`` (plain saved Datasets, BEIR qrels/*.tsv) or ``dict`` (one DatasetDict)."""
    import datasets

    datasets.disable_progress_bars()
    corpus = datasets.Dataset.from_list(_rows(beir / "corpus.jsonl"))
    queries = datasets.Dataset.from_list(_rows(beir / "queries.jsonl"))
    qrels = {s: datasets.Dataset.from_dict(_qrels_rows(beir / "qrels" / f"{s}.tsv")) for s in ("train", "test")}
    if layout == "hub":
        datasets.DatasetDict({"corpus": corpus}).save_to_disk(out / "corpus")
        datasets.DatasetDict({"queries": queries}).save_to_disk(out / "queries")
        datasets.DatasetDict(qrels).save_to_disk(out / "qrels")
    elif layout == "tsv":
        corpus.save_to_disk(out / "corpus")
        queries.save_to_disk(out / "queries")
        (out / "qrels").mkdir()
        for s in ("train", "test"):
            (out / "qrels" / f"{s}.tsv").write_text((beir / "qrels" / f"{s}.tsv").read_text())
    else:
        datasets.DatasetDict({"corpus": corpus, "queries": queries, **qrels}).save_to_disk(out)
    return out


@pytest.mark.parametrize("layout", ["hub", "tsv", "dict"])
def test_hf_folder_loads_like_the_beir_folder(tiny_beir, tmp_path, layout):
    beir = two_splits(tiny_beir)
    root = hf_folder(beir, tmp_path / "hf", layout)
    for split in ("test", "train"):
        ds, ref = load_dataset(f"{root}:{split}"), load_dataset(f"{beir}:{split}")
        assert type(ds).__name__ == "HfDataset" and (ds.name, ds.split) == ("hf", split)
        assert ds.docs() == ref.docs() and ds.queries() == ref.queries() and ds.qrels() == ref.qrels()
        assert ds.qrels() and not ds.warnings
    plain = load_dataset(str(root))
    assert plain.qrels() == {} and len(plain.all_queries()) == 6
    assert plain.fingerprint() == load_dataset(f"{root}:test").fingerprint() and len(plain.fingerprint()) == 64
    with pytest.raises(InputError, match=r"split 'dev' not found .*available splits: test, train"):
        load_dataset(f"{root}:dev")


def test_hf_folder_ids_as_integers_and_bm25(tiny_beir, tmp_path):
    """The hub's BEIR qrels keep integer ids (``BeIR/scifact-qrels``); they read as the corpus's string ids."""
    import datasets

    beir = two_splits(tiny_beir)
    ids = {d["_id"]: n for n, d in enumerate(_rows(beir / "corpus.jsonl"))}
    corpus = [{**d, "_id": ids[d["_id"]]} for d in _rows(beir / "corpus.jsonl")]
    root = tmp_path / "hf-int"
    datasets.Dataset.from_list(corpus).save_to_disk(root / "corpus")
    datasets.Dataset.from_list(_rows(beir / "queries.jsonl")).save_to_disk(root / "queries")
    test = _qrels_rows(beir / "qrels" / "test.tsv")
    test["corpus-id"] = [ids[d] for d in test["corpus-id"]]
    test["score"] = [float(s) for s in test["score"]]  # 1.0 reads as grade 1
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(test)}).save_to_disk(root / "qrels")
    ds = load_dataset(f"{root}:test")
    expected = {q: {str(ids[d]): g for d, g in v.items()} for q, v in load_dataset(f"{beir}:test").qrels().items()}
    assert ds.qrels() == expected and ds.docs()[0].doc_id == "0"
    ref = load_dataset(f"{beir}:test")
    scores = [evaluate(cached_bm25(d, tmp_path / "cache").search(d.queries(), k=10, show_progress=False), d.qrels(),
                       ["nDCG@10", "RR@10"]) for d in (ds, ref)]
    assert scores[0] == pytest.approx(scores[1]) and scores[0]["RR@10"] > 0


def _save(path: Path, rows: dict[str, list]) -> Path:
    import datasets

    datasets.Dataset.from_dict(rows).save_to_disk(path)
    return path


def test_hf_folder_errors_name_the_folder_row_and_column(tiny_beir, tmp_path):
    root = hf_folder(two_splits(tiny_beir), tmp_path / "hf", "tsv")
    good_corpus = {"_id": ["a", "b"], "title": ["", "t"], "text": ["x", "y"]}

    def swap(part: str, rows: dict[str, list]) -> None:
        shutil.rmtree(root / part)
        _save(root / part, rows)

    swap("corpus", {"_id": ["a", "b"], "body": ["x", "y"]})
    with pytest.raises(InputError) as exc:
        load_dataset(f"{root}:test").docs()
    assert str(root / "corpus") in str(exc.value) and "no column 'text' (columns: _id, body)" in str(exc.value)
    swap("corpus", {**good_corpus, "_id": ["a", "a"]})
    with pytest.raises(InputError, match=r"row 2: duplicate document id 'a' \(first in row 1\)"):
        load_dataset(str(root)).docs()
    swap("corpus", {**good_corpus, "title": ["", None], "text": ["x", " "]})
    with pytest.raises(InputError, match=r"row 2: document 'b' is empty"):
        load_dataset(str(root)).docs()
    swap("corpus", {**good_corpus, "text": ["x", None]})
    with pytest.raises(InputError, match=r"row 2: column 'text' must be a string, got None"):
        load_dataset(str(root)).docs()
    swap("queries", {"_id": ["q1"], "question": ["?"]})
    with pytest.raises(InputError, match=r"queries dataset has no column 'text'"):
        load_dataset(str(root)).all_queries()
    swap("queries", {"_id": [], "text": []})
    with pytest.raises(InputError, match=r"queries: saved queries dataset is empty \(no .arrow data files\)"):
        load_dataset(str(root)).all_queries()
    import datasets

    shutil.rmtree(root / "queries")
    datasets.Dataset.from_dict({"_id": ["q"], "text": ["x"]}).filter(lambda r: False).save_to_disk(root / "queries")
    with pytest.raises(InputError, match=r"queries: queries dataset contains no queries"):
        load_dataset(str(root)).all_queries()
    shutil.rmtree(root / "qrels")
    _save(root / "qrels", {"query-id": ["q1", "q1"], "corpus-id": ["a", "a"], "score": [1, 2]})
    with pytest.raises(InputError, match=r"one saved Dataset with no splits"):
        load_dataset(f"{root}:test")
    swap("queries", {"_id": ["q1"], "text": ["x"]})
    with pytest.raises(InputError, match=r"row 2: query 'q1' / document 'a' judged 2 here but 1 in row 1"):
        load_dataset(str(root)).qrels()
    swap("qrels", {"query-id": ["q1"], "corpus-id": ["a"], "score": [0.5]})
    with pytest.raises(InputError, match=r"qrels.*row 1: score 0.5 is not an integer"):
        load_dataset(str(root)).qrels()
    swap("qrels", {"query-id": ["q1"], "doc": ["a"], "score": [1]})
    with pytest.raises(InputError, match=r"qrels dataset has no column 'corpus-id'"):
        load_dataset(str(root)).qrels()


def test_hf_folder_detection_and_missing_package(tmp_path, monkeypatch):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [1]})}).save_to_disk(tmp_path / "dd")
    with pytest.raises(InputError, match=r"dd: saved DatasetDict with splits train, but a dataset needs a 'corpus'"):
        load_dataset(str(tmp_path / "dd"))
    root = _save(tmp_path / "solo", {"_id": ["a"], "text": ["x"]})  # one saved Dataset: a corpus alone
    assert load_dataset(str(root)).docs()[0].text == "x"
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(HardnegError, match=r"solo: reading a Hugging Face datasets folder .*pip install datasets"):
        load_dataset(str(root)).docs()


def test_cli_irds_dry_run_and_hf_bad_split(fake_irds, tmp_path, monkeypatch, capsys):
    """``experiment --dry-run`` of an ``irds:`` recipe lists its stages; a bad HF split is exit 2, no traceback."""
    from hardneg.cli import app
    from hardneg.cli.common import run_app

    folder, _ = fake_irds
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: t\ndata: irds:fake/tiny\ntransfer: ['irds:fake/tiny:train']\n"
                      "systems: [{name: bm25, kind: bm25}]\n")
    monkeypatch.setattr("sys.argv", ["hardneg", "experiment", str(recipe), "--dry-run", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_:  # typer's standalone mode ends every command with SystemExit
        run_app(app)
    captured = capsys.readouterr()
    transfer = transfer_stage("bm25", dataset_tag("irds:fake/tiny:train"))
    assert exit_.value.code == 0 and "test-bm25" in captured.out and transfer in captured.out
    assert "3 stages; recipe OK" in captured.err
    root = hf_folder(folder, tmp_path / "hf", "hub")
    monkeypatch.setattr("sys.argv", ["hardneg", "--quiet", "bm25", f"{root}:dev"])
    with pytest.raises(SystemExit) as exit_:
        run_app(app)
    stderr = capsys.readouterr().err.replace("\n", "")
    assert exit_.value.code == 2 and "Traceback" not in stderr
    assert f"{root}: split 'dev' not found" in stderr and "available splits: test, train" in stderr
