"""The model card ``hardneg export`` writes (README.md, sentence-transformers layout).

The card follows sentence-transformers' own (``sentence_transformers/base/model_card_template.md``):
YAML front matter with ``base_model``, ``tags``, ``datasets``, ``library_name``, ``pipeline_tag`` and a
``model-index`` of the test metrics, then Model Details, Usage, Evaluation, Training Details
(dataset, hyperparameters, logs, time), Framework Versions and Citation. Everything comes from files
already on disk (:mod:`hardneg.export.sources`).

So that a zero-shot claim stays honest, the YAML says which data the model was trained on
(``train_datasets``, with the MTEB task name where the dataset is a BEIR/MTEB one) and each
evaluation is marked in-domain or zero-shot.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import shlex
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult
from huggingface_hub.repocard_data import eval_results_to_model_index

from hardneg.errors import HardnegError
from hardneg.export.sources import (
    Dataset,
    Evaluation,
    Run,
    experiment_evaluations,
    find_run,
    hub_id,
    lineage,
    read_evaluation,
)
from hardneg.io import atomic_write
from hardneg.model.lora import read_lora_record
from hardneg.train.config import TrainConfig
from hardneg.train.methods import method_help, method_spec

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


# ----------------------------------------------------------------------------- pieces
def metric_id(name: str) -> str:
    """An ir-measures name as a model-index / MTEB metric id: ``nDCG@10`` → ``ndcg_at_10``."""
    base, _, cut = name.partition("@")
    base = {"rr": "mrr", "r": "recall", "p": "precision", "ap": "map"}.get(base.lower(), base.lower())
    return f"{base}_at_{cut}" if cut else base


def train_command(config: dict[str, Any]) -> str:
    """``hardneg train`` with the run's resolved settings (those off the defaults), as one command."""
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
        from sentence_transformers import SentenceTransformer  # heavy (seconds): only when a card is written

        return str(SentenceTransformer(str(folder), device="cpu"))
    except Exception:  # the card is still useful without it
        return None


def _method_help(method: str) -> str:
    try:
        return method_help(method)
    except Exception:  # a method of another hardneg version
        return "(unknown to this hardneg version)"


def _method_settings(method: str) -> tuple[str, ...]:
    """The settings only ``method`` takes (none for a method of another hardneg version)."""
    try:
        return method_spec(method).settings
    except HardnegError:
        return ()


def card_data(runs: list[Run], start: str, evaluations: list[Evaluation], model_name: str) -> dict[str, Any]:
    """The YAML front matter (sentence-transformers' ``YAML_FIELDS`` plus ``train_datasets``)."""
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


# ----------------------------------------------------------------------------- the card's sections
def _intro(runs: list[Run], model_source: str, base_link: str) -> list[str]:
    if runs:
        on = " and ".join(dict.fromkeys(r.data.label for r in runs))
        return [f"This is a [sentence-transformers](https://www.SBERT.net) model finetuned from {base_link} "
                f"with hardneg ({', '.join(str(r.config.get('method')) for r in runs)}; "
                f"Zhan et al., SIGIR 2021) on {on}. It maps queries and documents to dense vectors for "
                "retrieval."]
    return [f"This is a [sentence-transformers](https://www.SBERT.net) model exported by hardneg from "
            f"`{model_source}` (no hardneg training run was found beside it, so the card cannot say how "
            "it was trained)."]


def _model_details(folder: Path, runs: list[Run], start: str, base_link: str, encoder) -> list[str]:
    base = hub_id(start)
    out = ["", "## Model Details", "", "### Model Description", "- **Model Type:** Sentence Transformer"]
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
    unique = list({r.data.label: r.data for r in runs}.values())
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
    return out


def _trained_index(model_source: str) -> list[str]:
    """The index an ADORE query encoder was trained against when hardneg did not build it (its ``adore.json``)."""
    info_file = Path(model_source) / "adore.json"
    ext = json.loads(info_file.read_text(encoding="utf-8")).get("external_index") if info_file.is_file() else None
    if not ext:
        return []
    return ["### Document Index", "",
            "A query encoder alone, trained (ADORE) against a fixed document index built elsewhere: search that "
            "index with it (`hardneg search` refuses another).", "",
            f"- **Content hash:** `{ext['hash']}`", f"- **Kind:** {ext['kind']} ({ext['layout']} layout)",
            f"- **ntotal:** {ext['ntotal']}", f"- **Metric:** {ext['metric']}", f"- **Path:** `{ext['path']}`", ""]


