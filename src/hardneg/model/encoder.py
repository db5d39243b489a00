"""``DualEncoder``: query and document towers over any Hugging Face ``AutoModel``.

A tower is a transformer plus pooling (``cls`` or ``mean``) and optional L2
normalisation; the two towers are the same module (``shared``) or separate
copies (ADORE trains the query side only). A sentence-transformers folder
(``modules.json``, ``1_Pooling``, ``sentence_bert_config.json``) supplies
pooling, normalisation, max length and prompts automatically
(:mod:`hardneg.model.st_format`); a plain transformers folder defaults to CLS
pooling without normalisation (the paper's RoBERTa setting).

The encoder turns token ids into vectors (``forward``), texts into token ids
(``tokenize``) and lists of texts into float32 vectors in length-sorted batches
(``encode_queries``, ``encode_docs``: :func:`hardneg.model.encoding.encode_texts`).

A tower may carry a projection head (:class:`~hardneg.model.drhard.HeadTower`:
pooled vector → Dense → LayerNorm): DRhard's ``RobertaDot`` checkpoints (STAR,
ADORE) and sentence-transformers folders with Dense / LayerNorm modules load
with it; a checkpoint whose weights do not all fit is refused (the rule is in
:mod:`hardneg.model.drhard`).

``save`` writes a folder that ``transformers.AutoModel`` and
``sentence_transformers.SentenceTransformer`` both load (the document tower
at the root; a separate query tower, when there is one, in ``query_tower/``;
a head as sentence-transformers ``2_Dense`` / ``3_LayerNorm`` modules).

ADORE's released pair (a query-encoder folder and the STAR document encoder)::

    DualEncoder.from_pretrained("star", query_model="adore-star", tokenizer="roberta-base")

gives separate towers; ``.save(dir)`` once makes a folder every ``--model`` takes.
``hardneg export`` (:mod:`hardneg.export`) turns a saved encoder into one sentence-transformers
folder (separate towers as a ``Router`` model).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from hardneg.errors import HardnegError
from hardneg.io import commit_dir, write_json, writing
from hardneg.model import lora as adapters
from hardneg.model.drhard import (
    HeadTower,
    attach_sentence_transformers_head,
    check_keys,
    drhard_tokenizer,
    drop_missing_pooler,
    is_drhard_checkpoint,
    load_drhard,
    logger,
    split_tolerated_unexpected,
    weights_file,
)
from hardneg.model.encoding import encode_texts
from hardneg.model.fingerprints import tokenizer_fingerprint, weights_fingerprint
from hardneg.model.registry import resolve_model
from hardneg.model.st_format import POOLINGS, read_sentence_transformers_config, write_sentence_transformers_files

Side = Literal["query", "doc"]
HARDNEG_CONFIG = "hardneg_encoder.json"
QUERY_TOWER_DIR = "query_tower"


@dataclass
class EncoderConfig:
    """How texts become vectors; saved as ``hardneg_encoder.json`` beside the weights."""

    pooling: str = "cls"
    normalize: bool = False
    query_max_length: int = 64
    doc_max_length: int = 512
    query_prefix: str = ""
    doc_prefix: str = ""
    shared: bool = True

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise HardnegError(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")
        for name in ("query_max_length", "doc_max_length"):
            if int(getattr(self, name)) < 2:
                raise HardnegError(f"{name} must be at least 2, not {getattr(self, name)}")

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _auto_load(folder: Path, dtype: torch.dtype | None) -> nn.Module:
    """``AutoModel`` with every checkpoint key accounted for (the rule in :mod:`hardneg.model.drhard`)."""
    from transformers import AutoModel  # heavy: imported when a model is loaded

    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        model, info = AutoModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                                **kwargs)
    except Exception as exc:
        raise HardnegError(f"{folder}: could not load the transformer: {exc}") from exc
    model.config.return_dict = True  # a config.json saying "return_dict": false would make the forward a tuple
    file = weights_file(folder)
    if info.get("error_msgs"):
        raise HardnegError(f"{file}: could not load the weights: {'; '.join(map(str, info['error_msgs']))}")
    tolerated, unexpected = split_tolerated_unexpected(info.get("unexpected_keys") or (), model.base_model_prefix)
    if tolerated:
        logger.info("%s: skipped %d weights hardneg does not use: %s", file, len(tolerated),
                    ", ".join(sorted(tolerated)[:5]))
    missing = drop_missing_pooler(model, info.get("missing_keys") or (), file)
    mismatched = [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in (info.get("mismatched_keys") or ())]
    check_keys(file, unexpected=unexpected, missing=missing, mismatched=mismatched,
               what=f"{type(model).__name__}")
    return model


def load_tower(folder: Path, dtype: torch.dtype | None = None) -> nn.Module:
    """One tower from a folder: a DRhard RobertaDot checkpoint, or a transformer plus any
    sentence-transformers Dense / LayerNorm modules its ``modules.json`` lists."""
    if is_drhard_checkpoint(folder):
        return load_drhard(folder, dtype)
    return attach_sentence_transformers_head(_auto_load(folder, dtype), folder)


def tower_dim(model: nn.Module) -> int:
    """A tower's output size: the head's, else the transformer's hidden size."""
    return model.out_dim if isinstance(model, HeadTower) else int(model.config.hidden_size)


