"""Experiments: a recipe (``configs/<name>.yaml``), its cached and resumable stages, and its report.

* :mod:`.recipe` (with :mod:`.schema`): the recipe's schema and checks (:class:`Recipe`, :class:`System`);
* :mod:`.stages`: stage names and keys (:class:`Stage`, :func:`dataset_tag`);
* :mod:`.runner`: running the stages with caching and resume (:class:`Experiment`);
* :mod:`.report`: ``report.md``, its figures and tables from the finished stages (:func:`write_report`,
  :func:`main_table`), from :mod:`.results` (what the folder holds, the systems' roles), :mod:`.context`
  (what a section reads and writes), the registered :mod:`.sections`, :mod:`.findings`, and the helpers
  :mod:`.stats`, :mod:`.tables` and :mod:`.figures`.
"""

from hardneg.experiment.recipe import DEFAULT_DATA_DIR, SYSTEM_KINDS, Recipe, System
from hardneg.experiment.report import main_table, write_report
from hardneg.experiment.results import ExperimentResults
from hardneg.experiment.runner import Experiment
from hardneg.experiment.schema import DEFAULT_EVAL
from hardneg.experiment.stages import Stage, dataset_tag

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_EVAL",
    "SYSTEM_KINDS",
    "Experiment",
    "ExperimentResults",
    "Recipe",
    "Stage",
    "System",
    "dataset_tag",
    "main_table",
    "write_report",
]
