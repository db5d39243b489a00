"""sentence-transformers' own fine-tuning recipe on hardneg's split: the peer system kind ``peer-st``.

The recipe is the one sentence-transformers documents for retrieval fine-tuning with hard negatives:
``util.mine_hard_negatives`` with the start model (``relative_margin`` 0.05, ``num_negatives`` 1, the top ones,
from the whole corpus), then ``MultipleNegativesRankingLoss`` with ``BatchSamplers.NO_DUPLICATES`` (``mnrl``,
batch 32) or its GradCache variant ``CachedMultipleNegativesRankingLoss`` (``cmnrl``, batch 256 in
mini-batches of 32), one checkpoint per epoch. Everything that decides a comparison is hardneg's:

- the training queries and the dev set are those of hardneg's trainer (:func:`peer_data`: the recipe's
  ``dev_split``, or the seeded carve-out with its ``dev_fraction``/``dev_carve`` and the seed: the one selection,
  :func:`hardneg.train.order.train_dev_split`);
- every epoch's checkpoint is scored on dev as hardneg's trainer scores dev (``dev_pool`` 20: BM25's top-20 of
  every dev query plus its positives, ranked exactly; ``dev_metric`` RR@10 picks), and ``model/`` is the
  dev-best epoch (``num_train_epochs`` is a cap);
- the test, strata and transfer sets go through hardneg's retrieval (the experiment's ``test-``/``transfer-``
  stages load ``model/``, a sentence-transformers folder, with :meth:`DualEncoder.from_pretrained`).

:func:`train_peer` writes a stage folder::

    peer.json            the settings and the data it ran on (a folder of other settings is refused)
    triplets.jsonl       the mined (anchor, positive, negative) rows (kept: a rerun does not mine again)
    checkpoints/checkpoint-<step>/   one per epoch (the trainer's state is dropped once the run is finished)
    dev/epoch-<e>.json   each epoch's dev metrics
    train_log.jsonl      loss and seconds per optimiser step, dev per epoch (what the report plots)
    model/               the dev-best epoch, a sentence-transformers folder
    dev_metrics.json, summary.json   as hardneg's trainer writes them (``best_step`` = the best epoch)

Resume is the trainer's own: a run killed mid-way restarts from its latest complete checkpoint with
``resume_from_checkpoint`` (weights, optimiser, LR schedule, RNG states; the NO_DUPLICATES sampler is seeded
per epoch), which ends with the same weights as a run never killed. Deterministic for a ``seed`` (set in
``SentenceTransformerTrainingArguments``). ``sentence_transformers`` is imported inside the functions.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from hardneg.data.records import Query
from hardneg.errors import HardnegError
from hardneg.evaluate.metrics import evaluate
from hardneg.experiment.schema import StrictSection, schema_problems
from hardneg.io import read_json, write_json
from hardneg.model.registry import resolve_model
from hardneg.train.config import TrainConfig
from hardneg.train.dev import dev_depth, dev_measures, dev_pool_ids
from hardneg.train.order import positives_of, train_dev_split
from hardneg.train.presets import apply_preset

logger = logging.getLogger("hardneg.experiment.peer_st")
#: the losses, by the names sentence-transformers gives their classes
#: the system kind of a recipe
PEER_ST = "peer-st"
LOSSES = {"mnrl": "MultipleNegativesRankingLoss", "cmnrl": "CachedMultipleNegativesRankingLoss"}
#: a loss's default batch: MNRL's documented 32, CachedMNRL's large batch (GradCache makes it affordable)
DEFAULT_BATCH = {"mnrl": 32, "cmnrl": 256}
#: what a finished run keeps of its checkpoints: the weights only (the trainer's state is for resuming)
TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")
MINE_BATCH = 64


class PeerSettings(StrictSection):
    """The settings of a ``peer-st`` system, named as sentence-transformers names them."""

    loss: Literal["mnrl", "cmnrl"] = "mnrl"
    learning_rate: float = Field(2e-5, gt=0)
    num_train_epochs: int = Field(4, ge=1)  # a cap: dev picks the epoch
    per_device_train_batch_size: int = Field(None, ge=2, validate_default=False)  # default: DEFAULT_BATCH[loss]
    mini_batch_size: int = Field(32, ge=1)  # cmnrl's GradCache mini-batch
    max_seq_length: int = Field(128, ge=8)  # one length for queries and documents, in training and dev
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    relative_margin: float = Field(0.05, ge=0, lt=1)  # mining: a negative scores below (1 - margin) · positive
    num_negatives: int = Field(1, ge=1)  # mined negatives per (query, positive): one triplet each
    seed: int = 42

    @model_validator(mode="after")
    def _batch(self) -> PeerSettings:
        if self.per_device_train_batch_size is None:
            self.per_device_train_batch_size = DEFAULT_BATCH[self.loss]
        return self

    @property
    def label(self) -> str:
        """The system kind in the report: ``sentence-transformers (MNRL)`` or ``(CachedMNRL)``."""
        return f"sentence-transformers ({'CachedMNRL' if self.loss == 'cmnrl' else 'MNRL'})"


def peer_label(settings: dict[str, Any]) -> str:
    """The report's kind of a ``peer-st`` system from its recorded settings."""
    return PeerSettings.model_validate({k: v for k, v in settings.items() if k in PeerSettings.model_fields}).label