def _folder_settings(folder: Path) -> dict:
    """The encoder settings a model folder states: its ``hardneg_encoder.json``, else what its
    sentence-transformers files say (the max length for documents, at most 64 of it for queries)."""
    saved = folder / HARDNEG_CONFIG
    if saved.is_file():
        return json.loads(saved.read_text(encoding="utf-8"))
    settings = read_sentence_transformers_config(folder)
    max_len = settings.pop("max_length", None)
    if max_len:
        settings["doc_max_length"] = max_len
        settings["query_max_length"] = min(64, max_len)
    return settings


def _load_tokenizer(folder: Path, tokenizer: str | os.PathLike[str] | None, drhard: bool = False):
    """``(tokenizer, its folder)``: the model folder's, or ``tokenizer``'s (a folder or a model name);
    ``drhard``: set to DRhard's tokenisation (:func:`~hardneg.model.drhard.drhard_tokenizer`)."""
    from transformers import AutoTokenizer  # heavy: imported when a model is loaded

    tok_dir = folder if tokenizer is None else _tokenizer_dir(tokenizer)
    try:
        if not _has_vocabulary(tok_dir):  # transformers 5 would build an empty tokenizer from config.json
            raise HardnegError("the folder has no tokenizer files (tokenizer.json, vocab.txt, vocab.json, ...)")
        tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as exc:
        hint = ("; DRhard checkpoints ship without a tokenizer: pass tokenizer='roberta-base' "
                "(or a folder holding it)") if tokenizer is None and is_drhard_checkpoint(folder) else ""
        raise HardnegError(f"{tok_dir}: could not load the tokenizer: {exc}{hint}") from exc
    return (drhard_tokenizer(tok, tok_dir) if drhard else tok), tok_dir


def _fit_lengths(config: EncoderConfig, model: nn.Module) -> None:
    """Cap the max lengths at what the model's position embeddings hold."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit:
        # RoBERTa reserves two positions for the padding offset
        offset = 2 if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta") else 0
        for name in ("query_max_length", "doc_max_length"):
            if getattr(config, name) > limit - offset:
                setattr(config, name, limit - offset)


def _separate_query_tower(query_model: str | os.PathLike[str], tok, tok_dir: Path, doc_model: nn.Module,
                          doc_name: str, dtype: torch.dtype | None, drhard: bool = False) -> nn.Module:
    """The query tower loaded from ``query_model``: it must read the document tower's tokenizer ids
    and give vectors of the documents' size (``drhard``: both tokenise as DRhard did)."""
    from transformers import AutoTokenizer  # heavy: imported when a model is loaded

    qfolder = resolve_model(query_model)
    if _has_vocabulary(qfolder):  # both towers read one tokenizer's ids
        try:
            qtok = AutoTokenizer.from_pretrained(str(qfolder), local_files_only=True)
        except Exception as exc:
            raise HardnegError(f"{qfolder}: could not load the tokenizer: {exc}") from exc
        if drhard:
            qtok = drhard_tokenizer(qtok, qfolder)
        if tokenizer_fingerprint(qtok) != tokenizer_fingerprint(tok):
            raise HardnegError(f"{qfolder}: its tokenizer differs from {tok_dir}'s; the two towers "
                               "must share one tokenizer")
    query_tower = load_tower(qfolder, dtype)
    if tower_dim(query_tower) != tower_dim(doc_model):
        raise HardnegError(f"{query_model}: query vectors of size {tower_dim(query_tower)} cannot score "
                           f"{doc_name}'s documents of size {tower_dim(doc_model)}")
    return query_tower


