"""``refresh``: refit the adapted head on what people reviewed and update the pending suggestions in Argilla.

One round (:func:`refresh`):

1. Read every record of the dataset (suggestion, metadata) and the review status of each (server-side filters:
   submitted, discarded, draft; :func:`annotate.export.reviewed_records`).
2. Map them onto the pool rows: embeddings and zero-shot scores from the local cache that ``push`` filled
   (:class:`annotate.cache.DatasetCache`); records missing from it take their vectors from Argilla (vector field
   ``embedding``) and their zero-shot scores from the ``teacher_score_<i>`` metadata, and are added to the cache;
   a dataset without vectors needs ``embed=True`` (the scorer embeds the missing texts once).
3. Fit :func:`annotate.adaptive.adapt` with the submitted labels (discarded records are never pseudo-labelled);
   on a ``MultiLabelQuestion`` dataset the one-vs-rest head, :func:`annotate.multilabel.adapt_multilabel`.
4. Re-score every pending record (no response at all) and upsert, in bulk (:class:`annotate.upsert.Upserter`),
   only those whose suggested label changed or whose score moved by more than ``min_score_change`` (0.02), with
   their uncertainty metadata.
   Submitted, discarded and draft records are never written. The fit is deterministic, so a second round without
   new reviews writes nothing, and a round killed midway and run again writes what is left, each record once.
5. Save the head directory (what ``python -m service --classifier NAME=DIR`` serves).
6. With a :class:`annotate.finetune_job.BackgroundFinetune`: pending records take the suggestions of the newest
   finished encoder fine-tune instead of the head's when it beat the head on held-out reviews, and (``--watch``)
   a new fine-tune starts in the background once enough reviews arrived (:mod:`annotate.finetune_job`).

The summary also estimates the accuracy of the pending suggestions on the reviewed records of the random audit
sample (metadata ``audit`` = 1): the suggestion shown against the submitted label, with a Wilson 95% interval
(Wilson 1927; ``scipy.stats.binomtest(...).proportion_ci(method="wilson")``). Unlike the agreement on all reviewed
records, it is not biased by the lowest-score-first review order.

Fault injection for tests: ``ANNOTATE_REFRESH_FAIL_AFTER_BATCHES=N`` ends the process with ``os._exit(137)`` (as a
SIGKILL would) once N update batches were acknowledged.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from annotate import client as argilla_client
from annotate.dataset import (
    AUDIT,
    AUDIT_ORDER,
    QUESTION,
    VECTOR,
    audit_link,
    build_records,
    deep_link,
    has_metadata,
    has_vectors,
    margin_link,
    question_labels,
    teacher_key,
)

logger = logging.getLogger(__name__)
#: Scores closer than this count as unchanged (Argilla stores them as doubles; the fit is deterministic).
SCORE_TOLERANCE = 1e-6


class RefreshError(ValueError):
    """Bad input: the refresh cannot run as asked (nothing was written)."""


@dataclass
class RefreshSummary:
    """What one refresh round did. Times are seconds of wall clock."""

    dataset: str
    dataset_id: str | None = None
    records: int = 0
    submitted: int = 0
    discarded: int = 0
    draft: int = 0
    pending: int = 0
    mode: str | None = None
    decision: str = ""
    revision: str | None = None
    agent: str | None = None
    cv_accuracy: float | None = None
    cv_accuracy_zero_shot: float | None = None
    pseudo_weight: float | None = None
    changed: int = 0
    changed_label: int = 0
    updated: int = 0
    agreement_reviewed: float | None = None
    audit: dict = field(default_factory=dict)
    vectors_from: dict = field(default_factory=dict)
    head_dir: str | None = None
    finetune: dict = field(default_factory=dict)
    multi_label: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    links: dict = field(default_factory=dict)
    read_seconds: float = 0.0
    fit_seconds: float = 0.0
    update_seconds: float = 0.0
    total_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        """Human-readable summary (several lines)."""
        cv = "-" if self.cv_accuracy is None else f"{self.cv_accuracy:.4f}"
        cv0 = "" if self.cv_accuracy_zero_shot is None else f" (zero-shot on the same records {self.cv_accuracy_zero_shot:.4f})"
        agree = "-" if self.agreement_reviewed is None else f"{self.agreement_reviewed:.4f}"
        audit = self.audit or {}
        if audit.get("reviewed"):
            others = audit.get("reviewed_all_revisions", audit["reviewed"]) - audit["reviewed"]
            estimate = (f"{audit['accuracy']:.4f} (95% Wilson CI {audit['ci_low']:.4f}-{audit['ci_high']:.4f}) on "
                        f"{audit['reviewed']} reviewed audit records ({audit['correct']} correct) of the suggestions "
                        f"of {audit['revision']}" + (f"; {others} audit reviews of {audit['revisions'] - 1} other "
                                                     "revision(s) left out" if others else ""))
        else:
            estimate = f"- (no reviewed audit record yet; {audit.get('size', 0)} records in the audit sample)"
        return "\n".join([
            f"dataset            {self.dataset} (id {self.dataset_id})",
            f"records            {self.records}: submitted {self.submitted}, discarded {self.discarded}, "
            f"draft {self.draft}, pending {self.pending}",
            f"head               {self.mode} (revision {self.revision}, pseudo-label weight {self.pseudo_weight})",
            *([f"why                {self.decision}"] if self.decision else []),
            *(f"warning            {w}" for w in self.warnings),
            f"agent              {self.agent}",
            *([f"cv accuracy        {cv} on the {self.submitted} reviewed records{cv0}"] if not self.multi_label
              else [_render_multilabel(self.multi_label, self.submitted)]),
            f"shown vs submitted {agree} (all reviewed records; biased by the review order)",
            f"audit estimate     {estimate}",
            f"pending updated    {self.updated} of {self.pending} ({self.changed_label} changed label, "
            f"{self.changed} changed value/score/agent)",
            f"time               fit {self.fit_seconds:.2f} s, Argilla read {self.read_seconds:.1f} s, "
            f"Argilla update {self.update_seconds:.1f} s, total {self.total_seconds:.1f} s",
            *([f"head saved in      {self.head_dir}"] if self.head_dir else []),
            *([self._render_finetune()] if self.finetune else []),
            *(f"review ({name}): {url}" for name, url in self.links.items()),
        ])


    def _render_finetune(self) -> str:
        f = self.finetune
        if not f.get("revision"):
            return f"encoder fine-tune  {f.get('state', 'none yet')}"
        p = "" if f.get("p_value") is None else f", McNemar p {f['p_value']:.3g}"
        if f.get("expired"):
            use = (f"expired: {f['reviewed_now']} reviews now, more than --finetune-every past its {f['reviewed']}; "
                   "the head serves until a newer fine-tune finishes")
        elif f.get("in_use"):
            use = f"in use for {f.get('applied', 0)} pending records (better on a paired test{p})"
        elif not f.get("paired"):
            use = "not in use (no paired held-out outcomes to test it on)"
        else:
            use = f"not in use (not shown better than the head on a paired test{p})"
        accuracy = "-" if f.get("accuracy") is None else f"{f['accuracy']:.4f}"
        head = "-" if f.get("head_accuracy") is None else f"{f['head_accuracy']:.4f}"
        running = f"; {f['state']}" if f.get("state") else ""
        return (f"encoder fine-tune  {f['revision']} on {f['reviewed']} reviews: held-out accuracy {accuracy} vs head "
                f"{head} on {f['holdout']} reviews, {use} (serve it: --classifier NAME={f['model_dir']}){running}")


def _render_multilabel(fit: dict, submitted: int) -> str:
    """The summary lines of a multi-label fit (:class:`annotate.multilabel.MultiLabelFitReport`)."""
    def number(v):
        return "-" if v is None else f"{v:.4f}"

    labels = "; ".join(f"{label}: {info['source']} @ {info['threshold']:g}" for label, info in fit["labels"].items())
    return (f"cv macro-F1        {number(fit['cv_macro_f1'])} on the {submitted} reviewed records (zero-shot "
            f"{number(fit['cv_macro_f1_zero_shot'])}, labels with enough reviews)\n"
            f"labels             {labels}")


@dataclass
class _Record:
    id: str
    text: str
    metadata: dict
    value: object
    score: float | None
    agent: str | None


def read_records(dataset, batch_size: int = 1000) -> dict[str, _Record]:
    """Every record of ``dataset``: text, metadata and current suggestion (one paged read)."""
    def read() -> dict[str, _Record]:
        out = {}
        for record in dataset.records(batch_size=batch_size, with_suggestions=True, with_responses=False):
            suggestion = next((s for s in record.suggestions if s.question_name == QUESTION), None)
            out[str(record.id)] = _Record(str(record.id), record.fields.get("text", ""), dict(record.metadata or {}),
                                          suggestion.value if suggestion else None,
                                          suggestion.score if suggestion else None,
                                          suggestion.agent if suggestion else None)
        return out

    return argilla_client.call(read, what="read of the dataset's records")


def read_reviews(dataset) -> tuple[dict[str, object], set[str], set[str]]:
    """``(submitted {id: value}, discarded ids, draft ids)`` by precedence submitted > discarded > draft."""
    from annotate.export import _first_response, reviewed_records

    def read():
        submitted, discarded, draft = {}, set(), set()
        for status, record in reviewed_records(dataset):
            if status == "submitted":
                response = _first_response(record, status)
                submitted[str(record.id)] = response.value if response is not None else None
            elif status == "discarded":
                discarded.add(str(record.id))
            else:
                draft.add(str(record.id))
        return submitted, discarded, draft

    return argilla_client.call(read, what="read of the responses")


def count_reviewed(dataset) -> int:
    """Submitted and discarded responses of the dataset, summed over its annotators (what ``--watch`` polls).

    One ``GET /api/v1/datasets/{id}/progress`` and one ``GET .../users/progress``
    (``Dataset.progress(with_users_distribution=True)``): the server counts them in SQL, so a poll costs the same
    whatever the number of reviewed records (it used to page through all of them). Fetching only the records
    that changed since the last poll is not possible: in argilla-server 2.8 a response does not move the record's
    ``updated_at`` (the ``updated_at`` filter of ``rg.Filter``), only a change of the record's status does, and a
    discard changes none. With one annotator per record the count equals the reviewed records.
    """
    def count() -> int:
        progress = dataset.progress(with_users_distribution=True)
        return sum(int(part.get(status) or 0) for user in (progress.get("users") or {}).values()
                   for part in user.values() if isinstance(part, dict) for status in ("submitted", "discarded"))

    return argilla_client.call(count, what="count of reviewed records")


def read_vectors(dataset, ids: set[str], batch_size: int = 500) -> dict[str, np.ndarray]:
    """``{id: embedding}`` from the dataset's vector field for the records in ``ids`` that have one."""
    def read() -> dict[str, np.ndarray]:
        out = {}
        for record in dataset.records(batch_size=batch_size, with_suggestions=False, with_responses=False,
                                      with_vectors=[VECTOR]):
            rid = str(record.id)
            vector = record.vectors.get(VECTOR) if record.vectors else None
            if rid in ids and vector is not None:
                out[rid] = np.asarray(vector, dtype=np.float32)
        return out

    return argilla_client.call(read, what="read of the vectors")


