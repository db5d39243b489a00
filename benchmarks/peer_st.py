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

The runs themselves are :func:`hardneg.experiment.peer_st.train_peer`, the code of an experiment's ``peer-st``
systems (so this benchmark and ``configs/*.yaml`` share one code path); this script adds the grid over
(loss, lr), the strata and the markdown table.

It writes ``--out`` (JSON: every dev point, the chosen model's test/strata/transfer, wall-clock per stage) and
prints a markdown table beside hardneg's systems from ``--hardneg-results`` (an experiment's results.json).

    python benchmarks/peer_st.py --data ../shared/data/scifact --out benchmarks/results/peer_st.json \
        --transfer ../shared/data/nfcorpus:test ../shared/data/classic/med

Training lengths: ``--max-seq-length`` (default 128, the document length hardneg's SciFact systems train at;
sentence-transformers has one length for both sides). ``--smoke`` runs the whole pipeline on a small slice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from hardneg.data import load_dataset
from hardneg.evaluate.metrics import evaluate, evaluate_per_query
from hardneg.experiment.peer_st import PeerData, PeerSettings, mined_triplets, peer_data, train_peer
from hardneg.model.encoder import DualEncoder
from hardneg.model.registry import resolve_model
from hardneg.retrieval.dense import retrieve
from hardneg.train.config import TrainConfig

logger = logging.getLogger("peer_st")
MEASURES = ["nDCG@10", "RR@10", "R@100"]


def run_one(work: Path, model_path: str, data: PeerData, settings: PeerSettings, triplets: Path) -> float:
    """One (loss, lr) run through :func:`hardneg.experiment.peer_st.train_peer` in ``work/<loss>-lr<lr>``; its
    wall-clock seconds (kept in the folder, so a finished run resumed later reports its own time)."""
    folder = work / f"{settings.loss}-lr{settings.learning_rate:g}"
    record = folder / "seconds.json"
    if (folder / "summary.json").is_file() and record.is_file():
        return float(json.loads(record.read_text())["seconds"])
    tic = time.perf_counter()
    train_peer(folder, model_path, data, settings, cache_dir=work / "cache", dev_pool_depth=20, dev_metric="RR@10",
               triplets_cache=triplets)
    seconds = time.perf_counter() - tic  # a run resumed after a kill: the resumed part only
    record.write_text(json.dumps({"seconds": seconds}))
    return seconds


def dev_points(work: Path, settings: PeerSettings) -> list[dict]:
    """Every epoch's dev point of one finished run (``dev/epoch-<e>.json``), in the benchmark's JSON form."""
    folder = work / f"{settings.loss}-lr{settings.learning_rate:g}"
    points = []
    for path in sorted((folder / "dev").glob("epoch-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        p = json.loads(path.read_text())
        points.append({"loss": settings.loss, "lr": settings.learning_rate, "epoch": p["epoch"], "steps": p["step"],
                       "checkpoint": str(folder / "checkpoints" / p["checkpoint"]), "model": str(folder / "model"),
                       **{f"dev_{k}": v for k, v in p.items() if k not in ("epoch", "step", "checkpoint")}})
    return points


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
            label = f"{name} ({s['kind']}, epochs)" if s.get("kind") else f"hardneg {name}"  # a peer-st system
            rows.append((label, s.get("steps"), s, s.get("train_seconds")))
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
                        help="the runs' folders (checkpoints, dev points) and caches: run again to go on after an "
                        "interruption (a killed run resumes from its last epoch); the runs are deleted at the end")
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
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    data = peer_data(TrainConfig(data=args.data, seed=args.seed), limit=48 if args.smoke else None, extra_docs=400)
    model_path = str(resolve_model(args.model))
    runs = [PeerSettings(loss=loss, learning_rate=lr, num_train_epochs=args.epochs, max_seq_length=args.max_seq_length,
                         seed=args.seed) for lr in args.lrs for loss in args.losses]
    # one mining for every run: the start model, the lengths and the data decide it
    tag = json.dumps([model_path, args.data, args.max_seq_length, args.seed, args.smoke, data.record()])
    triplets = work / f"triplets-{hashlib.sha256(tag.encode()).hexdigest()[:12]}.jsonl"
    tic = time.perf_counter()
    n_triplets = len(mined_triplets(triplets, model_path, data, runs[0]))
    seconds["mine"] = time.perf_counter() - tic
    points, took = [], {}
    for settings in runs:
        key = f"train {settings.loss} lr {settings.learning_rate:g}"
        took[(settings.loss, settings.learning_rate)] = seconds[key] = run_one(work, model_path, data, settings,
                                                                               triplets)
        points += dev_points(work, settings)
        logger.info("%s: dev %s", key, json.dumps([p["dev_RR@10"] for p in points[-args.epochs:]]))
    best = max(points, key=lambda p: (p["dev_RR@10"], -p["steps"]))
    seconds["train_chosen_run"] = took[(best["loss"], best["lr"])]
    seen_docs = {d for q in data.train_qids for d, g in data.train_qrels[q].items() if g >= 1}
    tic = time.perf_counter()
    # the chosen run's model/ is its dev-best epoch, the chosen point (a tie within a run goes to the earlier epoch)
    test = test_metrics(Path(best["model"]), args.data, [] if args.smoke else args.transfer, seen_docs,
                        work / "cache")
    seconds["test"] = time.perf_counter() - tic
    result = {"data": args.data, "model": args.model, "train_queries": len(data.train_qids),
              "dev_queries": len(data.dev_qids), "triplets": n_triplets, "max_seq_length": args.max_seq_length,
              "epochs": args.epochs, "smoke": args.smoke, "dev_points": points, "chosen": best, "test": test,
              "seconds": seconds, "threads": torch.get_num_threads()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result, None if args.smoke else args.hardneg_results))
    for settings in runs:
        shutil.rmtree(work / f"{settings.loss}-lr{settings.learning_rate:g}", ignore_errors=True)
    triplets.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
