"""Resolving dataset specs to a lazy :class:`~hardneg.data.dataset.Dataset`.

Which datasets a spec names (:func:`load_dataset`, :func:`parse_spec`)::

    path/to/beir-folder[:split]      corpus.jsonl, queries.jsonl, qrels/<split>.tsv
    path/to/msmarco-folder[:split]   collection.tsv, queries.<split>.tsv, qrels.<split>.tsv
    path/to/smart-folder             X.ALL, X.QRY, X.REL (one query set, no splits)
    irds:<ir_datasets id>            e.g. irds:beir/scifact/test (pip install 'hardneg[irds]')

The folder layout is detected here; file contents are read on demand.
"""

from __future__ import annotations

from pathlib import Path

from hardneg.data.dataset import Dataset, IrdsDataset, SmartDataset
from hardneg.data.formats.irds import open_irds
from hardneg.data.formats.smart import smart_stem
from hardneg.errors import InputError

__all__ = ["load_dataset", "parse_spec"]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"path[:split]"`` into ``(path, split)``; ``"irds:<id>"`` -> ``("irds:<id>", None)``.

    The colon is a split separator only when the part after it has no ``/``
    and the whole string is not an existing path.
    """
    spec = spec.strip()
    if spec.startswith("irds:"):
        return spec, None
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


def _must_exist(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        reason = "is a directory, not a file" if p.is_dir() else "file not found"
        raise InputError(reason, path=p, hint=f"give an existing {what} file")
    return p


def _beir_paths(
    root: Path, split: str | None, qrels_override: Path | None
) -> tuple[Path | None, Path | None, Path | None]:
    corpus = root / "corpus.jsonl"
    queries = root / "queries.jsonl"
    qrels = None
    if split is not None and qrels_override is None:
        qrels_dir = root / "qrels"
        qrels = qrels_dir / f"{split}.tsv"
        if not qrels.is_file():
            available = (
                sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
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
    return (
        corpus if corpus.is_file() else None,
        queries if queries.is_file() else None,
        qrels,
    )


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
    files = sorted(p for p in root.iterdir() if p.is_file())
    names = {p.name: p for p in files}
    query_files = [
        p
        for p in files
        if p.name.startswith(("queries", "topics")) and p.suffix in {".tsv", ".txt"}
    ]
    qrels_files = [p for p in files if "qrels" in p.name.lower()]
    splits = sorted({s for p in files if (s := _msmarco_split_name(p.name)) is not None})
    corpus = names.get("collection.tsv")

    def by_split(candidates: list[str], prefixes: tuple[str, ...]) -> Path | None:
        assert split is not None
        for c in candidates:
            if c in names:
                return names[c]
        loose = [p for p in files if p.name.startswith(tuple(f"{x}{split}" for x in prefixes))]
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
) -> Dataset:
    """Resolve a dataset spec (``path[:split]`` or ``irds:<id>``) to a lazy :class:`Dataset`.

    ``queries=``/``qrels=`` replace the files the split would use (e.g. TREC
    DL's graded ``2019qrels-pass.txt`` for ``msmarco/dl19-subset``). File
    existence and the split are checked here; contents are read on demand.
    """
    path_str, split = parse_spec(spec)
    q_override = _must_exist(queries, "queries") if queries is not None else None
    r_override = _must_exist(qrels, "qrels") if qrels is not None else None
    if path_str.startswith("irds:"):
        irds_id = path_str[len("irds:") :]
        return IrdsDataset(
            irds_id, open_irds(irds_id), queries_path=q_override, qrels_path=r_override
        )
    root = Path(path_str)
    if not root.exists():
        raise InputError(
            "dataset path not found",
            path=root,
            hint="give a BEIR folder (corpus.jsonl), an MS MARCO folder (collection.tsv),"
            " optionally with :split, or irds:<id>",
        )
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
    stem = smart_stem(root)
    if stem is not None and not (root / "corpus.jsonl").is_file():
        if split is not None or r_override is not None or q_override is not None:
            raise InputError("a SMART collection (X.ALL/X.QRY/X.REL) has one query set and no splits",
                             path=root, hint="give the folder without :split or overrides")
        return _smart_dataset(root, stem)
    is_beir = (
        (root / "corpus.jsonl").is_file()
        or (root / "queries.jsonl").is_file()
        or (root / "qrels").is_dir()
    )
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


def _smart_dataset(root: Path, stem: str) -> Dataset:
    """A lazy dataset over ``root/stem.{ALL,QRY,REL}``."""
    return SmartDataset(root.resolve().name, None, corpus_path=root / f"{stem}.ALL",
                        queries_path=root / f"{stem}.QRY", qrels_path=root / f"{stem}.REL", root=root)
