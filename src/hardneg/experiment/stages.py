"""The stages of an experiment: their names, their keys, and what one stage is.

Stage folders live under ``OUT/stages/<stage>/``: ``index-<name>`` (an ``indexes:`` entry), ``train-<system>``,
``test-<system>``, ``transfer-<system>-<set>``, ``pairwise-<system>`` and ``pq-<system>`` (one system's
numbers for the analyses, computed right after its training), ``analysis-pairwise`` and ``analysis-pq`` (those
numbers gathered), ``analysis-tsne`` and ``report``; with ``interpolate:`` also ``wise-<system>-a<alpha>``
(a merged model and its dev metrics), ``wise-<system>`` (the dev pick, as the model of the
``<system>+wise`` row) and ``wise-<system>-curve`` (test and transfer of every alpha, for the figure only).
A stage's *key* hashes its settings and the keys of the stages it depends on (:func:`stage_key`), with the
experiment folder and the data folder named ``{out}`` and ``{data_dir}`` (:func:`portable`): an experiment
folder moved or copied elsewhere (scratch to home, one machine to another), or data reached by another path,
keeps its finished stages.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hardneg.data.load import parse_spec
from hardneg.errors import HardnegError

PAIRWISE = "analysis-pairwise"
PQ = "analysis-pq"
TSNE = "analysis-tsne"
REPORT = "report"
#: the experiment folder's list of the recipe's stages, in order (written by every run; the report counts what is left)
PLAN_FILE = "plan.json"


def train_stage(system: str) -> str:
    return f"train-{system}"


def index_stage(name: str) -> str:
    """The stage building the recipe's ``indexes:`` entry ``name``."""
    return f"index-{name}"


def test_stage(system: str) -> str:
    return f"test-{system}"


def transfer_stage(system: str, tag: str) -> str:
    """The transfer stage of ``system`` on the set whose :func:`dataset_tag` is ``tag``."""
    return f"transfer-{system}-{tag}"


def pairwise_system(system: str) -> str:
    """The stage computing ``system``'s pairwise errors (``analysis-pairwise`` gathers them)."""
    return f"pairwise-{system}"


def pq_system(system: str) -> str:
    """The stage testing ``system`` on each index kind of ``analysis.pq`` (``analysis-pq`` gathers them)."""
    return f"pq-{system}"


def pq_per_query_file(kind: str) -> str:
    """The file of a ``pq-<system>`` stage with the system's per-query test scores on index ``kind`` (a Faiss
    factory string's ``:`` and ``,`` become ``_``: records are committed, and checked out on any system)."""
    return "per_query-" + re.sub(r"[^\w.+-]", "_", kind) + ".json"


def seed_name(system: str, seed: int) -> str:
    """The replica of seeded ``system`` that runs with ``seed`` (every seed of its ``seeds`` after the first)."""
    return f"{system}.seed{seed}"


def wise_name(system: str) -> str:
    """The report row of ``system``'s dev-picked interpolation with the start model."""
    return f"{system}+wise"


def wise_alpha_stage(system: str, alpha: float) -> str:
    return f"wise-{system}-a{alpha:g}"


def wise_stage(system: str) -> str:
    return f"wise-{system}"


def wise_curve_stage(system: str) -> str:
    return f"wise-{system}-curve"


def dataset_tag(spec: str) -> str:
    """A short, file-safe name for a dataset spec: ``.../nfcorpus:test`` → ``nfcorpus-test``,
    ``irds:beir/nfcorpus/test`` → ``beir_nfcorpus_test``."""
    path, split = parse_spec(spec)
    if path.startswith("irds:"):  # the whole id: irds:beir/nfcorpus/test -> beir_nfcorpus_test
        name = path[len("irds:"):].strip("/")
    else:
        name = Path(path.rstrip("/")).name or path
    return re.sub(r"[^\w.+-]", "_", f"{name}-{split}" if split else name)


def portable(value: Any, folders: Mapping[str, str]) -> Any:
    """``value`` (a stage's settings) with every string that starts with one of ``folders``' paths (name -> path:
    ``out``, ``data_dir``) rewritten to start with ``{name}`` instead: ``/scratch/x/stages/train-a/model`` →
    ``{out}/stages/train-a/model``, ``../shared/data/scifact:test`` → ``{data_dir}/scifact:test``. The longest
    path wins (an experiment folder inside the data folder is ``{out}``)."""
    if isinstance(value, str):
        for name, path in sorted(folders.items(), key=lambda kv: -len(kv[1])):
            if path and (value == path or value.startswith((f"{path}/", f"{path}:"))):
                return "{" + name + "}" + value[len(path):]
        return value
    if isinstance(value, list | tuple):
        return [portable(v, folders) for v in value]
    if isinstance(value, dict):
        return {k: portable(v, folders) for k, v in value.items()}
    return value


