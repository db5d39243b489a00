"""``DualEncoder``: query and document towers over any Hugging Face ``AutoModel``.

A tower is a transformer plus pooling (``cls`` or ``mean``) and optional L2
normalisation; the two towers are the same module (``shared``) or separate
copies (ADORE trains the query side only). A sentence-transformers folder
(``modules.json``, ``1_Pooling``, ``sentence_bert_config.json``) supplies
pooling, normalisation, max length and prompts automatically; a plain
transformers folder defaults to CLS pooling without normalisation (the
paper's RoBERTa setting).

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
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from hardneg.errors import HardnegError
from hardneg.io import commit_dir, write_json, writing
from hardneg.model.drhard import (
    HeadTower,
    attach_sentence_transformers_head,
    check_keys,
    drop_missing_pooler,
    is_drhard_checkpoint,
    load_drhard,
    logger,
    split_tolerated_unexpected,
    weights_file,
)
from hardneg.model.registry import resolve_model

Side = Literal["query", "doc"]
POOLINGS = ("cls", "mean")
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


def read_sentence_transformers_config(folder: Path) -> dict:
    """Pooling, normalisation, max length and prompts of a sentence-transformers folder.

    Reads both the legacy layout (``pooling_mode_mean_tokens`` …, ``max_seq_length``)
    and the sentence-transformers 6 layout (``pooling_mode``, tokenizer ``model_max_length``).
    Returns only what the folder states.
    """
    out: dict = {}
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return out
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    for module in modules:
        kind = module.get("type", "")
        path = folder / module.get("path", "")
        if kind.endswith("Pooling"):
            cfg_file = path / "config.json"
            if cfg_file.is_file():
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
                mode = cfg.get("pooling_mode")
                if mode is None:
                    if cfg.get("pooling_mode_cls_token"):
                        mode = "cls"
                    elif cfg.get("pooling_mode_mean_tokens"):
                        mode = "mean"
                    else:
                        mode = next((k[len("pooling_mode_"):] for k, v in cfg.items()
                                     if k.startswith("pooling_mode_") and v), None)
                if mode in ("mean_tokens", "cls_token"):
                    mode = mode.split("_")[0]
                if mode not in POOLINGS:
                    raise HardnegError(
                        f"{cfg_file}: pooling mode {mode!r} is not supported (use cls or mean)"
                    )
                out["pooling"] = mode
        elif kind.endswith("Normalize"):
            out["normalize"] = True
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        max_len = json.loads(sbert.read_text(encoding="utf-8")).get("max_seq_length")
        if max_len:
            out["max_length"] = int(max_len)
    if "max_length" not in out:
        tok_cfg = folder / "tokenizer_config.json"
        if tok_cfg.is_file():
            max_len = json.loads(tok_cfg.read_text(encoding="utf-8")).get("model_max_length")
            if isinstance(max_len, int) and max_len < 100_000:
                out["max_length"] = max_len
    st_cfg = folder / "config_sentence_transformers.json"
    if st_cfg.is_file():
        prompts = json.loads(st_cfg.read_text(encoding="utf-8")).get("prompts") or {}
        if prompts.get("query"):
            out["query_prefix"] = prompts["query"]
        doc_prompt = prompts.get("document") or prompts.get("passage")
        if doc_prompt:
            out["doc_prefix"] = doc_prompt
    return out


def _auto_load(folder: Path, dtype: torch.dtype | None) -> nn.Module:
    """``AutoModel`` with every checkpoint key accounted for (the rule in :mod:`hardneg.model.drhard`)."""
    from transformers import AutoModel

    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        model, info = AutoModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                                **kwargs)
    except Exception as exc:
        raise HardnegError(f"{folder}: could not load the transformer: {exc}") from exc
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
        """
        from transformers import AutoTokenizer

        folder = resolve_model(name_or_path)
        saved = folder / HARDNEG_CONFIG
        if saved.is_file():
            settings = json.loads(saved.read_text(encoding="utf-8"))
        else:
            st = read_sentence_transformers_config(folder)
            max_len = st.pop("max_length", None)
            settings = {**st}
            if max_len:
                settings["doc_max_length"] = max_len
                settings["query_max_length"] = min(64, max_len)
        overrides = {
            "pooling": pooling,
            "normalize": normalize,
            "query_max_length": query_max_length,
            "doc_max_length": doc_max_length,
            "query_prefix": query_prefix,
            "doc_prefix": doc_prefix,
        }
        settings.update({k: v for k, v in overrides.items() if v is not None})
        saved_shared = settings.get("shared", True)
        if query_model is not None:
            if shared:
                raise HardnegError("query_model gives a separate query tower; it cannot be shared=True")
            shared = False
        if shared is not None:
            settings["shared"] = shared
        config = EncoderConfig.from_dict(settings)
        tok_dir = folder if tokenizer is None else _tokenizer_dir(tokenizer)
        try:
            if not _has_vocabulary(tok_dir):  # transformers 5 would build an empty tokenizer from config.json
                raise HardnegError("the folder has no tokenizer files (tokenizer.json, vocab.txt, vocab.json, ...)")
            tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        except Exception as exc:
            hint = ("; DRhard checkpoints ship without a tokenizer: pass tokenizer='roberta-base' "
                    "(or a folder holding it)") if tokenizer is None and is_drhard_checkpoint(folder) else ""
            raise HardnegError(f"{tok_dir}: could not load the tokenizer: {exc}{hint}") from exc
        doc_model = load_tower(folder, dtype)
        limit = getattr(doc_model.config, "max_position_embeddings", None)
        if limit:
            # RoBERTa reserves two positions for the padding offset
            offset = 2 if getattr(doc_model.config, "model_type", "") in ("roberta", "xlm-roberta") else 0
            for name in ("query_max_length", "doc_max_length"):
                if getattr(config, name) > limit - offset:
                    setattr(config, name, limit - offset)
        query_tower = None
        source = str(name_or_path or folder)
        if query_model is not None:
            qfolder = resolve_model(query_model)
            if _has_vocabulary(qfolder):  # both towers read one tokenizer's ids
                try:
                    qtok = AutoTokenizer.from_pretrained(str(qfolder), local_files_only=True)
                except Exception as exc:
                    raise HardnegError(f"{qfolder}: could not load the tokenizer: {exc}") from exc
                if tokenizer_fingerprint(qtok) != tokenizer_fingerprint(tok):
                    raise HardnegError(f"{qfolder}: its tokenizer differs from {tok_dir}'s; the two towers "
                                       "must share one tokenizer")
            query_tower = load_tower(qfolder, dtype)
            if tower_dim(query_tower) != tower_dim(doc_model):
                raise HardnegError(f"{query_model}: query vectors of size {tower_dim(query_tower)} cannot score "
                                   f"{name_or_path}'s documents of size {tower_dim(doc_model)}")
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
        return self.pool(out.last_hidden_state, attention_mask, tower)

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

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], side: Side, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Encode a list of texts (length-sorted batches); rows follow ``texts``' order."""
        from hardneg.index.encode import encode_token_lists

        ids = self.tokenize(texts, side)["input_ids"]
        return encode_token_lists(self, ids, side, batch_size=batch_size, show_progress=show_progress)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64, **kw) -> np.ndarray:
        return self.encode(texts, "query", batch_size=batch_size, **kw)

    def encode_docs(self, texts: Sequence[str], batch_size: int = 64, **kw) -> np.ndarray:
        return self.encode(texts, "doc", batch_size=batch_size, **kw)

    def with_separate_towers(self) -> DualEncoder:
        """This encoder with separate towers: itself when they already are; for a shared encoder, the same
        document tower and a copy of it as the query tower (the start of ADORE's trained query tower)."""
        if not self.config.shared:
            return self
        from dataclasses import replace

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
                self._save_tower(self.doc_model, tmp, "doc")
                if not self.config.shared:
                    self._save_tower(self.query_model, tmp / QUERY_TOWER_DIR, "query")
                write_json(tmp / HARDNEG_CONFIG, asdict(self.config))
                commit_dir(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    def export_sentence_transformers(self, directory: str | os.PathLike[str]) -> Path:
        """A folder ``SentenceTransformer(directory)`` loads with both towers.

        A shared encoder is its :meth:`save` folder. Separate towers (ADORE) become a
        sentence-transformers ``Router`` model: ``encode_query`` runs the query tower,
        ``encode_document`` (and plain ``encode``) the document tower.
        """
        if self.config.shared:
            return self.save(directory)
        from sentence_transformers import SentenceTransformer

        try:  # sentence-transformers >= 6 moved the modules; 5.x has them under .models
            from sentence_transformers.base.modules.router import Router
        except ImportError:
            from sentence_transformers.models import Router

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self.save(work / "pair")
            query = SentenceTransformer(str(work / "pair" / QUERY_TOWER_DIR), device="cpu")
            doc = SentenceTransformer(str(work / "pair"), device="cpu")
            router = Router.for_query_document(query_modules=list(query), document_modules=list(doc))
            SentenceTransformer(modules=[router], device="cpu").save(str(work / "st"))
            commit_dir(work / "st", directory)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return directory

    def _save_tower(self, model: nn.Module, folder: Path, side: Side) -> None:
        folder.mkdir(parents=True, exist_ok=True)
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


def write_sentence_transformers_files(
    folder: Path,
    *,
    dim: int,
    pooling: str,
    normalize: bool,
    max_length: int,
    query_prefix: str = "",
    doc_prefix: str = "",
    head: Sequence[tuple[str, str]] = (),
) -> None:
    """The module files sentence-transformers reads (legacy layout, read by 2.x–6.x).

    ``head``: ``(path, type)`` of modules already written after the Pooling (Dense, LayerNorm).
    """
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    for path, kind in head:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": path, "type": kind})
    if normalize:
        norm_dir = f"{len(modules)}_Normalize"
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": norm_dir,
                        "type": "sentence_transformers.models.Normalize"})
        (folder / norm_dir).mkdir(exist_ok=True)
    write_json(folder / "modules.json", modules)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    write_json(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    write_json(
        folder / "config_sentence_transformers.json",
        {
            "prompts": {"query": query_prefix, "document": doc_prefix},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if normalize else "dot",
        },
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


_TOKENIZER_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of the tokenizer's vocabulary and normalisation rules (cached per tokenizer object and
    vocabulary size: serialising a fast tokenizer costs ~0.1 s, and cache keys ask for it often)."""
    try:
        size, cached = _TOKENIZER_FINGERPRINTS[tokenizer]
        if size == len(tokenizer):
            return cached
    except (KeyError, TypeError):
        pass
    fingerprint = _tokenizer_fingerprint(tokenizer)
    try:
        _TOKENIZER_FINGERPRINTS[tokenizer] = (len(tokenizer), fingerprint)
    except TypeError:  # not weak-referenceable: no cache
        pass
    return fingerprint


def _tokenizer_fingerprint(tokenizer) -> str:
    import hashlib

    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # truncation/padding are call-time settings the tokenizer remembers; not identity
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:  # slow tokenizer
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()[:16]


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer (changes whenever training changes the weights)."""
    import hashlib

    h = hashlib.sha1()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
