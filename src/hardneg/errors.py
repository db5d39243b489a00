"""The project's own error types.

Every problem a user can fix (a malformed line, a missing file, a mismatched
artifact) is raised as a :class:`HardnegError`. The CLI prints its message
without a Python traceback (``--debug`` shows it) and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path


class HardnegError(Exception):
    """A problem the user can act on; the message says what and how."""

    exit_code = 2


class InputError(HardnegError):
    """Bad input data: names the file and (where known) the line, and the fix."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.hint = hint
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
            where += ": "
        text = where + message
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class MismatchError(HardnegError):
    """Two artifacts that must agree (tokenizer, corpus, dimension …) do not."""


class ModelNotFoundError(HardnegError):
    """A model name/path/hub id could not be resolved (e.g. offline)."""


class WriteError(HardnegError):
    """An artifact could not be written (disk full, read-only or forbidden folder …).

    Raised after the partial output has been removed: nothing half-written is left
    behind under the artifact's name.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, errno: int | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.errno = errno
        super().__init__(message)
