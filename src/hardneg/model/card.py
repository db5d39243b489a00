"""The model card ``hardneg export`` writes (README.md, sentence-transformers layout) and ``--push-to-hub``.

The card follows sentence-transformers' own (``sentence_transformers/base/model_card_template.md``):
YAML front matter with ``base_model``, ``tags``, ``datasets``, ``library_name``, ``pipeline_tag`` and a
``model-index`` of the test metrics, then Model Details, Usage, Evaluation, Training Details
(dataset, hyperparameters, logs, time), Framework Versions and Citation. Everything comes from files
already on disk:

* the training run folder beside the model (``OUT/model`` → ``OUT/config.json``, ``summary.json``,
  ``dev_metrics.json``, ``train_log.jsonl``); a start model that is itself a hardneg run
  (ADORE on STAR) adds its own run, so the lineage reaches the hub model it began from;
* when the run is an experiment's training stage (``EXP/stages/train-<system>``), that system's
  ``test-<system>`` and ``transfer-<system>-*`` metrics (``metrics.json`` and ``stage.json``);
* any ``--eval`` folder written by ``hardneg retrieve`` / ``search`` (``metrics.json``, ``settings.json``).

So that a zero-shot claim stays honest, the YAML says which data the model was trained on
(``train_datasets``, with the MTEB task name where the dataset is a BEIR/MTEB one) and each
evaluation is marked in-domain or zero-shot.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardneg.errors import HardnegError
from hardneg.io import atomic_write, read_json

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
#: settings left out of the card's hyperparameters (where the run wrote, not what it computed)
_NOT_SHOWN = ("out", "cache_dir", "quiet", "extra", "report_to")

CITATIONS = {
    "STAR and ADORE": """@inproceedings{zhan2021optimizing,
    title = {Optimizing Dense Retrieval Model Training with Hard Negatives},
    author = {Zhan, Jingtao and Mao, Jiaxin and Liu, Yiqun and Guo, Jiafeng and Zhang, Min and Ma, Shaoping},
    booktitle = {Proceedings of the 44th International ACM SIGIR Conference on Research and Development in
                 Information Retrieval},
    pages = {1503--1512},
    year = {2021}
}""",
    "Sentence Transformers": """@inproceedings{reimers-2019-sentence-bert,
    title = "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing",
    month = "11",
    year = "2019",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/1908.10084"
}""",
}


# ----------------------------------------------------------------------------- what the card says
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
        from hardneg.data.load import parse_spec

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
    log = []
    if (folder / "train_log.jsonl").is_file():
        for line in (folder / "train_log.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a torn last line of a killed run
                continue
            if record.get("kind") == "dev":
                log.append(record)
    return Run(folder, config, summary, dev, log)


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


# ----------------------------------------------------------------------------- rendering
def metric_id(name: str) -> str:
    """An ir-measures name as a model-index / MTEB metric id: ``nDCG@10`` → ``ndcg_at_10``."""
    base, _, cut = name.partition("@")
    base = {"rr": "mrr", "r": "recall", "p": "precision", "ap": "map"}.get(base.lower(), base.lower())
    return f"{base}_at_{cut}" if cut else base


def train_command(config: dict[str, Any]) -> str:
    """``hardneg train`` with the run's resolved settings (those off the defaults), as one command."""
    from hardneg.train.config import TrainConfig

    defaults = TrainConfig().to_dict()
    parts = ["hardneg", "train", str(config.get("method", "star"))]
    for name, info in TrainConfig.model_fields.items():
        meta = info.json_schema_extra or {}
        if not meta.get("cli", True) or name not in config or name == "cache_dir":
            continue
        value = config[name]
        if value is None or (value == defaults[name] and name not in ("data", "model", "out")):
            continue
        flag = (meta.get("flags") or ["--" + name.replace("_", "-")])[0]
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            parts += [x for v in value or ["none"] for x in (flag, str(v))]
        else:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(parts)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join(":-----" for _ in keys) + "|"]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"Python": platform.python_version()}
    for label, dist in (("hardneg", "hardneg"), ("Sentence Transformers", "sentence-transformers"),
                        ("Transformers", "transformers"), ("PyTorch", "torch"), ("Tokenizers", "tokenizers")):
        try:
            out[label] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def _architecture(folder: Path) -> str | None:
    try:
        from sentence_transformers import SentenceTransformer

        return str(SentenceTransformer(str(folder), device="cpu"))
    except Exception:  # the card is still useful without it
        return None


