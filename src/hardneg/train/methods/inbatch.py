"""``inbatch``: the other queries' positives are the negatives."""

from __future__ import annotations

from hardneg.train.losses import pairwise_loss
from hardneg.train.methods.base import Method


class InBatch(Method):
    """In-batch negatives only: pairwise (or softmax) over the batch's other documents."""

    name = "inbatch"

    def loss(self, scores, batch):
        pos = self.positive_scores(scores, batch)
        _own, other = self.masks(scores, batch)
        return pairwise_loss(pos, scores, other, loss=self.config.loss), {"pairs": float(other.sum())}