def peer_settings(settings: dict[str, Any], seed: int, where: str) -> PeerSettings:
    """A recipe system's settings as :class:`PeerSettings` (``seed`` by default); an unknown key or a bad value is
    an error naming ``<where>.<key>`` (``where``: ``recipe.yaml: systems[2]``) and what is allowed."""
    unknown = [k for k in settings if k not in PeerSettings.model_fields]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(PeerSettings.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise HardnegError(f"{where}.{unknown[0]}: not a setting of a {PEER_ST} system{hint}; allowed: "
                           f"{', '.join(PeerSettings.model_fields)}")
    source, _, prefix = where.rpartition(": ")
    try:
        return PeerSettings.model_validate({"seed": seed, **settings})
    except ValidationError as exc:
        raise HardnegError(f"{source}: {schema_problems(exc, prefix=prefix)}") from None


def peer_dev_config(train: dict[str, Any], seed: int, data: str, cache_dir: str | None, device: str,
                    where: str) -> TrainConfig:
    """The dev set and dev measurement of a ``peer-st`` system as a :class:`TrainConfig`: the recipe's ``train:``
    section (``train``: its ``dev_split``/``dev_fraction``/``dev_carve``/``dev_pool``/``dev_metric``, its preset)
    with the system's ``seed``, so the carve-out is the one of the recipe's trained systems of that seed."""
    common = dict(train)
    preset = common.pop("preset", None)
    try:
        cfg = TrainConfig.from_dict({**common, "seed": seed})
    except (TypeError, ValueError, HardnegError) as exc:
        raise HardnegError(f"{where}: {exc}") from exc
    cfg = apply_preset(cfg, preset, explicit=set(common) | {"seed"})
    cfg.data, cfg.cache_dir, cfg.device = data, cache_dir, device
    return cfg


def peer_stage(start: str, settings: PeerSettings, cfg: TrainConfig, cache_dir: str | Path,
               device: str) -> tuple[dict[str, Any], Callable[[Path], dict[str, Any]]]:
    """An experiment's ``train-<system>`` stage of a ``peer-st`` system: its key's settings (the start model, the
    peer settings, the dev set of ``cfg``) and its body (:func:`train_peer` from ``start`` into the stage folder)."""
    dev = {k: getattr(cfg, k) for k in ("data", "dev_split", "dev_fraction", "dev_carve", "dev_pool", "dev_metric")}

    def run(folder: Path) -> dict[str, Any]:
        summary = train_peer(folder, str(resolve_model(start)), peer_data(cfg), settings, cache_dir=cache_dir,
                             dev_pool_depth=cfg.dev_pool, dev_metric=cfg.dev_metric, device=device)
        return {"best_step": summary["best_step"], "best_dev": summary["best_dev"]}

    return {"kind": PEER_ST, "model": start, **settings.model_dump(), **dev}, run


@dataclass
class PeerData:
    """What a peer run trains and selects on: hardneg's training queries and dev set of one dataset."""

    dataset: Any
    train_qids: list[str]
    dev_qids: list[str]
    train_qrels: dict[str, dict[str, int]]
    dev_qrels: dict[str, dict[str, int]]
    queries: dict[str, str]  # query id -> text, train and dev
    docs: dict[str, str]  # document id -> ``title text`` (what every hardneg encoder sees)

    def record(self) -> dict[str, Any]:
        """What ``peer.json`` records of the data: its sizes and the dev query ids."""
        return {"train_queries": len(self.train_qids), "docs": len(self.docs), "dev_query_ids": self.dev_qids}


def peer_data(cfg: TrainConfig, *, limit: int | None = None, extra_docs: int | None = None) -> PeerData:
    """The training queries and dev set hardneg's trainer would use for ``cfg`` (its ``data``, ``dev_split``, or
    the carve-out of ``dev_fraction``/``dev_carve``/``seed``). ``limit``: the first ``limit`` training queries (and
    ``max(8, limit // 8)`` dev queries) with their positives plus ``extra_docs`` random documents, for a smoke
    run."""
    split = train_dev_split(cfg)
    ds, train_qids, dev_qids = split.dataset, split.train_qids, split.dev_qids
    qrels, queries = {**split.train_qrels, **split.dev_qrels}, {**split.train_queries, **split.dev_queries}
    if limit:
        train_qids, dev_qids = train_qids[:limit], dev_qids[: max(8, limit // 8)]
    docs = {d.doc_id: d.full_text() for d in ds.iter_docs()}
    if limit:
        keep = {d for q in train_qids + dev_qids for d in qrels[q]}
        others = sorted(set(docs) - keep)
        keep |= set(random.Random(cfg.seed).sample(others, min(extra_docs or 0, len(others))))
        docs = {d: t for d, t in docs.items() if d in keep}
    return PeerData(ds, list(train_qids), list(dev_qids), {q: qrels[q] for q in train_qids},
                    {q: qrels[q] for q in dev_qids}, {q: queries[q].text for q in [*train_qids, *dev_qids]}, docs)


# ----------------------------------------------------------------------------- the three parts of a run
def mine(model: Any, data: PeerData, settings: PeerSettings) -> list[dict[str, str]]:
    """sentence-transformers' documented mining: ``num_negatives`` hard negatives per (query, positive), the top
    ones beyond ``relative_margin`` below the positive's score, from the whole corpus; as triplet rows."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    positives = positives_of(data.train_qrels)
    pairs = [(data.queries[q], data.docs[d]) for q in data.train_qids for d in sorted(positives[q]) if d in data.docs]
    if not pairs:
        raise HardnegError("no training query has a relevant document in the corpus: nothing to train the peer on")
    dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    mined = mine_hard_negatives(dataset, model, corpus=list(data.docs.values()),
                                relative_margin=settings.relative_margin, num_negatives=settings.num_negatives,
                                sampling_strategy="top", batch_size=MINE_BATCH, output_format="triplet",
                                verbose=False)
    if len(mined) == 0:
        raise HardnegError(f"mining found no document scoring below {1 - settings.relative_margin:g} × its query's "
                           "positive (relative_margin): lower relative_margin, or start from a trained model")
    return [dict(row) for row in mined]


def dev_pool(data: PeerData, cache_dir: str | Path | None, depth: int) -> list[str]:
    """hardneg's dev pool: BM25's top-``depth`` of every dev query plus its positives (``depth`` 0: the corpus)."""
    if depth <= 0:
        return list(data.docs)
    queries = {q: Query(q, data.queries[q]) for q in data.dev_qids}
    pool = dev_pool_ids(data.dataset, queries, data.dev_qrels, depth, cache_dir, data.docs)
    return sorted(d for d in pool if d in data.docs)


def dev_metrics(model: Any, data: PeerData, pool: list[str], dev_metric: str) -> dict[str, float]:
    """The dev measures of hardneg's trainer (``dev_metric`` first) for ``model``: the dev queries ranked exactly
    in ``pool`` as deep as the measures need."""
    measures = dev_measures(dev_metric)
    docs = model.encode([data.docs[d] for d in pool], batch_size=64, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False)
    q = model.encode([data.queries[x] for x in data.dev_qids], batch_size=64, normalize_embeddings=True,
                     convert_to_numpy=True, show_progress_bar=False)
    scores = q @ docs.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, : min(dev_depth(measures), len(pool))]
    run = {qid: [(pool[j], float(scores[i, j])) for j in top[i]] for i, qid in enumerate(data.dev_qids)}
    return evaluate(run, data.dev_qrels, measures)


def _trainer(model: Any, triplets: list[dict[str, str]], settings: PeerSettings, out: Path, log: Path) -> Any:
    """The sentence-transformers trainer of one run: a checkpoint (with the trainer's state) per epoch."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import PrinterCallback

    if settings.loss == "cmnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=settings.mini_batch_size)
    else:
        loss = losses.MultipleNegativesRankingLoss(model)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), num_train_epochs=settings.num_train_epochs,
        per_device_train_batch_size=settings.per_device_train_batch_size, learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_ratio,  # transformers 5: a float below 1 is the warm-up's share of the steps
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="epoch", seed=settings.seed, logging_steps=1,
        report_to="none", save_only_model=False, use_cpu=model.device.type == "cpu", disable_tqdm=True,
    )
    dataset = Dataset.from_dict({k: [row[k] for row in triplets] for k in ("anchor", "positive", "negative")})
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss,
                                         callbacks=[_step_log(log)])
    trainer.remove_callback(PrinterCallback)  # the steps go to train_log.jsonl, not to stdout
    return trainer


def _step_log(path: Path) -> Any:
    """A callback that appends each optimiser step's loss, learning rate and seconds to ``path`` (hardneg's
    ``train_log.jsonl`` records of kind ``train``)."""
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        tic = 0.0
        seconds = math.nan

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.tic = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.seconds = time.perf_counter() - self.tic

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                record = {"kind": "train", "step": state.global_step, "loss": float(logs["loss"]),
                          "lr": logs.get("learning_rate"), "epoch": logs.get("epoch"), "seconds": self.seconds}
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")

    return StepLog()


def checkpoints(folder: Path) -> list[Path]:
    """The complete epoch checkpoints of a run (its trainer state written), in order."""
    found = [p for p in (folder / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _epoch(checkpoint: Path) -> int:
    return round(float(read_json(checkpoint / "trainer_state.json")["epoch"]))


def mined_triplets(path: Path, model_path: str, data: PeerData, settings: PeerSettings,
                   device: str = "cpu") -> list[dict[str, str]]:
    """The triplets :func:`mine` finds with the start model at ``model_path`` (on ``device``): read from ``path``
    when there, else mined and written there (JSON lines)."""
    from sentence_transformers import SentenceTransformer

    if path.is_file():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    start = SentenceTransformer(model_path, device=device)
    start.max_seq_length = settings.max_seq_length
    rows = mine(start, data, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    return rows


def _check_record(folder: Path, record: dict[str, Any]) -> None:
    path = folder / "peer.json"
    if path.is_file() and read_json(path) != record:
        raise HardnegError(f"{folder}: holds a peer run of other settings or data ({path}); remove the folder or "
                           "choose another")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def train_peer(folder: str | Path, model_path: str, data: PeerData, settings: PeerSettings, *,
               cache_dir: str | Path | None = None, dev_pool_depth: int = 20, dev_metric: str = "RR@10",
               device: str = "cpu", triplets_cache: Path | None = None) -> dict[str, Any]:
    """Run sentence-transformers' recipe from ``model_path`` into ``folder`` (see the module's docstring): mine,
    train ``num_train_epochs`` epochs with a checkpoint each, score every epoch on dev, copy the dev-best epoch
    to ``folder/model``. Resumes a killed run; a finished one returns its summary at once."""
    from sentence_transformers import SentenceTransformer

    folder = Path(folder)
    summary_path = folder / "summary.json"
    record = {"model": str(model_path), "settings": settings.model_dump(), "data": data.record(),
              "dev_pool": dev_pool_depth, "dev_metric": dev_metric}
    _check_record(folder, record)
    if summary_path.is_file():
        return read_json(summary_path)
    log, out = folder / "train_log.jsonl", folder / "checkpoints"
    done = checkpoints(folder)
    if not done or _epoch(done[-1]) < settings.num_train_epochs:
        triplets = mined_triplets(triplets_cache or folder / "triplets.jsonl", model_path, data, settings, device)
        for partial in out.glob("checkpoint-*"):  # a checkpoint the kill interrupted
            if partial not in done:
                shutil.rmtree(partial)
        resume = done[-1] if done else None
        kept = int(resume.name.split("-")[1]) if resume else 0
        old = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
        log.write_text("".join(f"{x}\n" for x in old if json.loads(x).get("step", 0) <= kept), encoding="utf-8")
        model = SentenceTransformer(model_path, device=device)
        model.max_seq_length = settings.max_seq_length
        trainer = _trainer(model, triplets, settings, out, log)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        del trainer, model
        done = checkpoints(folder)
    points = _dev_points(folder, done, data, cache_dir, dev_pool_depth, dev_metric, device)
    best = max(points, key=lambda p: (p[dev_metric], -p["epoch"]))  # a tie goes to the earlier epoch
    _finish(folder, best, points, done, settings, data, dev_metric, triplets_cache)
    return read_json(summary_path)


def _dev_points(folder: Path, done: list[Path], data: PeerData, cache_dir: str | Path | None, depth: int,
                metric: str, device: str) -> list[dict[str, Any]]:
    """Every epoch's dev metrics (``dev/epoch-<e>.json``, computed once)."""
    from sentence_transformers import SentenceTransformer

    pool: list[str] | None = None
    points = []
    for checkpoint in done:
        epoch = _epoch(checkpoint)
        path = folder / "dev" / f"epoch-{epoch}.json"
        if not path.is_file():
            pool = pool if pool is not None else dev_pool(data, cache_dir, depth)
            model = SentenceTransformer(str(checkpoint), device=device)
            metrics = dev_metrics(model, data, pool, metric)
            write_json(path, {"epoch": epoch, "step": int(checkpoint.name.split("-")[1]),
                              "checkpoint": checkpoint.name, **metrics})
            logger.info("peer epoch %d dev %s", epoch, json.dumps(metrics))
        points.append(read_json(path))
    return points


def _finish(folder: Path, best: dict[str, Any], points: list[dict[str, Any]], done: list[Path],
            settings: PeerSettings, data: PeerData, metric: str, triplets_cache: Path | None) -> None:
    """``model/`` (the best epoch), the dev records of ``train_log.jsonl``, ``dev_metrics.json`` and, last,
    ``summary.json``; then the checkpoints lose the trainer state only a resume needed."""
    target = folder / "model"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder / "checkpoints" / best["checkpoint"], target,
                    ignore=shutil.ignore_patterns(*TRAINER_STATE_FILES, "trainer_state.json", "training_args.bin"))
    log = folder / "train_log.jsonl"
    steps = [line for line in log.read_text(encoding="utf-8").splitlines() if json.loads(line).get("kind") != "dev"]
    devs = [json.dumps({"kind": "dev", **{k: v for k, v in p.items() if k != "checkpoint"}}) for p in points]
    log.write_text("".join(f"{x}\n" for x in [*steps, *devs]), encoding="utf-8")
    metrics = {k: v for k, v in best.items() if k not in ("checkpoint", "epoch", "step")}
    write_json(folder / "dev_metrics.json", {"step": best["epoch"], "optimizer_step": best["step"], **metrics})
    triplets = triplets_cache or folder / "triplets.jsonl"
    write_json(folder / "summary.json", {
        "kind": PEER_ST, "loss": LOSSES[settings.loss], "epochs": len(done),
        "steps": int(done[-1].name.split("-")[1]),
        "best_step": best["epoch"], "best_dev": best[metric], "best_optimizer_step": best["step"],
        "dev_metric": metric, "train_queries": len(data.train_qids), "dev_queries": len(data.dev_qids),
        "triplets": sum(1 for line in triplets.open(encoding="utf-8") if line.strip()) if triplets.is_file() else None,
        "checkpoint": best["checkpoint"],
    })
    for checkpoint in done:
        for pattern in TRAINER_STATE_FILES:
            for path in checkpoint.glob(pattern):
                path.unlink()
