"""Unique-id bookkeeping for the readers: a compact id set and the duplicate-id errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from hardneg.data.lines import first_line_of
from hardneg.errors import InputError

__all__ = ["IdSet", "confirm_clashes", "duplicate_error", "note_id"]


class IdSet:
    """A set of string ids that costs ~8 bytes an id (MS MARCO's 8.8M passage ids: ~70 MB, not ~700 MB).

    Ids are kept as 64-bit hashes: the current block exactly (a dict, bounded by :attr:`BLOCK`), older
    blocks as sorted numpy runs merged as they grow. :meth:`add` reports a repeat within the block at
    once; repeats of older blocks come out of :meth:`flush`, vectorised, as ``(id, line)`` candidates
    the caller confirms (two different ids may share a hash). ``in`` may, with probability about
    ``len / 2**64``, say yes for an id never added.
    """

    BLOCK = 1 << 16

    def __init__(self) -> None:
        self._block: dict[int, tuple[str, int]] = {}
        self._runs: list[np.ndarray] = []
        self._n = 0

    def __len__(self) -> int:
        return self._n + len(self._block)

    def __contains__(self, key: object) -> bool:
        h = hash(key)
        if h in self._block:
            return True
        for run in self._runs:
            i = int(np.searchsorted(run, h))
            if i < len(run) and run[i] == h:
                return True
        return False

    def __iter__(self):
        raise TypeError("an IdSet keeps hashes only; it cannot list its ids")

    @property
    def block_full(self) -> bool:
        return len(self._block) >= self.BLOCK

    def add(self, key: str, line: int = 0) -> int | None:
        """Add ``key`` (read on ``line``); the line of an equal key earlier in this block, else ``None``."""
        h = hash(key)
        prev = self._block.get(h)
        if prev is not None and prev[0] == key:
            return prev[1]
        self._block[h] = (key, line)
        if len(self._block) >= 4 * self.BLOCK:  # a caller that does not check repeats never flushes
            self.flush()
        return None

    def flush(self) -> list[tuple[str, int]]:
        """Move the block into the sorted runs; ``(id, line)`` of its ids whose hash an older block has."""
        if not self._block:
            return []
        hashes = np.fromiter(self._block.keys(), dtype=np.int64, count=len(self._block))
        hit = np.zeros(len(hashes), dtype=bool)
        for run in self._runs:
            pos = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            hit |= run[pos] == hashes
        items = list(self._block.values())
        clashes = [items[i] for i in np.flatnonzero(hit)]
        self._runs.append(np.sort(hashes))
        self._n += len(hashes)
        self._block = {}
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            last = self._runs.pop()
            self._runs[-1] = np.sort(np.concatenate([self._runs[-1], last]), kind="stable")
        return clashes


def note_id(ids: set[str] | IdSet, path: Path, lineno: int, key: str, what: str,
            key_of_line: Callable) -> None:
    """Record ``key`` in ``ids`` (a set or an :class:`IdSet`); a repeated id is an error."""
    if isinstance(ids, IdSet):
        if ids.add(key, lineno) is not None:
            raise duplicate_error(path, lineno, key, what, key_of_line)
        if ids.block_full:
            confirm_clashes(ids.flush(), path, what, key_of_line)
        return
    if key in ids:
        raise duplicate_error(path, lineno, key, what, key_of_line)
    ids.add(key)


def confirm_clashes(clashes: list[tuple[str, int]], path: Path, what: str, key_of_line: Callable) -> None:
    """A repeated hash is a duplicate when the id itself is on an earlier line (else two ids collided)."""
    for key, lineno in sorted(clashes, key=lambda c: c[1]):
        first = first_line_of(path, key_of_line, key)
        if first is not None and first < lineno:
            raise duplicate_error(path, lineno, key, what, key_of_line)


def duplicate_error(path: Path, lineno: int, key: str, what: str, key_of_line: Callable) -> InputError:
    """The error for id ``key`` repeated on ``lineno``, naming the line it first appeared on."""
    first = first_line_of(path, key_of_line, key)
    seen = f" (first on line {first})" if first is not None and first != lineno else ""
    return InputError(
        f"duplicate {what} id {key!r}{seen}",
        path=path,
        line=lineno,
        hint=f"{what} ids must be unique; remove or rename one of the lines",
    )
