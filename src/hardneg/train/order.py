"""The training data's order: the dev carve-out, the (query, positive) examples, and which examples make up
every micro-batch.

Data order is a pure function of ``(seed, step)`` (a seeded permutation per epoch), so resuming a run needs
only the step number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hardneg.data.load import load_dataset, parse_spec
from hardneg.data.records import Qrels
from hardneg.errors import HardnegError

if TYPE_CHECKING:
    from hardneg.train.config import TrainConfig


def split_dev(qids: Sequence[str], fraction: float, seed: int, *, carve: str = "queries",
              qrels: Qrels | None = None) -> tuple[list[str], list[str]]:
    """Seeded carve-out: ``(train_qids, dev_qids)``, dev = ``round(fraction * n)`` queries (at least 1).

    ``carve="documents"``: dev takes whole groups of queries linked by a shared relevant document (from
    ``qrels``), in a seeded order, until it has at least that many, so no dev query's relevant document is
    relevant to a training query. Dev then measures what the unseen-document test stratum measures (ranking
    documents training never saw as positives) instead of rewarding memorised positives."""
    qids = sorted(qids)
    n_dev = max(1, round(fraction * len(qids)))
    if n_dev >= len(qids):
        raise HardnegError(f"cannot carve a dev split of {n_dev} queries out of {len(qids)} training queries")
    order = np.random.default_rng([seed, 7]).permutation(len(qids))
    if carve == "queries":
        dev = sorted(qids[i] for i in order[:n_dev])
    elif carve == "documents":
        if qrels is None:
            raise HardnegError("dev_carve documents needs the training qrels")
        parent = list(range(len(qids)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        owner: dict[str, int] = {}
        positives = positives_of(qrels)
        for i, q in enumerate(qids):
            for d in positives.get(q, ()):
                parent[root(i)] = root(owner.setdefault(d, i))
        groups: dict[int, list[str]] = {}
        for i in order:  # a group enters dev at its first member's seeded position
            groups.setdefault(root(int(i)), []).append(qids[int(i)])
        dev, most = [], n_dev + max(1, n_dev // 2)  # a group that would overfill dev (a giant one) is skipped
        for members in groups.values():
            if len(dev) >= n_dev:
                break
            if len(dev) + len(members) <= most:
                dev += members
        if len(dev) < n_dev:
            raise HardnegError(f"cannot carve {n_dev} dev queries by document: the training queries form too few "
                               "groups without shared relevant documents; use --dev-carve queries")
        dev = sorted(dev)
    else:
        raise HardnegError(f"dev_carve must be queries or documents, not {carve!r}")
    dev_set = set(dev)
    return [q for q in qids if q not in dev_set], dev


def carve_dev(cfg: TrainConfig, qrels: Qrels, queries: Mapping) -> tuple[list[str], list[str]]:
    """``cfg``'s seeded carve-out of the training queries that have text: ``(train_qids, dev_qids)`` (the one
    rule the trainer and the experiment's dev evaluations share)."""
    return split_dev([q for q in qrels if q in queries], cfg.dev_fraction, cfg.seed, carve=cfg.dev_carve,
                     qrels=qrels)


@dataclass
class TrainDevSplit:
    """The training queries and the dev set a config selects on (:func:`train_dev_split`)."""

    dataset: Any  #: the training split's dataset
    dev_dataset: Any  #: the dev split's dataset (``dataset`` itself when dev is carved out of training)
    train_qids: list[str]  #: sorted
    dev_qids: list[str]  #: sorted
    train_qrels: dict[str, dict[str, int]]
    dev_qrels: dict[str, dict[str, int]]
    train_queries: dict[str, Any]  #: query id -> query record
    dev_queries: dict[str, Any]


def train_dev_split(cfg: TrainConfig, cache_dir: str | None = None) -> TrainDevSplit:
    """THE selection of training and dev queries every consumer shares (the trainer, an experiment's dev
    evaluations, the sentence-transformers peer): ``cfg.data``'s training queries that have text and qrels,
    and as dev either ``cfg.dev_split``'s such queries or :func:`carve_dev`'s seeded carve-out of the training
    queries. ``cache_dir``: where datasets are cached (default ``cfg.cache_dir``)."""
    path, split = parse_spec(cfg.data)
    cache_dir = cache_dir if cache_dir is not None else cfg.cache_dir
    dataset = load_dataset(f"{path}:{split or 'train'}", cache_dir=cache_dir)
    qrels, queries = dataset.qrels(), dataset.queries()
    if not qrels:
        raise HardnegError(f"{cfg.data}: the training split has no qrels")
    if cfg.dev_split:
        dev_dataset = load_dataset(f"{path}:{cfg.dev_split}", cache_dir=cache_dir)
        dev_qrels, dev_queries = dev_dataset.qrels(), dev_dataset.queries()
        train_qids = sorted(q for q in qrels if q in queries)
        dev_qids = sorted(q for q in dev_qrels if q in dev_queries)
    else:
        dev_dataset, dev_qrels, dev_queries = dataset, qrels, queries
        train_qids, dev_qids = carve_dev(cfg, qrels, queries)
    return TrainDevSplit(dataset, dev_dataset, train_qids, dev_qids,
                         {q: qrels[q] for q in train_qids}, {q: dev_qrels[q] for q in dev_qids},
                         {q: queries[q] for q in train_qids}, {q: dev_queries[q] for q in dev_qids})


def positives_of(qrels: Qrels) -> dict[str, set[str]]:
    """Every query's relevant documents (grade >= 1)."""
    return {q: {d for d, g in docs.items() if g >= 1} for q, docs in qrels.items()}


@dataclass
class Example:
    """One training example: a query and one of its relevant documents."""

    qid: str
    pos: str


class DataOrder:
    """Which examples make up micro-batch ``(step, micro)``: a seeded permutation per epoch."""

    def __init__(self, n: int, batch_size: int, grad_accum: int, seed: int) -> None:
        self.n, self.batch_size, self.grad_accum, self.seed = n, batch_size, grad_accum, seed
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def indices(self, step: int, micro: int) -> tuple[list[int], int]:
        """Example indices of the micro-batch and the global position of its first example."""
        start = (step * self.grad_accum + micro) * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, offset = divmod(pos, self.n)
            out.append(int(self._permutation(epoch)[offset]))
        return out, start

    def epoch_of(self, step: int) -> float:
        return step * self.grad_accum * self.batch_size / self.n
