"""An Argilla dataset as the loop's annotation tool (:class:`annotate.tools.AnnotationTool`), so that
:mod:`annotate.loop` (push, refresh, accept, suspects, export) runs on Argilla as it runs on Label Studio.

How the loop's notions map onto an Argilla pre-annotation dataset (:mod:`annotate.dataset`'s layout):

* a record is a record; its text is the field ``text``, the loop's content id its external id, the tool's key its
  Argilla id (uuid);
* a suggestion is the suggestion of the question ``label`` (value, score, agent); refreshing it upserts the record
  with its metadata as read (Argilla replaces a record's metadata on upsert);
* a person's decision is their response: ``submitted`` with the label, ``discarded``; a draft is no decision;
* a suggestion accepted in bulk is a submitted response of the user ``auto-accept`` (annotator role, created on first
  use) with the metadata ``accepted_by``, never written on a record with a person's response
  (:func:`annotate.accept.apply`'s rules);
* flags are metadata: ``certify`` (integer 0/1) and ``suspect`` (float), their properties added when missing;
* links are the UI's annotation-mode URLs (:mod:`annotate.dataset`).

The ``python -m annotate`` commands on Argilla keep their own modules (:mod:`annotate.push`, :mod:`annotate.refresh`,
:mod:`annotate.accept`, :mod:`annotate.suspects_argilla`, :mod:`annotate.export`): they do what the loop core does
not yet (multi-label, the audit sample, vectors, Ray scoring, a fine-tuned encoder).
"""

from __future__ import annotations

import logging
from typing import Sequence

from annotate.accept import (
    ACCEPT_THRESHOLD,
    ACCEPTED_BY,
    _bulk,
    _request,
    auto_user,
    ensure_layout,
    read_state,
    revoke,
)
from annotate.dataset import (
    CERTIFY,
    FIELD,
    QUESTION,
    certify_link,
    deep_link,
    question_labels,
    suspect_link,
)
from annotate.suspects import SUSPECT
from annotate.tools import AUTO_ACCEPT_USER, NewRecord, ToolRecord

logger = logging.getLogger(__name__)


