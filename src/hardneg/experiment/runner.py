"""Run a recipe: its stages in order, each cached, skipped when done, resumable.

Stages (``OUT/stages/<stage>/``): ``train-<system>`` for trained systems (a ``peer-st`` system's:
:func:`hardneg.experiment.peer_st.train_peer`, keyed by its settings, start model and dev set), then
``test-<system>`` (retrieval + metrics on the test split), ``transfer-<system>-<set>``,
the analyses, and ``report``. Each stage's *key* hashes its settings and the keys of
the stages it depends on; ``stage.json`` records the key, status, attempts and wall
time. A stage whose ``stage.json`` says done with the same key is skipped; one
interrupted mid-way runs again in the same folder (training resumes from its last
checkpoint, encoding from its partial file); one whose settings changed starts
afresh. Hyper-parameters are tuned, if at all, on the dev split carved out of
train (see :mod:`hardneg.train.trainer`); the test split is evaluated once per
final model.

A trained system with a ``base`` starts from the base's trained model (ADORE: its fixed
document encoder; static/star: also the model that mines their negatives), and its
training stage depends on the base's. The recipe's ``device`` (or ``hardneg experiment --device``,
which replaces it) is every training config's and every encoder's (tests, transfers, analyses); it
is not part of the stage keys, so moving a half-done experiment to another device reruns nothing.

A system with ``seeds`` adds, for every seed after its first, the replica ``<name>.seed<k>``
(:meth:`~hardneg.experiment.recipe.Recipe.replicas`): its own ``train-``, ``test-`` and ``transfer-`` stages
(transfer when the system is transferred); the system itself keeps its stages and their keys.

Running them (state files, resume, ``--keep-going``, the heartbeat) is :mod:`hardneg.experiment.execute`'s.
Memory between stages: a stage's objects (its trainer, model, ADORE's index on the GPU) are local to
the stage's function and hold no reference cycle, so they are freed when it returns; after every stage
that ran, :func:`~hardneg.experiment.execute.release_memory` also collects any cycle left
(``gc.collect()``) and hands the CUDA caching allocator's unused blocks back to the driver, where the next
stage's GPU Faiss index (which allocates outside PyTorch) can use them.

``interpolate:`` (WiSE-FT, Wortsman et al. 2022) adds, per listed system S and weight a,
``wise-S-a<a>``: the model (1 − a)·start + a·S (:func:`hardneg.model.merge.interpolate`; ADORE:
the query towers only) and its metrics on S's own dev set (``dev_split``, or the seeded carve-out of
:func:`hardneg.train.order.train_dev_split`: S's seed, ``dev_fraction`` and ``dev_carve``; never the test split);
``wise-S``: the best a on dev (S's ``dev_metric``), whose model is the row ``S+wise`` (its own test and
transfer stages); ``wise-S-curve``: every a on test and transfer, for the report's figure only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hardneg.data.cache import cache_dir_or_default
from hardneg.data.load import load_dataset, parse_spec
from hardneg.devices import resolve_device
from hardneg.errors import HardnegError
from hardneg.evaluate.results import save_run_and_metrics
from hardneg.experiment import records as records_module
from hardneg.experiment import wise_stages
from hardneg.experiment.analysis_stages import (
    pairwise_stage,
    pairwise_system_stage,
    pq_stage,
    pq_system_stage,
    tsne_stage,
)
from hardneg.experiment.execute import describe, is_finished, read_state, run_stages
from hardneg.experiment.outside_index import build_outside_index, search_outside_index
from hardneg.experiment.peer_st import PEER_ST, peer_stage
from hardneg.experiment.recipe import START_MODEL, Recipe, System
from hardneg.experiment.report import write_report
from hardneg.experiment.stages import (
    PAIRWISE,
    PLAN_FILE,
    PQ,
    REPORT,
    TSNE,
    Stage,
    dataset_tag,
    index_stage,
    pairwise_system,
    portable,
    pq_system,
    select_stages,
    stage_key,
    test_stage,
    train_stage,
    transfer_stage,
    wise_alpha_stage,
    wise_curve_stage,
    wise_name,
    wise_stage,
)
from hardneg.io import read_json, write_json
from hardneg.locks import holder_alive
from hardneg.model.encoder import DualEncoder
from hardneg.model.registry import resolve_model
from hardneg.retrieval.bm25 import cached_bm25
from hardneg.retrieval.dense import retrieve
from hardneg.train.config import TrainConfig
from hardneg.train.order import train_dev_split
from hardneg.train.resume_keys import LATER_DEFAULTS
from hardneg.train.trainer import Trainer

logger = logging.getLogger("hardneg.experiment")
#: TrainConfig settings left out of a training stage's key: where it writes and runs, not what it computes
_NOT_KEYED = ("out", "quiet", "cache_dir", "device", "report_to", "dist_timeout")


class Experiment:
    """The stages of a recipe, and running them with caching and resume."""

    def __init__(self, recipe: Recipe, out: str | Path | None = None, *, quiet: bool = False) -> None:
        self.recipe = recipe
        self.out = Path(out or recipe.out or Path("runs") / "experiments" / recipe.name)
        self.quiet = quiet
        self.stages: dict[str, Stage] = {}
        #: the ``S+wise`` rows of ``interpolate:``: row name -> the interpolated system S
        self.wise: dict[str, System] = {wise_name(s.name): s for s in recipe.interpolated}
        self.device = resolve_device(recipe.device)  # the recipe check already refused a missing one
        self._build()

    # ------------------------------------------------------------------ paths
    def stage_dir(self, name: str) -> Path:
        return self.out / "stages" / name

    def model_path(self, system: System) -> str:
        """Where a system's encoder lives: the starting model, or its training stage's best model."""
        if system.name in self.wise:  # the dev pick of the interpolation, copied by its wise-S stage
            return str(self.stage_dir(wise_stage(self.wise[system.name].name)) / "model")
        if system.kind == "zeroshot":
            return self.recipe.model
        return str(self.stage_dir(train_stage(system.name)) / "model")

    def index_dir(self, name: str) -> Path:
        """The Pyserini folder the stage of ``indexes:`` entry ``name`` writes."""
        return self.stage_dir(index_stage(name)) / "index"

    def wise_system(self, row: str) -> System:
        """The ``S+wise`` row as a system: S's method, index and settings, the dev-picked merged model."""
        s = self.wise[row]
        return System.model_validate({"name": row, "method": s.method, "base": s.base, **s.settings})

    @property
    def cache_dir(self) -> Path:
        return cache_dir_or_default(self.recipe.cache_dir)

    def test_spec(self) -> str:
        path, _ = parse_spec(self.recipe.data)
        return f"{path}:{self.recipe.eval.split}"

    # ------------------------------------------------------------------ the stage graph
    def _add(self, stage: Stage) -> None:
        deps = [self.stages[d] for d in stage.deps]
        folders = {"out": str(self.out).rstrip("/"), "data_dir": self.recipe.data_dir or ""}
        stage.key = stage_key(portable(stage.settings, folders), [d.key for d in deps])
        stage.legacy_key = stage_key(stage.settings, [d.legacy_key for d in deps])
        self.stages[stage.name] = stage

    def _build(self) -> None:
        r = self.recipe
        ev = r.eval
        for name, ix in r.indexes.items():
            settings = {"model": ix.model or r.model, "factory": ix.factory, "metric": ix.metric,
                        "max_seq_length": ix.max_seq_length or ev.max_length, "batch_size": ix.batch_size,
                        "data": self.test_spec()}
            self._add(Stage(index_stage(name), settings, [], self._index_fn(settings)))
        for s in [*r.systems, *r.replicas]:  # seeds: a replica <name>.seed<k> trains like its system
            if s.kind not in ("train", PEER_ST):
                continue
            base = r.system(s.base) if s.base and s.base != START_MODEL else None
            deps = self._model_deps(base) if base is not None else []
            if s.kind == PEER_ST:
                self._add_peer(s, base, deps)
                continue
            outside = s.outside_index
            deps += [index_stage(outside)] if outside is not None else []
            cfg = r.train_config(s, self.stage_dir(train_stage(s.name)),
                                 model=self.model_path(base) if base is not None else None,
                                 index_dir=self.index_dir(outside) if outside is not None else None)
            # a setting added later, at its default, computes what the run did before it existed: left out,
            # so an experiment's finished stages stay finished (as checkpoints stay resumable: fingerprint)
            settings = {k: v for k, v in cfg.to_dict().items()
                        if k not in _NOT_KEYED and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
            self._add(Stage(train_stage(s.name), settings, deps, self._train_fn(cfg)))
        eval_settings = {"max_length": ev.max_length, "query_max_length": ev.query_max_length, "k": ev.k,
                         "measures": ev.measures}
        for s in [*r.systems, *r.replicas]:
            deps = self._model_deps(s)
            self._add(Stage(test_stage(s.name), {"system": s.name, "kind": s.kind, "index": s.index,
                                                 **self._on_test(s, eval_settings)},
                            deps, self._retrieve_fn(s, self.test_spec())))
        for s in r.interpolated:
            self._add_wise(s, eval_settings)
        analysis = r.analysis
        dense = [s for s in r.dense if s.outside_index is None]  # the analyses encode documents: a document tower
        if analysis.enabled("pairwise"):
            topk = analysis.pairwise.topk if analysis.pairwise else 200
            systems = [s.name for s in dense]
            for s in dense:  # each system's errors while its model is at hand; the analysis gathers numbers only
                self._add(Stage(pairwise_system(s.name), {"topk": topk, "system": s.name,
                                                          **self._on_test(s, eval_settings)},
                                self._model_deps(s), pairwise_system_stage(self, s.name, topk)))
            self._add(Stage(PAIRWISE, {"topk": topk, "systems": systems}, [pairwise_system(n) for n in systems],
                            pairwise_stage(self, systems, topk), reads_records=True))
        if analysis.enabled("pq"):
            cfg = analysis.pq
            systems = list((cfg.systems if cfg else None) or [s.name for s in dense])
            indexes = list((cfg.indexes if cfg else None) or ["flat", "pq48"])
            for n in systems:
                s = r.system(n)
                self._add(Stage(pq_system(n), {"system": n, "indexes": indexes, **self._on_test(s, eval_settings)},
                                self._model_deps(s), pq_system_stage(self, n, indexes)))
            self._add(Stage(PQ, {"systems": systems, "indexes": indexes}, [pq_system(n) for n in systems],
                            pq_stage(self, systems, indexes), reads_records=True))
        if analysis.enabled("tsne"):
            cfg = analysis.tsne
            start = next((s.name for s in r.systems if s.kind == "zeroshot"), START_MODEL)
            before = cfg.before if cfg and "before" in cfg.model_fields_set else start
            after = (cfg.after if cfg and "after" in cfg.model_fields_set
                     else next((s.name for s in dense if s.frozen_doc), before))
            settings = {"before": before, "after": after, "top": cfg.top if cfg else 30,
                        "query": cfg.query if cfg else None, "seed": r.seed, **eval_settings}
            deps = [test_stage(before), test_stage(after)]
            self._add(Stage(TSNE, settings, deps, tsne_stage(self, settings)))
        for spec in r.transfer:
            for s in [*r.systems, *r.replicas, *(self.wise_system(n) for n in self.wise)]:
                if s.outside_index is not None:  # its index covers the recipe's corpus only
                    continue
                origin = self.wise[s.name].name if s.name in self.wise else s.replica_of or s.name
                if ev.transfer_systems and origin not in ev.transfer_systems:
                    continue
                name = transfer_stage(s.name, dataset_tag(spec))
                self._add(Stage(name, {"system": s.name, "data": spec, "index": "flat",
                                       "model": self.model_path(s), **eval_settings,
                                       "query_max_length": self.query_length(s)},
                                self._model_deps(s), self._retrieve_fn(s, spec, index="flat")))
        for s in r.interpolated:
            alphas = r.interpolate.alphas if r.interpolate else []
            self._add(Stage(wise_curve_stage(s.name), {"system": s.name, "alphas": alphas, "data": self.test_spec(),
                                                       "transfer": list(r.transfer), "index": s.index,
                                                       **eval_settings, "query_max_length": self.query_length(s)},
                            [wise_alpha_stage(s.name, a) for a in alphas], wise_stages.curve_run(self, s, alphas),
                            record_also=("a*/metrics.json", "a*/per_query.json")))  # the report's curve table
        self._add(Stage(REPORT, {}, list(self.stages), self._report_fn, always=True, reads_records=True))

    def _on_test(self, system: System, eval_settings: dict[str, Any]) -> dict[str, Any]:
        """The settings of a stage that runs ``system``'s model on the test split (its test, its pairwise errors,
        its PQ indexes): the split, the model, the evaluation settings, the query length it is tested at."""
        return {"data": self.test_spec(), "model": self.model_path(system), **eval_settings,
                "query_max_length": self.query_length(system)}

    def _model_deps(self, system: System) -> list[str]:
        if system.name in self.wise:
            return [wise_stage(self.wise[system.name].name)]
        return [train_stage(system.name)] if system.kind in ("train", PEER_ST) else []

    def _wise_start(self, system: System) -> tuple[str, list[str]]:
        """Model A of ``system``'s interpolation and the stages it comes from (see merge.py: ADORE keeps its
        base's document tower, so A is the base's model; the document-side methods start from the recipe's)."""
        base = self.recipe.start_of(system)
        if base is None:
            return self.recipe.model, []
        b = self.recipe.system(base)
        return self.model_path(b), self._model_deps(b)

    def _add_wise(self, s: System, eval_settings: dict[str, Any]) -> None:
        """The stages of ``interpolate:`` for system ``s``: one merged model per weight (dev only), the pick,
        and the pick's test row ``s+wise``."""
        r = self.recipe
        alphas = r.interpolate.alphas if r.interpolate else []
        cfg = r.train_config(s, self.stage_dir(train_stage(s.name)))
        dev = {"data": cfg.data, "dev_split": cfg.dev_split, "dev_fraction": cfg.dev_fraction, "seed": cfg.seed,
               "dev_metric": cfg.dev_metric}
        start, start_deps = self._wise_start(s)
        deps = [*start_deps, *self._model_deps(s)]
        for a in alphas:
            self._add(Stage(wise_alpha_stage(s.name, a),
                            {"system": s.name, "alpha": a, "start": start, "model": self.model_path(s),
                             "index": s.index, "dev": dev, **eval_settings, "query_max_length": self.query_length(s)},
                            deps, wise_stages.alpha_run(self, s, a, start, cfg)))
        self._add(Stage(wise_stage(s.name), {"system": s.name, "alphas": alphas, "dev_metric": cfg.dev_metric},
                        [wise_alpha_stage(s.name, a) for a in alphas],
                        wise_stages.pick_run(self, s, alphas, cfg.dev_metric)))
        row = self.wise_system(wise_name(s.name))
        self._add(Stage(test_stage(row.name), {"system": row.name, "kind": "wise", "index": s.index,
                                               **self._on_test(row, eval_settings)},
                        self._model_deps(row), self._retrieve_fn(row, self.test_spec())))

    def _add_peer(self, s: System, base: System | None, deps: list[str]) -> None:
        """The training stage of a ``peer-st`` system (:func:`hardneg.experiment.peer_st.peer_stage`), started from
        its ``base``'s model (``deps``: the base's stages), else the recipe's."""
        start = self.model_path(base) if base is not None else self.recipe.model
        settings, fn = peer_stage(start, self.recipe.peer_settings(s), self.recipe.peer_config(s), self.cache_dir,
                                  str(self.device))
        self._add(Stage(train_stage(s.name), settings, deps, fn))

    # ------------------------------------------------------------------ stage bodies
    def _train_fn(self, cfg: TrainConfig) -> Callable[[Path], dict[str, Any]]:
        def run(folder: Path) -> dict[str, Any]:
            cfg.quiet = self.quiet
            trainer = Trainer(cfg)
            trainer.train(resume=True)
            del trainer  # its model, optimiser and method (ADORE's index) go now, not at the next collection
            summary = read_json(folder / "summary.json")
            return {"best_step": summary["best_step"], "best_dev": summary["best_dev"]}

        return run

    def query_length(self, system: System) -> int:
        """The query max length ``system`` is tested with: ``eval.query_max_length``, except for a method that
        trains the query tower alone (ADORE), tested at the length it trained at (DRhard's adore/train.py and
        adore/inference.py: 64 tokens both; star/inference.py: 32)."""
        if system.frozen_doc:
            return self.recipe.train_config(system, self.stage_dir(train_stage(system.name))).query_max_length
        return int(self.recipe.eval.query_max_length)

    def _encoder(self, system: System) -> DualEncoder:
        ev = self.recipe.eval
        encoder = DualEncoder.from_pretrained(self.model_path(system), doc_max_length=int(ev.max_length),
                                              query_max_length=self.query_length(system))
        return encoder.to(self.device) if self.device.type != "cpu" else encoder

    def _retrieve_fn(self, system: System, spec: str, *,
                     index: str | None = None) -> Callable[[Path], dict[str, Any]]:
        """A test or transfer stage: ``system`` retrieves for ``spec``'s queries; the stage keeps the run, its
        metrics and its per-query scores (the report's paired tests)."""
        def run(folder: Path) -> dict[str, Any]:
            ev = self.recipe.eval
            dataset = load_dataset(spec, cache_dir=self.cache_dir)
            tic = time.perf_counter()
            if system.kind == "bm25":
                bm25 = cached_bm25(dataset, self.cache_dir)
                run_ = bm25.search(dataset.queries(), k=int(ev.k), show_progress=not self.quiet)
            elif system.outside_index is not None:  # the index it trained against, as `hardneg search PATH` does
                run_ = search_outside_index(self.index_dir(system.outside_index), self._encoder(system),
                                            dataset.queries(), int(ev.k), show_progress=not self.quiet)
            else:
                run_ = retrieve(self._encoder(system), dataset, index_kind=index or system.index, k=int(ev.k),
                                cache_dir=self.cache_dir, show_progress=not self.quiet,
                                use_gpu=self.device.type == "cuda")
            seconds = time.perf_counter() - tic
            metrics = save_run_and_metrics(run_, folder, tag=system.name, qrels=dataset.qrels(),
                                           measures=ev.measures, per_query=True).metrics
            return {"metrics": metrics, "seconds": seconds, "queries": len(dataset.queries())}

        return run

    def _index_fn(self, settings: dict[str, Any]) -> Callable[[Path], dict[str, Any]]:
        """Stage ``index-<name>``: sentence-transformers + Faiss, Pyserini layout (outside_index.py)."""
        def run(folder: Path) -> dict[str, Any]:
            dataset = load_dataset(settings["data"], cache_dir=self.cache_dir)
            tic = time.perf_counter()
            built = build_outside_index(str(resolve_model(settings["model"])), dataset, folder / "index",
                                        factory=settings["factory"], metric=settings["metric"],
                                        max_seq_length=settings["max_seq_length"], batch_size=settings["batch_size"],
                                        device=str(self.device), show_progress=not self.quiet)
            return {**built, "seconds": time.perf_counter() - tic}

        return run

    # ------------------------------------------------------------------ interpolate: (WiSE-FT)
    def _load(self, path: str, system: System) -> DualEncoder:
        """The model at ``path`` at the eval lengths of ``system`` (:meth:`query_length`)."""
        ev = self.recipe.eval
        encoder = DualEncoder.from_pretrained(path, doc_max_length=int(ev.max_length),
                                              query_max_length=self.query_length(system))
        return encoder.to(self.device) if self.device.type != "cpu" else encoder

    @staticmethod
    def dev_set(cfg: TrainConfig) -> tuple[Any, dict[str, dict[str, int]], dict[str, Any]]:
        """The dataset, qrels and queries of the dev set ``cfg``'s training selected on: its ``dev_split``, or
        the trainer's seeded carve-out of the training queries (train/trainer.py ``setup``, same seed/fraction)."""
        split = train_dev_split(cfg)
        return split.dev_dataset, split.dev_qrels, split.dev_queries

    def _report_fn(self, folder: Path) -> dict[str, Any]:
        path = write_report(self.out)
        return {"report": str(path)}

    # ------------------------------------------------------------------ running
    def status(self, records: str | Path | None = None, only: list[str] | None = None) -> list[tuple[str, str]]:
        """Each stage and its state (:func:`~hardneg.experiment.execute.describe`: ``todo``, ``done``, ``running``,
        ``interrupted``, ``failed``, ``stale …``; ``done (record)``: not done here, done in ``records``, so a run
        with them takes it; ``rerun (files needed)``: done only as a record, but a stage still to run reads its
        files, so the run does it again, :func:`~hardneg.experiment.records.needed_again`), in the order
        :meth:`run` takes them; with ``only``, just the stages ``run(only=...)`` would take
        (:func:`~hardneg.experiment.stages.select_stages`). Both follow one :func:`~hardneg.experiment.records.plan`."""
        alive = holder_alive(self.out)
        wanted = select_stages(self.stages, only) if only else list(self.stages)
        plan = records_module.plan(self.stages, wanted, self.stage_dir, None if records is None else Path(records))
        rows = []
        for n in plan.order:
            stage, folder = self.stages[n], self.stage_dir(n)
            state = "rerun (files needed)" if n in plan.again else \
                "done (record)" if n in plan.taken else describe(stage, read_state(folder), folder, alive)
            rows.append((n, state))
        return rows

    def finished(self) -> set[str]:
        """The stages done with their current settings (a run only reads them back; the report always reruns)."""
        return {n for n, stage in self.stages.items() if is_finished(stage, read_state(self.stage_dir(n)))}

    def run(self, only: list[str] | None = None, echo: Callable[[str], None] | None = None, *,
            keep_going: bool = False, records: str | Path | None = None) -> dict[str, str]:
        """Run every stage not already done (or those matching ``only`` and their dependencies), in
        :func:`~hardneg.experiment.stages.run_order` (each system's test and transfer right after its training),
        with :func:`~hardneg.experiment.execute.run_stages`; returns each stage's outcome (``cached``, ``done``,
        and with ``keep_going`` also ``failed`` / ``skipped``). Writes the recipe (``recipe.json``) and the list
        of its stages (``plan.json``) into the experiment folder first.

        ``records``: a folder of stage records (:mod:`hardneg.experiment.records`): stages done there are taken
        from it (those a stage still to run needs run again), and every stage done here is recorded there."""
        echo = echo or (lambda msg: logger.info("%s", msg))
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "recipe.json", self.recipe.to_dict())
        write_json(self.out / PLAN_FILE, {"stages": list(self.stages)})  # the report counts what is still to run
        wanted = select_stages(self.stages, only) if only else list(self.stages)
        book = None if records is None else Path(records)
        plan = records_module.plan(self.stages, wanted, self.stage_dir, book)
        on_finish = None
        if book is not None:
            records_module.save_top(self.out, book)
            for n in sorted(plan.taken, key=wanted.index):
                if not records_module.restore(self.stages[n], self.stage_dir(n), book / "stages" / n):
                    raise HardnegError(f"stage {n}: its record {book / 'stages' / n} changed while the run started; "
                                       "run again")
            if plan.taken:
                echo(f"[record] {len(plan.taken)} stage(s) taken from {book}")

            def on_finish(name: str, outcome: str) -> None:
                stage, record = self.stages[name], book / "stages" / name
                if stage.always or name in plan.kept:
                    return
                if outcome == "done" or not is_finished(stage, read_state(record)):  # a result the records lack
                    records_module.save(stage, self.stage_dir(name), record)

        return run_stages(self.stages, plan.order, self.stage_dir, echo=echo, keep_going=keep_going,
                          again=plan.again, finished=on_finish)
