"""Towers with a projection head: DRhard's ``RobertaDot`` checkpoints and sentence-transformers Dense/LayerNorm.

DRhard (Zhan et al. 2021; DRhard ``model.py``, ``RobertaDot``) encodes a text as
``norm(embeddingHead(roberta(ids).last_hidden_state[:, 0]))``: CLS, a ``Linear`` to
``config.output_embedding_size`` (else the hidden size), a ``LayerNorm``, no L2
normalisation; queries and documents go through the same function (``body_emb`` is
``query_emb``). Its checkpoints are ``config.json`` + ``pytorch_model.bin`` with keys
``roberta.*``, ``embeddingHead.{weight,bias}``, ``norm.{weight,bias}``. Loaded through
``AutoModel`` the head would be dropped; here it becomes a :class:`HeadTower`.

A :class:`HeadTower` is saved in sentence-transformers layout (Transformer → Pooling →
Dense with identity activation → LayerNorm), which is also how hardneg reads it back.

Weight-key rule (every loader here and in :mod:`hardneg.model.encoder`): a checkpoint's
keys must match the model exactly, except

* unexpected ``pooler.*`` and pre-training heads (``lm_head.*``, ``cls.predictions.*``,
  ``cls.seq_relationship.*``) and ``*position_ids`` buffers: never part of an embedding,
  skipped with a log line;
* missing ``pooler.*``: hardneg never reads the pooler output, so the (otherwise random)
  pooler is removed, with a log line.

Anything else (an unknown or missing key, a shape mismatch) is a :class:`HardnegError`
naming the file and the first keys.

DRhard's text (``preprocess.py`` with ``star_tokenizer.py``, transformers 2.8's ``RobertaTokenizer``
loaded with ``do_lower_case=True`` and called as ``encode(text, add_special_tokens=True,
max_length=..., truncation=True)``): a space is put in front unless the text starts with
whitespace, the text is lower-cased character by character, trailing whitespace is dropped, then
roberta-base's byte-level BPE, ``<s> … </s>``, truncated to the max length with ``</s>`` kept.
transformers 5 ignores ``do_lower_case`` for RoBERTa and adds no prefix space (DRhard's README
warns that 3.x and 4.x differ too): a released checkpoint would read cased ids without the space.
:func:`drhard_tokenizer` sets a byte-level BPE tokenizer to DRhard's rules in its own pipeline
(normaliser ``Strip(right)`` + ``Lowercase``, ``ByteLevel(add_prefix_space=True)``), so every
caller and every saved copy tokenises alike.

DRhard's ``RobertaDot`` sets ``config.return_dict = False`` under transformers 4, so its
``config.json`` may say so; :func:`load_drhard` turns it back on (hardneg reads named outputs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from hardneg.errors import HardnegError
from hardneg.io import write_json

logger = logging.getLogger("hardneg.model")

#: DRhard RobertaDot's head parameters (model.py: ``self.embeddingHead``, ``self.norm``)
DRHARD_HEAD_KEYS = ("embeddingHead.weight", "embeddingHead.bias", "norm.weight", "norm.bias")
#: unexpected keys skipped (after the base-model prefix): pooler and pre-training (MLM / NSP) heads
TOLERATED_UNEXPECTED = ("pooler.", "lm_head.", "cls.predictions.", "cls.seq_relationship.")
#: sentence-transformers Dense activations hardneg can run (what ``fullname(activation)`` writes)
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": nn.Identity,
    "torch.nn.modules.activation.Tanh": nn.Tanh,
}
IDENTITY = "torch.nn.modules.linear.Identity"
DENSE_DIR = "2_Dense"
LAYER_NORM_DIR = "3_LayerNorm"

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


class HeadTower(nn.Module):
    """A transformer whose pooled vector goes through ``dense`` (+ activation) and an optional ``norm``.

    ``forward`` is the transformer's (so ``tower(...).last_hidden_state`` works as for a plain
    tower); :meth:`head` maps a pooled ``(batch, hidden)`` vector to the output embedding.
    """

    def __init__(self, transformer: nn.Module, dense: nn.Linear, norm: nn.LayerNorm | None = None,
                 activation: str = IDENTITY) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise HardnegError(f"Dense activation {activation!r} is not supported (use one of {list(ACTIVATIONS)})")
        self.transformer = transformer
        self.dense = dense
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation]()
        self.norm = norm

    @property
    def config(self):
        return self.transformer.config

    @property
    def out_dim(self) -> int:
        return int(self.dense.out_features)

    def forward(self, *args, **kwargs):
        return self.transformer(*args, **kwargs)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.dense(pooled))
        return self.norm(out) if self.norm is not None else out

    def activation_checkpointing_enable(self, **kwargs) -> None:
        inner = self.transformer
        (getattr(inner, "activation_checkpointing_enable", None) or inner.gradient_checkpointing_enable)(**kwargs)

    gradient_checkpointing_enable = activation_checkpointing_enable  # the name before transformers 5

    def save_head(self, folder: Path) -> list[tuple[str, str]]:
        """Write the head as sentence-transformers ``Dense`` / ``LayerNorm`` module folders.

        Returns ``(path, type)`` of each module for ``modules.json``.
        """
        dense_dir = folder / DENSE_DIR
        dense_dir.mkdir(parents=True, exist_ok=True)
        write_json(dense_dir / "config.json", {
            "in_features": int(self.dense.in_features), "out_features": self.out_dim,
            "bias": self.dense.bias is not None, "activation_function": self.activation_name})
        state = {"linear.weight": self.dense.weight}
        if self.dense.bias is not None:
            state["linear.bias"] = self.dense.bias
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(dense_dir / "model.safetensors"))
        modules = [(DENSE_DIR, "sentence_transformers.models.Dense")]
        if self.norm is not None:
            norm_dir = folder / LAYER_NORM_DIR
            norm_dir.mkdir(parents=True, exist_ok=True)
            write_json(norm_dir / "config.json", {"dimension": self.out_dim})
            save_file({f"norm.{k}": v.detach().cpu().contiguous() for k, v in self.norm.state_dict().items()},
                      str(norm_dir / "model.safetensors"))
            modules.append((LAYER_NORM_DIR, "sentence_transformers.models.LayerNorm"))
        return modules


# ----------------------------------------------------------------------------- key checks
def _show(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f" … ({len(keys)} in all)" if len(keys) > n else f" ({len(keys)})"
    return ", ".join(keys[:n]) + more


def check_keys(file: Path, *, unexpected: Iterable[str] = (), missing: Iterable[str] = (),
               mismatched: Iterable[str] = (), what: str = "the model") -> None:
    """Refuse a checkpoint whose weights do not all fit ``what`` (keys already filtered by the rule)."""
    unexpected, missing, mismatched = sorted(unexpected), sorted(missing), sorted(mismatched)
    problems = []
    if unexpected:
        problems.append(f"keys {what} has no place for: {_show(unexpected)}")
    if missing:
        problems.append(f"keys {what} needs but the file lacks: {_show(missing)}")
    if mismatched:
        problems.append(f"keys whose shape differs from {what}'s: {_show(mismatched)}")
    if problems:
        raise HardnegError(
            f"{file}: the weights do not fit {what} ({'; '.join(problems)}); hardneg never drops weights "
            "silently: use a checkpoint of a supported architecture (a Hugging Face encoder, a "
            "sentence-transformers folder or a DRhard RobertaDot checkpoint)"
        )


def split_tolerated_unexpected(keys: Iterable[str], prefix: str = "") -> tuple[list[str], list[str]]:
    """``(tolerated, refused)`` unexpected keys under the module rule (``prefix``: the base-model prefix)."""
    tolerated, refused = [], []
    for key in keys:
        bare = key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else key
        if bare.startswith(TOLERATED_UNEXPECTED) or bare.endswith("position_ids"):
            tolerated.append(key)
        else:
            refused.append(key)
    return tolerated, refused


def drop_missing_pooler(model: nn.Module, missing: Iterable[str], file: Path) -> list[str]:
    """Remove a pooler the checkpoint has no weights for; returns the missing keys left to refuse."""
    missing = sorted(missing)
    pooler = [k for k in missing if k.startswith("pooler.") or ".pooler." in k]
    rest = [k for k in missing if k not in pooler]
    if pooler and getattr(model, "pooler", None) is not None:
        model.pooler = None
        logger.info("%s: no pooler weights; the pooler is removed (hardneg never uses it)", file)
        return rest
    return missing


def weights_file(folder: Path) -> Path:
    """The weights file of a folder (what error messages name)."""
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return folder


def _read_index(path: Path) -> list[str]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        return sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise HardnegError(f"{path}: not a readable weights index ({exc})") from exc


def checkpoint_keys(folder: Path) -> list[str]:
    """The state-dict keys of a folder's weights, without loading them where the format allows."""
    file = weights_file(folder)
    try:
        if file.name == "model.safetensors":
            with safe_open(str(file), "pt") as fh:
                return list(fh.keys())
        if file.name.endswith(".index.json"):
            return list(json.loads(file.read_text(encoding="utf-8")).get("weight_map", {}))
        if file.name == "pytorch_model.bin":
            return list(_load_file(file, mmap=True))
    except HardnegError:
        raise
    except Exception as exc:
        raise HardnegError(f"{file}: could not read the weights: {exc}") from exc
    return []


