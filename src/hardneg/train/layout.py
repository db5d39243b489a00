"""The training batch's layout: which score-matrix columns are a query's negatives, and the
score builders that turn embeddings into the ``(pos, neg, mask)`` tensors of :mod:`hardneg.train.losses`.

The trainer scores this rank's queries against ``[positives of the global batch;
negatives of example 0; of example 1; …]``; :func:`layout_masks` gives the two
masks every method's loss uses (own negatives, every other document), without
the own positive and without any known positive of the query (a collision).
:func:`star_scores` builds STAR's tensors from embeddings in the same layout,
with the same masks, so its ``star_loss(mixing="pairmean")`` is checked against
DRhard's formula through the masks training uses.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass

import torch
from torch import Tensor

from hardneg.errors import HardnegError
from hardneg.train.losses import Mixing, star_loss

__all__ = ["StarScores", "collision_mask", "inbatch_scores", "layout_masks", "star_scores"]


def collision_mask(
    query_positives: Sequence[Set[str]],
    doc_ids: Sequence[str],
    device: torch.device | str | None = None,
) -> Tensor:
    """``(B, M)`` bool: True where ``doc_ids[j]`` is a known positive of query ``i``.

    Those pairs must never be used as negatives (pass ``~collisions`` as part of
    a mask). ``query_positives[i]`` is the set of positive doc ids of the i-th
    example's query (grade ≥ 1). Cost is ``O(M + Σ|positives|)``.
    """
    columns: dict[str, list[int]] = {}
    for j, docid in enumerate(doc_ids):
        columns.setdefault(docid, []).append(j)
    out = torch.zeros((len(query_positives), len(doc_ids)), dtype=torch.bool)
    for i, positives in enumerate(query_positives):
        for docid in positives:
            for j in columns.get(docid, ()):
                out[i, j] = True
    return out.to(device) if device is not None else out


def layout_masks(
    query_positives: Sequence[Set[str]],
    doc_ids: Sequence[str],
    n_negatives: int,
    *,
    row_offset: int = 0,
    global_batch: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """``(own, other)``: bool ``(B, M)`` masks of the training batch's score matrix.

    Layout (the trainer's and :func:`star_scores`'): ``doc_ids`` are
    ``[positives of the G examples of the global batch; n_negatives of example 0;
    of example 1; …; any extra documents]``, ``G = global_batch`` (default ``B``).
    Row ``i`` is example ``row_offset + i`` (``query_positives[i]``: its query's
    known positives). ``own`` marks the row's own negatives (columns
    ``G + r·n … G + (r+1)·n − 1``, ``r = row_offset + i``), ``other`` every other
    column ("someone else's document"); both leave out the row's own positive
    (column ``r``) and every column holding a known positive of the row's query.
    """
    b, m = len(query_positives), len(doc_ids)
    g = b if global_batch is None else global_batch
    n = int(n_negatives)
    col = torch.arange(m, device=device)[None, :]
    row = torch.arange(b, device=device)[:, None] + row_offset
    own_neg = (col >= g + row * n) & (col < g + (row + 1) * n)
    own_pos = col == row
    valid = ~collision_mask(query_positives, doc_ids, device=device) & ~own_pos
    return own_neg & valid, ~own_neg & valid


def inbatch_scores(
    q: Tensor, docs: Tensor, positive_index: Tensor, collisions: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Score every query against every doc in the batch.

    ``q``: ``(B, d)``, ``docs``: ``(M, d)``, ``positive_index``: ``(B,)`` long, the
    column of each query's positive in ``docs``; ``collisions``: ``(B, M)`` bool
    (see :func:`collision_mask`), True where doc ``j`` is a known positive of
    query ``i``.

    Returns ``(pos, neg, mask)``: ``pos = s[i, positive_index[i]]`` ``(B,)``,
    ``neg = q @ docs.T`` ``(B, M)`` (all columns) and ``mask`` ``(B, M)`` with the
    own positive column and every collision set to False. Used for in-batch
    negatives, random negatives appended to the batch and STAR.
    """
    if q.dim() != 2 or docs.dim() != 2 or q.shape[1] != docs.shape[1]:
        raise HardnegError(
            f"inbatch_scores: expected q (B, d) and docs (M, d); "
            f"got {tuple(q.shape)} and {tuple(docs.shape)}"
        )
    b, m = q.shape[0], docs.shape[0]
    positive_index = torch.as_tensor(positive_index, device=q.device)
    if positive_index.shape != (b,) or positive_index.is_floating_point():
        raise HardnegError(
            f"inbatch_scores: positive_index must be an integer tensor of shape ({b},); "
            f"got {tuple(positive_index.shape)} {positive_index.dtype}"
        )
    if b and (int(positive_index.min()) < 0 or int(positive_index.max()) >= m):
        raise HardnegError(f"inbatch_scores: positive_index must lie in [0, {m})")
    scores = q @ docs.T
    pos = scores.gather(1, positive_index.long()[:, None]).squeeze(1)
    cols = torch.arange(m, device=q.device)
    mask = cols[None, :] != positive_index.long()[:, None]
    if collisions is not None:
        if tuple(collisions.shape) != (b, m) or collisions.dtype != torch.bool:
            raise HardnegError(
                f"inbatch_scores: collisions must be a bool tensor of shape ({b}, {m}); "
                f"got {tuple(collisions.shape)} {collisions.dtype}"
            )
        mask = mask & ~collisions.to(q.device)
    return pos, scores, mask


