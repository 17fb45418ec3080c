"""Writing files and folders so that a reader, or a process killed mid-write, never sees half of one.

One helper for every writer of the project. A file (:func:`atomic_write_text`) is written under a temporary name in
the same folder and renamed over the target with :func:`os.replace`, which POSIX makes atomic within one file
system. A folder (:func:`atomic_directory`: a head's ``head.json`` + ``weights.npz``, a fine-tune's ``result.json``
+ ``scores.npz`` + ``model/``) is filled as a staging sibling (``.<name>.staging-<pid>-<random>``) and put in place
only once the writer's block returned:

* no folder at the target yet: ``rename(2)``, atomic;
* a previous version there: Linux ``renameat2(2)`` with ``RENAME_EXCHANGE`` swaps the two in one step (Linux >= 3.15,
  on ext4, xfs, btrfs, tmpfs, ...), then the old version is removed; where the call or the file system lacks it,
  the old version is renamed aside (``.<name>.old-<pid>-<random>``) and the new one renamed in, so a reader can,
  for the microseconds between the two renames, find no folder at all, never a partial one.

A writer killed at any point leaves at most its staging (or set-aside) folder, under a dot-name no reader opens;
the next :func:`atomic_directory` of the same target, or :func:`remove_stale_staging`, deletes those whose process
is gone. A reader that opens a folder's files one by one by path can still straddle a swap (one file of the old
version, the next of the new, or a file missing because the old version was just deleted); readers that must rule
that out compare a revision written into every file, or read again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

#: ``RENAME_EXCHANGE`` of ``<linux/fs.h>`` (renameat2(2)).
_RENAME_EXCHANGE = 1 << 1
_AT_FDCWD = -100
#: ``.<name>.staging-<pid>-<hex>`` / ``.<name>.old-<pid>-<hex>``; older writers' names carry no pid.
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:staging|old)-(?:(?P<pid>\d+)-)?[0-9A-Za-z_]+$")


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and :func:`os.replace`.

    Raises:
        OSError: the folder cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _libc_renameat2():
    """glibc's ``renameat2`` (2.28+), or ``None`` where there is none (not Linux, musl before 1.2.5, ...)."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _libc_renameat2()


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step (``renameat2(RENAME_EXCHANGE)``, renameat2(2)).

    Returns:
        True when swapped; False when this system or file system cannot (nothing was changed).

    Raises:
        OSError: any other failure of the call (a path missing, permissions).
    """
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), f"{a} <-> {b}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_staging(parent: str | Path, *, name: str | None = None) -> int:
    """Remove staging and set-aside folders that killed :func:`atomic_directory` writers left in ``parent`` (of
    every target, or of ``name`` only). A folder whose name carries the pid of a running process (of this machine)
    is a writer at work and stays; one without a pid (older writers) is removed, so call it where no such writer
    runs (under the folder's lock).

    Returns:
        The number removed.
    """
    removed = 0
    parent = Path(parent)
    if not parent.is_dir():
        return 0
    for entry in parent.iterdir():
        match = _STAGING.match(entry.name)
        if not match or not entry.is_dir() or (name is not None and match["name"] != name):
            continue
        if match["pid"] is not None and _alive(int(match["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def check_target(target: str | Path, replaceable: Callable[[Path], bool] | None = None) -> None:
    """Raise what :func:`atomic_directory` would for ``target``, before anything is written (to check early).

    Raises:
        FileExistsError: ``target`` exists and is not a directory, or is a non-empty directory that
            ``replaceable(target)`` refuses to replace.
    """
    target = Path(target)
    if not (target.exists() or target.is_symlink()):
        return
    if not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if replaceable is not None and any(target.iterdir()) and not replaceable(target):
        raise FileExistsError(f"{target} is a non-empty directory of other files: choose a new or empty folder")


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, replaceable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on a clean exit it replaces ``target`` in one step (see the
    module docstring). When the block raises, or the process dies, ``target`` is untouched and the staging folder
    is removed (or left, under a dot-name, for the next writer or :func:`remove_stale_staging`).

    Args:
        target: the folder to write (its parent is created).
        replaceable: ``replaceable(target)`` says whether an existing, non-empty ``target`` is a previous version
            that may be replaced (e.g. it holds ``head.json``); default: any existing folder. A guard against
            ``--head-output ~``.

    Raises:
        FileExistsError: ``target`` exists and is not a directory, or is a non-empty directory ``replaceable``
            refuses (checked before anything is written).
        OSError: the parent folder cannot be written.
    """
    target = Path(target)
    check_target(target, replaceable)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target.parent, name=target.name)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = target.parent / f".{target.name}.staging-{tag}"
    staging.mkdir()
    try:
        yield staging
        _put_in_place(staging, target, tag)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _put_in_place(staging: Path, target: Path, tag: str) -> None:
    try:
        os.rename(staging, target)  # no target, or an empty one: atomic
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):  # ENOTDIR: a symlink there
            raise
    if exchange(staging, target):  # staging now holds the previous version
        _remove(staging)
        return
    old = target.parent / f".{target.name}.old-{tag}"
    os.rename(target, old)
    os.rename(staging, target)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)
