"""A recipe's ``indexes:``: an index built with sentence-transformers + plain Faiss in Pyserini's layout, ADORE
trained against it (``index: "@name"``) and tested by searching it, exactly as ``hardneg search PATH`` does."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from test_experiment import ADORE, tiny_data
from typer.testing import CliRunner

from hardneg.errors import HardnegError
from hardneg.experiment import Experiment, Recipe
from hardneg.retrieval.runs import read_run


def recipe(data: Path, model: Path, cache: Path, **over) -> dict:
    raw = {"name": "outside", "data": str(data), "model": str(model), "cache_dir": str(cache),
           "adore": dict(ADORE), "eval": {"max_length": 32, "query_max_length": 16, "k": 50},
           "indexes": {"st-hnsw": {"factory": "HNSW8", "max_seq_length": 32}},
           "systems": [{"name": "zeroshot", "kind": "zeroshot"},
                       {"name": "adore-st", "method": "adore", "index": "@st-hnsw"}]}
    return {**raw, **over}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_st_dir):
    root = tmp_path_factory.mktemp("outside")
    data = tiny_data(root / "data")
    exp = Experiment(Recipe.from_dict(recipe(data, tiny_st_dir, root / "cache")), root / "out", quiet=True)
    return exp, data, exp.run()


def test_the_index_is_sentence_transformers_vectors_in_a_plain_faiss_index(finished, tiny_st_dir):
    from sentence_transformers import SentenceTransformer

    from hardneg.data import load_dataset

    exp, data, outcome = finished
    assert outcome["index-st-hnsw"] == "done" and exp.stages["train-adore-st"].deps == ["index-st-hnsw"]
    folder = exp.index_dir("st-hnsw")
    index = faiss.read_index(str(folder / "index"))
    assert type(index).__name__ == "IndexHNSWFlat" and index.metric_type == faiss.METRIC_INNER_PRODUCT
    docs = list(load_dataset(f"{data}:test").iter_docs())
    assert (folder / "docid").read_text().split() == [d.doc_id for d in docs]
    st = SentenceTransformer(str(tiny_st_dir), device="cpu")
    st.max_seq_length = 32
    want = st.encode_document([d.full_text() for d in docs[:5]], convert_to_numpy=True)
    np.testing.assert_allclose(index.reconstruct_n(0, 5), want, atol=1e-5)


def test_adore_trained_against_it_and_left_it_untouched(finished):
    from hardneg.index.external import content_hash

    exp, _, _ = finished
    folder = exp.index_dir("st-hnsw")
    card = json.loads((exp.stage_dir("train-adore-st") / "model" / "adore.json").read_text())["external_index"]
    built = json.loads((exp.stage_dir("index-st-hnsw") / "stage.json").read_text())["result"]
    assert built["type"] == "IndexHNSWFlat" and card["kind"] == "hnsw-flat" and card["layout"] == "pyserini"
    # the model records the index the stage built, and the files are still those bytes after training
    assert card["hash"] == built["hash"] == content_hash(folder / "index", folder / "docid")


def test_its_test_row_is_what_hardneg_search_gives(finished, tmp_path):
    from hardneg.cli import app

    exp, data, _ = finished
    model = exp.stage_dir("train-adore-st") / "model"
    result = CliRunner().invoke(app, ["search", str(exp.index_dir("st-hnsw")), f"{data}:test", "--model", str(model),
                                      "--query-max-length", "16", "--k", "50", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    ours, theirs = read_run(exp.stage_dir("test-adore-st") / "run.trec"), read_run(tmp_path / "s" / "run.trec")
    assert ours == theirs and len(ours) == 12
    metrics = json.loads((exp.stage_dir("test-adore-st") / "stage.json").read_text())["result"]["metrics"]
    assert 0 <= metrics["nDCG@10"] <= 1


def test_a_changed_factory_rebuilds_the_index_and_retrains(finished, tiny_st_dir):
    exp, data, _ = finished
    raw = recipe(data, tiny_st_dir, exp.recipe.cache_dir, indexes={"st-hnsw": {"factory": "Flat",
                                                                               "max_seq_length": 32}})
    again = Experiment(Recipe.from_dict(raw), exp.out, quiet=True)
    for name in ("index-st-hnsw", "train-adore-st", "test-adore-st"):
        assert again.stages[name].key != exp.stages[name].key
    assert again.stages["test-zeroshot"].key == exp.stages["test-zeroshot"].key


@pytest.mark.parametrize("change, message", [
    ({"systems": [{"name": "a", "method": "adore", "index": "@nope"}]}, r"systems\[0\]\.index: no entry 'nope'"),
    ({"systems": [{"name": "s", "method": "star", "index": "@st-hnsw"}]}, r"only a method that keeps the document"),
    ({"systems": [{"name": "z", "kind": "zeroshot"}, {"name": "a", "method": "adore", "index": "@st-hnsw",
                                                      "base": "z"}]}, r"systems\[1\]\.base: .* drop 'base'"),
    ({"eval": {"transfer_systems": ["adore-st"]}}, r"eval\.transfer_systems: 'adore-st' trains against an index"),
    ({"interpolate": {"systems": ["adore-st"]}}, r"interpolate\.systems: 'adore-st'"),
    ({"indexes": {"st": {"metric": "cosine"}}}, r"indexes\.st\.metric: metric must be ip .* or l2"),
    ({"indexes": {"st": {"factory": "Flat", "bits": 8}}}, r"indexes\.st: unknown key 'bits'"),
])
def test_bad_recipes_name_the_key(change, message, tmp_path, tiny_st_dir):
    with pytest.raises(HardnegError, match=message):
        Recipe.from_dict(recipe(tmp_path, tiny_st_dir, tmp_path / "cache", **change))


def test_a_bad_factory_is_a_clear_error(tmp_path, tiny_st_dir):
    from hardneg.data import load_dataset
    from hardneg.experiment.outside_index import build_outside_index

    data = tiny_data(tmp_path / "data")
    with pytest.raises(HardnegError, match="factory 'Flatt' is not a Faiss index_factory string"):
        build_outside_index(str(tiny_st_dir), load_dataset(f"{data}:test"), tmp_path / "ix", factory="Flatt",
                            max_seq_length=32)


def test_write_faiss_index_round_trips_and_an_ivf_index_searches_hardnegs_default_lists(tmp_path):
    from hardneg.experiment.outside_index import write_faiss_index
    from hardneg.index.external import open_external

    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    ids = [f"d{i}" for i in range(300)]
    flat = write_faiss_index(x, ids, tmp_path / "flat")
    assert flat["type"] == "IndexFlat" and flat["documents"] == 300
    ix = open_external(tmp_path / "flat")
    assert list(ix.ids) == ids
    _, rows = ix.search(x[:3], 1)
    assert rows[:, 0].tolist() == [int(np.argmax(x @ x[i])) for i in range(3)]
    write_faiss_index(x, ids, tmp_path / "ivf", factory="IVF64,Flat")
    assert faiss.read_index(str(tmp_path / "ivf" / "index")).nprobe == 32  # min(lists, 32), stored in the file
    write_faiss_index(x, ids, tmp_path / "ivf8", factory="IVF8,Flat")
    assert faiss.read_index(str(tmp_path / "ivf8" / "index")).nprobe == 8
