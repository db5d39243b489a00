"""A small slice of a BEIR folder, for smoke runs and tests on real text (:func:`slice_beir`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from hardneg.errors import HardnegError

__all__ = ["slice_beir"]


def _qrels(src: Path, split: str) -> list[list[str]]:
    path = src / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise HardnegError(f"{path}: no such qrels file (a BEIR folder has qrels/<split>.tsv)")
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line]


def slice_beir(src: str | Path, out: str | Path, *, n_docs: int, n_relevant: int,
               splits: Sequence[str] = ("train",)) -> Path:
    """Write to ``out`` a BEIR folder of ``n_docs`` documents of ``src``: the first ``n_relevant`` distinct
    relevant documents of each split's qrels (in file order), then the corpus's first other documents; each
    split's qrels restricted to the kept documents and the queries to those with a kept qrel. Returns ``out``."""
    src, out = Path(src), Path(out)
    rows = {split: _qrels(src, split) for split in splits}
    wanted: dict[str, None] = {}
    for split in splits:
        mine = list(dict.fromkeys(d for _, d, _ in rows[split]))[:n_relevant]
        wanted.update(dict.fromkeys(mine))
    docs: dict[str, str] = {}
    extra: list[str] = []
    with open(src / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            doc_id = json.loads(line)["_id"]
            if doc_id in wanted:
                docs[doc_id] = line if line.endswith("\n") else line + "\n"
            elif len(extra) < n_docs - len(wanted):
                extra.append(line if line.endswith("\n") else line + "\n")
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join([*docs.values(), *extra]), encoding="utf-8")
    qids: set[str] = set()
    for split in splits:
        kept = [r for r in rows[split] if r[1] in docs]
        qids |= {q for q, _, _ in kept}
        (out / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
            "\t".join(r) + "\n" for r in kept), encoding="utf-8")
    lines = (src / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    (out / "queries.jsonl").write_text("".join(line + "\n" for line in lines
                                               if line and json.loads(line)["_id"] in qids), encoding="utf-8")
    return out
