"""``push``: stream texts, score them, and upsert records with suggestions into an Argilla dataset.

Resumable by construction: record ids are content hashes (:func:`annotate.dataset.record_id`), ids already in
the dataset are read once at the start and skipped before scoring, and every upsert is keyed by id, so a
batch retried after a transient failure, or a whole run repeated after an interruption, writes each record
exactly once. Memory holds one batch of texts plus the set of record ids (32 characters each).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from annotate import client as argilla_client
from annotate.dataset import (
    AUDIT,
    AUDIT_ORDER,
    GUIDELINES,
    QUESTION,
    VECTOR,
    DatasetMismatch,
    audit_metadata,
    build_records,
    build_settings,
    check_compatible,
    deep_link,
    has_metadata,
    has_vectors,
    record_id,
    teacher_key,
)
from annotate.upsert import UpsertFailed
from pool.readers import InputRow
from pool.store import StoreError

logger = logging.getLogger(__name__)


@dataclass
class PushSummary:
    """What a push did. Times are seconds of wall clock; ``scoring_seconds`` is the time inside the scorer
    (HTTP round trips to the service, or the in-process model), ``argilla_seconds`` the time in upserts."""

    dataset: str
    workspace: str
    dataset_id: str | None = None
    url: str | None = None
    agent: str | None = None
    read: int = 0
    pushed: int = 0
    skipped_existing: int = 0
    duplicates_in_input: int = 0
    empty: int = 0
    failed: int = 0
    existing_before: int = 0
    label_counts: dict = field(default_factory=dict)
    confidence_sum: float = 0.0
    total_seconds: float = 0.0
    scoring_seconds: float = 0.0
    argilla_seconds: float = 0.0
    embedded: int = 0
    fit_seconds: float | None = None
    head: dict | None = None
    head_dir: str | None = None
    #: Adapted push: records whose head suggestion has another label than the zero-shot one, and those that changed
    #: label or score by more than 0.02 (what rewriting early zero-shot suggestions would have cost).
    head_changed_label: int = 0
    head_changed: int = 0
    #: Adapted push: records in the pool the head was first fitted on (the rest streamed), and the records the refit
    #: on the whole pool rewrote.
    head_fit_rows: int | None = None
    rewritten: int = 0

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.pushed if self.pushed else None

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_confidence": self.mean_confidence}

    def render(self) -> str:
        """Human-readable summary (several lines)."""
        labels = ", ".join(f"{k}: {v}" for k, v in sorted(self.label_counts.items(), key=lambda kv: -kv[1])) or "-"
        mean = f"{self.mean_confidence:.4f}" if self.mean_confidence is not None else "-"
        rate = f" ({self.pushed / self.total_seconds:.1f} records/s)" if self.total_seconds and self.pushed else ""
        return "\n".join([
            f"dataset            {self.workspace}/{self.dataset} (id {self.dataset_id})",
            f"agent              {self.agent}",
            f"read               {self.read}",
            f"pushed             {self.pushed}",
            f"skipped (present)  {self.skipped_existing}",
            f"duplicates (input) {self.duplicates_in_input}",
            f"empty texts        {self.empty}",
            f"failed             {self.failed}",
            f"suggested labels   {labels}",
            f"mean confidence    {mean}",
            f"time               {self.total_seconds:.1f} s total{rate}; model/scoring {self.scoring_seconds:.1f} s, "
            f"Argilla upserts {self.argilla_seconds:.1f} s",
            *([f"adapted head       {self.head['mode']} (revision {self.head['revision']}, pool {self.head['pool_size']}, "
               f"pseudo-labels {self.head['pseudo_labels']}, temperature {self.head['temperature']:.3g}), fit "
               f"{self.fit_seconds:.2f} s" + (f"; saved in {self.head_dir}" if self.head_dir else "")
               + (f"; {self.head['note']}" if self.head.get("note") else "")
               + f"; {self.head_changed_label} suggested labels differ from zero-shot ({self.head_changed} "
               "label or score > 0.02)"
               + (f"; first fitted on {self.head_fit_rows} records while the rest streamed, the refit on the whole "
                  f"pool rewrote {self.rewritten}" if self.head_fit_rows and self.head.get("first_fit") else "")]
              if self.head else []),
            f"review (lowest score first): {self.url}",
        ])


class PushFailed(RuntimeError):
    """A push stopped part-way; ``summary`` says what was written before."""

    def __init__(self, message: str, summary: PushSummary) -> None:
        super().__init__(message)
        self.summary = summary


def existing_ids(dataset) -> set[str]:
    """Ids of every record already in ``dataset`` (one paged read, without suggestions or responses)."""
    def read() -> set[str]:
        return {str(r.id) for r in dataset.records(batch_size=1000, with_suggestions=False, with_responses=False)}

    return argilla_client.call(read, what="read of existing record ids")


def _batches(rows: Iterable[InputRow], size: int) -> Iterator[list[InputRow]]:
    batch: list[InputRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def push(rows: Iterable[InputRow] | None, *, client, api_url: str, dataset_name: str, workspace: str,
         labels: list[str], multi_label: bool, template: str, scorer, batch_size: int = 64, threshold: float = 0.5,
         total: int | None = None, progress: bool = True, cache=None, adaptive: bool = False,
         audit_fraction: float = 0.05, from_scores=None, head_config=None, fit_rows: int | None = None,
         label_descriptions: dict[str, list[str]] | None = None) -> PushSummary:
    """Score ``rows`` with ``scorer`` and upsert them into ``workspace/dataset_name`` (created on first write).

    The dataset is looked up (and checked against ``labels``/``multi_label``) before anything is scored; it is
    created only when the first scored batch is ready, so an input that fails early leaves nothing behind.

    Every new text is scored and embedded once, from one scorer call a chunk (``scorer.score_and_embed``: with the
    embedding and ensemble methods one encoder pass gives both), and kept in ``cache``
    (:class:`annotate.cache.DatasetCache`) before its record is upserted; records carry the embedding in the vector
    field :data:`annotate.dataset.VECTOR` (datasets created before it existed get none) and the ``audit`` flag
    (:func:`annotate.dataset.audit_flags`, ``audit_fraction`` of the records).

    Without ``adaptive``, records go to Argilla through :class:`annotate.upsert.Upserter` (bounded, concurrent bulk
    upserts) while the next batch is scored. ``adaptive`` (single-label): the adapted head
    (:func:`annotate.adaptive.adapt`) is fitted on the whole cached pool once every text is scored, then the records
    are upserted with its suggestions; with ``fit_rows``, it is first fitted on that many records, whose records are
    upserted while the rest of the input is scored and suggested by the same head, and at the end refitted on the
    whole pool, rewriting only the records whose suggestion it changes (:func:`_push_adapted`). Agent ``<encoder>:adaptive-head:<revision>``;
    ``teacher_score_<i>`` keeps the zero-shot scores; the head is saved in ``cache.head_dir``. ``from_scores``: a :class:`pool.store.PoolStore` written by
    ``python -m annotate score`` (checked by the caller) whose records are pushed instead of ``rows``, unscored.
    ``label_descriptions`` (those the scorer was given) are shown in the question of a new dataset and kept in the
    cache's meta.

    Raises:
        annotate.dataset.DatasetMismatch: the existing dataset has other labels or another label mode, or (with
            ``adaptive``) no vector field.
        annotate.client.ArgillaRefused / ArgillaUnavailable: before any write.
        PushFailed: Argilla or the scorer failed after some batches were written (``summary`` tells how far).
    """

    from annotate.adaptive import AdaptError
    from annotate.client import ArgillaRefused, ArgillaUnavailable
    from pool.scorers import ScoringError

    started = time.perf_counter()
    summary = PushSummary(dataset=dataset_name, workspace=workspace)
    dataset = argilla_client.find_dataset(client, dataset_name, workspace)
    seen: set[str] = set()
    vectors_on = audit_on = audit_order_on = True
    if dataset is not None:
        check_compatible(dataset, labels, multi_label)
        vectors_on, audit_on = has_vectors(dataset), has_metadata(dataset, AUDIT)
        audit_order_on = has_metadata(dataset, AUDIT_ORDER)
        if adaptive and not vectors_on:
            raise DatasetMismatch(NO_VECTORS.format(name=dataset_name))
        seen = existing_ids(dataset)
        summary.existing_before = len(seen)
        summary.dataset_id, summary.url = str(dataset.id), deep_link(api_url, dataset.id)
        logger.info("dataset %s/%s exists with %d records; those are skipped", workspace, dataset_name, len(seen))
    if cache is not None:
        cache.validate(dataset.id if dataset is not None else None, labels)
    state = _State(client=client, api_url=api_url, name=dataset_name, workspace=workspace, labels=labels,
                   multi_label=multi_label, template=template, scorer=scorer, dataset=dataset, summary=summary,
                   cache=cache, audit_on=audit_on, audit_fraction=audit_fraction, audit_order_on=audit_order_on,
                   descriptions=label_descriptions)
    label_counts: Counter = Counter()
    try:
        if adaptive:
            _push_adapted(state, rows, seen, batch_size, total, progress, from_scores, head_config, label_counts,
                          fit_rows)
        else:
            _push_streaming(state, rows, seen, batch_size, threshold, total, progress, vectors_on, label_counts)
    except (ArgillaRefused, ArgillaUnavailable, ScoringError, StoreError, AdaptError) as exc:
        if state.created and summary.pushed == 0:  # leave no empty dataset behind
            _delete_quietly(state.dataset)
            summary.dataset_id = summary.url = None
        raise PushFailed(str(exc), summary) from None
    finally:
        summary.label_counts = dict(label_counts)
        summary.scoring_seconds = round(scorer.seconds, 3) if scorer is not None else 0.0
        summary.argilla_seconds = round(summary.argilla_seconds, 3)
        summary.total_seconds = round(time.perf_counter() - started, 3)
    return summary


#: The message for an adapted push (or a refresh) into a dataset without the vector field.
NO_VECTORS = ("dataset {name!r} has no vector field {vector!r} (it was pushed before adaptation existed): push with "
              "--no-adapt to keep zero-shot suggestions, or push into a new --dataset").replace("{vector!r}",
                                                                                                repr(VECTOR))


@dataclass
class _State:
    client: object
    api_url: str
    name: str
    workspace: str
    labels: list
    multi_label: bool
    template: str
    scorer: object
    dataset: object
    summary: PushSummary
    cache: object
    audit_on: bool
    audit_fraction: float
    audit_order_on: bool = True
    created: bool = False
    descriptions: dict | None = None

    def ensure_dataset(self, vector_dim: int | None, agent: str):
        """The dataset, created (with the vector field and the audit metadata) on first use; binds the cache."""
        if self.dataset is None:
            self.dataset = _create(self.client, self.name, self.workspace, self.labels, self.multi_label,
                                   self.template, agent, vector_dim, self.descriptions)
            self.created = True
            self.summary.dataset_id = str(self.dataset.id)
            self.summary.url = deep_link(self.api_url, self.dataset.id)
        if self.cache is not None:
            self.cache.bind(self.dataset.id)
        return self.dataset


def _pick_new(batch: list[InputRow], present: set[str], seen: set[str], summary: PushSummary):
    """``(ids, texts, source ids)`` of the rows of ``batch`` to push (not empty, not in the dataset, not repeated)."""
    ids, texts, sources = [], [], []
    for row in batch:
        if not row.text:
            summary.empty += 1
            continue
        rid = record_id(row.text, row.source_id)
        if rid in present:
            summary.skipped_existing += 1
        elif rid in seen:
            summary.duplicates_in_input += 1
        else:
            seen.add(rid)
            ids.append(rid)
            texts.append(row.text)
            sources.append(row.source_id)
    return ids, texts, sources


def _store_meta(state: _State) -> dict:
    scorer = state.scorer
    return {"labels": list(state.labels), "hypothesis_template": state.template, "multi_label": state.multi_label,
            "method": scorer.served_method, "model": scorer.model_id, "engine": scorer.engine, "agent": scorer.agent,
            "encoder": scorer.encoder, **({"label_descriptions": state.descriptions} if state.descriptions else {})}


def _write_shard(state: _State, ids, texts, sources, scores, embeddings) -> None:
    """Keep scored texts in the cache (a shard named by a hash of its ids); the meta is written with the first."""
    from pool.store import shard_table

    store = state.cache.pool
    meta = _store_meta(state)
    if store.exists():
        store.check(state.labels, (meta["encoder"] or {}).get("fingerprint"))
    store.write_shard(hashlib.sha256("".join(ids).encode()).hexdigest()[:16],
                      shard_table(ids, texts, scores, embeddings, state.labels, sources, state.multi_label))
    if not store.exists():
        store.write_meta(meta)


def _push_streaming(state: _State, rows, seen, batch_size, threshold, total, progress, vectors_on, label_counts):
    """Zero-shot suggestions, batch by batch: score and embed (one call a chunk), cache, upsert; the upserts go out on
    :class:`annotate.upsert.Upserter`'s threads while the next batch is scored (no head to wait for)."""
    from tqdm import tqdm

    from annotate.upsert import Upserter
    from pool.scorers import ScoringError

    summary = state.summary
    present = set(seen)
    bar = tqdm(total=total, unit="rec", desc="push", disable=not progress, dynamic_ncols=True)
    upserter = None
    submitted = 0
    try:
        for batch in _batches(rows, batch_size):
            summary.read += len(batch)
            ids, texts, sources = _pick_new(batch, present, seen, summary)
            if texts:
                try:
                    if vectors_on:
                        scores, embeddings = state.scorer.score_and_embed(texts)
                    else:
                        scores, embeddings = state.scorer.score(texts), None
                except ScoringError as exc:
                    if not (vectors_on and state.dataset is None
                            and ("sentence encoder" in str(exc) or "has no POST /embed" in str(exc))):
                        summary.failed += len(texts)
                        raise
                    # --no-adapt on a service without a sentence encoder: a dataset without vectors, as before
                    logger.warning("%s: the dataset gets no vector field (refresh will need --embed)", exc)
                    vectors_on = False
                    try:
                        scores, embeddings = state.scorer.score(texts), None
                    except Exception:
                        summary.failed += len(texts)
                        raise
                except Exception:
                    summary.failed += len(texts)
                    raise
                summary.agent = state.scorer.agent
                if embeddings is not None:
                    summary.embedded += len(texts)
                    embeddings = embeddings.astype(np.float16).astype(np.float32)  # what the cache holds
                    if state.cache is not None:
                        _write_shard(state, ids, texts, sources, scores, embeddings)
                extra = (audit_metadata(ids, state.audit_fraction, state.audit_order_on) if state.audit_on
                         else None)
                records = build_records(ids, texts, scores, state.labels, state.multi_label, state.scorer.agent,
                                        threshold, vectors=embeddings, extra_metadata=extra)
                if upserter is None:
                    try:
                        dataset = state.ensure_dataset(embeddings.shape[1] if embeddings is not None else None,
                                                       state.scorer.agent)
                    except Exception:
                        summary.failed += len(records)
                        raise
                    upserter = Upserter(dataset, batch_size=min(max(batch_size, 256), 500))
                upserter.submit(records)
                submitted += len(records)
                summary.confidence_sum += float(scores.max(axis=1).sum())
                for record in records:
                    value = record.suggestions[QUESTION].value
                    label_counts.update(value if isinstance(value, list) else [value])
            bar.update(len(batch))
            bar.set_postfix(pushed=upserter.stats.written if upserter else 0, skipped=summary.skipped_existing,
                            refresh=False)
        if upserter is not None:
            upserter.close()
            summary.pushed += upserter.stats.written
    except UpsertFailed as exc:
        summary.pushed += exc.written
        summary.failed += submitted - exc.written
        raise PushFailed(str(exc), summary) from None
    except BaseException:
        if upserter is not None:  # the scorer (or the input) failed: what was scored before is still written
            try:
                upserter.close()
            except UpsertFailed:
                pass
            summary.pushed += upserter.stats.written
            summary.failed += submitted - upserter.stats.written
        raise
    finally:
        bar.close()
        if upserter is not None:  # the requests' own time (they overlap the scoring, and each other)
            summary.argilla_seconds += upserter.stats.request_seconds


