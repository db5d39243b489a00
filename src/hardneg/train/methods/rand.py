"""``rand``: random corpus documents (and the rest of the batch, equally random) as negatives.

``rand_batch_positives`` (default on) also takes the batch's other positives as negatives; off, the
negatives are only the sampled documents of the whole batch, every query's and the others', as DRhard's
``randneg_train`` (model.py: ``other_doc_embs`` only, no in-batch positives)."""

from __future__ import annotations

import torch

from hardneg.negatives.sampling import RandomNegatives
from hardneg.train.losses import pairwise_loss
from hardneg.train.methods.base import Method, MethodContext


class RandNeg(Method):
    """``n`` random corpus documents per query, plus every other document of the batch."""

    name = "rand"

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.n_negatives = self.config.n_negatives
        self.source = RandomNegatives(ctx.doc_ids, ctx.train_qrels, seed=self.config.seed)

    def negatives(self, examples, start: int) -> list[list[str]]:
        return [self.source.sample(e.qid, self.n_negatives, start + i) for i, e in enumerate(examples)]

    def loss(self, scores, batch):
        pos = self.positive_scores(scores, batch)
        own, other = self.masks(scores, batch)
        mask = own | other
        if not self.config.rand_batch_positives:  # columns 0..G-1 hold the global batch's positives
            g = batch.global_batch or len(batch.examples)
            mask = mask & (torch.arange(scores.shape[1], device=scores.device) >= g)[None, :]
        return pairwise_loss(pos, scores, mask, loss=self.config.loss), {"pairs": float(mask.sum())}