def rows_from_cache(cache, ids: list[str], k: int):
    """The pool rows of the records ``ids`` (record-id order) that the local cache holds: ``(row_of, cached,
    embeddings, zero_shot, have)``, with ``embeddings`` ``None`` when there is no cache, ``zero_shot`` ``(n, k)`` and
    ``have`` the rows filled. Used by ``refresh`` and ``suspects`` alike."""
    n = len(ids)
    row_of = {rid: i for i, rid in enumerate(ids)}
    cached = cache.load_pool()
    embeddings, zero_shot, have = None, np.zeros((n, k)), np.zeros(n, dtype=bool)
    if cached is not None:
        embeddings = np.zeros((n, cached.embeddings.shape[1]), dtype=np.float32)
        for j, rid in enumerate(cached.ids):
            i = row_of.get(rid)
            if i is not None:
                embeddings[i], zero_shot[i], have[i] = cached.embeddings[j], cached.scores[j], True
    return row_of, cached, embeddings, zero_shot, have


def place_vectors(records: dict, missing: list[str], vectors: dict, embeddings, zero_shot: np.ndarray, row_of: dict,
                  *, dataset_name: str, cache_root, error: type[Exception] = RuntimeError):
    """Fill the rows of the ``missing`` records with their ``vectors`` (rounded through float16, as the cache holds
    them) and their ``teacher_score_<i>`` metadata; ``embeddings`` is allocated when ``None``.

    Returns:
        ``(embeddings, teacher)``: the filled ``(n, d)`` array and the ``(len(missing), k)`` teacher scores.

    Raises:
        error: the vectors' dimension differs from the cached embeddings', or a record lacks teacher metadata.
    """
    k = zero_shot.shape[1]
    dim = len(next(iter(vectors.values())))
    if embeddings is None:
        embeddings = np.zeros((len(row_of), dim), dtype=np.float32)
    elif embeddings.shape[1] != dim:
        raise error(f"cached embeddings have {embeddings.shape[1]} dimensions, the dataset's {dim}: delete "
                    f"{cache_root} and refresh again")
    teacher = np.array([[records[rid].metadata.get(teacher_key(j), np.nan) for j in range(k)] for rid in missing])
    if np.isnan(teacher).any():
        raise error(f"records of {dataset_name!r} lack the teacher_score metadata: it was not pushed by "
                    "`python -m annotate push`")
    rows = [row_of[rid] for rid in missing]
    embeddings[rows] = np.stack([vectors[rid] for rid in missing]).astype(np.float16).astype(np.float32)
    zero_shot[rows] = teacher
    return embeddings, teacher