def card_data(runs: list[Run], start: str, evaluations: list[Evaluation], model_name: str) -> dict[str, Any]:
    """The YAML front matter (sentence-transformers' ``YAML_FIELDS`` plus ``train_datasets``)."""
    from huggingface_hub import EvalResult
    from huggingface_hub.repocard_data import eval_results_to_model_index

    trained = [r.data for r in runs]
    methods = list(dict.fromkeys(str(r.config.get("method")) for r in runs))
    data: dict[str, Any] = {}
    base = hub_id(start)
    if base:
        data["base_model"] = base
    data["tags"] = ["sentence-transformers", "sentence-similarity", "feature-extraction", "hardneg", *methods]
    hub_datasets = list(dict.fromkeys(d.hub_id for d in trained if d.hub_id))
    if hub_datasets:
        data["datasets"] = hub_datasets
    data["library_name"] = "sentence-transformers"
    data["pipeline_tag"] = "sentence-similarity"
    # which data it trained on, so that a result on it is not read as zero-shot (MTEB's ModelMeta
    # training_datasets: {task: [splits]})
    data["train_datasets"] = [{k: v for k, v in {"name": d.name, "split": d.split, "mteb_task": d.mteb_task,
                                                  "id": d.hub_id, "method": r.config.get("method")}.items()
                               if v is not None} for r, d in zip(runs, trained, strict=True)]
    results = []
    for ev in evaluations:
        seen_in_training = any(ev.dataset.same_collection(d) for d in trained)
        for name, value in ev.metrics.items():
            if isinstance(value, int | float):
                results.append(EvalResult(
                    task_type="retrieval", task_name="Retrieval", dataset_type=ev.dataset.hub_id or ev.dataset.name,
                    dataset_name=ev.dataset.mteb_task or ev.dataset.name, dataset_split=ev.dataset.split,
                    metric_type=metric_id(name), metric_name=name, metric_value=float(value),
                    dataset_args={"zero_shot": not seen_in_training}))
    if results:
        data["model-index"] = eval_results_to_model_index(model_name, results)
    return data


