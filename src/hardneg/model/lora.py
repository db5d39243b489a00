"""LoRA adapters on an encoder's towers, through ``peft`` (Hu et al., ICLR 2022).

:func:`apply_lora` wraps the transformer of each trained tower in a ``peft`` model with LoRA
adapters on the ``targets`` modules: only the adapters train, every base weight (and a
tower's projection head) stays frozen. A shared encoder gets one adapter; separate towers
get one each, except a frozen document tower (ADORE), which stays untouched, so its
embeddings and index stay valid.

Saving (:meth:`hardneg.model.encoder.DualEncoder.save`) takes one of two forms:

* ``merged``: the adapters merged into the base weights (peft's ``merge_and_unload`` on a copy),
  written in hardneg's usual layout, which transformers and sentence-transformers load;
* ``adapter``: peft's adapter folder per adapted tower (``adapter_config.json``,
  ``adapter_model.safetensors``; the query tower's under ``query_tower/``) and
  ``hardneg_lora.json``, which names the base model; hardneg's loading merges them onto it.

Both forms hold ``hardneg_lora.json`` (the settings, the trainable share), which the model card reads.
``peft`` is imported only when adapters are made or loaded (it takes seconds).
"""

from __future__ import annotations

import contextlib
import copy
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardneg.errors import HardnegError
from hardneg.io import read_json, write_json
from hardneg.model.drhard import HeadTower

#: the LoRA record written into every model folder trained with adapters
LORA_FILE = "hardneg_lora.json"
LORA_SAVES = ("merged", "adapter")
#: the ``--lora-targets`` value that adapts every linear layer (peft's own spelling)
ALL_LINEAR = "all-linear"
TARGETS_FLAG = "--lora-targets"


@dataclass(frozen=True)
class LoraSettings:
    """``r`` (rank), ``alpha`` (scaling numerator; ``None``: 2·r), ``dropout`` on the adapter input,
    ``targets`` (module names, ``all-linear``, or ``None``: the attention query and value projections,
    peft's defaults for the model types it knows (BERT, RoBERTa: ``query``, ``value``), else
    :func:`default_targets`) and the ``save`` form."""

    r: int
    alpha: float | None = None
    dropout: float = 0.1
    targets: tuple[str, ...] | str | None = None
    save: str = "merged"

    def __post_init__(self) -> None:
        if self.save not in LORA_SAVES:
            raise HardnegError(f"--lora-save must be one of {', '.join(LORA_SAVES)}, not {self.save!r}")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r

    @classmethod
    def from_config(cls, config: Any) -> LoraSettings:
        """The settings of a training config's ``lora_*`` fields."""
        return cls(r=int(config.lora_r), alpha=config.lora_alpha, dropout=float(config.lora_dropout),
                   targets=parse_targets(config.lora_targets), save=config.lora_save)


def parse_targets(text: str | Sequence[str] | None) -> tuple[str, ...] | str | None:
    """``"query,value"`` → ``("query", "value")``; ``all-linear`` as is; empty or ``None`` → ``None``."""
    if text is None:
        return None
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not names:
        return None
    if ALL_LINEAR in names:
        if len(names) > 1:
            raise HardnegError(f"{TARGETS_FLAG}: {ALL_LINEAR} stands alone (it adapts every linear layer)")
        return ALL_LINEAR
    return tuple(names)


# ----------------------------------------------------------------------------- towers
def transformer_of(tower: nn.Module) -> nn.Module:
    """The transformer of a tower (a head tower's, else the tower itself)."""
    return tower.transformer if isinstance(tower, HeadTower) else tower


def is_lora(tower: nn.Module) -> bool:
    """Whether the tower's transformer carries peft adapters (never true before peft is imported)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(transformer_of(tower), peft.PeftModel)


def _linear_names(model: nn.Module) -> list[str]:
    """The last parts of the names of a model's linear layers, e.g. ``query``, ``value``, ``dense``."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) and name})


def _check_targets(model: nn.Module, targets: tuple[str, ...] | str | None) -> None:
    """Refuse target names that match no module of ``model`` (peft's own error does not name the flag)."""
    if targets is None or targets == ALL_LINEAR:
        return
    names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise HardnegError(
            f"{TARGETS_FLAG} {','.join(targets)}: no module named {', '.join(map(repr, missing))} in the "
            f"{type(model).__name__}; its linear layers are named {', '.join(_linear_names(model))} "
            f"(or give {ALL_LINEAR})")


#: attention query / value projections as encoder families name them, for model types peft has no defaults for
#: (MPNet: q, v; DistilBERT: q_lin, v_lin; ModernBERT: the fused Wqkv)
ATTENTION_PROJECTIONS = (("query", "value"), ("q_proj", "v_proj"), ("q", "v"), ("q_lin", "v_lin"),
                         ("query_proj", "value_proj"), ("Wqkv",), ("qkv_proj",), ("query_key_value",), ("in_proj",))


