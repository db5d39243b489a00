"""Run by ``torchrun`` from test_distributed.py (one process per rank); not a test module.

``python -m torch.distributed.run --standalone --nproc_per_node 2 _ddp_worker.py MODE ARGS.json``

* ``step``: for each job of ARGS.json, set up a Trainer from its config (``batch_size`` per rank), compute
  the gradients of the job's step with dropout off (on with ``"dropout": true``), apply the optimiser step,
  and (rank 0) save the loss, the
  gradients, the updated trainable weights and a sharded encoding of the corpus to ``ARGS["result"]``.
* ``train``: train each job's config to the end.
* ``train-killed``: the CLI's ``train`` command, except that rank ``ARGS["kill_rank"]`` SIGKILLs itself right
  after the checkpoint of step ``ARGS["kill_at"]`` is on disk (fault injection lives here, not in hardneg).
* ``split``: join the group with the collectives' timeout ``ARGS["timeout"]`` (seconds), slow every corpus
  batch encoded during a trainer's setup by ``ARGS["delay"]`` seconds, train each job's config, then set it up
  again with ``--resume``; every rank records the rows its model encoded in each setup. Then the timeout probe:
  rank 0 works (sleeps) as long as one rank's encoding of the whole corpus, while rank 1 waits in a barrier.
  Each rank writes ``ARGS["results"]/rank-<r>.json``.
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
        if job.get("dropout"):  # a comparison between two 2-process steps: the same dropout streams
            trainer.train_mode()
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


def _split(args: dict) -> None:
    import time
    from pathlib import Path

    from hardneg import distributed as dist
    from hardneg.cli.common import join_torchrun
    from hardneg.model.encoder import DualEncoder
    from hardneg.train.config import TrainConfig
    from hardneg.train.methods import mining
    from hardneg.train.trainer import Trainer

    torch.set_num_threads(1)
    assert join_torchrun(args["timeout"]) and dist.world_size() == 2
    for name, value in args["mining"].items():  # small search units, so that the queries are shared out too
        setattr(mining, name, value)
    counts: dict[str, int] = {}
    forward = DualEncoder.forward

    def counted(self, input_ids, attention_mask, side="doc"):
        if "doc" in counts and torch.is_inference_mode_enabled():  # corpus / query encoding during a setup
            counts[side] += int(input_ids.shape[0])
            if side == "doc":
                counts["doc_batches"] += 1
                time.sleep(args["delay"])
        return forward(self, input_ids, attention_mask, side=side)

    DualEncoder.forward = counted
    setup = Trainer.setup

    def counted_setup(self):
        counts.update(doc=0, query=0, doc_batches=0)
        try:
            setup(self)
        finally:
            self.setup_counts = {k: counts.pop(k) for k in ("doc", "query", "doc_batches")}

    Trainer.setup = counted_setup
    result: dict = {"rank": dist.rank()}
    for job in args["jobs"]:
        trainer = Trainer(TrainConfig(**job["config"]))
        trainer.train()
        again = Trainer(TrainConfig(**job["config"]))
        again.train(resume=True)  # finished: its setup finds the shared encodings and the mined negatives again
        result[job["name"]] = {"setup": trainer.setup_counts, "resume": again.setup_counts}
    # the probe: one rank busy for a whole corpus's encoding (what rank 0 alone did before), the other waiting
    whole = sum(dist.all_gather_object(result[args["jobs"][0]["name"]]["setup"]["doc_batches"]))
    result["whole_corpus_batches"] = whole
    start = time.monotonic()
    if dist.rank() == 0:
        time.sleep(whole * args["delay"])
        result["probe"] = {"slept": time.monotonic() - start}
    else:
        try:
            dist.barrier()
            result["probe"] = {"timed_out": False, "waited": time.monotonic() - start}
        except RuntimeError as exc:  # gloo: "Timed out waiting ...ms for recv operation to complete"
            result["probe"] = {"timed_out": True, "waited": time.monotonic() - start, "error": str(exc)[-300:]}
    out = Path(args["results"]) / f"rank-{dist.rank()}.json"
    out.write_text(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # the group is broken by the probe: no destroy


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as fh:
        arguments = json.load(fh)
    {"step": _step, "train": _train, "train-killed": _train_killed, "split": _split}[mode](arguments)