@dataclass(frozen=True)
class StarScores:
    """Scores for :func:`star_loss`, built by :func:`star_scores`.

    ``pos`` ``(B,)``; ``hard`` ``(B, H)`` each query vs its own hard negatives;
    ``rand`` ``(B, M)`` each query vs *every* doc of the batch, columns laid out
    as ``rand_doc_ids`` = ``[positives (B) | hard negatives (B*H, grouped by
    query) | extra random docs (R)]``; ``rand_mask`` masks the query's own
    positive, its own hard negatives (they are in ``hard``) and collisions.
    """

    pos: Tensor
    hard: Tensor
    rand: Tensor
    hard_mask: Tensor
    rand_mask: Tensor
    rand_doc_ids: tuple[str, ...]

    def loss(self, alpha: float = 1.0, mixing: Mixing = "alpha") -> Tensor:
        return star_loss(
            self.pos,
            self.hard,
            self.rand,
            self.hard_mask,
            self.rand_mask,
            alpha=alpha,
            mixing=mixing,
        )


def star_scores(
    q: Tensor,
    pos_docs: Tensor,
    hard_docs: Tensor,
    *,
    pos_doc_ids: Sequence[str],
    hard_doc_ids: Sequence[Sequence[str]] | Sequence[str],
    query_positives: Sequence[Set[str]],
    rand_docs: Tensor | None = None,
    rand_doc_ids: Sequence[str] | None = None,
) -> StarScores:
    """Build STAR's score tensors and masks from a batch of embeddings.

    * ``q`` ``(B, d)``: query embeddings (already multiplied by the score scale
      if the encoder is normalised).
    * ``pos_docs`` ``(B, d)`` with ids ``pos_doc_ids`` (B): each example's positive.
    * ``hard_docs`` ``(B, H, d)`` or ``(B*H, d)`` (rows ``i*H … i*H+H-1`` belong
      to example ``i``) with ids ``hard_doc_ids`` as ``B`` lists of ``H`` or a flat
      list of ``B*H``: each example's static hard negatives.
    * ``query_positives`` (B): every known positive doc id of example ``i``'s
      query (the example's own ``pos_doc_ids[i]`` is added if missing).
    * ``rand_docs`` ``(R, d)`` / ``rand_doc_ids`` (R): optional extra random docs.

    Layout: ``hard[i]`` = query ``i`` vs its own hard negatives; ``rand[i]`` =
    query ``i`` vs all ``B + B*H + R`` docs of the batch, i.e. other queries'
    positives and other queries' hard negatives (the in-batch random negatives)
    plus the extra random docs. The own positive column and own hard-negative
    columns are masked out of ``rand``; any doc that is a known positive of query
    ``i`` is masked out of both. With this layout ``star_loss(mixing="pairmean")``
    equals DRhard's STAR loss exactly.
    """
    b = q.shape[0]
    hard_flat, flat_hard_ids, h = _flat_hard_negatives(b, hard_docs, hard_doc_ids)
    if pos_docs.shape[0] != b or len(pos_doc_ids) != b or len(query_positives) != b:
        raise HardnegError(
            f"star_scores: {b} queries but {pos_docs.shape[0]} positive docs, "
            f"{len(pos_doc_ids)} positive ids and {len(query_positives)} positive sets"
        )
    extra_ids: list[str] = []
    docs = [pos_docs, hard_flat]
    if rand_docs is not None:
        if rand_doc_ids is None or len(rand_doc_ids) != rand_docs.shape[0]:
            raise HardnegError("star_scores: rand_doc_ids must give one id per row of rand_docs")
        docs.append(rand_docs)
        extra_ids = list(rand_doc_ids)
    elif rand_doc_ids:
        raise HardnegError("star_scores: rand_doc_ids given without rand_docs")

    all_ids = [*pos_doc_ids, *flat_hard_ids, *extra_ids]
    positives = [set(p) | {pid} for p, pid in zip(query_positives, pos_doc_ids, strict=True)]
    pos, scores, _ = inbatch_scores(q, torch.cat(docs, dim=0), torch.arange(b, device=q.device))
    # the masks training uses: own hard negatives, and every other document of the batch
    own, other = layout_masks(positives, all_ids, h, device=q.device)
    # columns of query i's own hard negatives: b + i*h + [0, h)
    own_hard = b + torch.arange(b, device=q.device)[:, None] * h + torch.arange(h, device=q.device)
    hard = scores.gather(1, own_hard)
    hard_mask = own.gather(1, own_hard)
    return StarScores(pos, hard, scores, hard_mask, other, tuple(all_ids))


