"""The sections of ``report.md``: functions registered with :func:`section` (a name and a place in the report),
each taking a :class:`~hardneg.experiment.context.ReportContext` and returning a :class:`Section` (its
markdown and the facts the findings read). Importing this package registers every section; in report order:

* :mod:`.effectiveness`: Table 2 (10), generalisation (20), the head-to-head ``eval.pairs`` (30);
* :mod:`.peer`: each hardneg system against sentence-transformers' recipe (35);
* :mod:`.interpolation`: WiSE-FT curves (40);
* :mod:`.per_query`: per-query Δ against the random-negative reference (50);
* :mod:`.errors`: Table 1 / Fig. 3, pairwise errors (60);
* :mod:`.training`: Fig. 4 (70), training curves (90), Fig. 5 (100), Table 4 (110);
* :mod:`.negatives`: what the negative-selection rules removed (80);
* :mod:`.indexes`: Tables 3 / 5, compressed indexes (120);
* :mod:`.ranks`: Fig. 6, best ranks and t-SNE (130).

To add a section: write ``@section("name", order) def name(ctx) -> Section`` in the module of its analysis
(or a new one imported here); it appears in every report at its place.
"""

from hardneg.experiment.sections import (  # noqa: F401  (each module registers its sections)
    effectiveness,
    errors,
    indexes,
    interpolation,
    negatives,
    peer,
    per_query,
    ranks,
    training,
)
from hardneg.experiment.sections.registry import Registered, Section, registered, section, section_fn

__all__ = ["Registered", "Section", "registered", "section", "section_fn"]