def render_card(folder: Path, model_source: str, runs: list[Run], start: str, evaluations: list[Evaluation],
                *, encoder=None, repo_id: str | None = None) -> str:
    """README.md text for the exported model in ``folder``."""
    import yaml

    from hardneg.train.methods import method_help

    model_name = repo_id or (f"{' + '.join(str(r.config.get('method')).upper() for r in runs)} "
                             f"({hub_id(start) or Path(start).name})" if runs else Path(folder).name)
    front = card_data(runs, start, evaluations, model_name)
    base = hub_id(start)
    trained = [r.data for r in runs]
    out: list[str] = ["---", "# For reference on model card metadata, see the spec: "
                      "https://github.com/huggingface/hub-docs/blob/main/modelcard.md?plain=1",
                      yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
                      f"# {model_name}", ""]
    on = " and ".join(dict.fromkeys(d.label for d in trained))
    base_link = f"[{base}](https://huggingface.co/{base})" if base else f"`{start}`"
    if runs:
        out.append(f"This is a [sentence-transformers](https://www.SBERT.net) model finetuned from {base_link} "
                   f"with hardneg ({', '.join(str(r.config.get('method')) for r in runs)}; "
                   f"Zhan et al., SIGIR 2021) on {on}. It maps queries and documents to dense vectors for "
                   "retrieval.")
    else:
        out.append(f"This is a [sentence-transformers](https://www.SBERT.net) model exported by hardneg from "
                   f"`{model_source}` (no hardneg training run was found beside it, so the card cannot say how "
                   "it was trained).")
    out += ["", "## Model Details", "", "### Model Description", "- **Model Type:** Sentence Transformer"]
    out.append(f"- **Base model:** {base_link}" if base else f"<!-- - **Base model:** `{start}` (a local folder) -->")
    if encoder is not None:
        cfg = encoder.config
        out += [f"- **Maximum Sequence Length:** {encoder.max_length('doc')} tokens",
                f"    - **Maximum Query Length:** {encoder.max_length('query')} tokens",
                f"    - **Maximum Document Length:** {encoder.max_length('doc')} tokens",
                f"- **Output Dimensionality:** {encoder.dim} dimensions",
                f"- **Similarity Function:** {'Cosine Similarity' if cfg.normalize else 'Dot Product'}",
                f"- **Pooling:** {cfg.pooling}" + ("" if cfg.shared else
                                                     " (separate query and document towers: a Router model)")]
    unique = list({d.label: d for d in trained}.values())
    if unique:
        out.append("- **Training Dataset" + ("s" if len(unique) > 1 else "") + ":**")
        out += [f"    - {d.label}" + (f" ([{d.hub_id}](https://huggingface.co/datasets/{d.hub_id}))"
                                       if d.hub_id else "") for d in unique]
    out += ["", "### Model Sources", "",
            "- **Documentation:** [Sentence Transformers Documentation](https://sbert.net)",
            "- **Paper:** [Optimizing Dense Retrieval Model Training with Hard Negatives]"
            "(https://arxiv.org/abs/2104.08051)", ""]
    arch = _architecture(folder)
    if arch:
        out += ["### Full Model Architecture", "", "```", arch, "```", ""]
    load = repo_id or str(folder)
    out += ["## Usage", "", "### Direct Usage (Sentence Transformers)", "",
            "First install the Sentence Transformers library:", "", "```bash", "pip install -U sentence-transformers",
            "```", "Then you can load this model and run inference.", "```python",
            "from sentence_transformers import SentenceTransformer", "",
            f"model = SentenceTransformer({load!r})",
            'queries = ["what is a hard negative?"]',
            'documents = ["A hard negative is an irrelevant document that the model ranks high."]',
            "query_embeddings = model.encode_query(queries)",
            "document_embeddings = model.encode_document(documents)",
            "print(model.similarity(query_embeddings, document_embeddings))", "```", ""]
    if evaluations:
        out += ["## Evaluation", "", "### Metrics", ""]
        for ev in evaluations:
            seen = any(ev.dataset.same_collection(d) for d in trained)
            out += [f"#### Retrieval: {ev.dataset.label}", "",
                    f"* Dataset: `{ev.dataset.spec}`" + (f" (MTEB task {ev.dataset.mteb_task})"
                                                         if ev.dataset.mteb_task else ""),
                    "* " + ("**In-domain**: the model was trained on this collection's training split, so this "
                            "is not a zero-shot result" if seen else "**Zero-shot**: the model never trained on "
                            "this collection"),
                    f"* Evaluated with hardneg ({Path(ev.source).name})", "",
                    _table([{"Metric": k, "Value": _fmt(v)} for k, v in ev.metrics.items()]), ""]
    out += ["## Training Details", ""]
    for r in runs:
        method = str(r.config.get("method"))
        s = r.summary
        out += [f"### Training Dataset ({method})", "", f"#### {r.data.label}", "",
                f"* Dataset: `{r.config.get('data')}`" + (f" (MTEB task {r.data.mteb_task})" if r.data.mteb_task
                                                          else ""),
                f"* Size: {s.get('train_pairs')} training (query, positive) pairs; {s.get('dev_queries')} dev queries",
                f"* Method: `{method}`: {_method_help(method_help, method)}",
                f"* Loss: {r.config.get('loss')}" + (f" (ADORE: {r.config.get('adore_loss')} weighted by "
                                                      f"Δ{r.config.get('metric')})" if method == "adore" else ""),
                f"* Steps: {s.get('steps')} (best dev {s.get('dev_metric')} at step {s.get('best_step')}"
                + (f"; stopped early at step {s.get('stopped_early')}" if s.get("stopped_early") else "") + ")",
                f"* Start model: `{r.config.get('model')}`", "",
                "#### Command", "", "The run's resolved settings as one command (it may have been started with a "
                "preset, a YAML file or an experiment recipe):", "", "```bash", train_command(r.config), "```", ""]
        shown = {k: v for k, v in r.config.items() if k not in _NOT_SHOWN}
        from hardneg.train.config import TrainConfig

        defaults = TrainConfig().to_dict()
        changed = {k: v for k, v in shown.items() if k in defaults and v != defaults[k]}
        out += ["#### Training Hyperparameters", ""]
        if changed:
            out += ["##### Non-Default Hyperparameters", ""] + [f"- `{k}`: {v}" for k, v in changed.items()] + [""]
        out += ["##### All Hyperparameters", "<details><summary>Click to expand</summary>", ""]
        out += [f"- `{k}`: {v}" for k, v in shown.items()] + ["", "</details>", ""]
        if r.dev_log:
            keys = [k for k in r.dev_log[-1] if k not in ("step", "kind")]
            rows = []
            for rec in r.dev_log:
                best = rec.get("step") == s.get("best_step")
                row = {"Step": rec.get("step"), **{k: _fmt(rec.get(k, "")) for k in keys}}
                rows.append({k: f"**{v}**" if best else v for k, v in row.items()})
            out += ["#### Training Logs", "", _table(rows), "",
                    "* The bold row denotes the saved checkpoint (dev queries carved out of the training data"
                    + (f", split {r.config.get('dev_split')}" if r.config.get("dev_split") else "") + ").", ""]
        if isinstance(s.get("seconds_this_session"), int | float):
            out += ["#### Training Time", f"- **Training**: {s['seconds_this_session']:.0f} s (last session) on "
                    f"{s.get('world_size', 1)} process(es), global batch {s.get('global_batch')}", ""]
    if trained:
        tasks: dict[str, list[str]] = {}
        for d in trained:
            if d.mteb_task:
                tasks.setdefault(d.mteb_task, [])
                if d.split and d.split not in tasks[d.mteb_task]:
                    tasks[d.mteb_task].append(d.split)
        out += ["### MTEB", "", "Results on the training collections above are in-domain, not zero-shot. "
                "Declare them when submitting this model to MTEB (`mteb.ModelMeta`):", "", "```python",
                f"training_datasets = {json.dumps(tasks or {d.name: [d.split] for d in trained})}", "```", ""]
    out += ["### Framework Versions"] + [f"- {k}: {v}" for k, v in _versions().items()] + ["", "## Citation", "",
                                                                                          "### BibTeX", ""]
    for name, bib in CITATIONS.items():
        out += [f"#### {name}", "```bibtex", bib, "```", ""]
    return "\n".join(out).rstrip() + "\n"


