"""Resolving dataset specs to a lazy :class:`~hardneg.data.dataset.Dataset`.

Which datasets a spec names (:func:`load_dataset`, :func:`parse_spec`)::

    path/to/beir-folder[:split]      corpus.jsonl, queries.jsonl, qrels/<split>.tsv
    path/to/msmarco-folder[:split]   collection.tsv, queries.<split>.tsv, qrels.<split>.tsv
    path/to/smart-folder             X.ALL, X.QRY, X.REL (one query set, no splits)
    path/to/cranfield-folder         cran.all.1400, cran.qry, QRelsCorrectedforTRECeval|cranqrel
    path/to/trec-folder              TREC <DOC> files or a document archive, *topic*|*quer*, *qrel*
    path/to/archive.zip[:split]      a zipped/tarred dataset folder (unpacked once into the cache)
    path/to/hf-folder[:split]        Hugging Face `datasets` save_to_disk folders with BEIR columns:
                                     corpus/, queries/, qrels/ (DatasetDict of splits or <split>.tsv)
    irds:<ir_datasets id>[:split]    e.g. irds:beir/scifact/test, or irds:beir/scifact:test for the
                                     same id (pip install 'hardneg[irds]')

Every file may also be ``X.gz``/``X.bz2``/``X.xz`` (``corpus.jsonl.gz`` is found as the corpus).
The folder layout is detected here; file contents are read on demand.
"""

from __future__ import annotations

from pathlib import Path

from hardneg.data.cache import cache_dir_or_default
from hardneg.data.dataset import CranfieldDataset, Dataset, HfDataset, IrdsDataset, SmartDataset, TrecDataset
from hardneg.data.formats.archive import archive_stem, dataset_archive_folder
from hardneg.data.formats.classic import cranfield_files, is_archive, trec_folder
from hardneg.data.formats.hf import hf_layout
from hardneg.data.formats.irds import open_irds
from hardneg.data.formats.smart import smart_files
from hardneg.data.formats.trec import parse_topic_field
from hardneg.data.lines import find_variant, logical_name
from hardneg.errors import InputError

