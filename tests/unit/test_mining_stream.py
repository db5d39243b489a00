"""Chunked, resumable ``hardneg mine``: the same bytes as one pass (today's ``mine_selected`` +
``write_negatives``), whatever the chunking, interrupted or not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_tiny_train
from hardneg.data.load import load_dataset
from hardneg.train import mine_stream
from hardneg.train.mine_stream import mine_streamed
from hardneg.train.negatives import write_negatives
from hardneg.train.selection import NegativeRules, diagnostics_path_for, mine_selected

RULES = {
    "plain": NegativeRules(),
    "window": NegativeRules(range_min=1, num_negatives=3, sampling_strategy="random", max_score=30.0),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_train(tmp_path_factory.mktemp("stream") / "tiny", filler=20, lost_query=True)


def _dataset(folder: Path):
    ds = load_dataset(f"{folder}:train")
    return ds, ds.qrels(), ds.queries()


def _one_pass(tiny: Path, out: Path, fmt: str, rules: NegativeRules, model: str = "bm25", encoder=None) -> None:
    """Today's path: everything in memory, written at the end."""
    ds, qrels, queries = _dataset(tiny)
    negatives = mine_selected(ds, qrels, queries, model, rules, 4, out.parent / "cache",
                              open_encoder=encoder, diagnostics_path=diagnostics_path_for(out))
    write_negatives(out, negatives, fmt, dataset=ds, qrels=qrels)


def _streamed(tiny: Path, out: Path, fmt: str, rules: NegativeRules, chunk: int, model: str = "bm25",
              encoder=None) -> dict:
    ds, qrels, queries = _dataset(tiny)
    return mine_streamed(ds, qrels, queries, model, rules, 4, out.parent / "cache", out, fmt, chunk_size=chunk,
                         open_encoder=encoder, diagnostics_path=diagnostics_path_for(out))


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.parametrize("rules", list(RULES))
@pytest.mark.parametrize(("fmt", "name"), [("tsv", "hard.tsv"), ("tevatron", "hard.jsonl"), ("st", "hard.jsonl")])
def test_chunked_equals_one_pass(tmp_path, tiny, fmt, name, rules):
    ref, work = tmp_path / "ref" / name, tmp_path / "work" / name
    _one_pass(tiny, ref, fmt, RULES[rules])
    for chunk in (1, 5, 10_000):
        done = _streamed(tiny, work, fmt, RULES[rules], chunk)
        assert _bytes(work) == _bytes(ref), (fmt, rules, chunk)
        assert _bytes(diagnostics_path_for(work)) == _bytes(diagnostics_path_for(ref)), (fmt, rules, chunk)
        assert not work.with_name(f"{name}.partial").exists()
        assert done["queries"] == 12
    if fmt == "tsv":
        assert len(_bytes(ref).splitlines()) >= 20


def test_st_datasets_folder(tmp_path, tiny):
    pytest.importorskip("datasets")
    from hardneg.train.negative_files import read_negative_file

    ref, work = tmp_path / "ref" / "st", tmp_path / "work" / "st"
    _one_pass(tiny, ref, "st", RULES["plain"])
    _streamed(tiny, work, "st", RULES["plain"], 3)
    ds = load_dataset(f"{tiny}:train")
    assert read_negative_file(work, ds) == read_negative_file(ref, ds)
    assert (work / "dataset_info.json").read_bytes() == (ref / "dataset_info.json").read_bytes()


class Stop(Exception):
    pass


