"""sentence-transformers' own recipe on hardneg's split: the peer baseline every hardneg system must beat.

The recipe is the one sentence-transformers documents for retrieval fine-tuning with hard negatives:
``util.mine_hard_negatives`` (the start model, relative_margin 0.05, one negative per pair, the top one), then
``MultipleNegativesRankingLoss`` at batch 32 with ``BatchSamplers.NO_DUPLICATES`` and, as its large-batch
variant, ``CachedMultipleNegativesRankingLoss`` at batch 256 (GradCache, mini-batches of 32). Everything that
decides the comparison is hardneg's, so only the training differs:

- the same start model (``--model``, MiniLM by default), the same training queries and the same dev carve-out
  (``hardneg.train.order.carve_dev`` with hardneg's default dev fraction and ``--seed``);
- lr and epochs chosen on that dev: every (loss, lr) trains to ``--epochs`` with a checkpoint per epoch, and each
  checkpoint's dev RR@10 is measured the way hardneg's trainer measures dev (BM25's top-20 of every dev query plus
  its positives, ranked exactly: ``dev_pool`` 20); the best (loss, lr, epoch) is evaluated on test once;
- test, the seen/unseen-document strata and the transfer sets through hardneg's own retrieval and ir-measures
  (flat index, queries 64 / documents 256 tokens, like every system of ``configs/scifact.yaml``).

It writes ``--out`` (JSON: every dev point, the chosen model's test/strata/transfer, wall-clock per stage) and
prints a markdown table beside hardneg's systems from ``--hardneg-results`` (an experiment's results.json).

    python benchmarks/peer_st.py --data ../shared/data/scifact --out benchmarks/results/peer_st.json \
        --transfer ../shared/data/nfcorpus:test ../shared/data/classic/med

Training lengths: ``--max-seq-length`` (default 128, the document length hardneg's SciFact systems train at;
sentence-transformers has one length for both sides). ``--smoke`` runs the whole pipeline on a small slice.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from hardneg.data import load_dataset
from hardneg.evaluate.metrics import evaluate, evaluate_per_query
from hardneg.model.encoder import DualEncoder
from hardneg.model.registry import resolve_model
from hardneg.retrieval.bm25 import cached_bm25
from hardneg.retrieval.dense import retrieve
from hardneg.train.config import TrainConfig
from hardneg.train.order import carve_dev, positives_of

logger = logging.getLogger("peer_st")
MEASURES = ["nDCG@10", "RR@10", "R@100"]


def split(data: str, seed: int, limit: int | None):
    """The training dataset, hardneg's (train, dev) query ids, training qrels, queries and dev qrels."""
    ds = load_dataset(f"{data}:train")
    qrels, queries = ds.qrels(), ds.queries()
    train_qids, dev_qids = carve_dev(TrainConfig(data=data, seed=seed), qrels, queries)
    if limit:
        train_qids, dev_qids = train_qids[:limit], dev_qids[: max(8, limit // 8)]
    return ds, train_qids, dev_qids, qrels, queries


def corpus_texts(ds, keep: set[str] | None = None, extra: int = 0, seed: int = 0) -> dict[str, str]:
    """Document id -> ``title text`` (the text every hardneg encoder sees); ``keep`` + ``extra`` random others
    for ``--smoke``."""
    docs = {d.doc_id: d.full_text() for d in ds.iter_docs()}
    if keep is None:
        return docs
    others = sorted(set(docs) - keep)
    chosen = keep | set(random.Random(seed).sample(others, min(extra, len(others))))
    return {d: docs[d] for d in docs if d in chosen}


def mine(model, train_qids, qrels, queries, docs: dict[str, str], batch_size: int):
    """sentence-transformers' documented mining: one hard negative per (query, positive), the top one beyond a
    relative margin of 0.05 below the positive's score, from the whole corpus."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    positives = positives_of({q: qrels[q] for q in train_qids})
    pairs = [(queries[q].text, docs[d]) for q in train_qids for d in sorted(positives[q]) if d in docs]
    dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    return mine_hard_negatives(dataset, model, corpus=list(docs.values()), relative_margin=0.05, num_negatives=1,
                               sampling_strategy="top", batch_size=batch_size, output_format="triplet",
                               verbose=False)


def train(model_path: str, triplets, loss_name: str, lr: float, epochs: int, out: Path, seed: int,
          max_seq_length: int) -> list[Path]:
    """One sentence-transformers training run; its per-epoch checkpoints, in order."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = max_seq_length
    if loss_name == "mnrl":
        loss, batch = MultipleNegativesRankingLoss(model), 32
    else:
        loss, batch = CachedMultipleNegativesRankingLoss(model, mini_batch_size=32), 256
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=batch, learning_rate=lr,
        warmup_steps=0.1, batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="epoch", seed=seed,
        logging_steps=5, report_to="none", save_only_model=True, use_cpu=True,
    )
    SentenceTransformerTrainer(model=model, args=args, train_dataset=triplets, loss=loss).train()
    return sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def dev_pool(ds, dev_qids, qrels, queries, cache_dir: Path, docs: dict[str, str], depth: int = 20) -> list[str]:
    """hardneg's dev pool: BM25's top-``depth`` of every dev query plus its positives."""
    run = cached_bm25(ds, cache_dir).search({q: queries[q] for q in dev_qids}, k=depth, show_progress=False)
    pool = {d for results in run.values() for d, _ in results} | {d for q in dev_qids for d in qrels[q]}
    return sorted(d for d in pool if d in docs)


def dev_metrics(checkpoint: Path, dev_qids, dev_qrels, queries, pool: list[str], docs: dict[str, str]) -> dict:
    """RR@10 / nDCG@10 of the dev queries ranked exactly in ``pool`` by the checkpoint (as hardneg's dev)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(checkpoint), device="cpu")
    d = model.encode([docs[x] for x in pool], batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    q = model.encode([queries[x].text for x in dev_qids], batch_size=64, normalize_embeddings=True,
                     convert_to_numpy=True)
    scores = q @ d.T
    top = np.argsort(-scores, axis=1)[:, :100]
    run = {qid: [(pool[j], float(scores[i, j])) for j in top[i]] for i, qid in enumerate(dev_qids)}
    return evaluate(run, dev_qrels, ["RR@10", "nDCG@10"])


def test_metrics(checkpoint: Path, data: str, transfer: list[str], seen_docs: set[str], cache_dir: Path) -> dict:
    """Test measures, the seen/unseen-document strata and the transfer sets, through hardneg's retrieval."""
    model = DualEncoder.from_pretrained(str(checkpoint), query_max_length=64, doc_max_length=256)
    test = load_dataset(f"{data}:test", cache_dir=cache_dir)
    qrels = test.qrels()
    run = retrieve(model, test, k=1000, cache_dir=cache_dir, show_progress=False)
    out = evaluate(run, qrels, MEASURES)
    per = evaluate_per_query(run, qrels, ["nDCG@10"])["nDCG@10"]
    seen = {q for q in per if any(g >= 1 and d in seen_docs for d, g in qrels[q].items())}
    out["nDCG@10_seen"] = float(np.mean([per[q] for q in sorted(seen)])) if seen else None
    unseen = [q for q in per if q not in seen]
    out["nDCG@10_unseen"] = float(np.mean([per[q] for q in unseen])) if unseen else None
    out["transfer"] = {}
    for spec in transfer:
        other = load_dataset(spec, cache_dir=cache_dir)
        other_run = retrieve(model, other, k=1000, cache_dir=cache_dir, show_progress=False)
        out["transfer"][spec] = evaluate(other_run, other.qrels(), ["nDCG@10"])["nDCG@10"]
    return out


def table(result: dict, hardneg_results: Path | None) -> str:
    """The comparison as markdown: the peer's chosen model beside hardneg's systems."""
    rows = []
    if hardneg_results and hardneg_results.is_file():
        for name, s in json.loads(hardneg_results.read_text())["systems"].items():
            rows.append((f"hardneg {name}", s.get("steps"), s, s.get("train_seconds")))
    best = result["chosen"]
    label = f"sentence-transformers {best['loss']} (lr {best['lr']:g}, epoch {best['epoch']})"
    rows.append((label, best["steps"], result["test"], result["seconds"]["train_chosen_run"]))
    lines = ["| system | steps | nDCG@10 | seen-doc | unseen-doc | transfer nDCG@10 | train s |",
             "|---|---|---|---|---|---|---|"]
    for name, steps, s, secs in rows:
        transfer = " / ".join(f"{v:.3f}" if v is not None else "–" for v in (s.get("transfer") or {}).values())
        transfer = transfer or "–"
        cells = [s.get("nDCG@10"), s.get("nDCG@10_seen"), s.get("nDCG@10_unseen")]
        cells = [f"{v:.3f}" if isinstance(v, float) else "–" for v in cells]
        lines.append(f"| {name} | {steps if steps is not None else '–'} | {' | '.join(cells)} | {transfer} | "
                     f"{f'{secs:.0f}' if secs else '–'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="BEIR folder with train and test splits")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--out", default="benchmarks/results/peer_st.json")
    parser.add_argument("--work", default="runs/peer_st",
                        help="checkpoints, caches and finished runs' dev points: run again to go on after an "
                        "interruption; checkpoints are deleted at the end")
    parser.add_argument("--losses", nargs="+", default=["mnrl", "cmnrl"], choices=["mnrl", "cmnrl"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[2e-5, 5e-5])
    parser.add_argument("--epochs", type=int, default=4, help="each run's length; every epoch is a dev point")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--transfer", nargs="*", default=[], help="path[:split] of collections never trained on")
    parser.add_argument("--hardneg-results", type=Path, default=Path("docs/results/scifact/results.json"))
    parser.add_argument("--smoke", action="store_true", help="a small slice: 48 queries, 400 extra documents")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--table-from", type=Path, default=None,
                        help="print the table of an earlier run's --out JSON (beside --hardneg-results) and stop")
    args = parser.parse_args()
    if args.table_from:
        print(table(json.loads(args.table_from.read_text()), args.hardneg_results))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    seconds: dict[str, float] = {}
    ds, train_qids, dev_qids, qrels, queries = split(args.data, args.seed, 48 if args.smoke else None)
    keep = {d for q in train_qids + dev_qids for d in qrels[q]} if args.smoke else None
    docs = corpus_texts(ds, keep, extra=400, seed=args.seed)
    model_path = str(resolve_model(args.model))
    # every finished (loss, lr) run's dev points and time, kept in WORK so an interrupted benchmark goes on
    done_file = work / "dev_points.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else {"points": [], "seconds": {}, "triplets": 0}
    def finished(loss: str, lr: float) -> list[dict]:
        """A finished run's dev points (its checkpoints still there), else []."""
        old = [p for p in done["points"] if p["loss"] == loss and p["lr"] == lr]
        ok = old and f"train {loss} lr {lr:g}" in done["seconds"] and all(Path(p["checkpoint"]).is_dir() for p in old)
        return old if ok else []

    todo = [(loss, lr) for lr in args.lrs for loss in args.losses if not finished(loss, lr)]
    triplets = None
    if todo:
        tic = time.perf_counter()
        start = SentenceTransformer(model_path, device="cpu")
        start.max_seq_length = args.max_seq_length
        triplets = mine(start, train_qids, qrels, queries, docs, batch_size=64)
        seconds["mine"] = done["seconds"]["mine"] = time.perf_counter() - tic
        done["triplets"] = len(triplets)
        logger.info("mined %d triplets in %.0f s", len(triplets), seconds["mine"])
    pool = dev_pool(ds, dev_qids, qrels, queries, cache, docs)
    dev_qrels = {q: qrels[q] for q in dev_qids}
    points, runs = [], {}
    for lr in args.lrs:
        for loss in args.losses:
            key = f"train {loss} lr {lr:g}"
            folder = work / f"{loss}-lr{lr:g}"
            old = finished(loss, lr)
            if old:
                points += old
                runs[(loss, lr)] = seconds[key] = done["seconds"][key]
                continue
            tic = time.perf_counter()
            shutil.rmtree(folder, ignore_errors=True)
            checkpoints = train(model_path, triplets, loss, lr, args.epochs, folder, args.seed, args.max_seq_length)
            runs[(loss, lr)] = seconds[key] = time.perf_counter() - tic
            for epoch, checkpoint in enumerate(checkpoints, 1):
                metrics = dev_metrics(checkpoint, dev_qids, dev_qrels, queries, pool, docs)
                points.append({"loss": loss, "lr": lr, "epoch": epoch, "steps": int(checkpoint.name.split("-")[1]),
                               "checkpoint": str(checkpoint), **{f"dev_{k}": v for k, v in metrics.items()}})
                logger.info("dev %s", json.dumps(points[-1]))
            done["points"] = [p for p in done["points"] if not (p["loss"] == loss and p["lr"] == lr)]
            done["points"] += [p for p in points if p["loss"] == loss and p["lr"] == lr]
            done["seconds"][key] = seconds[key]
            done_file.write_text(json.dumps(done, indent=2))
    best = max(points, key=lambda p: (p["dev_RR@10"], -p["steps"]))
    seconds["train_chosen_run"] = runs[(best["loss"], best["lr"])]
    seconds.setdefault("mine", done["seconds"].get("mine", 0.0))
    seen_docs = {d for q in train_qids for d, g in qrels[q].items() if g >= 1}
    tic = time.perf_counter()
    test = test_metrics(Path(best["checkpoint"]), args.data, [] if args.smoke else args.transfer, seen_docs, cache)
    seconds["test"] = time.perf_counter() - tic
    result = {"data": args.data, "model": args.model, "train_queries": len(train_qids), "dev_queries": len(dev_qids),
              "triplets": len(triplets) if triplets is not None else done.get("triplets"),
              "max_seq_length": args.max_seq_length, "epochs": args.epochs,
              "smoke": args.smoke, "dev_points": points, "chosen": best, "test": test, "seconds": seconds,
              "threads": torch.get_num_threads()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result, None if args.smoke else args.hardneg_results))
    for loss, lr in runs:
        shutil.rmtree(work / f"{loss}-lr{lr:g}", ignore_errors=True)
    done_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
