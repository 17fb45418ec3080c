"""``score``: zero-shot scores and sentence embeddings for large corpora on Ray Data, into a scored pool.

The job is one Ray Data pipeline (https://docs.ray.io/en/latest/data/batch_inference.html):

1. read the input with Ray Data's own readers (``read_json`` for ``.jsonl``/``.json``, ``read_parquet``,
   ``read_csv``, ``read_text`` for ``.txt``; a path may be a file, a folder of such files, or any URI Ray Data
   reads, e.g. ``s3://bucket/prefix/``), keeping only the text (and id) column;
2. ``map_batches`` with :class:`ScoreActor`, a callable class that holds the project's own engine code in
   process (:class:`pool.scorers.LocalScorer` with ``embeddings=True``: the service's model loading, engines,
   calibration and methods; no HTTP hop), on an actor pool sized by ``concurrency`` (``n`` or ``(min, max)``),
   each actor reserving ``num_cpus`` CPUs and running its engine on as many threads;
3. the driver streams the actors' output and writes it to a :class:`pool.store.PoolStore` folder: ``meta.json``
   plus ``part-<hash>.parquet`` shards of exactly :data:`pool.store.COLUMNS`, each put in place atomically.

Record ids are :func:`annotate.dataset.record_id` of the stripped text and the id column's value, the ids
``push`` gives Argilla records, so ``push --from-scores`` and ``refresh`` load the folder without a model.

Resuming: a rerun over the same input reads the ids already stored and the actors skip those rows, so only
rows in missing shards are scored and written again. Shard names are a hash of the ids they hold, not of the
input position: Ray Data's blocks and batches depend on parallelism and arrival order, so a position would not
name the same rows on the next run, while a content hash always does. The stored id set is shipped to each actor
once (about 100 bytes an id: some 1 GB for 10 million records; beyond that, split the input into folders).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Input suffix -> Ray Data reader.
READERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
#: Row status in the actors' output (driver side bookkeeping; never stored).
SCORED, DONE, EMPTY, DUPLICATE = 0, 1, 2, 3


class ScoreInputError(ValueError):
    """The input, the options or the output folder cannot be used; nothing was written."""


@dataclass(frozen=True)
class ScoreConfig:
    """What every actor needs to score (plain values: it travels to the actors).

    Attributes:
        labels: candidate labels; score columns come out in this order.
        hypothesis_template: NLI / embedding hypothesis with one ``{}``.
        multi_label: independent per-label scores.
        method: ``nli``, ``embedding``, ``ensemble`` or ``None`` (the service's ``auto`` policy).
        model, engine: as :class:`pool.scorers.LocalScorer` (``ZSC_MODEL`` / ``ZSC_ENGINE`` semantics).
        batch_size: rows per actor call (Ray Data batch) and per engine call.
        num_cpus: CPUs each actor reserves; its engine runs this many intra-op threads.
        text_column, id_column: input columns (``.txt`` input has only ``text``).
    """

    labels: tuple[str, ...]
    hypothesis_template: str
    multi_label: bool = False
    method: str | None = None
    model: str = "default"
    engine: str = "onnxruntime"
    batch_size: int = 256
    num_cpus: int = 1
    text_column: str = "text"
    id_column: str | None = None


@dataclass
class ScoreSummary:
    """What a score job did. ``scored`` rows were written; ``skipped_done`` were already in the folder."""

    output: str
    inputs: list[str]
    read: int = 0
    scored: int = 0
    skipped_done: int = 0
    empty: int = 0
    duplicates_in_batch: int = 0
    shards_written: int = 0
    actors: int = 0
    nodes: int = 0
    concurrency: tuple[int, int] = (1, 1)
    num_cpus: int = 1
    agent: str | None = None
    wall_seconds: float = 0.0
    #: seconds from the start to the first scored block (Ray start, reads, model loads); the rest is steady state.
    first_output_seconds: float = 0.0
    first_output_rows: int = 0
    ray_address: str | None = None
    cluster_cpus: float = 0.0
    actor_ids: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        """Rows scored per second of wall time, start-up included."""
        return self.scored / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def steady_rows_per_second(self) -> float:
        """Rows scored per second after the first block came out (start-up and model loads excluded)."""
        steady = self.wall_seconds - self.first_output_seconds
        return (self.scored - self.first_output_rows) / steady if steady > 0 and self.scored else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "rows_per_second": round(self.rows_per_second, 2),
                "steady_rows_per_second": round(self.steady_rows_per_second, 2)}

    def render(self) -> str:
        low, high = self.concurrency
        pool = f"{low}" if low == high else f"{low}..{high}"
        return "\n".join([
            f"output             {self.output}",
            f"agent              {self.agent}",
            f"read               {self.read}",
            f"scored (written)   {self.scored} in {self.shards_written} shards",
            f"skipped (stored)   {self.skipped_done}",
            f"empty texts        {self.empty}",
            f"duplicates (batch) {self.duplicates_in_batch}",
            f"actors             {self.actors} used on {self.nodes} node(s) (pool {pool}, {self.num_cpus} CPU each; "
            f"cluster {self.cluster_cpus:g} CPUs at {self.ray_address})",
            f"time               {self.wall_seconds:.1f} s wall, {self.rows_per_second:.1f} rows/s scored "
            f"({self.steady_rows_per_second:.1f} rows/s after the first block at {self.first_output_seconds:.1f} s)",
        ])


def parse_concurrency(value: str | int | tuple[int, int]) -> tuple[int, int]:
    """``"2"`` -> ``(2, 2)``; ``"1,4"`` -> ``(1, 4)`` (an autoscaling actor pool).

    Raises:
        ScoreInputError: not one or two positive integers, or min > max.
    """
    if isinstance(value, tuple):
        parts = list(value)
    elif isinstance(value, int):
        parts = [value]
    else:
        try:
            parts = [int(p) for p in str(value).split(",")]
        except ValueError:
            parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1 or parts[0] > parts[1]:
        raise ScoreInputError(f"--concurrency {value!r}: give N or MIN,MAX with 1 <= MIN <= MAX")
    return parts[0], parts[1]


def _is_uri(path: str) -> bool:
    return "://" in path


def resolve_inputs(inputs: list[str]) -> tuple[str, list[str]]:
    """The Ray Data reader and the paths for ``inputs`` (files, folders of shards, or URIs).

    A folder takes every file in it with a known suffix (the suffix shared by most of them); a URI is passed to
    Ray Data as it is, its reader chosen by its suffix (a URI folder needs a trailing ``*.jsonl``-like hint
    in the name of one of its files, so give the files' suffix as the last path part, e.g. ``s3://b/p/part-0.jsonl``,
    or point at a local folder).

    Raises:
        ScoreInputError: a path is missing, of an unknown format, or the paths mix formats.
    """
    if not inputs:
        raise ScoreInputError("no INPUT given")
    kinds, paths = set(), []
    for raw in inputs:
        if _is_uri(raw):
            suffix = Path(raw.split("?")[0]).suffix.lower()
            if suffix not in READERS:
                raise ScoreInputError(f"cannot tell the format of {raw}: name a file ending in "
                                      f"{', '.join(READERS)}")
            kinds.add(READERS[suffix])
            paths.append(raw)
            continue
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in READERS
                           and not p.name.startswith((".", "_")))
            if not files:
                raise ScoreInputError(f"folder {path} holds no {', '.join(READERS)} file")
            suffixes = {p.suffix.lower() for p in files}
            if len({READERS[s] for s in suffixes}) > 1:
                raise ScoreInputError(f"folder {path} mixes formats ({', '.join(sorted(suffixes))}): "
                                      "give one format per job")
            kinds.add(READERS[files[0].suffix.lower()])
            paths.extend(str(p) for p in files)
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix not in READERS:
                raise ScoreInputError(f"unsupported input format {suffix or '(none)'!r} of {path}: use one of "
                                      f"{', '.join(READERS)}")
            kinds.add(READERS[suffix])
            paths.append(str(path))
        else:
            raise ScoreInputError(f"input not found: {path}")
    if len(kinds) > 1:
        raise ScoreInputError(f"the inputs mix formats ({', '.join(sorted(kinds))}): give one format per job")
    return kinds.pop(), paths


def check_columns(kind: str, paths: list[str], text_column: str = "text", id_column: str | None = None) -> None:
    """Check the named columns against the first local input file's header, before Ray starts (URIs are left to
    :func:`read_dataset`).

    Raises:
        ScoreInputError: a named column is missing, the first file cannot be parsed, or ``--id-column`` with
            ``.txt`` input.
    """
    if kind == "text":
        if id_column:
            raise ScoreInputError("--id-column needs .jsonl, .csv or .parquet input (a .txt line is only a text)")
        return
    first = paths[0]
    if _is_uri(first):
        return
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(first).names
        elif kind == "csv":
            import csv

            with open(first, encoding="utf-8", newline="") as handle:
                names = next(csv.reader(handle), [])
        else:
            with open(first, encoding="utf-8") as handle:
                line = next((x for x in handle if x.strip()), "{}")
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("a JSON Lines row is not an object")
            names = list(row)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ScoreInputError(f"cannot read {first}: {' '.join(str(exc).split())[:300]}") from None
    for name in [text_column] + ([id_column] if id_column else []):
        if name not in names:
            raise ScoreInputError(f"column {name!r} not found in {first}; columns: {', '.join(names) or '(none)'}")


def _num_blocks(paths: list[str], batch_size: int, actors: int, bytes_per_row: int = 200) -> int | None:
    """Blocks to read local input into: about one batch each (``bytes_per_row`` is a rough text size).

    Readers make blocks of thousands of rows (8,000 for a 16,000-line JSONL) and an actor takes a whole block per
    task, so a few big blocks leave all actors but one idle and delay the first output. ``None`` (Ray's choice)
    for URIs, whose size is not read here."""
    if any(_is_uri(p) for p in paths):
        return None
    size = sum(os.path.getsize(p) for p in paths)
    return max(4 * actors, len(paths), min(10_000, size // (batch_size * bytes_per_row) + 1))


def read_dataset(kind: str, paths: list[str], text_column: str = "text", id_column: str | None = None,
                 num_blocks: int | None = None):
    """A Ray Dataset of the input's text (and id) column, read by Ray Data's own reader.

    Read tasks reserve no CPU (``num_cpus=0``): they are light, and the actors may hold every CPU of a node.

    Raises:
        ScoreInputError: a named column is missing (the schema is read from the first file).
    """
    import pyarrow as pa
    import ray.data

    wanted = [text_column] + ([id_column] if id_column else [])
    if kind == "text":
        return ray.data.read_text(paths, num_cpus=0, override_num_blocks=num_blocks)  # one row a line, column "text" (blank lines: empty)
    if kind == "json":
        ds = ray.data.read_json(paths, lines=True, num_cpus=0, override_num_blocks=num_blocks)
    elif kind == "parquet":
        ds = ray.data.read_parquet(paths, columns=None, num_cpus=0, override_num_blocks=num_blocks)
    else:
        from pyarrow import csv

        ds = ray.data.read_csv(paths, num_cpus=0, override_num_blocks=num_blocks,
                               convert_options=csv.ConvertOptions(column_types={c: pa.string() for c in wanted}))
    try:
        names = list(ds.schema().names)
    except Exception as exc:  # unreadable files surface here, as Ray's wrapped error
        raise ScoreInputError(f"cannot read {paths[0]}{' and others' if len(paths) > 1 else ''}: "
                              f"{_last_line(exc)}") from None
    for name in wanted:
        if name not in names:
            raise ScoreInputError(f"column {name!r} not found in {paths[0]}; columns: {', '.join(names) or '(none)'}")
    return ds.select_columns(wanted, num_cpus=0)  # light, and the actors may hold every CPU


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _cell(value) -> str | None:
    """An id cell as push reads it: ``None`` for null/NaN, else ``str(value)``."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return None
    return str(value)


def _encode_texts_once(scorer) -> None:
    """Let ``scorer.embed(chunk)`` reuse the text embeddings ``scorer.score(chunk)`` just computed.

    With the embedding (or ensemble) method, scoring a chunk already runs the sentence encoder over its texts, and
    :meth:`~pool.scorers.LocalScorer.embed` runs it again over the same chunk (both split texts by
    ``batch_size``). A one-entry memo on the encoder (keyed by the chunk's texts) serves the second call: the same
    function of the same input, computed once, so the pool's scores and embeddings are unchanged and the work per
    text halves. No-op when no sentence encoder is loaded (the nli method)."""
    model = getattr(scorer, "_served", None) and scorer._served.models.get("embedding")
    encoder = getattr(getattr(model, "classifier", None), "encoder", None)
    if encoder is None:
        return
    compute = encoder.encode
    last: dict = {}

    def encode(texts):
        key = tuple(texts)
        if last.get("key") != key:
            last["key"], last["value"] = key, compute(texts)
        return last["value"]

    encoder.encode = encode


class ScoreActor:
    """The ``map_batches`` callable class: one :class:`~pool.scorers.LocalScorer` per actor, loaded once.

    ``__call__`` takes a pyarrow batch of the input's text (and id) column and returns one row per input row:
    the :data:`pool.store.COLUMNS` (scores, embedding etc. for scored rows, nulls for the others) plus
    ``_status`` (:data:`SCORED`, :data:`DONE`, :data:`EMPTY`, :data:`DUPLICATE`) and ``_meta`` (a JSON string on the
    first row: agent, method, encoder, actor and node ids), which the driver drops before writing.

    Args:
        config: a :class:`ScoreConfig` as a dict.
        done: ``[]`` or ``[ObjectRef]`` of the frozenset of ids already stored (wrapped in a list so Ray hands the
            reference, not the set, to the constructor).

    Raises:
        pool.scorers.ScoringError: the model cannot be loaded (the job fails).
    """

    def __init__(self, config: dict, done: list) -> None:
        import ray

        self.config = ScoreConfig(**{**config, "labels": tuple(config["labels"])})
        threads = str(self.config.num_cpus)
        # The engine's intra-op threads follow the actor's CPUs (service.config.Settings reads ZSC_NUM_THREADS);
        # the tokenizer's Rayon pool too.
        os.environ["ZSC_NUM_THREADS"] = threads
        os.environ["RAYON_NUM_THREADS"] = threads
        os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
        from pool.scorers import LocalScorer

        c = self.config
        self.scorer = LocalScorer(list(c.labels), c.hypothesis_template, c.multi_label, model=c.model,
                                  engine=c.engine, method=c.method, batch_size=c.batch_size, embeddings=True)
        _encode_texts_once(self.scorer)
        self.done = ray.get(done[0]) if done else frozenset()
        context = ray.get_runtime_context()
        self.actor_id = context.get_actor_id() or f"pid-{os.getpid()}"
        self.node_id = context.get_node_id()

    def __call__(self, batch):
        import pyarrow as pa

        from annotate.dataset import record_id
        from pool.store import _schema, shard_table

        c = self.config
        texts_in = batch.column(c.text_column).to_pylist()
        source_ids = [_cell(v) for v in batch.column(c.id_column).to_pylist()] if c.id_column else [None] * len(texts_in)
        ids: list[str | None] = []
        status = np.full(len(texts_in), SCORED, dtype=np.int8)
        todo: list[int] = []
        seen: set[str] = set()
        for i, (raw, source_id) in enumerate(zip(texts_in, source_ids)):
            text = "" if raw is None else str(raw).strip()
            texts_in[i] = text
            if not text:
                status[i] = EMPTY
                ids.append(None)
                continue
            rid = record_id(text, source_id)
            ids.append(rid)
            if rid in self.done:
                status[i] = DONE
            elif rid in seen:
                status[i] = DUPLICATE
            else:
                seen.add(rid)
                todo.append(i)
        texts = [texts_in[i] for i in todo]
        if texts:
            scores = self.scorer.score(texts)
            embeddings = self.scorer.embed(texts)
        else:
            scores = np.empty((0, len(c.labels)))
            embeddings = np.empty((0, 0), dtype=np.float32)
        scored = shard_table([ids[i] for i in todo], texts, scores, embeddings, list(c.labels),
                             [source_ids[i] for i in todo], c.multi_label)
        rest = [i for i in range(len(texts_in)) if status[i] != SCORED]
        schema = _schema()
        others = pa.table({name: (pa.array([ids[i] for i in rest], pa.string()) if name == "id"
                                  else pa.nulls(len(rest), schema.field(name).type)) for name in schema.names},
                          schema=schema)
        table = pa.concat_tables([scored, others])
        meta = json.dumps({"agent": self.scorer.agent, "method": self.scorer.served_method,
                           "model": self.scorer.model_id, "engine": self.scorer.engine,
                           "encoder": self.scorer.encoder, "actor": self.actor_id, "node": self.node_id})
        order = np.concatenate([status[todo], status[rest]]) if len(texts_in) else status
        table = table.append_column("_status", pa.array(order, pa.int8()))
        return table.append_column("_meta", pa.array([meta] + [None] * (table.num_rows - 1), pa.string()))

    def __del__(self) -> None:
        scorer = getattr(self, "scorer", None)
        if scorer is not None:
            try:
                scorer.close()
            except Exception:  # interpreter shutdown
                pass


def start_ray(address: str | None, num_cpus_needed: int, object_store_mb: int = 256) -> str:
    """Connect to the Ray cluster at ``address`` (``auto`` or ``HOST:PORT``), or start a local instance.

    The local instance is kept small and private: ``max(os.cpu_count(), num_cpus_needed)`` logical CPUs,
    ``object_store_mb`` MiB of object store, no dashboard, no usage stats, and every Ray server bound to loopback
    (Ray's single-machine mode, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: node address 127.0.0.1).

    Returns:
        the address of the cluster (``local`` for the local instance).
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return "connected"
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        return address
    # Single-machine mode: Ray binds its servers to 127.0.0.1 only when this is off. Child processes read the
    # variable; this process read it when ray was imported, so the constant is set too.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, num_cpus_needed), include_dashboard=False,
             object_store_memory=object_store_mb * 2**20, logging_level=logging.WARNING, log_to_driver=True)
    return "local"


def _shard_name(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:24]


def score(inputs: list[str], output: str | Path, config: ScoreConfig, *, concurrency: tuple[int, int] = (1, 1),
          ray_address: str | None = None, shard_rows: int = 4096, object_store_mb: int = 256,
          shutdown: bool = True) -> ScoreSummary:
    """Score ``inputs`` on Ray into the scored pool at ``output`` (see the module docstring).

    Args:
        inputs: files, folders of shards or URIs of one format.
        output: the :class:`~pool.store.PoolStore` folder (created with the first shard).
        concurrency: ``(min, max)`` actors of the pool.
        ray_address: ``None`` starts a local instance; ``auto`` or ``HOST:PORT`` joins a cluster.
        shard_rows: rows per written shard (the last one of a run is smaller).
        shutdown: disconnect from Ray (and stop the local instance) at the end.

    Raises:
        ScoreInputError: bad input, options, or an output folder made for other labels / template / method;
            raised before anything is written.
        RuntimeError: the Ray job failed (shards written before stay; rerun to resume).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray
    import ray.data

    from pool.store import COLUMNS, PoolStore, StoreError

    started = time.perf_counter()
    kind, paths = resolve_inputs(list(inputs))
    check_columns(kind, paths, config.text_column, config.id_column)
    if kind == "text":
        config = replace(config, text_column="text")
    low, high = parse_concurrency(concurrency)
    store = PoolStore(output)
    if store.root.exists() and not store.root.is_dir():
        raise ScoreInputError(f"--output {store.root} is a file, not a folder")
    previous = None
    if store.exists():
        try:
            previous = store.check(list(config.labels))
        except StoreError as exc:
            raise ScoreInputError(str(exc)) from None
        for key, value in (("hypothesis_template", config.hypothesis_template), ("multi_label", config.multi_label)):
            if key in previous and previous[key] != value:
                raise ScoreInputError(f"the scored pool in {store.root} was made with {key}={previous[key]!r}, "
                                      f"not {value!r}: use the same options, or another --output")
    elif store.shards():
        raise ScoreInputError(f"{store.root} has part-*.parquet shards but no meta.json: use an empty folder")
    summary = ScoreSummary(output=str(store.root), inputs=paths, concurrency=(low, high), num_cpus=config.num_cpus)
    summary.ray_address = start_ray(ray_address, high * config.num_cpus, object_store_mb)
    try:
        summary.cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
        ds = read_dataset(kind, paths, config.text_column, config.id_column,
                          num_blocks=_num_blocks(paths, config.batch_size, high))
        done_ids = frozenset(store.ids()) if store.shards() else frozenset()
        done = [ray.put(done_ids)] if done_ids else []
        logger.info("%d ids already stored in %s: those rows are skipped", len(done_ids), store.root)
        scored = ds.map_batches(ScoreActor, fn_constructor_kwargs={"config": asdict(config), "done": done},
                                batch_size=config.batch_size, batch_format="pyarrow", num_cpus=config.num_cpus,
                                compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high))
        pending: list = []
        pending_rows = 0
        meta_written = False
        actors, nodes = set(), set()
        for block in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            status = block.column("_status").to_numpy()
            summary.read += block.num_rows
            summary.skipped_done += int((status == DONE).sum())
            summary.empty += int((status == EMPTY).sum())
            summary.duplicates_in_batch += int((status == DUPLICATE).sum())
            for value in block.column("_meta").drop_null().to_pylist():
                meta = json.loads(value)
                actors.add(meta["actor"])
                nodes.add(meta["node"])
                if not meta_written and (meta.get("encoder") or {}).get("dim"):  # a batch that embedded something
                    _write_meta(store, previous, config, meta)
                    meta_written = True
                    summary.agent = meta["agent"]
            keep = block.filter(pc.equal(block.column("_status"), SCORED)).select(list(COLUMNS))
            if not summary.first_output_seconds:
                summary.first_output_seconds = round(time.perf_counter() - started, 3)
                summary.first_output_rows = keep.num_rows
            if keep.num_rows:
                pending.append(keep)
                pending_rows += keep.num_rows
            if pending_rows >= shard_rows:
                whole = pa.concat_tables(pending)
                while whole.num_rows >= shard_rows:
                    _flush(store, whole.slice(0, shard_rows))
                    summary.shards_written += 1
                    summary.scored += shard_rows
                    whole = whole.slice(shard_rows)
                pending, pending_rows = [whole], whole.num_rows
        if pending_rows:
            _flush(store, pa.concat_tables(pending))
            summary.shards_written += 1
            summary.scored += pending_rows
        summary.actors, summary.nodes, summary.actor_ids = len(actors), len(nodes), sorted(actors)
    finally:
        summary.wall_seconds = round(time.perf_counter() - started, 3)
        if shutdown:
            ray.shutdown()
    return summary


def _write_meta(store, previous: dict | None, config: ScoreConfig, meta: dict) -> None:
    """Write ``meta.json`` for a new folder; for an existing one check that method and encoder match."""
    encoder = meta.get("encoder") or {}
    if previous is not None:
        if previous.get("method") and previous["method"] != meta["method"]:
            raise ScoreInputError(f"the scored pool in {store.root} was scored with the {previous['method']} method, "
                                  f"this job serves {meta['method']}: pass --method {previous['method']}, or use "
                                  "another --output")
        stored = (previous.get("encoder") or {}).get("fingerprint")
        if stored and stored != encoder.get("fingerprint"):
            raise ScoreInputError(f"the embeddings in {store.root} come from encoder {stored}, this job's is "
                                  f"{encoder.get('fingerprint')}: use another --output")
        return
    store.write_meta({"labels": list(config.labels), "hypothesis_template": config.hypothesis_template,
                      "multi_label": config.multi_label, "method": meta["method"], "model": meta["model"],
                      "engine": meta["engine"], "agent": meta["agent"], "encoder": encoder})


def _flush(store, table) -> None:
    table = table.combine_chunks()
    store.write_shard(_shard_name(table.column("id").to_pylist()), table)
