"""Writing files and folders so that a reader, or a process killed mid-write, never sees half of one.

One helper for every writer of the project: the file is written under a temporary name in the same folder and
renamed over the target with :func:`os.replace`, which POSIX makes atomic within one file system. A folder cannot
be replaced atomically while it holds files, so :func:`atomic_directory` swaps it in two renames (the old folder
aside, the new one in) and keeps the old one until the new one is in place: at every instant the target either is
the complete old folder, the complete new one, or (between the two renames, microseconds) absent, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


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


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on a clean exit it replaces ``target``.

    Write every file of the folder into the yielded path. When the ``with`` block ends without an exception the
    staging folder is renamed to ``target`` (an existing ``target`` is first renamed aside, then removed); when it
    raises, or the process dies, ``target`` is untouched and the staging folder (a dot-name beginning with
    ``.{target.name}.staging-``) is removed or left for :func:`remove_stale_staging`.

    Raises:
        OSError: the parent folder cannot be written.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_staging(parent: str | Path) -> int:
    """Remove staging and set-aside folders that a killed :func:`atomic_directory` left in ``parent``.

    Returns the number removed. Only call it where no writer is running (under the folder's lock).
    """
    removed = 0
    parent = Path(parent)
    if not parent.is_dir():
        return 0
    for entry in parent.iterdir():
        if entry.is_dir() and entry.name.startswith(".") and (".staging-" in entry.name or ".old-" in entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed
