"""``push``: stream texts, score them, and upsert records with suggestions into an Argilla dataset.

Resumable by construction: record ids are content hashes (:func:`annotate.dataset.record_id`), ids already in
the dataset are read once at the start and skipped before scoring, and every upsert is keyed by id, so a
batch retried after a transient failure, or a whole run repeated after an interruption, writes each record
exactly once. Memory holds one batch of texts plus the set of record ids (32 characters each).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

from annotate import client as argilla_client
from annotate.dataset import GUIDELINES, QUESTION, build_records, build_settings, check_compatible, deep_link, record_id
from annotate.readers import InputRow

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


def push(rows: Iterable[InputRow], *, client, api_url: str, dataset_name: str, workspace: str, labels: list[str],
         multi_label: bool, template: str, scorer, batch_size: int = 64, threshold: float = 0.5,
         total: int | None = None, progress: bool = True) -> PushSummary:
    """Score ``rows`` with ``scorer`` and upsert them into ``workspace/dataset_name`` (created on first write).

    The dataset is looked up (and checked against ``labels``/``multi_label``) before anything is scored; it is
    created only when the first scored batch is ready, so an input that fails early leaves nothing behind.

    Raises:
        annotate.dataset.DatasetMismatch: the existing dataset has other labels or another label mode.
        annotate.client.ArgillaRefused / ArgillaUnavailable: before any write.
        PushFailed: Argilla or the scorer failed after some batches were written (``summary`` tells how far).
    """
    from tqdm import tqdm

    from annotate.client import ArgillaRefused, ArgillaUnavailable
    from annotate.scoring import ScoringError

    started = time.perf_counter()
    summary = PushSummary(dataset=dataset_name, workspace=workspace)
    dataset = argilla_client.find_dataset(client, dataset_name, workspace)
    seen: set[str] = set()
    if dataset is not None:
        check_compatible(dataset, labels, multi_label)
        seen = existing_ids(dataset)
        summary.existing_before = len(seen)
        summary.dataset_id, summary.url = str(dataset.id), deep_link(api_url, dataset.id)
        logger.info("dataset %s/%s exists with %d records; those are skipped", workspace, dataset_name, len(seen))
    present = set(seen)
    created = False
    label_counts: Counter = Counter()
    bar = tqdm(total=total, unit="rec", desc="push", disable=not progress, dynamic_ncols=True)
    try:
        for batch in _batches(rows, batch_size):
            summary.read += len(batch)
            todo_ids, todo_texts = [], []
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
                    todo_ids.append(rid)
                    todo_texts.append(row.text)
            if todo_texts:
                try:
                    scores = scorer.score(todo_texts)
                except ScoringError as exc:
                    summary.failed += len(todo_texts)
                    raise PushFailed(str(exc), summary) from None
                summary.agent = scorer.agent
                records = build_records(todo_ids, todo_texts, scores, labels, multi_label, scorer.agent, threshold)
                t0 = time.perf_counter()
                try:
                    if dataset is None:
                        dataset = _create(client, dataset_name, workspace, labels, multi_label, template, scorer)
                        created = True
                        summary.dataset_id, summary.url = str(dataset.id), deep_link(api_url, dataset.id)
                    argilla_client.call(_log, dataset, records, what=f"upsert of {len(records)} records")
                except (ArgillaRefused, ArgillaUnavailable) as exc:
                    summary.failed += len(records)
                    if created and summary.pushed == 0:  # leave no empty dataset behind
                        _delete_quietly(dataset)
                        summary.dataset_id = summary.url = None
                    raise PushFailed(str(exc), summary) from None
                summary.argilla_seconds += time.perf_counter() - t0
                summary.pushed += len(records)
                summary.confidence_sum += float(scores.max(axis=1).sum())
                for record in records:
                    value = record.suggestions[QUESTION].value
                    label_counts.update(value if isinstance(value, list) else [value])
            bar.update(len(batch))
            bar.set_postfix(pushed=summary.pushed, skipped=summary.skipped_existing, refresh=False)
    finally:
        bar.close()
        summary.label_counts = dict(label_counts)
        summary.scoring_seconds = round(scorer.seconds, 3)
        summary.argilla_seconds = round(summary.argilla_seconds, 3)
        summary.total_seconds = round(time.perf_counter() - started, 3)
    return summary


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


def _create(client, name: str, workspace: str, labels: list[str], multi_label: bool, template: str, scorer):
    import argilla as rg

    guidelines = GUIDELINES.format(agent=scorer.agent, template=template)
    dataset = rg.Dataset(name=name, workspace=workspace, settings=build_settings(labels, multi_label, guidelines),
                         client=client)
    argilla_client.call(dataset.create, attempts=1, what=f"creation of dataset {name!r}")
    logger.info("created dataset %s/%s (%s)", workspace, name, dataset.id)
    return dataset