class ArgillaTool:
    """One Argilla dataset.

    Args:
        client: an ``argilla.Argilla`` client (:func:`annotate.client.connect`).
        dataset: the dataset (``argilla.Dataset``, created on the server) with a ``label`` question.
        api_url: the server's URL, for links; workspace: the dataset's workspace (the auto-accept user joins it).
        batch_size, concurrency: records a bulk request, and requests in flight.

    Raises:
        annotate.dataset.DatasetMismatch: the dataset has no ``label`` question.
    """

    def __init__(self, client, dataset, *, api_url: str, workspace: str, batch_size: int = 256,
                 concurrency: int = 2) -> None:
        self.client, self.dataset = client, dataset
        self.api_url, self.workspace = api_url.rstrip("/"), workspace
        self.labels, self.multi_label = question_labels(dataset)
        self.name = f"Argilla dataset {dataset.name!r} (workspace {workspace!r})"
        self.batch_size, self.concurrency = batch_size, concurrency
        self._states: dict[str, object] = {}
        self._auto_id: str | None = None
        self._names: dict = {}

    # reading --------------------------------------------------------------------------------------------------
    def _auto(self, create: bool) -> str | None:
        if self._auto_id is None:
            user = auto_user(self.client, self.workspace, create=create)
            self._auto_id = str(user.id) if user is not None else None
        return self._auto_id

    def records(self) -> list[ToolRecord]:
        from annotate.export import _username

        states = read_state(self.client, self.dataset, self._auto(create=False))
        self._states = {s.uuid: s for s in states}
        out = []
        for s in states:
            status = s.human_status if s.human_status in ("submitted", "discarded") else None
            flags = {name: s.metadata[name] for name in (CERTIFY, SUSPECT) if s.metadata.get(name) is not None}
            if not flags.get(CERTIFY):
                flags.pop(CERTIFY, None)
            out.append(ToolRecord(id=s.id, key=s.uuid, text=s.text, suggestion=s.value, score=s.score,
                                  agent=s.agent, human=s.human_value if status == "submitted" else None,
                                  status=status, accepted=s.accepted,
                                  annotator=_username(self.client, self._names, s.human_user) if status else None,
                                  accepted_label=s.auto_value if s.accepted else None, flags=flags))
        return out

    # writing --------------------------------------------------------------------------------------------------
    def _record(self, rid: str, text: str, metadata: dict, label: str, score: float, agent: str):
        import argilla as rg

        return rg.Record(id=rid, fields={FIELD: text}, metadata=metadata,
                         suggestions=[rg.Suggestion(question_name=QUESTION, value=label, score=float(score),
                                                    agent=agent)])

    def _upsert(self, records: list) -> int:
        from annotate.upsert import Upserter

        with Upserter(self.dataset, batch_size=self.batch_size, concurrency=self.concurrency) as upserter:
            upserter.submit(records)
        return upserter.stats.written

    def add(self, records: Sequence[NewRecord], agent: str) -> int:
        """Log the records with their suggestions (no metadata: the loop keeps the scores in its cache)."""
        return self._upsert([self._record(r.id, r.text, {}, r.suggestion, r.score, agent) for r in records])

    def write_suggestions(self, suggestions: dict, agent: str, *, replace_all: bool = False) -> int:
        """Upsert the records with their new suggestion, text and metadata as last read (:meth:`records`)."""
        missing = [k for k in suggestions if k not in self._states]
        if missing:
            self.records()
        todo = []
        for key, (label, score) in suggestions.items():
            s = self._states[key]
            todo.append(self._record(s.id, s.text, dict(s.metadata), label, score, agent))
        return self._upsert(todo)

    def accept(self, labels: dict) -> int:
        """Submitted responses of the ``auto-accept`` user (created on first use) with the accept metadata; a record
        that has any response now (read again first) is left alone."""
        user = self._auto(create=True)
        ensure_layout(self.client, self.dataset)
        self.records()
        items = []
        for key, label in labels.items():
            s = self._states.get(key)
            if s is None or s.human_status is not None or s.auto_response is not None:
                continue
            metadata = {**s.metadata, ACCEPTED_BY: AUTO_ACCEPT_USER,
                        ACCEPT_THRESHOLD: round(float(s.score or 0.0), 6)}
            response = {"user_id": user, "status": "submitted", "values": {QUESTION: {"value": label}}}
            items.append({"id": s.uuid, "metadata": metadata, "responses": [response]})
        if not items:
            return 0
        return _bulk(self.client, self.dataset, items, batch_size=self.batch_size, concurrency=self.concurrency,
                     what="acceptance")

    def withdraw(self, keys: Sequence) -> int:
        """Delete the ``auto-accept`` user's responses and the accept metadata (:func:`annotate.accept.revoke`)."""
        self.records()
        states = [self._states[k] for k in keys if k in self._states]
        return revoke(self.client, self.dataset, states, batch_size=self.batch_size,
                      concurrency=self.concurrency) if states else 0

    def flag(self, name: str, values: dict) -> int:
        """Set (or, for ``None``, remove) the metadata ``name`` (:data:`CERTIFY` or :data:`SUSPECT`) of records, the
        property added to the dataset first when it lacks one."""
        self._ensure_flag(name)
        if any(k not in self._states for k in values):
            self.records()
        items = []
        for key, value in values.items():
            s = self._states.get(key)
            if s is None or s.metadata.get(name) == value:
                continue
            metadata = {k: v for k, v in s.metadata.items() if k != name}
            if value is not None:
                metadata[name] = value
            items.append({"id": s.uuid, "metadata": metadata})
            s.metadata = metadata
        if not items:
            return 0
        return _bulk(self.client, self.dataset, items, batch_size=self.batch_size, concurrency=self.concurrency,
                     what=f"flag {name!r}")

    def _ensure_flag(self, name: str) -> None:
        if name == CERTIFY:
            ensure_layout(self.client, self.dataset)
            return
        if name != SUSPECT:
            raise ValueError(f"unknown flag {name!r}: {CERTIFY} or {SUSPECT}")
        have = {m["name"] for m in _request(self.client, "GET",
                                            f"/api/v1/me/datasets/{self.dataset.id}/metadata-properties",
                                            "read of the metadata properties")["items"]}
        if SUSPECT not in have:
            _request(self.client, "POST", f"/api/v1/datasets/{self.dataset.id}/metadata-properties",
                     f"creation of the metadata property {SUSPECT!r}", attempts=1,
                     json={"name": SUSPECT, "title": "suspect (submitted label looks wrong)",
                           "settings": {"type": "float", "min": 0.0, "max": 1.0}, "visible_for_annotators": True})

    # links ------------------------------------------------------------------------------------------------------
    def link(self, view: str, label: str | None = None) -> str:
        """The dataset in Argilla's annotation mode: ``pending`` (lowest suggestion score first), ``certify`` (the
        certification sample), ``suspects`` (submitted records, most suspect first), ``validate`` (pending records,
        highest score first: Argilla's URL cannot filter on the suggested label, so ``label`` is not applied).

        Raises:
            ValueError: an unknown view.
        """
        if view == "pending":
            return deep_link(self.api_url, self.dataset.id)
        if view == "certify":
            return certify_link(self.api_url, self.dataset.id)
        if view == "suspects":
            return suspect_link(self.api_url, self.dataset.id, SUSPECT)
        if view == "validate":
            return f"{self.api_url}/dataset/{self.dataset.id}/annotation-mode?sort=suggestion.{QUESTION}.score.desc"
        raise ValueError(f"unknown view {view!r}: pending, certify, suspects or validate")


def open_dataset(client, name: str, workspace: str, *, api_url: str, labels: list[str] | None = None,
                 create: bool = False, guidelines: str = "") -> ArgillaTool:
    """The dataset ``workspace/name`` as a tool; with ``create``, made (single-label, :func:`annotate.dataset.
    build_settings`) when absent.

    Raises:
        LookupError: no such dataset and ``create`` is false.
        annotate.dataset.DatasetMismatch: its labels differ from ``labels``.
    """
    import argilla as rg

    from annotate.client import find_dataset
    from annotate.dataset import build_settings, check_compatible

    dataset = find_dataset(client, name, workspace)
    if dataset is None:
        if not create:
            raise LookupError(f"no Argilla dataset {workspace}/{name}: push to it first")
        dataset = rg.Dataset(name=name, workspace=workspace, client=client,
                             settings=build_settings(labels, False, guidelines or "pre-annotated by zero-shot"))
        dataset.create()
    elif labels is not None:
        check_compatible(dataset, labels, False)
    return ArgillaTool(client, dataset, api_url=api_url, workspace=workspace)
