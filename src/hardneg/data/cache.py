"""The cache folder: ``$HARDNEG_CACHE_DIR``, else ``~/.cache/hardneg``.

Everything hardneg derives from its inputs lives under one cache folder: unpacked dataset archives
(``archives/``, :mod:`hardneg.data.formats.archive`), tokenized stores, embeddings and indexes
(:mod:`hardneg.artifacts`), BM25 indexes, teacher scores. Commands take ``--cache-dir`` (training
and recipes a ``cache_dir`` setting) and pass it down to every one of them; this module only says
where the folder is when none is given. It sits at the bottom of the layers so that loading a
dataset can reach it without importing the model stack.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$HARDNEG_CACHE_DIR``, else ``~/.cache/hardneg``."""
    env = os.environ.get("HARDNEG_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "hardneg"


def cache_dir_or_default(cache_dir: str | os.PathLike[str] | None) -> Path:
    """``cache_dir`` as a path, or :func:`default_cache_dir` when it is not given."""
    return Path(cache_dir) if cache_dir else default_cache_dir()


__all__ = ["cache_dir_or_default", "default_cache_dir"]
