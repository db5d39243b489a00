"""ADORE on an index hardneg did not build (issue 29): layouts, Faiss index types, refusals, the start-encoder
check, and a round trip (index built with sentence-transformers + plain Faiss, searched back the same way)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import data_dir, train_config, write_tiny_train
from hardneg.data.slice import slice_beir
from hardneg.errors import HardnegError, MismatchError
from hardneg.index.external import open_external
from hardneg.train.config import TrainConfig
from hardneg.train.methods.external import vector_scores
from hardneg.train.trainer import Trainer

faiss = pytest.importorskip("faiss")

#: the index types ADORE trains against, built with plain Faiss over (n, d) float32 vectors
INDEX_TYPES = ("flat-ip", "flat-l2", "ivf-flat", "ivf-pq", "pq", "hnsw", "sq")


def make_index(kind: str, x: np.ndarray):
    d = x.shape[1]
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat-ip":
        index = faiss.IndexFlatIP(d)
    elif kind == "flat-l2":
        index = faiss.IndexFlatL2(d)
    elif kind == "ivf-flat":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, 4, ip)
    elif kind == "ivf-pq":
        index = faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, 4, 8, 4)  # L2, 4-bit codes: trains on 88 vectors
    elif kind == "pq":
        index = faiss.IndexPQ(d, 8, 4, ip)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 8, ip)
    else:
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, ip)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    if hasattr(index, "nprobe"):
        index.nprobe = 3  # the index's own search parameter, kept by the file
    return index


def corpus(data: Path) -> tuple[list[str], list[str]]:
    docs = [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines() if line.strip()]
    return [d["_id"] for d in docs], [(d.get("title", "") + " " + d["text"]).strip() for d in docs]


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_train(tmp_path / "data", filler=40)  # 88 documents, 12 training queries


@pytest.fixture(scope="module")
def st_with_prompts(tmp_path_factory, tiny_st_dir):
    """The tiny sentence-transformers model with e5-style prompts in its config."""
    folder = tmp_path_factory.mktemp("st-prompts") / "model"
    shutil.copytree(tiny_st_dir, folder)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": None}))
    return folder


def st_vectors(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    return np.ascontiguousarray(st.encode_document(texts, convert_to_numpy=True), dtype=np.float32)


def write_pyserini(folder: Path, index, ids: list[str]) -> Path:
    folder.mkdir(parents=True)
    faiss.write_index(index, str(folder / "index"))
    (folder / "docid").write_text("\n".join(ids) + "\n")
    return folder


def files_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def external_config(tmp_path, data, model, index, **kw) -> TrainConfig:
    base = dict(index=str(index), max_steps=2, dev_every=2, save_every=2, index_check=0.0)
    return train_config(tmp_path, data, model, "adore", **{**base, **kw})


# ----------------------------------------------------------------------------- every index type
@pytest.mark.parametrize("kind", INDEX_TYPES)
def test_each_index_type_trains_with_scores_from_the_vectors_it_ranks_with(kind, tmp_path, tiny, st_with_prompts):
    ids, texts = corpus(tiny)
    folder = write_pyserini(tmp_path / "idx", make_index(kind, st_vectors(st_with_prompts, texts)), ids)
    before = files_hash(folder)
    index = open_external(folder)
    assert index.manifest["external"]["kind"] == {"flat-ip": "flat", "flat-l2": "flat", "hnsw": "hnsw-flat"}.get(
        kind, kind) and index.l2 == (kind in ("flat-l2", "ivf-pq"))
    if kind in ("ivf-flat", "ivf-pq"):
        assert index.search_params() == {"nprobe": 3}  # the index's own parameter, unless --nprobe is given
    # the scores training recomputes (with gradients) equal the scores the index ranks with: <q, v> or -|q - v|^2
    q = torch.randn(3, index.dim, requires_grad=True)
    scores, rows = index.search(q.detach().numpy(), 5)
    recomputed = vector_scores(q[:, None, :], torch.from_numpy(index.reconstruct(rows))[:, :, None, :], index.l2)
    assert recomputed.squeeze(-1).detach().numpy() == pytest.approx(scores, rel=1e-3, abs=1e-3)
    assert np.all(np.diff(scores, axis=1) <= 1e-5)  # higher is better for L2 too
    recomputed.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    ivf = kind in ("ivf-flat", "ivf-pq")
    trainer = Trainer(external_config(tmp_path, tiny, st_with_prompts, folder, metric="mrr@10",
                                      **({"nprobe": 2} if ivf else {"ef_search": 20} if kind == "hnsw" else {})))
    trainer.setup()
    if ivf or kind == "hnsw":  # --nprobe / --ef-search override the index's own
        assert trainer.method.index.search_params() == ({"nprobe": 2} if ivf else {"ef_search": 20})
    start = {k: v.clone() for k, v in trainer.model.query_model.state_dict().items()}
    out = trainer.train()
    log = [json.loads(line) for line in (tmp_path / "out-adore" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["pairs"] > 0 for r in log if "loss" in r)
    assert any(not torch.equal(start[k], v) for k, v in trainer.model.query_model.state_dict().items())
    info = json.loads((out / "adore.json").read_text())
    assert info["external_index"]["metric"] == ("l2" if index.l2 else "inner_product")
    assert info["external_index"]["ntotal"] == 88 and info["external_index"]["hash"] == index.manifest[
        "external"]["hash"]
    assert files_hash(folder) == before  # the index files are never written


# ----------------------------------------------------------------------------- the other layouts
@pytest.mark.parametrize("layout", ["faiss", "npy32", "npy16"])
def test_faiss_file_and_embeddings_layouts(layout, tmp_path, tiny, st_with_prompts):
    ids, texts = corpus(tiny)
    x = st_vectors(st_with_prompts, texts)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    if layout == "faiss":
        path = tmp_path / "docs.faiss"
        faiss.write_index(make_index("hnsw", x), str(path))
        kw = {}
    else:
        path = tmp_path / "docs.npy"
        np.save(path, x.astype(np.float16 if layout == "npy16" else np.float32))
        kw = {"index_build": "hnsw" if layout == "npy16" else "flat"}
    cfg = external_config(tmp_path, tiny, st_with_prompts, path, index_ids=str(tmp_path / "ids.txt"), **kw)
    trainer = Trainer(cfg)
    trainer.setup()
    assert trainer.store is None and trainer.doc_ids == ids
    expected = {"faiss": "hnsw-flat", "npy32": "flat", "npy16": "hnsw"}[layout]
    assert trainer.method.index.manifest["external"]["kind"] == expected
    if layout != "faiss":  # hardneg's index over the array ranks its vectors exactly (flat) as plain numpy does
        q = np.random.default_rng(0).standard_normal((2, x.shape[1])).astype(np.float32)
        _, rows = trainer.method.index.search(q, 3)
        if layout == "npy32":
            assert rows.tolist() == np.argsort(-(q @ x.T), axis=1)[:, :3].tolist()
    out = trainer.train()
    assert json.loads((out / "adore.json").read_text())["external_index"]["layout"] == (
        "faiss" if layout == "faiss" else "embeddings")


# ----------------------------------------------------------------------------- refusals
def test_refusals_name_the_reason(tmp_path, tiny, st_with_prompts):
    ids, texts = corpus(tiny)
    x = st_vectors(st_with_prompts, texts)
    d = x.shape[1]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")

    def refused(index, match, ids_path=ids_file):
        path = tmp_path / f"r{len(list(tmp_path.glob('r*')))}.faiss"
        faiss.write_index(index, str(path))
        with pytest.raises(HardnegError, match=match):
            open_external(path, ids_path)

    lsh = faiss.IndexLSH(d, 64)
    lsh.add(x)
    refused(lsh, "IndexLSH.*flat, IVF-flat, IVF-PQ, PQ, HNSW-flat and SQ")
    idmap = faiss.IndexIDMap(faiss.IndexFlatIP(d))
    idmap.add_with_ids(x, np.arange(len(x)) + 100)
    refused(idmap, "IndexIDMap")
    l1 = faiss.IndexFlat(d, faiss.METRIC_L1)
    l1.add(x)
    refused(l1, "inner product or by -squared L2")
    short = tmp_path / "short.txt"
    short.write_text("\n".join(ids[:-1]) + "\n")
    refused(make_index("flat-ip", x), "87 document ids, but the index .* holds 88 vectors", short)
    dupes = tmp_path / "dupes.txt"
    dupes.write_text("\n".join([*ids[:-1], ids[0]]) + "\n")
    refused(make_index("flat-ip", x), "more than once .*'d0-0', line 1 and line 88", dupes)
    with pytest.raises(HardnegError, match="--index-ids"):
        open_external(tmp_path / "r0.faiss")
    np.save(tmp_path / "ints.npy", np.zeros((88, d), dtype=np.int64))
    with pytest.raises(HardnegError, match="float32 or float16"):
        open_external(tmp_path / "ints.npy", ids_file)
    # dimension: the query encoder's vectors (32) against a 16-dimensional index
    small = write_pyserini(tmp_path / "small", make_index("flat-ip", np.ascontiguousarray(x[:, :16])), ids)
    with pytest.raises(HardnegError, match="16-dimensional vectors, but .* as 32-dimensional"):
        Trainer(external_config(tmp_path, tiny, st_with_prompts, small)).setup()
    # settings that do not go with an external index (or with a kind)
    flat = write_pyserini(tmp_path / "flat", make_index("flat-ip", x), ids)
    for kw, match in (({"index": "flat", "index_ids": str(ids_file)}, "--index-ids is for --index PATH"),
                      ({"index_build": "hnsw"}, "--index-build hnsw: hardneg builds an index only over"),
                      ({"index_fp16": True}, "--index-fp16 is for a flat index hardneg builds"),
                      ({"track_every": 1}, "--track-every"),
                      ({"index": str(tmp_path / "nowhere" / "index")}, "no such index file or folder"),
                      ({"index_check": 1.5}, "--index-check must be in")):
        with pytest.raises(HardnegError, match=match):
            external_config(tmp_path, tiny, st_with_prompts, kw.pop("index", flat), **kw).validate()
    with pytest.raises(HardnegError, match="for the adore method"):
        train_config(tmp_path, tiny, st_with_prompts, "star", index_ids=str(ids_file)).validate()


def test_qrels_missing_from_the_index_are_a_counted_warning(tmp_path, tiny, st_with_prompts, caplog):
    ids, texts = corpus(tiny)
    keep = [i for i, d in enumerate(ids) if d not in ("d0-0", "d1-0")]  # q1 loses its only positive, q0 one of two
    x = st_vectors(st_with_prompts, [texts[i] for i in keep])
    folder = write_pyserini(tmp_path / "idx", make_index("flat-ip", x), [ids[i] for i in keep])
    trainer = Trainer(external_config(tmp_path, tiny, st_with_prompts, folder, dev_fraction=0.1, seed=3))
    with caplog.at_level(logging.WARNING, logger="hardneg.train"):
        trainer.setup()
    lost = sum(1 for q in ("q0", "q1") if q in trainer.train_qrels)
    assert lost, "the carve-out must keep q0 or q1 in training for this test"
    message = next(r.getMessage() for r in caplog.records if "not in the index" in r.getMessage())
    assert message.startswith(f"adore: {lost} relevant documents of the training qrels are not in the index")
    assert f"{int('q1' in trainer.train_qrels)} training queries have no relevant document left" in message
    assert "q1" not in {e.qid for e in trainer.examples}


# ----------------------------------------------------------------------------- the start-encoder check
def test_a_query_encoder_that_does_not_belong_to_the_index_stops_the_run(tmp_path, tiny, st_with_prompts):
    from hardneg.train.methods.external import positive_ranks

    ids, texts = corpus(tiny)
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (tiny / "queries.jsonl").read_text()
               .splitlines()}
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(st_with_prompts), device="cpu")
    # documents that *are* their queries' vectors (rank 1 for a belonging encoder) and their negation (bottom)
    x = st_vectors(st_with_prompts, texts)
    for i, d in enumerate(ids):
        if d.endswith("-0"):
            x[i] = st.encode_query([queries["q" + d[1:].split("-")[0]]], convert_to_numpy=True)[0]
    good = write_pyserini(tmp_path / "good", make_index("flat-ip", x), ids)
    bad = write_pyserini(tmp_path / "bad", make_index("flat-ip", -x), ids)
    trainer = Trainer(external_config(tmp_path, tiny, st_with_prompts, good, index_check=0.5, max_steps=1))
    trainer.setup()
    check = trainer.method.encoder_check
    assert check["positives_median_rank"] == 1.0 and check["exact"] and "RR@10" in check["dev"]
    # the rank is the count of higher-scoring rows + 1 (exact on a small index)
    index = trainer.method.index
    ranks = positive_ranks(index, x[:1], [np.array([5])])
    assert ranks[0] == 1 + int(((x @ x[0]) > x[5] @ x[0]).sum())
    with pytest.raises(HardnegError, match=r"does not seem to belong to this index: the training positives' median "
                                           r"rank is \d+ of 88.*pooling \(mean here.*'query: ' here.*--index-check 0"):
        Trainer(external_config(tmp_path, tiny, st_with_prompts, bad, index_check=0.5, out=str(tmp_path / "b"))).setup()
    off = Trainer(external_config(tmp_path, tiny, st_with_prompts, bad, index_check=0.0, out=str(tmp_path / "c")))
    off.setup()  # turned off: trains anyway
    assert off.method.encoder_check["positives_median_rank"] > 44


# ----------------------------------------------------------------------------- the round trip
def scifact_slice(tmp_path: Path, n_docs: int = 120) -> Path:
    """A small slice of SciFact: the training queries whose relevant documents are among ``n_docs`` documents,
    half of them relevant ones (:func:`hardneg.data.slice.slice_beir`)."""
    src = data_dir() / "scifact"
    if not (src / "corpus.jsonl").is_file():
        pytest.skip("SciFact not found")
    return slice_beir(src, tmp_path / "scifact-slice", n_docs=n_docs, n_relevant=n_docs // 2)


@pytest.mark.parametrize("where", ["tiny", pytest.param("scifact", marks=pytest.mark.slow)])
def test_round_trip_with_an_index_built_outside_hardneg(where, tmp_path, tiny, st_with_prompts, monkeypatch):
    import hardneg.artifacts as artifacts
    import hardneg.model.encoder as encoder_module
    from hardneg.cli import app

    data, model = (tiny, st_with_prompts) if where == "tiny" else (scifact_slice(tmp_path), "minilm")
    ids, texts = corpus(data)
    folder = write_pyserini(tmp_path / "pyserini", make_index("flat-ip", st_vectors(
        st_with_prompts if where == "tiny" else encoder_module.resolve_model("minilm"), texts)), ids)
    before = files_hash(folder)
    loads = []
    real_load = encoder_module.load_tower
    monkeypatch.setattr(encoder_module, "load_tower",
                        lambda f, dtype=None: loads.append(Path(f)) or real_load(f, dtype))

    def no_corpus(*args, **kw):
        raise AssertionError("the corpus must not be tokenized or encoded for an external index")

    for name in ("side_store", "corpus_embeddings", "corpus_index"):
        monkeypatch.setattr(artifacts, name, no_corpus)
    import hardneg.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "corpus_store", no_corpus)
    runner = CliRunner()
    out = tmp_path / "adore"
    res = runner.invoke(app, ["-q", "train", "adore", "--data", str(data), "--model", str(model), "--index",
                              str(folder), "--max-steps", "2", "--batch-size", "4", "--dev-every", "2",
                              "--save-every", "2", "--adore-topk", "20", "--metric", "mrr@10", "--lr", "1e-3",
                              "--query-max-length", "32", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(loads) == 1  # the query encoder, once: no document tower
    assert files_hash(folder) == before
    trained = out / "model"
    assert not (trained / "query_tower").exists()  # the query encoder alone
    if where == "tiny":  # e5-style prompts carried into the output
        prompts = json.loads((trained / "config_sentence_transformers.json").read_text())["prompts"]
        assert prompts["query"] == "query: "
    card = (trained / "README.md").read_text()
    info = json.loads((trained / "adore.json").read_text())
    assert info["external_index"]["hash"] in card and "ntotal | " in card
    from transformers import AutoModel

    AutoModel.from_pretrained(str(trained))  # plain transformers loads it
    res = runner.invoke(app, ["-q", "export", str(trained), "--out", str(tmp_path / "exported")])
    assert res.exit_code == 0, res.output
    assert info["external_index"]["hash"] in (tmp_path / "exported" / "README.md").read_text()
    assert json.loads((tmp_path / "exported" / "adore.json").read_text()) == info
    # hardneg's search of the external index == sentence-transformers encode_query + plain Faiss
    res = runner.invoke(app, ["-q", "search", str(folder), f"{data}:train", "--model", str(trained), "--k", "10",
                              "--out", str(tmp_path / "search")])
    assert res.exit_code == 0, res.output
    run: dict[str, list[str]] = {}
    for line in (tmp_path / "search" / "run.trec").read_text().splitlines():
        q, _, d, *_ = line.split()
        run.setdefault(q, []).append(d)
    from sentence_transformers import SentenceTransformer

    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (data / "queries.jsonl").read_text()
               .splitlines()}
    qids = sorted(run)
    qv = SentenceTransformer(str(trained), device="cpu").encode_query([queries[q] for q in qids],
                                                                      convert_to_numpy=True)
    _, rows = faiss.read_index(str(folder / "index")).search(np.ascontiguousarray(qv, dtype=np.float32), 10)
    assert {q: [ids[r] for r in row] for q, row in zip(qids, rows, strict=True)} == run
    # another index is refused, both hashes named
    other = write_pyserini(tmp_path / "other", make_index("flat-l2", st_vectors(
        st_with_prompts if where == "tiny" else encoder_module.resolve_model("minilm"), texts)), ids)
    res = runner.invoke(app, ["-q", "search", str(other), f"{data}:train", "--model", str(trained)])
    assert res.exit_code != 0 and isinstance(res.exception, MismatchError)
    message = str(res.exception)
    assert info["external_index"]["hash"] in message and open_external(other).manifest["external"]["hash"] in message
    assert files_hash(folder) == before


def test_a_start_dev_metric_near_zero_where_bm25_scores_far_higher_stops_the_run(tmp_path, tiny, st_with_prompts):
    from sentence_transformers import SentenceTransformer

    # dev: q10 and q11 (their own split); training: the rest
    train = (tiny / "qrels" / "train.tsv").read_text().splitlines()
    dev = [line for line in train[1:] if line.split("\t")[0] in ("q10", "q11")]
    (tiny / "qrels" / "train.tsv").write_text("\n".join(line for line in train if line not in dev) + "\n")
    (tiny / "qrels" / "dev.tsv").write_text("\n".join([train[0], *dev]) + "\n")
    ids, texts = corpus(tiny)
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (tiny / "queries.jsonl").read_text()
               .splitlines()}
    st = SentenceTransformer(str(st_with_prompts), device="cpu")
    x = st_vectors(st_with_prompts, texts)
    for i, d in enumerate(ids):  # training positives: their queries' vectors; dev positives: the opposite
        if d.startswith("d") and d.split("-")[1] in ("0", "1"):
            q = "q" + d[1:].split("-")[0]
            x[i] = st.encode_query([queries[q]], convert_to_numpy=True)[0] * (-1 if q in ("q10", "q11") else 1)
    folder = write_pyserini(tmp_path / "idx", make_index("flat-ip", x), ids)
    with pytest.raises(HardnegError, match=r"dev RR@10 is 0\.0\d+ at the start, where BM25 scores 0\.\d+"):
        Trainer(external_config(tmp_path, tiny, st_with_prompts, folder, index_check=0.5, dev_split="dev")).setup()


def test_query_and_default_prompts_are_read_as_sentence_transformers_picks_them(tmp_path):
    from hardneg.model.st_format import read_sentence_transformers_config

    (tmp_path / "modules.json").write_text("[]")
    config = tmp_path / "config_sentence_transformers.json"
    config.write_text(json.dumps({"prompts": {"query": "query: ", "passage": "passage: "}}))
    assert read_sentence_transformers_config(tmp_path) == {"query_prefix": "query: ", "doc_prefix": "passage: "}
    instruction = "Represent this sentence for searching relevant passages: "
    config.write_text(json.dumps({"prompts": {"retrieval": instruction}, "default_prompt_name": "retrieval"}))
    assert read_sentence_transformers_config(tmp_path) == {"query_prefix": instruction, "doc_prefix": instruction}
    config.write_text(json.dumps({"prompts": {"query": instruction, "document": ""}, "default_prompt_name": None}))
    assert read_sentence_transformers_config(tmp_path) == {"query_prefix": instruction}


def test_kill_and_resume_gives_the_same_query_encoder(tmp_path, tiny, st_with_prompts, kill_and_resume):
    ids, texts = corpus(tiny)
    folder = write_pyserini(tmp_path / "idx", make_index("ivf-pq", st_vectors(st_with_prompts, texts)), ids)
    straight, resumed = kill_and_resume(lambda name: Trainer(external_config(
        tmp_path, tiny, st_with_prompts, folder, max_steps=4, out=str(tmp_path / name))))
    a, b = straight.model.query_model.state_dict(), resumed.model.query_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert files_hash(tmp_path / "a" / "model") == files_hash(tmp_path / "b" / "model")
