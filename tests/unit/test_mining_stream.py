"""Chunked, resumable ``hardneg mine`` (hardneg.negatives.stream) against the rules applied by hand to a brute-force
retrieval (BM25's run, or numpy's top-k over the encoded vectors), whatever the chunking, interrupted or not."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import _tiny_bert, write_tiny_train
from hardneg.data.load import load_dataset
from hardneg.negatives import stream
from hardneg.negatives.diagnostics import Diagnostics, diagnostics_path_for
from hardneg.negatives.formats.files import read_negative_file, write_negatives
from hardneg.negatives.rules import NegativeRules
from hardneg.negatives.selection import select_negatives
from hardneg.negatives.stream import mine_streamed

TOPK = 4
RULES = {
    "plain": NegativeRules(),
    # BM25 finds a topic's 4 documents (scores about 6.24, 6.03, 5.66, 4.77; the positives score lowest):
    # max_score removes the first, the draw picks one of the next two when neither is a positive
    "window": NegativeRules(num_negatives=1, sampling_strategy="random", max_score=6.1),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_train(tmp_path_factory.mktemp("stream") / "tiny", filler=20, lost_query=True)


@pytest.fixture(scope="module")
def spread_model(tmp_path_factory) -> Path:
    """A tiny random BERT whose vectors differ enough (init range 0.2) that no two candidate scores of a query
    tie within float error: numpy's top-k and Faiss's agree."""
    return _tiny_bert(tmp_path_factory.mktemp("spread-bert"), init_range=0.2)


def _dataset(folder: Path):
    ds = load_dataset(f"{folder}:train")
    return ds, ds.qrels(), ds.queries()


def _streamed(tiny: Path, out: Path, fmt: str, rules: NegativeRules, chunk: int, model: str = "bm25",
              encoder=None) -> dict:
    ds, qrels, queries = _dataset(tiny)
    return mine_streamed(ds, qrels, queries, model, rules, TOPK, out.parent / "cache", out, fmt, chunk_size=chunk,
                         open_encoder=encoder, diagnostics_path=diagnostics_path_for(out))


# ----------------------------------------------------------------------------- the rules, by hand
def _positives(qrels, qid: str) -> set[str]:
    return {d for d, g in qrels.get(qid, {}).items() if g >= 1}


def _window(rules: NegativeRules, qrels) -> tuple[int, int, int]:
    """``(n, range_max, depth)`` as sentence-transformers' defaults give them (the rules module doc)."""
    max_pos = max(len(_positives(qrels, q)) for q in qrels)
    n = rules.num_negatives or TOPK
    if not rules.active:
        return n, n + max_pos, n + max_pos
    score_rule = rules.max_score is not None or rules.relative_margin is not None
    range_max = rules.range_max or rules.range_min + n * (10 if score_rule else 1) + max_pos
    return n, range_max, range_max + max_pos


def _draw(qid: str, size: int, n: int) -> list[int]:
    """``random`` sampling's draw: ``default_rng([seed 0, stream 5, step 0, blake2b(qid)])``, in window order."""
    key = int.from_bytes(hashlib.blake2b(qid.encode(), digest_size=16).digest(), "little")
    return sorted(np.random.default_rng([0, 5, 0, key]).choice(size, size=n, replace=False).tolist())


def _by_hand(run: dict, qrels, rules: NegativeRules, positive_scores: dict | None = None) -> dict[str, list[str]]:
    """Each query's negatives: positives out, then the score rules, the window of the rest by score, the draw."""
    n, range_max, _ = _window(rules, qrels)
    out = {}
    for qid, results in run.items():
        pos = _positives(qrels, qid)
        ref = min(positive_scores[qid]) if positive_scores and positive_scores.get(qid) else None
        kept = []
        for docid, score in results:
            if docid in pos or (rules.max_score is not None and score > rules.max_score):
                continue
            if ref is not None and rules.relative_margin is not None:
                threshold = ref - abs(ref) * rules.relative_margin
                assert abs(score - threshold) > 1e-4, "a score too close to the margin for a float-exact check"
                if score > threshold:
                    continue
            kept.append((docid, score))
        kept.sort(key=lambda pair: -pair[1])  # stable: ties keep rank order
        window = kept[rules.range_min:range_max]
        if rules.sampling_strategy == "random" and len(window) > n:
            window = [window[i] for i in _draw(qid, len(window), n)]
        out[qid] = [d for d, _ in window[:n]]
    return out


def _bm25_by_hand(tiny: Path, rules: NegativeRules, cache: Path) -> dict[str, list[str]]:
    from hardneg.retrieval.bm25 import cached_bm25

    ds, qrels, queries = _dataset(tiny)
    run = cached_bm25(ds, cache).search(queries, k=_window(rules, qrels)[2], show_progress=False)
    return _by_hand(run, qrels, rules)


