"""Quiet third-party output, so hardneg's own progress bars and messages are what a run prints.

transformers draws a "Loading weights" bar for every model it loads and a "Writing model shards" bar for
every one it saves (dozens in an experiment), and bm25s sets its logger to DEBUG when imported, so its
"Building index from IDs objects" reaches any handler on the root logger. :func:`quiet_libraries` turns
those off once: the CLI calls it at start, a library caller may call it too. hardneg's own bars are plain
tqdm (``--quiet`` turns them off) and are not touched.

It works whether or not the libraries are imported yet, and imports none of the heavy ones (the CLI's
``--help`` stays fast): transformers reads its bar switch from huggingface_hub when imported, and its log
level from ``TRANSFORMERS_VERBOSITY``. An explicit ``HF_HUB_DISABLE_PROGRESS_BARS`` or
``TRANSFORMERS_VERBOSITY`` in the environment wins.
"""

from __future__ import annotations

import logging
import os
import sys

#: loggers of libraries hardneg calls: only their errors are shown
NOISY_LOGGERS = ("httpx", "httpcore", "huggingface_hub", "transformers", "sentence_transformers", "faiss", "bm25s")


class _ErrorsOnly(logging.Filter):
    """Drops records below ERROR: unlike a logger's level, a library cannot reset it when imported (bm25s
    sets its logger to DEBUG at import)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def quiet_libraries(*, downloads: bool = True) -> None:
    """Silence third-party progress bars and every log record of theirs below ERROR.

    ``downloads``: keep huggingface_hub's download bars (the first use of a hub model can take minutes;
    hardneg's ``--quiet`` passes False). Calling it again is harmless.
    """
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        if not any(isinstance(f, _ErrorsOnly) for f in logger.filters):
            logger.addFilter(_ErrorsOnly())
    if "transformers" in sys.modules:  # imported already: its own switches (set at import otherwise)
        from transformers.utils import logging as transformers_logging

        if "TRANSFORMERS_VERBOSITY" not in os.environ:
            transformers_logging.set_verbosity_error()
        if "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ:
            transformers_logging.disable_progress_bar()
    else:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _quiet_hub_bars(downloads)


def _quiet_hub_bars(downloads: bool) -> None:
    """All of huggingface_hub's bars off (transformers copies that switch when imported), then its download
    group (bars named ``huggingface_hub.*``) back on if asked."""
    if "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:  # the user's choice; setting it would only warn
        return
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError:  # pragma: no cover - a dependency of transformers
        return
    disable_progress_bars()
    if downloads:
        enable_progress_bars("huggingface_hub")
