"""A recipe (``configs/<name>.yaml``): its schema, loading and the checks made before any compute.

A recipe names a dataset, a starting encoder and the systems to compare::

    name: scifact
    data: "{data_dir}/scifact"          # {data_dir}: --data-dir, $HARDNEG_DATA_DIR or ../shared/data
    model: minilm                       # the starting encoder (zero-shot system, warm-up model)
    seed: 42
    device: auto                        # auto | cpu | cuda | cuda:N: training, encoding and search
    train: {preset: cpu-demo}           # TrainConfig settings of every trained (non-ADORE) system
    adore: {max_steps: 100, batch_size: 32, lr: 1.0e-5}   # TrainConfig settings of every ADORE system
    eval: {split: test, max_length: 256, k: 1000, measures: [RR@10, R@100, nDCG@10],
           baselines: [rand, inbatch],  # paired t-test references of the report
           pairs: [[star, star-pa]]}    # head-to-head rows: star-pa against star, per stratum
    transfer: ["{data_dir}/nfcorpus:test", "{data_dir}/classic/med"]   # zero-shot transfer sets
    systems:
      - {name: bm25, kind: bm25}
      - {name: zeroshot, kind: zeroshot}
      - {name: star, method: star, track_every: 30}     # any TrainConfig key overrides
      - {name: adore+star, method: adore, base: star}   # ADORE on top of another system's model
      - {name: star2, method: star, base: star}         # starts from (and mines with) star's model
      - {name: inb-p, method: inbatch, train_data: "{data_dir}/msmarco/passage"}   # trained on another dataset
    analysis:
      pairwise: {topk: 200}                              # Table 1 / Fig. 3
      pq: {indexes: [flat, pq48], systems: [zeroshot, adore+zeroshot]}   # Table 3 / 5
      tsne: {before: zeroshot, after: adore+zeroshot}   # Fig. 6
    interpolate: {alphas: [0.0, 0.25, 0.5, 0.75, 1.0], systems: [star]}   # WiSE-FT rows "<system>+wise"

``base`` names the system whose trained model another trained system starts from: ADORE's fixed
document encoder, or the start model of any other method (``static``/``star`` also mine their
negatives with it, as DRhard's STAR mines with its warm-up model). Its training stage depends on
the base's, so a changed base makes it stale. Model selection uses a dev set; a ``dev_split`` equal
to the split the recipe reports (``eval.split``, or a transfer split of the same data) is refused.

``train_data`` trains a system on another dataset (its dev set carved from that one's training queries) and
tests it directly on the recipe's ``data``, as the paper's In-Batch and Rand Neg are trained on MS MARCO
passage and "directly evaluated on the document task" (section 7.3).

``kind: peer-st`` is sentence-transformers' own recipe (:mod:`hardneg.experiment.peer_st`, whose settings it takes);
``base`` starts it from another system's model; its dev set is the ``train:`` section's.

``data`` and ``transfer`` entries may be ``irds:<id>`` (``ir_datasets``). ``data`` is then the dataset without a
split (``irds:beir/scifact``): training reads ``<id>/train``, tests ``<id>/<eval.split>``, a ``dev_split``
``<id>/<dev_split>``; a transfer is a whole id (``irds:beir/nfcorpus/test``) or ``irds:<id>:<split>``. Every
such id is opened (no download: ``ir_datasets.load`` is lazy) when the recipe is checked, so a typo or a missing
``ir_datasets`` fails before any compute.

``interpolate`` (WiSE-FT, Wortsman et al. 2022) merges each listed trained system S (default: every
one) with its start, ``(1 − a)·start + a·S`` (start: the recipe's ``model`` for document-side methods;
for ADORE its base's model, so only the query tower moves), picks ``a`` on S's own dev set and reports
the pick as the row ``S+wise``.

The top level and each system's ``name``/``kind``/``method``/``base`` are typed here, ``eval``,
``analysis`` and ``interpolate`` in :mod:`hardneg.experiment.schema` (pydantic): a wrong type, an unknown key
or a bad value is a :class:`~hardneg.errors.HardnegError` naming the file, the key path
(``systems[2].method``) and what is allowed. The ``train:``/``adore:`` sections and a system's other keys are
TrainConfig settings, checked by :class:`~hardneg.train.config.TrainConfig`; which section a system reads
comes from its method's spec (:class:`~hardneg.train.methods.MethodSpec`), never from its name.

``seeds: [42, 43, 44]`` on a system of a kind in :data:`SEEDED_KINDS` runs it once per seed: the first seed is the
system itself (its own name and stage keys, so a finished run stays cached; the list must start with the seed it
runs with), every other seed ``k`` a replica ``<name>.seed<k>`` with the system's settings plus ``seed: k``
(:meth:`Recipe.replicas`). Replicas get test and transfer stages, no interpolation or analysis; a system whose
``base`` is seeded starts from the base's first seed. The report averages over the seeds (see
:mod:`hardneg.experiment.report`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator

from hardneg.data.formats.irds import open_irds
from hardneg.data.load import irds_split_id, parse_spec
from hardneg.devices import resolve_device
from hardneg.errors import HardnegError
from hardneg.experiment.outside_index import check_outside_indexes
from hardneg.experiment.peer_st import PEER_ST, PeerSettings, peer_dev_config, peer_settings
from hardneg.experiment.schema import (
    AnalysisSettings,
    EvalSettings,
    InterpolateSettings,
    OutsideIndexSettings,
    StrictSection,
    check_name,
    schema_problems,
    substitute,
)
from hardneg.experiment.stages import dataset_tag, seed_name, wise_name
from hardneg.experiment.system import SEEDED_KINDS, START_MODEL, SYSTEM_KINDS, System
from hardneg.train.config import TrainConfig
from hardneg.train.methods import method_specs
from hardneg.train.presets import apply_preset

__all__ = ["DEFAULT_DATA_DIR", "SEEDED_KINDS", "SETTINGS_SECTIONS", "START_MODEL", "SYSTEM_KINDS", "Recipe", "System"]

DEFAULT_DATA_DIR = "../shared/data"
#: TrainConfig keys a recipe may not set: the runner owns them
_RUNNER_KEYS = {"data", "out", "quiet", "cache_dir"}
#: the recipe sections of shared TrainConfig settings: ``train:`` (every trained system), and one per method
#: that freezes the document tower, named after it (``adore:``), for the systems of that method
SETTINGS_SECTIONS = ("train", *(s.name for s in method_specs() if s.frozen_doc))


class Recipe(StrictSection):
    """A validated recipe; build one with :meth:`from_yaml` or :meth:`from_dict`."""

    _input_keys: ClassVar[tuple[str, ...]] = ("name", "data", "model", "systems", "seed", "device", "train", "adore",
                                              "eval", "transfer", "analysis", "interpolate", "out", "cache_dir",
                                              "description", "indexes")

    name: str
    data: str
    model: str = "minilm"
    systems: list[System]
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N: every training, encoding and search stage
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig settings of trained systems
    adore: dict[str, Any] = Field(default_factory=dict)  # TrainConfig settings of ADORE systems
    eval: EvalSettings = Field(default_factory=EvalSettings)
    transfer: list[str] = Field(default_factory=list)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    interpolate: InterpolateSettings | None = None
    indexes: dict[str, OutsideIndexSettings] = Field(default_factory=dict)  # built outside hardneg (outside_index.py)
    out: str | None = None
    cache_dir: str | None = None
    description: str | None = None
    source: str = ""
    #: the folder ``{data_dir}`` stood for (``from_yaml``); stage keys name it so (:meth:`Experiment.portable`)
    data_dir: str | None = None

    @field_validator("train", "adore", "eval", "transfer", "analysis", "interpolate", "indexes", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:  # `train:` with nothing under it
            return [] if info.field_name == "transfer" else {}
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_name(name, "name")

    def system(self, name: str, where: str = "") -> System:
        for s in self.systems:
            if s.name == name:
                return s
        at = f"{where}: " if where else ""
        raise HardnegError(f"{self.source}: {at}no system named {name!r}; systems: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.systems]

    @property
    def dense(self) -> list[System]:
        return [s for s in self.systems if s.kind != "bm25"]

    @property
    def interpolated(self) -> list[System]:
        """The trained systems ``interpolate:`` merges with their start model (none without the key)."""
        if self.interpolate is None:
            return []
        names = self.interpolate.systems
        return [s for s in self.systems if s.kind == "train" and (names is None or s.name in names)
                and (names is not None or s.outside_index is None)]

    @property
    def replicas(self) -> list[System]:
        """The replicas of the seeded systems, in recipe order: for each seed ``k`` after a system's first,
        ``<name>.seed<k>``, the system's settings plus ``seed: k`` (same kind, method, base and data)."""
        out = []
        for s in self.systems:
            for k in (s.seeds or [])[1:]:
                fields = {"name": seed_name(s.name, k), "kind": s.kind, "method": s.method, "base": s.base}
                if s.train_data is not None:
                    fields["train_data"] = s.train_data
                replica = System.model_validate({**fields, **s.settings, "seed": k})
                replica.replica_of = s.name
                out.append(replica)
        return out

    def seed_of(self, system: System) -> int:
        """The seed ``system`` runs with: its ``seed`` setting, its section's, else the recipe's."""
        if system.kind == "train":
            return int(self.train_config(system, Path("/nonexistent")).seed)
        return int(system.settings.get("seed", self.seed))

    def start_of(self, system: System) -> str | None:
        """The system whose model is A of ``system``'s interpolation: its ADORE base (the start model by
        default), the start model for the document-side methods (None: the recipe's ``model``)."""
        if system.frozen_doc and system.base not in (None, START_MODEL):
            return system.base
        return None

    def to_dict(self) -> dict[str, Any]:
        """The recipe as ``recipe.json`` records it (what the report reads)."""
        return {
            "name": self.name, "data": self.data, "model": self.model,
            "systems": [s.to_dict() for s in self.systems], "seed": self.seed, "device": self.device,
            "train": dict(self.train),
            "adore": dict(self.adore), "eval": self.eval.model_dump(), "transfer": list(self.transfer),
            "analysis": self.analysis.model_dump(exclude_unset=True),
            "interpolate": self.interpolate.model_dump() if self.interpolate is not None else None, "out": self.out,
            **({"indexes": {k: v.model_dump() for k, v in self.indexes.items()}} if self.indexes else {}),
            "cache_dir": self.cache_dir, "source": self.source, "data_dir": self.data_dir,
        }

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_yaml(cls, path: str | Path, data_dir: str | None = None, *, device: str | None = None) -> Recipe:
        """The recipe in ``path``; ``device`` (``hardneg experiment --device``) replaces its ``device:``."""
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
        data_dir = str(data_dir or os.environ.get("HARDNEG_DATA_DIR") or DEFAULT_DATA_DIR).rstrip("/")
        recipe = cls.from_dict(substitute(data, {"data_dir": data_dir}), source=str(path), device=device)
        recipe.data_dir = data_dir
        return recipe

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe", *, device: str | None = None) -> Recipe:
        if not isinstance(data, dict):
            raise HardnegError(f"{source}: a recipe is a mapping (name, data, model, systems, ...)")
        if device is not None:  # --device: checked as the flag, then it is the recipe's device (recipe.json)
            resolve_device(device)
            data = {**data, "device": device}
        for key in ("name", "data", "systems"):
            if not data.get(key):
                raise HardnegError(f"{source}: the recipe needs '{key}'")
        try:
            recipe = cls.model_validate(data)  # `source` is not a recipe key: set below
        except ValidationError as exc:
            raise HardnegError(f"{source}: {schema_problems(exc)}") from None
        recipe.source = source
        recipe.check()
        return recipe

    def check(self) -> None:
        """The checks across keys, before any compute: names, bases, training settings, analyses."""
        names = self.names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise HardnegError(f"{self.source}: systems: system names must be unique: {', '.join(dupes)}")
        self._check_device()
        check_outside_indexes(self)
        for i, s in enumerate(self.systems):
            what = f"{s.method.upper()} system" if s.method and s.frozen_doc else "system"
            if s.base is not None and s.base != START_MODEL:
                b = self.system(s.base, f"systems[{i}].base")
                if self.systems.index(b) >= i:
                    raise HardnegError(f"{self.source}: systems[{i}].base: {what} {s.name!r} needs its "
                                       f"base {s.base!r} listed before it")
                if b.kind == "bm25":
                    raise HardnegError(f"{self.source}: systems[{i}].base: {what} {s.name!r} needs a "
                                       "dense base (a trained system or zeroshot), not BM25")
                if "model" in s.settings:
                    raise HardnegError(f"{self.source}: systems[{i}]: system {s.name!r} gives both 'base' and "
                                       "'model'; its start model is its base's: drop one")
            if s.kind == "train":
                bad = sorted(set(s.settings) & _RUNNER_KEYS)
                if bad:
                    raise HardnegError(f"{self.source}: systems[{i}]: system {s.name!r}: {', '.join(bad)} are set "
                                       "by the runner")
                cfg = self.train_config(s, Path("/nonexistent"))
                cfg.validate()
                self._check_dev_split(i, s, cfg)
            if s.kind == PEER_ST:
                self._check_dev_split(i, s, self.peer_config(s))
                if s.base not in (None, START_MODEL) and self.system(s.base).frozen_doc:
                    raise HardnegError(f"{self.source}: systems[{i}].base: {PEER_ST} system {s.name!r} trains one "
                                       f"shared encoder; {s.base!r} trained a query tower of its own (ADORE): "
                                       "start from its base instead")
        self._check_seeds()
        self._check_transfers()
        self._check_irds()
        self._check_interpolate()  # before eval.pairs, which may name its "<system>+wise" rows
        for key in ("baselines", "transfer_systems"):
            for j, s in enumerate(getattr(self.eval, key)):
                self.system(s, f"eval.{key}[{j}]")
        wise_rows = {wise_name(s.name) for s in self.interpolated}
        for j, pair in enumerate(self.eval.pairs):
            for k, s in enumerate(pair):
                if s not in wise_rows:  # an interpolation's "<system>+wise" row is a row of the report too
                    self.system(s, f"eval.pairs[{j}][{k}]")
            if pair[0] == pair[1]:
                raise HardnegError(f"{self.source}: eval.pairs[{j}]: {pair[0]!r} against itself; name two systems")
        pq = self.analysis.pq
        for j, s in enumerate((pq.systems or []) if pq else []):
            if self.system(s, f"analysis.pq.systems[{j}]").kind == "bm25":
                raise HardnegError(f"{self.source}: analysis.pq.systems[{j}]: {s!r} is not a dense system")
        tsne = self.analysis.tsne
        for key in ("before", "after"):
            if tsne is not None and getattr(tsne, key) is not None:
                self.system(getattr(tsne, key), f"analysis.tsne.{key}")

    def _check_seeds(self) -> None:
        """``seeds`` starts with the seed the system runs with; no replica name clashes with a system's."""
        for i, s in enumerate(self.systems):
            if not s.seeds:
                continue
            seed = self.seed_of(s)
            if s.seeds[0] != seed:
                raise HardnegError(f"{self.source}: systems[{i}].seeds: the first seed is system {s.name!r} itself, "
                                   f"which runs with seed {seed}; start the list with {seed} (or set its 'seed')")
        for replica in self.replicas:
            if replica.name in self.names:
                i = self.names.index(str(replica.replica_of))
                raise HardnegError(f"{self.source}: systems[{i}].seeds: the replica {replica.name!r} clashes with "
                                   "a system of that name: rename the system")

    def _check_interpolate(self) -> None:
        """``interpolate.systems`` name trained systems; their ``<name>+wise`` rows clash with no system."""
        if self.interpolate is None:
            return
        for j, name in enumerate(self.interpolate.systems or []):
            s = self.system(name, f"interpolate.systems[{j}]")
            if s.kind != "train":
                raise HardnegError(f"{self.source}: interpolate.systems[{j}]: {name!r} is a {s.kind} system; "
                                   "interpolation merges a trained system with its start model")
        if not self.interpolated:
            raise HardnegError(f"{self.source}: interpolate: the recipe has no trained system to interpolate")
        for s in self.interpolated:
            if wise_name(s.name) in self.names:
                raise HardnegError(f"{self.source}: interpolate: the row {wise_name(s.name)!r} (system {s.name!r} "
                                   "interpolated) clashes with a system of that name: rename the system")

    def _check_device(self) -> None:
        """``device:`` names a device this machine has (resolved now, so a missing GPU fails before compute)."""
        try:
            resolve_device(self.device)
        except HardnegError as exc:
            raise HardnegError(f"{self.source}: device: {exc}") from None
        for section in SETTINGS_SECTIONS:
            if "device" in getattr(self, section):
                raise HardnegError(f"{self.source}: {section}.device: the device is one recipe key for every "
                                   "stage: give it at the top level (device: ...)")
        for i, s in enumerate(self.systems):
            if "device" in s.settings:
                raise HardnegError(f"{self.source}: systems[{i}].device: the device is one recipe key for every "
                                   "stage: give it at the top level (device: ...)")

    def _check_transfers(self) -> None:
        """Each transfer set names its own stages (``transfer-<system>-<tag>``): two with one tag would clash."""
        seen: dict[str, int] = {}
        for j, spec in enumerate(self.transfer):
            tag = dataset_tag(spec)
            if tag in seen:
                raise HardnegError(f"{self.source}: transfer[{j}]: {spec!r} and transfer[{seen[tag]}] "
                                   f"{self.transfer[seen[tag]]!r} both name their stages transfer-<system>-{tag}; "
                                   "give each set a distinct folder name (or irds:<id>:<split>, e.g. "
                                   "irds:beir/nfcorpus:test)")
            seen[tag] = j

    def _irds_specs(self) -> list[tuple[str, str]]:
        """``(key path, spec)`` of every ``irds:`` dataset the runner will load."""
        out: list[tuple[str, str]] = []
        data_path, _ = parse_spec(self.data)
        if data_path.startswith("irds:"):
            out.append(("data", f"{data_path}:{self.eval.split}"))
        for i, s in enumerate(self.systems):
            if s.kind != "train":
                continue
            key = f"systems[{i}].train_data" if s.train_data is not None else "data"
            cfg = self.train_config(s, Path("/nonexistent"))
            path, split = parse_spec(cfg.data)
            if path.startswith("irds:"):
                out.append((key, f"{path}:{split or 'train'}"))
                if cfg.dev_split:
                    out.append((key, f"{path}:{cfg.dev_split}"))
        out += [(f"transfer[{j}]", spec) for j, spec in enumerate(self.transfer) if spec.strip().startswith("irds:")]
        return out

    def _check_irds(self) -> None:
        """Open every ``irds:`` id the recipe needs (lazy: nothing is downloaded), so a wrong one fails now."""
        checked: set[str] = set()
        for key, spec in self._irds_specs():
            path, split = parse_spec(spec)
            irds_id = irds_split_id(path[len("irds:"):], split)
            if irds_id in checked:
                continue
            checked.add(irds_id)
            try:
                open_irds(irds_id)
            except HardnegError as exc:
                hint = (f" (data is the dataset without a split: the runner loads {path}/<split> for training"
                        ", eval.split and any dev_split)") if key == "data" else ""
                raise HardnegError(f"{self.source}: {key}: {exc}{hint}") from None

    def _reported_split(self, spec: str, data: str | None = None) -> str | None:
        """The split of ``data`` (default the recipe's own) that ``spec`` names, ``None`` for another dataset."""
        data_path, _ = parse_spec(data or self.data)
        path, split = parse_spec(spec)
        if path.startswith("irds:") and data_path.startswith("irds:"):
            full, base = irds_split_id(path[len("irds:"):], split), data_path[len("irds:"):].strip("/")
            return full[len(base) + 1:] if full.startswith(f"{base}/") else None
        return split if split and Path(path.rstrip("/")) == Path(data_path.rstrip("/")) else None

    def _check_dev_split(self, i: int, system: System, cfg: TrainConfig) -> None:
        """Model selection must not look at the split the report is measured on."""
        if cfg.dev_split is None:
            return
        # the splits of the data it trains on that the report reads (train_data: another dataset's transfers)
        reported = {self.eval.split: "eval.split"} if cfg.data == self.data else {}
        for j, spec in enumerate(self.transfer):
            split = self._reported_split(spec, cfg.data)
            if split:
                reported.setdefault(split, f"transfer[{j}]")
        if cfg.dev_split not in reported:
            return
        section = system.section
        key = (f"systems[{i}].dev_split" if "dev_split" in system.settings
               else f"{section}.dev_split" if "dev_split" in getattr(self, section) else f"{section}.preset")
        raise HardnegError(f"{self.source}: {key}: system {system.name!r} selects on the split it reports "
                           f"({cfg.dev_split!r} is {reported[cfg.dev_split]}); carve the dev set from the training "
                           "queries instead (drop dev_split; dev_fraction sets its share) or name another split")

    def train_config(self, system: System, out: Path, model: str | None = None,
                     index_dir: Path | None = None) -> TrainConfig:
        """The :class:`TrainConfig` of a trained system (its model path filled in by the runner; for a system
        whose ``index`` names an ``indexes:`` entry, that index's folder ``index_dir``, or ``flat`` when the
        recipe is only checked and the folder does not exist yet)."""
        common = dict(getattr(self, system.section))
        preset = common.pop("preset", None)
        settings = {**common, **system.settings}
        preset = settings.pop("preset", preset)
        bad = sorted(set(settings) & _RUNNER_KEYS)
        if bad:
            raise HardnegError(f"{self.source}: {', '.join(bad)} are set by the runner, not the recipe")
        try:
            cfg = TrainConfig.from_dict({"seed": self.seed, **settings})
        except (TypeError, ValueError) as exc:  # a pydantic ValidationError is a ValueError
            raise HardnegError(f"{self.source}: system {system.name!r}: {exc}") from exc
        except HardnegError as exc:
            raise HardnegError(f"{self.source}: system {system.name!r}: {exc}") from exc
        cfg = apply_preset(cfg, preset, explicit=set(settings) | {"seed"})
        cfg.method = str(system.method)
        cfg.data = system.train_data or self.data
        cfg.out = str(out)
        if model is not None:
            cfg.model = model
        elif "model" not in settings:
            cfg.model = self.model
        cfg.cache_dir = self.cache_dir
        cfg.device = self.device  # one device for the whole recipe (the top-level ``device:``)
        if system.outside_index is not None:
            cfg.index = str(index_dir) if index_dir is not None else "flat"
        return cfg

    # ------------------------------------------------------------------ peer-st systems
    def peer_settings(self, system: System) -> PeerSettings:
        """A ``peer-st`` system's settings (``seed``: the recipe's by default); a bad one names ``systems[i].key``."""
        origin = self.system(system.replica_of) if system.replica_of else system  # a seed replica: its system's
        where = f"{self.source}: systems[{self.systems.index(origin)}]"
        return peer_settings(system.settings, self.seed, where)

    def peer_config(self, system: System) -> TrainConfig:
        """A ``peer-st`` system's dev set and dev measurement: the ``train:`` section's, with its seed."""
        return peer_dev_config(self.train, self.peer_settings(system).seed, self.data, self.cache_dir, self.device,
                               f"{self.source}: train")