def _lora(record: dict[str, Any] | None) -> list[str]:
    """The LoRA line of Model Details (``hardneg_lora.json`` of the trained model), or nothing."""
    if not record:
        return []
    lora = record.get("lora", {})
    targets = lora.get("resolved_targets") or lora.get("targets") or "peft's defaults"
    targets = ", ".join(targets) if isinstance(targets, list) else str(targets)
    towers = " and ".join(f"{side} tower" for side in record.get("adapted", [])) or "encoder"
    towers = "shared encoder" if record.get("shared") else towers
    return [f"- **Fine-tuning:** LoRA adapters (peft) on the {towers}: r={lora.get('r')}, "
            f"alpha={lora.get('lora_alpha'):g}, dropout {lora.get('dropout')}, target modules {targets}; "
            f"{record.get('trainable_params')} of {record.get('total_params')} parameters trained "
            f"({100 * float(record.get('trainable_share', 0)):.2f}%), the adapters merged into the weights"]


def _usage(load: str) -> list[str]:
    return ["## Usage", "", "### Direct Usage (Sentence Transformers)", "",
            "First install the Sentence Transformers library:", "", "```bash", "pip install -U sentence-transformers",
            "```", "Then you can load this model and run inference.", "```python",
            "from sentence_transformers import SentenceTransformer", "",
            f"model = SentenceTransformer({load!r})",
            'queries = ["what is a hard negative?"]',
            'documents = ["A hard negative is an irrelevant document that the model ranks high."]',
            "query_embeddings = model.encode_query(queries)",
            "document_embeddings = model.encode_document(documents)",
            "print(model.similarity(query_embeddings, document_embeddings))", "```", ""]


def _evaluation(evaluations: list[Evaluation], trained: list[Dataset]) -> list[str]:
    if not evaluations:
        return []
    out = ["## Evaluation", "", "### Metrics", ""]
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
    return out


def _run_summary(r: Run) -> list[str]:
    """One run's dataset, size, method, loss, steps, start model and command."""
    method = str(r.config.get("method"))
    s = r.summary
    loss = f"* Loss: {r.config.get('loss')}"
    if "adore_loss" in _method_settings(method):  # ADORE's own loss, weighted by the change of its metric
        loss += f" (ADORE: {r.config.get('adore_loss')} weighted by Δ{r.config.get('metric')})"
    return [f"### Training Dataset ({method})", "", f"#### {r.data.label}", "",
            f"* Dataset: `{r.config.get('data')}`" + (f" (MTEB task {r.data.mteb_task})" if r.data.mteb_task
                                                      else ""),
            f"* Size: {s.get('train_pairs')} training (query, positive) pairs; {s.get('dev_queries')} dev queries",
            f"* Method: `{method}`: {_method_help(method)}",
            loss,
            f"* Steps: {s.get('steps')} (best dev {s.get('dev_metric')} at step {s.get('best_step')}"
            + (f"; stopped early at step {s.get('stopped_early')}" if s.get("stopped_early") else "") + ")",
            f"* Start model: `{r.config.get('model')}`", "",
            "#### Command", "", "The run's resolved settings as one command (it may have been started with a "
            "preset, a YAML file or an experiment recipe):", "", "```bash", train_command(r.config), "```", ""]


def _hyperparameters(r: Run) -> list[str]:
    shown = {k: v for k, v in r.config.items() if k not in _NOT_SHOWN}
    defaults = TrainConfig().to_dict()
    changed = {k: v for k, v in shown.items() if k in defaults and v != defaults[k]}
    out = ["#### Training Hyperparameters", ""]
    if changed:
        out += ["##### Non-Default Hyperparameters", ""] + [f"- `{k}`: {v}" for k, v in changed.items()] + [""]
    out += ["##### All Hyperparameters", "<details><summary>Click to expand</summary>", ""]
    return out + [f"- `{k}`: {v}" for k, v in shown.items()] + ["", "</details>", ""]


