"""The one training loop shared by every method.

A method is a negative source plus a loss (see :mod:`hardneg.train.methods`);
this module owns everything else: data order, batching without padding waste,
optimiser and schedule, gradient accumulation and clipping, the device
(``--device``, resolved by :mod:`hardneg.devices`), mixed precision, dev
evaluation with best-model selection, JSONL + TensorBoard logs, and
checkpoints that ``--resume`` continues exactly (model, optimiser, scheduler,
RNG state, data position, mined negatives; written and read by
:mod:`hardneg.train.checkpoint`).

Data order is a pure function of ``(seed, step)`` (a seeded permutation per
epoch), so resuming needs only the step number; negative sampling is
counter-based for the same reason.

Mixed precision follows DRhard (``train.py`` with ``--fp16``, ``model.py``'s
``amp.autocast(enabled=False)`` around the scores): autocast covers only the
encoder forward passes; embeddings are cast to fp32, and the score matrix and
every loss are computed in fp32. fp16 adds dynamic loss scaling
(``torch.amp.GradScaler``: gradients unscaled before clipping, a step with
inf/NaN gradients is skipped and does not advance the LR schedule); the
scaler's state is part of every checkpoint. bf16 needs no scaler.

Under ``torchrun`` (see :mod:`hardneg.distributed`) N processes with
``batch_size`` B train like one process with batch N·B: the data order hands
out the global micro-batch, rank ``r`` encodes slice ``r``, document embeddings
are gathered across ranks with gradients, losses are global means and
gradients are averaged. Only rank 0 writes logs, models and checkpoints; every
rank restores from them.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hardneg import distributed as dist
from hardneg.data.records import Qrels
from hardneg.errors import HardnegError
from hardneg.io import write_json
from hardneg.train.checkpoint import (
    CHECKPOINT_VERSION,
    NullLog,
    RunLog,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from hardneg.train.config import TrainConfig
from hardneg.train.methods import MethodContext, StepBatch, make_method, method_class

logger = logging.getLogger("hardneg.train")

#: logged per-step values that are counts over the batch: summed over ranks (the others are averaged)
ADDITIVE_PARTS = ("pairs", "hard_pairs", "random_pairs", "skipped_queries", "candidates", "removed_positive",
                  "removed_absolute_margin", "removed_relative_margin", "removed_max_score", "removed_range_min",
                  "removed_range_max")


# ----------------------------------------------------------------------------- data
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


def carve_dev(cfg, qrels: Qrels, queries: Mapping) -> tuple[list[str], list[str]]:
    """``cfg``'s seeded carve-out of the training queries that have text: ``(train_qids, dev_qids)`` (the one
    rule the trainer and the experiment's dev evaluations share)."""
    return split_dev([q for q in qrels if q in queries], cfg.dev_fraction, cfg.seed, carve=cfg.dev_carve,
                     qrels=qrels)


def positives_of(qrels: Qrels) -> dict[str, set[str]]:
    return {q: {d for d, g in docs.items() if g >= 1} for q, docs in qrels.items()}


@dataclass
class Example:
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


# ----------------------------------------------------------------------------- batching
def encode_rows(model, token_rows: Sequence[Sequence[int]], side: str, chunk: int,
                precision: str = "fp32") -> torch.Tensor:
    """fp32 embeddings of token rows with gradients, in the rows' order (on the model's device).

    Rows are sorted by length and encoded in chunks, each padded to its own
    longest row, so a batch mixing short and long texts wastes no compute on
    padding. With ``precision`` bf16/fp16 only the encoder forward passes run
    under autocast; the output is cast to fp32 outside it (DRhard computes scores
    under ``autocast(enabled=False)``).
    """
    from hardneg.index.encode import encode_batches, length_sorted_batches

    lengths = np.fromiter((len(r) for r in token_rows), dtype=np.int64, count=len(token_rows))
    batches = length_sorted_batches(lengths, chunk)
    order = np.concatenate(batches)
    with autocast(precision, model.device):  # the generator runs the forward passes: consume it inside
        parts = list(encode_batches(model, lambda rows: [token_rows[i] for i in rows], batches, side))
    emb = torch.cat([e for _, e in parts]).float()  # a no-op in fp32
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.from_numpy(order)] = torch.arange(len(order))
    return emb[inverse.to(emb.device)]