def _method_help(method_help, method: str) -> str:
    try:
        return method_help(method)
    except Exception:  # a method of another hardneg version
        return "(unknown to this hardneg version)"


def write_model_card(folder: str | Path, model_source: str, *, encoder=None, evals: list[str | Path] = (),
                     repo_id: str | None = None) -> Path:
    """Write ``folder/README.md`` for the model exported from ``model_source``; returns its path."""
    folder = Path(folder)
    run = find_run(model_source) if Path(model_source).is_dir() else None
    runs, start = lineage(run, model_source)
    evaluations = experiment_evaluations(run) if run is not None else []
    evaluations += [read_evaluation(e) for e in evals]
    text = render_card(folder, model_source, runs, start, evaluations, encoder=encoder, repo_id=repo_id)
    path = folder / "README.md"
    with atomic_write(path) as fh:
        fh.write(text)
    return path


def read_front_matter(path: str | Path) -> dict[str, Any]:
    """The YAML front matter of a model card (what the hub reads)."""
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise HardnegError(f"{path}: no YAML front matter")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)]) or {}


# ----------------------------------------------------------------------------- the hub
def check_repo_id(repo_id: str) -> None:
    """A HardnegError for a repo id the hub would refuse (before any export work)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HardnegError(f"--push-to-hub {repo_id!r}: not a valid repo id ({exc}); give `user/name` "
                           "or `org/name`") from None


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Create (or reuse) the model repo ``repo_id`` and upload ``folder``; returns the repo URL.

    The token is ``token``, else ``HF_TOKEN``, else the one ``huggingface-cli login`` stored."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    api = HfApi(token=token or os.environ.get("HF_TOKEN") or None)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=commit_message or "Upload model exported by hardneg")
    except Exception as exc:  # no network, offline mode, bad token, no write access, ...
        raise HardnegError(
            f"--push-to-hub {repo_id}: the upload failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
            f"the exported model is still in {folder}. Check the network, --token / HF_TOKEN (a write token) "
            "and that you may write to that namespace"
        ) from exc
    return str(url)


__all__ = ["Dataset", "check_repo_id", "find_run", "metric_id", "push_to_hub", "read_front_matter",
           "render_card", "train_command", "write_model_card"]
