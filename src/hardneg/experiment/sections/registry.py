"""The registry of report sections: :func:`section` registers a function under a name and a place in the
report; :func:`registered` lists them in report order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hardneg.experiment.context import ReportContext


@dataclass
class Section:
    """One part of the report: its markdown ("" when there is nothing to show) and the facts findings use."""

    markdown: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


SectionFn = Callable[[ReportContext], Section]


@dataclass(frozen=True)
class Registered:
    """A registered section: its ``name``, its place in the report (``order``, ascending) and its function."""

    name: str
    order: int
    fn: SectionFn


_SECTIONS: dict[str, Registered] = {}


def section(name: str, order: int) -> Callable[[SectionFn], SectionFn]:
    """Register the decorated function as the report section ``name``, placed by ``order`` (ascending)."""

    def register(fn: SectionFn) -> SectionFn:
        clash = next((s for s in _SECTIONS.values() if s.name == name or s.order == order), None)
        if clash is not None:
            raise ValueError(f"report section {name!r} (order {order}) clashes with {clash.name!r} "
                             f"(order {clash.order}): give each section its own name and order")
        _SECTIONS[name] = Registered(name, order, fn)
        return fn

    return register


def registered() -> list[Registered]:
    """Every registered section, in report order."""
    return sorted(_SECTIONS.values(), key=lambda s: s.order)


def section_fn(name: str) -> SectionFn:
    """The function of the registered section ``name``."""
    return _SECTIONS[name].fn
