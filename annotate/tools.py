"""The one small interface an annotation tool implements for the loop (:mod:`annotate.loop`).

The loop itself (the adapted head, certified acceptance, suspect labels, export) needs only this from a tool: its
records with their suggestions and human decisions, a way to add records with suggestions, to rewrite suggestions,
to write and withdraw accepted suggestions, to flag records for people, and links to views of them. Label Studio
(:class:`annotate.labelstudio.tool.LabelStudioTool`) implements it; a third tool is one more module. This module and
:mod:`annotate.loop` import no tool SDK (an import-linter contract in ``pyproject.toml`` checks it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol, Sequence


def record_id(text: str, source_id: str | None = None) -> str:
    """Content-derived record id: 32 hex chars of SHA-256 over the id column's value (if any) and the text.

    The same text (with the same source id) always maps to the same record, so pushing again neither
    duplicates nor loses records, in any tool.
    """
    key = ("" if source_id is None else source_id) + "\x1f" + text
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


#: The user whose annotations (responses) are the suggestions accepted in bulk.
AUTO_ACCEPT_USER = "auto-accept"
#: Flags the loop writes on records: the certification sample to review, and a suspect label's score.
CERTIFY, SUSPECT = "certify", "suspect"


@dataclass
class ToolRecord:
    """One record as the loop sees it.

    Attributes:
        id: the loop's content id (:func:`annotate.dataset.record_id` of the stored text), the key of the local cache.
        key: the tool's own handle (a Label Studio task id).
        text: the text as stored.
        suggestion: the current suggestion's label (single-label), ``None`` when it has none.
        score: its score.
        agent: what made it (model version).
        human: the label a person gave (the first submitted decision), ``None`` when nobody did.
        status: ``"submitted"``, ``"discarded"`` (a person found no label fits, or skipped it), or ``None``.
        annotator: who gave ``human`` (the tool's name for the person: an email, a user name).
        accepted: the suggestion was accepted in bulk (:data:`AUTO_ACCEPT_USER`'s decision, no person's).
        accepted_label: the label accepted in bulk.
        flags: the loop's flags on the record (:data:`CERTIFY`, :data:`SUSPECT`).
    """

    id: str
    key: object
    text: str
    suggestion: str | None = None
    score: float | None = None
    agent: str | None = None
    human: str | None = None
    status: str | None = None
    annotator: str | None = None
    accepted: bool = False
    accepted_label: str | None = None
    flags: dict = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        """Nobody decided it, and it was not accepted in bulk."""
        return self.status is None and not self.accepted


@dataclass
class NewRecord:
    """A record to add: its content id, text and suggestion."""

    id: str
    text: str
    suggestion: str
    score: float


class AnnotationTool(Protocol):
    """What the loop needs from an annotation tool (one dataset or project of it)."""

    name: str
    labels: list[str]
    multi_label: bool

    def records(self) -> list[ToolRecord]:
        """Every record, with its suggestion and decisions."""

    def add(self, records: Sequence[NewRecord], agent: str) -> int:
        """Create records with their suggestions (made by ``agent``); how many were created. The tool splits them
        into requests of the size it takes best (the loop passes a whole push at once)."""

    def write_suggestions(self, suggestions: dict, agent: str, *, replace_all: bool = False) -> int:
        """``{key: (label, score)}``: the records' new suggestions, made by ``agent``. ``replace_all``: the caller
        passes every pending record (a new model version); how many were written."""

    def accept(self, labels: dict) -> int:
        """``{key: label}``: write the suggestions as :data:`AUTO_ACCEPT_USER`'s decisions; how many."""

    def withdraw(self, keys: Sequence) -> int:
        """Remove :data:`AUTO_ACCEPT_USER`'s decisions from these records; how many."""

    def flag(self, name: str, values: dict) -> int:
        """``{key: value or None}``: set (or clear, ``None``) the flag ``name`` on records; how many changed."""

    def link(self, view: str, label: str | None = None) -> str:
        """A link to a view of the records: ``pending`` (least confident first), ``certify`` (the certification
        sample to review), ``suspects`` (most suspect first), ``validate`` (one label's pending records, most
        confident first, to validate in bulk)."""
