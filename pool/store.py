"""Scored pools on disk: Parquet shards of record ids, texts, zero-shot scores and sentence embeddings.

One folder holds one scored pool for one label set:

* ``meta.json``: ``labels`` (score-vector order), ``hypothesis_template``, ``multi_label``, ``method`` (the one
  that served the scores), ``model``, ``engine``, ``agent``, ``encoder`` (``model_id``, ``fingerprint``, ``dim``
  of the sentence encoder that made the embeddings) and ``format_version``;
* ``part-*.parquet``: one row a record, the columns of :data:`SCHEMA`. The record id is the content hash of
  :func:`annotate.dataset.record_id`, the same id ``push`` gives the Argilla record, so a pool scored once (by
  ``push`` itself, or by ``python -m annotate score`` on Ray) is pushed, adapted and refreshed without running a
  model again.

Writers put each shard in place atomically (a temporary name, then ``os.replace``), so a killed run leaves only
whole shards, and a rerun can skip the shards that exist. Readers take every ``part-*.parquet`` in name order and
keep the first row of each id.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
META = "meta.json"


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()),
        ("text", pa.string()),
        ("source_id", pa.string()),
        ("scores", pa.list_(pa.float32())),       # zero-shot probabilities, meta["labels"] order
        ("suggestion", pa.string()),              # top label
        ("score", pa.float32()),                  # its probability
        ("confidence", pa.float32()),
        ("margin", pa.float32()),
        ("entropy", pa.float32()),
        ("embedding", pa.list_(pa.float16())),    # unit-length sentence embedding
    ])


#: Column names of a shard, in order.
COLUMNS = ("id", "text", "source_id", "scores", "suggestion", "score", "confidence", "margin", "entropy", "embedding")


class StoreError(ValueError):
    """A scored pool is missing, incomplete, or made for other labels / another encoder."""


@dataclass
class Pool:
    """A scored pool in memory.

    Attributes:
        ids: record ids, ``(n,)``.
        texts: the texts, ``(n,)``.
        scores: zero-shot probabilities, ``(n, K)`` float64, columns in ``meta["labels"]`` order.
        embeddings: sentence embeddings, ``(n, d)`` float32 (stored as float16; unit length to ~1e-3).
        meta: the pool's ``meta.json``.
    """

    ids: list[str]
    texts: list[str]
    scores: np.ndarray
    embeddings: np.ndarray
    meta: dict

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    def index(self) -> dict[str, int]:
        """``{record id: row}``."""
        return {rid: i for i, rid in enumerate(self.ids)}


def shard_table(ids, texts, scores: np.ndarray, embeddings: np.ndarray, labels, source_ids=None,
                multi_label: bool = False):
    """A pyarrow table of :data:`COLUMNS` for ``len(ids)`` records.

    Args:
        scores: ``(n, K)`` probabilities in ``labels`` order.
        embeddings: ``(n, d)`` sentence embeddings (cast to float16).

    Raises:
        ValueError: the arrays disagree in length or width.
    """
    import pyarrow as pa

    from pool.uncertainty import summarize

    scores = np.asarray(scores, dtype=np.float32)
    embeddings = np.asarray(embeddings, dtype=np.float16)
    n = len(ids)
    if scores.shape != (n, len(labels)) or len(texts) != n or embeddings.shape[0] != n:
        raise ValueError(f"shard of {n} ids: scores {scores.shape}, {len(texts)} texts, embeddings "
                         f"{embeddings.shape} (want ({n}, {len(labels)}), {n}, ({n}, d))")
    stats = summarize(scores, multi_label) if n else {k: np.empty(0) for k in ("confidence", "margin", "entropy")}
    top = scores.argmax(axis=1) if n else np.empty(0, dtype=int)
    dim = embeddings.shape[1] if embeddings.ndim == 2 else 0
    columns = {
        "id": pa.array(list(ids), pa.string()),
        "text": pa.array(list(texts), pa.string()),
        "source_id": pa.array(list(source_ids) if source_ids is not None else [None] * n, pa.string()),
        "scores": pa.ListArray.from_arrays(pa.array(np.arange(0, n * len(labels) + 1, len(labels), dtype=np.int32)),
                                           pa.array(scores.reshape(-1), pa.float32())),
        "suggestion": pa.array([labels[i] for i in top], pa.string()),
        "score": pa.array(scores[np.arange(n), top] if n else [], pa.float32()),
        **{k: pa.array(stats[k].astype(np.float32), pa.float32()) for k in ("confidence", "margin", "entropy")},
        "embedding": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * dim),
                                              pa.array(embeddings.reshape(-1), pa.float16())),
    }
    return pa.table(columns, schema=_schema())


class PoolStore:
    """A folder of scored shards (see the module docstring).

    Args:
        root: the folder; created on the first write.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # meta ---------------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.root / META).is_file()

    def meta(self) -> dict:
        """The pool's ``meta.json``.

        Raises:
            StoreError: there is none.
        """
        try:
            return json.loads((self.root / META).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{self.root} holds no scored pool ({META} missing)") from None

    def write_meta(self, meta: dict) -> None:
        """Write ``meta.json`` (atomically), adding ``format_version``."""
        self.root.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({**meta, "format_version": FORMAT_VERSION}, indent=2, ensure_ascii=False) + "\n"
        tmp = self.root / f".{META}.tmp"
        tmp.write_text(payload, encoding="utf-8")
        os.replace(tmp, self.root / META)

    def check(self, labels, encoder_fingerprint: str | None = None) -> dict:
        """The meta, after checking it was made for ``labels`` (same order) and, when given, this encoder.

        Raises:
            StoreError: other labels or another encoder.
        """
        meta = self.meta()
        if list(meta.get("labels", [])) != list(labels):
            raise StoreError(f"the scored pool in {self.root} has labels {meta.get('labels')}, not {list(labels)}: "
                             "score it again for these labels, or use another folder")
        stored = (meta.get("encoder") or {}).get("fingerprint")
        if encoder_fingerprint and stored and stored != encoder_fingerprint:
            raise StoreError(f"the embeddings in {self.root} come from encoder {stored}, not {encoder_fingerprint}: "
                             "score the pool again with this encoder")
        return meta

    # shards -------------------------------------------------------------------------------------------------
    def shard_path(self, name: str) -> Path:
        return self.root / f"part-{name}.parquet"

    def has_shard(self, name: str) -> bool:
        return self.shard_path(name).is_file()

    def shards(self) -> list[Path]:
        return sorted(self.root.glob("part-*.parquet"))

    def write_shard(self, name: str, table) -> Path:
        """Write ``table`` (see :func:`shard_table`) as shard ``name``, atomically."""
        import pyarrow.parquet as pq

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.shard_path(name)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    def ids(self) -> set[str]:
        """Ids of every stored record (reads only the ``id`` column)."""
        import pyarrow.parquet as pq

        out: set[str] = set()
        for path in self.shards():
            out.update(pq.ParquetFile(path).read(columns=["id"]).column("id").to_pylist())
        return out

    def load(self, with_texts: bool = True) -> Pool:
        """Every stored record, each id once (first shard in name order wins).

        Raises:
            StoreError: no meta or no shard.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = self.meta()
        paths = self.shards()
        if not paths:
            raise StoreError(f"{self.root} has {META} but no part-*.parquet shard")
        columns = ["id", "scores", "embedding"] + (["text"] if with_texts else [])
        # ParquetFile: one file's reader, without read_table's dataset layer (its import and set-up cost more
        # than the read itself on a cache of many small shards)
        table = pa.concat_tables([pq.ParquetFile(p).read(columns=columns) for p in paths])
        ids = table.column("id").to_pylist()
        keep = _first_rows(ids)
        k = len(meta["labels"])
        scores = _list_column(table.column("scores"), np.float32, k)[keep].astype(np.float64)
        embeddings = _list_column(table.column("embedding"), np.float16, None)[keep].astype(np.float32)
        texts = table.column("text").to_pylist() if with_texts else [""] * len(ids)
        return Pool(ids=[ids[i] for i in keep], texts=[texts[i] for i in keep], scores=scores,
                    embeddings=embeddings, meta=meta)


def _first_rows(ids: list[str]) -> np.ndarray:
    seen: set[str] = set()
    keep = []
    for i, rid in enumerate(ids):
        if rid not in seen:
            seen.add(rid)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def _numbers(values) -> np.ndarray:
    """A pyarrow array of floats as a numpy view of its buffer when it holds no null (what this store writes);
    pyarrow's ``to_numpy`` imports pandas first (a third of a second of every command's start)."""
    import pyarrow as pa

    kinds = {pa.float16(): np.float16, pa.float32(): np.float32, pa.float64(): np.float64}
    dtype = kinds.get(values.type)
    if dtype is None or values.null_count:
        return values.to_numpy(zero_copy_only=False)
    return np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values),
                         offset=values.offset * np.dtype(dtype).itemsize)


def _list_column(column, dtype, width: int | None) -> np.ndarray:
    """A list<number> column of equal-length lists as a ``(rows, width)`` array."""
    chunks = []
    for chunk in column.chunks:
        values = _numbers(chunk.flatten()).astype(dtype, copy=False)
        rows = len(chunk)
        chunks.append(values.reshape(rows, -1) if rows else np.empty((0, width or 0), dtype=dtype))
    out = np.concatenate(chunks) if chunks else np.empty((0, width or 0), dtype=dtype)
    if width is not None and out.shape[1] != width:
        raise StoreError(f"stored score vectors have {out.shape[1]} columns, meta.json names {width} labels")
    return out
