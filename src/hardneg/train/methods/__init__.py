"""Training methods = a negative source + a loss over the batch's score matrix.

Every step the trainer encodes the batch's queries ``q`` (B) and the documents
``[positives (B); negatives of example 0; negatives of example 1; …]`` (M), and
hands the method ``scores = scale · q @ docs.T`` (B × M). Column ``i`` is query
``i``'s positive; columns ``B + i·n … B + (i+1)·n − 1`` are its own sampled
negatives; every other column is "someone else's document". A column holding a
known positive of query ``i`` (an in-batch collision, or a positive inside a
mined list) is never used as a negative for it
(:func:`~hardneg.train.layout.layout_masks`).

=========  ================================================  ===========================
method     negatives of query i                              loss
=========  ================================================  ===========================
inbatch    the other queries' positives                      pairwise over them
rand       ``n`` random corpus docs per query, plus every     pairwise over all
           other document of the batch (all random)
bm25neg    ``n`` sampled from BM25's top-``topk``             pairwise over own negatives
static     ``n`` sampled from a run's top-``topk`` (a file,   pairwise over own negatives
           or mined once with the start model)
ance       like static, re-mined with the current model       pairwise over own negatives
           every ``refresh_every`` steps
star       static hard negatives (own) + every other          ``L_s + α·L_r`` (paper
           document of the batch reused as random negatives   Eq. 13) or DRhard's pairmean
adore      the non-relevant documents of the query's top-K    ΔM-weighted pairwise (paper
           in a fixed index, retrieved every step with the    section 5); only the query
           current query tower                                tower trains
=========  ================================================  ===========================

"pairwise" is :func:`~hardneg.train.losses.pairwise_loss` (RankNet, paper Eq. 14,
or softmax cross-entropy: ``--loss``), STAR's is
:func:`~hardneg.train.losses.star_loss`, ADORE's
:func:`~hardneg.train.losses.lambda_pairwise`: the functions the loss tests check
against the paper's equations are the ones training calls.

One file per method (:mod:`.inbatch`, :mod:`.rand`, :mod:`.static` with
``bm25neg``, :mod:`.ance`, :mod:`.star`; ADORE is :mod:`hardneg.train.adore`), all
named in one registry here (:func:`method_names`, :func:`method_help`,
:func:`method_class`). A method gets a :class:`MethodContext` (not the trainer)
and a :class:`StepBatch` with every loss call. ADORE computes the whole batch
loss itself (hook :meth:`Method.batch_loss`) and evaluates dev on its fixed
index (:meth:`Method.evaluate_dev`).

Under torchrun (:mod:`hardneg.distributed`) a rank's ``scores`` hold only
its own queries, rows ``batch.row_offset …`` of the global batch, against every
document of the global batch (same column layout, with B the global batch size
``batch.global_batch``); losses are sums over the rank's rows divided by counts
over the global batch (:func:`~hardneg.distributed.global_mean`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hardneg.errors import HardnegError

if TYPE_CHECKING:
    from hardneg.train.methods.base import Method, MethodContext, StepBatch
    from hardneg.train.methods.mining import mine_with_model

__all__ = [
    "Method",
    "MethodContext",
    "StepBatch",
    "make_method",
    "method_class",
    "method_help",
    "method_names",
    "mine_with_model",
]


@dataclass(frozen=True)
class _Entry:
    target: str  # "module:Class", imported when the method is asked for
    help: str  # one line, for CLI help


#: THE registry of training methods, in CLI order
_REGISTRY: dict[str, _Entry] = {
    "inbatch": _Entry("hardneg.train.methods.inbatch:InBatch",
                      "in-batch negatives: the other queries' positives"),
    "rand": _Entry("hardneg.train.methods.rand:RandNeg",
                   "random corpus negatives (plus the rest of the batch)"),
    "bm25neg": _Entry("hardneg.train.methods.static:BM25Neg",
                      "hard negatives sampled from BM25's top-k"),
    "static": _Entry("hardneg.train.methods.static:StaticNeg",
                     "hard negatives from a fixed run (a file, or mined once with the start model)"),
    "ance": _Entry("hardneg.train.methods.ance:Ance",
                   "hard negatives re-mined with the current model every refresh_every steps"),
    "star": _Entry("hardneg.train.methods.star:Star",
                   "static hard negatives + the batch's other documents as random negatives (STAR)"),
    "adore": _Entry("hardneg.train.adore:Adore",
                    "only the query tower trains, on its own top-K in a fixed document index (ADORE)"),
}


def method_names() -> tuple[str, ...]:
    """Every training method's name, in CLI order."""
    return tuple(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise HardnegError(f"unknown method {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def method_help(name: str) -> str:
    """One line describing method ``name`` (for CLI help)."""
    return _entry(name).help


def method_class(name: str) -> type[Method]:
    module, attr = _entry(name).target.split(":")
    return getattr(importlib.import_module(module), attr)


def make_method(name: str, ctx: MethodContext) -> Method:
    return method_class(name)(ctx)


#: names imported on first use, so that the registry (method_names, method_help) imports no torch
_LAZY = {"Method": "base", "MethodContext": "base", "StepBatch": "base", "mine_with_model": "mining"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
