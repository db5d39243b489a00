"""What every method shares: the step context it runs in, one batch's layout, and the base class.

A method never sees the whole :class:`~hardneg.train.trainer.Trainer`: it gets a
:class:`MethodContext` once (config, model, data, tokenized corpus, score scale,
the trainer's train-mode switch and a mining hook) and a :class:`StepBatch` with
every loss call (this rank's examples, their negatives, the global batch's
document columns, and which rows of the global batch this rank scores).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hardneg.train.layout import layout_masks
from hardneg.train.methods.mining import mine_with_model

if TYPE_CHECKING:
    from hardneg.train.config import TrainConfig
    from hardneg.train.dev import DevIndex


#: the random stream of :meth:`Method.batch_examples`'s positive draws (apart from the negatives' streams)
_POSITIVE_STREAM = 0x706F73


class WeakCall:
    """A bound method held without a strong reference to its object (:class:`weakref.WeakMethod`).

    The trainer hands :class:`MethodContext` its own ``train_mode``; the method keeps the context and the
    trainer keeps the method, so a strong bound method would make a reference cycle that outlives the run
    (with ADORE's index, on a GPU, until the garbage collector happens to run)."""

    def __init__(self, method: Callable[[], None]) -> None:
        self._ref = weakref.WeakMethod(method)  # type: ignore[arg-type]
        self.__name__ = getattr(method, "__name__", "call")

    def __call__(self) -> None:
        method = self._ref()
        if method is None:
            raise RuntimeError(f"{self.__name__}: the training run this method belonged to is gone")
        method()


@dataclass
class MethodContext:
    """The parts of a training run a method may use (built by the trainer's setup, before the method).

    Rank and world size come from :mod:`hardneg.distributed` (``rank()``, ``world_size()``,
    ``is_main()``); ``train_mode()`` puts the model back in training mode (a frozen document tower
    stays in eval mode). A bound method given as ``train_mode`` is kept as a :class:`WeakCall`, so the
    context never keeps its trainer alive (no trainer ↔ method cycle: a finished run's index and model
    are freed when the trainer is dropped)."""

    config: TrainConfig
    model: Any  # hardneg.model.encoder.DualEncoder
    dataset: Any  # the training dataset (hardneg.data.dataset)
    cache_dir: Path
    store: Any  # the tokenized corpus: store[row] -> token ids, store.rows(rows)
    doc_ids: list[str]  # the corpus's document ids, in store row order
    queries: dict  # training and dev queries by id
    query_tokens: dict[str, list[int]]  # their token ids
    train_qrels: dict
    dev_qrels: dict
    positives: dict[str, set[str]]  # known positives (grade >= 1) of every training query
    scale: float  # score = scale · <q, d>
    train_mode: Callable[[], None]

    def __post_init__(self) -> None:
        if inspect.ismethod(self.train_mode):
            self.train_mode = WeakCall(self.train_mode)

    def mine(self, model, folder: Path | None = None) -> dict[str, list[str]]:
        """Top-``topk`` non-positive documents of every training query under ``model``
        (:func:`~hardneg.train.methods.mining.mine_with_model`)."""
        return mine_with_model(self, model, folder=folder)


@dataclass(frozen=True)
class StepBatch:
    """One rank's share of a global micro-batch, and the layout of its score matrix.

    ``scores`` (``B × M``) holds this rank's queries (rows ``row_offset …`` of the global batch of
    ``global_batch`` examples) against every document of the global batch, ``doc_list`` (columns:
    the global batch's positives, then the negatives of example 0, 1, …)."""

    examples: list  # this rank's examples (hardneg.train.order.Example)
    negatives: list[list[str]]  # their sampled negatives
    doc_list: list[str]
    row_offset: int = 0
    global_batch: int = 0


class Method:
    """Base of every method: no negatives of its own; subclasses define :meth:`loss`.

    What a method needs from the run (a frozen document tower, a negatives file, ...) is declared in its
    :class:`~hardneg.train.methods.MethodSpec`, not here."""

    name = ""
    n_negatives = 0

    def __init__(self, ctx: MethodContext) -> None:
        self.ctx = ctx
        self.config = ctx.config
        #: ``examples_per_query`` one: every query's positives in the corpus (its example's is drawn from them)
        self.query_positives: dict[str, list[str]] = {}

    # negatives -----------------------------------------------------------------
    def negatives(self, examples, start: int) -> list[list[str]]:
        return [[] for _ in examples]

    def after_step(self, step: int) -> dict[str, Any] | None:
        """Called after every optimiser step. Returns what extra work it did, which the trainer logs with its
        seconds as a ``remine`` record (ANCE re-mines here: ``{"docs_encoded": …, "queries_encoded": …}``),
        or ``None``."""
        return None

    def state_files(self) -> dict[str, Path]:
        """Files a checkpoint must keep to resume this method exactly."""
        return {}

    def restore(self, checkpoint: Path) -> None:
        """Restore from :meth:`state_files` copies in ``checkpoint``."""

    def train_examples(self, examples: list) -> list:
        """The examples the data order runs over: one per (query, positive) pair (``examples_per_query``
        each-positive), or one per query (``one``, DRhard's training datasets), whose positive
        :meth:`batch_examples` draws each time the query comes up."""
        if self.config.examples_per_query != "one":
            return examples
        first: dict[str, object] = {}
        for e in examples:
            first.setdefault(e.qid, e)
            self.query_positives.setdefault(e.qid, []).append(e.pos)
        return [first[q] for q in sorted(first)]

    def batch_examples(self, examples: list, start: int) -> list:
        """A micro-batch's examples as trained; ``start`` is the global position of its first one (the data
        order's counter). With one example per query, each query with several positives gets one drawn
        uniformly for its position (``random.choice`` in DRhard's ``__getitem__``), from ``(seed, position)``
        alone, so a resumed run draws what the straight run drew."""
        if not self.query_positives:
            return examples
        out = []
        for i, e in enumerate(examples):
            positives = self.query_positives[e.qid]
            if len(positives) > 1:
                rng = np.random.default_rng([self.config.seed, _POSITIVE_STREAM, start + i])
                e = replace(e, pos=positives[int(rng.integers(len(positives)))])
            out.append(e)
        return out

    def batch_loss(self, batch: StepBatch) -> tuple[torch.Tensor, dict] | None:
        """``(loss, parts)`` to compute the whole step's loss here; ``None``: the trainer's default
        (encode queries and documents, then :meth:`loss` over the score matrix)."""
        return None

    def dev_index(self) -> DevIndex | None:
        """Where the one dev evaluation (:mod:`hardneg.train.dev`) ranks dev: the method's own index (ADORE:
        its fixed one); ``None``: the current model's dev pool (BM25's top-N + positives, or the corpus)."""
        return None

    def after_save(self, folder: Path) -> None:
        """Called after the trainer saved the best model into ``folder``."""

    # loss ----------------------------------------------------------------------
    def positive_scores(self, scores: torch.Tensor, batch: StepBatch) -> torch.Tensor:
        """``(B,)``: each row's score of its own positive (column ``row_offset + i``)."""
        rows = torch.arange(scores.shape[0], device=scores.device)
        return scores[rows, rows + batch.row_offset]

    def masks(self, scores: torch.Tensor, batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean ``(B, M)`` masks ``(own negatives, other documents)``, both without collisions
        (:func:`~hardneg.train.layout.layout_masks`)."""
        return layout_masks([self.ctx.positives[e.qid] for e in batch.examples], batch.doc_list,
                            self.n_negatives, row_offset=batch.row_offset, global_batch=batch.global_batch,
                            device=scores.device)

    def loss(self, scores: torch.Tensor, batch: StepBatch) -> tuple[torch.Tensor, dict]:
        """``(loss, parts)`` over ``scores = scale · q @ docs.T`` (``parts``: logged counts)."""
        raise NotImplementedError(f"method {self.name!r} defines no loss over the score matrix")
