"""Strict line reading for every text reader, and the ``file:line`` errors they share.

Everything streams line by line (MS MARCO has 8.8M passages): files are opened
in binary and every line is decoded as strict UTF-8 on its own, so a bad byte
is reported with its line number. Blank lines are skipped silently and a UTF-8
BOM at the start of a file is tolerated. A file named ``X.gz``, ``X.bz2`` or
``X.xz`` is decompressed on the fly (every guarantee above holds for its
decompressed lines) and read as ``X``; its errors still name the real file.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from hardneg.errors import InputError

__all__ = [
    "COMPRESSED_SUFFIXES",
    "MAX_LINE_BYTES",
    "empty_corpus_error",
    "empty_doc_error",
    "empty_queries_error",
    "empty_query_error",
    "find_variant",
    "first_line_of",
    "iter_stream_lines",
    "iter_text_lines",
    "logical_name",
    "logical_suffix",
    "open_binary",
]

#: compressed file suffixes read transparently, and their openers
_OPENERS: dict[str, Callable[[Path], IO[bytes]]] = {
    ".gz": lambda p: gzip.open(p, "rb"),
    ".bz2": lambda p: bz2.open(p, "rb"),
    ".xz": lambda p: lzma.open(p, "rb"),
}
COMPRESSED_SUFFIXES = tuple(_OPENERS)
#: what a decompressor raises on corrupt or truncated input
_DECOMPRESS_ERRORS = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)
#: leading bytes of compressed files, to say so when one is read as text
_MAGIC = {b"\x1f\x8b": ".gz", b"BZh": ".bz2", b"\xfd7zXZ\x00": ".xz", b"PK\x03\x04": ".zip"}

_BOM = b"\xef\xbb\xbf"
#: the longest line read, in bytes: a longer one (a binary file, a file without newlines) is an
#: error instead of an unbounded allocation; the longest MS MARCO document is a few MB
MAX_LINE_BYTES = 64 << 20


def logical_name(path: str | Path) -> str:
    """The file name without a compression suffix: ``corpus.jsonl.gz`` -> ``corpus.jsonl``."""
    name = Path(path).name
    for suffix in COMPRESSED_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def logical_suffix(path: str | Path) -> str:
    """The lower-cased suffix of :func:`logical_name`: ``corpus.jsonl.gz`` -> ``.jsonl``."""
    return Path(logical_name(path)).suffix.lower()


def find_variant(folder: Path, name: str) -> Path | None:
    """``folder/name`` or else its compressed ``name.gz|.bz2|.xz`` (the plain file wins), or ``None``."""
    for candidate in (name, *(name + s for s in COMPRESSED_SUFFIXES)):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def open_binary(path: str | Path) -> IO[bytes]:
    """Open ``path`` for binary reading, decompressing ``.gz``/``.bz2``/``.xz``; errors name the file."""
    path = Path(path)
    opener = _OPENERS.get(path.suffix.lower())
    try:
        if not path.is_file() and path.exists():
            raise IsADirectoryError
        return opener(path) if opener is not None else open(path, "rb")
    except FileNotFoundError:
        raise InputError(
            "file not found", path=path, hint="check the path or the dataset folder layout"
        ) from None
    except IsADirectoryError:
        raise InputError("expected a file but found a directory", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}", path=path) from None


def _read_error(exc: Exception, path: Path | str, lineno: int) -> InputError:
    if isinstance(exc, _DECOMPRESS_ERRORS) or (isinstance(exc, OSError) and exc.strerror is None):
        reason = "it ends early (truncated)" if isinstance(exc, EOFError) else str(exc) or type(exc).__name__
        return InputError(
            f"cannot decompress: {reason}",
            path=path,
            line=lineno,
            hint="the compressed file is corrupt or truncated; download or compress it again",
        )
    return InputError(f"cannot read file: {exc.strerror}", path=path, line=lineno)  # type: ignore[attr-defined]


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every non-blank line of a UTF-8 text file (public helper).

    A missing file, bytes that are not UTF-8 and a line longer than
    :data:`MAX_LINE_BYTES` raise :class:`~hardneg.errors.InputError` naming ``file:line``.
    Lines are split on ``\\n`` only (so U+2028 inside JSON strings is harmless),
    ``\\r\\n`` endings are accepted, a BOM before the first line is dropped; the text
    comes without its line ending. ``X.gz``/``X.bz2``/``X.xz`` are decompressed on the fly;
    a corrupt or truncated one is an error naming the line where decompression failed.
    """
    path = Path(path)
    fh = open_binary(path)
    with fh:
        yield from iter_stream_lines(fh, path)


def iter_stream_lines(fh: IO[bytes], path: str | Path) -> Iterator[tuple[int, str]]:
    """:func:`iter_text_lines` over an open binary stream (e.g. an archive member) named ``path``."""
    limit = MAX_LINE_BYTES
    lineno = 0
    while True:
        try:
            raw = fh.readline(limit + 1)
        except (OSError, *_DECOMPRESS_ERRORS) as exc:
            raise _read_error(exc, path, lineno + 1) from None
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
            hint = "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
            kind = next((k for m, k in _MAGIC.items() if lineno == 1 and raw.startswith(m)), None)
            if kind == ".zip":
                hint = "this looks like a zip archive: give the archive itself as the dataset path"
            elif kind is not None:
                hint = f"this looks like a {kind} compressed file: give it the {kind} suffix"
            raise InputError(
                f"line is not valid UTF-8 (byte 0x{bad} at byte offset {exc.start})",
                path=path,
                line=lineno,
                hint=hint,
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


def empty_queries_error(path: Path) -> InputError:
    return InputError(
        "queries file contains no queries",
        path=path,
        hint="the file is empty or only has blank lines; point at the right queries file",
    )


def empty_query_error(path: Path, lineno: int, qid: str) -> InputError:
    return InputError(
        f"query {qid!r} has empty text",
        path=path,
        line=lineno,
        hint="remove the line or give the query its text",
    )