def audit_estimate(records: dict, submitted: dict[str, object], pending_agents: list) -> dict:
    """Accuracy of one head revision's suggestions, estimated on the reviewed records of the random audit sample.

    Suggestions of different revisions (each refresh serves a new one) are different classifiers, so their audit
    reviews are not pooled: the estimate is of the revision most pending records carry now (what reviewers see),
    or, when none of its suggestions was audited yet, of the revision with the most audited reviews. A record's
    agent (``...:<revision>``) names the revision whose suggestion it showed when it was reviewed (refresh never
    rewrites submitted records). Wilson 95% interval (:func:`wilson`).

    Args:
        records: ``{id: record}`` with ``value`` (the suggestion shown), ``agent`` and ``metadata``.
        submitted: ``{id: submitted label}``.
        pending_agents: the current agent of each pending record.

    Returns:
        ``{"size", "reviewed" (on the chosen revision), "reviewed_all_revisions", "revision", "revisions", and with a
        review "correct", "accuracy", "ci_low", "ci_high"}``.
    """
    from collections import Counter

    by_agent: dict[str, list[bool]] = {}
    for rid, value in submitted.items():
        record = records.get(rid)
        if record is not None and record.metadata.get(AUDIT) == 1:
            by_agent.setdefault(record.agent or "-", []).append(record.value == value)
    out = {"size": sum(1 for r in records.values() if r.metadata.get(AUDIT) == 1),
           "reviewed_all_revisions": sum(len(v) for v in by_agent.values()), "revisions": len(by_agent),
           "reviewed": 0, "revision": None}
    if not by_agent:
        return out
    serving = [agent for agent, _ in Counter(a for a in pending_agents if a).most_common()]
    chosen = next((a for a in serving if a in by_agent), None) or max(by_agent, key=lambda a: (len(by_agent[a]), a))
    audited = by_agent[chosen]
    low, high = wilson(sum(audited), len(audited))
    out.update(revision=chosen, reviewed=len(audited), correct=int(sum(audited)),
               accuracy=sum(audited) / len(audited), ci_low=low, ci_high=high)
    return out


