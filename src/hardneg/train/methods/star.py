"""``star``: static hard negatives + every other document of the batch as random negatives."""

from __future__ import annotations

from hardneg.train.losses import star_loss
from hardneg.train.methods.static import StaticNeg


class Star(StaticNeg):
    """STAR: ``L_s + α·L_r`` (paper Eq. 13) or DRhard's pair mean
    (:func:`~hardneg.train.losses.star_loss`)."""

    name = "star"

    def loss(self, scores, batch):
        pos = self.positive_scores(scores, batch)
        own, other = self.masks(scores, batch)
        cfg = self.config
        loss = star_loss(pos, scores, scores, own, other, alpha=cfg.alpha, mixing=cfg.star_mixing,
                         loss=cfg.loss)
        return loss, {"hard_pairs": float(own.sum()), "random_pairs": float(other.sum())}
