"""The artifact cache: tokenized stores, corpus embeddings and Faiss indexes, keyed by what made them.

Each artifact lives under the cache folder (``cache_dir``, else
:func:`hardneg.data.cache.default_cache_dir`) in a folder named by a key of its inputs (tokenizer, max
length, prefix, corpus fingerprint, encoder weights), so a second request with
the same model and corpus reuses it; building one is locked, resumable where it
is long (encoding), and committed atomically.

Under torchrun, ``over_ranks=True`` shares a corpus encoding out over the ranks (every rank calls it; each
encodes its shard, one merges: :func:`hardneg.index.shards.encode_over_ranks`); everything else here is built
once by whichever process takes its lock first while the others wait on that lock, never in a collective, and
then load it.
"""

from __future__ import annotations

from pathlib import Path

from hardneg.data.cache import cache_dir_or_default
from hardneg.data.tokenized import StoreSpec, open_or_build_store, texts_fingerprint
from hardneg.index.encode import Embeddings, embeddings_key, encode_store
from hardneg.index.faiss_index import FaissIndex
from hardneg.index.shards import encode_over_ranks
from hardneg.io import file_lock
from hardneg.model.fingerprints import tokenizer_fingerprint


def side_store(
    model,
    dataset,
    side: str = "doc",
    cache_dir: Path | None = None,
    *,
    folder: Path | None = None,
    max_length: int | None = None,
    show_progress: bool = True,
):
    """The tokenized store of ``dataset``'s corpus (``side="doc"``) or split queries (``"query"``)
    for ``model``'s tower of that side: reused from ``folder`` (default: a cache folder keyed by
    tokenizer, max length, prefix and content) when it matches, built there otherwise."""
    if side == "doc":
        records, content = (lambda: ((d.doc_id, d.full_text()) for d in dataset.iter_docs())), dataset.fingerprint()
    else:
        pairs = [(q.query_id, q.text) for q in dataset.queries().values()]
        records, content = (lambda: iter(pairs)), texts_fingerprint(pairs)
    spec = StoreSpec(
        tokenizer=tokenizer_fingerprint(model.tokenizer),
        max_length=max_length or model.max_length(side),
        prefix=model.prefix(side),
        content=content,
    )
    name = "docs" if side == "doc" else "queries"
    folder = Path(folder) if folder else cache_dir_or_default(cache_dir) / "tokenized" / (
        f"{dataset.name}-{name}-{spec.key()}")
    return open_or_build_store(records, model.tokenizer, spec, folder, show_progress=show_progress,
                               description=f"tokenize {dataset.name} {name}")


def corpus_store(model, dataset, cache_dir: Path | None = None, show_progress: bool = True):
    """The tokenized store of ``dataset``'s corpus for ``model``'s document side (built once)."""
    return side_store(model, dataset, "doc", cache_dir, show_progress=show_progress)


def corpus_embeddings(
    model,
    dataset,
    cache_dir: Path | None = None,
    *,
    batch_size: int = 64,
    show_progress: bool = True,
    out: Path | None = None,
    over_ranks: bool = False,
    precision: str = "fp32",
) -> Embeddings:
    """Encode ``dataset``'s corpus with the document tower (cached and resumable). ``over_ranks``: under
    torchrun every rank calls this and encodes its share (:func:`~hardneg.index.shards.encode_over_ranks`)."""
    cache_dir = cache_dir_or_default(cache_dir)
    store = corpus_store(model, dataset, cache_dir, show_progress=show_progress)
    key = embeddings_key(model.side_identity("doc"), store.manifest, "doc", precision)
    out = Path(out) if out else cache_dir / "embeddings" / f"{dataset.name}-{key}"
    if over_ranks:
        return encode_over_ranks(model, store, "doc", out, batch_size=batch_size, show_progress=show_progress,
                                 precision=precision)
    return encode_store(model, store, "doc", out, batch_size=batch_size, show_progress=show_progress,
                        precision=precision)


def corpus_index(
    model,
    dataset,
    kind: str = "flat",
    cache_dir: Path | None = None,
    *,
    batch_size: int = 64,
    show_progress: bool = True,
    over_ranks: bool = False,
    precision: str = "fp32",
) -> FaissIndex:
    """The Faiss index of ``dataset``'s corpus under ``model`` (built once, then loaded). ``over_ranks``: under
    torchrun every rank calls this, the corpus encoding is shared out over the ranks, and the index is built
    by the first rank to take its lock while the others wait on the lock (not in a collective), then load it."""
    cache_dir = cache_dir_or_default(cache_dir)
    emb = corpus_embeddings(model, dataset, cache_dir, batch_size=batch_size, show_progress=show_progress,
                            over_ranks=over_ranks, precision=precision)
    key = emb.manifest["key"]
    folder = cache_dir / "indexes" / f"{dataset.name}-{key}-{kind.replace(':', '_').replace(',', '_')}"
    with file_lock(f"{folder}.lock"):
        if (folder / "manifest.json").is_file():
            return FaissIndex.load(folder, expect_key=key)
        index = FaissIndex.from_embeddings(emb, kind)
        index.save(folder)
        return index


def index_mismatches(manifest: dict, encoder, dataset=None) -> list[str]:
    """What makes a saved index (its ``manifest.json``) unfit to be searched with ``encoder``'s query
    tower over ``dataset``: dimension, tokenizer, document-tower weights, pooling, normalisation, and
    the corpus (content hash) it was built from. Empty when it fits."""
    source = manifest.get("source") or {}
    built_by = source.get("encoder") or {}
    problems = []
    if manifest.get("dim") is not None and int(manifest["dim"]) != encoder.dim:
        problems.append(f"dimension {manifest['dim']} vs the model's {encoder.dim}")
    if built_by:
        mine = encoder.identity()
        theirs_cfg, my_cfg = built_by.get("config") or {}, mine["config"]
        for name, a, b in (
            ("tokenizer", built_by.get("tokenizer"), mine["tokenizer"]),
            ("document-tower weights", (built_by.get("weights") or {}).get("doc"), mine["weights"]["doc"]),
            ("pooling", theirs_cfg.get("pooling"), my_cfg["pooling"]),
            ("normalisation", theirs_cfg.get("normalize"), my_cfg["normalize"]),
        ):
            if a is not None and a != b:
                problems.append(f"{name} differ ({a!r} vs {b!r})" if name in ("pooling", "normalisation")
                                else f"{name} differ")
    content = source.get("content")
    if content and dataset is not None and getattr(dataset, "has_corpus", False):
        if dataset.fingerprint() != content:
            problems.append(f"built from another corpus than {dataset.corpus_path or dataset.name}")
    return problems
