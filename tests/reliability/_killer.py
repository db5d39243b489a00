"""Run ``hardneg`` and SIGKILL it at a chosen point: ``python _killer.py CONTROL.json -- <hardneg args>``.

CONTROL.json: ``{"kill_at": N, "delay": S, "count_file": PATH, "encode_checkpoint_seconds": X}``.

* ``kill_at`` N > 0: the process sends itself SIGKILL at its N-th storage event (a file opened for
  writing, a rename, an fsync, a folder made or removed, an array/tensor/index saved, a memmap
  flushed). These are exactly the moments where a crash can leave a half-written artifact, so a
  random N hits them far more often than a random time would. It is a real SIGKILL: no handler,
  ``finally`` or ``atexit`` runs.
* ``delay`` S > 0: a timer thread sends SIGKILL S seconds after hardneg's imports (a random time).
* ``count_file``: on a normal exit, the number of storage events is written there (so the caller
  can pick kill points of an uninterrupted run).
"""

from __future__ import annotations

import builtins
import json
import os
import signal
import sys
import threading

_events = 0
_kill_at = 0


def _event() -> None:
    global _events
    _events += 1
    if _kill_at and _events == _kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


def _wrap(owner, name: str, pred=None) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if pred is None or pred(*args, **kwargs):
            _event()
        return original(*args, **kwargs)

    wrapper.__wrapped__ = original
    setattr(owner, name, wrapper)


def _writes(file, mode="r", *args, **kwargs) -> bool:
    return isinstance(mode, str) and any(c in mode for c in "wax+")


def install() -> None:
    import numpy as np

    _wrap(builtins, "open", _writes)
    for name in ("replace", "rename", "fsync", "mkdir", "unlink", "rmdir", "truncate"):
        _wrap(os, name)
    _wrap(np, "save")
    _wrap(np.lib.format, "open_memmap")
    _wrap(np.memmap, "flush")
    import torch

    _wrap(torch, "save")
    import safetensors.torch

    _wrap(safetensors.torch, "save_file")
    import faiss

    _wrap(faiss, "write_index")


def main() -> None:
    global _kill_at
    split = sys.argv.index("--")
    control = json.loads(open(sys.argv[1], encoding="utf-8").read())
    args = sys.argv[split + 1 :]
    install()
    import hardneg.cli as cli
    import hardneg.index.encode as encode

    if control.get("encode_checkpoint_seconds") is not None:  # checkpoint often: resume points to hit
        import inspect

        inspect.unwrap(encode.encode_store).__kwdefaults__["checkpoint_seconds"] = float(
            control["encode_checkpoint_seconds"])
    count_file = control.get("count_file")
    if count_file:
        import atexit

        def report() -> None:
            fd = os.open(count_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, str(_events).encode())
            os.close(fd)

        atexit.register(report)
    _kill_at = int(control.get("kill_at") or 0)
    if control.get("delay"):
        timer = threading.Timer(float(control["delay"]), lambda: os.kill(os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()
    sys.argv = ["hardneg", *args]
    cli.main()


if __name__ == "__main__":
    main()
