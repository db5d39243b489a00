"""Strict line reading for every text reader, and the ``file:line`` errors they share.

Everything streams line by line (MS MARCO has 8.8M passages): files are opened
in binary and every line is decoded as strict UTF-8 on its own, so a bad byte
is reported with its line number. Blank lines are skipped silently and a UTF-8
BOM at the start of a file is tolerated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from hardneg.errors import InputError

__all__ = [
    "MAX_LINE_BYTES",
    "empty_corpus_error",
    "empty_doc_error",
    "empty_query_error",
    "first_line_of",
    "iter_text_lines",
]

_BOM = b"\xef\xbb\xbf"
#: the longest line read, in bytes: a longer one (a binary file, a file without newlines) is an
#: error instead of an unbounded allocation; the longest MS MARCO document is a few MB
MAX_LINE_BYTES = 64 << 20


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every non-blank line of a UTF-8 text file (public helper).

    A missing file, bytes that are not UTF-8 and a line longer than
    :data:`MAX_LINE_BYTES` raise :class:`~hardneg.errors.InputError` naming ``file:line``.
    Lines are split on ``\\n`` only (so U+2028 inside JSON strings is harmless),
    ``\\r\\n`` endings are accepted, a BOM before the first line is dropped; the text
    comes without its line ending.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise InputError(
            "file not found", path=path, hint="check the path or the dataset folder layout"
        ) from None
    except IsADirectoryError:
        raise InputError("expected a file but found a directory", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}", path=path) from None
    limit = MAX_LINE_BYTES
    with fh:
        lineno = 0
        while True:
            try:
                raw = fh.readline(limit + 1)
            except OSError as exc:
                raise InputError(f"cannot read file: {exc.strerror}", path=path, line=lineno + 1) from None
            if not raw:
                break
            lineno += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise InputError(
                    f"line is longer than {limit} bytes",
                    path=path,
                    line=lineno,
                    hint="is this a text file with one record per line? (a binary or compressed"
                    " file, or one without line breaks, reads as one enormous line)",
                )
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.start + 1].hex()
                raise InputError(
                    f"line is not valid UTF-8 (byte 0x{bad} at byte offset {exc.start})",
                    path=path,
                    line=lineno,
                    hint="re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8",
                ) from None
            line = line.rstrip("\r\n")
            if not line or line.isspace():
                continue
            yield lineno, line


def first_line_of(path: Path, key_of_line: Callable[[str], str | None], key: str) -> int | None:
    """Re-scan ``path`` for the first line whose key is ``key`` (only used on error paths)."""
    try:
        for lineno, line in iter_text_lines(path):
            try:
                if key_of_line(line) == key:
                    return lineno
            except Exception:
                continue
    except InputError:
        return None
    return None


def empty_doc_error(path: Path, lineno: int, doc_id: str) -> InputError:
    return InputError(
        f"document {doc_id!r} is empty (no title and no text)",
        path=path,
        line=lineno,
        hint="remove the line or fill in the document's text",
    )


def empty_corpus_error(path: Path) -> InputError:
    return InputError(
        "corpus contains no documents",
        path=path,
        hint="the file is empty or only has blank lines; point at the right corpus file",
    )


def empty_query_error(path: Path, lineno: int, qid: str) -> InputError:
    return InputError(
        f"query {qid!r} has empty text",
        path=path,
        line=lineno,
        hint="remove the line or give the query its text",
    )
