"""The sentence-transformers folder format: what hardneg reads from one and writes into its saves.

A sentence-transformers folder lists its modules in ``modules.json`` (Transformer → Pooling →
optional Dense / LayerNorm → optional Normalize) and states the max length in
``sentence_bert_config.json`` and the prompts in ``config_sentence_transformers.json``.
:func:`read_sentence_transformers_config` reads pooling, normalisation, max length and prompts
from such a folder (legacy and sentence-transformers 6 layouts); :func:`write_sentence_transformers_files`
writes them beside a saved tower, so that ``SentenceTransformer(folder)`` loads what hardneg saved.
The Dense / LayerNorm head modules are read and written with the tower that owns them
(:mod:`hardneg.model.drhard`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from hardneg.errors import HardnegError
from hardneg.io import write_json

#: the pooling modes hardneg runs (and reads from a sentence-transformers Pooling module)
POOLINGS = ("cls", "mean")


def _pooling_mode(cfg_file: Path) -> str:
    """The pooling mode a Pooling module's ``config.json`` states (``cls`` or ``mean``)."""
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
        raise HardnegError(f"{cfg_file}: pooling mode {mode!r} is not supported (use cls or mean)")
    return mode


def _max_length(folder: Path) -> int | None:
    """``sentence_bert_config.json``'s ``max_seq_length``, else the tokenizer's ``model_max_length``."""
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        max_len = json.loads(sbert.read_text(encoding="utf-8")).get("max_seq_length")
        if max_len:
            return int(max_len)
    tok_cfg = folder / "tokenizer_config.json"
    if tok_cfg.is_file():
        max_len = json.loads(tok_cfg.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(max_len, int) and max_len < 100_000:
            return max_len
    return None


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
            if (path / "config.json").is_file():
                out["pooling"] = _pooling_mode(path / "config.json")
        elif kind.endswith("Normalize"):
            out["normalize"] = True
    max_len = _max_length(folder)
    if max_len:
        out["max_length"] = max_len
    st_cfg = folder / "config_sentence_transformers.json"
    if st_cfg.is_file():
        st = json.loads(st_cfg.read_text(encoding="utf-8"))
        prompts = st.get("prompts") or {}
        # as encode_query / encode_document pick them: the side's own prompt, else the default prompt
        default = prompts.get(st.get("default_prompt_name") or "") or ""
        query_prompt = prompts.get("query") or default
        if query_prompt:
            out["query_prefix"] = query_prompt
        doc_prompt = prompts.get("document") or prompts.get("passage") or prompts.get("corpus") or default
        if doc_prompt:
            out["doc_prefix"] = doc_prompt
    return out


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


__all__ = ["POOLINGS", "read_sentence_transformers_config", "write_sentence_transformers_files"]
