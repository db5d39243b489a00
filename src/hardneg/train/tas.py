"""TAS batches (``--batch-composition tas``): every micro-batch drawn from a few topic clusters of the queries.

Hofstätter et al., "Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware Sampling"
(SIGIR 2021): the training queries are clustered by the start model's query embeddings (k-means), and a batch
is composed from ``C`` sampled clusters instead of the whole training set, so its in-batch negatives share a
topic (harder than random ones). Here:

* **clusters**: k-means (Faiss ``Kmeans``, seeded with ``--seed``, 20 iterations) of the start model's query
  vectors of every training query, ``--tas-clusters K`` centroids (default: TAS-B's 2000 on MS MARCO, or one
  per 20 training queries on smaller sets). They are computed once at setup and kept in
  ``OUT/tas/clusters.json`` (with what they depend on); a rerun or ``--resume`` of the run reads them back.
  Under torchrun every rank computes them (the same work) and rank 0's are used by all.
* **batches** (:class:`TasOrder`): each *global* micro-batch (``batch_size × processes`` examples; under
  torchrun it is then split over the ranks as a random one is) holds the examples of at most
  ``--tas-clusters-per-batch C`` clusters. Epoch ``e`` is composed from ``(seed, e)`` alone: each cluster's
  examples are shuffled, then batch after batch ``C`` clusters are drawn (without replacement, with
  probability proportional to their examples not yet used this epoch) and the batch takes their unused
  examples in turn (round-robin). When those ``C`` clusters have fewer unused examples than a batch needs,
  it is filled with other examples of the same clusters already used this epoch (so an epoch covers every
  example at least once, and a few twice), and only when the ``C`` clusters together hold fewer examples
  than a batch, with examples of further clusters (the one case with more than ``C``: choose ``K`` so that
  ``C`` clusters hold a batch). Epochs therefore have slightly different numbers of batches; the order is
  still a pure function of ``(seed, step)`` and the clusters, so ``--resume`` needs only the step number.
* TAS-B's *balanced* half (negatives drawn evenly over bins of the teacher's margin ``s⁺ - s⁻``) is a
  negative-sampling rule, ``--sampling-strategy balanced`` (:mod:`hardneg.negatives.rules`), for the methods
  that draw hard negatives; it combines with these batches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardneg import distributed as dist
from hardneg.errors import HardnegError
from hardneg.io import read_json, write_json
from hardneg.model.encoding import encode_texts
from hardneg.train.order import DataOrder, Example

__all__ = ["CLUSTERS_FILE", "TasOrder", "default_clusters", "make_data_order", "query_clusters"]

#: ``OUT/tas/clusters.json``: ``{"key": …, "clusters": {qid: cluster}}``
CLUSTERS_FILE = Path("tas") / "clusters.json"
_STREAM_TAS = 11


def default_clusters(n_queries: int) -> int:
    """TAS-B's 2000 clusters (MS MARCO's 400k training queries), or one per 20 queries on smaller sets."""
    return max(1, min(2000, n_queries // 20))


def query_clusters(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The k-means cluster (``0 … k-1``) of every row of ``vectors`` (Faiss ``Kmeans``, seeded, 20 iterations)."""
    import faiss

    n = len(vectors)
    if not 1 <= k <= n:
        raise HardnegError(f"--tas-clusters {k}: k-means needs between 1 and the {n} training queries clusters; "
                           "lower --tas-clusters")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=int(seed) % (1 << 31), min_points_per_centroid=1,
                      max_points_per_centroid=max(256, -(-n // k)), verbose=False)
    km.train(x)
    _, labels = km.index.search(x, 1)
    return labels[:, 0].astype(np.int64)


class TasOrder:
    """Which examples make up micro-batch ``(step, micro)`` under TAS (see the module doc); the interface of
    :class:`~hardneg.train.order.DataOrder`. ``clusters[i]``: the cluster of example ``i``."""

    def __init__(self, clusters: Sequence[int], batch_size: int, grad_accum: int, seed: int, per_batch: int) -> None:
        self.clusters = np.asarray(clusters, dtype=np.int64)
        self.n, self.batch_size, self.grad_accum, self.seed = len(self.clusters), batch_size, grad_accum, seed
        self.per_batch = per_batch
        if batch_size > self.n:
            raise HardnegError(f"batch of {batch_size} examples is larger than the {self.n} training examples")
        self._members = [np.flatnonzero(self.clusters == c) for c in np.unique(self.clusters)]
        self._counts: list[int] = []  # batches of epochs 0, 1, … (composed so far)
        self._cache: dict[int, list[np.ndarray]] = {}  # the last two composed epochs (a step may span two)

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """Epoch ``epoch``'s batches (example indices), a pure function of ``(seed, epoch)``."""
        if epoch in self._cache:
            return self._cache[epoch]
        rng = np.random.default_rng([int(self.seed), _STREAM_TAS, int(epoch)])
        queues = [rng.permutation(m) for m in self._members]
        used = np.zeros(len(queues), dtype=np.int64)
        sizes = np.array([len(q) for q in queues], dtype=np.int64)
        batches: list[np.ndarray] = []
        while (left := sizes - used).sum() > 0:
            alive = np.flatnonzero(left)
            picked = rng.choice(alive, size=min(self.per_batch, len(alive)), replace=False,
                                p=left[alive] / left[alive].sum())
            batch: list[int] = []
            while len(batch) < self.batch_size and any(used[c] < sizes[c] for c in picked):
                for c in picked:  # round-robin over the picked clusters' unused examples
                    if used[c] < sizes[c] and len(batch) < self.batch_size:
                        batch.append(int(queues[c][used[c]]))
                        used[c] += 1
            if len(batch) < self.batch_size:
                self._fill(batch, picked, queues, used, rng)
            batches.append(np.asarray(batch, dtype=np.int64))
        self._cache = {e: b for e, b in self._cache.items() if e == epoch - 1 or e == epoch + 1}
        self._cache[epoch] = batches
        return batches

    def _fill(self, batch: list[int], picked: np.ndarray, queues: list[np.ndarray], used: np.ndarray,
              rng: np.random.Generator) -> None:
        """Fill a short ``batch``: with the picked clusters' examples used earlier this epoch, then (only when
        those clusters hold fewer than a batch) with further clusters' unused, then used, examples."""
        taken = set(batch)
        for c in picked:
            for i in queues[c][: used[c]].tolist():
                if len(batch) == self.batch_size:
                    return
                if i not in taken:
                    batch.append(i)
                    taken.add(i)
        mine = set(picked.tolist())
        for c in rng.permutation(len(queues)).tolist():
            if len(batch) == self.batch_size:
                return
            if c in mine:
                continue
            before = int(used[c])
            fresh = queues[c][before:][: self.batch_size - len(batch)].tolist()
            batch.extend(fresh)
            used[c] += len(fresh)
            batch.extend(queues[c][:before][: self.batch_size - len(batch)].tolist())

    def _count(self, epoch: int) -> int:
        while len(self._counts) <= epoch:
            self._counts.append(len(self.epoch(len(self._counts))))
        return self._counts[epoch]

    def _locate(self, micro_index: int) -> tuple[int, int]:
        """``(epoch, batch within it)`` of the ``micro_index``-th global micro-batch of the run."""
        epoch = 0
        while micro_index >= self._count(epoch):
            micro_index -= self._count(epoch)
            epoch += 1
        return epoch, micro_index

    def indices(self, step: int, micro: int) -> tuple[list[int], int]:
        """Example indices of the micro-batch and the global position of its first example."""
        index = step * self.grad_accum + micro
        epoch, j = self._locate(index)
        return [int(i) for i in self.epoch(epoch)[j]], index * self.batch_size

    def epoch_of(self, step: int) -> float:
        epoch, j = self._locate(step * self.grad_accum)
        return epoch + j / self._count(epoch)


def _clusters_key(model: Any, qids: Sequence[str], k: int, seed: int) -> str:
    raw = json.dumps([model.side_identity("query"), list(qids), k, seed], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _cluster_queries(cfg: Any, qids: list[str], model: Any, queries: Mapping) -> dict[str, int]:
    """``qid -> cluster`` of the training queries: read from ``OUT/tas/clusters.json`` when it was made by
    this run's settings, else computed (every rank; rank 0's kept and written)."""
    k = cfg.tas_clusters or default_clusters(len(qids))
    key = _clusters_key(model, qids, k, cfg.seed)
    path = Path(cfg.out) / CLUSTERS_FILE
    saved = read_json(path) if path.is_file() else {}
    if saved.get("key") == key:
        found = dict(saved["clusters"])
    else:
        was_training = model.training
        model.eval()
        vectors = encode_texts(model, [queries[q].text for q in qids], "query", batch_size=cfg.batch_encode_size,
                               precision=cfg.precision)
        model.train(was_training)
        found = dict(zip(qids, query_clusters(vectors, k, cfg.seed).tolist(), strict=True))
    found = dist.broadcast_object(found)
    if saved.get("key") != key and dist.is_main():
        write_json(path, {"key": key, "k": k, "seed": cfg.seed, "clusters": found})
    return found


def make_data_order(cfg: Any, examples: Sequence[Example], global_batch: int, model: Any,
                    queries: Mapping) -> DataOrder | TasOrder:
    """The run's data order: :class:`~hardneg.train.order.DataOrder` (``--batch-composition random``) or
    :class:`TasOrder` over the clusters of the examples' queries (``tas``)."""
    if cfg.batch_composition != "tas":
        return DataOrder(len(examples), global_batch, cfg.grad_accum, cfg.seed)
    qids = sorted({e.qid for e in examples})
    of = _cluster_queries(cfg, qids, model, queries)
    return TasOrder([of[e.qid] for e in examples], global_batch, cfg.grad_accum, cfg.seed,
                    cfg.tas_clusters_per_batch)
