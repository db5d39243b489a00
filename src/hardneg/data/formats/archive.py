"""Dataset archives: a zipped or tarred dataset folder (``scifact.zip`` holding ``scifact/corpus.jsonl``
…) given as the data path is unpacked once into the cache and loaded as the folder.

The unpacked copy lives in ``<cache>/archives/<stem>-<key>`` (``<cache>``: the cache folder the
caller passes down, ``--cache-dir``), the key a hash of the archive's
resolved path, size and modification time, so an unchanged archive is unpacked once and a
replaced one again. Unpacking goes to a temporary folder beside it, renamed into place when
complete (a crash leaves no half-unpacked dataset). Members with an absolute path or ``..``,
links and device files are refused; a corrupt archive is an error naming it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from hardneg.errors import InputError

__all__ = ["ARCHIVES", "archive_stem", "dataset_archive_folder", "unpack_archive"]

_CHUNK = 1 << 20
#: the folder under the cache folder that holds unpacked archives
ARCHIVES = "archives"


def archive_stem(path: Path) -> str:
    """``scifact.tar.gz`` -> ``scifact``."""
    name = path.name
    for suffix in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "archive"
    return path.stem


def _safe_member(archive: Path, name: str) -> PurePosixPath:
    """The member's relative path, or an error for an absolute path or a ``..`` component."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InputError(f"archive member {name!r} has an absolute path", path=archive,
                         hint="refusing to unpack outside the target folder; repack with relative paths")
    if ".." in posix.parts:
        raise InputError(f"archive member {name!r} climbs out of the folder ('..')", path=archive,
                         hint="refusing to unpack outside the target folder; repack without '..'")
    return posix


def _corrupt(archive: Path, exc: BaseException) -> InputError:
    return InputError(f"archive is corrupt or truncated ({type(exc).__name__}: {exc})", path=archive,
                      hint="download or pack the archive again")


def _copy(src, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, _CHUNK)


def unpack_archive(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` (zip or tar, any compression) into the existing folder ``dest``, safely."""
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                for info in infos:  # check every name before writing anything
                    _safe_member(archive, info.filename)
                for info in infos:
                    rel = _safe_member(archive, info.filename)
                    if info.is_dir():
                        (dest / rel).mkdir(parents=True, exist_ok=True)
                    else:
                        _copy(zf.open(info), dest / rel)
            return
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for m in members:
                _safe_member(archive, m.name)
                if not (m.isfile() or m.isdir()):
                    raise InputError(f"archive member {m.name!r} is a link or special file", path=archive,
                                     hint="only regular files and folders are unpacked; repack without links")
            for m in members:
                rel = _safe_member(archive, m.name)
                if m.isdir():
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                else:
                    fh = tf.extractfile(m)
                    assert fh is not None
                    _copy(fh, dest / rel)
    except (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error,
            NotImplementedError) as exc:
        raise _corrupt(archive, exc) from None
    except OSError as exc:
        if exc.strerror is None:  # a decompressor's complaint, not the file system's
            raise _corrupt(archive, exc) from None
        raise InputError(f"cannot unpack the archive: {exc.strerror}", path=exc.filename or archive,
                         hint="check free space and permissions of the cache folder (--cache-dir, "
                         "HARDNEG_CACHE_DIR)") from None


def dataset_archive_folder(archive: Path, cache_dir: Path) -> Path:
    """The dataset folder inside the unpacked copy of ``archive`` under ``cache_dir/archives``
    (unpacking it first if needed).

    When the archive holds a single top-level folder (``scifact/…``) that folder is the
    dataset; otherwise the archive's top level is.
    """
    archive = Path(archive)
    try:
        st = archive.stat()
    except OSError:
        raise InputError("archive not found", path=archive) from None
    key = hashlib.sha256(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(cache_dir) / ARCHIVES
    final = root / f"{archive_stem(archive)}-{key}"
    if not final.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
        try:
            unpack_archive(archive, tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # not a concurrent unpack that won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    entries = [p for p in final.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    if not entries:
        raise InputError("archive is empty", path=archive, hint="pack the dataset folder into it")
    return final
