"""One compared system of a recipe (:class:`System`): its ``name``, ``kind`` or ``method``, ``base``,
``train_data``, ``seeds`` and TrainConfig overrides, and what its method is
(:class:`~hardneg.train.methods.MethodSpec`). The recipe around it is :mod:`hardneg.experiment.recipe`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from hardneg.experiment.outside_index import INDEX_REF
from hardneg.experiment.peer_st import PEER_ST
from hardneg.experiment.schema import check_name
from hardneg.train.methods import MethodSpec, method_names, method_spec

__all__ = ["SEEDED_KINDS", "START_MODEL", "SYSTEM_KINDS", "System", "settings_section"]

SYSTEM_KINDS = ("bm25", "zeroshot", "train", PEER_ST)
#: the system kinds that take a ``seed`` setting, and so a ``seeds:`` list (one run per seed)
SEEDED_KINDS = ("train", PEER_ST)
#: the ``base`` of an ADORE system that means the recipe's starting encoder
START_MODEL = "zeroshot"


def settings_section(spec: MethodSpec | None) -> str:
    """The recipe section whose settings a system of method ``spec`` shares (one of
    :data:`~hardneg.experiment.recipe.SETTINGS_SECTIONS`): a frozen-document method's own (``adore:``),
    else ``train:``."""
    return spec.name if spec is not None and spec.frozen_doc else "train"


class System(BaseModel):
    """One compared system: ``name``, ``kind`` or ``method``, ``base`` (ADORE) and TrainConfig overrides."""

    model_config = ConfigDict(coerce_numbers_to_str=True, protected_namespaces=())

    name: str
    method: str | None = None
    kind: str = Field(None, validate_default=True)  # bm25 | zeroshot | train (default with a method)
    base: str | None = None  # the system whose model this one starts from (ADORE: its fixed document encoder)
    train_data: str | None = None  # the dataset it trains on, when not the recipe's ``data``
    seeds: list[int] | None = None  # one run per seed: the first is this system, the others its replicas
    settings: dict[str, Any] = Field(default_factory=dict)  # TrainConfig overrides
    #: the seeded system a replica ``<name>.seed<k>`` repeats (set by :meth:`Recipe.replicas`, never a recipe key)
    replica_of: str | None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _split_settings(cls, data: Any) -> Any:
        if isinstance(data, System):
            return data
        if not isinstance(data, dict) or "name" not in data:
            raise PydanticCustomError("system", "must be a mapping with a 'name'")
        fields = {k: data[k] for k in ("name", "method", "kind", "base", "train_data", "seeds") if k in data}
        return {**fields, "settings": {k: v for k, v in data.items() if k not in fields}}

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_name(name, "system name")

    @field_validator("method")
    @classmethod
    def _method(cls, method: str | None) -> str | None:
        if method is not None and method not in method_names():
            raise ValueError(f"method must be one of {', '.join(method_names())}, not {method!r}")
        return method

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, kind: Any, info: ValidationInfo) -> str:
        if "method" not in info.data:  # the method itself was wrong: that is the problem to report
            return kind if kind in SYSTEM_KINDS else "train"
        method = info.data["method"]
        kind = "train" if kind is None and method else kind
        if kind not in SYSTEM_KINDS:
            raise ValueError(f"kind must be one of {', '.join(SYSTEM_KINDS)} (or give a training 'method'),"
                             f" not {kind!r}")
        if kind == "train" and not method:
            raise ValueError("a trained system needs its 'method'")
        if kind == PEER_ST and method:
            raise ValueError(f"a {PEER_ST} system trains with sentence-transformers' recipe, not a 'method': drop one")
        return kind

    @field_validator("base")
    @classmethod
    def _base(cls, base: str | None, info: ValidationInfo) -> str | None:
        if base is not None and info.data.get("kind", "train") not in ("train", PEER_ST):
            raise ValueError(f"'base' is for ADORE systems and the other trained systems (a 'method' or {PEER_ST}), "
                             f"not a {info.data['kind']} system")
        return base

    @field_validator("train_data")
    @classmethod
    def _train_data(cls, train_data: str | None, info: ValidationInfo) -> str | None:
        if train_data is not None and info.data.get("kind", "train") != "train":
            raise ValueError(f"'train_data' is for trained systems (a 'method'), not a {info.data['kind']} system")
        if train_data is not None and not train_data.strip():
            raise ValueError("'train_data' names a dataset (path or irds:<id>); drop the key to train on 'data'")
        return train_data

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int] | None, info: ValidationInfo) -> list[int] | None:
        kind = info.data.get("kind", "train")
        if seeds is not None and kind not in SEEDED_KINDS:
            raise ValueError(f"a {kind} system has no seed to vary (it trains nothing); 'seeds' is for "
                             f"{', '.join(SEEDED_KINDS)} systems: drop it")
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError(f"give distinct seeds, one run each, e.g. [42, 43, 44], not {seeds}")
        return seeds

    @field_validator("settings")
    @classmethod
    def _settings(cls, settings: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        kind = info.data.get("kind")
        if kind is not None and kind not in ("train", PEER_ST) and settings:
            raise ValueError(f"a {kind} system takes no settings: {', '.join(settings)}")
        return settings

    @property
    def spec(self) -> MethodSpec | None:
        """What the system's training method is and needs (None for a BM25 or zero-shot system)."""
        return method_spec(self.method) if self.method else None

    @property
    def frozen_doc(self) -> bool:
        """Its method trains the query tower only, against a fixed document index (ADORE)."""
        return self.spec is not None and self.spec.frozen_doc

    @property
    def section(self) -> str:
        """The recipe section of its shared TrainConfig settings (see :func:`settings_section`)."""
        return settings_section(self.spec)

    @property
    def index(self) -> str:
        """The index the system is tested on: a frozen-document method's own training index, flat otherwise."""
        return str(self.settings.get("index", "flat")) if self.frozen_doc else "flat"

    @property
    def outside_index(self) -> str | None:
        """The ``indexes:`` entry its ``index`` names (``"@<name>"``), if it trains against one."""
        index = str(self.settings.get("index", ""))
        return index[len(INDEX_REF):] if index.startswith(INDEX_REF) else None

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "kind": self.kind, "method": self.method, "base": self.base,
               "settings": dict(self.settings)}
        out = {**out, "train_data": self.train_data} if self.train_data is not None else out
        return {**out, "seeds": list(self.seeds)} if self.seeds else out
