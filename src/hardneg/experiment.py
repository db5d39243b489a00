"""Run a recipe (``configs/<name>.yaml``): its stages in order, each cached, skipped when done, resumable.

A recipe names a dataset, a starting encoder and the systems to compare::

    name: scifact
    data: "{data_dir}/scifact"          # {data_dir}: --data-dir, $HARDNEG_DATA_DIR or ../shared/data
    model: minilm                       # the starting encoder (zero-shot system, warm-up model)
    seed: 42
    train: {preset: cpu-demo}           # TrainConfig settings of every trained (non-ADORE) system
    adore: {max_steps: 100, batch_size: 32, lr: 1.0e-5}   # TrainConfig settings of every ADORE system
    eval: {split: test, max_length: 256, k: 1000, measures: [RR@10, R@100, nDCG@10],
           baselines: [rand, inbatch]}  # paired t-test references of the report
    transfer: ["{data_dir}/nfcorpus:test", "{data_dir}/classic/med"]   # zero-shot transfer sets
    systems:
      - {name: bm25, kind: bm25}
      - {name: zeroshot, kind: zeroshot}
      - {name: star, method: star, track_every: 30}     # any TrainConfig key overrides
      - {name: adore+star, method: adore, base: star}   # ADORE on top of another system's model
    analysis:
      pairwise: {topk: 200}                              # Table 1 / Fig. 3
      pq: {indexes: [flat, pq48], systems: [zeroshot, adore+zeroshot]}   # Table 3 / 5
      tsne: {before: zeroshot, after: adore+zeroshot}   # Fig. 6

Stages (``OUT/stages/<stage>/``): ``train-<system>`` for trained systems, then
``test-<system>`` (retrieval + metrics on the test split), ``transfer-<system>-<set>``,
the analyses, and ``report``. Each stage's *key* hashes its settings and the keys of
the stages it depends on; ``stage.json`` records the key, status, attempts and wall
time. A stage whose ``stage.json`` says done with the same key is skipped; one
interrupted mid-way runs again in the same folder (training resumes from its last
checkpoint, encoding from its partial file); one whose settings changed starts
afresh. Hyper-parameters are tuned, if at all, on the dev split carved out of
train (see :mod:`hardneg.train.trainer`); the test split is evaluated once per
final model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardneg.errors import HardnegError
from hardneg.io import read_json, write_json

logger = logging.getLogger("hardneg.experiment")

DEFAULT_DATA_DIR = "../shared/data"
SYSTEM_KINDS = ("bm25", "zeroshot", "train")
DEFAULT_EVAL: dict[str, Any] = {"split": "test", "max_length": 256, "query_max_length": 64, "k": 1000,
                                "measures": ["RR@10", "R@100", "nDCG@10"], "baselines": [],
                                "transfer_systems": []}
#: TrainConfig keys a recipe may not set: the runner owns them
_RUNNER_KEYS = {"data", "out", "quiet", "cache_dir"}


@dataclass
class System:
    name: str
    kind: str  # bm25 | zeroshot | train
    method: str | None = None
    base: str | None = None  # ADORE: the system whose model is the fixed document encoder
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides

    @property
    def is_adore(self) -> bool:
        return self.method == "adore"

    @property
    def index(self) -> str:
        """The index the system is tested on: ADORE's own training index, flat otherwise."""
        return str(self.settings.get("index", "flat")) if self.is_adore else "flat"


