"""What a model card is made from, read from files already on disk.

* the training run folder beside the model (``OUT/model`` → ``OUT/config.json``, ``summary.json``,
  ``dev_metrics.json``, ``train_log.jsonl``); a start model that is itself a hardneg run
  (ADORE on STAR) adds its own run, so the lineage reaches the hub model it began from;
* when the run is an experiment's training stage (``EXP/stages/train-<system>``), that system's
  ``test-<system>`` and ``transfer-<system>-*`` metrics (``metrics.json`` and ``stage.json``);
* any ``--eval`` folder written by ``hardneg retrieve`` / ``search`` (``metrics.json``, ``settings.json``).

Datasets are named as the card names them, with the MTEB task and Hugging Face dataset id where the
dataset is a BEIR/MTEB one, so the card can say which evaluations are in-domain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardneg.data.load import parse_spec
from hardneg.errors import HardnegError
from hardneg.io import read_json

#: BEIR / MTEB dataset folder names → (MTEB task name, Hugging Face dataset id)
MTEB_TASKS: dict[str, tuple[str, str]] = {
    "scifact": ("SciFact", "mteb/scifact"), "nfcorpus": ("NFCorpus", "mteb/nfcorpus"),
    "fiqa": ("FiQA2018", "mteb/fiqa"), "trec-covid": ("TRECCOVID", "mteb/trec-covid"),
    "arguana": ("ArguAna", "mteb/arguana"), "webis-touche2020": ("Touche2020", "mteb/touche2020"),
    "quora": ("QuoraRetrieval", "mteb/quora"), "scidocs": ("SCIDOCS", "mteb/scidocs"),
    "climate-fever": ("ClimateFEVER", "mteb/climate-fever"), "dbpedia-entity": ("DBPedia", "mteb/dbpedia"),
    "fever": ("FEVER", "mteb/fever"), "hotpotqa": ("HotpotQA", "mteb/hotpotqa"), "nq": ("NQ", "mteb/nq"),
    "msmarco": ("MSMARCO", "mteb/msmarco"), "msmarco-passage": ("MSMARCO", "mteb/msmarco"),
}
#: hardneg's packaged aliases → the hub model they are
HUB_ALIASES = {"minilm": "sentence-transformers/all-MiniLM-L6-v2",
               "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


@dataclass
class Dataset:
    """A dataset spec (``path[:split]`` or ``irds:<id>``) as the card names it."""

    spec: str
    name: str
    split: str | None
    mteb_task: str | None = None
    hub_id: str | None = None

    @classmethod
    def from_spec(cls, spec: str, default_split: str | None = None) -> Dataset:
        path, split = parse_spec(spec)
        if path.startswith("irds:"):
            parts = [p for p in path[len("irds:"):].split("/") if p]
        else:
            parts = [p for p in Path(path.rstrip("/")).parts if p not in ("/", ".", "..")]
        name = "/".join(parts[-1:]) if not path.startswith("irds:") else path[len("irds:"):]
        known = next((MTEB_TASKS[p.lower()] for p in reversed(parts) if p.lower() in MTEB_TASKS), None)
        return cls(spec, name or spec, split or default_split, *(known or (None, None)))

    @property
    def label(self) -> str:
        return f"{self.mteb_task or self.name}" + (f" ({self.split})" if self.split else "")

    def same_collection(self, other: Dataset) -> bool:
        return (self.mteb_task or self.name) == (other.mteb_task or other.name)


@dataclass
class Evaluation:
    """Metrics of the model on one dataset, and the folder they were read from."""

    dataset: Dataset
    metrics: dict[str, float]
    source: str


@dataclass
class Run:
    """One hardneg training run (a folder with config.json and summary.json)."""

    folder: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    dev: dict[str, Any] | None
    dev_log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def data(self) -> Dataset:
        return Dataset.from_spec(self.config.get("data", ""), "train")


def _dev_log(path: Path) -> list[dict[str, Any]]:
    """The ``kind: dev`` records of a ``train_log.jsonl`` (a torn last line of a killed run is skipped)."""
    log = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("kind") == "dev":
                log.append(record)
    return log


def find_run(model_dir: str | Path) -> Run | None:
    """The training run that wrote ``model_dir`` (``OUT/model``), or None for a model trained elsewhere."""
    folder = Path(model_dir).resolve().parent
    try:
        config = read_json(folder / "config.json")
        summary = read_json(folder / "summary.json")
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "method" not in config or not isinstance(summary, dict):
        return None
    dev = read_json(folder / "dev_metrics.json") if (folder / "dev_metrics.json").is_file() else None
    return Run(folder, config, summary, dev, _dev_log(folder / "train_log.jsonl"))


def lineage(run: Run | None, source: str) -> tuple[list[Run], str]:
    """The runs from the first start model to ``run`` (oldest first) and that first start model."""
    runs: list[Run] = []
    start = source
    seen: set[Path] = set()
    while run is not None and run.folder not in seen:
        seen.add(run.folder)
        runs.insert(0, run)
        start = str(run.config.get("model", ""))
        run = find_run(start) if Path(start).is_dir() else None
    return runs, start


def hub_id(model: str) -> str | None:
    """The Hugging Face hub id of a start model, when it is one (not a local folder)."""
    if model in HUB_ALIASES:
        return HUB_ALIASES[model]
    if Path(model).expanduser().exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        return None
    return model


def experiment_evaluations(run: Run) -> list[Evaluation]:
    """Test and transfer metrics of the experiment system whose training stage ``run`` is."""
    stages = run.folder.parent
    if stages.name != "stages" or not (stages.parent / "recipe.json").is_file() \
            or not run.folder.name.startswith("train-"):
        return []
    system = run.folder.name[len("train-"):]
    found = []
    for folder in [stages / f"test-{system}", *sorted(stages.glob(f"transfer-{system}-*"))]:
        try:
            state = read_json(folder / "stage.json")
            metrics = read_json(folder / "metrics.json")
        except (OSError, ValueError):
            continue
        if state.get("status") == "done" and isinstance(metrics, dict):
            found.append(Evaluation(Dataset.from_spec(state["settings"]["data"]), metrics, str(folder)))
    return found


def read_evaluation(folder: str | Path) -> Evaluation:
    """A ``hardneg retrieve`` / ``search`` output folder (``metrics.json`` + ``settings.json``)."""
    folder = Path(folder)
    try:
        metrics = read_json(folder / "metrics.json")
        settings = read_json(folder / "settings.json")
    except OSError as exc:
        raise HardnegError(f"{folder}: --eval takes a run folder written by `hardneg retrieve` or `search` "
                           f"(metrics.json and settings.json): {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise HardnegError(f"{folder}: metrics.json or settings.json is not valid JSON ({exc})") from exc
    if not isinstance(metrics, dict) or not isinstance(settings, dict) or "data" not in settings:
        raise HardnegError(f"{folder}/settings.json: no 'data' key (the evaluated dataset); "
                           "give a folder written by `hardneg retrieve` or `search`")
    return Evaluation(Dataset.from_spec(settings["data"]), metrics, str(folder))


__all__ = ["Dataset", "Evaluation", "Run", "experiment_evaluations", "find_run", "hub_id", "lineage",
           "read_evaluation"]
