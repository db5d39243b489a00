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
``bm25neg``, :mod:`.ance`, :mod:`.star`, :mod:`.adore`), all declared in one
registry here: a :class:`MethodSpec` per method says what it needs (hard-negative
source, a negatives file, selection rules, a frozen document tower, its own
settings and their check), and config validation, the CLI and the trainer ask
:func:`method_spec`, never a method's name. A method gets a :class:`MethodContext`
(not the trainer; nothing here imports :mod:`hardneg.train.trainer`) and a
:class:`StepBatch` with every loss call. ADORE computes the whole batch loss itself
(hook :meth:`Method.batch_loss`) and has dev ranked in its fixed index
(:meth:`Method.dev_index`; the one dev evaluation is :mod:`hardneg.train.dev`).

Under torchrun (:mod:`hardneg.distributed`) a rank's ``scores`` hold only
its own queries, rows ``batch.row_offset …`` of the global batch, against every
document of the global batch (same column layout, with B the global batch size
``batch.global_batch``); losses are sums over the rank's rows divided by counts
over the global batch (:func:`~hardneg.distributed.global_mean`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hardneg.errors import HardnegError
from hardneg.train.methods.settings import check_adore, check_ance, is_index_path

if TYPE_CHECKING:
    from hardneg.train.config import TrainConfig
    from hardneg.train.methods.base import Method, MethodContext, StepBatch
    from hardneg.train.methods.mining import mine_with_model

__all__ = [
    "Method",
    "MethodContext",
    "StepBatch",
    "MethodSpec",
    "make_method",
    "method_class",
    "method_help",
    "method_names",
    "method_spec",
    "method_specs",
    "methods_that",
    "mine_with_model",
    "external_index",
]


@dataclass(frozen=True)
class MethodSpec:
    """What a method is and what it needs, declared once (read without importing torch).

    Config validation, the CLI, the experiment runner and the report ask these, never a method's name."""

    name: str
    target: str  # "module:Class", imported when the method is asked for
    help: str  # one line, for CLI help
    #: where the query's own hard negatives come from: None (none), "random" (sampled from the corpus),
    #: "bm25" (BM25's top-k), "start-model" (a file, or mined once with the start model), "refreshed"
    #: (re-mined with the current model), "index" (searched every step in a fixed index)
    hard_negatives: str | None = None
    #: the batch's other documents are negatives too (In-Batch, Rand, STAR)
    batch_negatives: bool = False
    #: takes ``--negatives FILE`` (else mines with the start model)
    negatives_file: bool = False
    #: takes the negative-selection rules (hardneg.negatives.rules.NegativeRules)
    selection_rules: bool = False
    #: separate towers, the document tower frozen with its index (ADORE)
    frozen_doc: bool = False
    #: TrainConfig fields only this method takes (any other method refuses a non-default value)
    settings: tuple[str, ...] = ()
    #: checks its settings together (a HardnegError naming the flag), run by TrainConfig.validate
    check: Callable[[TrainConfig], None] | None = None
    #: its ``settings`` were added after other methods' checkpoints existed: they are left out of the other
    #: methods' config fingerprints, so those checkpoints still resume (False: hashed at their defaults)
    later_settings: bool = False
    #: how ``--distill`` enters its loss (hardneg.train.distill): "loss" (it is the loss), "hard-term" (it
    #: replaces the hard-negative term, STAR), "added" (added to the method's loss, ADORE); None: no distillation
    distill: str | None = None

    @property
    def random_negatives(self) -> bool:
        """Its negatives are random (the paper's baselines for hard negatives: In-Batch, Rand)."""
        return self.hard_negatives in (None, "random")

    @property
    def takes_topk(self) -> bool:
        """The shared ``topk`` setting (the depth hard negatives are drawn from) applies; a method searching
        its own fixed index every step has its own depth setting instead."""
        return self.hard_negatives != "index"


_ADORE_SETTINGS = ("index", "metric", "adore_topk", "adore_loss", "adore_positives", "adore_reduction",
                   "nprobe", "ef_search", "index_fp16", "index_ids", "index_build", "index_check")

#: THE registry of training methods, in CLI order
_REGISTRY: dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("inbatch", "hardneg.train.methods.inbatch:InBatch",
               "in-batch negatives: the other queries' positives", batch_negatives=True),
    MethodSpec("rand", "hardneg.train.methods.rand:RandNeg",
               "random corpus negatives (plus the rest of the batch)", hard_negatives="random",
               batch_negatives=True, settings=("rand_batch_positives",)),
    MethodSpec("bm25neg", "hardneg.train.methods.static:BM25Neg",
               "hard negatives sampled from BM25's top-k", hard_negatives="bm25", selection_rules=True,
               distill="loss"),
    MethodSpec("static", "hardneg.train.methods.static:StaticNeg",
               "hard negatives from a fixed run (a file, or mined once with the start model)",
               hard_negatives="start-model", negatives_file=True, selection_rules=True, distill="loss"),
    MethodSpec("ance", "hardneg.train.methods.ance:Ance",
               "hard negatives re-mined with the current model every refresh_every steps",
               hard_negatives="refreshed", selection_rules=True, settings=("refresh_every",), check=check_ance,
               distill="loss"),
    MethodSpec("star", "hardneg.train.methods.star:Star",
               "static hard negatives + the batch's other documents as random negatives (STAR)",
               hard_negatives="start-model", batch_negatives=True, negatives_file=True, selection_rules=True,
               distill="hard-term"),
    MethodSpec("adore", "hardneg.train.methods.adore:Adore",
               "only the query tower trains, on its own top-K in a fixed document index (ADORE)",
               hard_negatives="index", selection_rules=True, frozen_doc=True, settings=_ADORE_SETTINGS,
               check=check_adore, later_settings=True, distill="added"),
)}


def method_spec(name: str) -> MethodSpec:
    """What method ``name`` is and needs (a clear error for an unknown name)."""
    if name not in _REGISTRY:
        raise HardnegError(f"unknown method {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def external_index(config: TrainConfig) -> bool:
    """Whether a run trains against an index hardneg did not build (``--index PATH`` of a method that searches
    a fixed index): then no document encoder is loaded and no corpus is tokenized (issue 29)."""
    spec = method_spec(config.method)
    return spec.hard_negatives == "index" and is_index_path(config.index)


def method_specs() -> tuple[MethodSpec, ...]:
    """Every method's spec, in CLI order."""
    return tuple(_REGISTRY.values())


def methods_that(needs: Callable[[MethodSpec], bool]) -> str:
    """The names of the methods whose spec ``needs``, in words (``"static and star"``), for messages."""
    names = [s.name for s in _REGISTRY.values() if needs(s)]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def method_names() -> tuple[str, ...]:
    """Every training method's name, in CLI order."""
    return tuple(_REGISTRY)


def method_help(name: str) -> str:
    """One line describing method ``name`` (for CLI help)."""
    return method_spec(name).help


def method_class(name: str) -> type[Method]:
    module, attr = method_spec(name).target.split(":")
    return getattr(importlib.import_module(module), attr)


def make_method(name: str, ctx: MethodContext) -> Method:
    return method_class(name)(ctx)


#: names imported on first use, so that the registry (method_names, method_help) imports no torch
_LAZY = {"Method": "base", "MethodContext": "base", "StepBatch": "base", "mine_with_model": "mining"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