def _load_file(file: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        return load_file(str(file))
    name = str(file)
    try:
        return torch.load(name, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError:
        if not mmap:
            raise
        return torch.load(name, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def load_state(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """``(file, state dict)`` of a folder: model.safetensors, pytorch_model.bin, or their sharded index."""
    file = weights_file(folder)
    if file == folder:
        raise HardnegError(f"{folder}: no weights (model.safetensors or pytorch_model.bin)")
    try:
        if file.name.endswith(".index.json"):
            state: dict[str, torch.Tensor] = {}
            for shard in _read_index(file):
                state.update(_load_file(folder / shard))
            return file, state
        return file, _load_file(file)
    except HardnegError:
        raise
    except Exception as exc:
        raise HardnegError(f"{file}: could not read the weights: {exc}") from exc


# ----------------------------------------------------------------------------- DRhard checkpoints
def is_drhard_checkpoint(folder: Path) -> bool:
    """True when a folder's weights carry DRhard's ``embeddingHead.*`` (RobertaDot and its subclasses)."""
    return any(k.startswith("embeddingHead.") for k in checkpoint_keys(folder))


def load_drhard(folder: Path, dtype: torch.dtype | None = None) -> HeadTower:
    """A DRhard ``RobertaDot`` checkpoint as a :class:`HeadTower` (CLS → embeddingHead → norm).

    Every key must fit (module rule above); ``norm.*`` and ``embeddingHead.*`` are required.
    """
    from transformers import AutoConfig, AutoModel  # heavy: imported when a model is loaded

    file, state = load_state(folder)
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise HardnegError(f"{folder}: could not read config.json: {exc}") from exc
    config.return_dict = True  # DRhard's RobertaDot writes "return_dict": false; the forward returns named outputs
    try:  # DRhard builds RobertaModel(config, add_pooling_layer=False)
        base = AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        base = AutoModel.from_config(config)
    prefix = base.base_model_prefix
    expected = base.state_dict()
    base_state, head_state, unexpected = {}, {}, []
    for key, value in state.items():
        if key in DRHARD_HEAD_KEYS:
            head_state[key] = value
        elif key.startswith(prefix + ".") and key[len(prefix) + 1:] in expected:
            base_state[key[len(prefix) + 1:]] = value
        else:
            unexpected.append(key)
    tolerated, unexpected = split_tolerated_unexpected(unexpected, prefix)
    if tolerated:
        logger.info("%s: skipped weights hardneg does not use: %s", file, _show(tolerated))
    missing = [f"{prefix}.{k}" for k in expected if k not in base_state]
    missing = drop_missing_pooler(base, missing, file)
    missing += [k for k in DRHARD_HEAD_KEYS if k not in head_state]
    mismatched = [f"{prefix}.{k}" for k, v in base_state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    what = "DRhard's RobertaDot (roberta + embeddingHead + norm)"
    check_keys(file, unexpected=unexpected, missing=missing, mismatched=mismatched, what=what)
    weight, bias = head_state["embeddingHead.weight"], head_state["embeddingHead.bias"]
    out_dim, hidden = weight.shape if weight.dim() == 2 else (-1, -1)
    declared = getattr(config, "output_embedding_size", out_dim)
    bad = [k for k, v, shape in (("embeddingHead.weight", weight, (declared, config.hidden_size)),
                                 ("embeddingHead.bias", bias, (declared,)),
                                 ("norm.weight", head_state["norm.weight"], (declared,)),
                                 ("norm.bias", head_state["norm.bias"], (declared,)))
           if tuple(v.shape) != shape]
    check_keys(file, mismatched=[f"{k} (hidden {config.hidden_size}, output_embedding_size {declared})"
                                 for k in bad], what=what)
    base.load_state_dict({k: base_state[k] for k in base.state_dict()}, strict=True)
    dense = nn.Linear(int(hidden), int(out_dim))
    norm = nn.LayerNorm(int(out_dim))  # DRhard: nn.LayerNorm(output_embedding_size), eps 1e-5
    with torch.no_grad():
        dense.weight.copy_(weight)
        dense.bias.copy_(bias)
        norm.weight.copy_(head_state["norm.weight"])
        norm.bias.copy_(head_state["norm.bias"])
    tower = HeadTower(base, dense, norm)
    if dtype is not None:
        tower.to(dtype)
    logger.info("%s: DRhard RobertaDot checkpoint (CLS -> Linear %d->%d -> LayerNorm)", file, hidden, out_dim)
    return tower.eval()


def _drhard_pipeline(backend_state: dict):
    """A copy of a byte-level BPE ``tokenizers.Tokenizer`` (its JSON state) with DRhard's text rules."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers  # with transformers: when a model is loaded

    backend = Tokenizer.from_str(json.dumps(backend_state))
    backend.no_truncation()
    backend.no_padding()
    # transformers 2.8: ``split_on_token`` rstrips the text; ``do_lower_case`` lowers it one character at a time
    # (``Lowercase`` maps each character too: Greek final sigma stays σ, as in DRhard)
    backend.normalizer = normalizers.Sequence([normalizers.Strip(left=False, right=True), normalizers.Lowercase()])
    trim = (backend_state.get("pre_tokenizer") or {}).get("trim_offsets", True)
    # RobertaTokenizer.prepare_for_tokenization: a space in front when special tokens are added (DRhard: always)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, trim_offsets=trim, use_regex=True)
    return backend


def drhard_tokenizer(tokenizer, source: Path | str = ""):
    """``tokenizer`` set to tokenise as DRhard did (module docstring): lower-cased, a prefix space, trailing
    whitespace dropped, ``<s> … </s>``.

    Only a byte-level BPE tokenizer without a normaliser of its own (roberta-base's, which DRhard used) can be
    set so; any other is returned unchanged with a warning. One already set is returned as is. The result is
    a ``transformers`` fast tokenizer whose ``tokenizer.json`` carries the rules, so ``save_pretrained`` copies
    (hardneg's saved encoders, sentence-transformers exports) load back with them through ``AutoTokenizer``.
    Not reproduced (no MS MARCO text has them): a text starting with whitespace other than a space (DRhard
    adds no space there), special-token strings such as ``<s>`` inside a text.
    """
    from transformers import PreTrainedTokenizerFast  # heavy: imported when a model is loaded

    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = json.loads(backend.to_str()) if backend is not None else {}
    pre = state.get("pre_tokenizer") or {}
    if (state.get("model") or {}).get("type") != "BPE" or pre.get("type") != "ByteLevel":
        logger.warning("%s: not a byte-level BPE tokenizer such as roberta-base's, which DRhard checkpoints were "
                       "trained with; DRhard's tokenisation (lower-case, prefix space) is not applied", source)
        return tokenizer
    drhard = _drhard_pipeline(state)
    new_state = json.loads(drhard.to_str())
    if all(new_state.get(k) == state.get(k) for k in ("normalizer", "pre_tokenizer")):
        return tokenizer
    if state.get("normalizer") is not None:
        logger.warning("%s: the tokenizer has a normaliser of its own (%s); roberta-base's, which DRhard checkpoints "
                       "were trained with, has none: DRhard's tokenisation is not applied", source,
                       state["normalizer"].get("type"))
        return tokenizer
    logger.info("%s: DRhard's tokenisation (lower-case, prefix space, trailing whitespace dropped)", source)
    return PreTrainedTokenizerFast(tokenizer_object=drhard, model_max_length=tokenizer.model_max_length,
                                   padding_side=tokenizer.padding_side, truncation_side=tokenizer.truncation_side,
                                   **tokenizer.special_tokens_map)


# ----------------------------------------------------------------------------- sentence-transformers heads
def sentence_transformers_head(folder: Path) -> list[tuple[str, Path]]:
    """The Dense / LayerNorm modules (``("dense" | "layer_norm", folder)``) after pooling in ``modules.json``.

    hardneg runs at most one Dense followed by at most one LayerNorm; any other arrangement is refused.
    """
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return []
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise HardnegError(f"{modules_file}: not valid JSON ({exc})") from exc
    head: list[tuple[str, Path]] = []
    for module in modules:
        kind = str(module.get("type", ""))
        name = "dense" if kind.endswith(".Dense") else "layer_norm" if kind.endswith(".LayerNorm") else None
        if name is not None:
            head.append((name, folder / module.get("path", "")))
    kinds = [k for k, _ in head]
    if kinds not in ([], ["dense"], ["dense", "layer_norm"], ["layer_norm"]):
        raise HardnegError(f"{modules_file}: modules {kinds} are not supported (at most one Dense, then at "
                           "most one LayerNorm, after the Pooling)")
    return head


def _module_state(path: Path, want: set[str], optional: set[str] = frozenset()) -> dict[str, torch.Tensor]:
    file, state = load_state(path)
    check_keys(file, unexpected=set(state) - want - optional, missing=want - set(state),
               what=f"a sentence-transformers {path.name} module")
    return state


def attach_sentence_transformers_head(transformer: nn.Module, folder: Path) -> nn.Module:
    """``transformer`` with the folder's Dense / LayerNorm modules as a :class:`HeadTower` (or unchanged)."""
    head = dict(sentence_transformers_head(folder))
    if not head:
        return transformer
    dense = norm = None
    activation = IDENTITY
    dtype = next(transformer.parameters()).dtype
    if "dense" in head:
        path = head["dense"]
        cfg_file = path / "config.json"
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            in_f, out_f = int(cfg["in_features"]), int(cfg["out_features"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HardnegError(f"{cfg_file}: not a sentence-transformers Dense config ({exc})") from exc
        bias = bool(cfg.get("bias", True))
        activation = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")  # ST's default
        if activation not in ACTIVATIONS:
            raise HardnegError(f"{cfg_file}: activation_function {activation!r} is not supported "
                               f"(use one of {list(ACTIVATIONS)})")
        if cfg.get("use_residual"):
            raise HardnegError(f"{cfg_file}: use_residual is not supported")
        state = _module_state(path, {"linear.weight"} | ({"linear.bias"} if bias else set()))
        dense = nn.Linear(in_f, out_f, bias=bias)
        dense.load_state_dict({k[len("linear."):]: v for k, v in state.items()})
    hidden = int(transformer.config.hidden_size)
    if dense is None:
        dense = nn.Linear(hidden, hidden)  # LayerNorm only: an exact identity Dense in front
        with torch.no_grad():
            dense.weight.copy_(torch.eye(hidden))
            dense.bias.zero_()
        activation = IDENTITY
    if dense.in_features != hidden:
        raise HardnegError(f"{head['dense']}: Dense in_features {dense.in_features} is not the model's "
                           f"hidden size {hidden}")
    if "layer_norm" in head:
        path = head["layer_norm"]
        state = _module_state(path, {"norm.weight", "norm.bias"})
        norm = nn.LayerNorm(int(state["norm.weight"].shape[0]))
        norm.load_state_dict({k[len("norm."):]: v for k, v in state.items()})
        if norm.normalized_shape[0] != dense.out_features:
            raise HardnegError(f"{path}: LayerNorm dimension {norm.normalized_shape[0]} is not the Dense "
                               f"output {dense.out_features}")
    return HeadTower(transformer, dense, norm, activation).to(dtype).eval()


__all__ = [
    "HeadTower",
    "attach_sentence_transformers_head",
    "check_keys",
    "drhard_tokenizer",
    "is_drhard_checkpoint",
    "load_drhard",
    "sentence_transformers_head",
]
