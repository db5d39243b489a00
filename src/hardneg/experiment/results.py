"""What an experiment folder holds, and the roles its systems play in the report.

A system's role in the report (the start model, a random-negative baseline, STAR,
a plain ADORE run ...) comes from the recipe: its ``kind``, ``base`` and settings,
and what its method is (:class:`~hardneg.train.methods.MethodSpec`: where its hard
negatives come from, whether the batch's other documents are negatives, whether the
document tower is frozen), never from its name or its method's name. The roles are
the predicates below (:data:`RANDOM_NEGATIVES`, :func:`is_star`, ...), asked with
:meth:`ExperimentResults.with_trait` and :meth:`ExperimentResults.first_with`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from hardneg.data.load import load_dataset, parse_spec
from hardneg.devices import distinct_machines
from hardneg.errors import HardnegError
from hardneg.evaluate.analysis import unseen_queries
from hardneg.evaluate.metrics import evaluate_per_query
from hardneg.experiment.peer_st import PEER_ST, peer_label
from hardneg.experiment.recipe import START_MODEL, Recipe
from hardneg.experiment.schema import substitute
from hardneg.experiment.stages import (
    PAIRWISE,
    dataset_tag,
    portable,
    pq_per_query_file,
    pq_system,
    seed_name,
    test_stage,
    train_stage,
    transfer_stage,
    wise_name,
    wise_stage,
)
from hardneg.experiment.system import settings_section
from hardneg.io import read_json
from hardneg.negatives.rules import NegativeRules
from hardneg.retrieval.runs import Run, read_run
from hardneg.train.methods import MethodSpec, method_spec

#: a role in the report: a predicate on what a method is
Trait = Callable[[MethodSpec], bool]


def is_sampled_random(spec: MethodSpec) -> bool:
    """Random negatives sampled from the corpus (the paper's Rand Neg)."""
    return spec.random_negatives and spec.hard_negatives == "random"


def is_in_batch_only(spec: MethodSpec) -> bool:
    """No negatives of its own: the batch's other documents only (In-Batch Neg)."""
    return spec.random_negatives and spec.hard_negatives is None


#: the random-negative baselines (the paper's references for hard negatives), in order of preference
RANDOM_NEGATIVES: tuple[Trait, ...] = (is_sampled_random, is_in_batch_only)


def is_star(spec: MethodSpec) -> bool:
    """Static hard negatives of the start model plus the batch's other documents as random negatives (STAR)."""
    return spec.hard_negatives == "start-model" and spec.batch_negatives


def is_bm25_negatives(spec: MethodSpec) -> bool:
    """Static hard negatives from BM25 alone (BM25 Neg)."""
    return spec.hard_negatives == "bm25"


def is_refreshed(spec: MethodSpec) -> bool:
    """Hard negatives re-mined with the current model as training goes (ANCE)."""
    return spec.hard_negatives == "refreshed"


def is_frozen_doc(spec: MethodSpec) -> bool:
    """Only the query tower trains, against a fixed document index (ADORE)."""
    return spec.frozen_doc


#: settings that make a system a variant of its method rather than the method as the paper runs it, at the
#: value that does not: distillation, GradCache, TAS batches, LoRA, and every negative-selection rule
VARIANT_SETTINGS: dict[str, Any] = {"distill": "none", "grad_cache": False,
                                    "batch_composition": "random", "lora_r": 0, **NegativeRules.defaults()}


class ExperimentResults:
    """What an experiment folder holds, loaded lazily."""

    def __init__(self, run_dir: str | Path, data_dir: str | None = None) -> None:
        """``data_dir``: where the data folder the experiment ran with (``--data-dir``) is here, when it is not
        where it was (a folder or its records read on another machine): the test qrels, and so the seen-/unseen-
        document strata, are read from there."""
        self.dir = Path(run_dir)
        if not (self.dir / "stages").is_dir():
            raise HardnegError(f"{self.dir}: not an experiment folder (no stages/); run `hardneg experiment` first")
        self.recipe = self._recipe()
        was = self.recipe.get("data_dir")
        if data_dir is not None:
            if not was:
                raise HardnegError(f"{self.dir / 'recipe.json'}: no data_dir recorded (written by an older hardneg); "
                                   "--data-dir cannot be applied")
            moved = portable(self.recipe, {"data_dir": was})
            self.recipe = {**substitute(moved, {"data_dir": str(data_dir).rstrip("/")}), "data_dir": data_dir}
        self.systems: list[dict[str, Any]] = list(self.recipe["systems"])
        self.systems += [{"name": wise_name(s), "kind": "wise", "method": None, "base": None, "settings": {},
                          "wise_of": s} for s in self.interpolated()]
        self.names = [s["name"] for s in self.systems]
        self.eval = self.recipe.get("eval", {})
        self.measures: list[str] = list(self.eval.get("measures") or ["RR@10", "R@100", "nDCG@10"])
        #: transfer stage → per-query scores recomputed from its run (a stage finished without per_query.json)
        self._transfer_pq: dict[str, dict[str, dict[str, float]] | None] = {}

    def _recipe(self) -> dict[str, Any]:
        path = self.dir / "recipe.json"
        if not path.is_file():
            raise HardnegError(f"{self.dir}: no recipe.json; run `hardneg experiment` first")
        data = read_json(path)
        if "systems" not in data:  # written by an older runner: read the recipe file itself
            data = Recipe.from_yaml(data["source"]).to_dict()
        return data

    def interpolated(self) -> list[str]:
        """The systems ``interpolate:`` merged with their start model (their rows are ``<name>+wise``)."""
        spec = self.recipe.get("interpolate")
        if not spec:
            return []
        names = spec.get("systems")
        return [s["name"] for s in self.recipe["systems"] if s.get("kind") == "train"
                and (names is None or s["name"] in names)]

    def seed_runs(self, name: str) -> list[tuple[int, str]]:
        """``(seed, run)`` of each seed of a system with ``seeds``: the first run is the system itself, the others
        its replicas ``<name>.seed<k>`` (empty for a system without ``seeds``)."""
        seeds = self.system(name).get("seeds") or []
        return [(k, name if i == 0 else seed_name(name, k)) for i, k in enumerate(seeds)]

    def wise_pick(self, system: str) -> dict[str, Any] | None:
        """The ``wise-<system>`` stage's result: the dev-picked weight, its dev metrics and the dev curve."""
        st = self.stage(wise_stage(system))
        return st["result"] if st else None

    def system(self, name: str) -> dict[str, Any]:
        return next(s for s in self.systems if s["name"] == name)

    def stage(self, name: str) -> dict[str, Any] | None:
        path = self.dir / "stages" / name / "stage.json"
        if not path.is_file():
            return None
        state = read_json(path)
        return state if state.get("status") == "done" else None

    def stage_file(self, name: str, file: str) -> Path:
        return self.dir / "stages" / name / file

    def per_query(self, system: str) -> dict[str, dict[str, float]] | None:
        if self.stage(test_stage(system)) is None:
            return None
        return read_json(self.stage_file(test_stage(system), "per_query.json"))

    def pq_per_query(self, system: str, kind: str) -> dict[str, dict[str, float]] | None:
        """``system``'s per-query test scores on index ``kind`` (its ``pq-<system>`` stage), or None: the stage
        is not done, or ran before it kept them."""
        if self.stage(pq_system(system)) is None:
            return None
        path = self.stage_file(pq_system(system), pq_per_query_file(kind))
        return read_json(path) if path.is_file() else None

    def pairwise_errors(self, system: str) -> dict[str, Any]:
        """``system``'s pairwise errors as ``analysis-pairwise`` gathered them (Table 1 / Fig. 3): per query
        (``total``, ``top``) and their means."""
        return read_json(self.stage_file(PAIRWISE, f"{system}.json"))

    def transfer_per_query(self, run: str, tag: str) -> dict[str, dict[str, float]] | None:
        """``run``'s per-query scores on the transfer set ``tag``: its stage's ``per_query.json``, or for a stage
        finished before transfer stages kept one, its ``run.trec`` scored against the set's qrels (the same
        :func:`~hardneg.evaluate.metrics.evaluate_per_query`); None before the stage is done or when the set's
        data cannot be read any more."""
        name = transfer_stage(run, tag)
        st = self.stage(name)
        if st is None:
            return None
        path = self.stage_file(name, "per_query.json")
        if path.is_file():
            return read_json(path)
        if name not in self._transfer_pq:
            settings = st.get("settings") or {}
            try:
                qrels = load_dataset(settings["data"], cache_dir=self.recipe.get("cache_dir")).qrels()
                scored = evaluate_per_query(read_run(self.stage_file(name, "run.trec")), qrels,
                                            settings.get("measures") or self.measures)
            except (HardnegError, KeyError, OSError):
                scored = None
            self._transfer_pq[name] = scored
        return self._transfer_pq[name]

    def chain(self, run: str) -> list[str] | None:
        """The stages that produced ``run``'s model: every ``train-``, ``index-`` and ``wise-`` stage its test stage
        needs, directly or not (an ADORE system's base's training included); None before its test stage and every
        one of them is done."""
        st = self.stage(test_stage(run))
        if st is None:
            return None
        seen: set[str] = set()
        todo, chain = list(st.get("deps") or []), []
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            dep = self.stage(name)
            if dep is None:
                return None
            todo += dep.get("deps") or []
            if name.startswith(("train-", "index-", "wise-")):
                chain.append(name)
        return chain

    def chain_seconds(self, run: str) -> float | None:
        """The wall-clock that produced ``run``'s model: the :meth:`chain`'s stages' seconds (Table 4's "stage"
        column summed along it); None before they are all done."""
        chain = self.chain(run)
        return None if chain is None else sum((self.stage_seconds(name) for name in chain), 0.0)

    def machines(self, names: list[str]) -> list[dict[str, Any]]:
        """The distinct machines (:func:`hardneg.devices.machine_record`) that ran the done stages ``names``, in
        order; an empty record for a stage that recorded none (run before hardneg kept them)."""
        done = [st for st in map(self.stage, names) if st is not None]
        return distinct_machines([record for st in done for record in st.get("machines") or [{}]])

    def stage_seconds(self, name: str) -> float:
        """A done stage's wall-clock: its ``stage.json`` seconds, or for a training stage the time its log
        records (each step's and each re-mining's ``seconds``) when that is more: an attempt killed before
        ``stage.json`` kept the clock while running (hardneg before its heartbeat) still trained those steps."""
        st = self.stage(name) or {}
        seconds = float(st.get("seconds") or 0.0)
        if name.startswith("train-"):
            logged = sum(float(r["seconds"]) for r in self._log(name)
                         if r.get("kind") in ("train", "remine") and isinstance(r.get("seconds"), (int, float)))
            seconds = max(seconds, logged)
        return seconds

    def train_log(self, system: str) -> list[dict[str, Any]]:
        return self._log(train_stage(system))

    def _log(self, stage: str) -> list[dict[str, Any]]:
        """A stage's ``train_log.jsonl`` records ([] without one)."""
        path = self.stage_file(stage, "train_log.jsonl")
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def run(self, system: str) -> Run | None:
        """A system's test run (``test-<system>/run.trec``), or None when its test stage has not finished."""
        path = self.stage_file(test_stage(system), "run.trec")
        return read_run(path) if self.stage(test_stage(system)) is not None and path.is_file() else None

    def test_qrels(self) -> dict[str, dict[str, int]] | None:
        """The qrels of the evaluated split (None when the data folder cannot be read any more)."""
        if not hasattr(self, "_test_qrels"):
            path, _ = parse_spec(self.recipe["data"])
            try:
                self._test_qrels = load_dataset(f"{path}:{self.eval.get('split', 'test')}",
                                                cache_dir=self.recipe.get("cache_dir")).qrels()
            except HardnegError:
                self._test_qrels = None
        return self._test_qrels

    def unseen(self) -> list[str] | None:
        """Test queries whose relevant documents are never relevant to a training query."""
        path, _ = parse_spec(self.recipe["data"])
        try:
            cache_dir = self.recipe.get("cache_dir")  # where the experiment unpacked a dataset archive
            train = load_dataset(f"{path}:train", cache_dir=cache_dir).qrels()
            test = load_dataset(f"{path}:{self.eval.get('split', 'test')}", cache_dir=cache_dir).qrels()
        except HardnegError:
            return None
        return unseen_queries(test, train)

    def transfer_tags(self) -> list[str]:
        return [dataset_tag(spec) for spec in self.recipe.get("transfer") or []]

    # ------------------------------------------------------------------ roles, from the recipe and the method specs
    def spec(self, name: str) -> MethodSpec | None:
        """What system ``name``'s training method is (None for a BM25, zero-shot or interpolated row)."""
        method = self.system(name).get("method")
        return method_spec(method) if method else None

    def with_trait(self, trait: Trait, among: Collection[str] | None = None) -> list[str]:
        """The systems whose method has ``trait``, in recipe order (only those in ``among``, if given)."""
        return [s["name"] for s in self.systems if (spec := self.spec(s["name"])) is not None and trait(spec)
                and (among is None or s["name"] in among)]

    def first_with(self, *traits: Trait, among: Collection[str] | None = None) -> str | None:
        """The first system of the first of ``traits`` that has one (in ``among``, if given)."""
        for trait in traits:
            names = self.with_trait(trait, among)
            if names:
                return names[0]
        return None

    def trained(self) -> list[str]:
        """The systems with a training stage: a hardneg method's, or sentence-transformers' recipe (``peer-st``)."""
        return self.with_kind("train", PEER_ST)

    def method_label(self, name: str) -> str:
        """How the report's method columns name what trained system ``name``: its method, or the peer recipe's
        ``sentence-transformers (MNRL)``; empty for an untrained row."""
        s = self.system(name)
        return peer_label(s.get("settings") or {}) if s.get("kind") == PEER_ST else s.get("method") or ""

    def with_kind(self, *kinds: str) -> list[str]:
        return [s["name"] for s in self.systems if s.get("kind") in kinds]

    @property
    def start(self) -> str | None:
        """The zero-shot system: the recipe's starting encoder, untrained."""
        return next(iter(self.with_kind("zeroshot")), None)

    def frozen_doc(self, name: str) -> bool:
        """System ``name`` trained its query tower only, against a fixed document index (ADORE)."""
        spec = self.spec(name)
        return spec is not None and spec.frozen_doc

    def base_of(self, name: str) -> str | None:
        """A frozen-document (ADORE) system's base: the system whose model it starts from (the start model by
        default)."""
        if not self.frozen_doc(name):
            return None
        base = self.system(name).get("base")
        return self.start if base in (None, START_MODEL) and base not in self.names else base

    def settings_of(self, name: str) -> dict[str, Any]:
        """The recipe's settings of system ``name``: its section's (``train:``, or its frozen-document method's,
        ``adore:``) under its own (a preset's are not included)."""
        s = self.system(name)
        common = (self.recipe.get(settings_section(self.spec(name))) or {}) if s.get("kind") == "train" else {}
        return {**common, **(s.get("settings") or {})}

    def is_paper_recipe(self, name: str) -> bool:
        """System ``name`` runs its method as the paper does: none of :data:`VARIANT_SETTINGS` changed (no
        distillation, GradCache, TAS batches, LoRA or negative-selection rule); its budget, lr and batch may
        differ."""
        settings = self.settings_of(name)
        return all(settings.get(k, v) == v for k, v in VARIANT_SETTINGS.items())

    def is_plain_adore(self, name: str) -> bool:
        """ADORE as the paper runs it: LambdaLoss against the exact (flat) index, none of
        :data:`VARIANT_SETTINGS` changed."""
        settings = self.settings_of(name)
        return (self.frozen_doc(name) and settings.get("adore_loss", "lambda") == "lambda"
                and settings.get("index", "flat") == "flat" and self.is_paper_recipe(name))

    def paper_stars(self, among: Collection[str] | None = None) -> list[str]:
        """The STAR systems run as the paper runs it (:meth:`is_paper_recipe`), in recipe order (in ``among`` if
        given); a distilled or GradCache STAR is a row of its own."""
        return [n for n in self.with_trait(is_star, among) if self.is_paper_recipe(n)]

    def paper_star(self, among: Collection[str] | None = None) -> str | None:
        """The first of :meth:`paper_stars`: the STAR the findings and headline figures compare."""
        return next(iter(self.paper_stars(among)), None)

    def adore_index(self, name: str) -> str:
        """The index a frozen-document system trained (and is tested) on."""
        return str(self.settings_of(name).get("index", "flat"))
