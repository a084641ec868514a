"""Atomic file output: write to a temporary name beside the target, rename when complete.

A killed run can leave only ``.<stem>.<host>-<pid>.<random>.partial<suffix>`` files (or
folders, for outputs that are folders), never a
truncated output under the real name. The name records the process that owns the file, so
:func:`remove_partials` clears only stale ones (their process is gone) and never the file a
concurrent run on the same outputs is writing; a file of another host is left alone.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

from . import signals
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


def owner_tag() -> str:
    """``<host>-<pid>`` of this process, as written into its temporary names."""
    host = re.sub(r"[^A-Za-z0-9]+", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


_MIDDLE = re.compile(r"(?:(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.)?[a-z0-9_]{8}")


def _owner(partial: Path, target: Path) -> tuple[str, int] | None | bool:
    """(host, pid) of a temporary name of ``target``; None for an unowned (older) name; False
    when ``partial`` is not a temporary name of ``target`` at all."""
    suffix = PARTIAL + "".join(target.suffixes)
    head = f".{target.stem}."
    name = partial.name
    if not (name.startswith(head) and name.endswith(suffix)):
        return False
    match = _MIDDLE.fullmatch(name[len(head):len(name) - len(suffix)])
    if match is None:
        return False
    return (match["host"], int(match["pid"])) if match["pid"] else None


def is_stale(partial: Path, target: Path) -> bool:
    """Whether ``partial`` is a temporary file of ``target`` left by a process that is gone
    (on this host; a name without an owner comes from a version that did not record one)."""
    owner = _owner(partial, target)
    if owner is False:
        return False
    if owner is None:
        return True
    host, pid = owner
    return host == owner_tag().rpartition("-")[0] and pid != os.getpid() and not _alive(pid)


def partial_pattern(target: Path) -> str:
    """Glob of the temporary names :func:`atomic_path` gives ``target`` (and a few others:
    :func:`is_stale` tells them apart)."""
    return f".{glob.escape(target.stem)}.*{PARTIAL}{glob.escape(''.join(target.suffixes))}"


def remove_partials(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (and folders) that processes now gone left for ``path``;
    returns them."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    removed = []
    if folder.is_dir():
        for p in sorted(folder.glob(partial_pattern(target))):
            if is_stale(p, target):
                with contextlib.suppress(OSError):
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                    removed.append(p)
    return removed


_PAUSE_ENV = "NCA_TEST_PAUSE_BEFORE_RENAME"   # "<name pattern>[:seconds]": tests catch a process mid-write


def _test_pause(target: Path) -> None:
    pattern, _, seconds = os.environ.get(_PAUSE_ENV, "").partition(":")
    if pattern and fnmatch.fnmatch(target.name, pattern):
        time.sleep(float(seconds or 60))


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
    tmp_path = None
    try:
        with signals.deferred():      # a signal meanwhile stops once tmp_path is known
            fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.{owner_tag()}.", suffix=PARTIAL + suffix, dir=folder)
            os.close(fd)
            tmp_path = Path(tmp)
        yield tmp_path
        _test_pause(target)
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except OSError as exc:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        if tmp_path is None or exc.errno in _WRITE_ERRNOS:
            raise write_failure(target, exc) from None
        raise
    except BaseException:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
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
        with signals.deferred():      # a signal meanwhile stops once tmp is known
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.stem}.{owner_tag()}.", suffix=PARTIAL + suffix, dir=folder))
    except OSError as exc:
        raise write_failure(target, exc) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if target.is_dir() and not target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.stem}.{owner_tag()}.", suffix=PARTIAL + suffix, dir=folder))
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
