"""``ance``: static hard negatives re-mined with the current model every ``refresh_every`` steps."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from hardneg import distributed as dist
from hardneg.io import read_json, write_json
from hardneg.negatives.formats.files import write_negatives
from hardneg.negatives.formats.tsv import read_negatives
from hardneg.train.methods.base import MethodContext
from hardneg.train.methods.mining import SCORES_FILE, mine_with_model
from hardneg.train.methods.static import StaticNeg

logger = logging.getLogger("hardneg.train")


class Ance(StaticNeg):
    """ANCE-style: static negatives re-mined with the current model every ``refresh_every`` steps."""

    name = "ance"

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.refreshes = 0
        self._file = Path(ctx.config.out) / "refresh" / "negatives.tsv"
        self._scores = self._file.with_name(SCORES_FILE)  # SimANS: the refresh's mining scores

    def initial_candidates(self) -> dict[str, list[str]]:
        return self.mine_start_model()  # no --negatives file: always the start model's, at the mining lengths

    def after_step(self, step: int) -> dict[str, Any] | None:
        if step % self.config.refresh_every or step >= self.config.max_steps:
            return None
        model = self.ctx.model
        was_training = model.training
        model.eval()
        # the same rules as the warm-up negatives; a teacher's scores come from its cache when already seen
        candidates = mine_with_model(self.ctx, model, folder=Path(self.config.out) / "refresh" / "index",
                                     selector=self.selector, step=step)
        if was_training:
            model.train()
        self.source.replace(candidates)
        self.source.set_scores(self.selector.scores)
        self.distill_prepare()  # --distill: the new pools' teacher scores (pairs seen before come from the cache)
        if dist.is_main():
            write_negatives(self._file, candidates)
            if self.selector.rules.weighted:
                write_json(self._scores, self.selector.scores)
        self.selector.scores = {}  # the source keeps them (compactly)
        self.refreshes += 1
        logger.info("step %d: re-mined hard negatives with the current model", step)
        # the whole corpus and every training query went through the current model (Table 4's re-mining cost)
        return {"docs_encoded": len(self.ctx.doc_ids), "queries_encoded": len(self.ctx.train_qrels)}

    def state_files(self) -> dict[str, Path]:
        files = {"negatives.tsv": self._file, SCORES_FILE: self._scores}
        return {**super().state_files(), **{name: f for name, f in files.items() if f.is_file()}}

    def restore(self, checkpoint: Path) -> None:
        super().restore(checkpoint)  # the diagnostics of the refreshes so far

        saved = checkpoint / "negatives.tsv"
        if saved.is_file():
            if dist.is_main():
                self._file.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(saved, self._file)
            self.source.replace(read_negatives(saved))
            self.distill_prepare()
        scores = checkpoint / SCORES_FILE
        if self.selector.rules.weighted and scores.is_file():
            if dist.is_main():
                shutil.copyfile(scores, self._scores)
            self.source.set_scores(read_json(scores))
