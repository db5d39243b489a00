"""One process at a time per output: an exclusive, non-blocking lock beside each output folder or file.

Cluster jobs get requeued and sometimes start twice; two processes writing one output folder would
interleave checkpoints, partial files and renames. Every command that writes an output (``train``,
``mine``, ``encode``, ``index``, ``experiment``) holds :func:`output_lock` for its whole run.

The lock is ``<out>.run.lock`` *beside* the output (never inside it: several outputs are published by an
atomic rename of a temporary folder, and a folder that must be empty to start must stay so; not
``<out>.lock``, the blocking :func:`hardneg.io.file_lock` that ``encode_store`` and the caches take
inside a run: a second flock on that file from the same process would wait for itself). It is
``fcntl.flock(LOCK_EX | LOCK_NB)`` on that file: the kernel drops the lock when its process dies, so a
lock left by a killed (even SIGKILLed) process is simply taken over, and a second live process is
refused at once with :class:`OutputLockedError`, naming the holder (host, pid, start time, command),
which is written into the file as JSON once the lock is held. The file is removed on release (after
checking, under the lock, that the path still names the locked file; a process that locked a file
removed meanwhile retries on the new one).

Under ``torchrun`` only rank 0 takes the lock (every rank of one job writes the same output by
design); a second job's rank 0 is refused and torchrun ends that job. flock on NFS works with
Linux NFSv4 clients (it is turned into a byte-range lock); on file systems without locking the lock
is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from hardneg.errors import HardnegError

__all__ = ["OutputLockedError", "holder_alive", "lock_path_for", "output_lock"]

logger = logging.getLogger("hardneg")


class OutputLockedError(HardnegError):
    """Another live process holds the output's lock."""

    def __init__(self, message: str, *, path: str | Path, holder: dict | None) -> None:
        self.path = str(path)
        self.holder = holder
        super().__init__(message)


def lock_path_for(out: str | Path) -> Path:
    """``runs/star`` -> ``runs/star.run.lock``; ``runs/hard.tsv`` -> ``runs/hard.tsv.run.lock`` (beside it)."""
    out = Path(os.path.abspath(os.fspath(out)))
    return out.with_name(f"{out.name}.run.lock")


def _is_rank0() -> bool:
    """Rank 0 of a torchrun job (read from the environment: the lock is taken before the group joins)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _holder_text(holder: dict | None) -> str:
    if not holder:
        return "another process (its details are not written yet)"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}, "
            f"running `{holder.get('command')}`")


def _read_holder(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def output_lock(out: str | Path, command: str | None = None, *, every_rank: bool = False) -> Iterator[Path | None]:
    """Hold the exclusive lock of the output ``out`` (a folder or file) while the block runs.

    Raises :class:`OutputLockedError` at once when another live process holds it. ``command`` is
    recorded for the message a second process gets (default: this process's command line). Under
    torchrun only rank 0 locks, unless ``every_rank`` (each rank writes an output of its own, e.g. its
    shard). Yields the lock file's path (``None`` when this process does not lock: a torchrun rank
    other than 0, or a file system without locks)."""
    import fcntl

    if not every_rank and not _is_rank0():
        yield None
        return
    path = lock_path_for(out)
    command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _read_holder(path)
                raise OutputLockedError(
                    f"{out} is in use: {_holder_text(holder)} is writing it (lock {path}). Wait for it to "
                    "finish or stop it; if that job is a requeued duplicate, cancel one of the two. A lock "
                    "left by a process that died is taken over automatically.",
                    path=path, holder=holder) from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                logger.warning("%s: this file system does not support locks; %s is not protected against "
                               "a second process", path, out)
                yield None
                return
            raise
        try:  # the path may have been removed (a holder releasing) between open and flock: retry
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still held: nobody else holds this file, and a newcomer re-checks the inode
        os.close(fd)


def holder_alive(out: str | Path) -> bool | None:
    """Whether a live process holds the lock of ``out``, read without touching the lock (a probe that took it,
    even for a moment, could refuse a run starting then): ``False`` when there is no lock file (nothing runs, or
    what ran ended cleanly) or its holder ran on this host and its pid is gone (killed: the kernel dropped its
    lock, the file stayed); ``True`` when that pid is alive; ``None`` when the holder is on another host (or not
    written yet), where this process cannot tell."""
    path = lock_path_for(out)
    holder = _read_holder(path)
    if holder is None:
        return None if path.exists() else False
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
