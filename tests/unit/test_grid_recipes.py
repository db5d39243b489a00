"""The shipped configs/scifact.yaml and configs/nfcorpus.yaml end to end on a tiny dataset: every one of their
stages (Table 2's systems, ADORE on every base, the new rows, the outside index, sentence-transformers' recipe, the
seeds, WiSE-FT, the analyses and the report) runs with a tiny model, so a grid that takes many hours on the real
data cannot stop on a stage that was never run. Slow (minutes): ``pytest -m slow tests/unit/test_grid_recipes.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import TRAIN_TOPICS, write_tiny_train
from hardneg.experiment import Experiment, Recipe

CONFIGS = Path(__file__).parents[2] / "configs"

#: what the test makes tiny: steps, batches, lengths, dev size (the systems and their settings stay as shipped)
TINY = {
    "train": {"max_steps": 2, "batch_size": 4, "topk": 8, "dev_fraction": 0.25, "dev_every": 2, "save_every": 2,
              "query_max_length": 16, "doc_max_length": 32, "warmup_ratio": 0.0},
    "adore": {"max_steps": 2, "batch_size": 4, "adore_topk": 8, "metric": "mrr@8", "dev_fraction": 0.25,
              "dev_every": 2, "save_every": 2, "query_max_length": 16, "doc_max_length": 32, "warmup_ratio": 0.0},
    "eval": {"max_length": 32, "query_max_length": 16, "k": 50},
}
#: per-system settings that name a size the tiny data or model cannot have
SYSTEM_TINY = {
    "adore-devdoc+zeroshot": {"dev_every": 2},
    "star-gc128": {"batch_size": 8, "mini_batch": 4, "max_steps": 2, "dev_every": 2, "save_every": 2},
    "adore-pq48+zeroshot": {"index": "pq8"},
    "adore-pq24+zeroshot": {"index": "pq4"},
    "st-mnrl": {"num_train_epochs": 1, "per_device_train_batch_size": 4, "max_seq_length": 32,
                "relative_margin": 0.0},  # a random tiny model scores every document alike
}


def tiny_data_dir(root: Path) -> Path:
    """``{data_dir}`` as the recipes read it: ``scifact`` and ``nfcorpus`` (train + test qrels; half the test
    queries' documents are training positives, half are not) and ``classic/med`` (SMART layout)."""
    for name in ("scifact", "nfcorpus"):
        folder = write_tiny_train(root / name, filler=300)
        test = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}-0\t1" for i in range(6)]
        test += [f"q{i}\td{i}-2\t1" for i in range(6, 12)]
        (folder / "qrels" / "test.tsv").write_text("\n".join(test) + "\n")
    med = root / "classic" / "med"  # the SMART layout of the classic collections: MED.ALL, MED.QRY, MED.REL
    med.mkdir(parents=True)
    docs = [f"{topic} fact {j} " * (1 + j) for topic in TRAIN_TOPICS for j in range(4)]
    (med / "MED.ALL").write_text("".join(f".I {i}\n.W\n{text}\n" for i, text in enumerate(docs, 1)))
    (med / "MED.QRY").write_text("".join(f".I {i}\n.W\nabout {t}\n" for i, t in enumerate(TRAIN_TOPICS[:4], 1)))
    (med / "MED.REL").write_text("".join(f"{i} 0 {4 * (i - 1) + 1} 1\n" for i in range(1, 5)))
    return root


def tiny_recipe(name: str, data_dir: Path, model: Path, cache: Path) -> dict:
    """The shipped ``configs/<name>.yaml`` (its systems and their settings) with :data:`TINY` merged over its
    sections and the sizes the tiny data or model cannot have made tiny."""
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text().replace("{data_dir}", str(data_dir)))
    for section, values in TINY.items():
        if section in raw:
            raw[section] = {**raw[section], **values}
    raw["systems"] = [{**s, **SYSTEM_TINY.get(s["name"], {})} for s in raw["systems"]]
    for s in raw["systems"]:  # the teacher's bi-encoder: the tiny model
        if "teacher" in s:
            s["teacher"] = s["teacher"].replace("minilm", str(model))
    raw["indexes"] = {name: {**spec, "model": str(model), "factory": "HNSW8", "max_seq_length": 32}
                      for name, spec in raw.get("indexes", {}).items()}
    if "pq" in raw.get("analysis", {}):
        raw["analysis"]["pq"]["indexes"] = ["flat", "pq8", "pq4"]
    if "tsne" in raw.get("analysis", {}):
        raw["analysis"]["tsne"]["top"] = 5
    return {**raw, "model": str(model), "cache_dir": str(cache)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scifact", "nfcorpus"])
def test_grid_recipe_end_to_end_on_a_tiny_dataset(name, tmp_path, tiny_st_dir):
    raw = tiny_recipe(name, tiny_data_dir(tmp_path / "data"), tiny_st_dir, tmp_path / "cache")
    shipped = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert [s["name"] for s in raw["systems"]] == [s["name"] for s in shipped["systems"]]
    recipe = Recipe.from_dict(raw, source=str(CONFIGS / f"{name}.yaml"))
    exp = Experiment(recipe, tmp_path / "out", quiet=True)
    outcome = exp.run(keep_going=True)
    failed = {n: json.loads((exp.stage_dir(n) / "stage.json").read_text()).get("error")
              for n, o in outcome.items() if o == "failed"}
    assert not failed, failed
    assert set(outcome) == set(exp.stages) and set(outcome.values()) == {"done"}
    results = json.loads((exp.out / "results.json").read_text())
    seeded = [s["name"] for s in shipped["systems"] if s.get("seeds")]
    assert seeded and all(sum(r["system"] == n for r in results["replicas"].values()) == 3 for n in seeded)
    text = (exp.out / "report.md").read_text()
    assert "## Table 2 analogue" in text and "## Head-to-head" in text
    if name != "scifact":
        return
    table2 = ["bm25", "inbatch", "rand", "bm25neg", "ance", "star", "adore+inbatch", "adore+rand", "adore+bm25neg",
              "adore+ance", "adore+star"]
    assert set(table2) <= set(results["systems"])
    for heading in ("Table 1 analogue", "Fig. 4 analogue", "Fig. 5 analogue",
                    "Tables 3 and 5 analogue", "Fig. 6 analogue", "Table 4 analogue"):
        assert f"## {heading}" in text, heading
    gc = json.loads((exp.stage_dir("train-star-gc128") / "summary.json").read_text())
    assert gc["global_batch"] == 8 and gc["steps"] == 2