def _training_logs(r: Run) -> list[str]:
    """The dev evaluations of the run, the saved checkpoint's row in bold, and its training time."""
    s = r.summary
    out: list[str] = []
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
    return out


def _mteb(trained: list[Dataset]) -> list[str]:
    if not trained:
        return []
    tasks: dict[str, list[str]] = {}
    for d in trained:
        if d.mteb_task:
            tasks.setdefault(d.mteb_task, [])
            if d.split and d.split not in tasks[d.mteb_task]:
                tasks[d.mteb_task].append(d.split)
    return ["### MTEB", "", "Results on the training collections above are in-domain, not zero-shot. "
            "Declare them when submitting this model to MTEB (`mteb.ModelMeta`):", "", "```python",
            f"training_datasets = {json.dumps(tasks or {d.name: [d.split] for d in trained})}", "```", ""]


def _versions_and_citation() -> list[str]:
    out = ["### Framework Versions"] + [f"- {k}: {v}" for k, v in _versions().items()]
    out += ["", "## Citation", "", "### BibTeX", ""]
    for name, bib in CITATIONS.items():
        out += [f"#### {name}", "```bibtex", bib, "```", ""]
    return out


def render_card(folder: Path, model_source: str, runs: list[Run], start: str, evaluations: list[Evaluation],
                *, encoder=None, repo_id: str | None = None, lora: dict[str, Any] | None = None) -> str:
    """README.md text for the exported model in ``folder``; ``lora``: the model's ``hardneg_lora.json``."""
    model_name = repo_id or (f"{' + '.join(str(r.config.get('method')).upper() for r in runs)} "
                             f"({hub_id(start) or Path(start).name})" if runs else Path(folder).name)
    front = card_data(runs, start, evaluations, model_name)
    if lora:
        front["tags"].append("lora")
    base = hub_id(start)
    trained = [r.data for r in runs]
    base_link = f"[{base}](https://huggingface.co/{base})" if base else f"`{start}`"
    out: list[str] = ["---", "# For reference on model card metadata, see the spec: "
                      "https://github.com/huggingface/hub-docs/blob/main/modelcard.md?plain=1",
                      yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
                      f"# {model_name}", ""]
    out += _intro(runs, model_source, base_link)
    details = _model_details(Path(folder), runs, start, base_link, encoder)
    at = next((i for i, line in enumerate(details) if line == "### Model Sources"), len(details)) - 1
    out += details[:at] + _lora(lora) + details[at:]
    out += _trained_index(model_source)
    out += _usage(repo_id or str(folder))
    out += _evaluation(evaluations, trained)
    out += ["## Training Details", ""]
    for r in runs:
        out += _run_summary(r) + _hyperparameters(r) + _training_logs(r)
    out += _mteb(trained) + _versions_and_citation()
    return "\n".join(out).rstrip() + "\n"


def write_model_card(folder: str | Path, model_source: str, *, encoder=None, evals: list[str | Path] = (),
                     repo_id: str | None = None) -> Path:
    """Write ``folder/README.md`` for the model exported from ``model_source``; returns its path."""
    folder = Path(folder)
    run = find_run(model_source) if Path(model_source).is_dir() else None
    runs, start = lineage(run, model_source)
    evaluations = experiment_evaluations(run) if run is not None else []
    evaluations += [read_evaluation(e) for e in evals]
    lora = read_lora_record(model_source) if Path(model_source).is_dir() else None
    text = render_card(folder, model_source, runs, start, evaluations, encoder=encoder, repo_id=repo_id, lora=lora)
    path = folder / "README.md"
    with atomic_write(path) as fh:
        fh.write(text)
    return path


def read_front_matter(path: str | Path) -> dict[str, Any]:
    """The YAML front matter of a model card (what the hub reads)."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise HardnegError(f"{path}: no YAML front matter")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)]) or {}


__all__ = ["card_data", "metric_id", "read_front_matter", "render_card", "train_command", "write_model_card"]
