"""``python -m annotate suspects`` in Argilla: read the submitted responses, score them with
:func:`annotate.suspects.detect`, write the ``suspect`` metadata, summarise per label and per annotator.

Kept apart from :mod:`annotate.suspects` (the detection itself, which ``simulate`` also runs) so that the detection
does not depend on the Argilla reading code of :mod:`annotate.refresh`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from annotate.suspects import SUSPECT, SuspectsError, detect

logger = logging.getLogger(__name__)


@dataclass
class SuspectsSummary:
    """What ``python -m annotate suspects`` found and wrote."""

    dataset: str
    dataset_id: str | None = None
    records: int = 0
    submitted: int = 0
    discarded: int = 0
    method: str | None = None
    flagged: int = 0
    oof_accuracy: float | None = None
    per_label: dict = field(default_factory=dict)
    per_annotator: dict = field(default_factory=dict)
    top: list = field(default_factory=list)
    written: int = 0
    cleared: int = 0
    dry_run: bool = False
    property_added: bool = False
    vectors_from: dict = field(default_factory=dict)
    link: str | None = None
    detect_seconds: float = 0.0
    total_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        """Human-readable summary (several lines)."""
        acc = "-" if self.oof_accuracy is None else f"{self.oof_accuracy:.4f}"
        lines = [f"dataset            {self.dataset} (id {self.dataset_id})",
                 f"reviewed           {self.submitted} submitted ({self.discarded} discarded) of {self.records} records",
                 f"method             {self.method}; out-of-fold head accuracy on the submitted labels {acc}",
                 f"flagged            {self.flagged} of {self.submitted} submitted labels look wrong",
                 "per label          label: flagged/reviewed (head suggests instead)"]
        for label, s in self.per_label.items():
            instead = ", ".join(f"{k} {v}" for k, v in s["suggested_instead"].items()) or "-"
            lines.append(f"  {label}: {s['flagged']}/{s['reviewed']} ({instead})")
        if self.per_annotator:
            lines.append("per annotator      annotator: flagged/reviewed" +
                         (" (quality, agreement with consensus)" if any("annotator_quality" in s for s in
                                                                         self.per_annotator.values()) else ""))
            for name, s in self.per_annotator.items():
                extra = (f" ({s['annotator_quality']:.3f}, {s['agreement_with_consensus']:.3f})"
                         if "annotator_quality" in s else "")
                lines.append(f"  {name}: {s['flagged']}/{s['reviewed']}{extra}")
        if self.top:
            lines.append("most suspect       score  label -> head's label  text")
            for t in self.top:
                mark = "*" if t["flagged"] else " "
                lines.append(f" {mark} {t['suspect']:.3f}  {t['label']} -> {t['suggested']}  {t['text'][:70]!r}")
        what = "nothing written (--dry-run)" if self.dry_run else \
            f"metadata {SUSPECT!r} written on {self.written} records ({self.cleared} cleared)"
        lines += [f"written            {what}", f"time               detection {self.detect_seconds:.1f} s, "
                                                   f"total {self.total_seconds:.1f} s"]
        if self.link:
            lines.append(f"review (most suspect first): {self.link}")
        return "\n".join(lines)


def read_submitted(dataset) -> tuple[dict[str, list[tuple[str, object]]], set[str]]:
    """``({record id: [(user id, label), ...] of every submitted response, first first}, discarded ids)``."""
    from annotate import client as argilla_client
    from annotate.dataset import QUESTION
    from annotate.export import reviewed_records

    def read():
        submitted, discarded = {}, set()
        for status, record in reviewed_records(dataset, statuses=("submitted", "discarded")):
            if status == "discarded":
                discarded.add(str(record.id))
                continue
            answers = [(str(r.user_id), r.value) for r in record.responses
                       if r.question_name == QUESTION and str(getattr(r.status, "value", r.status)) == "submitted"]
            if answers:
                submitted[str(record.id)] = answers
        return submitted, discarded

    return argilla_client.call(read, what="read of the responses")


def _usernames(client) -> dict[str, str]:
    """``{user id: username}`` (empty when the key may not list users)."""
    from annotate import client as argilla_client

    try:
        return argilla_client.call(lambda: {str(u.id): u.username for u in client.users}, what="read of the users")
    except Exception as exc:  # a key that may not list users: ids stand in for names
        logger.info("cannot list users (%s): annotators are named by id", exc)
        return {}


def _pool(dataset, records, labels, cache, dataset_name: str, summary: SuspectsSummary):
    """``(ids, embeddings, zero-shot)`` of every record, in record-id order (as ``refresh`` builds them): the local
    cache first, then Argilla's vectors and ``teacher_score_<i>`` metadata."""
    from annotate.dataset import has_vectors
    from annotate.refresh import place_vectors, read_vectors, rows_from_cache

    ids = sorted(records)
    cache.validate(dataset.id, labels)
    row_of, _, embeddings, zero_shot, have = rows_from_cache(cache, ids, len(labels))
    summary.vectors_from["cache"] = int(have.sum())
    missing = [ids[i] for i in np.flatnonzero(~have)]
    if missing:
        found = read_vectors(dataset, set(missing)) if has_vectors(dataset) else {}
        summary.vectors_from["argilla"] = len(found)
        if len(found) < len(missing):
            raise SuspectsError(f"{len(missing) - len(found)} records of {dataset_name!r} have neither a vector in "
                                f"Argilla nor an embedding in the local cache {cache.root}: run `python -m annotate "
                                "refresh --embed` first")
        embeddings, _ = place_vectors(records, missing, found, embeddings, zero_shot, row_of,
                                      dataset_name=dataset_name, cache_root=cache.root, error=SuspectsError)
    return ids, embeddings, zero_shot


