"""Run by ``torchrun`` from test_distributed.py (one process per rank); not a test module.

``python -m torch.distributed.run --standalone --nproc_per_node 2 _ddp_worker.py MODE ARGS.json``

* ``step``: for each job of ARGS.json, set up a Trainer from its config (``batch_size`` per rank), compute
  the gradients of the job's step with dropout off, apply the optimiser step, and (rank 0) save the loss, the
  gradients, the updated trainable weights and a sharded encoding of the corpus to ``ARGS["result"]``.
* ``train``: train each job's config to the end.
* ``train-killed``: the CLI's ``train`` command, except that rank ``ARGS["kill_rank"]`` SIGKILLs itself right
  after the checkpoint of step ``ARGS["kill_at"]`` is on disk (fault injection lives here, not in hardneg).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch


def _step(jobs: list[dict]) -> None:
    from hardneg import distributed as dist
    from hardneg.index.shards import sharded_encode_token_lists
    from hardneg.train.config import TrainConfig
    from hardneg.train.trainer import Trainer

    torch.set_num_threads(1)
    assert dist.init_from_env() and dist.world_size() == 2
    for job in jobs:
        trainer = Trainer(TrainConfig(**job["config"]))
        trainer.setup()
        trainer.model.eval()  # no dropout: the comparison is exact
        docs = sharded_encode_token_lists(trainer.model, trainer.store.rows(range(len(trainer.store))),
                                          "doc", batch_size=3)
        mined = None
        if job.get("mine"):  # ANCE's refresh: corpus encoding and query search shared out over the ranks
            from pathlib import Path

            from hardneg.train.methods import mine_with_model

            mined = mine_with_model(trainer, trainer.model, folder=Path(job["mine"]))
        totals = trainer.step_gradients(job["step"])
        named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
        grads = {n: p.grad.detach().clone() for n, p in named if p.grad is not None}
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.max_grad_norm)
        clipped = {n: p.grad.detach().clone() for n, p in named if p.grad is not None}
        trainer.optimizer.step()
        weights = {n: p.detach().clone() for n, p in named}
        if dist.is_main():
            torch.save({"totals": totals, "grads": grads, "clipped": clipped, "weights": weights,
                        "docs": torch.from_numpy(docs), "mined": mined},
                       job["result"])
    dist.barrier()
    dist.destroy()


def _train(jobs: list[dict]) -> None:
    """Train every job's config to the end (2 processes) and let the test read the output folders."""
    from hardneg import distributed as dist
    from hardneg.train.config import TrainConfig
    from hardneg.train.trainer import Trainer

    torch.set_num_threads(1)
    assert dist.init_from_env() and dist.world_size() == 2
    for job in jobs:
        Trainer(TrainConfig(**job["config"])).train()
    dist.destroy()


def _train_killed(args: dict) -> None:
    from hardneg import cli
    from hardneg.train.trainer import Trainer

    original = Trainer._checkpoint

    def checkpoint_then_die(self, step, best, best_step):
        original(self, step, best, best_step)  # returns once rank 0 has written it (barrier)
        if step == args["kill_at"] and self.rank == args["kill_rank"]:
            os.kill(os.getpid(), signal.SIGKILL)

    Trainer._checkpoint = checkpoint_then_die
    sys.argv = ["hardneg", *args["argv"]]
    cli.main()


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as fh:
        arguments = json.load(fh)
    {"step": _step, "train": _train, "train-killed": _train_killed}[mode](arguments)
