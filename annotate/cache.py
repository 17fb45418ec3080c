"""The local cache of one Argilla dataset: its scored pool (zero-shot scores + sentence embeddings) and its head.

Layout under ``AnnotateSettings.cache_dir`` (env ``ANNOTATE_CACHE_DIR``, default
``~/.cache/zeroshot-preannotate/annotate``)::

    <server host_port>/<workspace>/<dataset>/
        dataset.json     {"dataset_id": ...}: the Argilla dataset the cache belongs to (written once it exists)
        pool/            an pool.store.PoolStore: meta.json + part-*.parquet
        head/            the adapted head (annotate.adaptive.AdaptiveHead.save), what `python -m service
                         --classifier NAME=DIR` serves

``push`` writes every scored text here before it upserts it, so ``refresh`` never runs the encoder again. A
cache whose ``dataset.json`` names another dataset id (the dataset was deleted and created again) or whose pool
holds other labels is stale and :meth:`DatasetCache.validate` empties it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from pool.store import Pool, PoolStore, StoreError

logger = logging.getLogger(__name__)
BINDING = "dataset.json"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", part) or "_"


class DatasetCache:
    """The cache folder of ``workspace/dataset`` on the Argilla server at ``api_url`` (see the module docstring)."""

    def __init__(self, cache_dir: str | Path, api_url: str, workspace: str, dataset: str) -> None:
        server = urlparse(api_url).netloc or api_url
        self.root = Path(cache_dir).expanduser() / _safe(server) / _safe(workspace) / _safe(dataset)
        self.pool = PoolStore(self.root / "pool")
        self.head_dir = self.root / "head"

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
        """Empty the cache folder."""
        if self.root.exists():
            logger.info("emptying the cache %s: %s", self.root, why)
            shutil.rmtree(self.root)

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