def _copy_scored(state: _State, source) -> None:
    """Put the shards of a scored-pool folder (``python -m annotate score``) into the cache (once)."""
    import shutil

    store = state.cache.pool
    meta = source.meta()
    if store.exists():
        store.check(state.labels, (meta.get("encoder") or {}).get("fingerprint"))
    store.root.mkdir(parents=True, exist_ok=True)
    for path in source.shards():
        name = path.name[len("part-"):-len(".parquet")]
        target = store.shard_path(f"scored-{name}")
        if not target.exists():
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
    if not store.exists():
        store.write_meta({k: v for k, v in meta.items() if k != "format_version"})


def _push_adapted(state: _State, rows, seen, batch_size, total, progress, from_scores, head_config, label_counts,
                  fit_rows: int | None = None) -> None:
    """Adapted suggestions with the upserts overlapping the scoring:

    1. score (and embed) new texts into the cache until the cached pool holds ``fit_rows`` records (``None``, the
       default, or a smaller input: all of it, and there is nothing left to stream), and fit the head on that pool;
    2. upsert its records with the head's suggestions on :class:`annotate.upsert.Upserter`'s threads while the rest of
       the input is scored, each later record suggested by that head as soon as it is scored;
    3. when records were scored after the fit, refit on the whole pool (what ``push`` fitted before, and what the
       next ``refresh`` starts from) and rewrite only the records whose suggestion it changes, in label or by more
       than :data:`RECONCILE_SCORE_CHANGE` in score (:func:`_reconcile`).

    Every record ends with the whole-pool head's label, as without streaming; how much step 3 rewrites depends on
    how alike the first ``fit_rows`` records are to the rest, and it can be most of them: 2-7% of shuffled AG News
    and SST-2 pools at 2,048, but 56% of the AG News pool of ``benchmarks/push_throughput.py``, whose first records
    fail a guard the whole pool passes (``benchmarks/push_fit_rows.py``, docs/scale.md). So streaming is opt-in."""
    from tqdm import tqdm

    from annotate.upsert import Upserter

    summary = state.summary
    sample = float("inf") if fit_rows is None else fit_rows  # None: the whole input before the first fit
    present = set(seen)
    todo: dict[str, None] = {}  # record ids to write, in input order
    iterator = None
    if from_scores is not None:
        _copy_scored(state, from_scores)
        for rid in sorted(from_scores.ids()):
            summary.read += 1
            if rid in present:
                summary.skipped_existing += 1
            else:
                todo[rid] = None
    else:
        cached = state.cache.pool.ids() if state.cache.pool.exists() else set()
        iterator = _batches(rows, batch_size)
        scored = len(cached)
        bar = tqdm(total=total, unit="rec", desc="score+embed (head sample)", disable=not progress,
                   dynamic_ncols=True)
        buffer: tuple[list, list, list] = ([], [], [])
        try:
            for batch in iterator:
                summary.read += len(batch)
                for rid, text, source in zip(*_pick_new(batch, present, seen, summary)):
                    todo[rid] = None
                    if rid not in cached:
                        buffer[0].append(rid)
                        buffer[1].append(text)
                        buffer[2].append(source)
                if len(buffer[0]) >= SHARD_ROWS:
                    scored += _score_into_cache(state, *buffer)
                bar.update(len(batch))
                bar.set_postfix(new=len(todo), skipped=summary.skipped_existing, refresh=False)
                if scored + len(buffer[0]) >= sample:
                    break
            else:
                iterator = None  # the input ended before the sample was full: nothing left to stream
            _score_into_cache(state, *buffer)
        finally:
            bar.close()
    if not todo and iterator is None:
        return
    pool = state.cache.load_pool()
    if pool is None:
        raise StoreError(f"no scored pool in {state.cache.pool.root}")
    adapted, agent = _fit(state, pool, head_config)
    summary.head_fit_rows = len(pool.ids)
    row_of = {rid: i for i, rid in enumerate(pool.ids)}
    written: dict[str, np.ndarray] = {}  # what each record got, for the final reconciliation
    dataset = state.ensure_dataset(pool.embeddings.shape[1], agent)
    bar = tqdm(unit="rec", desc="upsert (scoring the rest meanwhile)", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    upserter = Upserter(dataset, batch_size=min(batch_size * 4, 500), on_written=bar.update)
    try:
        with upserter:
            rows_todo = np.asarray([row_of[rid] for rid in todo], dtype=np.int64)
            for start in range(0, len(rows_todo), batch_size):
                chunk = rows_todo[start:start + batch_size]
                _submit(state, upserter, [pool.ids[i] for i in chunk], [pool.texts[i] for i in chunk],
                        pool.scores[chunk], pool.embeddings[chunk], adapted.scores[chunk], agent, label_counts,
                        written)
            streamed = 0
            for batch in iterator or ():  # the rest of the input: scored, suggested by this head, upserted
                summary.read += len(batch)
                ids, texts, sources = _pick_new(batch, present, seen, summary)
                if not ids:
                    continue
                streamed += len(ids)
                for rid in ids:
                    todo[rid] = None
                fresh = [j for j, rid in enumerate(ids) if rid not in row_of]
                zero_shot = np.zeros((len(ids), len(state.labels)), dtype=np.float32)
                embeddings = np.zeros((len(ids), pool.embeddings.shape[1]), dtype=np.float32)
                for j, rid in enumerate(ids):
                    if rid in row_of:  # in the cache from an earlier, interrupted push
                        zero_shot[j], embeddings[j] = pool.scores[row_of[rid]], pool.embeddings[row_of[rid]]
                if fresh:
                    new_scores, new_embeddings = _score_and_embed(state, [texts[j] for j in fresh])
                    _write_shard(state, [ids[j] for j in fresh], [texts[j] for j in fresh],
                                 [sources[j] for j in fresh], new_scores, new_embeddings)
                    summary.embedded += len(fresh)
                    zero_shot[fresh] = new_scores
                    embeddings[fresh] = new_embeddings.astype(np.float16).astype(np.float32)  # as the cache holds
                head_scores = (adapted.head.predict_proba(embeddings.astype(np.float64)) if adapted.head is not None
                               else zero_shot)
                _submit(state, upserter, ids, texts, zero_shot, embeddings, head_scores, agent, label_counts,
                        written)
        summary.pushed += upserter.stats.written
        if streamed:
            _reconcile(state, dataset, head_config, written, batch_size, label_counts)
    except UpsertFailed as exc:
        summary.pushed += exc.written
        summary.failed += len(todo) - exc.written
        raise PushFailed(str(exc), summary) from None
    finally:
        bar.close()
        summary.argilla_seconds += time.perf_counter() - t0


def _score_into_cache(state: _State, ids: list, texts: list, sources: list) -> int:
    """Score and embed ``texts`` (one call), keep them in the cache, empty the lists; the number scored."""
    if not ids:
        return 0
    scores, embeddings = _score_and_embed(state, texts)
    _write_shard(state, ids, texts, sources, scores, embeddings)
    state.summary.embedded += len(ids)
    n = len(ids)
    for part in (ids, texts, sources):
        part.clear()
    return n


def _score_and_embed(state: _State, texts: list) -> tuple[np.ndarray, np.ndarray]:
    try:
        return state.scorer.score_and_embed(texts)  # one call a chunk, one encoder pass a text
    except Exception:
        state.summary.failed += len(texts)
        raise


def _fit(state: _State, pool, head_config):
    """Fit the head on ``pool``; record it in the summary, save it in the cache; ``(adapted, agent)``."""
    from annotate.adaptive import adapt

    summary = state.summary
    t0 = time.perf_counter()
    adapted = adapt(pool.embeddings, pool.scores, state.labels, ids=pool.ids, config=head_config,
                    encoder=pool.meta.get("encoder"), meta={"hypothesis_template": state.template,
                                                            "dataset": f"{state.workspace}/{state.name}"})
    summary.fit_seconds = round((summary.fit_seconds or 0.0) + time.perf_counter() - t0, 3)
    summary.head = {k: v for k, v in adapted.report.to_dict().items() if k in
                    ("revision", "mode", "pool_size", "reviewed", "pseudo_labels", "temperature", "prior", "note")}
    agent = suggestion_agent(adapted, pool.meta)
    summary.agent = agent
    if adapted.head is not None:
        summary.head_dir = str(adapted.head.save(state.cache.head_dir))
    return adapted, agent


def _submit(state: _State, upserter, ids, texts, zero_shot, embeddings, head_scores, agent, label_counts,
            written: dict) -> None:
    """Queue records with the head's suggestions (``teacher_score_<i>`` keeps the zero-shot scores)."""
    upserter.submit(build_records(ids, texts, head_scores, state.labels, False, agent, vectors=embeddings,
                                  extra_metadata=record_metadata(zero_shot, ids, state)))
    summary = state.summary
    summary.confidence_sum += float(head_scores.max(axis=1).sum())
    label_counts.update(state.labels[j] for j in head_scores.argmax(axis=1))
    _count_head_changes(summary, zero_shot, head_scores)
    for rid, scores in zip(ids, head_scores):
        written[rid] = scores


def _reconcile(state: _State, dataset, head_config, written: dict, batch_size: int, label_counts) -> None:
    """Refit on the whole pool and rewrite the records whose suggestion the whole-pool head changes: another label, or
    a score more than :data:`RECONCILE_SCORE_CHANGE` away. Every record ends with the whole-pool head's label; the
    others keep the first head's score (within 0.1) and agent, until ``refresh`` (threshold 0.02) rewrites them."""
    from annotate.upsert import Upserter

    summary = state.summary
    pool = state.cache.load_pool()
    first = dict(summary.head or {})
    adapted, agent = _fit(state, pool, head_config)
    rows = np.asarray([i for i, rid in enumerate(pool.ids) if rid in written], dtype=np.int64)
    before = np.stack([written[pool.ids[i]] for i in rows]) if len(rows) else np.zeros((0, len(state.labels)))
    after = adapted.scores[rows]
    top_before, top_after = before.argmax(axis=1), after.argmax(axis=1)
    index = np.arange(len(rows))
    changed = (top_before != top_after) | (np.abs(after[index, top_after] - before[index, top_before])
                                           > RECONCILE_SCORE_CHANGE)
    stale = rows[changed]
    summary.rewritten = int(len(stale))
    logger.info("head fitted on the first %d records of the pool, refitted on all %d: %d suggestions rewritten "
                "(%d with another label)", summary.head_fit_rows, len(pool.ids), len(stale),
                int((top_before != top_after).sum()))
    summary.head = {**summary.head, "first_fit": {k: first.get(k) for k in ("revision", "mode", "pool_size")}}
    if not len(stale):
        return
    for i, j in zip(top_before[changed], top_after[changed]):  # the counts describe what the records end with
        label_counts[state.labels[i]] -= 1
        label_counts[state.labels[j]] += 1
    summary.confidence_sum += float(after[changed].max(axis=1).sum() - before[changed].max(axis=1).sum())
    try:
        with Upserter(dataset, batch_size=min(batch_size * 4, 500)) as upserter:
            for start in range(0, len(stale), batch_size):
                chunk = stale[start:start + batch_size]
                ids = [pool.ids[i] for i in chunk]
                upserter.submit(build_records(ids, [pool.texts[i] for i in chunk], adapted.scores[chunk],
                                              state.labels, False, agent, vectors=pool.embeddings[chunk],
                                              extra_metadata=record_metadata(pool.scores[chunk], ids, state)))
    except UpsertFailed as exc:  # every record is in Argilla already; refresh rewrites what is left
        raise PushFailed(f"every record was written, but rewriting {len(stale)} suggestions with the head refitted "
                         f"on the whole pool stopped after {exc.written} ({exc}): run refresh to finish", summary
                         ) from None


def _count_head_changes(summary: PushSummary, zero_shot: np.ndarray, head: np.ndarray) -> None:
    """Count the records whose head suggestion differs from the zero-shot one: another label, or the same label with
    a score more than :data:`REWRITE_SCORE_CHANGE` away (refresh's rule for rewriting a pending record). That is what
    writing zero-shot suggestions while the pool is scored and rewriting them once the head exists would cost."""
    top_zero, top_head = zero_shot.argmax(axis=1), head.argmax(axis=1)
    rows = np.arange(len(head))
    relabelled = top_zero != top_head
    moved = np.abs(head[rows, top_head] - zero_shot[rows, top_zero]) > REWRITE_SCORE_CHANGE
    summary.head_changed_label += int(relabelled.sum())
    summary.head_changed += int((relabelled | moved).sum())


#: ``refresh``'s default ``min_score_change``: a suggestion whose score moved less keeps its record unwritten.
REWRITE_SCORE_CHANGE = 0.02

#: Texts scored (and embedded) together before they are written to the cache as one shard.
SHARD_ROWS = 1024

#: ``push --fit-rows`` (streaming): the score change at which the refit on the whole pool rewrites a record (any label
#: change is rewritten). Chosen on AG News and SST-2 (``benchmarks/push_fit_rows.py``,
#: ``benchmarks/results/push_fit_rows/``): with 2,048 first records a shuffled input rewrites 2-7% of its records, one
#: sorted by class 51-59%; with 0.02 (``refresh``'s threshold) 57-70% of a shuffled input would be.
RECONCILE_SCORE_CHANGE = 0.1


def record_metadata(zero_shot: np.ndarray, ids, state) -> dict:
    """Extra metadata of adapted records: the zero-shot scores as ``teacher_score_<i>``, and the audit flag."""
    extra = {teacher_key(i): [float(v) for v in zero_shot[:, i]] for i in range(zero_shot.shape[1])}
    if state.audit_on:
        extra.update(audit_metadata(ids, state.audit_fraction, state.audit_order_on))
    return extra


def suggestion_agent(adapted, meta: dict) -> str:
    """The agent of adapted suggestions: ``<encoder model id>:adaptive-head:<revision>``, or the zero-shot agent
    when the zero-shot scores were kept; characters Argilla refuses become ``-``."""
    if adapted.head is None:
        agent = meta.get("agent") or "zero-shot"
    else:
        agent = f"{(meta.get('encoder') or {}).get('model_id', 'encoder')}:{adapted.head.agent}"
    return re.sub(r"[^a-zA-Z0-9\-_:./ ]", "-", agent)


def _log(dataset, records: list) -> None:
    """Upsert ``records`` (one request). The SDK draws a progress bar per call; it is silenced here so that
    only the push's own bar shows."""
    with contextlib.redirect_stderr(io.StringIO()):
        dataset.records.log(records, batch_size=len(records))


def _delete_quietly(dataset) -> None:
    try:
        dataset.delete()
        logger.info("deleted the dataset created by this run: nothing was written to it")
    except Exception as exc:  # best effort: the error that stopped the push is the one to report
        logger.warning("could not delete the empty dataset %s: %s", dataset.name, exc)


def _create(client, name: str, workspace: str, labels: list[str], multi_label: bool, template: str, agent: str,
            vector_dim: int | None = None, descriptions: dict | None = None):
    import argilla as rg

    guidelines = GUIDELINES.format(agent=agent, template=template)
    settings = build_settings(labels, multi_label, guidelines, vector_dim=vector_dim, audit=True,
                              descriptions=descriptions)
    dataset = rg.Dataset(name=name, workspace=workspace, settings=settings, client=client)
    argilla_client.call(dataset.create, attempts=1, what=f"creation of dataset {name!r}")
    logger.info("created dataset %s/%s (%s)", workspace, name, dataset.id)
    return dataset