def default_targets(transformer: nn.Module) -> list[str] | None:
    """``None`` (peft's defaults) for a model type peft knows, else the first of :data:`ATTENTION_PROJECTIONS`
    whose names are all linear layers of ``transformer``; an error naming the flag when none fits."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    model_type = getattr(getattr(transformer, "config", None), "model_type", None)
    if model_type in PEFT_DEFAULTS:
        return None
    linear = set(_linear_names(transformer))
    found = next((list(names) for names in ATTENTION_PROJECTIONS if linear >= set(names)), None)
    if found is None:
        raise HardnegError(f"{TARGETS_FLAG}: no default LoRA targets for this {model_type} model; name its "
                           f"modules (linear layers: {', '.join(sorted(linear))}) or give {ALL_LINEAR}")
    return found


def _wrap(transformer: nn.Module, settings: LoraSettings, input_grads: bool) -> nn.Module:
    """``transformer`` inside a peft model with fresh LoRA adapters (base weights frozen)."""
    from peft import LoraConfig, get_peft_model  # heavy (seconds): only when adapters are made

    _check_targets(transformer, settings.targets)
    if settings.targets is None:
        targets = default_targets(transformer)
    else:
        targets = list(settings.targets) if isinstance(settings.targets, tuple) else settings.targets
    config = LoraConfig(r=settings.r, lora_alpha=settings.lora_alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none")
    if input_grads:  # gradient checkpointing over frozen embeddings: the adapters still need a gradient path
        transformer.enable_input_require_grads()
    try:
        with _quiet_peft():
            return get_peft_model(transformer, config)
    except ValueError as exc:  # e.g. a target that is not a layer peft can adapt
        model_type = getattr(getattr(transformer, "config", None), "model_type", "?")
        raise HardnegError(f"{TARGETS_FLAG}: LoRA cannot adapt this {model_type} model: {exc}; name its modules, "
                           f"e.g. {TARGETS_FLAG} {','.join(_linear_names(transformer)[:4])} "
                           f"(linear layers: {', '.join(_linear_names(transformer))}) or {ALL_LINEAR}") from exc


def _with_transformer(tower: nn.Module, transformer: nn.Module) -> nn.Module:
    if isinstance(tower, HeadTower):
        tower.transformer = transformer
        return tower
    return transformer


def add_adapter(tower: nn.Module, settings: LoraSettings, input_grads: bool = False) -> nn.Module:
    """The tower with LoRA adapters on its transformer; only the adapters train (a head stays frozen)."""
    tower.requires_grad_(False)
    return _with_transformer(tower, _wrap(transformer_of(tower), settings, input_grads))


def merged_copy(tower: nn.Module) -> nn.Module:
    """A copy of an adapted tower with the adapters merged into its base weights (the tower is left as is)."""
    clone = copy.deepcopy(tower)
    return _with_transformer(clone, transformer_of(clone).merge_and_unload())


def adapter_state(tower: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of an adapted tower (peft's names)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer_of(tower))


def load_adapter_state(tower: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put saved adapter weights into an adapted tower; every adapter weight must be given."""
    from peft import set_peft_model_state_dict

    expected = set(adapter_state(tower))
    if set(state) != expected:
        odd = sorted(expected ^ set(state))
        raise HardnegError(f"the adapter weights do not fit this model's adapters ({len(odd)} names differ, "
                           f"e.g. {odd[0]})")
    set_peft_model_state_dict(transformer_of(tower), state)


def _sides(encoder: Any) -> dict[str, nn.Module]:
    """``{side: tower}`` of an encoder's distinct towers (a shared encoder: ``doc`` only)."""
    towers = {"doc": encoder.doc_model}
    if encoder.query_model is not encoder.doc_model:
        towers["query"] = encoder.query_model
    return towers


def adapted_sides(encoder: Any) -> dict[str, nn.Module]:
    """``{side: tower}`` of an encoder's towers that carry adapters."""
    return {side: tower for side, tower in _sides(encoder).items() if is_lora(tower)}


def apply_lora(encoder: Any, settings: LoraSettings, base_model: str, *, train_doc: bool = True,
               input_grads: bool = False) -> None:
    """Put LoRA adapters on ``encoder``'s trained towers in place (a ``DualEncoder``): the shared tower, or
    the query tower and, with ``train_doc``, the document tower. Records ``settings`` as ``encoder.lora``
    and ``base_model`` (the name or folder the encoder was loaded from) as ``encoder.lora_base``, which an
    adapter save names. ``input_grads``: under gradient checkpointing (the embeddings are frozen)."""
    if settings.r < 1:
        raise HardnegError(f"--lora-r must be at least 1 to add adapters, not {settings.r}")
    shared = encoder.query_model is encoder.doc_model
    if shared or train_doc:
        encoder.doc_model = add_adapter(encoder.doc_model, settings, input_grads)
    if shared:
        encoder.query_model = encoder.doc_model
    else:
        encoder.query_model = add_adapter(encoder.query_model, settings, input_grads)
    encoder.lora = settings
    path = Path(base_model).expanduser()
    encoder.lora_base = str(path.resolve()) if path.is_dir() else str(base_model)


