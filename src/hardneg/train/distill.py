"""Distillation from a teacher's scores (``--distill margin-mse|kl``, ``--teacher``).

The losses (both over *scores*, like :mod:`hardneg.train.losses`; the student's are the ones every loss sees,
``scale · <q, d>``; the teacher's are multiplied by ``--distill-teacher-scale``, 1 by default, which puts a
teacher on the student's scale: a fusion's scores lie in ``[0, 2]``, a MiniLM student's in ``[-20, 20]``):

* ``margin-mse`` (Hofstätter et al., 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
  Knowledge Distillation"; sentence-transformers' ``MarginMSELoss``): the mean over valid
  (query, positive, negative) triples of ``((s⁺ − s⁻) − (t⁺ − t⁻))²`` (:func:`margin_mse_sum`);
* ``kl`` (listwise; sentence-transformers' ``DistillKLDivLoss``): over each query's candidates (its
  positive(s) and its own hard negatives), ``KL(softmax(t / T) ‖ softmax(s / T)) · T²`` (Hinton et al.'s
  ``T²``, as ST scales by the temperature squared), the mean over the queries with at least two candidates
  (:func:`listwise_kl_sum`; ST's ``batchmean``).

How a method uses them (:class:`Distiller`, the ``--distill-weight W``):

* static, bm25neg and ANCE: the loss IS ``W · L_distill`` over each query's positive and own sampled
  negatives (the ranking loss ``--loss`` is not computed);
* STAR: ``W · L_distill`` over the own hard negatives replaces the hard-negative term ``L_s``; the
  random-negative term ``α · L_r`` over the batch's other documents stays (they have no teacher score, and
  that term is STAR's point: it keeps the whole embedding space in order). Needs ``--star-mixing alpha``;
* ADORE: ``L_lambda + W · L_distill``, the added term over the step's pairs (the retrieved top-K's
  non-relevant documents against the relevant ones), which the teacher scores on demand.

Teacher scores come from the run's teacher cache (:class:`~hardneg.negatives.teachers.TeacherScores`, or a
fusion's :class:`~hardneg.negatives.fusion.FusedScores`): for static/STAR/ANCE every query's negative pool
and positives are scored once before training (:meth:`Distiller.prepare`, in chunks of queries, each chunk's
new pairs written to the cache as it goes), so the steps only read the cache; ADORE's candidates change every
step and are scored on demand (each pair once per cache).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hardneg import distributed as dist
from hardneg.distributed import global_mean
from hardneg.errors import HardnegError

__all__ = ["DISTILL_KINDS", "PREPARE_QUERIES", "Distiller", "distill_loss", "listwise_kl_sum", "margin_mse_sum"]

#: ``--distill`` values
DISTILL_KINDS = ("none", "margin-mse", "kl")
#: queries whose pools :meth:`Distiller.prepare` asks the teacher about at once
PREPARE_QUERIES = 1024


def margin_mse_sum(s_pos: Tensor, s_neg: Tensor, t_pos: Tensor, t_neg: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(Σ_valid ((s⁺ − s⁻) − (t⁺ − t⁻))², number of valid triples)``.

    ``s_pos``/``t_pos`` ``(B, P)``, ``s_neg``/``t_neg`` ``(B, N)``, ``mask`` ``(B, P, N)`` bool (True = a valid
    (positive, negative) pair). Masked entries contribute 0 and get a zero gradient whatever their value."""
    margin = (s_pos[:, :, None] - s_neg[:, None, :]) - (t_pos[:, :, None] - t_neg[:, None, :]).detach()
    zero = torch.zeros((), dtype=margin.dtype, device=margin.device)
    margin = torch.where(mask, margin, zero)
    return (margin * margin).sum(), mask.sum().to(margin.dtype)