def stage_key(settings: Any, deps: list[str]) -> str:
    """The hash of a stage's settings and of its dependencies' keys."""
    payload = json.dumps({"settings": settings, "deps": deps}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Stage:
    name: str
    settings: dict[str, Any]
    deps: list[str]
    fn: Callable[[Path], dict[str, Any]]
    always: bool = False  # run every time (the report: cheap, and it reads the other stages)
    #: it reads only its dependencies' small files (what ``--records`` keeps), not their models: the report, the
    #: analyses that gather per-system numbers (a dependency taken from records need not run again for it)
    reads_records: bool = False
    #: files in the stage's subfolders its record keeps too (globs relative to the stage folder, e.g. the WiSE
    #: curve's ``a*/per_query.json``): a record keeps only the files directly in the folder otherwise
    record_also: tuple[str, ...] = ()
    key: str = ""
    #: the key over the settings as written, absolute paths included: how folders made before keys were
    #: portable were keyed (accepted as the same settings where they lie)
    legacy_key: str = ""


def select_stages(stages: Mapping[str, Stage], only: list[str]) -> list[str]:
    """The stages matching any of the names or globs in ``only`` (``fnmatch``: a '+' in a name is literal)
    and every stage they depend on, in ``stages``' order (what ``hardneg experiment --only`` runs)."""
    selected: set[str] = set()

    def visit(name: str) -> None:
        if name in selected:
            return
        selected.add(name)
        for dep in stages[name].deps:
            visit(dep)

    for pattern in only:
        matches = [n for n in stages if fnmatch.fnmatchcase(n, pattern)]
        if not matches:
            raise HardnegError(f"no stage matches {pattern!r}; stages: {', '.join(stages)}")
        for m in matches:
            visit(m)
    return [n for n in stages if n in selected]


def run_order(stages: Mapping[str, Stage], wanted: list[str], finished: Collection[str] = ()) -> list[str]:
    """The order ``hardneg experiment`` runs ``wanted`` in: the ``finished`` ones first (done already: they are
    only read back), then dependencies first, and of the stages ready to run the first in ``stages``' order that is
    not a training stage, else a training stage: the one that builds on the model trained most recently in this
    run (ADORE on a base right after the base), else on a model finished before this run (a job resumed after
    the base finished), else the first in ``stages``' order. So a system's test and
    transfer stages run right after its training, and the systems built on a model right after it, before the
    next system trains: a long grid stopped part-way leaves finished rows behind, not trained models without a
    test, and no model whose dependants are still to run (with records, a job whose disk is lost trains such a
    model again). The report stays last. A finished stage is only read back, so it goes first
    even in the odd case of a dependency that is not finished (a training folder deleted after its test ran)."""
    first = [n for n in wanted if n in finished and n != REPORT]
    left = [n for n in wanted if n not in finished and n != REPORT]
    # what is not asked for (ready or not) is not waited on; what is finished is ready for its dependents
    done: set[str] = {n for n in stages if n not in wanted} | set(first)
    order: list[str] = []
    while left:
        ready = [n for n in left if all(d in done for d in stages[n].deps)]
        if not ready:  # unreachable for a plan built in dependency order; never loop forever
            raise HardnegError(f"stages with unmet dependencies: {', '.join(left)}")
        pick = next((n for n in ready if not n.startswith(train_stage(""))), None)
        if pick is None:  # only training stages are ready: the one on the latest model, else the first
            # a model trained in this run ranks by when; one finished before it ranks below those, above none
            ran = {n: i for i, n in enumerate(order) if n.startswith(train_stage(""))}
            ran.update({n: -1 for n in first if n.startswith(train_stage(""))})
            pick = max(ready, key=lambda n: (max((ran.get(d, -2) for d in stages[n].deps), default=-2),
                                             -ready.index(n)))
        order.append(pick)
        done.add(pick)
        left.remove(pick)
    return first + order + [REPORT] * (REPORT in wanted)


#: CUDA failures after which the process's device is unusable (a device-side assert, an illegal address, an NCCL
#: error): torch >= 2.8 raises ``torch.AcceleratorError``, older versions a RuntimeError saying so
_DEAD_DEVICE = ("CUDA error", "device-side assert", "NCCL error", "cuDNN error", "CUBLAS_STATUS")


def stops_the_run(exc: BaseException) -> bool:
    """An error after which ``--keep-going`` must stop anyway, because every later stage would fail the same way
    and be recorded as failed for a reason not its own: a CUDA error that leaves the device unusable (out of
    memory is not one: the next, smaller stage may fit) or a full disk."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    accelerator = getattr(torch, "AcceleratorError", None)
    if accelerator is not None and isinstance(exc, accelerator):
        return True
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _DEAD_DEVICE):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