@dataclass
class Recipe:
    name: str
    data: str
    model: str
    systems: list[System]
    seed: int = 42
    train: dict[str, Any] = field(default_factory=dict)
    adore: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    transfer: list[str] = field(default_factory=list)
    analysis: dict[str, Any] = field(default_factory=dict)
    out: str | None = None
    cache_dir: str | None = None
    source: str = ""

    def system(self, name: str) -> System:
        for s in self.systems:
            if s.name == name:
                return s
        raise HardnegError(f"{self.source}: no system named {name!r}; systems: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.systems]

    @property
    def dense(self) -> list[System]:
        return [s for s in self.systems if s.kind != "bm25"]

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_yaml(cls, path: str | Path, data_dir: str | None = None) -> Recipe:
        import yaml

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise HardnegError(f"{path}: recipe not found (see configs/ for examples)") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise HardnegError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise HardnegError(f"{path}: a recipe is a mapping (name, data, model, systems, ...)")
        data_dir = data_dir or os.environ.get("HARDNEG_DATA_DIR") or DEFAULT_DATA_DIR
        return cls.from_dict(_substitute(data, {"data_dir": str(data_dir).rstrip("/")}), source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> Recipe:
        known = {"name", "data", "model", "systems", "seed", "train", "adore", "eval", "transfer", "analysis",
                 "out", "cache_dir", "description"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HardnegError(f"{source}: unknown recipe key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for key in ("name", "data", "systems"):
            if not data.get(key):
                raise HardnegError(f"{source}: the recipe needs '{key}'")
        if not re.fullmatch(r"[\w.+-]+", str(data["name"])):
            raise HardnegError(f"{source}: name {data['name']!r} must be letters, digits, '.', '+', '-' or '_'")
        systems = []
        for i, raw in enumerate(data["systems"]):
            if not isinstance(raw, dict) or "name" not in raw:
                raise HardnegError(f"{source}: systems[{i}] must be a mapping with a 'name'")
            raw = dict(raw)
            name = str(raw.pop("name"))
            if not re.fullmatch(r"[\w.+-]+", name):
                raise HardnegError(f"{source}: system name {name!r} must be letters, digits, '.', '+', '-' or '_'")
            method = raw.pop("method", None)
            kind = raw.pop("kind", "train" if method else None)
            if kind not in SYSTEM_KINDS:
                raise HardnegError(f"{source}: system {name!r}: kind must be one of {', '.join(SYSTEM_KINDS)}"
                                   " (or give a training 'method')")
            if kind == "train" and not method:
                raise HardnegError(f"{source}: system {name!r} is trained: give its 'method'")
            base = raw.pop("base", None)
            if base is not None and method != "adore":
                raise HardnegError(f"{source}: system {name!r}: 'base' is for ADORE systems")
            if kind != "train" and raw:
                raise HardnegError(f"{source}: system {name!r} ({kind}) takes no settings: {', '.join(raw)}")
            systems.append(System(name, kind, method, base, raw))
        eval_cfg = {**DEFAULT_EVAL, **(data.get("eval") or {})}
        recipe = cls(
            name=str(data["name"]), data=str(data["data"]), model=str(data.get("model", "minilm")),
            systems=systems, seed=int(data.get("seed", 42)), train=dict(data.get("train") or {}),
            adore=dict(data.get("adore") or {}), eval=eval_cfg, transfer=[str(t) for t in data.get("transfer") or []],
            analysis=dict(data.get("analysis") or {}), out=data.get("out"), cache_dir=data.get("cache_dir"),
            source=source,
        )
        recipe.validate()
        return recipe

    def validate(self) -> None:
        """Every problem found before any compute: names, bases, training settings, analyses."""
        names = self.names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise HardnegError(f"{self.source}: system names must be unique: {', '.join(dupes)}")
        for i, s in enumerate(self.systems):
            if s.is_adore:
                base = s.base or "zeroshot"
                if base != "zeroshot":
                    b = self.system(base)
                    if self.systems.index(b) > i:
                        raise HardnegError(f"{self.source}: ADORE system {s.name!r} needs its base {base!r} listed before it")
                    if b.kind == "bm25":
                        raise HardnegError(f"{self.source}: ADORE system {s.name!r} needs a dense base, not BM25")
            if s.kind == "train":
                bad = sorted(set(s.settings) & _RUNNER_KEYS)
                if bad:
                    raise HardnegError(f"{self.source}: system {s.name!r}: {', '.join(bad)} are set by the runner")
                self.train_config(s, Path("/nonexistent")).validate()
        for s in [*(self.eval.get("baselines") or []), *(self.eval.get("transfer_systems") or [])]:
            self.system(s)
        pq = self.analysis.get("pq") or {}
        for s in pq.get("systems") or []:
            if self.system(s).kind == "bm25":
                raise HardnegError(f"{self.source}: analysis.pq: {s!r} is not a dense system")
        tsne = self.analysis.get("tsne") or {}
        for key in ("before", "after"):
            if key in tsne:
                self.system(tsne[key])

    def train_config(self, system: System, out: Path, model: str | None = None):
        """The :class:`TrainConfig` of a trained system (its model path filled in by the runner)."""
        from hardneg.train.config import TrainConfig, apply_preset

        common = dict(self.adore if system.is_adore else self.train)
        preset = common.pop("preset", None)
        settings = {**common, **system.settings}
        preset = settings.pop("preset", preset)
        bad = sorted(set(settings) & _RUNNER_KEYS)
        if bad:
            raise HardnegError(f"{self.source}: {', '.join(bad)} are set by the runner, not the recipe")
        try:
            cfg = TrainConfig.from_dict({"seed": self.seed, **settings})
        except TypeError as exc:
            raise HardnegError(f"{self.source}: system {system.name!r}: {exc}") from exc
        except HardnegError as exc:
            raise HardnegError(f"{self.source}: system {system.name!r}: {exc}") from exc
        cfg = apply_preset(cfg, preset, explicit=set(settings) | {"seed"})
        cfg.method = str(system.method)
        cfg.data = self.data
        cfg.out = str(out)
        if model is not None:
            cfg.model = model
        elif "model" not in settings:
            cfg.model = self.model
        if system.is_adore:
            cfg.data = self.data
        cfg.cache_dir = self.cache_dir
        return cfg


def _substitute(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.replace("{data_dir}", names["data_dir"])
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    return value


def _key(settings: Any, deps: list[str]) -> str:
    payload = json.dumps({"settings": settings, "deps": deps}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def dataset_tag(spec: str) -> str:
    """A short, file-safe name for a dataset spec: ``.../nfcorpus:test`` → ``nfcorpus-test``."""
    from hardneg.data.readers import parse_spec

    path, split = parse_spec(spec)
    name = Path(path.rstrip("/")).name or path
    return re.sub(r"[^\w.+-]", "_", f"{name}-{split}" if split else name)


@dataclass
class Stage:
    name: str
    settings: dict[str, Any]
    deps: list[str]
    fn: Callable[[Path], dict[str, Any]]
    always: bool = False  # run every time (the report: cheap, and it reads the other stages)
    key: str = ""


class Experiment:
    """The stages of a recipe, and running them with caching and resume."""

    def __init__(self, recipe: Recipe, out: str | Path | None = None, *, quiet: bool = False) -> None:
        self.recipe = recipe
        self.out = Path(out or recipe.out or Path("runs") / "experiments" / recipe.name)
        self.quiet = quiet
        self.stages: dict[str, Stage] = {}
        self._build()

    # ------------------------------------------------------------------ paths
    def stage_dir(self, name: str) -> Path:
        return self.out / "stages" / name

    def model_path(self, system: System) -> str:
        """Where a system's encoder lives: the starting model, or its training stage's best model."""
        if system.kind == "zeroshot":
            return self.recipe.model
        return str(self.stage_dir(f"train-{system.name}") / "model")

    @property
    def cache_dir(self) -> Path:
        from hardneg.retrieval.dense import default_cache_dir

        return Path(self.recipe.cache_dir) if self.recipe.cache_dir else default_cache_dir()

    def test_spec(self) -> str:
        from hardneg.data.readers import parse_spec

        path, _ = parse_spec(self.recipe.data)
        return f"{path}:{self.recipe.eval['split']}"

    # ------------------------------------------------------------------ the stage graph
    def _add(self, stage: Stage) -> None:
        stage.key = _key(stage.settings, [self.stages[d].key for d in stage.deps])
        self.stages[stage.name] = stage

    def _build(self) -> None:
        r = self.recipe
        ev = r.eval
        for s in r.systems:
            if s.kind != "train":
                continue
            base = r.system(s.base) if s.is_adore and s.base and s.base != "zeroshot" else None
            deps = [f"train-{base.name}"] if base is not None and base.kind == "train" else []
            cfg = r.train_config(s, self.stage_dir(f"train-{s.name}"),
                                 model=self.model_path(base) if base is not None else None)
            settings = {k: v for k, v in cfg.to_dict().items() if k not in ("out", "quiet", "cache_dir")}
            self._add(Stage(f"train-{s.name}", settings, deps, self._train_fn(cfg)))
        eval_settings = {k: ev[k] for k in ("max_length", "query_max_length", "k", "measures")}
        for s in r.systems:
            deps = self._model_deps(s)
            self._add(Stage(f"test-{s.name}", {"system": s.name, "kind": s.kind, "data": self.test_spec(),
                                               "index": s.index, "model": self.model_path(s), **eval_settings},
                            deps, self._retrieve_fn(s, self.test_spec(), per_query=True)))
        analysis = r.analysis
        if "pairwise" in analysis:
            cfg = analysis["pairwise"] or {}
            systems = [s.name for s in r.dense]
            deps = [f"test-{n}" for n in systems]
            self._add(Stage("analysis-pairwise", {"topk": int(cfg.get("topk", 200)), "systems": systems},
                            deps, self._pairwise_fn(systems, int(cfg.get("topk", 200)))))
        if "pq" in analysis:
            cfg = analysis["pq"] or {}
            systems = list(cfg.get("systems") or [s.name for s in r.dense])
            indexes = list(cfg.get("indexes") or ["flat", "pq48"])
            deps = sorted({d for n in systems for d in self._model_deps(r.system(n))})
            self._add(Stage("analysis-pq", {"systems": systems, "indexes": indexes, **eval_settings},
                            deps, self._pq_fn(systems, indexes)))
        if "tsne" in analysis:
            cfg = analysis["tsne"] or {}
            before = cfg.get("before", "zeroshot")
            after = cfg.get("after", next((s.name for s in r.systems if s.is_adore), before))
            settings = {"before": before, "after": after, "top": int(cfg.get("top", 30)),
                        "query": cfg.get("query"), "seed": r.seed, **eval_settings}
            deps = [f"test-{before}", f"test-{after}"]
            self._add(Stage("analysis-tsne", settings, deps, self._tsne_fn(settings)))
        for spec in r.transfer:
            for s in r.systems:
                if ev.get("transfer_systems") and s.name not in ev["transfer_systems"]:
                    continue
                name = f"transfer-{s.name}-{dataset_tag(spec)}"
                self._add(Stage(name, {"system": s.name, "data": spec, "index": "flat",
                                       "model": self.model_path(s), **eval_settings},
                                self._model_deps(s), self._retrieve_fn(s, spec, per_query=False, index="flat")))
        self._add(Stage("report", {}, list(self.stages), self._report_fn, always=True))

    def _model_deps(self, system: System) -> list[str]:
        return [f"train-{system.name}"] if system.kind == "train" else []

    # ------------------------------------------------------------------ stage bodies
    def _train_fn(self, cfg) -> Callable[[Path], dict[str, Any]]:
        def run(folder: Path) -> dict[str, Any]:
            from hardneg.train.trainer import Trainer

            cfg.quiet = self.quiet
            trainer = Trainer(cfg)
            trainer.train(resume=True)
            summary = read_json(folder / "summary.json")
            return {"best_step": summary["best_step"], "best_dev": summary["best_dev"]}

        return run

    def _encoder(self, system: System):
        from hardneg.model.encoder import DualEncoder

        ev = self.recipe.eval
        return DualEncoder.from_pretrained(self.model_path(system), doc_max_length=int(ev["max_length"]),
                                           query_max_length=int(ev["query_max_length"]))

    def _retrieve_fn(self, system: System, spec: str, *, per_query: bool,
                     index: str | None = None) -> Callable[[Path], dict[str, Any]]:
        def run(folder: Path) -> dict[str, Any]:
            from hardneg.data.readers import load_dataset
            from hardneg.evaluate.metrics import evaluate, evaluate_per_query
            from hardneg.retrieval.runs import write_trec

            ev = self.recipe.eval
            dataset = load_dataset(spec)
            tic = time.perf_counter()
            if system.kind == "bm25":
                from hardneg.retrieval.bm25 import cached_bm25

                bm25 = cached_bm25(dataset, self.cache_dir)
                run_ = bm25.search(dataset.queries(), k=int(ev["k"]), show_progress=not self.quiet)
            else:
                from hardneg.retrieval.dense import retrieve

                run_ = retrieve(self._encoder(system), dataset, index_kind=index or system.index, k=int(ev["k"]),
                                cache_dir=self.cache_dir, show_progress=not self.quiet)
            seconds = time.perf_counter() - tic
            write_trec(run_, folder / "run.trec", tag=system.name)
            qrels = dataset.qrels()
            metrics = evaluate(run_, qrels, ev["measures"])
            write_json(folder / "metrics.json", metrics)
            if per_query:
                write_json(folder / "per_query.json", evaluate_per_query(run_, qrels, ev["measures"]))
            return {"metrics": metrics, "seconds": seconds, "queries": len(dataset.queries())}

        return run

    def _pairwise_fn(self, systems: list[str], topk: int) -> Callable[[Path], dict[str, Any]]:
        def run(folder: Path) -> dict[str, Any]:
            from hardneg.data.readers import load_dataset
            from hardneg.evaluate.analysis import pairwise_errors, score_matrix

            dataset = load_dataset(self.test_spec())
            qrels = dataset.qrels()
            result: dict[str, Any] = {}
            for name in systems:
                qids, doc_ids, scores = score_matrix(self._encoder(self.recipe.system(name)), dataset,
                                                     self.cache_dir, show_progress=not self.quiet)
                errors = pairwise_errors(scores, qids, doc_ids, qrels, topk)
                write_json(folder / f"{name}.json", errors)
                result[name] = {"total": errors["mean_total"], f"top{topk}": errors["mean_topk"]}
            return result

        return run

    def _pq_fn(self, systems: list[str], indexes: list[str]) -> Callable[[Path], dict[str, Any]]:
        def run(folder: Path) -> dict[str, Any]:
            from hardneg.data.readers import load_dataset
            from hardneg.evaluate.metrics import evaluate
            from hardneg.retrieval.dense import corpus_index, search

            ev = self.recipe.eval
            dataset = load_dataset(self.test_spec())
            grid: dict[str, Any] = {}
            sizes: dict[str, int] = {}
            for name in systems:
                encoder = self._encoder(self.recipe.system(name))
                for kind in indexes:
                    index = corpus_index(encoder, dataset, kind, self.cache_dir, show_progress=not self.quiet)
                    run_ = search(index, encoder, dataset.queries(), int(ev["k"]))
                    grid.setdefault(name, {})[kind] = evaluate(run_, dataset.qrels(), ev["measures"])
                    sizes[kind] = int(index.manifest.get("bytes", 0)) if hasattr(index, "manifest") else 0
            write_json(folder / "grid.json", {"metrics": grid, "bytes": sizes})
            return {"metrics": grid, "bytes": sizes}

        return run

    def _tsne_fn(self, settings: dict[str, Any]) -> Callable[[Path], dict[str, Any]]:
        def run(folder: Path) -> dict[str, Any]:
            from hardneg.data.readers import load_dataset
            from hardneg.evaluate.analysis import tsne_points

            dataset = load_dataset(self.test_spec())
            before = self._encoder(self.recipe.system(settings["before"]))
            after = self._encoder(self.recipe.system(settings["after"]))
            points = tsne_points(before, after, dataset, self.cache_dir, top=settings["top"], qid=settings["query"],
                                 seed=settings["seed"])
            write_json(folder / "points.json", points)
            return {"query": points["query_id"]}

        return run

    def _report_fn(self, folder: Path) -> dict[str, Any]:
        from hardneg.evaluate.report import write_report

        path = write_report(self.out)
        return {"report": str(path)}

    # ------------------------------------------------------------------ running
    def status(self) -> list[tuple[str, str]]:
        rows = []
        for stage in self.stages.values():
            state = self._state(stage)
            if state is None:
                rows.append((stage.name, "todo"))
            elif state.get("key") != stage.key:
                rows.append((stage.name, "stale (settings changed)"))
            else:
                rows.append((stage.name, str(state.get("status"))))
        return rows

    def _state(self, stage: Stage) -> dict[str, Any] | None:
        path = self.stage_dir(stage.name) / "stage.json"
        return read_json(path) if path.is_file() else None

    def run(self, only: list[str] | None = None, echo: Callable[[str], None] | None = None) -> dict[str, str]:
        """Run every stage not already done (or those matching ``only`` and their dependencies)."""
        echo = echo or (lambda msg: logger.info("%s", msg))
        wanted = self._closure(only) if only else list(self.stages)
        self.out.mkdir(parents=True, exist_ok=True)
        from dataclasses import asdict

        write_json(self.out / "recipe.json", asdict(self.recipe))
        outcome: dict[str, str] = {}
        for name in wanted:
            stage = self.stages[name]
            folder = self.stage_dir(name)
            state = self._state(stage)
            if state is not None and state.get("key") == stage.key and state.get("status") == "done" and not stage.always:
                outcome[name] = "cached"
                echo(f"[cached] {name}")
                continue
            if state is not None and state.get("key") != stage.key and folder.exists():
                echo(f"[stale]  {name}: settings changed, starting it afresh")
                shutil.rmtree(folder)
                state = None
            attempts = int(state.get("attempts", 0)) + 1 if state else 1
            seconds = float(state.get("seconds", 0.0)) if state else 0.0
            if state is not None:
                echo(f"[resume] {name} (attempt {attempts})")
            else:
                echo(f"[run]    {name}")
            folder.mkdir(parents=True, exist_ok=True)
            base = {"name": name, "key": stage.key, "settings": stage.settings, "deps": stage.deps}
            write_json(folder / "stage.json", {**base, "status": "running", "attempts": attempts, "seconds": seconds})
            tic = time.perf_counter()
            result = stage.fn(folder)
            seconds += time.perf_counter() - tic
            write_json(folder / "stage.json", {**base, "status": "done", "attempts": attempts, "seconds": seconds,
                                               "result": result})
            outcome[name] = "done"
        return outcome

    def _closure(self, only: list[str]) -> list[str]:
        selected: set[str] = set()

        def visit(name: str) -> None:
            if name in selected:
                return
            selected.add(name)
            for dep in self.stages[name].deps:
                visit(dep)

        for pattern in only:
            matches = [n for n in self.stages if n == pattern or re.fullmatch(pattern.replace("*", ".*"), n)]
            if not matches:
                raise HardnegError(f"no stage matches {pattern!r}; stages: {', '.join(self.stages)}")
            for m in matches:
                visit(m)
        return [n for n in self.stages if n in selected]