def _expected(tiny: Path, path: Path, fmt: str, negatives: dict[str, list[str]]) -> bytes:
    ds, qrels, _ = _dataset(tiny)
    write_negatives(path, negatives, fmt, dataset=ds, qrels=qrels)
    return path.read_bytes()


# ----------------------------------------------------------------------------- BM25
@pytest.mark.parametrize("rules", list(RULES))
@pytest.mark.parametrize(("fmt", "name"), [("tsv", "hard.tsv"), ("tevatron", "hard.jsonl"), ("st", "hard.jsonl")])
def test_chunked_equals_the_rules_by_hand(tmp_path, tiny, fmt, name, rules):
    hand = _bm25_by_hand(tiny, RULES[rules], tmp_path / "cache")
    assert any(hand.values()) and all(len(v) <= (RULES[rules].num_negatives or TOPK) for v in hand.values())
    want = _expected(tiny, tmp_path / "ref" / name, fmt, hand)
    work = tmp_path / "work" / name
    diagnostics = set()
    for chunk in (1, 5, 10_000):
        done = _streamed(tiny, work, fmt, RULES[rules], chunk)
        assert work.read_bytes() == want, (fmt, rules, chunk)
        diagnostics.add(diagnostics_path_for(work).read_bytes())
        assert not work.with_name(f"{name}.partial").exists()
        assert done["queries"] == 12 and done["negatives"] == sum(map(len, hand.values()))
    assert len(diagnostics) == 1  # the chunked diagnostics are byte-identical
    removed = json.loads(diagnostics.pop())["events"][0]["removed"]
    if rules == "window":  # the rules did act: the score rule removed documents, the draw left some out
        assert removed["max_score"] > 0 and removed["not_sampled"] > 0
    if fmt == "tsv":
        assert len(want.splitlines()) >= (20 if rules == "plain" else 12)


def test_streamed_diagnostics_equal_one_pass_in_memory(tmp_path, tiny):
    """The diagnostics summed over chunks (scores in files) equal :class:`Diagnostics` over one pass in memory,
    and their counts are the hand-counted ones."""
    from hardneg.retrieval.bm25 import cached_bm25

    rules = RULES["window"]
    ds, qrels, queries = _dataset(tiny)
    run = cached_bm25(ds, tmp_path / "cache").search(queries, k=_window(rules, qrels)[2], show_progress=False)
    memory = Diagnostics(rules, "hardneg mine --model bm25", rules.num_negatives)
    memory.on_short = "fewer negatives written for those queries"
    select_negatives(run, qrels, rules, default_n=TOPK, diagnostics=memory)
    work = tmp_path / "work" / "hard.tsv"
    _streamed(tiny, work, "tsv", rules, 5)
    streamed = json.loads(diagnostics_path_for(work).read_text())["events"][0]
    assert streamed == json.loads(json.dumps(memory.summary()))
    hand = _by_hand(run, qrels, rules)
    assert streamed["kept"] == sum(map(len, hand.values()))
    assert streamed["removed"]["positive"] == sum(len(_positives(qrels, q) & {d for d, _ in run[q]}) for q in run)
    assert streamed["removed"]["max_score"] == sum(s > 6.1 and d not in _positives(qrels, q)
                                                   for q in run for d, s in run[q]) > 0


def test_st_datasets_folder(tmp_path, tiny):
    pytest.importorskip("datasets")

    hand = _bm25_by_hand(tiny, RULES["plain"], tmp_path / "cache")
    ref, work = tmp_path / "ref" / "st", tmp_path / "work" / "st"
    ds, qrels, _ = _dataset(tiny)
    write_negatives(ref, hand, "st", dataset=ds, qrels=qrels)
    _streamed(tiny, work, "st", RULES["plain"], 3)
    longest = max(map(len, hand.values()))
    assert read_negative_file(work, ds) == {q: v for q, v in hand.items() if len(v) == longest and _positives(qrels, q)}
    assert (work / "dataset_info.json").read_bytes() == (ref / "dataset_info.json").read_bytes()


class Stop(Exception):
    pass


@pytest.mark.parametrize("fmt", ["tsv", "tevatron"])
def test_interrupted_then_resumed(tmp_path, tiny, monkeypatch, fmt):
    name = "hard.tsv" if fmt == "tsv" else "hard.jsonl"
    want = _expected(tiny, tmp_path / "ref" / name, fmt, _bm25_by_hand(tiny, RULES["window"], tmp_path / "cache"))
    work = tmp_path / "work" / name
    seen = []

    def stop_after_2(done: int) -> None:
        seen.append(done)
        if done == 2:
            raise Stop

    monkeypatch.setattr(stream, "after_chunk", stop_after_2)
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
    assert work.read_bytes() == want
    straight = tmp_path / "straight" / name
    monkeypatch.setattr(stream, "after_chunk", None)
    _streamed(tiny, straight, fmt, RULES["window"], 3)
    assert diagnostics_path_for(work).read_bytes() == diagnostics_path_for(straight).read_bytes()
    assert not partial.exists()