def suspects(client, dataset_name: str, workspace: str, api_url: str, cache, *, dry_run: bool = False,
             top: int = 10, batch_size: int = 256, concurrency: int = 2, head_config=None) -> SuspectsSummary:
    """Score the submitted labels of ``workspace/dataset_name`` and write metadata :data:`SUSPECT` on them.

    Reads every record and response, maps the records onto the pool rows as ``refresh`` does (the local cache of
    :class:`annotate.cache.DatasetCache`, else Argilla's vectors and teacher metadata), runs :func:`detect` with the
    first submitted response of each record as its label (what the head trains on) and every submitted response for
    CROWDLAB, then, unless ``dry_run``, adds the :data:`SUSPECT` ``FloatMetadataProperty`` to the dataset when it is
    missing and upserts the records whose score changed (metadata only: suggestions, responses and vectors are
    left as they are), clearing the score of records that are no longer submitted. A second run with no new
    review writes nothing.

    Args:
        top: how many of the most suspect records the summary lists.

    Raises:
        SuspectsError: the dataset does not exist or is multi-label, no (or too few) submitted records, a submitted
            label is not one of the dataset's, or records lack embeddings (nothing written).
        annotate.client.ArgillaRefused / ArgillaUnavailable: Argilla failed.
        annotate.upsert.UpsertFailed: an update batch failed after retries.
    """
    import argilla as rg

    from annotate import client as argilla_client
    from annotate.dataset import DatasetMismatch, has_metadata, question_labels, suspect_link
    from annotate.refresh import read_records
    from annotate.upsert import Upserter

    started = time.perf_counter()
    dataset = argilla_client.find_dataset(client, dataset_name, workspace)
    if dataset is None:
        raise SuspectsError(f"dataset {dataset_name!r} not found in workspace {workspace!r}")
    summary = SuspectsSummary(dataset=f"{workspace}/{dataset_name}", dataset_id=str(dataset.id), dry_run=dry_run)
    try:
        labels, multi_label = question_labels(dataset)
    except DatasetMismatch as exc:
        raise SuspectsError(str(exc)) from None
    if multi_label:
        raise SuspectsError(f"dataset {dataset_name!r} is multi-label: suspects scores single-label datasets only")
    records = read_records(dataset)
    submitted, discarded = read_submitted(dataset)
    summary.records, summary.submitted, summary.discarded = len(records), len(submitted), len(discarded)
    if not submitted:
        raise SuspectsError(f"dataset {dataset_name!r} has no submitted record: review some first")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(v) for answers in submitted.values() for _, v in answers if v not in index})
    if unknown:
        raise SuspectsError(f"submitted labels {', '.join(map(repr, unknown[:5]))} are not among the dataset's "
                            f"labels {labels}")
    ids, embeddings, zero_shot = _pool(dataset, records, labels, cache, dataset_name, summary)
    row_of = {rid: i for i, rid in enumerate(ids)}
    names = _usernames(client)
    reviewed = {row_of[rid]: index[answers[0][1]] for rid, answers in submitted.items() if rid in row_of}
    annotations = {row_of[rid]: {names.get(u, u): index[v] for u, v in reversed(answers)}
                   for rid, answers in submitted.items() if rid in row_of}
    annotators = {row_of[rid]: names.get(answers[0][0], answers[0][0]) for rid, answers in submitted.items()
                  if rid in row_of}
    gone = [row_of[rid] for rid in discarded if rid in row_of]
    report = detect(embeddings, zero_shot, labels, reviewed, discarded=gone, config=head_config,
                    annotations=annotations, annotators=annotators)
    summary.detect_seconds = round(report.seconds, 3)
    summary.method, summary.flagged, summary.oof_accuracy = report.method, int(report.flagged.sum()), report.oof_accuracy
    summary.per_label, summary.per_annotator = report.per_label(), report.per_annotator()
    for j in report.order()[:top]:
        rid = ids[int(report.rows[j])]
        summary.top.append({"id": rid, "suspect": round(float(report.score[j]), 4), "flagged": bool(report.flagged[j]),
                            "label": labels[int(report.given[j])], "suggested": labels[int(report.suggested[j])],
                            "annotator": annotators.get(int(report.rows[j])), "text": records[rid].text})
    scores = {ids[int(r)]: round(float(s), 6) for r, s in zip(report.rows, report.score)}
    changed = [rid for rid, s in scores.items() if records[rid].metadata.get(SUSPECT) is None
               or abs(float(records[rid].metadata[SUSPECT]) - s) > 1e-6]
    stale = [rid for rid, r in records.items() if rid not in scores and r.metadata.get(SUSPECT) is not None]
    summary.link = suspect_link(api_url, dataset.id)
    if not dry_run:
        if not has_metadata(dataset, SUSPECT):
            def add():
                dataset.settings.metadata.add(rg.FloatMetadataProperty(
                    name=SUSPECT, title="suspect (submitted label looks wrong)", min=0.0, max=1.0))
                dataset.update()

            argilla_client.call(add, what=f"addition of the {SUSPECT!r} metadata property")
            summary.property_added = True
        if changed or stale:
            with Upserter(dataset, batch_size=batch_size, concurrency=concurrency) as upserter:
                for rid in changed + stale:
                    metadata = {k: v for k, v in records[rid].metadata.items() if k != SUSPECT and v is not None}
                    if rid in scores:
                        metadata[SUSPECT] = scores[rid]
                    upserter.submit([rg.Record(id=rid, fields={"text": records[rid].text}, metadata=metadata)])
            summary.written = upserter.stats.written
            summary.cleared = len(stale)
    summary.total_seconds = round(time.perf_counter() - started, 3)
    return summary
