"""``star``: static hard negatives + every other document of the batch as random negatives."""

from __future__ import annotations

from hardneg.train.losses import pairwise_loss, star_loss
from hardneg.train.methods.static import StaticNeg


class Star(StaticNeg):
    """STAR: ``L_s + α·L_r`` (paper Eq. 13) or DRhard's pair mean
    (:func:`~hardneg.train.losses.star_loss`)."""

    name = "star"

    def loss(self, scores, batch):
        pos = self.positive_scores(scores, batch)
        own, other = self.masks(scores, batch)
        cfg = self.config
        counts = {"hard_pairs": float(own.sum()), "random_pairs": float(other.sum())}
        if self.distiller is not None:  # W · L_distill over the own hard negatives + α · L_r (hardneg.train.distill)
            distill = self.distiller.layout_loss(scores, batch, own, self.n_negatives)
            random_term = pairwise_loss(pos, scores, other, loss=cfg.loss)
            return (self.distiller.weight * distill + cfg.alpha * random_term,
                    {**counts, "distill": float(distill.detach()), "random_loss": float(random_term.detach())})
        loss = star_loss(pos, scores, scores, own, other, alpha=cfg.alpha, mixing=cfg.star_mixing,
                         loss=cfg.loss)
        return loss, counts