__all__ = ["irds_split_id", "load_dataset", "parse_spec"]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"path[:split]"`` into ``(path, split)``; ``"irds:<id>"`` -> ``("irds:<id>", None)``.

    The colon is a split separator only when the part after it has no ``/``
    and the whole string is not an existing path. ``ir_datasets`` ids have no colon, so in
    ``irds:<id>:<split>`` the first colon after the id starts the split (which may hold ``/``:
    ``irds:msmarco-passage:dev/small``); see :func:`irds_split_id`.
    """
    spec = spec.strip()
    if spec.startswith("irds:"):
        irds_id, sep, split = spec[len("irds:") :].partition(":")
        if not sep:
            return spec, None
        if not split or not irds_id:
            raise InputError(
                f"dataset spec {spec!r} names no " + ("split after ':'" if irds_id else "ir_datasets id"),
                hint="write irds:<id> (e.g. irds:beir/scifact/test) or irds:<id>:<split> (irds:beir/scifact:test)",
            )
        return f"irds:{irds_id}", split
    if ":" not in spec or Path(spec).exists():
        return spec, None
    path, split = spec.rsplit(":", 1)
    if "/" in split or "\\" in split or not path:
        return spec, None
    if not split:
        raise InputError(
            f"dataset spec {spec!r} ends with ':' but names no split",
            hint="write path:split (e.g. scifact:test) or just the path",
        )
    return path, split


def irds_split_id(irds_id: str, split: str | None) -> str:
    """The ``ir_datasets`` id of ``split`` of ``irds_id``: ``beir/scifact`` + ``test`` -> ``beir/scifact/test``.

    An id that already ends with the split is kept (``beir/scifact/train`` + ``train``), so a command that
    appends its default split (training's ``:train``) to a one-split id still loads that id.
    """
    irds_id = irds_id.strip("/")
    if split is None or irds_id == split or irds_id.endswith(f"/{split}"):
        return irds_id
    return f"{irds_id}/{split}"


def _must_exist(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        reason = "is a directory, not a file" if p.is_dir() else "file not found"
        raise InputError(reason, path=p, hint=f"give an existing {what} file")
    return p


def _beir_paths(
    root: Path, split: str | None, qrels_override: Path | None
) -> tuple[Path | None, Path | None, Path | None]:
    corpus = find_variant(root, "corpus.jsonl")
    queries = find_variant(root, "queries.jsonl")
    qrels = None
    if split is not None and qrels_override is None:
        qrels_dir = root / "qrels"
        qrels = find_variant(qrels_dir, f"{split}.tsv") if qrels_dir.is_dir() else None
        if qrels is None:
            available = (
                sorted({Path(n).stem for p in qrels_dir.iterdir() if (n := logical_name(p)).endswith(".tsv")})
                if qrels_dir.is_dir() else []
            )
            raise InputError(
                f"split {split!r} not found: no qrels/{split}.tsv",
                path=root,
                hint=(
                    f"available splits: {', '.join(available)}"
                    if available
                    else "this folder has no qrels/ splits; omit ':split' or pass qrels="
                ),
            )
    return corpus, queries, qrels


def _msmarco_split_name(name: str) -> str | None:
    for prefix in ("queries.", "topics.", "qrels."):
        if name.startswith(prefix):
            stem = name[len(prefix) :]
            for suffix in (".tsv", ".txt"):
                if stem.endswith(suffix) and len(stem) > len(suffix):
                    return stem[: -len(suffix)]
    return None


def _msmarco_paths(
    root: Path, split: str | None, q_override: Path | None, r_override: Path | None
) -> tuple[Path | None, Path | None, Path | None]:
    # names without a compression suffix; the plain file wins over X.gz (sorted first)
    files = sorted((p for p in root.iterdir() if p.is_file()), key=lambda p: (logical_name(p), p.name))
    names: dict[str, Path] = {}
    for p in files:
        names.setdefault(logical_name(p), p)
    files = list(names.values())
    query_files = [
        p
        for p in files
        if logical_name(p).startswith(("queries", "topics")) and Path(logical_name(p)).suffix in {".tsv", ".txt"}
    ]
    qrels_files = [p for p in files if "qrels" in logical_name(p).lower()]
    splits = sorted({s for p in files if (s := _msmarco_split_name(logical_name(p))) is not None})
    corpus = names.get("collection.tsv")

    def by_split(candidates: list[str], prefixes: tuple[str, ...]) -> Path | None:
        assert split is not None
        for c in candidates:
            if c in names:
                return names[c]
        loose = [p for p in files if logical_name(p).startswith(tuple(f"{x}{split}" for x in prefixes))]
        return loose[0] if len(loose) == 1 else None

    def single(found: list[Path], preferred: str | None, what: str) -> Path | None:
        if preferred is not None and preferred in names:
            return names[preferred]
        if len(found) <= 1:
            return found[0] if found else None
        raise InputError(
            f"several {what} files ({', '.join(p.name for p in found)}) and none named for"
            + (f" split {split!r}" if split is not None else " a split"),
            path=root,
            hint=f"write path:split with one of: {', '.join(splits) or 'none'};"
            f" or pass {what}= explicitly",
        )

    q_path: Path | None = q_override
    r_path: Path | None = r_override
    if split is not None:
        if q_path is None:
            q_path = by_split(
                [f"queries.{split}.tsv", f"topics.{split}.txt", f"topics.{split}.tsv"],
                ("queries.", "topics."),
            )
        if r_path is None:
            r_path = by_split([f"qrels.{split}.tsv", f"qrels.{split}.txt"], ("qrels.",))
        if q_path is None and r_path is None:
            raise InputError(
                f"split {split!r} not found: no queries.{split}.tsv or qrels.{split}.tsv",
                path=root,
                hint=f"available splits: {', '.join(splits) or 'none'}; or pass queries=/qrels=",
            )
    if q_path is None:
        q_path = single(query_files, "queries.tsv", "queries")
    if r_path is None:
        r_path = single(qrels_files, None, "qrels")
    return corpus, q_path, r_path


def load_dataset(
    spec: str,
    *,
    queries: str | Path | None = None,
    qrels: str | Path | None = None,
    topic_field: str = "title",
    cache_dir: str | Path | None = None,
) -> Dataset:
    """Resolve a dataset spec (``path[:split]`` or ``irds:<id>``) to a lazy :class:`Dataset`.

    ``queries=``/``qrels=`` replace the files the split would use (e.g. TREC
    DL's graded ``2019qrels-pass.txt`` for ``msmarco/dl19-subset``). File
    existence and the split are checked here; contents are read on demand.
    ``topic_field`` (``title``, ``desc``, ``title+desc``) picks the query text of TREC
    ``<top>`` topic files. A ``.zip``/``.tar.gz`` archive of a dataset folder is unpacked
    once into ``cache_dir`` (default :func:`~hardneg.data.cache.default_cache_dir`;
    :mod:`hardneg.data.formats.archive`) and loaded as that folder.
    """
    parse_topic_field(topic_field)
    path_str, split = parse_spec(spec)
    q_override = _must_exist(queries, "queries") if queries is not None else None
    r_override = _must_exist(qrels, "qrels") if qrels is not None else None
    if path_str.startswith("irds:"):
        base = path_str[len("irds:") :]
        irds_id = irds_split_id(base, split)
        ds: Dataset = IrdsDataset(
            irds_id, open_irds(irds_id), queries_path=q_override, qrels_path=r_override, split=split,
            base_id=base.strip("/") if split is not None and irds_id != base.strip("/") else None,
        )
        ds.topic_field = topic_field
        return ds
    ds = _load_path(path_str, split, q_override, r_override, cache_dir_or_default(cache_dir))
    ds.topic_field = topic_field
    return ds


def _load_path(path_str: str, split: str | None, q_override: Path | None, r_override: Path | None,
               cache_dir: Path) -> Dataset:
    """The dataset at a path (see :func:`load_dataset`); an archive is unpacked under ``cache_dir``."""
    root = Path(path_str)
    if not root.exists():
        raise InputError(
            "dataset path not found",
            path=root,
            hint="give a BEIR folder (corpus.jsonl), an MS MARCO folder (collection.tsv),"
            " optionally with :split, or irds:<id>",
        )
    if root.is_file() and is_archive(root):
        folder = dataset_archive_folder(root, cache_dir)
        ds = _load_path(str(folder), split, q_override, r_override, cache_dir)
        if folder.name.startswith(f"{archive_stem(root)}-"):  # the archive's top level is the dataset
            ds.name = archive_stem(root)
        return ds
    if root.is_file():
        if split is not None:
            raise InputError(
                f"a split ({split!r}) needs a dataset folder, not a single file",
                path=root,
                hint="pass queries=/qrels= with a corpus file",
            )
        name = root.parent.name or root.stem
        return Dataset(
            name,
            None,
            corpus_path=root,
            queries_path=q_override,
            qrels_path=r_override,
            root=root.parent,
        )
    hf = _hf_dataset(root, split, q_override, r_override)
    if hf is not None:
        return hf
    is_beir = (
        find_variant(root, "corpus.jsonl") is not None
        or find_variant(root, "queries.jsonl") is not None
        or (root / "qrels").is_dir()
    )
    classic = None if is_beir else _classic_dataset(root, split, q_override, r_override)
    if classic is not None:
        return classic
    if is_beir:
        corpus, q_path, r_path = _beir_paths(root, split, r_override)
        q_path = q_override or q_path
        r_path = r_override or r_path
    else:
        corpus, q_path, r_path = _msmarco_paths(root, split, q_override, r_override)
        if corpus is None and q_path is None and r_path is None:
            found = ", ".join(sorted(p.name for p in root.iterdir())[:10]) or "nothing"
            raise InputError(
                f"not a dataset folder (found: {found})",
                path=root,
                hint="expected corpus.jsonl/queries.jsonl/qrels/ (BEIR) or collection.tsv,"
                " queries*.tsv, *qrels* (MS MARCO)",
            )
    return Dataset(
        root.resolve().name,
        split,
        corpus_path=corpus,
        queries_path=q_path,
        qrels_path=r_path,
        root=root,
    )


def _classic_dataset(
    root: Path, split: str | None, q_override: Path | None, r_override: Path | None
) -> Dataset | None:
    """A SMART, Cranfield or TREC-folder dataset at ``root``, else ``None`` (one query set, no splits)."""
    name = root.resolve().name
    smart = smart_files(root)
    cran = cranfield_files(root) if smart is None else None
    trec = trec_folder(root) if smart is None and cran is None and find_variant(root, "collection.tsv") is None \
        else None
    if smart is None and cran is None and trec is None:
        return None
    kind = "SMART collection (X.ALL/X.QRY/X.REL)" if smart else "Cranfield collection" if cran else "TREC folder"
    if split is not None:
        raise InputError(f"a {kind} has one query set and no splits", path=root,
                         hint="give the folder without :split")
    if smart is not None or cran is not None:
        if r_override is not None or q_override is not None:
            raise InputError(f"a {kind} has one query set and no splits", path=root,
                             hint="give the folder without :split or overrides")
        docs, queries, qrels = smart or cran  # type: ignore[misc]
        cls = SmartDataset if smart is not None else CranfieldDataset
        return cls(name, None, corpus_path=docs, queries_path=queries, qrels_path=qrels, root=root)
    assert trec is not None
    corpus, queries, qrels = trec
    return TrecDataset(name, None, corpus_files=corpus, queries_path=q_override or queries,
                       qrels_path=r_override or qrels, root=root)


def _hf_dataset(root: Path, split: str | None, q_override: Path | None, r_override: Path | None) -> Dataset | None:
    """A Hugging Face ``datasets`` folder at ``root`` (:func:`~hardneg.data.formats.hf.hf_layout`), else ``None``."""
    layout = hf_layout(root)
    if layout is None:
        return None
    qrels = r_override or layout.qrels_for(split)
    return HfDataset(root.resolve().name, split, corpus=layout.corpus, queries=q_override or layout.queries,
                     qrels=qrels, root=root)