def _flat_hard_negatives(
    b: int, hard_docs: Tensor, hard_doc_ids: Sequence[Sequence[str]] | Sequence[str]
) -> tuple[Tensor, list[str], int]:
    """``(rows, ids, H)``: :func:`star_scores`' hard negatives of ``b`` queries as ``(B*H, d)`` rows (example
    ``i``'s are rows ``i*H … i*H+H-1``) and their ``B*H`` ids, from ``(B, H, d)`` or ``(B*H, d)`` rows and
    ``B`` lists of ``H`` ids or a flat list; a clear error for a shape that does not fit."""
    if hard_docs.dim() == 3:
        if hard_docs.shape[0] != b:
            raise HardnegError(
                f"star_scores: hard_docs (B, H, d) has B={hard_docs.shape[0]}, expected {b}"
            )
        h = hard_docs.shape[1]
        hard_flat = hard_docs.reshape(b * h, hard_docs.shape[2])
    elif hard_docs.dim() == 2:
        if b == 0 or hard_docs.shape[0] % b:
            raise HardnegError(
                f"star_scores: {hard_docs.shape[0]} hard-negative rows cannot be split "
                f"evenly over {b} queries"
            )
        h = hard_docs.shape[0] // b
        hard_flat = hard_docs
    else:
        raise HardnegError(
            f"star_scores: hard_docs must be (B, H, d) or (B*H, d); got {tuple(hard_docs.shape)}"
        )
    flat_hard_ids: list[str] = []
    if hard_doc_ids and not isinstance(hard_doc_ids[0], str):
        for i, ids in enumerate(hard_doc_ids):
            if len(ids) != h:
                raise HardnegError(
                    f"star_scores: example {i} has {len(ids)} hard-negative ids, expected {h}"
                )
            flat_hard_ids.extend(ids)  # type: ignore[arg-type]
    else:
        flat_hard_ids = list(hard_doc_ids)  # type: ignore[arg-type]
    if len(flat_hard_ids) != b * h:
        raise HardnegError(
            f"star_scores: {len(flat_hard_ids)} hard-negative ids for {b * h} hard-negative rows"
        )
    return hard_flat, flat_hard_ids, h
