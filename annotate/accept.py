"""Bulk acceptance in Argilla: certify, per label, which pending suggestions may be accepted without a look, and
accept them as responses of a dedicated user; undo; revoke when a refresh disagrees.

The statistics are :mod:`annotate.acceptance` (a seeded uniform random certification sample of each label's
candidate region, one-sided Clopper-Pearson lower bounds, fixed-sequence tests over thresholds); this module maps a
dataset onto its arrays and writes the outcome back.

**What is certified.** The records of the *lot* (pending records, records accepted earlier, and the reviewed
records of the certification sample) carry a suggestion: label and score (the suggestion's probability, as
``push`` / ``refresh`` wrote it). A label's candidate region is its ``k`` highest-scoring lot records. The sample
is the region's first records in a fixed random order (a hash of each record id, so every run draws the same
records and a larger sample keeps the smaller one); its records get the metadata ``certify`` = 1 and people review
them (:func:`annotate.dataset.certify_link`). A suggestion counts as right when the submitted label equals it, as
wrong when it differs or the record was discarded. Records of the audit sample (``audit`` = 1) stay out of the lot:
they are kept for people, to measure the pending suggestions without bias.

**The suggestions the sample judged.** A sample is valid only for the suggestions it was drawn on: a record's
review compares the suggestion it *showed*, and the records accepted are judged by the same suggestions. Each
flagged record stores a fingerprint of every record's suggestion (``certify_basis``, :func:`suggestion_basis`);
a ``refresh`` or ``push`` that changes any suggestion changes the fingerprint, so reviewed sample records of an
older fingerprint leave the lot (they are ordinary reviews now, and the new head was fitted on them) and a new
sample is drawn. A refresh that rewrites nothing (no new review, or changes under ``--min-score-change``) keeps it.

**Writing.** ``--apply`` writes, per accepted record, one response of the user ``auto-accept`` (annotator role,
created when missing) whose value is the suggestion, and the metadata ``accepted_by``, ``accept_threshold`` and
``accept_revision`` (the head revision named by the suggestion's agent), in one bulk request per batch
(``PUT /api/v1/datasets/{id}/records/bulk``: metadata and response of a batch commit together; a response is
unique per record and user, so a retried or repeated batch writes it once). Records with any human response are
never written. A rerun reproduces the same plan (accepted records stay in the lot) and writes only what is missing,
so an interrupted apply resumes where it stopped. ``--undo`` deletes the auto-accept user's responses
(``DELETE /api/v1/responses/{id}``) and removes the three metadata keys, leaving every other response and
metadata value as it was.

Metadata is written whole (Argilla replaces a record's metadata on upsert): each write sends the metadata just read
plus or minus the keys above. Running ``accept`` while a ``refresh`` updates the same records can therefore put
back a stale uncertainty value; run them one after the other.

Fault injection for tests: ``ANNOTATE_ACCEPT_PAUSE_AFTER_BATCHES=N`` makes ``--apply`` stop (sleep) once N batches
were acknowledged, printing ``paused`` on stderr, so a test can SIGKILL it at that point.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from annotate import client as argilla_client
from annotate.acceptance import POOLED, certify, lower_bound, plan_certification
from annotate.dataset import (
    ACCEPT_METADATA,
    ACCEPT_REVISION,
    ACCEPT_THRESHOLD,
    ACCEPTED_BY,
    AUDIT,
    AUTO_ACCEPT_USER,
    CERTIFY,
    CERTIFY_BASIS,
    FIELD,
    QUESTION,
    certify_link,
    has_vectors,
    question_labels,
)

logger = logging.getLogger(__name__)
#: Records per list request (Argilla's ``GET /api/v1/datasets/{id}/records`` takes at most 1000).
READ_PAGE = 1000
#: Planning estimate of a suggestion being right: ``1 - PLANNING_INFLATION * (1 - score)``; decides only how many
#: reviews are requested, never what is certified (``annotate.simulate.AcceptanceSettings.planning_inflation``).
PLANNING_INFLATION = 2.0


class AcceptError(ValueError):
    """Bad input: acceptance cannot run as asked (nothing was written)."""


# ---------------------------------------------------------------------------------------------------------------
# Reading the dataset
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RecordState:
    """One record as acceptance sees it.

    Attributes:
        uuid: Argilla's record id (what writes and response deletions address).
        id: the record's external id (the content hash of :func:`annotate.dataset.record_id`).
        metadata: its metadata, as stored.
        value, score, agent: its suggestion of the ``label`` question (``None`` when it has none).
        human_status: ``submitted``, ``discarded`` or ``draft`` of the first human response by that precedence,
            ``None`` when no person answered.
        human_value: the label of the first submitted human response (``None`` otherwise).
        auto_response: id of the auto-accept user's response, ``None`` when there is none.
        auto_value: its label; ``auto_user``: the auto-accept user's id.
        text: the record's ``text`` field; human_user: the id of the user of the first human response.
    """

    uuid: str
    id: str
    metadata: dict
    text: str = ""
    human_user: str | None = None
    value: str | None = None
    score: float | None = None
    agent: str | None = None
    human_status: str | None = None
    human_value: str | None = None
    auto_response: str | None = None
    auto_value: str | None = None
    auto_user: str | None = None

    @property
    def accepted(self) -> bool:
        """Auto-accepted and reviewed by no one."""
        return self.auto_response is not None and self.human_status is None


def _request(client, method: str, url: str, what: str, attempts: int = 6, missing_ok: bool = False, **kwargs):
    """One HTTP request through the SDK's authenticated client, retried on connection errors and 5xx
    (:func:`annotate.client.call`); returns the decoded JSON (``None`` for an empty body, and for a 404 when
    ``missing_ok``: a deletion retried after the server did it)."""
    from argilla._exceptions import ArgillaAPIError

    def send():
        response = client.api.http_client.request(method, url, **kwargs)
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            raise ArgillaAPIError(f"HTTP {response.status_code}: {response.text[:300]}", status_code=response.status_code)
        return response.json() if response.content else None

    return argilla_client.call(send, attempts=attempts, what=what)


def auto_user(client, workspace: str, create: bool = False):
    """The auto-accept user (``rg.User``), created with the annotator role and added to ``workspace`` when missing
    and ``create``; ``None`` when it does not exist and ``create`` is false. Its password is random: no one logs in
    as it."""
    import argilla as rg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        user = argilla_client.call(client.users, AUTO_ACCEPT_USER, what="user lookup")
        if user is None and create:
            user = argilla_client.call(rg.User(username=AUTO_ACCEPT_USER, role="annotator",
                                               password=secrets.token_urlsafe(24), client=client).create,
                                       attempts=1, what=f"creation of the user {AUTO_ACCEPT_USER!r}")
        if user is not None and create:
            ws = argilla_client.call(client.workspaces, workspace, what="workspace lookup")
            members = {str(u.id) for u in argilla_client.call(lambda: list(ws.users), what="workspace members")}
            if str(user.id) not in members:
                argilla_client.call(user.add_to_workspace, ws, what=f"adding {AUTO_ACCEPT_USER!r} to {workspace!r}")
    return user


def read_state(client, dataset, auto_user_id: str | None) -> list[RecordState]:
    """Every record of ``dataset`` with its metadata, suggestion and responses, sorted by external id.

    Reads Argilla's database listing (``GET /api/v1/datasets/{id}/records``, ``include=responses,suggestions``),
    not the search index, so responses deleted a moment ago are gone here.

    Raises:
        annotate.client.ArgillaRefused / ArgillaUnavailable: Argilla failed.
    """
    questions = _request(client, "GET", f"/api/v1/datasets/{dataset.id}/questions", "read of the questions")
    question_id = next((q["id"] for q in questions["items"] if q["name"] == QUESTION), None)
    out: dict[str, RecordState] = {}
    offset = 0
    while True:
        page = _request(client, "GET", f"/api/v1/datasets/{dataset.id}/records", "read of the records",
                        params={"include": ["responses", "suggestions"], "offset": offset, "limit": READ_PAGE})
        for item in page["items"]:
            state = RecordState(uuid=item["id"], id=str(item.get("external_id") or item["id"]),
                                metadata=dict(item.get("metadata") or {}),
                                text=str((item.get("fields") or {}).get(FIELD, "")))
            suggestion = next((s for s in item.get("suggestions") or [] if s.get("question_id") == question_id), None)
            if suggestion is not None:
                state.value, state.score, state.agent = suggestion["value"], suggestion.get("score"), suggestion.get("agent")
            statuses = {}
            for response in item.get("responses") or []:
                value = ((response.get("values") or {}).get(QUESTION) or {}).get("value")
                if auto_user_id is not None and str(response["user_id"]) == str(auto_user_id):
                    state.auto_response, state.auto_value = response["id"], value
                    state.auto_user = str(auto_user_id)
                else:
                    statuses.setdefault(response["status"], (value, str(response["user_id"])))
            for status in ("submitted", "discarded", "draft"):
                if status in statuses:
                    state.human_status = status
                    state.human_value = statuses[status][0] if status == "submitted" else None
                    state.human_user = statuses[status][1]
                    break
            out[state.id] = state
        offset += len(page["items"])
        if not page["items"] or offset >= int(page.get("total") or 0):
            break
    return [out[key] for key in sorted(out)]


def suggestion_basis(states: Sequence[RecordState]) -> str:
    """Fingerprint of every record's suggestion (external id, label, score to 6 decimals): 16 hex characters of
    SHA-256. Reviews and acceptance leave it as it is; a refresh or push that changes a suggestion changes it."""
    digest = hashlib.sha256()
    for s in sorted(states, key=lambda s: s.id):
        score = "" if s.score is None else f"{float(s.score):.6f}"
        digest.update(f"{s.id}\x1f{s.value}\x1f{score}\x1e".encode())
    return digest.hexdigest()[:16]


def certify_priority(ids: Sequence[str]) -> np.ndarray:
    """``(n,)`` a fixed uniform random number in [0, 1) per record: the first 52 bits of SHA-256 of
    ``certify:<id>`` (as :func:`annotate.dataset.audit_flags` draws the audit sample). A record is in a label's
    certification sample when its number is below the label's sampling rate
    (:func:`annotate.acceptance.plan_certification`), so every run draws the same records whatever else the dataset
    holds, and a higher rate keeps the records already reviewed."""
    return np.array([int(hashlib.sha256(f"certify:{rid}".encode()).hexdigest()[:13], 16) / 16 ** 13 for rid in ids],
                    dtype=np.float64)


def revision_of(agent: str | None) -> str:
    """The head revision an agent names (``<encoder>:adaptive-head:<revision>`` -> ``<revision>``), else the agent."""
    if agent and ":" in agent and (":adaptive-head:" in agent or ":encoder-finetune:" in agent):
        return agent.rsplit(":", 1)[1]
    return agent or "unknown"


# ---------------------------------------------------------------------------------------------------------------
# Assessment: the arrays of annotate.acceptance, and what to write
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class LabelRow:
    """One line of the acceptance table.

    Attributes:
        label: the label, or ``"*"`` (pooled) / ``"overall"``.
        lot: its lot records (pending, accepted earlier, reviewed for certification).
        rate: the planned sampling rate (share of the lot in the certification sample); ``planned``: the region size
            it was planned for.
        sample: lot records in the certification sample; ``to_review``: of which to review before the next
            threshold can be tested (the sample is reviewed lazily, highest scores first).
        threshold: the lowest certified score threshold, ``None`` when nothing is certified (yet).
        accepted: records that threshold accepts (pending, or auto-accepted earlier), ``None`` when not certified.
        reviews: sampled records behind the estimate (of the certified region; else of the last region tested).
        correct: of which the suggestion was right.
        estimate: ``correct / reviews``; ``lower``: its one-sided lower confidence bound (Clopper-Pearson).
        status: ``certified``, ``review`` (waiting for reviews before the first test can run), ``failed`` (the
            first test failed), ``no plan`` (no region can reach the precision by the planning estimate).
        tests: each threshold tested, highest first (:func:`annotate.acceptance.certify`).
        members: with ``scope="auto"``, the labels of the pooled group ``"*"`` (certified together).
    """

    label: str
    lot: int = 0
    rate: float | None = None
    planned: int = 0
    sample: int = 0
    to_review: int = 0
    threshold: float | None = None
    accepted: int | None = None
    reviews: int = 0
    correct: int = 0
    estimate: float | None = None
    lower: float | None = None
    status: str = "no plan"
    tests: list = field(default_factory=list)
    members: list = field(default_factory=list)


@dataclass
class Assessment:
    """What :func:`assess` found: the table, the records to flag for review, and the records to accept.

    Attributes:
        rows: per label (or pooled), then ``overall``.
        flag: external ids of pending records to mark ``certify`` = 1 (sample records to review next).
        unflag: external ids of pending records flagged earlier that are not to review now.
        accept: ``{external id: its label's threshold}`` of pending records to accept.
        already: records auto-accepted earlier that the certified regions still cover.
        outside: records auto-accepted earlier that no certified region covers now (left as they are).
        blocked: sample records to review that were auto-accepted earlier (``--undo`` frees them).
        drafts: sample records to review that hold a draft response (waiting for its author to submit).
        basis: :func:`suggestion_basis` of the dataset.
    """

    rows: list[LabelRow]
    flag: list[str]
    unflag: list[str]
    accept: dict[str, float]
    already: int
    outside: int
    blocked: int
    drafts: int
    basis: str
    target: float
    confidence: float
    scope: str


def assess(states: Sequence[RecordState], labels: Sequence[str], *, target: float = 0.95, confidence: float = 0.95,
           scope: str = "auto") -> Assessment:
    """Map records onto :func:`annotate.acceptance.plan_certification` and :func:`annotate.acceptance.certify`.

    The lot: records with a suggestion that are pending, auto-accepted earlier (so that a rerun reproduces the same
    plan and an interrupted ``--apply`` resumes it), or reviewed for certification on the current suggestions
    (metadata ``certify`` = 1 with the current :func:`suggestion_basis`); never audit-sample records. A review is
    right when the submitted label equals the suggestion, wrong when it differs or the record was discarded.

    Args:
        states: every record (:func:`read_state`).
        labels: the question's labels, in order.
        target, confidence: in (0, 1).
        scope: ``auto`` (a threshold per label that has the records for it, one for the others together),
            ``label`` (one threshold per label) or ``pooled`` (one for all); :mod:`annotate.acceptance`, "Groups".

    Returns:
        :class:`Assessment`.

    Raises:
        ValueError: target or confidence outside (0, 1), an unknown scope.
    """
    labels = [str(label) for label in labels]
    index = {label: i for i, label in enumerate(labels)}
    n = len(states)
    basis = suggestion_basis(states)
    ids = [s.id for s in states]
    valid = np.array([s.value in index and s.score is not None and math.isfinite(float(s.score)) for s in states],
                     dtype=bool)
    scores = np.array([float(s.score) if ok else 0.0 for s, ok in zip(states, valid)])
    suggested = np.array([index[s.value] if ok else 0 for s, ok in zip(states, valid)], dtype=np.int64)
    audit = np.array([s.metadata.get(AUDIT) == 1 for s in states], dtype=bool)
    pending = np.array([s.human_status is None and s.auto_response is None for s in states], dtype=bool)
    auto = np.array([s.accepted for s in states], dtype=bool)
    human = np.array([s.human_status is not None for s in states], dtype=bool)
    flagged = np.array([s.metadata.get(CERTIFY) == 1 and s.metadata.get(CERTIFY_BASIS) == basis for s in states],
                       dtype=bool)
    lot = valid & ~audit & (pending | auto | (human & flagged))
    correct = np.full(n, np.nan)
    for i, s in enumerate(states):
        if lot[i] and s.human_status == "submitted":
            correct[i] = float(s.human_value == s.value)
        elif lot[i] and s.human_status == "discarded":
            correct[i] = 0.0  # no label fits: the suggestion is wrong
    expected = 1.0 - PLANNING_INFLATION * (1.0 - scores)
    priority = certify_priority(ids)
    plan = plan_certification(scores, suggested, lot, labels, expected, priority, target=target,
                              confidence=confidence, scope=scope)
    result = certify(scores, suggested, lot, labels, plan, correct)
    requests = np.zeros(n, dtype=bool)
    requests[result.requests] = True
    takeable = result.accepted & (pending | auto)

    rows = []
    planned = plan.members(suggested)
    if scope == "pooled":
        names = [POOLED]
    else:  # a row per label certified on its own (or not at all), and one for the labels certified together
        names = [label for i, label in enumerate(labels) if plan.group_of(i) in (None, label)]
        names += [POOLED] if POOLED in plan.groups else []
    for name in names:
        member = planned[name] if name in planned else suggested == index[name]
        row = LabelRow(name, lot=int((member & lot).sum()))
        if name == POOLED and scope == "auto":
            row.members = [labels[i] for i in plan.groups[POOLED].labels]
        g, c = plan.groups.get(name), result.groups.get(name)
        if g is not None:
            in_sample = member & lot & (priority < g.rate)
            row.rate, row.planned = round(float(g.rate), 4), g.planned_region
            row.sample, row.to_review = int(in_sample.sum()), int((requests & member).sum())
            row.status = "review"
        if c is not None:
            row.tests = c.tests
            done = [t for t in c.tests if t["passed"]] or c.tests[-1:]
            if done:
                row.reviews, row.correct = done[-1]["sampled"], done[-1]["correct"]
            if c.threshold is not None:
                row.threshold, row.status = c.threshold, "certified"
                row.accepted = int((takeable & member).sum())
            elif c.tests and not c.waiting:
                row.status = "failed"
        if row.reviews:
            row.estimate = row.correct / row.reviews
            row.lower = float(lower_bound(row.correct, row.reviews, confidence))
        rows.append(row)
    certified = [r for r in rows if r.status == "certified"]
    overall = LabelRow("overall", lot=int(lot.sum()), sample=sum(r.sample for r in rows),
                       to_review=sum(r.to_review for r in rows),
                       status=f"{len(certified)} of {len(rows)} certified")
    if certified:
        # each region's estimate weighted by its accepted records; the weighted lower bounds hold together with
        # probability >= 1 - (number of labels) * (1 - confidence) (Bonferroni)
        weight = np.array([r.accepted for r in certified], dtype=np.float64)
        overall.accepted = int(weight.sum())
        overall.reviews = sum(r.reviews for r in certified)
        overall.correct = sum(r.correct for r in certified)
        if weight.sum() > 0:
            overall.estimate = float(np.dot(weight, [r.estimate for r in certified]) / weight.sum())
            overall.lower = float(np.dot(weight, [r.lower for r in certified]) / weight.sum())
    rows.append(overall)

    thresholds = result.thresholds
    accept = {ids[i]: thresholds[plan.group_of(int(suggested[i]))] for i in np.flatnonzero(result.accepted & pending)}
    flag = [ids[i] for i in np.flatnonzero(requests & pending & ~flagged)]
    unflag = [ids[i] for i in np.flatnonzero(pending & ~requests) if CERTIFY in states[i].metadata]
    return Assessment(rows, flag, unflag, accept, already=int((result.accepted & auto).sum()),
                      outside=int((auto & ~result.accepted).sum()), blocked=int((requests & auto).sum()),
                      drafts=int((requests & human).sum()), basis=basis, target=target, confidence=confidence,
                      scope=scope)


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------
def _bulk(client, dataset, items: list[dict], *, batch_size: int, concurrency: int, what: str,
          on_batch=None) -> int:
    """Upsert ``items`` (``{"id": uuid, "metadata": ..., "responses": [...]}``, no fields or suggestions: those stay
    as they are) in batches, ``concurrency`` requests in flight; returns records written. Stops at the first batch
    that fails after retries (raising its error); batches acknowledged before it stay written."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    written = 0

    def send(batch):
        _request(client, "PUT", f"/api/v1/datasets/{dataset.id}/records/bulk", f"{what} of {len(batch)} records",
                 json={"items": batch})
        return len(batch)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for start in range(0, len(batches), max(1, concurrency)):
            for count in pool.map(send, batches[start:start + concurrency]):
                written += count
                if on_batch is not None:
                    on_batch(count)
    return written


def _without(metadata: dict, keys) -> dict:
    return {k: v for k, v in metadata.items() if k not in keys}


#: The metadata properties of bulk acceptance: name, title, settings, visible to annotators.
LAYOUT = (
    (CERTIFY, "certification sample (1 = review me)", {"type": "integer", "min": 0, "max": 1}, True),
    (CERTIFY_BASIS, "certification: suggestions fingerprint", {"type": "terms"}, False),
    (ACCEPTED_BY, "accepted in bulk by", {"type": "terms"}, True),
    (ACCEPT_THRESHOLD, "accepted above score", {"type": "float", "min": 0.0, "max": 1.0}, False),
    (ACCEPT_REVISION, "accepted suggestion's head revision", {"type": "terms"}, False),
)


def ensure_layout(client, dataset) -> list[str]:
    """Add the metadata properties of :data:`LAYOUT` that ``dataset`` lacks
    (``POST /api/v1/datasets/{id}/metadata-properties``); returns the names added."""
    url = f"/api/v1/datasets/{dataset.id}/metadata-properties"
    have = {m["name"] for m in _request(client, "GET", f"/api/v1/me/datasets/{dataset.id}/metadata-properties",
                                        "read of the metadata properties")["items"]}
    added = []
    for name, title, settings, visible in LAYOUT:
        if name not in have:
            _request(client, "POST", url, f"creation of the metadata property {name!r}", attempts=1,
                     json={"name": name, "title": title, "settings": settings, "visible_for_annotators": visible})
            added.append(name)
    return added


def sync_flags(client, dataset, states: Sequence[RecordState], assessment: Assessment, *, batch_size: int = 256,
               concurrency: int = 2) -> tuple[int, int]:
    """Mark the sample's unreviewed pending records (``certify`` = 1 with the current basis) and clear the flags
    of pending records no longer in it; returns ``(flagged, cleared)``. Records with a response are not written."""
    by_id = {s.id: s for s in states}
    items = [{"id": by_id[rid].uuid, "metadata": {**by_id[rid].metadata, CERTIFY: 1, CERTIFY_BASIS: assessment.basis}}
             for rid in assessment.flag]
    items += [{"id": by_id[rid].uuid, "metadata": _without(by_id[rid].metadata, (CERTIFY, CERTIFY_BASIS))}
              for rid in assessment.unflag]
    if items:
        _bulk(client, dataset, items, batch_size=batch_size, concurrency=concurrency, what="certification flags")
    return len(assessment.flag), len(assessment.unflag)


def apply(client, dataset, states: Sequence[RecordState], assessment: Assessment, user_id: str, *,
          batch_size: int = 256, concurrency: int = 2, progress=None) -> int:
    """Accept ``assessment.accept``: one response of the auto-accept user (the suggestion, submitted) and the
    accept metadata per record, in bulk; returns the records written. Records with a response are skipped.

    Raises:
        annotate.client.ArgillaRefused / ArgillaUnavailable: a batch failed (those before it are written; a rerun
            writes the rest).
    """
    pause = int(os.environ.get("ANNOTATE_ACCEPT_PAUSE_AFTER_BATCHES", "0") or 0)
    batches = [0]

    def written(count: int) -> None:
        if progress is not None:
            progress(count)
        batches[0] += 1
        if pause and batches[0] >= pause:  # fault injection (tests): hold here until killed
            print(f"paused after {batches[0]} batches", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)

    items = []
    for s in states:
        if s.id not in assessment.accept or s.human_status is not None or s.auto_response is not None:
            continue
        metadata = {**s.metadata, ACCEPTED_BY: AUTO_ACCEPT_USER,
                    ACCEPT_THRESHOLD: round(float(assessment.accept[s.id]), 6), ACCEPT_REVISION: revision_of(s.agent)}
        items.append({"id": s.uuid, "metadata": metadata,
                      "responses": [{"user_id": str(user_id), "status": "submitted",
                                     "values": {QUESTION: {"value": s.value}}}]})
    if not items:
        return 0
    return _bulk(client, dataset, items, batch_size=batch_size, concurrency=1 if pause else concurrency,
                 what="acceptance", on_batch=written)


def revoke(client, dataset, states: Sequence[RecordState], *, batch_size: int = 256, concurrency: int = 2) -> int:
    """Remove the auto-accept user's response and the accept metadata of ``states``, leaving every other response
    and metadata value as it was; returns the records changed.

    Each response goes by ``DELETE /api/v1/responses/{id}``; the metadata rewrite after it also re-indexes the
    record. (The test stack's search engine, osmem, cannot apply the scripted index update that follows a deletion
    and answers 500 after the deletion was committed: the retry then finds it gone (404); deletions that still
    fail are checked by reading the records back from the database, and only responses still there are an error.)

    Raises:
        annotate.client.ArgillaRefused / ArgillaUnavailable: Argilla failed (what was removed stays removed; a
            rerun removes the rest).
    """
    from concurrent.futures import ThreadPoolExecutor

    todo = [s for s in states if s.auto_response is not None or any(k in s.metadata for k in ACCEPT_METADATA)]
    failed: dict[str, Exception] = {}

    def delete(s: RecordState) -> None:
        if s.auto_response is None:
            return
        try:
            _request(client, "DELETE", f"/api/v1/responses/{s.auto_response}", "deletion of a response",
                     missing_ok=True)
        except (argilla_client.ArgillaRefused, argilla_client.ArgillaUnavailable) as exc:
            failed[s.auto_response] = exc

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        list(pool.map(delete, todo))
    if failed:
        left = {s.auto_response for s in read_state(client, dataset, _auto_id_of(states, todo))} & set(failed)
        if left:
            raise next(failed[r] for r in left)
    items = [{"id": s.uuid, "metadata": _without(s.metadata, ACCEPT_METADATA)} for s in todo]
    if items:
        _bulk(client, dataset, items, batch_size=batch_size, concurrency=concurrency, what="removal of accept metadata")
    return len(todo)


def _auto_id_of(states, todo) -> str | None:
    """The auto-accept user id, as read with ``states`` (kept on the records by :func:`read_state`)."""
    return next((s.auto_user for s in todo if s.auto_user), None)


# ---------------------------------------------------------------------------------------------------------------
# The command's run, and the refresh hook
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class AcceptSummary:
    """What one ``accept`` run found and did."""

    dataset: str
    dataset_id: str | None = None
    mode: str = "dry run"
    target: float = 0.95
    confidence: float = 0.95
    scope: str = "auto"
    records: int = 0
    pending: int = 0
    human: int = 0
    basis: str = ""
    rows: list = field(default_factory=list)
    flagged: int = 0
    unflagged: int = 0
    to_accept: int = 0
    already: int = 0
    outside: int = 0
    blocked: int = 0
    drafts: int = 0
    written: int = 0
    revoked: int = 0
    link: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        """The table (label, threshold, records accepted, precision with its one-sided interval, reviews), each
        threshold tested, and what to do next."""
        head = (f"dataset {self.dataset}: {self.records} records, {self.pending} pending, {self.human} with a human "
                f"response; precision >= {self.target:g} at confidence {self.confidence:g} (one threshold "
                + {"label": "per label", "pooled": "for all labels"}.get(
                    self.scope, "per label that has the records for it, one for the others together") + ")")
        if self.mode == "undo":
            return "\n".join([f"dataset {self.dataset}: {self.records} records",
                              f"undone: {self.revoked} auto-accepted records are pending again (their "
                              f"{AUTO_ACCEPT_USER!r} responses and accept metadata removed)"])
        lines = [head, f"{'label':<16} {'threshold':>9} {'accepted':>8}  {'precision [one-sided CI]':<24} "
                       f"{'reviews':>7}  status"]
        for r in self.rows:
            threshold = "-" if r["threshold"] is None else f"{r['threshold']:.4f}"
            accepted = "-" if r["accepted"] is None else str(r["accepted"])
            precision = "-" if r["estimate"] is None else f"{r['estimate']:.3f} [{r['lower']:.3f}, 1]"
            status = r["status"]
            if r["label"] != "overall" and r["rate"] is not None:
                sampling = f"sample {r['sample']} of {r['lot']} ({r['rate']:.0%})"
                more = f"; review {r['to_review']} more to test lower" if r["to_review"] else ""
                if status == "certified":
                    status = f"certified ({sampling}{more})"
                elif status == "review":
                    status = f"review {r['to_review']} sampled records first ({sampling})"
                elif status == "failed":
                    status = f"not certified: the highest threshold fails ({sampling})"
            elif status == "no plan":
                status = f"no plan: too few high scores for {self.target:g} ({r['lot']} records)"
            if r.get("members"):
                status += f" [certified together: {', '.join(r['members'])}]"
            lines.append(f"{r['label'][:16]:<16} {threshold:>9} {accepted:>8}  {precision:<24} {r['reviews']:>7}  "
                         f"{status}")
        for r in self.rows:
            for t in r.get("tests") or []:
                estimate = "-" if t["estimate"] is None else f"{t['estimate']:.3f}"
                lines.append(f"  {r['label'][:16]:<16} score >= {t['threshold']:.4f}: {t['region']} records, "
                             f"{t['correct']}/{t['sampled']} sampled right ({estimate}, lower bound "
                             f"{t['lower_bound']:.3f}) {'pass' if t['passed'] else 'fail'}")
        to_review = sum(r["to_review"] for r in self.rows if r["label"] != "overall")
        if to_review:
            lines.append(f"review {to_review} records of the certification sample (metadata certify = 1): {self.link}")
        if self.blocked:
            lines.append(f"{self.blocked} sampled records were auto-accepted earlier and cannot be reviewed: run "
                         "--undo, then accept again")
        if self.drafts:
            lines.append(f"{self.drafts} sampled records hold a draft response: submit them")
        if self.mode == "dry run":
            lines.append(f"dry run: {self.to_accept} pending records would be accepted ({self.already} accepted "
                         "earlier); --apply accepts them")
        elif self.mode == "apply":
            lines.append(f"applied: {self.written} records accepted now as {AUTO_ACCEPT_USER!r}, {self.already} "
                         f"earlier; --undo removes them")
        else:
            lines.append(f"undone: {self.revoked} auto-accepted records are pending again")
        if self.outside:
            lines.append(f"{self.outside} records accepted earlier lie outside today's certified regions (kept; "
                         "--undo removes every acceptance)")
        return "\n".join(lines)


def run(client, dataset_name: str, workspace: str, api_url: str, *, target: float = 0.95, confidence: float = 0.95,
        scope: str = "auto", mode: str = "dry run", batch_size: int = 256, concurrency: int = 2,
        progress: bool = True) -> AcceptSummary:
    """``python -m annotate accept``: assess, sync the sample flags, and (``mode``) apply or undo.

    Args:
        mode: ``dry run`` (flags the sample, accepts nothing), ``apply`` or ``undo``.

    Raises:
        AcceptError: target or confidence outside (0, 1), an unknown scope, the dataset missing, multi-label or
            without vectors (not pushed for the adaptive loop), nothing certified for ``apply`` because the
            certification sample has no review yet (nothing is written then).
        annotate.client.ArgillaRefused / ArgillaUnavailable: Argilla failed.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    for name, value in (("--precision", target), ("--confidence", confidence)):
        if not 0.0 < value < 1.0 or math.isnan(value):
            raise AcceptError(f"{name} {value:g}: give a number strictly between 0 and 1, e.g. 0.95")
    if scope not in ("auto", "label", "pooled"):
        raise AcceptError(f"--scope {scope!r}: give auto, label (one threshold per label) or pooled")
    dataset = argilla_client.find_dataset(client, dataset_name, workspace)
    if dataset is None:
        raise AcceptError(f"dataset {dataset_name!r} not found in workspace {workspace!r}")
    labels, multi_label = question_labels(dataset)
    if multi_label:
        raise AcceptError(f"dataset {dataset_name!r} is multi-label: accept certifies single-label suggestions only")
    if not has_vectors(dataset):
        raise AcceptError(f"dataset {dataset_name!r} has no vector field (pushed before adaptation): refresh cannot "
                          "re-check accepted suggestions on it; push it again with adaptation (the default)")
    summary = AcceptSummary(dataset=f"{workspace}/{dataset_name}", dataset_id=str(dataset.id), mode=mode,
                            target=target, confidence=confidence, scope=scope)
    user = auto_user(client, workspace)
    states = read_state(client, dataset, str(user.id) if user is not None else None)
    if not states:
        raise AcceptError(f"dataset {dataset_name!r} has no records: push some first")
    summary.records = len(states)
    summary.pending = sum(s.human_status is None and s.auto_response is None for s in states)
    summary.human = sum(s.human_status is not None for s in states)
    summary.link = certify_link(api_url, dataset.id)
    if mode == "undo":
        done = revoke(client, dataset, states, batch_size=batch_size, concurrency=concurrency)
        summary.revoked = done
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary
    assessment = assess(states, labels, target=target, confidence=confidence, scope=scope)
    summary.basis = assessment.basis
    summary.rows = [asdict(r) for r in assessment.rows]
    summary.to_accept, summary.already = len(assessment.accept), assessment.already
    summary.outside, summary.blocked, summary.drafts = assessment.outside, assessment.blocked, assessment.drafts
    if mode == "apply" and not assessment.accept and not assessment.already:
        groups = [r for r in assessment.rows if r.label != "overall"]
        to_review = sum(r.to_review for r in groups)
        if all(r.status == "no plan" for r in groups):
            raise AcceptError(f"nothing to certify: no label has enough pending suggestions scoring high enough to "
                              f"reach precision {target:g} (lower --precision, or refresh after more reviews)")
        if to_review:
            raise AcceptError(f"nothing certified yet: no reviews of the certification sample; review its "
                              f"{to_review} records first (run accept without --apply to flag them: {summary.link})")
        raise AcceptError(f"nothing certified: no label's reviewed sample reaches precision {target:g} at confidence "
                          f"{confidence:g} (run accept without --apply for the table)")
    ensure_layout(client, dataset)
    summary.flagged, summary.unflagged = sync_flags(client, dataset, states, assessment, batch_size=batch_size,
                                                    concurrency=concurrency)
    if mode == "apply" and assessment.accept:
        user = auto_user(client, workspace, create=True)
        bar = tqdm(total=len(assessment.accept), unit="rec", desc="accept", disable=not progress, dynamic_ncols=True)
        try:
            summary.written = apply(client, dataset, states, assessment, str(user.id), batch_size=batch_size,
                                    concurrency=concurrency, progress=bar.update)
        finally:
            bar.close()
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def revoke_disagreeing(dataset, records: dict, ids: Sequence[str], labels: Sequence[str], scores: np.ndarray,
                       pending: list[int], warnings_out: list | None = None) -> list[int]:
    """The refresh hook: auto-accepted records (which ``refresh`` reads as pending, since
    :func:`annotate.export.reviewed_records` leaves them out of the reviews it fits on) stay accepted where the
    refitted head suggests the accepted label, and are revoked where it suggests another: the auto-accept response
    and the accept metadata go, and the record is pending again (so this refresh writes its new suggestion).

    Args:
        dataset: the ``rg.Dataset``.
        records: refresh's ``{external id: record}`` (its ``metadata`` is read).
        ids: external id of each pool row; ``scores``: ``(n, K)`` the refitted suggestions' probabilities.
        pending: rows refresh would update.
        warnings_out: receives one line saying how many were revoked (when any).

    Returns:
        ``pending`` without the auto-accepted rows that stay accepted.
    """
    candidates = [i for i in pending if ACCEPTED_BY in (records[ids[i]].metadata or {})]
    if not candidates:
        return pending
    client = dataset._client
    user = auto_user(client, dataset.workspace.name)
    states = {s.id: s for s in read_state(client, dataset, str(user.id) if user is not None else None)}
    keep, gone = set(), []
    for i in candidates:
        state = states.get(ids[i])
        if state is None:
            continue
        if state.accepted and state.auto_value == labels[int(np.argmax(scores[i]))]:
            keep.add(i)
        else:  # the head disagrees, or the acceptance is half undone (metadata without a response)
            gone.append(state)
    if gone:
        revoke(client, dataset, gone)
        line = (f"revoked {len(gone)} auto-accepted responses: the refitted head suggests another label (the records "
                "are pending again and get the new suggestion)")
        logger.warning(line)
        if warnings_out is not None:
            warnings_out.append(line)
    return [i for i in pending if i not in keep]