def wilson(correct: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (``scipy.stats.binomtest``)."""
    from scipy.stats import binomtest

    interval = binomtest(correct, total).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


def refresh(client, dataset_name: str, workspace: str, api_url: str, cache, *, labels: list[str] | None = None,
            embed_scorer=None, head_output: str | Path | None = None, batch_size: int = 256, concurrency: int = 2,
            head_config=None, progress: bool = True, min_score_change: float = 0.02,
            finetune=None) -> RefreshSummary:
    """One refresh round on ``workspace/dataset_name`` (see the module docstring).

    Args:
        cache: the dataset's :class:`annotate.cache.DatasetCache`.
        labels: when given, must equal the dataset's labels (same order).
        embed_scorer: a scorer (:mod:`pool.scorers`) to embed records that have no cached embedding and no
            vector (``refresh --embed``); ``None``: such records are an error.
        head_output: where to save the head (default ``cache.head_dir``).
        batch_size, concurrency: of the bulk updates.
        min_score_change: a pending record whose suggested label stays is rewritten only when its score moved by
            more than this (the review order barely changes below it, and every write costs Argilla an index
            update); its agent then keeps naming the head revision that last changed it. ``0`` rewrites every
            record whose score or agent changed at all. A record whose suggestion passes from the head to the
            fine-tuned encoder (or back) is always rewritten.
        finetune: an :class:`annotate.finetune_job.BackgroundFinetune`: use its newest finished job where it
            wins, and start a job when it is due (``start_jobs``); ``None``: the head alone.

    Raises:
        RefreshError: the dataset does not exist, ``labels`` differ, a submitted label is not
            one of the dataset's, or records lack embeddings and no ``embed_scorer`` was given (nothing written).
        annotate.client.ArgillaRefused / ArgillaUnavailable: Argilla failed.
        annotate.upsert.UpsertFailed: an update batch failed after retries (batches before it are written).
    """
    from tqdm import tqdm

    from annotate.adaptive import adapt
    from annotate.dataset import DatasetMismatch, check_compatible
    from annotate.push import suggestion_agent
    from annotate.upsert import Upserter

    started = time.perf_counter()
    dataset = argilla_client.find_dataset(client, dataset_name, workspace)
    if dataset is None:
        raise RefreshError(f"dataset {dataset_name!r} not found in workspace {workspace!r}")
    summary = RefreshSummary(dataset=f"{workspace}/{dataset_name}", dataset_id=str(dataset.id))
    try:
        dataset_labels, multi_label = question_labels(dataset)
        if labels is not None:
            check_compatible(dataset, labels, multi_label)
    except DatasetMismatch as exc:
        raise RefreshError(str(exc)) from None
    if multi_label:  # a MultiLabelQuestion: the one-vs-rest head (no encoder fine-tune: it is single-label)
        from annotate import multilabel

        finetune = None
    labels = dataset_labels
    k = len(labels)
    if head_output is not None:  # before anything is written: the save replaces only a previous head
        from service.atomic import check_target
        from service.head import is_head_dir

        try:
            check_target(head_output, is_head_dir)
        except FileExistsError as exc:
            raise RefreshError(f"--head-output: {exc}") from None

    records = read_records(dataset)
    submitted, discarded, draft = read_reviews(dataset)
    summary.read_seconds = time.perf_counter() - started
    if not records:
        raise RefreshError(f"dataset {dataset_name!r} has no records: push some first")
    index = {label: i for i, label in enumerate(labels)}
    if multi_label:
        try:
            submitted_sets = multilabel.review_sets(submitted, labels)
        except ValueError as exc:
            raise RefreshError(str(exc)) from None
    unknown = [] if multi_label else sorted({str(v) for v in submitted.values() if v not in index})
    if unknown:
        raise RefreshError(f"submitted labels {', '.join(map(repr, unknown[:5]))} are not among the dataset's labels "
                           f"{labels}")

    # Pool rows: every record, in id order; embeddings and zero-shot scores from the cache, else Argilla/--embed.
    cache.validate(dataset.id, labels)
    ids = sorted(records)
    n = len(ids)
    row_of, cached, embeddings, zero_shot, have = rows_from_cache(cache, ids, k)
    meta = dict(cached.meta) if cached is not None else {}
    meta.setdefault("multi_label", multi_label)
    summary.vectors_from["cache"] = int(have.sum())
    missing = [ids[i] for i in np.flatnonzero(~have)]
    if missing:
        added: dict[str, np.ndarray] = {}
        if has_vectors(dataset):
            added = read_vectors(dataset, set(missing))
            summary.vectors_from["argilla"] = len(added)
        rest = [rid for rid in missing if rid not in added]
        if rest:
            if embed_scorer is None:
                why = "has no vectors" if not has_vectors(dataset) else f"lacks vectors for {len(rest)} records"
                raise RefreshError(f"dataset {dataset_name!r} {why} and {len(rest)} of its records are not in the "
                                   f"local cache {cache.root}: re-push, or run refresh --embed")
            vectors = embed_scorer.embed([records[rid].text for rid in rest])
            added.update(zip(rest, vectors.astype(np.float32)))
            summary.vectors_from["embedded"] = len(rest)
            meta.setdefault("encoder", embed_scorer.encoder)
        embeddings, teacher = place_vectors(records, missing, added, embeddings, zero_shot, row_of,
                                            dataset_name=dataset_name, cache_root=cache.root, error=RefreshError)
        new_rows = [row_of[rid] for rid in missing]
        _cache_rows(cache, missing, records, teacher, embeddings[new_rows], labels, meta, dataset.id)

    if not (meta.get("encoder") or {}).get("model_id"):  # cache rebuilt from Argilla: the encoder the agents name
        named = _encoder_named_by(records.values())
        if named:
            meta["encoder"] = {**(meta.get("encoder") or {}), "model_id": named}
            if cache.pool.exists():  # so the next round names the same encoder, whatever the agents say by then
                cache.pool.write_meta({**cache.pool.meta(), "encoder": meta["encoder"]})
    if multi_label:
        reviewed = {row_of[rid]: value for rid, value in submitted_sets.items() if rid in row_of}
    else:
        reviewed = {row_of[rid]: index[value] for rid, value in submitted.items() if rid in row_of}
    gone = [row_of[rid] for rid in discarded if rid in row_of]
    if reviewed and not multi_label and len(set(reviewed.values())) < 2:
        warning = (f"all {len(reviewed)} reviewed records have the label {labels[next(iter(reviewed.values()))]!r}: "
                   "no head is fitted on the reviews until a second label is reviewed (the better of the zero-shot "
                   "scores and the pool-adapted head on them serves)")
        summary.warnings.append(warning)
        logger.warning(warning)

    t0 = time.perf_counter()
    fit = multilabel.adapt_multilabel if multi_label else adapt
    adapted = fit(embeddings, zero_shot, labels, ids=ids, reviewed=reviewed, discarded=gone,
                  config=None if multi_label else head_config, encoder=meta.get("encoder"),
                  meta={"hypothesis_template": meta.get("hypothesis_template"), "dataset": f"{workspace}/{dataset_name}"})
    summary.fit_seconds = time.perf_counter() - t0
    report = adapted.report
    summary.mode, summary.revision = report.mode, report.revision
    if multi_label:
        summary.multi_label = {"cv_macro_f1": report.cv_macro_f1, "cv_macro_f1_zero_shot": report.cv_macro_f1_zero_shot,
                               "labels": report.labels}
    else:
        summary.pseudo_weight = report.pseudo_weight
        summary.cv_accuracy, summary.cv_accuracy_zero_shot = report.cv_accuracy, report.cv_accuracy_zero_shot
    summary.decision = getattr(report, "note", "")
    agent = suggestion_agent(adapted, meta)
    summary.agent = agent

    reviewed_ids = set(submitted) | discarded | draft
    summary.records, summary.submitted, summary.discarded, summary.draft = n, len(submitted), len(discarded), len(draft)
    pending = [i for i, rid in enumerate(ids) if rid not in reviewed_ids]
    from annotate.accept import revoke_disagreeing  # auto-accepted records: kept, or revoked where the head disagrees

    pending = revoke_disagreeing(dataset, records, ids, labels, adapted.scores, pending, summary.warnings)
    summary.pending = len(pending)
    scores = adapted.scores
    agents = [agent] * n
    if finetune is not None:
        scores, agents = _apply_finetune(finetune, labels, ids, row_of, pending, scores, agents, meta, summary,
                                         len(reviewed))
    top = scores.argmax(axis=1)
    changed = []
    for i in pending:
        current = records[ids[i]]
        moved = _agent_kind(agents[i]) != _agent_kind(current.agent)
        if multi_label:  # a label set and its scores (annotate.multilabel)
            value, score = multilabel.suggestion(scores[i], labels, adapted.thresholds)
            relabelled, shifted = multilabel.compare_suggestion(value, score, current.value, current.score,
                                                                min_score_change)
            summary.changed_label += relabelled
            if relabelled or shifted or (moved if min_score_change > 0 else agents[i] != current.agent):
                changed.append(i)
            continue
        value, score = labels[top[i]], float(scores[i, top[i]])
        if value != current.value:
            summary.changed_label += 1
        if min_score_change > 0:
            stale = current.score is None or abs(score - current.score) > min_score_change or moved
        else:
            stale = current.score is None or abs(score - current.score) > SCORE_TOLERANCE or agents[i] != current.agent
        if value != current.value or stale:
            changed.append(i)
    summary.changed = len(changed)

    # Agreement of the suggestions people saw with what they submitted; the audit sample's is unbiased.
    same = multilabel.same_labels if multi_label else (lambda a, b: a == b)
    shown = [(same(records[rid].value, value), records[rid].metadata.get(AUDIT) == 1) for rid, value in submitted.items()]
    if shown:
        summary.agreement_reviewed = sum(ok for ok, _ in shown) / len(shown)
    summary.audit = audit_estimate(records, submitted, pending_agents=[records[ids[i]].agent for i in pending])

    t0 = time.perf_counter()
    if changed:
        fail_after = int(os.environ.get("ANNOTATE_REFRESH_FAIL_AFTER_BATCHES", "0") or 0)
        bar = tqdm(total=len(changed), unit="rec", desc="update", disable=not progress, dynamic_ncols=True)
        batches = [0]

        def written(count: int) -> None:
            bar.update(count)
            batches[0] += 1
            if fail_after and batches[0] >= fail_after:
                os._exit(137)  # fault injection (tests): die as a SIGKILL would, mid-refresh

        try:
            with Upserter(dataset, batch_size=batch_size, concurrency=concurrency, on_written=written) as upserter:
                for by_agent in sorted({agents[i] for i in changed}):
                    group = [i for i in changed if agents[i] == by_agent]
                    for start in range(0, len(group), batch_size):
                        rows = np.asarray(group[start:start + batch_size])
                        chunk_ids = [ids[i] for i in rows]
                        extra = {teacher_key(j): [records[rid].metadata.get(teacher_key(j)) for rid in chunk_ids]
                                 for j in range(k)}
                        if any(AUDIT in records[rid].metadata for rid in chunk_ids):
                            extra[AUDIT] = [records[rid].metadata.get(AUDIT, 0) for rid in chunk_ids]
                        if any(AUDIT_ORDER in records[rid].metadata for rid in chunk_ids):
                            extra[AUDIT_ORDER] = [records[rid].metadata.get(AUDIT_ORDER) for rid in chunk_ids]
                        upserter.submit(build_records(chunk_ids, [records[rid].text for rid in chunk_ids],
                                                      scores[rows], labels, multi_label, by_agent,
                                                      threshold=adapted.thresholds if multi_label else 0.5,
                                                      extra_metadata=extra))
            summary.updated = upserter.stats.written
        finally:
            bar.close()
    summary.update_seconds = time.perf_counter() - t0
    if adapted.head is not None:
        summary.head_dir = str(adapted.head.save(Path(head_output) if head_output else cache.head_dir))
    if finetune is not None and finetune.start_jobs:
        def write(directory: Path) -> str:
            from annotate.finetune_job import write_snapshot

            written = write_snapshot(directory, ids=ids, texts=[records[rid].text for rid in ids], embeddings=embeddings,
                                     zero_shot=zero_shot, labels=labels, reviewed=reviewed, discarded=gone,
                                     pending=pending, settings=finetune.settings, head_config=head_config,
                                     encoder=meta.get("encoder"))
            return json.loads((written / "job.json").read_text(encoding="utf-8"))["revision"]

        if finetune.maybe_start(len(reviewed), write) or finetune.running:
            summary.finetune["state"] = f"fine-tune {finetune.running} running in the background"
    summary.links = {"lowest score first": deep_link(api_url, dataset.id),
                     "smallest margin first": margin_link(api_url, dataset.id),
                     "audit sample (random order)": audit_link(api_url, dataset.id,
                                                               ordered=has_metadata(dataset, AUDIT_ORDER))}
    summary.read_seconds = round(summary.read_seconds, 3)
    summary.fit_seconds = round(summary.fit_seconds, 3)
    summary.update_seconds = round(summary.update_seconds, 3)
    summary.total_seconds = round(time.perf_counter() - started, 3)
    return summary


def _encoder_named_by(records) -> str | None:
    """The encoder model id that the records' adapted agents name (``<encoder>:adaptive-head:<revision>`` or
    ``<encoder>:encoder-finetune:<revision>``), or ``None`` when no record carries such an agent."""
    from annotate.finetune_job import AGENT_KIND

    for record in records:
        for kind in ("adaptive-head", "ovr-head", AGENT_KIND):
            marker = f":{kind}:"
            if record.agent and marker in record.agent:
                return record.agent.split(marker)[0]
    return None


def _agent_kind(agent: str | None) -> str | None:
    """The agent without its revision (``<encoder>:adaptive-head``, ``<encoder>:encoder-finetune``)."""
    return agent.rsplit(":", 1)[0] if agent and ":" in agent else agent


def _apply_finetune(finetune, labels, ids, row_of, pending, scores, agents, meta, summary, reviewed_count: int):
    """Scores and agents with the newest finished fine-tune's suggestions on the pending rows it scored, when it
    beat the head on held-out reviews (:meth:`annotate.finetune_job.FinetuneResult.wins`) and has not expired
    (``reviewed_count`` submitted reviews now: :meth:`~annotate.finetune_job.FinetuneResult.expired`); the summary's
    ``finetune`` says what was found and used."""
    from annotate.finetune_job import agent_of

    result = finetune.latest(labels)
    if result is None:
        return scores, agents
    summary.finetune = result.summary(finetune.settings.margin, finetune.settings.alpha)
    if result.expired(reviewed_count, finetune.settings.every):
        summary.finetune.update(in_use=False, expired=True, reviewed_now=reviewed_count)
        return scores, agents
    if not result.wins(finetune.settings.margin, finetune.settings.alpha):
        return scores, agents
    scores = scores.copy()
    agents = list(agents)
    tuned_agent = agent_of(result, meta.get("encoder"))
    waiting = set(pending)
    applied = 0
    for j, rid in enumerate(result.ids):
        i = row_of.get(rid)
        if i is not None and i in waiting:
            scores[i] = result.scores[j]
            agents[i] = tuned_agent
            applied += 1
    summary.finetune["applied"] = applied
    return scores, agents


def _cache_rows(cache, ids, records, teacher, embeddings, labels, meta, dataset_id) -> None:
    """Add records read from Argilla (or embedded by --embed) to the cache, so the next round reads them locally."""
    import hashlib

    from pool.store import shard_table

    store = cache.pool
    store.write_shard("argilla-" + hashlib.sha256("".join(ids).encode()).hexdigest()[:16],
                      shard_table(ids, [records[rid].text for rid in ids], teacher, embeddings, labels))
    if not store.exists():
        store.write_meta({"labels": list(labels), "hypothesis_template": meta.get("hypothesis_template"),
                          "multi_label": bool(meta.get("multi_label")), "encoder": meta.get("encoder"), "agent": meta.get("agent"),
                          "source": "argilla"})
    cache.bind(dataset_id)


def watch(run_round, count, *, every: int = 25, poll_seconds: float = 10.0, echo=print,
          sleep=time.sleep, finished=None) -> int:
    """Run ``run_round()`` now and again whenever ``count()`` (reviewed records) grew by ``every``, or whenever
    ``finished()`` (a background fine-tune ended) is true; returns the number of rounds when interrupted (Ctrl-C,
    or SIGTERM, which the loop takes as Ctrl-C while it runs so the caller's clean-up runs: a ``kill`` of the
    watcher also stops its background fine-tune).

    The caller holds the dataset cache's lock (:meth:`annotate.cache.DatasetCache.lock`): one watcher per cache."""
    import signal
    import threading

    rounds = 0
    last = None
    previous = None
    if threading.current_thread() is threading.main_thread():
        def interrupt(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            reviewed = count()
            done = finished() if finished is not None else None
            if last is None or reviewed - last >= every or done:
                rounds += 1
                why = f", fine-tune {done} finished" if done else ""
                echo(f"--- refresh round {rounds} ({reviewed} reviewed{why}) ---")
                run_round()
                last = reviewed
            sleep(poll_seconds)
    except KeyboardInterrupt:
        echo(f"stopped after {rounds} refresh rounds")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return rounds
