"""Directories written whole or not at all: :func:`atomic_dir`.

A model or head directory holds several files (``head.json`` + ``weights.npz``; ``result.json`` + ``scores.npz`` +
``model/``). Written in place, a process killed between two files leaves a directory that a reader takes for
complete. :func:`atomic_dir` has the writer fill a temporary sibling (``.<name>.tmp-<pid>-<random>``, same file
system) and put it in place only once it returned:

* no directory at the target yet: ``rename(2)``, atomic;
* a previous version there: Linux ``renameat2(2)`` with ``RENAME_EXCHANGE`` swaps the two in one step (Linux >= 3.15,
  on ext4, xfs, btrfs, tmpfs, ...), then the old version is removed; where the call or the file system lacks it,
  the old version is renamed aside first and the new one renamed into place (a reader can then, for the time
  between two renames, find no directory at all, never a partial one).

A writer killed at any point leaves at most its temporary sibling, which the next :func:`atomic_dir` on the same
target (or :func:`remove_stale`) deletes once its process is gone. A reader that reads a directory's files one by
one by path can still straddle a swap (first file of the old version, second of the new); readers that must
rule that out compare a revision written into every file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

#: ``RENAME_EXCHANGE`` of ``<linux/fs.h>`` (renameat2(2)).
_RENAME_EXCHANGE = 1 << 1
_AT_FDCWD = -100
_TMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")


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
    """Swap two existing paths in one atomic step (``renameat2(RENAME_EXCHANGE)``).

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


def remove_stale(target: str | Path) -> list[Path]:
    """Delete what writers of ``target`` that died left behind (``.<name>.tmp-<pid>-*`` and ``.<name>.old-<pid>-*``
    siblings whose process is gone; processes are those of this machine). Returns the removed paths."""
    target = Path(target)
    return remove_stale_in(target.parent, name=target.name)


def remove_stale_in(folder: str | Path, *, name: str | None = None) -> list[Path]:
    """Delete what dead writers of :func:`atomic_dir` left in ``folder`` (of any target, or of ``name``'s only).
    Returns the removed paths."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TMP.match(entry.name)
        if match and (name is None or match["name"] == name) and not _alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def check_target(target: str | Path, replaceable: Callable[[Path], bool] | None = None) -> None:
    """Raise what :func:`atomic_dir` would for ``target`` before it writes anything (to check early).

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


@contextmanager
def atomic_dir(target: str | Path, *, replaceable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory to fill; on a normal exit it becomes ``target`` in one step (see the
    module docstring), on an exception it is deleted and ``target`` stays as it was.

    Args:
        target: the directory to write (its parent is created).
        replaceable: ``replaceable(target)`` says whether an existing, non-empty ``target`` is a previous version
            that may be replaced (e.g. it holds ``head.json``); default: any existing directory. A guard against
            ``--head-output ~``.

    Raises:
        FileExistsError: ``target`` exists and is not a directory, or is a non-empty directory ``replaceable``
            refuses (checked before anything is written).
        OSError: the file system failed.
    """
    target = Path(target)
    check_target(target, replaceable)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        _put_in_place(tmp, target, tag)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _put_in_place(tmp: Path, target: Path, tag: str) -> None:
    try:
        os.rename(tmp, target)  # no target, or an empty one: atomic
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):  # ENOTDIR: a symlink there
            raise
    if exchange(tmp, target):  # tmp now holds the previous version
        _remove(tmp)
        return
    old = target.parent / f".{target.name}.old-{tag}"
    os.rename(target, old)
    os.rename(tmp, target)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)