# ----------------------------------------------------------------------------- step timing
def clock(device: torch.device) -> float:
    """``time.perf_counter()``; on CUDA after the device's queued work has finished (no sync elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Laps:
    """Consecutive stretches of a step, timed: ``lap(key)`` adds the seconds since the previous lap (or the
    start) to ``seconds[key]``. The laps of one object never overlap, so their sum is at most the wall time.

    Logged per step as ``t_<part>`` (:data:`TIMING_PREFIX`), summed over micro-batches."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._last = clock(device)

    def lap(self, key: str) -> float:
        now = clock(self.device)
        spent = now - self._last
        self.seconds[key] = self.seconds.get(key, 0.0) + spent
        self._last = now
        return spent


#: logged per-step values that are seconds of a part of the step: summed over micro-batches
TIMING_PREFIX = "t_"


# ----------------------------------------------------------------------------- optimiser
def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    from pytorch_optimizer import Lamb

    return Lamb(groups, lr=config.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    from transformers import get_linear_schedule_with_warmup

    warmup = int(config.warmup_ratio * config.max_steps)
    return get_linear_schedule_with_warmup(optimizer, warmup, config.max_steps)


def autocast(precision: str, device: torch.device):
    """Autocast for the encoder forward passes at ``precision`` (nothing for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_precision(precision: str, device: torch.device) -> None:
    """A clear error when ``device`` cannot run ``precision`` (before any work)."""
    if precision == "fp32":
        return
    if not torch.amp.is_autocast_available(device.type):
        raise HardnegError(f"--precision {precision}: torch {torch.__version__} has no autocast on {device}; "
                           "use --precision fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise HardnegError(f"--precision bf16: {device} ({torch.cuda.get_device_name(device)}) does not "
                           "support bfloat16; use --precision fp16 or fp32")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- the loop
class Trainer:
    """Set up data, model, method and optimiser from a :class:`TrainConfig`, then :meth:`train`."""

    def __init__(self, config: TrainConfig, model=None) -> None:
        config.validate()
        self.config = config
        self.out = Path(config.out)
        self._model = model

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from hardneg.artifacts import corpus_store
        from hardneg.data.cache import cache_dir_or_default
        from hardneg.data.load import load_dataset, parse_spec
        from hardneg.devices import faiss_placement, resolve_device
        from hardneg.model.encoder import DualEncoder

        cfg = self.config
        self.rank, self.world = dist.rank(), dist.world_size()
        self.device = resolve_device(cfg.device)  # before any work: a DeviceError is exit 2
        if dist.is_initialized():  # under torchrun the rank's device wins (NCCL: its GPU; gloo: the CPU)
            group = dist.device_of_group()
            if group != self.device:
                logger.warning("--device %s: under torchrun this rank trains on %s", cfg.device, group)
            self.device = group
        check_precision(cfg.precision, self.device)
        faiss_placement(self.device)  # says once when a GPU run has to search on CPU Faiss
        set_seed(cfg.seed)
        self.cache_dir = cache_dir_or_default(cfg.cache_dir)
        path, split = parse_spec(cfg.data)
        self.dataset = load_dataset(f"{path}:{split or 'train'}", cache_dir=self.cache_dir)
        qrels = self.dataset.qrels()
        queries = self.dataset.queries()
        if not qrels:
            raise HardnegError(f"{cfg.data}: the training split has no qrels")
        if cfg.dev_split:
            dev_ds = load_dataset(f"{path}:{cfg.dev_split}", cache_dir=self.cache_dir)
            dev_qrels, dev_queries = dev_ds.qrels(), dev_ds.queries()
            train_qids = sorted(q for q in qrels if q in queries)
            dev_qids = sorted(q for q in dev_qrels if q in dev_queries)
        else:
            train_qids, dev_qids = carve_dev(cfg, qrels, queries)
            dev_qrels, dev_queries = qrels, queries
        self.train_qrels = {q: qrels[q] for q in train_qids}
        self.dev_qrels = {q: dev_qrels[q] for q in dev_qids}
        self.queries = {**{q: queries[q] for q in train_qids}, **{q: dev_queries[q] for q in dev_qids}}
        self.positives = positives_of(self.train_qrels)

        # a method with a frozen document side (ADORE) trains a separate query tower only
        self.frozen_doc = method_class(cfg.method).frozen_doc
        model = self._model
        if model is None:
            model = DualEncoder.from_pretrained(
                cfg.model, pooling=cfg.pooling, normalize=cfg.normalize,
                query_max_length=cfg.query_max_length, doc_max_length=cfg.doc_max_length,
                shared=False if self.frozen_doc else None,
            )
        elif self.frozen_doc:  # split a given shared encoder into two towers
            model = model.with_separate_towers()
        if self.frozen_doc:
            model.doc_model.requires_grad_(False)
            model.doc_model.eval()
        model.to(self.device)  # both towers (ADORE: the trained query tower and the frozen one)
        if dist.is_initialized():  # under torchrun (even with one process)
            dist.broadcast_parameters(model)  # the same start on every rank
        self.model = model
        if cfg.gradient_checkpointing:
            for tower in {id(model.doc_model): model.doc_model, id(model.query_model): model.query_model}.values():
                tower.gradient_checkpointing_enable()
        self.scale = cfg.score_scale if cfg.score_scale is not None else (20.0 if model.config.normalize else 1.0)
        with dist.main_first():  # rank 0 tokenizes (cached), the others then load the store
            self.store = corpus_store(model, self.dataset, self.cache_dir, show_progress=not cfg.quiet)
        self.doc_ids: list[str] = list(self.store.ids)
        self.doc_row = {d: i for i, d in enumerate(self.doc_ids)}
        self.examples = [Example(q, d) for q in train_qids for d in sorted(self.positives[q]) if d in self.doc_row]
        if not self.examples:
            raise HardnegError(f"{cfg.data}: no training pair has its positive document in the corpus")
        procs = f" x {self.world} processes" if self.world > 1 else ""
        if cfg.batch_size * self.world > len(self.examples):
            raise HardnegError(
                f"batch size {cfg.batch_size}{procs} is larger than the {len(self.examples)} training pairs; "
                "lower --batch-size"
            )
        if cfg.method != "adore" and cfg.topk > len(self.doc_ids):
            raise HardnegError(f"topk {cfg.topk} is larger than the corpus ({len(self.doc_ids)} documents)")
        texts = [self.queries[q].text for q in self.queries]
        ids = model.tokenize(texts, "query")["input_ids"]
        self.query_tokens = dict(zip(self.queries, ids, strict=True))
        # what a method may use of this run (it never sees the trainer itself)
        self.context = MethodContext(
            config=cfg, model=model, dataset=self.dataset, cache_dir=self.cache_dir, store=self.store,
            doc_ids=self.doc_ids, queries=self.queries, query_tokens=self.query_tokens,
            train_qrels=self.train_qrels, dev_qrels=self.dev_qrels, positives=self.positives,
            scale=self.scale, train_mode=self.train_mode,
        )
        with dist.main_first():  # mining with the start model / building ADORE's index: cached by rank 0
            self.method = make_method(cfg.method, self.context)
        self.examples = self.method.train_examples(self.examples)
        if cfg.batch_size * self.world > len(self.examples):  # a method may train on fewer examples (ADORE)
            raise HardnegError(
                f"batch size {cfg.batch_size}{procs} is larger than the {len(self.examples)} training examples; "
                "lower --batch-size"
            )
        # the global micro-batch (N·B examples); rank r trains on slice r of it
        self.global_batch = cfg.batch_size * self.world
        self.order = DataOrder(len(self.examples), self.global_batch, cfg.grad_accum, cfg.seed)
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        # fp16: dynamic loss scaling (DRhard train.py's GradScaler); disabled, every call is a pass-through
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self._dev_pool: list[int] | None = None
        if self.world > 1:  # every rank its own dropout stream (the weights are already identical)
            torch.manual_seed(cfg.seed + 1_000_003 * self.rank)

    # ------------------------------------------------------------------ one step
    def micro_batch(self, step: int, micro: int):
        """The *global* micro-batch ``(examples, negatives)``: N·B examples under N processes.

        Every rank draws the negatives of the whole global batch (cheap, counter-based), so each rank
        knows every document id of the gathered batch without communication."""
        idx, start = self.order.indices(step, micro)
        examples = [self.examples[i] for i in idx]
        negatives = self.method.negatives(examples, start)
        return examples, negatives

    def batch_loss(self, examples: list[Example], negatives: list[list[str]]) -> tuple[torch.Tensor, dict]:
        """This rank's loss on the global micro-batch (one process: the batch's loss).

        Rank ``r`` encodes its slice of queries and documents; the documents of all ranks are gathered
        (with gradients) into the single-process layout ``[positives of all N·B examples; negatives of
        example 0, 1, …]``, so the method's masks see the global batch; the rank scores its own queries
        (rows ``row_offset …``) against every document."""
        b = len(examples) // self.world
        lo = self.rank * b
        local, local_negs = examples[lo : lo + b], negatives[lo : lo + b]
        doc_list = [e.pos for e in examples] + [x for negs in negatives for x in negs]
        batch = StepBatch(local, local_negs, doc_list, row_offset=lo, global_batch=len(examples))
        custom = self.method.batch_loss(batch)  # a method may compute the whole loss (ADORE), timed by itself
        if custom is not None:
            return custom
        cfg = self.config
        model = self.model
        laps = Laps(self.device)
        # autocast covers the encoders only: q and d come back fp32, so scores and losses are fp32
        q = encode_rows(model, [self.query_tokens[e.qid] for e in local], "query", cfg.train_chunk,
                        cfg.precision)
        laps.lap("t_query_encode")
        local_docs = [e.pos for e in local] + [d for negs in local_negs for d in negs]
        d = encode_rows(model, [self.store[self.doc_row[x]] for x in local_docs], "doc", cfg.train_chunk,
                        cfg.precision)
        if self.world > 1:
            parts = dist.all_gather_with_grad(d).view(self.world, len(local_docs), -1)
            d = torch.cat([parts[:, :b].reshape(-1, d.shape[1]), parts[:, b:].reshape(-1, d.shape[1])])
        if len(doc_list) != d.shape[0]:
            raise HardnegError("ranks drew different numbers of negatives per example; cannot gather the batch")
        laps.lap("t_doc_encode")
        scores = self.scale * (q @ d.T)
        loss, parts = self.method.loss(scores, batch)
        laps.lap("t_loss")
        return loss, {**parts, **laps.seconds}

    def step_gradients(self, step: int) -> dict[str, float]:
        """Forward and backward every micro-batch of ``step``, then average the gradients over ranks.

        Returns the step's logged values (loss and the method's parts), combined over ranks. Under
        fp16 the gradients are those of the scaled loss (:meth:`optimizer_step` unscales them)."""
        cfg = self.config
        totals: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            tic = clock(self.device)
            examples, negatives = self.micro_batch(step, micro)
            drawn = clock(self.device)
            loss, parts = self.batch_loss(examples, negatives)
            laps = Laps(self.device)
            self.scaler.scale(loss / cfg.grad_accum).backward()
            laps.lap("t_backward")
            if not self.method.frozen_doc:  # drawing/selecting negatives (ADORE's are its t_search)
                laps.seconds["t_negatives"] = drawn - tic
            for key, value in {"loss": float(loss.detach()), **parts, **laps.seconds}.items():
                share = value if key.startswith(TIMING_PREFIX) else value / cfg.grad_accum  # seconds add up
                totals[key] = totals.get(key, 0.0) + share
        tic = clock(self.device)
        dist.average_gradients([p for p in self.model.parameters() if p.requires_grad])
        totals["t_backward"] = totals.get("t_backward", 0.0) + clock(self.device) - tic  # + the all-reduce
        return dist.reduce_records(totals, sums=ADDITIVE_PARTS)

    def optimizer_step(self) -> dict[str, float]:
        """Clip, step the optimiser and the LR schedule, zero the gradients; returns the logged values.

        fp16 (the GradScaler recipe): unscale before clipping; a step with inf/NaN gradients is skipped
        by the scaler, which halves the scale, and then the schedule does not advance either (as
        accelerate / HF Trainer do), so the LR follows the optimiser steps actually taken."""
        self.scaler.unscale_(self.optimizer)  # a no-op unless fp16
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        skipped = self.scaler.is_enabled() and self.scaler.get_scale() < scale
        if not skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        norm = float(grad_norm)
        record = {"grad_norm": norm if math.isfinite(norm) else None}  # a skipped fp16 step: inf/NaN, logged null
        if self.scaler.is_enabled():
            record.update(loss_scale=scale, skipped_step=int(skipped))
        return record

    # ------------------------------------------------------------------ dev evaluation
    @torch.no_grad()
    def evaluate_dev(self) -> dict[str, float]:
        from hardneg.evaluate.metrics import evaluate
        from hardneg.index.encode import encode_token_lists
        from hardneg.retrieval.runs import run_from_arrays

        custom = self.method.evaluate_dev()  # ADORE evaluates on its fixed index
        if custom is not None:
            return custom
        cfg = self.config
        if self._dev_pool is None:
            with dist.main_first():  # BM25 of the dev pool is cached by rank 0
                self._dev_pool = self._make_dev_pool()
        was_training = self.model.training
        self.model.eval()
        rows = self._dev_pool
        dev_qids = list(self.dev_qrels)
        qv = encode_token_lists(self.model, [self.query_tokens[q] for q in dev_qids], "query",
                                batch_size=cfg.batch_encode_size)
        # exact top-100 by chunks (hardneg.retrieval.exact): no dev queries × pool score matrix
        scores, top = self._dev_top(qv, rows, 100)
        ids = self.doc_ids if len(rows) == len(self.doc_ids) else [self.doc_ids[r] for r in rows]
        run = run_from_arrays(dev_qids, ids, scores, top)
        if was_training:
            self.train_mode()
        measures = list(dict.fromkeys([cfg.dev_metric, "RR@10", "nDCG@10", "R@100"]))
        return evaluate(run, self.dev_qrels, measures)

    #: dev pools whose embeddings take at most this many bytes are encoded in memory (one process) or in
    #: one piece (torchrun); larger ones into a temporary float32 memmap / in pieces of this size
    _dev_ram_bytes = 1 << 30
    #: chunk sizes of the exact dev search (``query_chunk``, ``doc_chunk``; the defaults when empty)
    _dev_chunks: dict[str, int] = {}

    @torch.inference_mode()
    def _dev_top(self, qv: np.ndarray, rows: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(scores, positions in rows)`` of the top ``k`` of ``rows`` for every dev query, by chunks.

        The pool's embeddings are those of ``encode_token_lists`` over the whole pool (the same
        length-sorted batches), held in memory when small, else written to a temporary float32
        memmap (in the run's folder, deleted afterwards). Under torchrun the batches are shared out
        over the ranks and every rank gets all rows (bit-identical to one process) for a pool up to
        ``_dev_ram_bytes``; a larger pool is encoded and searched in row pieces of that size (each
        piece batched on its own), so no rank holds the whole pool's embeddings."""
        import tempfile

        from hardneg.index.encode import encode_batches, encode_token_lists, length_sorted_batches
        from hardneg.index.shards import sharded_encode_token_lists
        from hardneg.retrieval.exact import TopKSearch

        cfg = self.config
        search = TopKSearch(qv, k, **self._dev_chunks)
        piece = max(1, self._dev_ram_bytes // (4 * self.model.dim))
        progress = not cfg.quiet and dist.is_main() and len(rows) > piece
        if dist.is_distributed():
            for a in range(0, len(rows), piece):
                search.add(sharded_encode_token_lists(self.model, self.store.rows(rows[a : a + piece]), "doc",
                                                      batch_size=cfg.batch_encode_size, show_progress=progress),
                           show_progress=progress)
            return search.result()
        if len(rows) <= piece:
            search.add(encode_token_lists(self.model, self.store.rows(rows), "doc", batch_size=cfg.batch_encode_size))
            return search.result()
        # encode_token_lists's batches, written into a memmap; token rows are read batch by batch
        self.model.eval()
        pool = np.asarray(rows, dtype=np.int64)
        batches = length_sorted_batches(self.store.lengths[pool], cfg.batch_encode_size)
        where = self.out if self.out.is_dir() else None
        with tempfile.TemporaryDirectory(prefix=".dev-embeddings-", dir=where) as tmp:
            docs = np.lib.format.open_memmap(Path(tmp) / "docs.npy", mode="w+", dtype=np.float32,
                                             shape=(len(rows), self.model.dim))
            for b, emb in encode_batches(self.model, lambda idx: self.store.rows(pool[idx]), batches, "doc",
                                         desc="encode dev pool", show_progress=progress):
                docs[batches[b]] = emb.float().cpu().numpy()
            search.add(docs, show_progress=progress)
            del docs
        return search.result()

    def train_mode(self) -> None:
        """Training mode (dropout on), except a frozen document tower, which stays in eval mode."""
        self.model.train()
        if self.frozen_doc:
            self.model.doc_model.eval()

    def _make_dev_pool(self) -> list[int]:
        """Rows ranked at dev time: the whole corpus, or BM25's top-N of each dev query plus its positives."""
        cfg = self.config
        if cfg.dev_pool <= 0:
            return list(range(len(self.doc_ids)))
        from hardneg.retrieval.bm25 import cached_bm25

        bm25 = cached_bm25(self.dataset, self.cache_dir)
        run = bm25.search({q: self.queries[q] for q in self.dev_qrels}, k=cfg.dev_pool, show_progress=False)
        pool = {d for results in run.values() for d, _ in results}
        pool |= {d for q in self.dev_qrels for d in self.dev_qrels[q] if d in self.doc_row}
        return sorted(self.doc_row[d] for d in pool)

    # ------------------------------------------------------------------ the loop
    def train(self, resume: bool = False) -> Path:
        from tqdm.auto import tqdm

        cfg = self.config
        if not hasattr(self, "model"):
            self.setup()
        main = dist.is_main()
        self.out.mkdir(parents=True, exist_ok=True)
        if main:  # dev-pool memmaps a killed run left behind (the CLI's output lock rules out a live one)
            for stale in self.out.glob(".dev-embeddings-*"):
                shutil.rmtree(stale, ignore_errors=True)
        start_step, best, best_step = 0, -math.inf, -1
        self._stale, self._stopped = 0, None  # dev evaluations since the best one; where early stopping ended
        # rank 0 decides which checkpoint (if any) every rank restores: the folder is shared
        found = dist.broadcast_object(latest_checkpoint(self.out))
        checkpoint = found if resume else None
        if resume and checkpoint is None:
            logger.info("no checkpoint in %s: starting from step 0", self.out)
        if not resume and found is not None:
            raise HardnegError(
                f"{self.out} already holds checkpoints of a run: pass --resume to continue it, "
                "or choose another --out"
            )
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler, cfg.fingerprint(),
                                    scaler=self.scaler)
            if state.get("world_size", 1) != self.world:
                raise HardnegError(
                    f"{checkpoint}: written by a run of {state.get('world_size', 1)} processes; resume it "
                    f"with the same number of processes (this run has {self.world})"
                )
            start_step, best, best_step = state["step"], state["best"], state["best_step"]
            self._stale, self._stopped = state.get("stale_evals", 0), state.get("stopped_early")
            self.method.restore(checkpoint)
            logger.info("resumed from %s (step %d)", checkpoint, start_step)
        if main:
            write_json(self.out / "config.json", cfg.to_dict())  # world_size: summary.json, checkpoints
        log = (RunLog(self.out, start_step if checkpoint is not None else None, report_to=cfg.report_to,
                      params=cfg.to_dict()) if main else NullLog())
        self.train_mode()
        bar = tqdm(total=cfg.max_steps, initial=start_step, desc=f"train {cfg.method}", unit="step",
                   disable=cfg.quiet or not main, mininterval=1.0)
        t0 = time.perf_counter()
        try:
            if checkpoint is None and cfg.dev_at_start:
                best, best_step = self._dev_step(0, log, best, best_step)
            for step in range(start_step, cfg.max_steps if self._stopped is None else start_step):
                tic = clock(self.device)
                totals = self.step_gradients(step)
                stepped_at = clock(self.device)
                stepped = self.optimizer_step()
                done_at = clock(self.device)
                seconds = done_at - tic
                totals["t_optimizer"] = done_at - stepped_at
                record = {"step": step + 1, **totals, **stepped,
                          "lr": self.scheduler.get_last_lr()[0], "epoch": self.order.epoch_of(step + 1),
                          "queries_per_s": self.global_batch * cfg.grad_accum / seconds, "seconds": seconds}
                log.write(record, "train")
                bar.update(1)
                bar.set_postfix(loss=f"{totals['loss']:.4f}", qps=f"{record['queries_per_s']:.1f}")
                done = step + 1
                if cfg.track_every and done % cfg.track_every == 0:
                    from hardneg.train.tracking import track

                    log.write(track(self, done), "track")  # before a refresh, which would reset the overlap
                self.method.after_step(done)
                if done % cfg.dev_every == 0 or done == cfg.max_steps:
                    best, best_step = self._dev_step(done, log, best, best_step)
                    if cfg.patience and self._stale >= cfg.patience and done < cfg.max_steps:
                        self._stopped = done  # early stopping: the best model is already in OUT/model
                        logger.info("early stopping at step %d: %d dev evaluations without a better %s than "
                                    "%.4f (step %d)", done, self._stale, cfg.dev_metric, best, best_step)
                if done % cfg.save_every == 0 or done == cfg.max_steps or self._stopped:
                    self._checkpoint(done, best, best_step)
                if self._stopped:
                    break
        finally:
            bar.close()
            log.close()
        if main:
            write_json(self.out / "summary.json", {
                "method": cfg.method, "steps": cfg.max_steps, "best_step": best_step, "best_dev": best,
                "stopped_early": self._stopped, "patience": cfg.patience,
                "dev_metric": cfg.dev_metric, "train_pairs": len(self.examples), "dev_queries": len(self.dev_qrels),
                "seconds_this_session": time.perf_counter() - t0, "score_scale": self.scale,
                "world_size": self.world, "global_batch": self.global_batch,
            })
        dist.barrier()  # the other ranks return once rank 0 has written everything
        return self.out / "model"

    def _dev_step(self, step: int, log: RunLog, best: float, best_step: int) -> tuple[float, int]:
        """Evaluate on dev, log it, and save the model to ``OUT/model`` when it is the best so far."""
        metrics = self.evaluate_dev()
        log.write({"step": step, **metrics}, "dev")
        logger.info("step %d dev %s", step, json.dumps(metrics))
        value = metrics[self.config.dev_metric]
        self._stale += 1
        if value > best:  # every rank computed the same metrics; rank 0 writes
            best, best_step, self._stale = value, step, 0
            if dist.is_main():
                self.model.save(self.out / "model")
                self.method.after_save(self.out / "model")
                write_json(self.out / "dev_metrics.json", {"step": step, **metrics})
        return best, best_step

    def _checkpoint(self, step: int, best: float, best_step: int) -> None:
        cfg = self.config
        state = {"version": CHECKPOINT_VERSION, "step": step, "best": best, "best_step": best_step,
                 "config_fingerprint": cfg.fingerprint(), "stale_evals": self._stale, "stopped_early": self._stopped}
        rng_extra = None
        if self.world > 1:  # every rank's RNG (dropout streams differ), gathered to rank 0
            state["world_size"] = self.world
            rng_extra = {"ranks": dist.all_gather_object(dist.rng_state())}
        if dist.is_main():
            folder = self.out / "checkpoints" / f"step-{step:07d}"
            save_checkpoint(folder, self.model, self.optimizer, self.scheduler, state, self.method.state_files(),
                            rng_extra, scaler=self.scaler)
            old = sorted((self.out / "checkpoints").glob("step-*"))[: -cfg.keep_checkpoints]
            for path in old:
                shutil.rmtree(path, ignore_errors=True)
        dist.barrier()  # no rank runs ahead of a checkpoint that is not on disk yet
