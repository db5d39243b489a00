"""Negatives in the field's formats: sentence-transformers data and Tevatron JSONL, written and read back."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_tiny_train
from hardneg.cli import app
from hardneg.data.load import load_dataset
from hardneg.errors import HardnegError, InputError
from hardneg.negatives.formats.files import detect_format, read_negative_file, write_negatives
from hardneg.negatives.formats.tsv import read_negatives
from hardneg.negatives.sources import load_candidates

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def beir_train(tiny_beir):
    """tiny_beir (documents with titles) with its qrels as the train split."""
    shutil.copy(tiny_beir / "qrels" / "test.tsv", tiny_beir / "qrels" / "train.tsv")
    return tiny_beir


def hand_negatives() -> dict[str, list[str]]:
    """Three non-positive documents per query of tiny_beir (positive of q<i> is d<i>-0)."""
    return {f"q{i}": [f"d{i}-2", f"d{(i + 1) % 6}-0", f"d{i}-1"] for i in range(6)}


def corpus_texts(folder) -> dict[str, str]:
    """title + " " + text, composed here independently of hardneg."""
    out = {}
    for line in (folder / "corpus.jsonl").read_text().splitlines():
        d = json.loads(line)
        out[d["_id"]] = f"{d['title']} {d['text']}".strip()
    return out


def test_st_jsonl_loads_with_datasets_and_trains_one_mnrl_step(beir_train, tiny_st_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    ds = load_dataset(f"{beir_train}:train")
    negatives = hand_negatives()
    stats = write_negatives(tmp_path / "st.jsonl", negatives, "st", dataset=ds)
    assert stats == {"rows": 6, "queries": 6, "no_positive": 0, "short": 0}
    data = datasets.load_dataset("json", data_files=str(tmp_path / "st.jsonl"), split="train")
    columns = ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert data.column_names == columns and data.num_rows == 6
    texts = corpus_texts(beir_train)
    assert data[0] == {"anchor": "what about apple orchard harvest", "positive": texts["d0-0"],
                       "negative_1": texts["d0-2"], "negative_2": texts["d1-0"], "negative_3": texts["d0-1"]}
    assert data[0]["positive"].startswith("apple note 0 apple orchard harvest")  # title, space, text

    # one step of MultipleNegativesRankingLoss on the loaded columns; its value checked against the formula
    torch.manual_seed(0)
    model = SentenceTransformer(str(tiny_st_dir), device="cpu")
    loss_fn = MultipleNegativesRankingLoss(model)
    features = [model.tokenize(data[c]) for c in columns]
    loss = loss_fn(features, labels=None)
    with torch.no_grad():
        emb = [torch.nn.functional.normalize(model(dict(f))["sentence_embedding"], dim=-1) for f in features]
        scores = 20.0 * emb[0] @ torch.cat(emb[1:]).T  # anchors vs every positive and negative of the batch
        expected = torch.nn.functional.cross_entropy(scores, torch.arange(6))
    assert torch.isfinite(loss) and abs(loss.item() - expected.item()) < 1e-4
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    # read back: texts mapped to ids through the corpus
    assert detect_format(tmp_path / "st.jsonl") == "st"
    assert read_negative_file(tmp_path / "st.jsonl", ds) == negatives
    with pytest.raises(HardnegError, match="needs the dataset"):
        read_negative_file(tmp_path / "st.jsonl")


def test_st_datasets_folder_and_tevatron_round_trip(beir_train, tmp_path):
    ds = load_dataset(f"{beir_train}:train")
    negatives = hand_negatives()
    negatives["q5"] = negatives["q5"][:2]  # shorter: no n-tuple row (as in ST), but a Tevatron line
    stats = write_negatives(tmp_path / "st-folder", negatives, "st", dataset=ds)
    assert stats["rows"] == 5 and stats["short"] == 1
    loaded = datasets.load_from_disk(str(tmp_path / "st-folder"))
    assert loaded.num_rows == 5 and loaded.column_names[:2] == ["anchor", "positive"]
    assert detect_format(tmp_path / "st-folder") == "st"
    assert load_candidates(tmp_path / "st-folder", 10, dataset=ds) == {q: v for q, v in negatives.items() if q != "q5"}
    assert not list(tmp_path.glob("*.tmp-*"))

    write_negatives(tmp_path / "tev.jsonl", negatives, "tevatron", dataset=ds)
    lines = [json.loads(x) for x in (tmp_path / "tev.jsonl").read_text().splitlines()]
    assert [x["query_id"] for x in lines] == [f"q{i}" for i in range(6)]
    first = lines[0]
    assert first["query"] == "what about apple orchard harvest"
    assert first["positive_passages"] == [{"docid": "d0-0", "title": "apple note 0",
                                           "text": "apple orchard harvest study number 0 with details "}]
    assert [p["docid"] for p in first["negative_passages"]] == ["d0-2", "d1-0", "d0-1"]
    assert detect_format(tmp_path / "tev.jsonl") == "tevatron"
    assert read_negative_file(tmp_path / "tev.jsonl") == negatives == read_negative_file(tmp_path / "tev.jsonl", ds)
    # topk and positives applied after reading, as for the TSV
    assert load_candidates(tmp_path / "tev.jsonl", 2, positives={"q0": {"d1-0": 1}})["q0"] == ["d0-2", "d0-1"]


def test_st_shared_texts(tmp_path):
    """Duplicate query texts are resolved by the positive; duplicate document texts go to the first id."""
    folder = tmp_path / "dup"
    (folder / "qrels").mkdir(parents=True)
    docs = [("a", "same words"), ("b", "same words"), ("p1", "first answer"), ("p2", "second answer"),
            ("c", "other")]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n"
                                                 for i, t in docs))
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "twin"}\n{"_id": "q2", "text": "twin"}\n')
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tp1\t1\nq2\tp2\t1\nq2\tb\t1\n")
    ds = load_dataset(f"{folder}:train")

    def st(*rows):
        path = tmp_path / "rows.jsonl"
        path.write_text("".join(json.dumps(dict(zip(["anchor", "positive", "negative_1", "negative_2"], r,
                                                    strict=False))) + "\n" for r in rows))
        return path

    assert read_negative_file(st(("twin", "first answer", "same words", "other")), ds) == {"q1": ["a", "c"]}
    with pytest.raises(InputError, match=r"rows.jsonl:1: .*shared by documents \['a', 'b'\].*positive of query 'q2'"):
        read_negative_file(st(("twin", "second answer", "same words", "other")), ds)
    with pytest.raises(InputError, match=r"rows.jsonl:2: .*'anchor' text is shared by queries"):
        read_negative_file(st(("twin", "first answer", "other"), ("twin", "other", "first answer")), ds)


def test_mine_cli_writes_all_three_formats(beir_train, tmp_path, monkeypatch):
    monkeypatch.setenv("HARDNEG_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    for fmt, name in (("tsv", "hard.tsv"), ("st", "hard-st.jsonl"), ("tevatron", "hard-tev.jsonl")):
        result = runner.invoke(app, ["--quiet", "mine", str(beir_train), "--model", "bm25", "--topk", "4",
                                     "--format", fmt, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    ds = load_dataset(f"{beir_train}:train")
    tsv = read_negatives(tmp_path / "hard.tsv")
    assert len(tsv) == 6 and all(tsv.values())  # BM25 returns only documents sharing a term
    assert read_negative_file(tmp_path / "hard-tev.jsonl", ds) == tsv
    longest = max(map(len, tsv.values()))  # ST's n-tuple rows all have the same number of negatives
    assert read_negative_file(tmp_path / "hard-st.jsonl", ds) == {q: v for q, v in tsv.items() if len(v) == longest}
    result = runner.invoke(app, ["--quiet", "mine", str(beir_train), "--model", "bm25", "--format", "parquet"])
    assert isinstance(result.exception, HardnegError) and "unknown negatives format 'parquet'" in str(result.exception)


def test_tevatron_file_trains_like_the_tsv(tmp_path, tiny_model_dir):
    """`train --negatives` with a Tevatron file samples the same negatives as with the TSV: identical weights."""
    from hardneg.train.config import TrainConfig
    from hardneg.train.trainer import Trainer

    data = write_tiny_train(tmp_path / "data")
    ds = load_dataset(f"{data}:train")
    negatives = {f"q{i}": [f"d{i}-3", f"d{i}-2", f"d{(i + 5) % 12}-0", f"d{i}-1", f"d{(i + 1) % 12}-2"]
                 for i in range(12)}
    write_negatives(tmp_path / "neg.tsv", negatives)
    write_negatives(tmp_path / "neg.jsonl", negatives, "tevatron", dataset=ds)

    def setup(path):
        cfg = TrainConfig(method="static", data=str(data), model=str(tiny_model_dir), negatives=str(path),
                          out=str(tmp_path / f"out-{path.name}"), max_steps=2, batch_size=4, n_negatives=2, lr=1e-3,
                          topk=4, dev_fraction=0.25, dev_every=100, save_every=100, dev_pool=0, quiet=True,
                          cache_dir=str(tmp_path / "cache"), query_max_length=16, doc_max_length=32,
                          warmup_ratio=0.0)
        trainer = Trainer(cfg)
        trainer.setup()
        return trainer

    def trained(path):
        trainer = setup(path)
        samples = {q: [trainer.method.source.sample(q, 2, s) for s in range(4)] for q in ctx_qids(trainer)}
        trainer.train()
        return samples, {k: v.detach().clone() for k, v in trainer.model.doc_model.state_dict().items()}

    def ctx_qids(trainer):
        return sorted(trainer.method.ctx.train_qrels)

    tsv_samples, tsv_params = trained(tmp_path / "neg.tsv")
    tev_samples, tev_params = trained(tmp_path / "neg.jsonl")
    assert tsv_samples == tev_samples and len(tsv_samples) >= 8
    assert all(torch.equal(tsv_params[k], tev_params[k]) for k in tsv_params)
    bad = tmp_path / "bad.jsonl"
    bad.write_text((tmp_path / "neg.jsonl").read_text().splitlines()[0] + "\n{oops\n")
    with pytest.raises(InputError, match="not valid JSON") as err:
        setup(bad)
    assert str(err.value).startswith(f"{bad}:2: ")


def test_malformed_files_give_file_line_errors(beir_train, tmp_path):
    ds = load_dataset(f"{beir_train}:train")
    good = {"query_id": "q0", "query": "x", "positive_passages": [{"docid": "d0-0"}],
            "negative_passages": [{"docid": "d0-1", "title": "", "text": ""}]}
    texts = corpus_texts(beir_train)
    good_st = {"anchor": "what about apple orchard harvest", "positive": texts["d0-0"], "negative_1": texts["d0-1"]}
    cases = [
        ("bad-json", [good, "{not json"], 2, "not valid JSON"),
        ("no-key", [{k: v for k, v in good.items() if k != "negative_passages"}], 1, "no 'negative_passages'"),
        ("no-docid", [{**good, "negative_passages": [{"title": "t"}]}], 1, r"negative_passages\[0\] has no usable"),
        ("not-list", [{**good, "positive_passages": "d0-0"}], 1, "must be a list"),
        ("unknown-doc", [good, {**good, "query_id": "q1", "negative_passages": [{"docid": "zz"}]}], 2,
         "document 'zz' is not in the corpus"),
        ("unknown-query", [{**good, "query_id": "q99"}], 1, "query 'q99' is not a query"),
        ("twice", [good, good], 2, r"appears twice \(first at line 1\)"),
        ("neither", [{"foo": 1}], 1, "neither Tevatron keys"),
        ("st-unknown-doc", [good_st, {**good_st, "negative_1": "no such text"}], 2, "'negative_1' text is no document"),
        ("st-unknown-query", [{**good_st, "anchor": "nobody asked"}], 1, "'anchor' text is no query"),
        ("st-no-positive", [good_st, {k: v for k, v in good_st.items() if k != "positive"}], 2, "no 'positive'"),
        ("st-null", [{**good_st, "negative_2": None}], 1, "'negative_2' must be a text"),
    ]
    for name, lines, line, message in cases:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
        with pytest.raises(InputError, match=message) as err:
            load_candidates(path, 10, dataset=ds)
        assert str(err.value).startswith(f"{path}:{line}: "), (name, str(err.value))
    (tmp_path / "plain-folder").mkdir()
    with pytest.raises(InputError, match="not a datasets folder"):
        load_candidates(tmp_path / "plain-folder", 10, dataset=ds)
