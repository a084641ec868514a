"""Atomic file output: write to a temporary name beside the target, rename when complete.

A killed run can leave only ``.<stem>.<random>.partial<suffix>`` files (or folders, for
outputs that are folders), never a truncated output under the real name;
:func:`remove_partials` clears those of one output.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import NCAError

PARTIAL = ".partial"
_WRITE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EFBIG: "the file is too large for this file system", errno.EROFS: "the file system is read-only",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EIO: "an input/output error"}


def write_failure(path, exc: OSError) -> NCAError:
    """The one-sentence error for an OSError met while writing ``path``."""
    why = _WRITE_ERRNOS.get(exc.errno, (exc.strerror or str(exc)).lower())
    return NCAError(f"Cannot write {path}: {why}; free disk space or choose another output location.")


def _folder(target: Path) -> Path:
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NCAError(f"Cannot create the output folder {folder} ({(exc.strerror or str(exc)).lower()}); "
                       f"choose a writable location.") from None
    if not folder.is_dir():
        raise NCAError(f"The output location {folder} is not a folder; choose another output path.")
    if not os.access(folder, os.W_OK):
        raise NCAError(f"The output folder {folder} is not writable; choose another output path.")
    return folder


def check_writable(path: str | os.PathLike) -> None:
    """Raise ``NCAError`` now, before any work, if ``path`` could not be created atomically
    (its folder cannot be made or written, or a temporary file cannot be created there)."""
    target = Path(path)
    if target.is_dir():
        raise NCAError(f"The output {target} is a folder; pass a file name.")
    folder = _folder(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL, dir=folder)
    except OSError as exc:
        raise NCAError(f"Cannot write into {folder} ({(exc.strerror or str(exc)).lower()}); choose another output location.") from None
    os.close(fd)
    os.unlink(tmp)


def partial_pattern(target: Path) -> str:
    """Glob of the temporary names :func:`atomic_path` gives ``target`` (8 random characters)."""
    return f".{target.stem}.{'?' * 8}{PARTIAL}{''.join(target.suffixes) or ''}"


def remove_partials(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (and folders) a killed run left for ``path``; returns them."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    removed = []
    if folder.is_dir():
        for p in folder.glob(partial_pattern(target)):
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    On any exception the temporary file is removed, so no half-written output is left; a
    failed write (disk full, permissions) ends in one sentence naming ``path``.
    ``suffix`` defaults to the target's own suffixes, so writers that pick a format from
    the file name (SimpleITK, imageio) still see the right extension.
    """
    target = Path(path)
    folder = _folder(target)
    if suffix is None:
        suffix = "".join(target.suffixes) or ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=PARTIAL + suffix, dir=folder)
    except OSError as exc:
        raise write_failure(target, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if exc.errno in _WRITE_ERRNOS:
            raise write_failure(target, exc) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; rename it onto ``path`` on success.

    The folder-output counterpart of :func:`atomic_path` (e.g. a Zarr store): on any exception
    the temporary folder is removed; a folder already at ``path`` is replaced only once the new
    one is complete.
    """
    target = Path(path)
    folder = _folder(target)
    suffix = "".join(target.suffixes)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.stem}.", suffix=PARTIAL + suffix, dir=folder))
    except OSError as exc:
        raise write_failure(target, exc) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if target.is_dir() and not target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.stem}.", suffix=PARTIAL + suffix, dir=folder))
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in _WRITE_ERRNOS:
            raise write_failure(target, exc) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def print_text(text: str, out: str | os.PathLike | None = None) -> None:
    """Print ``text``; with ``out`` also write it to that file (atomically, as ``write_text``)."""
    print(text)
    if out is not None:
        write_text(out, text)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