class DualEncoder(nn.Module):
    """Query and document towers with shared pooling and normalisation settings."""

    def __init__(
        self,
        doc_model: nn.Module,
        tokenizer,
        config: EncoderConfig,
        query_model: nn.Module | None = None,
        source: str = "",
    ) -> None:
        super().__init__()
        self.doc_model = doc_model
        if config.shared:
            if query_model is not None and query_model is not doc_model:
                raise HardnegError("a shared encoder takes one transformer, not two")
            self.query_model = doc_model
        else:
            self.query_model = query_model if query_model is not None else copy.deepcopy(doc_model)
        self.tokenizer = tokenizer
        self.config = config
        self.source = source
        #: LoRA adapters on the trained towers (:func:`hardneg.model.lora.apply_lora`) and the model they adapt
        self.lora: adapters.LoraSettings | None = None
        self.lora_base = ""

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] | None = None,
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        query_max_length: int | None = None,
        doc_max_length: int | None = None,
        shared: bool | None = None,
        query_prefix: str | None = None,
        doc_prefix: str | None = None,
        dtype: torch.dtype | None = None,
        query_model: str | os.PathLike[str] | None = None,
        tokenizer: str | os.PathLike[str] | None = None,
    ) -> DualEncoder:
        """Load from ``minilm``, a local folder or a hub id; explicit arguments win over the folder.

        ``query_model``: a second model (name or folder) as a separate query tower, ``name_or_path``
        being the document tower (ADORE's released query encoder with its STAR document encoder);
        implies ``shared=False``. ``tokenizer``: where the tokenizer comes from when the model
        folder has none (DRhard checkpoints ship without one: ``tokenizer="roberta-base"``).
        A LoRA adapter folder (``--lora-save adapter``) loads its base model with the adapters merged.
        """
        overrides = {
            "pooling": pooling,
            "normalize": normalize,
            "query_max_length": query_max_length,
            "doc_max_length": doc_max_length,
            "query_prefix": query_prefix,
            "doc_prefix": doc_prefix,
        }
        if name_or_path is not None and query_model is None and adapters.is_adapter_folder(name_or_path):
            return adapters.load_merged(cls, Path(name_or_path), _folder_settings(Path(name_or_path)), shared,
                                        QUERY_TOWER_DIR, dtype=dtype, tokenizer=tokenizer, **overrides)
        folder = resolve_model(name_or_path)
        settings = _folder_settings(folder)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        saved_shared = settings.get("shared", True)
        if query_model is not None:
            if shared:
                raise HardnegError("query_model gives a separate query tower; it cannot be shared=True")
            shared = False
        if shared is not None:
            settings["shared"] = shared
        config = EncoderConfig.from_dict(settings)
        # a DRhard tower (STAR, ADORE's query encoder) reads ids as DRhard's preprocessing made them
        drhard = is_drhard_checkpoint(folder) or (query_model is not None
                                                   and is_drhard_checkpoint(resolve_model(query_model)))
        tok, tok_dir = _load_tokenizer(folder, tokenizer, drhard)
        doc_model = load_tower(folder, dtype)
        _fit_lengths(config, doc_model)
        query_tower = None
        source = str(name_or_path or folder)
        if query_model is not None:
            query_tower = _separate_query_tower(query_model, tok, tok_dir, doc_model, str(name_or_path), dtype,
                                                drhard)
            source = f"query={query_model},doc={source}"
        elif not config.shared:
            qdir = folder / QUERY_TOWER_DIR
            query_tower = load_tower(qdir, dtype) if (not saved_shared and qdir.is_dir()) else None
        return cls(doc_model, tok, config, query_model=query_tower, source=source)

    # ------------------------------------------------------------------ forward
    @property
    def dim(self) -> int:
        return tower_dim(self.doc_model)

    @property
    def device(self) -> torch.device:
        return next(self.doc_model.parameters()).device

    def tower(self, side: Side) -> nn.Module:
        if side == "query":
            return self.query_model
        if side == "doc":
            return self.doc_model
        raise ValueError(f"side must be 'query' or 'doc', not {side!r}")

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor, tower: nn.Module | None = None) -> torch.Tensor:
        """Pooling, then ``tower``'s head if it has one, then L2 normalisation (sentence-transformers' order)."""
        if self.config.pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if isinstance(tower, HeadTower):
            emb = tower.head(emb)
        if self.config.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
        return emb

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, side: Side = "doc") -> torch.Tensor:
        tower = self.tower(side)
        out = tower(input_ids=input_ids, attention_mask=attention_mask)
        # a tuple when a tower's config says return_dict false (the loaders turn it on; a tower set up by hand may not)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        return self.pool(hidden, attention_mask, tower)

    # ------------------------------------------------------------------ texts
    def max_length(self, side: Side) -> int:
        return self.config.query_max_length if side == "query" else self.config.doc_max_length

    def prefix(self, side: Side) -> str:
        return self.config.query_prefix if side == "query" else self.config.doc_prefix

    def tokenize(self, texts: Sequence[str], side: Side, padding: bool | str = False):
        prefix = self.prefix(side)
        if prefix:
            texts = [prefix + t for t in texts]
        return self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length(side),
            padding=padding,
            return_attention_mask=True,
            return_token_type_ids=False,
        )

    def encode(self, texts: Sequence[str], side: Side, *, batch_size: int = 64, show_progress: bool = False,
               precision: str = "fp32"):
        """float32 ``(len(texts), dim)`` vectors of ``texts`` by the ``side`` tower, rows in input order
        (:func:`hardneg.model.encoding.encode_texts`)."""
        return encode_texts(self, texts, side, batch_size=batch_size, show_progress=show_progress,
                            precision=precision)

    def encode_queries(self, texts: Sequence[str], **kwargs):
        """Query vectors (the query tower, its prefix and max length), as sentence-transformers' ``encode_query``."""
        return self.encode(texts, "query", **kwargs)

    def encode_docs(self, texts: Sequence[str], **kwargs):
        """Document vectors (the document tower), as sentence-transformers' ``encode_document``."""
        return self.encode(texts, "doc", **kwargs)

    def with_separate_towers(self) -> DualEncoder:
        """This encoder with separate towers: itself when they already are; for a shared encoder, the same
        document tower and a copy of it as the query tower (the start of ADORE's trained query tower)."""
        if not self.config.shared:
            return self
        return DualEncoder(self.doc_model, self.tokenizer, replace(self.config, shared=False), source=self.source)

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict:
        """What manifests record about this encoder (checked when artifacts are reused)."""
        return {
            "source": self.source,
            "config": asdict(self.config),
            "dim": self.dim,
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "weights": {
                "doc": weights_fingerprint(self.doc_model),
                "query": weights_fingerprint(self.query_model),
            },
        }

    def side_identity(self, side: Side) -> dict:
        """What makes one side's vectors what they are (keys cached embeddings of that side).

        Only that tower's weights, tokenizer, pooling, normalisation, max length and
        prefix count: the name a model was loaded by does not, nor does the other tower
        (ADORE trains the query tower; the document embeddings stay valid).
        """
        return {
            "side": side,
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "dim": self.dim,
            "pooling": self.config.pooling,
            "normalize": self.config.normalize,
            "max_length": self.max_length(side),
            "prefix": self.prefix(side),
            "weights": weights_fingerprint(self.tower(side)),
        }

    # ------------------------------------------------------------------ saving
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the encoder atomically; loadable by transformers, sentence-transformers and hardneg."""
        directory = Path(directory)
        with writing(directory, "model"):
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            with writing(directory, "model"):
                # adapters alone (--lora-save adapter): a tower without adapters is its base model's, not saved
                whole = self.lora is None or self.lora.save != "adapter"
                if whole or adapters.is_lora(self.doc_model):
                    self._save_tower(self.doc_model, tmp, "doc")
                if not self.config.shared and (whole or adapters.is_lora(self.query_model)):
                    self._save_tower(self.query_model, tmp / QUERY_TOWER_DIR, "query")
                write_json(tmp / HARDNEG_CONFIG, asdict(self.config))
                if self.lora is not None:
                    adapters.write_lora_record(tmp, self)
                commit_dir(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    def _save_tower(self, model: nn.Module, folder: Path, side: Side) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if adapters.is_lora(model):  # LoRA: peft's adapter folder, or a copy with the adapters merged
            if self.lora is not None and self.lora.save == "adapter":
                return adapters.save_adapter(model, folder)
            model = adapters.merged_copy(model)
        head = model.save_head(folder) if isinstance(model, HeadTower) else []
        transformer = model.transformer if isinstance(model, HeadTower) else model
        transformer.save_pretrained(str(folder), safe_serialization=True)
        max_len = self.max_length(side)
        old_max = self.tokenizer.model_max_length
        self.tokenizer.model_max_length = max_len
        try:
            self.tokenizer.save_pretrained(str(folder))
        finally:
            self.tokenizer.model_max_length = old_max
        write_sentence_transformers_files(
            folder,
            dim=int(model.config.hidden_size),
            head=head,
            pooling=self.config.pooling,
            normalize=self.config.normalize,
            max_length=max_len,
            query_prefix=self.config.query_prefix,
            doc_prefix=self.config.doc_prefix,
        )


_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                "tokenizer.model")


def _has_vocabulary(folder: Path) -> bool:
    """Whether a folder holds a tokenizer's vocabulary (not only its config)."""
    return any((folder / name).is_file() for name in _VOCAB_FILES) or any(
        p.suffix in (".model", ".spm", ".tiktoken") for p in folder.iterdir() if p.is_file())


def _tokenizer_dir(name: str | os.PathLike[str]) -> Path:
    """A tokenizer's folder: a local folder as is (it needs no config.json), else a model name."""
    path = Path(name).expanduser()
    return path.resolve() if path.is_dir() else resolve_model(name)