@pytest.mark.parametrize("fmt", ["tsv", "tevatron"])
def test_interrupted_then_resumed(tmp_path, tiny, monkeypatch, fmt):
    name = "hard.tsv" if fmt == "tsv" else "hard.jsonl"
    ref, work = tmp_path / "ref" / name, tmp_path / "work" / name
    _one_pass(tiny, ref, fmt, RULES["window"])
    seen = []

    def stop_after_2(done: int) -> None:
        seen.append(done)
        if done == 2:
            raise Stop

    monkeypatch.setattr(mine_stream, "after_chunk", stop_after_2)
    with pytest.raises(Stop):
        _streamed(tiny, work, fmt, RULES["window"], 3)
    partial = work.with_name(f"{name}.partial")
    state = json.loads((partial / "progress.json").read_text())
    assert state["chunks_done"] == 2 and not work.exists()
    with open(partial / "negatives.part", "ab") as fh:  # a chunk half-appended when the process died
        fh.write(b"q9\tgarbage\t1\n")
    seen.clear()
    _streamed(tiny, work, fmt, RULES["window"], 3)
    assert seen == [3, 4]  # chunks 1-2 were not mined again
    assert _bytes(work) == _bytes(ref)
    assert _bytes(diagnostics_path_for(work)) == _bytes(diagnostics_path_for(ref))
    assert not partial.exists()


def test_changed_settings_start_over(tmp_path, tiny, monkeypatch, caplog):
    work = tmp_path / "hard.tsv"
    ref = tmp_path / "ref" / "hard.tsv"
    _one_pass(tiny, ref, "tsv", RULES["plain"])

    def stop(done: int) -> None:
        if done == 2:
            raise Stop

    monkeypatch.setattr(mine_stream, "after_chunk", stop)
    with pytest.raises(Stop):
        _streamed(tiny, work, "tsv", RULES["window"], 3)
    seen = []
    monkeypatch.setattr(mine_stream, "after_chunk", seen.append)
    with caplog.at_level("WARNING", logger="hardneg"):
        _streamed(tiny, work, "tsv", RULES["plain"], 3)
    assert seen == [1, 2, 3, 4]
    assert "other settings" in caplog.text and "starting over" in caplog.text
    assert _bytes(work) == _bytes(ref)


def test_dense_chunked_and_resumed(tmp_path, tiny, tiny_model_dir, monkeypatch):
    """A tiny dense model: the query vectors are encoded once in one call's batches; chunks of 2
    (search blocks of 2 here) give the one-pass file, also after an interruption."""
    from hardneg.model.encoder import DualEncoder

    def encoder():
        return DualEncoder.from_pretrained(str(tiny_model_dir))

    ref, work = tmp_path / "ref" / "hard.tsv", tmp_path / "work" / "hard.tsv"
    _one_pass(tiny, ref, "tsv", RULES["window"], model=str(tiny_model_dir), encoder=encoder)
    monkeypatch.setattr(mine_stream, "SEARCH_BLOCK", 2)

    def stop(done: int) -> None:
        if done == 3:
            raise Stop

    monkeypatch.setattr(mine_stream, "after_chunk", stop)
    with pytest.raises(Stop):
        _streamed(tiny, work, "tsv", RULES["window"], 2, model=str(tiny_model_dir), encoder=encoder)
    assert (work.with_name("hard.tsv.partial") / "queries" / "embeddings.npy").is_file()
    monkeypatch.setattr(mine_stream, "after_chunk", None)
    _streamed(tiny, work, "tsv", RULES["window"], 2, model=str(tiny_model_dir), encoder=encoder)
    assert _bytes(work) == _bytes(ref)
    assert _bytes(diagnostics_path_for(work)) == _bytes(diagnostics_path_for(ref))


def test_teacher_rescoring_chunked(tmp_path, tiny, tiny_model_dir):
    """A bi-encoder teacher with a margin rule: the teacher's counters and the cache add up over chunks."""
    rules = NegativeRules(teacher=str(tiny_model_dir), relative_margin=0.05, num_negatives=2)
    ref, work = tmp_path / "ref" / "hard.tsv", tmp_path / "work" / "hard.tsv"
    _one_pass(tiny, ref, "tsv", rules)
    _streamed(tiny, work, "tsv", rules, 5)
    assert _bytes(work) == _bytes(ref)
    assert _bytes(diagnostics_path_for(work)) == _bytes(diagnostics_path_for(ref))
    teacher = json.loads(diagnostics_path_for(work).read_text())["events"][0]["teacher"]
    assert teacher["scored"] > 0 and teacher["cache_hits"] == 0