def listwise_kl_sum(s: Tensor, t: Tensor, mask: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(Σ_queries KL(softmax(t/T) ‖ softmax(s/T)) · T², number of queries with ≥ 2 valid candidates)``.

    ``s``, ``t``, ``mask``: ``(B, C)``; a masked candidate is left out of both softmaxes. A query with fewer than
    two valid candidates (a softmax over one is constant) contributes 0 and is not counted."""
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise HardnegError(f"--distill-temperature must be a positive number, not {temperature!r}")
    rows = mask.sum(1) >= 2
    keep = mask & rows[:, None]
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    ninf = torch.full((), float("-inf"), dtype=s.dtype, device=s.device)
    s_t = torch.where(keep, s / temperature, torch.where(rows[:, None], ninf, zero))
    t_t = torch.where(keep, t.detach().to(s.dtype) / temperature, torch.where(rows[:, None], ninf, zero))
    log_q = torch.log_softmax(s_t, dim=1)
    log_p = torch.log_softmax(t_t, dim=1)
    terms = torch.where(keep, log_p.exp() * (log_p - log_q), zero)
    return terms.sum() * temperature**2, rows.sum().to(s.dtype)


def distill_loss(kind: str, s_pos: Tensor, s_neg: Tensor, t_pos: Tensor, t_neg: Tensor, pos_valid: Tensor,
                 neg_valid: Tensor, temperature: float = 1.0) -> Tensor:
    """The ``kind`` distillation loss of queries with positives ``(B, P)`` and negatives ``(B, N)`` (student
    ``s_*``, teacher ``t_*``; ``*_valid`` bool masks), a global mean (:func:`~hardneg.distributed.global_mean`):
    ``margin-mse`` over the valid (positive, negative) pairs, ``kl`` over each query's valid positives and
    negatives together."""
    if kind == "margin-mse":
        return global_mean(*margin_mse_sum(s_pos, s_neg, t_pos, t_neg, pos_valid[:, :, None] & neg_valid[:, None, :]))
    if kind == "kl":
        return global_mean(*listwise_kl_sum(torch.cat([s_pos, s_neg], 1), torch.cat([t_pos, t_neg], 1),
                                            torch.cat([pos_valid, neg_valid], 1), temperature))
    raise HardnegError(f"--distill must be one of {', '.join(DISTILL_KINDS)}, not {kind!r}")


class Distiller:
    """A method's distillation term: the teacher's scores of a batch's documents and the loss over them.

    ``selector``: the run's :class:`~hardneg.train.methods.mining.TrainSelector` (its teacher cache, the query
    and document texts); ``pool(qid)``: the documents a listwise teacher (a fusion) normalises over with the
    step's own, for static/STAR/ANCE the query's whole negative pool (``None``: the step's documents only)."""

    def __init__(self, config: Any, selector: Any, positives: Mapping[str, Any], corpus: Sequence[str],
                 pool: Callable[[str], Sequence[str]] | None = None) -> None:
        self.kind, self.weight = config.distill, float(config.distill_weight)
        self.temperature = float(config.distill_temperature)
        self.teacher_scale = float(getattr(config, "distill_teacher_scale", 1.0))
        self.selector, self.pool = selector, pool
        known = set(corpus)
        #: each query's positives in the corpus (a fusion normalises over them too; prepare scores them)
        self.positives = {q: sorted(d for d in docs if d in known) for q, docs in positives.items()}
        if selector.teacher is None:
            raise HardnegError("--distill needs a --teacher (a CrossEncoder folder, a bi-encoder, bm25 or a fusion "
                               "such as fusion:bm25+minilm)")

    @property
    def teacher(self) -> Any:
        return self.selector.teacher

    def _request(self, qid: str, docs: Sequence[str]) -> list[str]:
        extra = list(self.pool(qid)) + self.positives.get(qid, []) \
            if self.pool is not None and self.teacher.listwise else []
        return list(dict.fromkeys([*docs, *extra]))

    def lookup(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
        """``qid -> {docid: teacher score}`` of the ``wanted`` documents (from the cache; scored when missing)."""
        requests = {q: self._request(q, docs) for q, docs in wanted.items()}
        got = self.teacher.scores(requests, self.selector.query_text(), self.selector.doc_text)
        return {q: dict(zip(requests[q], got[q].tolist(), strict=True)) for q in requests}

    def prepare(self, pools: Mapping[str, Sequence[str]]) -> None:
        """Score every query's ``pools`` and positives once (in chunks of :data:`PREPARE_QUERIES` queries), so
        the steps read the cache. Under torchrun rank ``r`` scores queries ``r, r + N, …`` (equal shares), a
        barrier waits for the others', and every rank reads their part files."""
        qids = [q for q in pools if q in self.selector.query_text()]
        share = qids[dist.rank() :: dist.world_size()]
        for a in range(0, len(share), PREPARE_QUERIES):
            self.lookup({q: [*self.positives.get(q, []), *pools[q]] for q in share[a:a + PREPARE_QUERIES]})
        if dist.is_distributed():
            dist.barrier()
            self.teacher.reload()

    def loss(self, s_pos: Tensor, s_neg: Tensor, pos_docs: Sequence[Sequence[str]],
             neg_docs: Sequence[Sequence[str]], qids: Sequence[str], pos_valid: Tensor,
             neg_valid: Tensor) -> Tensor:
        """``L_distill`` (unweighted) of student scores ``s_pos (B, P)``, ``s_neg (B, N)`` whose documents are
        ``pos_docs[b][p]``, ``neg_docs[b][n]`` (anything where the ``*_valid`` mask is False)."""
        wanted: dict[str, list[str]] = {}
        for q, p, n, pv, nv in zip(qids, pos_docs, neg_docs, pos_valid.tolist(), neg_valid.tolist(), strict=True):
            docs = wanted.setdefault(q, [])
            docs += [d for d, ok in zip(p, pv, strict=True) if ok] + [d for d, ok in zip(n, nv, strict=True) if ok]
        scores = self.lookup(wanted)

        def table(docs: Sequence[Sequence[str]], valid: Tensor) -> Tensor:
            out = np.zeros(tuple(valid.shape), dtype=np.float64)
            for b, (q, row, ok) in enumerate(zip(qids, docs, valid.tolist(), strict=True)):
                out[b] = [self.teacher_scale * scores[q][d] if v else 0.0 for d, v in zip(row, ok, strict=True)]
            return torch.from_numpy(out).to(s_pos.device, s_pos.dtype)

        return distill_loss(self.kind, s_pos, s_neg, table(pos_docs, pos_valid), table(neg_docs, neg_valid),
                            pos_valid, neg_valid, self.temperature)

    def layout_loss(self, scores: Tensor, batch: Any, own: Tensor, n: int) -> Tensor:
        """``L_distill`` over the trainer's score matrix (:mod:`hardneg.train.methods`' layout): each row's own
        positive (column ``row_offset + i``) and own sampled negatives (``own``: their valid columns)."""
        b = scores.shape[0]
        g = batch.global_batch or b
        rows = torch.arange(b, device=scores.device)
        pos_col = rows + batch.row_offset
        neg_cols = g + pos_col[:, None] * n + torch.arange(n, device=scores.device)[None, :]  # (B, n)
        s_pos = scores[rows, pos_col][:, None]
        s_neg = scores.gather(1, neg_cols)
        neg_valid = own.gather(1, neg_cols)
        doc = batch.doc_list
        cols = neg_cols.tolist()
        return self.loss(s_pos, s_neg, [[doc[c]] for c in pos_col.tolist()], [[doc[c] for c in r] for r in cols],
                         [e.qid for e in batch.examples], torch.ones_like(s_pos, dtype=torch.bool), neg_valid)
