"""The one training loop shared by every method.

A method is a negative source plus a loss (see :mod:`hardneg.train.methods`);
this module owns the rest, from the pieces beside it: data order and the dev
carve-out (:mod:`hardneg.train.order`), batching without padding waste, mixed
precision, the step's timed parts and the optimiser (:mod:`hardneg.train.steps`),
the device (``--device``, resolved by :mod:`hardneg.devices`), gradient
accumulation and clipping, dev evaluation with best-model selection
(:mod:`hardneg.train.dev`), JSONL + TensorBoard logs, and checkpoints that
``--resume`` continues exactly (model, optimiser, scheduler, RNG state, data
position, mined negatives; written and read by :mod:`hardneg.train.checkpoint`).

Data order is a pure function of ``(seed, step)``, so resuming needs only the
step number; negative sampling is counter-based for the same reason.

Mixed precision: autocast covers only the encoder forward passes; the score
matrix and every loss are fp32 (see :mod:`hardneg.train.steps`). fp16 adds
dynamic loss scaling (``torch.amp.GradScaler``: gradients unscaled before
clipping, a step with inf/NaN gradients is skipped and does not advance the LR
schedule); the scaler's state is part of every checkpoint. bf16 needs no scaler.

Under ``torchrun`` (see :mod:`hardneg.distributed`) N processes with
``batch_size`` B train like one process with batch N·B: the data order hands
out the global micro-batch, rank ``r`` encodes slice ``r``, document embeddings
are gathered across ranks with gradients, losses are global means and
gradients are averaged. Only rank 0 writes logs, models and checkpoints; every
rank restores from them. The setup's long work is shared too and no rank waits in a
collective on another's: caches (tokenized corpus, indexes, BM25) are built by the
first rank to take their file lock while the others wait on it, and the corpus
encodings and searches of mining and of ADORE's index are split into equal shares
(:mod:`hardneg.train.methods.mining`, :func:`hardneg.index.shards.encode_over_ranks`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hardneg import distributed as dist
from hardneg.artifacts import corpus_store
from hardneg.data.cache import cache_dir_or_default
from hardneg.devices import faiss_placement, resolve_device
from hardneg.errors import HardnegError
from hardneg.index.external import external_ids
from hardneg.io import read_json, write_json
from hardneg.model.encoder import DualEncoder
from hardneg.model.encoding import check_encode_precision
from hardneg.model.lora import LoraSettings, apply_lora
from hardneg.negatives.drift import track
from hardneg.train import resume_keys
from hardneg.train.checkpoint import (
    CHECKPOINT_VERSION,
    NullLog,
    RunLog,
    adopt_fingerprint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from hardneg.train.config import TrainConfig
from hardneg.train.dev import DEV_EMBEDDINGS, DevIndex, DevPool, dev_pool_rows, evaluate_dev
from hardneg.train.grad_cache import GradCache, compile_towers
from hardneg.train.methods import MethodContext, StepBatch, external_index, make_method, method_spec
from hardneg.train.order import Example, positives_of, train_dev_split
from hardneg.train.steps import (
    ADDITIVE_PARTS,
    TIMING_PREFIX,
    Laps,
    clock,
    encode_rows,
    make_optimizer,
    make_scheduler,
    set_seed,
)
from hardneg.train.tas import make_data_order

logger = logging.getLogger("hardneg.train")


# ----------------------------------------------------------------------------- the loop
class Trainer:
    """Set up data, model, method and optimiser from a :class:`TrainConfig`, then :meth:`train`."""

    def __init__(self, config: TrainConfig, model=None) -> None:
        config.validate()
        self.config = config
        self.out = Path(config.out)
        self._model = model
        self._cache: GradCache | None = None  # --grad-cache: a micro-batch's, from batch_loss to its replay

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Device, data, model, tokenized corpus, method, data order and optimiser (on every rank)."""
        cfg = self.config
        self.rank, self.world = dist.rank(), dist.world_size()
        self.spec = method_spec(cfg.method)
        # ADORE on an index hardneg did not build: the query encoder alone, no document tower, no tokenized corpus
        self.external_index = external_index(cfg)
        # a method with a frozen document side (ADORE) trains a separate query tower only
        self.frozen_doc = self.spec.frozen_doc and not self.external_index
        self._place()
        set_seed(cfg.seed)
        self.cache_dir = cache_dir_or_default(cfg.cache_dir)
        train_qids = self._load_data()
        self.model = self._load_model()
        if cfg.compile:  # in place: the state_dict keys (checkpoints, saved models) stay the eager ones
            compile_towers(self.model, cfg.compile_backend)
        self.scale = cfg.score_scale if cfg.score_scale is not None else (20.0 if self.model.config.normalize else 1.0)
        self._load_corpus(train_qids)
        self._make_method()
        # the global micro-batch (N·B examples); rank r trains on slice r of it
        self.global_batch = cfg.batch_size * self.world
        self.order = make_data_order(cfg, self.examples, self.global_batch, self.model, self.queries)  # random/TAS
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg, len(self.examples), self.global_batch)
        # fp16: dynamic loss scaling (DRhard train.py's GradScaler); disabled, every call is a pass-through
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        #: where dev is ranked (the method's own index, else the dev pool); made at the first dev evaluation
        self.dev_index: DevIndex | None = None
        if self.world > 1:  # every rank its own dropout stream (the weights are already identical)
            torch.manual_seed(cfg.seed + 1_000_003 * self.rank)

    def _place(self) -> None:
        """The device this rank trains on, checked for ``--precision`` before any work."""
        cfg = self.config
        self.device = resolve_device(cfg.device)  # before any work: a DeviceError is exit 2
        if dist.is_initialized():  # under torchrun the rank's device wins (NCCL: its GPU; gloo: the CPU)
            group = dist.device_of_group()
            if group != self.device:
                logger.warning("--device %s: under torchrun this rank trains on %s", cfg.device, group)
            self.device = group
        check_encode_precision(cfg.precision, self.device)
        faiss_placement(self.device)  # says once when a GPU run has to search on CPU Faiss

    def _load_data(self) -> list[str]:
        """The dataset, its train and dev qrels (``--dev-split``, else carved out of train), the queries of
        both and the training positives; returns the training query ids."""
        split = train_dev_split(self.config, self.cache_dir)
        self.dataset, train_qids = split.dataset, split.train_qids
        self.train_qrels, self.dev_qrels = split.train_qrels, split.dev_qrels
        self.queries = {**split.train_queries, **split.dev_queries}
        self.positives = positives_of(self.train_qrels)
        return train_qids

    def _load_model(self) -> DualEncoder:
        """The start encoder on this rank's device (the same weights on every rank); with a frozen document
        side, separate towers and the document tower frozen."""
        cfg = self.config
        model = self._model
        if model is None:
            model = DualEncoder.from_pretrained(
                cfg.model, pooling=cfg.pooling, normalize=cfg.normalize,
                query_max_length=cfg.query_max_length, doc_max_length=cfg.doc_max_length,
                shared=False if self.frozen_doc else (True if self.external_index else None),
            )
        elif self.frozen_doc:  # split a given shared encoder into two towers
            model = model.with_separate_towers()
        if self.external_index:  # the query encoder alone: saved with the query side's max length (issue 29)
            model.config.doc_max_length = model.config.query_max_length
        if self.frozen_doc:
            model.doc_model.requires_grad_(False)
            model.doc_model.eval()
        if cfg.lora_r:  # LoRA: only adapters train, on the trained towers (not a frozen document tower)
            apply_lora(model, LoraSettings.from_config(cfg), cfg.model, train_doc=not self.frozen_doc,
                       input_grads=cfg.gradient_checkpointing)
        model.to(self.device)  # both towers (ADORE: the trained query tower and the frozen one)
        if dist.is_initialized():  # under torchrun (even with one process)
            dist.broadcast_parameters(model)  # the same start on every rank
        if cfg.gradient_checkpointing:
            for tower in {id(model.doc_model): model.doc_model, id(model.query_model): model.query_model}.values():
                # transformers 5 renamed it (the old name warns until v6 removes it)
                enable = getattr(tower, "activation_checkpointing_enable", None) or tower.gradient_checkpointing_enable
                enable()
        return model

    def _load_corpus(self, train_qids: list[str]) -> None:
        """The tokenized corpus (cached), the training examples (one per (query, positive) in the corpus) and
        the tokenized queries."""
        cfg = self.config
        if self.external_index:  # the index's own ids are the corpus; nothing is tokenized (issue 29)
            self.store = None
            self.doc_ids = external_ids(cfg.index, cfg.index_ids)
        else:  # the first rank to take the store's lock tokenizes (cached); the others wait on it, then load it
            self.store = corpus_store(self.model, self.dataset, self.cache_dir, show_progress=not cfg.quiet)
            self.doc_ids = list(self.store.ids)
        self.doc_row = {d: i for i, d in enumerate(self.doc_ids)}
        self.examples = [Example(q, d) for q in train_qids for d in sorted(self.positives[q]) if d in self.doc_row]
        if not self.examples:
            raise HardnegError(f"{cfg.data}: no training pair has its positive document in the corpus")
        self._check_batch("pairs")
        if self.spec.takes_topk and cfg.topk > len(self.doc_ids):
            raise HardnegError(f"topk {cfg.topk} is larger than the corpus ({len(self.doc_ids)} documents)")
        texts = [self.queries[q].text for q in self.queries]
        ids = self.model.tokenize(texts, "query")["input_ids"]
        self.query_tokens = dict(zip(self.queries, ids, strict=True))

    def _check_batch(self, what: str) -> None:
        cfg = self.config
        if cfg.batch_size * self.world > len(self.examples):
            procs = f" x {self.world} processes" if self.world > 1 else ""
            raise HardnegError(
                f"batch size {cfg.batch_size}{procs} is larger than the {len(self.examples)} training {what}; "
                "lower --batch-size"
            )

    def _make_method(self) -> None:
        """The method, given what it may use of this run (never the trainer itself), and its examples."""
        cfg = self.config
        self.context = MethodContext(
            config=cfg, model=self.model, dataset=self.dataset, cache_dir=self.cache_dir, store=self.store,
            doc_ids=self.doc_ids, queries=self.queries, query_tokens=self.query_tokens,
            train_qrels=self.train_qrels, dev_qrels=self.dev_qrels, positives=self.positives,
            scale=self.scale, train_mode=self.train_mode,
        )
        # every rank builds the method together: the corpus encodings for mining and for ADORE's index are
        # shared out over the ranks, and no rank waits in a collective on another's long work
        self.method = make_method(cfg.method, self.context)
        self.examples = self.method.train_examples(self.examples)
        self._check_batch("examples")  # a method may train on fewer examples (ADORE)

    # ------------------------------------------------------------------ one step
    def micro_batch(self, step: int, micro: int):
        """The *global* micro-batch ``(examples, negatives)``: N·B examples under N processes.

        Every rank draws the negatives of the whole global batch (cheap, counter-based), so each rank
        knows every document id of the gathered batch without communication."""
        idx, start = self.order.indices(step, micro)
        examples = self.method.batch_examples([self.examples[i] for i in idx], start)
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
        laps = Laps(self.device)
        # --grad-cache: embeddings without a graph (leaves); step_gradients replays the forward passes
        self._cache = GradCache(self.model, cfg.mini_batch or cfg.train_chunk, cfg.precision) if cfg.grad_cache \
            else None
        encode = self._cache.encode if self._cache is not None else (
            lambda rows, side: encode_rows(self.model, rows, side, cfg.train_chunk, cfg.precision))
        # autocast covers the encoders only: q and d come back fp32, so scores and losses are fp32
        q = encode([self.query_tokens[e.qid] for e in local], "query")
        laps.lap("t_query_encode")
        local_docs = [e.pos for e in local] + [d for negs in local_negs for d in negs]
        d = encode([self.store[self.doc_row[x]] for x in local_docs], "doc")
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
            if self._cache is not None:  # GradCache: the forward passes again, with graphs
                self._cache.replay()
                self._cache = None
                laps.lap("t_replay")
            if not self.frozen_doc:  # drawing/selecting negatives (ADORE's are its t_search)
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
    def evaluate_dev(self) -> dict[str, float]:
        """Dev metrics of the current model (:func:`hardneg.train.dev.evaluate_dev`), ranked in the method's
        own dev index when it has one (ADORE: its fixed index), else in the dev pool."""
        if self.dev_index is None:
            self.dev_index = self.method.dev_index()
        if self.dev_index is None:
            # BM25 of the dev pool: built by the first rank to take its cache lock, loaded by the others
            self.dev_index = DevPool(dev_pool_rows(self.context, self.doc_row), self.context)
        return evaluate_dev(self.context, self.dev_index)

    def train_mode(self) -> None:
        """Training mode (dropout on), except a frozen document tower, which stays in eval mode."""
        self.model.train()
        if self.frozen_doc:
            self.model.doc_model.eval()

    # ------------------------------------------------------------------ the loop
    def train(self, resume: bool = False) -> Path:
        """Train to ``max_steps`` (or until early stopping), evaluating dev every ``dev_every`` steps and
        checkpointing every ``save_every``; ``resume`` continues the latest checkpoint in OUT. Returns
        ``OUT/model``, the best model on dev."""
        cfg = self.config
        if not hasattr(self, "model"):
            self.setup()
        main = dist.is_main()
        self.out.mkdir(parents=True, exist_ok=True)
        if main:  # dev-pool memmaps a killed run left behind (the CLI's output lock rules out a live one)
            for stale in self.out.glob(DEV_EMBEDDINGS + "*"):
                shutil.rmtree(stale, ignore_errors=True)
        checkpoint, start_step, best, best_step = self._restore(resume)
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
                    log.write(track(self, done), "track")  # before a refresh, which would reset the overlap
                tic = time.perf_counter()  # the device was synced at done_at: no extra sync on every step
                extra = self.method.after_step(done)
                if extra:  # ANCE's re-mining: its own record, so Table 4 can count it apart from the steps
                    log.write({"step": done, **extra, "seconds": clock(self.device) - tic}, "remine")
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

    def _restore(self, resume: bool) -> tuple[Path | None, int, float, int]:
        """``(checkpoint, step, best dev value, its step)`` to start from: the latest checkpoint in OUT,
        restored into the model, optimiser, scheduler, scaler and method when ``resume`` (else OUT must hold
        none); also the early-stopping state."""
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
            before = self._written_with()
            accepted = resume_keys.accepted(self.config.to_dict(), before)
            state = load_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler, accepted,
                                    scaler=self.scaler, changed=self.config.changed(before) if before else ())
            if state.get("world_size", 1) != self.world:
                raise HardnegError(
                    f"{checkpoint}: written by a run of {state.get('world_size', 1)} processes; resume it "
                    f"with the same number of processes (this run has {self.world})"
                )
            start_step, best, best_step = state["step"], state["best"], state["best_step"]
            self._stale, self._stopped = state.get("stale_evals", 0), state.get("stopped_early")
            if state.get("config_fingerprint") != (now := self.config.fingerprint()):
                # accepted through an older hash, which needs the old config.json (locations, moved inputs): this
                # run rewrites config.json with its own, so every kept checkpoint of these settings gets today's
                dist.barrier()  # every rank has read the checkpoint
                if dist.is_main():
                    adopt_fingerprint(self.out, accepted, now)
            self.method.restore(checkpoint)
            logger.info("resumed from %s (step %d)", checkpoint, start_step)
        return checkpoint, start_step, best, best_step

    def _written_with(self) -> dict | None:
        """The settings of the run that wrote OUT's checkpoints (its ``config.json``); None without a readable
        one."""
        try:
            before = read_json(self.out / "config.json")
        except (OSError, ValueError):
            return None
        return before if isinstance(before, dict) else None

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
