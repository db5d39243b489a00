"""What a checkpoint's fingerprint covers: which settings may change across ``--resume`` and which may not.

A checkpoint carries a hash of the settings its run was started with; ``--resume`` continues only where today's
settings hash the same (:func:`fingerprint`). Three rules keep older checkpoints resumable as hardneg grows:

- :data:`RESUMABLE_CHANGES`: settings that do not change the math (the step cap, how often to evaluate or save,
  logging, the device) are not hashed: a run may be resumed with a higher ``max_steps`` or another ``dev_every``.
- :data:`LATER_DEFAULTS`: settings added after checkpoints existed are hashed only when they differ from the
  default they were added with (the behaviour before they existed), so adding a setting never orphans a checkpoint.
- :data:`LOCATIONS`: where a run writes and caches is not what it computes, so a moved run folder resumes.
  Checkpoints written before this rule hashed them; :func:`fingerprints` gives that hash too.
- :func:`moved_paths`: an input that lay inside the folder that moved with the run (an experiment's ADORE stage
  starts from another stage's model) is where the run had it, moved.

:func:`changed` names the settings that differ, for the message that refuses a resume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hardneg.negatives.rules import NegativeRules
from hardneg.train.methods import method_specs

#: settings added after the first checkpoints were written, and their defaults
LATER_DEFAULTS: dict[str, Any] = {"rand_batch_positives": True, "patience": 0, "dev_carve": "queries"}
#: the negative-selection rules (issue 16): no rule active is today's behaviour
LATER_DEFAULTS.update(NegativeRules.defaults())
LATER_DEFAULTS.update({"nprobe": None, "ef_search": None})  # ADORE's search parameters (the index's own if unset)
LATER_DEFAULTS.update({"index_fp16": False})  # ADORE's flat index stored in float16 on the GPU (issue 27)
#: DRhard's behaviours as options (issue 27), off by default: hardneg's behaviour before they existed
LATER_DEFAULTS.update({"lamb_variant": "decoupled", "schedule_epochs": None, "examples_per_query": "each-positive",
                       "mine_query_max_length": None, "mine_doc_max_length": None})
#: distillation (issue 28): off by default
LATER_DEFAULTS.update({"distill": "none", "distill_weight": 1.0, "distill_temperature": 1.0,
                       "distill_teacher_scale": 1.0})
#: ADORE on an index hardneg did not build (issue 29)
LATER_DEFAULTS.update({"index_ids": None, "index_build": "flat", "index_check": 0.5})
#: LoRA adapters (issue 28), off by default
LATER_DEFAULTS.update({"lora_r": 0, "lora_alpha": None, "lora_dropout": 0.1, "lora_targets": None,
                       "lora_save": "merged"})
#: GradCache and --compile (issue 28), off by default
LATER_DEFAULTS.update({"grad_cache": False, "mini_batch": None, "compile": False, "compile_backend": "inductor"})
LATER_DEFAULTS.update({"batch_composition": "random", "tas_clusters": None, "tas_clusters_per_batch": 1})  # TAS

#: settings that may change between a run and its ``--resume`` (they do not change the math so far)
RESUMABLE_CHANGES = {"max_steps", "dev_every", "save_every", "keep_checkpoints", "quiet", "track_every",
                     "track_queries", "device", "patience", "report_to", "dist_timeout"}
RESUMABLE_CHANGES |= {"compile", "compile_backend"}  # --compile: the same computation, traced (issue 28)
#: where a run writes and caches, not what it computes: a run folder moved (or a cache elsewhere) still resumes
LOCATIONS = {"out", "cache_dir"}


def _kept(settings: Mapping[str, Any], *, locations: bool = False) -> dict[str, Any]:
    """The ``settings`` a checkpoint's hash covers (before :data:`LATER_DEFAULTS` at their default leave it): not
    :data:`RESUMABLE_CHANGES`, not :data:`LOCATIONS` (unless ``locations``), not another method's later settings."""
    method = settings["method"]
    data = {k: v for k, v in settings.items() if k not in RESUMABLE_CHANGES and (locations or k not in LOCATIONS)}
    for spec in method_specs():  # another method's later settings (ADORE's): not in this run's hash
        if spec.later_settings and spec.name != method:
            data = {k: v for k, v in data.items() if k not in spec.settings}
    return data


def fingerprint(settings: Mapping[str, Any], *, locations: bool = False) -> str:
    """Hash of the ``settings`` (a TrainConfig's, as a dict) that must not change across ``--resume``: not
    :data:`LOCATIONS` (with ``locations``, the hash earlier versions wrote, which included them)."""
    data = {k: v for k, v in _kept(settings, locations=locations).items()
            if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprints(settings: Mapping[str, Any]) -> tuple[str, str]:
    """The fingerprints a checkpoint of ``settings`` may carry: today's, and the one written before
    :data:`LOCATIONS` left the hash, with these locations (the trainer also accepts it with the locations the run
    that wrote the checkpoint had, from its ``config.json``)."""
    return fingerprint(settings), fingerprint(settings, locations=True)


def changed(settings: Mapping[str, Any], before: Mapping[str, Any]) -> list[str]:
    """``setting: old -> new`` for each of ``settings`` that differs from ``before`` (a run's ``config.json``) and
    that the hash covers, not an input that moved with the run folder (:func:`moved_paths`); a setting ``before``
    lacks counts at its :data:`LATER_DEFAULTS` value."""
    before = {**before, **{k: settings[k] for k in moved_paths(settings, before)}}
    return [f"{k}: {before.get(k, LATER_DEFAULTS.get(k))!r} -> {v!r}" for k, v in _kept(settings).items()
            if before.get(k, LATER_DEFAULTS.get(k)) != v]


def accepted(settings: Mapping[str, Any], before: Mapping[str, Any] | None) -> list[str]:
    """The fingerprints a checkpoint of ``settings`` may carry (``before``: the ``config.json`` of the run that
    wrote it, if readable): :func:`fingerprints`, and with the inputs that moved with the run folder where they
    were, today's hash and the older one computed with that run's own folder and cache."""
    out = list(fingerprints(settings))
    if before and isinstance(before.get("out"), str):
        was = {**settings, **moved_paths(settings, before)}
        out.append(fingerprint(was))
        out.append(fingerprint({**was, "out": before["out"], "cache_dir": before.get("cache_dir")}, locations=True))
    return out


def moved_paths(settings: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, str]:
    """The string settings of ``before`` (a run's ``config.json``) that moved with its run folder: ``{name: before's
    value}`` for each that lay inside the folder holding the old ``out`` and lies at the same place inside the folder
    holding today's (a sibling of the run folder, or inside one). A moved experiment's ADORE stage, whose start
    model is another stage's folder, resumes; an input that moved elsewhere, or stayed, is still a changed setting.
    Nothing counts as moved where either folder is a filesystem root or has one part (``/``, ``runs``, ``.``)."""
    old, new = before.get("out"), settings.get("out")
    if not isinstance(old, str) or not isinstance(new, str):
        return {}
    was, now = Path(old).parent, Path(new).parent
    if was == now or len(was.parts) < 2 or len(now.parts) < 2:  # nothing moved, or a root or "." moved: too wide
        return {}
    moved = {}
    for k, v in before.items():
        today = settings.get(k)
        if k in LOCATIONS or not isinstance(v, str) or not isinstance(today, str) or v == today or not v:
            continue
        if Path(v).is_relative_to(was) and now / Path(v).relative_to(was) == Path(today):
            moved[k] = v
    return moved