def lora_record(encoder: Any) -> dict[str, Any]:
    """What ``hardneg_lora.json`` says: the settings, the adapted towers, the trainable share, the base model."""
    towers = _sides(encoder)
    total = sum(p.numel() for t in towers.values() for p in t.parameters())
    trainable = sum(p.numel() for t in towers.values() for p in t.parameters() if p.requires_grad)
    settings = asdict(encoder.lora)
    settings["targets"] = list(settings["targets"]) if isinstance(settings["targets"], tuple) else settings["targets"]
    adapted = adapted_sides(encoder)
    first = next(iter(adapted.values()), None)
    if first is not None:  # the targets peft resolved (its defaults for the model type, all-linear's list)
        resolved = transformer_of(first).peft_config["default"].target_modules
        settings["resolved_targets"] = sorted(resolved) if not isinstance(resolved, str) else resolved
    settings["lora_alpha"] = encoder.lora.lora_alpha
    return {"lora": settings, "adapted": sorted(adapted), "shared": "query" not in towers,
            "trainable_params": trainable, "total_params": total,
            "trainable_share": trainable / total if total else 0.0, "base_model": encoder.lora_base}


def write_lora_record(folder: Path, encoder: Any) -> None:
    write_json(Path(folder) / LORA_FILE, lora_record(encoder))


def read_lora_record(folder: str | Path) -> dict[str, Any] | None:
    """A model folder's ``hardneg_lora.json``, or ``None`` when it was not trained with LoRA."""
    path = Path(folder) / LORA_FILE
    return read_json(path) if path.is_file() else None


def is_adapter_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds adapters alone (``--lora-save adapter``), to be merged onto a base model."""
    record = read_lora_record(folder) if Path(folder).is_dir() else None
    return record is not None and record.get("lora", {}).get("save") == "adapter"


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft's wrappers ask transformers 5 for ``is_gradient_checkpointing``, deprecated there: a FutureWarning on
    every adapter made or loaded that no user can act on; silenced around those calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def save_adapter(tower: nn.Module, folder: Path) -> None:
    """peft's adapter folder of an adapted tower: ``adapter_config.json`` and ``adapter_model.safetensors``."""
    transformer_of(tower).save_pretrained(str(folder), safe_serialization=True)


def merge_adapter(tower: nn.Module, folder: Path) -> nn.Module:
    """``tower`` with the adapter saved in ``folder`` merged into its weights."""
    from peft import PeftModel

    try:
        with _quiet_peft():
            wrapped = PeftModel.from_pretrained(transformer_of(tower), str(folder), is_trainable=False)
    except Exception as exc:
        raise HardnegError(f"{folder}: could not load the LoRA adapter onto its base model: {exc}") from exc
    return _with_transformer(tower, wrapped.merge_and_unload())


def load_merged(loader: Any, folder: Path, settings: dict[str, Any], shared: bool | None, query_dir: str,
                **kwargs: Any) -> Any:
    """The encoder an adapter folder describes: its base model loaded by ``loader`` (``DualEncoder``) with the
    folder's encoder ``settings`` (its ``hardneg_encoder.json``; ``kwargs`` given explicitly win), each
    adapter merged into its tower (the query tower's from ``query_dir``). ``shared``: as
    ``DualEncoder.from_pretrained``'s (``False`` splits a shared encoder into two towers, ``True`` keeps the
    document tower alone)."""
    record = read_lora_record(folder) or {}
    base = record.get("base_model")
    if not base:
        raise HardnegError(f"{folder / LORA_FILE}: names no base_model; the adapters cannot be loaded without it")
    saved_shared = bool(settings.get("shared", True))
    keys = ("pooling", "normalize", "query_max_length", "doc_max_length", "query_prefix", "doc_prefix")
    given = {k: v for k, v in kwargs.items() if v is not None}
    encoder = loader.from_pretrained(base, shared=saved_shared, **{**{k: settings.get(k) for k in keys}, **given})
    adapted = record.get("adapted", [])
    if "doc" in adapted:
        encoder.doc_model = merge_adapter(encoder.doc_model, folder)
        if saved_shared:
            encoder.query_model = encoder.doc_model
    if "query" in adapted:
        encoder.query_model = merge_adapter(encoder.query_model, folder / query_dir)
    if shared is False:
        encoder = encoder.with_separate_towers()
    elif shared and not saved_shared:
        encoder = loader(encoder.doc_model, encoder.tokenizer, replace(encoder.config, shared=True))
    encoder.source = str(folder)
    return encoder


__all__ = ["ALL_LINEAR", "ATTENTION_PROJECTIONS", "LORA_FILE", "LORA_SAVES", "LoraSettings", "adapted_sides",
           "adapter_state", "add_adapter", "apply_lora", "default_targets", "is_adapter_folder", "is_lora",
           "load_adapter_state", "load_merged", "lora_record", "merge_adapter", "merged_copy", "parse_targets",
           "read_lora_record", "save_adapter", "transformer_of", "write_lora_record"]
