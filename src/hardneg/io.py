"""Atomic file writing and small JSON helpers.

Convention: every artifact is written to ``name.tmp-<pid>`` first, fsync'ed,
then renamed over ``name``; a crash never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from hardneg.errors import HardnegError, WriteError

#: errno values that mean "this output cannot be written here" (not a bug in the caller)
WRITE_ERRNOS = frozenset(
    e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES, errno.EPERM,
                errno.EFBIG, errno.EIO, errno.ENAMETOOLONG)
    if e is not None
)

_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write to another folder",
    errno.EFBIG: "the file grew past the size limit (disk full or ulimit -f): free space or write elsewhere",
    errno.EROFS: "the folder is on a read-only file system: write to another folder",
    errno.EACCES: "no permission to write there: fix the folder's permissions or write elsewhere",
    errno.EPERM: "no permission to write there: fix the folder's permissions or write elsewhere",
    errno.EIO: "the disk reported an I/O error",
}
if getattr(errno, "EDQUOT", None) is not None:
    _WRITE_HINTS[errno.EDQUOT] = "the disk quota is exhausted: free some space or write elsewhere"


def write_error(exc: BaseException, path: str | Path, what: str = "output") -> WriteError:
    """A :class:`~hardneg.errors.WriteError` naming ``path`` and what to do, from a low-level failure."""
    code = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    if code is None:  # a C/C++/Rust writer: recognise the failure from its message
        text = str(exc).lower()
        for marker, guess in (("no space left", errno.ENOSPC), ("file too large", errno.EFBIG),
                              ("read-only file system", errno.EROFS), ("permission denied", errno.EACCES),
                              ("disk quota", getattr(errno, "EDQUOT", errno.ENOSPC))):
            if marker in text:
                code = guess
                break
    hint = _WRITE_HINTS.get(code, "check that the folder exists, is writable and has free space")
    return WriteError(f"{path}: could not write the {what} ({reason}); {hint}. "
                      "Nothing was left half-written there.", path=path, errno=code)


def is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a storage failure (disk full, read-only, no permission …)."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return True
    # C/C++/Rust writers (faiss, torch.save, safetensors) report a full disk as RuntimeError & co.
    text = str(exc).lower()
    return not isinstance(exc, HardnegError) and any(
        m in text for m in ("no space left", "file too large", "read-only file system", "permission denied",
                            "disk quota", "failed writing", "write failed", "error writing",
                            "could not write", "unable to write", "iostream error", "ioerror(")
    )


@contextlib.contextmanager
def writing(path: str | Path, what: str = "output") -> Iterator[None]:
    """Turn a storage failure inside the block into a :class:`WriteError` naming ``path``.

    Other exceptions (bugs, bad input, interruptions) pass through unchanged.
    """
    try:
        yield
    except HardnegError:
        raise
    except Exception as exc:
        if is_write_failure(exc):
            raise write_error(exc, path, what) from exc
        raise


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync and rename it to ``path``.

    On any exception the temp file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    tmp = _tmp_name(path)
    kwargs: dict[str, Any] = {}
    if "b" not in mode:
        kwargs["encoding"] = encoding
        kwargs["newline"] = "\n"
    try:
        with writing(path, "file"):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, mode, **kwargs) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as pretty JSON, atomically."""
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def commit_dir(tmp_dir: str | Path, final_dir: str | Path) -> None:
    """Rename a fully written temp directory into place (replacing an old one)."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    with writing(final_dir, "folder"):
        _fsync_tree(tmp_dir)
        if final_dir.exists():
            old = final_dir.with_name(f"{final_dir.name}.old-{os.getpid()}")
            os.replace(final_dir, old)
            try:
                os.replace(tmp_dir, final_dir)
            except BaseException:
                os.replace(old, final_dir)  # put the previous complete folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` (and the folders) before it is published by a rename."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(root))


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) while the block runs.

    Two processes building the same cached artifact then take turns: the second
    waits, then finds the artifact finished instead of writing into the same
    temporary files.
    """
    import fcntl

    path = Path(path)
    with writing(path, "lock file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