def test_changed_settings_start_over(tmp_path, tiny, monkeypatch, caplog):
    work = tmp_path / "hard.tsv"
    want = _expected(tiny, tmp_path / "ref" / "hard.tsv", "tsv", _bm25_by_hand(tiny, RULES["plain"], tmp_path / "c"))

    def stop(done: int) -> None:
        if done == 2:
            raise Stop

    monkeypatch.setattr(stream, "after_chunk", stop)
    with pytest.raises(Stop):
        _streamed(tiny, work, "tsv", RULES["window"], 3)
    seen = []
    monkeypatch.setattr(stream, "after_chunk", seen.append)
    with caplog.at_level("WARNING", logger="hardneg"):
        _streamed(tiny, work, "tsv", RULES["plain"], 3)
    assert seen == [1, 2, 3, 4]
    assert "other settings" in caplog.text and "starting over" in caplog.text
    assert work.read_bytes() == want


# ----------------------------------------------------------------------------- dense
def _dense_by_hand(tiny: Path, model_dir: Path, rules: NegativeRules, cache: Path) -> dict[str, list[str]]:
    """numpy's exact top-k over the encoded corpus and queries, with the positives' scores for the margin."""
    from hardneg.artifacts import corpus_index
    from hardneg.model.encoder import DualEncoder
    from hardneg.retrieval.dense import encode_queries

    ds, qrels, queries = _dataset(tiny)
    encoder = DualEncoder.from_pretrained(str(model_dir))
    index = corpus_index(encoder, ds, "flat", cache)
    docs = index.reconstruct(np.arange(len(index.ids))).astype(np.float64)
    qids, qv = encode_queries(encoder, queries)
    scores = qv.astype(np.float64) @ docs.T
    depth = _window(rules, qrels)[2]
    row = {d: i for i, d in enumerate(index.ids)}
    run, pos_scores = {}, {}
    for i, q in enumerate(qids):
        top = np.argsort(-scores[i], kind="stable")[:depth]
        run[q] = [(index.ids[j], float(scores[i, j])) for j in top]
        pos_scores[q] = [float(scores[i, row[d]]) for d in _positives(qrels, q) if d in row]
    return _by_hand(run, qrels, rules, pos_scores)


def test_dense_chunked_and_resumed_equal_numpy_topk(tmp_path, tiny, spread_model, monkeypatch):
    """A tiny dense model with a margin rule: the query vectors are encoded once in one call's batches; chunks
    of 2 (search blocks of 2 here) give the negatives of numpy's top-k with the rules by hand, also after an
    interruption."""
    from hardneg.model.encoder import DualEncoder

    def encoder():
        return DualEncoder.from_pretrained(str(spread_model))

    rules = NegativeRules(range_min=1, num_negatives=3, relative_margin=0.02)
    hand = _dense_by_hand(tiny, spread_model, rules, tmp_path / "work" / "cache")
    assert any(hand.values()) and all(len(v) <= 3 for v in hand.values())
    want = _expected(tiny, tmp_path / "ref" / "hard.tsv", "tsv", hand)
    work = tmp_path / "work" / "hard.tsv"
    monkeypatch.setattr(stream, "SEARCH_BLOCK", 2)

    def stop(done: int) -> None:
        if done == 3:
            raise Stop

    monkeypatch.setattr(stream, "after_chunk", stop)
    with pytest.raises(Stop):
        _streamed(tiny, work, "tsv", rules, 2, model=str(spread_model), encoder=encoder)
    assert (work.with_name("hard.tsv.partial") / "queries" / "embeddings.npy").is_file()
    monkeypatch.setattr(stream, "after_chunk", None)
    _streamed(tiny, work, "tsv", rules, 2, model=str(spread_model), encoder=encoder)
    assert work.read_bytes() == want
    events = json.loads(diagnostics_path_for(work).read_text())["events"]
    assert events[0]["removed"]["relative_margin"] > 0  # the rule did act


def test_teacher_rescoring_chunked(tmp_path, tiny, tiny_model_dir):
    """A bi-encoder teacher with a margin rule: chunks give one pass's bytes, and the teacher's counters add up
    over chunks (every pair scored once, no cache hits within a run)."""
    rules = NegativeRules(teacher=str(tiny_model_dir), relative_margin=0.05, num_negatives=2)
    one, work = tmp_path / "one" / "hard.tsv", tmp_path / "work" / "hard.tsv"
    _streamed(tiny, one, "tsv", rules, 10_000)
    _streamed(tiny, work, "tsv", rules, 5)
    assert work.read_bytes() == one.read_bytes()
    assert diagnostics_path_for(work).read_bytes() == diagnostics_path_for(one).read_bytes()
    teacher = json.loads(diagnostics_path_for(work).read_text())["events"][0]["teacher"]
    assert teacher["scored"] > 0 and teacher["cache_hits"] == 0
