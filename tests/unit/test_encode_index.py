from __future__ import annotations

import numpy as np
import pytest

from hardneg.data.tokenized import StoreSpec, build_store, texts_fingerprint
from hardneg.errors import HardnegError, MismatchError
from hardneg.index.encode import Embeddings, encode_store
from hardneg.index.faiss_index import FaissIndex, factory_string
from hardneg.model.encoder import DualEncoder
from hardneg.model.encoding import encode_texts, length_sorted_batches
from hardneg.model.fingerprints import tokenizer_fingerprint

RECORDS = [(f"doc{i}", "word " * (1 + (i * 7) % 23) + f"item {i}") for i in range(37)]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DualEncoder.from_pretrained(tiny_model_dir)


@pytest.fixture
def store(model, tmp_path):
    spec = StoreSpec(tokenizer_fingerprint(model.tokenizer), 32, "", texts_fingerprint(RECORDS))
    return build_store(iter(RECORDS), model.tokenizer, spec, tmp_path / "store", show_progress=False)


def test_length_sorted_batches_cover_every_row_once():
    lengths = np.array([3, 9, 1, 9, 4, 7])
    batches = length_sorted_batches(lengths, 4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    flat = np.concatenate(batches)
    assert (np.diff(lengths[flat]) <= 0).all()  # longest first
    with pytest.raises(HardnegError):
        length_sorted_batches(lengths, 0)


def test_encode_store_matches_direct_encoding(model, store, tmp_path):
    emb = encode_store(model, store, "doc", tmp_path / "emb", batch_size=5, show_progress=False)
    assert emb.ids == [r for r, _ in RECORDS]
    direct = encode_texts(model, [t for _, t in RECORDS], "doc", batch_size=1)
    # max_length 32 store vs model default 512: compare on texts short enough to be untruncated
    short = [i for i, n in enumerate(store.lengths) if n < 32]
    np.testing.assert_allclose(np.asarray(emb.vectors)[short], direct[short], rtol=1e-4, atol=1e-5)


def test_interrupted_encoding_resumes_to_identical_result(model, store, tmp_path, monkeypatch):
    reference = encode_store(model, store, "doc", tmp_path / "ref", batch_size=4, show_progress=False)
    calls = {"n": 0}
    original = type(model).forward

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed mid-run
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", flaky)
    out = tmp_path / "emb"
    with pytest.raises(KeyboardInterrupt):
        encode_store(model, store, "doc", out, batch_size=4, show_progress=False, checkpoint_seconds=0)
    assert not out.exists(), "an unfinished encoding must not look complete"
    assert (tmp_path / "emb.partial" / "progress.json").is_file()
    with pytest.raises(HardnegError, match="interrupted"):
        Embeddings(out)
    calls["n"] = -1000  # no more failures
    emb = encode_store(model, store, "doc", out, batch_size=4, show_progress=False)
    assert calls["n"] == -1000 + (10 - 4)  # only the 6 unfinished of 10 batches were encoded again
    np.testing.assert_array_equal(np.asarray(emb.vectors), np.asarray(reference.vectors))
    assert not (tmp_path / "emb.partial").exists()



def test_interrupted_shard_resumes_and_merges_to_the_unsharded_result(model, store, tmp_path, monkeypatch):
    from hardneg.index.shards import encode_shard, merge_shards, shard_rows

    reference = encode_store(model, store, "doc", tmp_path / "ref", batch_size=4, show_progress=False)
    out = tmp_path / "emb"
    encode_shard(model, store, "doc", out, 0, 2, batch_size=4, show_progress=False)
    mine, _ = shard_rows(store.lengths, 4, 1, 2)
    calls = {"n": 0}
    original = type(model).forward

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed after two of shard 1's batches
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        encode_shard(model, store, "doc", out, 1, 2, batch_size=4, show_progress=False, checkpoint_seconds=0)
    partial = tmp_path / "emb.shards" / "1-of-2.partial"
    assert (partial / "progress.json").is_file() and not (tmp_path / "emb.shards" / "1-of-2").exists()
    with pytest.raises(HardnegError, match="1-of-2"):
        merge_shards(out)
    calls["n"] = -1000
    encode_shard(model, store, "doc", out, 1, 2, batch_size=4, show_progress=False)
    assert calls["n"] == -1000 + len(mine) - 2  # only the unfinished batches were encoded again
    merged = merge_shards(out)
    np.testing.assert_array_equal(np.asarray(merged.vectors), np.asarray(reference.vectors))
    assert (tmp_path / "ref" / "embeddings.npy").read_bytes() == (out / "embeddings.npy").read_bytes()


def test_embeddings_from_another_model_are_refused(model, store, tmp_path):
    emb = encode_store(model, store, "doc", tmp_path / "emb", show_progress=False)
    with pytest.raises(MismatchError):
        Embeddings(tmp_path / "emb", expect_key="something-else")
    assert Embeddings(tmp_path / "emb", expect_key=emb.manifest["key"]).dim == model.dim


def _random(n=600, d=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x, [f"id{i}" for i in range(n)]


def test_flat_search_equals_brute_force():
    x, ids = _random()
    q = _random(20, seed=1)[0]
    index = FaissIndex.build(x, ids, "flat")
    scores, rows = index.search(q, 10, batch_size=7)
    brute = q @ x.T
    expected = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-5)


def test_pq_reconstruction_reproduces_index_order():
    x, ids = _random(2000)
    q = _random(15, seed=2)[0]
    index = FaissIndex.build(x, ids, "pq8")
    scores, rows = index.search(q, 50)
    recon = index.reconstruct(rows)  # (15, 50, d)
    recomputed = np.einsum("qd,qkd->qk", q, recon)
    np.testing.assert_allclose(recomputed, scores, rtol=1e-4, atol=1e-4)
    all_scores = q @ index.reconstruct(np.arange(len(x))).T
    # ranking every reconstructed vector by inner product gives the index's own top-k
    top = np.sort(all_scores, axis=1)[:, ::-1][:, :50]
    np.testing.assert_allclose(top, scores, rtol=1e-4, atol=1e-4)
    own_order = np.argsort(-all_scores, axis=1, kind="stable")[:, :50]
    agree = (own_order == rows) | np.isclose(np.take_along_axis(all_scores, own_order, 1),
                                              np.take_along_axis(all_scores, rows, 1), atol=1e-4)
    assert agree.all()


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq", "ivf8pq4", "factory:IVF4,Flat"])
def test_other_kinds_build_search_and_round_trip(kind, tmp_path):
    x, ids = _random(1200)
    index = FaissIndex.build(x, ids, kind)
    scores, rows = index.search(x[:5], 5)
    assert rows.shape == (5, 5) and (rows >= 0).all()
    index.save(tmp_path / "idx")
    again = FaissIndex.load(tmp_path / "idx")
    assert again.ids == ids and again.manifest["index_kind"] == kind
    s2, r2 = again.search(x[:5], 5)
    np.testing.assert_array_equal(r2, rows)


def test_pq_is_smaller_than_flat(tmp_path):
    x, ids = _random(10_000, d=64)
    sizes = {}
    for kind in ("flat", "pq8"):
        FaissIndex.build(x, ids, kind).save(tmp_path / kind)
        sizes[kind] = (tmp_path / kind / "index.faiss").stat().st_size
    assert sizes["pq8"] < sizes["flat"] / 10


def test_factory_strings_and_errors():
    assert factory_string("flat", 384, 10) == "Flat"
    assert factory_string("pq48", 384, 10) == "PQ48np"  # no polysemous training
    assert factory_string("ivfpq", 384, 10_000) == "IVF100,PQ48np"  # no polysemous training
    assert factory_string("hnsw", 384, 10) == "HNSW32,Flat"
    with pytest.raises(HardnegError, match="must divide"):
        factory_string("pq50", 384, 10)
    with pytest.raises(HardnegError, match="unknown index kind"):
        factory_string("annoy", 384, 10)


def test_search_refuses_wrong_dimension_and_missing_index(tmp_path):
    x, ids = _random(100)
    index = FaissIndex.build(x, ids, "flat")
    with pytest.raises(MismatchError, match="dimension"):
        index.search(np.zeros((2, 16), dtype=np.float32), 3)
    with pytest.raises(HardnegError, match="no finished index"):
        FaissIndex.load(tmp_path / "missing")
    index.save(tmp_path / "i")
    with pytest.raises(MismatchError):
        FaissIndex.load(tmp_path / "i", expect_key="other")


def test_concurrent_encoders_take_turns(model, store, tmp_path):
    """Two processes wanting the same embeddings: the second waits and reuses the first's."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        from hardneg.data.tokenized import TokenizedStore
        from hardneg.index.encode import encode_store
        from hardneg.model.encoder import DualEncoder
        model = DualEncoder.from_pretrained({str(model.source)!r})
        emb = encode_store(model, TokenizedStore({str(store.folder)!r}), "doc", {str(tmp_path / 'emb')!r},
                           batch_size=2, show_progress=False, checkpoint_seconds=0)
        print(emb.manifest["key"])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    keys = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert keys[0] == keys[1] and keys[0]
    assert not (tmp_path / "emb.partial").exists()


def test_every_encoding_path_runs_the_same_batches_bit_for_bit(model, store, tmp_path):
    """In-memory, resumable (store), one-process sharded and training encodings share one loop:
    with the same batch size they give the very same float32 bytes."""
    import torch

    from hardneg.index.shards import sharded_encode_token_lists
    from hardneg.model.encoding import encode_batches, encode_token_lists
    from hardneg.train.steps import encode_rows

    rows = store.rows(range(len(store)))
    in_memory = encode_token_lists(model, rows, "doc", batch_size=5)
    stored = encode_store(model, store, "doc", tmp_path / "emb", batch_size=5, show_progress=False)
    assert np.asarray(stored.vectors).tobytes() == in_memory.tobytes()
    assert sharded_encode_token_lists(model, rows, "doc", batch_size=5).tobytes() == in_memory.tobytes()
    model.eval()
    with torch.no_grad():
        trained = encode_rows(model, rows, "doc", 5)
    assert trained.float().numpy().tobytes() == in_memory.tobytes()
    # the loop itself: batches in order from `start`, each padded to its own longest row
    batches = length_sorted_batches(store.lengths, 5)
    with torch.inference_mode():
        got = list(encode_batches(model, store.rows, batches, "doc", start=2))
    assert [b for b, _ in got] == list(range(2, len(batches)))
    for b, emb in got:
        assert emb.float().numpy().tobytes() == in_memory[batches[b]].tobytes()


def test_fp32_embeddings_keys_are_unchanged_and_other_precisions_are_keyed_apart():
    """The key of fp32 embeddings is the one made before precisions existed (so every cached fp32 folder stays
    valid); bf16/fp16 each get their own."""
    from hardneg.index.encode import embeddings_key

    identity, manifest = {"source": "m", "weights": {"doc": "abc"}}, {"content": "c1", "max_length": 32, "prefix": ""}
    fp32 = embeddings_key(identity, manifest, "doc")
    assert fp32 == embeddings_key(identity, manifest, "doc", "fp32") == "a2ee9d9623525170"  # the key before
    keys = {embeddings_key(identity, manifest, "doc", p) for p in ("bf16", "fp16")}
    assert len(keys) == 2 and fp32 not in keys
    with pytest.raises(HardnegError, match="precision must be one of fp32, bf16, fp16, not 'fp8'"):
        embeddings_key(identity, manifest, "doc", "fp8")


def test_bf16_encoding_runs_under_autocast_and_stores_float32_close_to_fp32(model, store, tmp_path, monkeypatch):
    import torch

    from hardneg.model.encoding import check_encode_precision

    seen: list[tuple[bool, torch.dtype | None]] = []
    forward = type(model).forward

    def recording(self, *args, **kwargs):
        on = torch.is_autocast_enabled("cpu")
        seen.append((on, torch.get_autocast_dtype("cpu") if on else None))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", recording)
    fp32 = encode_store(model, store, "doc", tmp_path / "fp32", batch_size=16, show_progress=False)
    assert seen and set(seen) == {(False, None)}
    seen.clear()
    check_encode_precision("bf16", model.device)
    bf16 = encode_store(model, store, "doc", tmp_path / "bf16", batch_size=16, show_progress=False, precision="bf16")
    assert seen and set(seen) == {(True, torch.bfloat16)}
    assert bf16.manifest["precision"] == "bf16" and fp32.manifest["precision"] == "fp32"
    assert bf16.manifest["key"] != fp32.manifest["key"]
    a, b = np.asarray(fp32.vectors), np.asarray(bf16.vectors)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert a.tobytes() != b.tobytes()  # really computed at another precision
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99
    np.testing.assert_allclose(b, a, atol=0.05 * np.abs(a).max())
    # a cached fp32 folder is never handed out for a bf16 request
    with pytest.raises(MismatchError):
        encode_store(model, store, "doc", tmp_path / "fp32", batch_size=16, show_progress=False, precision="bf16")
    # the sharded path encodes the same bf16 vectors under the same key
    from hardneg.index.shards import encode_shard, merge_shards

    encode_shard(model, store, "doc", tmp_path / "sharded", 0, 1, batch_size=16, show_progress=False,
                 precision="bf16")
    merged = merge_shards(tmp_path / "sharded")
    assert merged.manifest["key"] == bf16.manifest["key"]
    assert np.asarray(merged.vectors).tobytes() == b.tobytes()
    with pytest.raises(HardnegError, match="--precision must be one of"):
        check_encode_precision("half", model.device)


def test_encode_cli_precision_flag(tiny_beir, tiny_st_dir, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from hardneg.cli import app

    monkeypatch.setenv("HARDNEG_CACHE_DIR", str(tmp_path / "cache"))
    manifests = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        result = CliRunner().invoke(app, ["--quiet", "encode", f"{tiny_beir}:test", "--model", str(tiny_st_dir),
                                          "--device", "cpu", "--precision", precision, "--out", str(out)])
        assert result.exit_code == 0, result.output
        manifests[precision] = json.loads((out / "manifest.json").read_text())
    assert manifests["bf16"]["precision"] == "bf16" and manifests["bf16"]["key"] != manifests["fp32"]["key"]
    result = CliRunner().invoke(app, ["--quiet", "encode", f"{tiny_beir}:test", "--model", str(tiny_st_dir),
                                      "--precision", "fp8", "--out", str(tmp_path / "bad")])
    assert isinstance(result.exception, HardnegError), result.output  # the CLI's entry point: exit 2, one line
    assert "--precision must be one of fp32, bf16, fp16, not 'fp8'" in str(result.exception)
    assert not (tmp_path / "bad").exists()
