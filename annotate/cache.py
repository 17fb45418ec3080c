"""The local cache of one Argilla dataset: its scored pool (zero-shot scores + sentence embeddings) and its head.

Layout under ``AnnotateSettings.cache_dir`` (env ``ANNOTATE_CACHE_DIR``, default
``~/.cache/zeroshot-preannotate/annotate``)::

    <server host_port>/<workspace>/<dataset>/
        dataset.json     {"dataset_id": ...}: the Argilla dataset the cache belongs to (written once it exists)
        pool/            a pool.store.PoolStore: meta.json + part-*.parquet
        head/            the adapted head (service.head.AdaptiveHead.save), what `python -m service
                         --classifier NAME=DIR` serves
        finetune/        background encoder fine-tunes of `refresh --watch` (annotate.finetune_job)
        .lock            held by `refresh --watch` while it runs (:meth:`DatasetCache.lock`); .lock.json names
                         the holder
        .finetune.lock   held by a background fine-tune while it runs (annotate.finetune_job)

``push`` writes every scored text here before it upserts it, so ``refresh`` never runs the encoder again. A
cache whose ``dataset.json`` names another dataset id (the dataset was deleted and created again) or whose pool
holds other labels is stale and :meth:`DatasetCache.validate` empties it.

Locks (:func:`hold`) are ``flock(2)`` locks through the ``filelock`` package: the kernel drops them when their
process ends, however it ends, so a killed watcher never leaves a lock behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import numpy as np

from pool.store import Pool, PoolStore, StoreError

logger = logging.getLogger(__name__)
BINDING = "dataset.json"
LOCK = ".lock"


class CacheBusy(RuntimeError):
    """Another process holds the lock; the message names it (what, pid, host, since when)."""


def _holder_file(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def holder(path: str | Path) -> dict | None:
    """Who holds the lock at ``path`` (``{"what", "pid", "host", "since", "argv"}``; ``{}`` when the holder wrote
    nothing yet), or ``None`` when nobody does (checked by taking it for an instant)."""
    from filelock import FileLock, Timeout

    path = Path(path)
    if not path.exists():
        return None
    probe = FileLock(path, timeout=0)
    try:
        probe.acquire()
    except Timeout:
        try:
            return json.loads(_holder_file(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
    probe.release()
    return None


def describe(info: dict | None) -> str:
    """``holder()``'s answer in words: ``refresh --watch (pid 123 on host, since 2024-05-01 10:00:00)``."""
    if not info:
        return "another process"
    return f"{info.get('what', 'another process')} (pid {info.get('pid')} on {info.get('host')}, since {info.get('since')})"


@contextmanager
def hold(path: str | Path, what: str, *, where: str | None = None) -> Iterator[dict]:
    """Hold the exclusive lock at ``path`` while inside, or fail at once (never waits).

    Next to the lock file, ``<path>.json`` names the holder (``what``, pid, host, start time, command line) for
    the message a second process gets; it is removed on release. The lock itself is ``flock(2)`` (``filelock``),
    which the kernel releases when the process ends, even by SIGKILL (a leftover ``.json`` then names a process
    that is gone, and the next holder overwrites it).

    Args:
        what: what holds it, in words (``refresh --watch``).
        where: what the lock protects, in words, for the error message (default: the lock's folder).

    Yields:
        The holder record written.

    Raises:
        CacheBusy: another process (or another lock object of this one) holds it.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise CacheBusy(f"{where or path.parent} is in use by {describe(holder(path))}: stop it or wait for it to "
                        "end") from None
    info = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}
    try:
        tmp = _holder_file(path).with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
        os.replace(tmp, _holder_file(path))
        yield info
    finally:
        try:
            _holder_file(path).unlink()
        except FileNotFoundError:
            pass
        lock.release()


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", part) or "_"


class DatasetCache:
    """The cache folder of ``workspace/dataset`` on the Argilla server at ``api_url`` (see the module docstring)."""

    def __init__(self, cache_dir: str | Path, api_url: str, workspace: str, dataset: str) -> None:
        server = urlparse(api_url).netloc or api_url
        self.root = Path(cache_dir).expanduser() / _safe(server) / _safe(workspace) / _safe(dataset)
        self.pool = PoolStore(self.root / "pool")
        self.head_dir = self.root / "head"
        self.name = f"{workspace}/{dataset}"

    def lock(self, what: str = "refresh --watch"):
        """A context manager holding the cache's lock (:func:`hold`): one ``refresh --watch`` (and its background
        fine-tune's staging) per dataset cache.

        Raises:
            CacheBusy: another process holds it; the message names that process.
        """
        return hold(self.root / LOCK, what, where=f"the cache of dataset {self.name} ({self.root})")

    def dataset_id(self) -> str | None:
        """The Argilla dataset id this cache was filled for, ``None`` before the dataset existed."""
        try:
            return json.loads((self.root / BINDING).read_text(encoding="utf-8")).get("dataset_id")
        except (FileNotFoundError, ValueError):
            return None

    def bind(self, dataset_id) -> None:
        """Record that the cache belongs to the dataset with this id."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{BINDING}.tmp"
        tmp.write_text(json.dumps({"dataset_id": str(dataset_id)}) + "\n", encoding="utf-8")
        os.replace(tmp, self.root / BINDING)

    def reset(self, why: str) -> None:
        """Empty the cache folder (its lock files stay: a held lock must keep its file)."""
        if self.root.exists():
            logger.info("emptying the cache %s: %s", self.root, why)
            for entry in self.root.iterdir():
                if entry.name.endswith((".lock", ".lock.json")):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

    def validate(self, dataset_id, labels) -> None:
        """Empty the cache when it belongs to another dataset than ``dataset_id`` (``None``: the dataset does not
        exist yet; a cache bound to an id is then stale, an unbound one holds a killed push's scores and stays) or
        when its pool was scored for other labels."""
        bound = self.dataset_id()
        if bound is not None and bound != (str(dataset_id) if dataset_id is not None else None):
            self.reset(f"it was filled for dataset id {bound}, not {dataset_id}")
            return
        if self.pool.exists():
            try:
                self.pool.check(labels)
            except StoreError as exc:
                self.reset(str(exc))

    def load_pool(self) -> Pool | None:
        """The cached pool with rows sorted by record id (so fits do not depend on the order texts were scored in),
        or ``None`` when there is none."""
        if not self.pool.exists() or not self.pool.shards():
            return None
        return sort_pool(self.pool.load())


def sort_pool(pool: Pool) -> Pool:
    """``pool`` with its rows in record-id order."""
    order = np.argsort(np.asarray(pool.ids), kind="stable")
    return Pool(ids=[pool.ids[i] for i in order], texts=[pool.texts[i] for i in order], scores=pool.scores[order],
                embeddings=pool.embeddings[order], meta=pool.meta)
