"""The typed parts of a recipe (pydantic) and how their problems are told: the sections' schemas
(``eval:``, ``analysis:``, ``interpolate:``), the names check, ``{data_dir}`` substitution and the
``key.path: what is wrong`` messages of :func:`schema_problems`.

:class:`StrictSection` is a mapping with a fixed set of keys: an unknown key is an error with a
"did you mean". The recipe itself and its systems are in :mod:`hardneg.experiment.recipe`.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

DEFAULT_EVAL: dict[str, Any] = {"split": "test", "max_length": 256, "query_max_length": 64, "k": 1000,
                                "measures": ["RR@10", "R@100", "nDCG@10"], "baselines": [],
                                "transfer_systems": [], "pairs": []}
_NAME = re.compile(r"[\w.+-]+")


def check_name(name: str, what: str) -> str:
    """A recipe or system name: it names folders, so letters, digits, '.', '+', '-', '_' only."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} must be letters, digits, '.', '+', '-' or '_'")
    return name


class StrictSection(BaseModel):
    """A mapping with a fixed set of keys: an unknown one is an error with a "did you mean"."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, protected_namespaces=())
    _input_keys: ClassVar[tuple[str, ...] | None] = None  # the keys a recipe file may give (default: the fields)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = cls._input_keys or tuple(cls.model_fields)
            unknown = [k for k in data if k not in allowed]
            if unknown:
                raise PydanticCustomError("unknown_key", "{keys}; allowed: {allowed}",
                                          {"keys": ", ".join(_with_suggestion(str(k), allowed) for k in unknown),
                                           "allowed": ", ".join(allowed)})
        return data


def _with_suggestion(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)


class EvalSettings(StrictSection):
    """``eval:``: the test retrieval and the report's references."""

    split: str = DEFAULT_EVAL["split"]
    max_length: int = DEFAULT_EVAL["max_length"]
    query_max_length: int = DEFAULT_EVAL["query_max_length"]
    k: int = DEFAULT_EVAL["k"]
    measures: list[str] = Field(default_factory=lambda: list(DEFAULT_EVAL["measures"]))
    baselines: list[str] = Field(default_factory=list)  # paired t-test references of the report
    transfer_systems: list[str] = Field(default_factory=list)  # empty: every system is transferred
    pairs: list[tuple[str, str]] = Field(default_factory=list)  # [reference, system]: the report's head-to-head rows


class PairwiseSettings(StrictSection):
    topk: int = 200


class PQSettings(StrictSection):
    indexes: list[str] | None = None  # empty: flat, pq48
    systems: list[str] | None = None  # empty: every dense system


class TsneSettings(StrictSection):
    before: str | None = None  # default: the start model's system name, "zeroshot"
    after: str | None = None  # default: the first ADORE system
    top: int = 30
    query: str | None = None


class InterpolateSettings(StrictSection):
    """``interpolate:``: WiSE-FT weights and the systems merged with their start model."""

    alphas: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    systems: list[str] | None = None  # empty: every trained system

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, alphas: list[float]) -> list[float]:
        if len(alphas) < 2:
            raise ValueError("give at least two weights, e.g. [0.0, 0.5, 1.0]")
        bad = [a for a in alphas if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"every weight must be in [0, 1] (0: the start model, 1: the trained one), not {bad}")
        if len({f"{a:g}" for a in alphas}) != len(alphas):
            raise ValueError(f"the weights must be distinct: {alphas}")
        return [float(a) for a in alphas]


class OutsideIndexSettings(StrictSection):
    """An ``indexes:`` entry: an index built the way other tools build one (see
    :mod:`hardneg.experiment.outside_index`)."""

    model: str | None = None  # the encoder (default: the recipe's model), loaded by sentence-transformers
    factory: str = "Flat"  # a faiss.index_factory string: Flat, HNSW32, IVF64,PQ48, ...
    metric: str = "ip"  # ip (inner product) or l2
    max_seq_length: int | None = None  # default: eval.max_length, as hardneg's own test indexes
    batch_size: int = 64

    @field_validator("metric")
    @classmethod
    def _metric(cls, metric: str) -> str:
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be ip (inner product) or l2, not {metric!r}")
        return metric


class AnalysisSettings(StrictSection):
    """``analysis:``: which analyses run (a key given, even empty, turns one on)."""

    pairwise: PairwiseSettings | None = None
    pq: PQSettings | None = None
    tsne: TsneSettings | None = None

    def enabled(self, name: str) -> bool:
        return name in self.model_fields_set


def schema_problems(exc: ValidationError, prefix: str = "") -> str:
    """Every problem pydantic found, as ``key.path: what is wrong (what is allowed)``, one per line; ``prefix``:
    the key path of the validated section (``systems[3]``)."""
    problems = [_problem(err, prefix) for err in exc.errors(include_url=False)]
    return problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(problems)


def _problem(err: Any, prefix: str = "") -> str:
    loc = tuple(err["loc"])
    path = key_path(loc)
    if prefix:
        path = f"{prefix}.{path}" if path else prefix
    kind = err["type"]
    if kind == "unknown_key":
        return f"unknown recipe key {err['msg']}" if not loc else f"{path}: unknown key {err['msg']}"
    if kind == "missing":
        parent = key_path(loc[:-1])
        return f"the recipe needs {loc[-1]!r}" if not parent else f"{parent}: needs {loc[-1]!r}"
    if kind == "value_error":
        return f"{path}: {err['ctx']['error']}"
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    msg = err["msg"][:1].lower() + err["msg"][1:]
    return f"{path or 'recipe'}: {msg}; got {got}"


def key_path(loc: tuple[Any, ...]) -> str:
    """``("systems", 2, "method")`` → ``systems[2].method``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def substitute(value: Any, names: dict[str, str]) -> Any:
    """``value`` (a recipe's parsed YAML) with ``{data_dir}`` replaced in every string."""
    if isinstance(value, str):
        return value.replace("{data_dir}", names["data_dir"])
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, names) for k, v in value.items()}
    return value
