"""The Argilla side of the loop: dataset settings, content-derived record ids, records with suggestions.

Layout of a pre-annotation dataset:

* field ``text`` (``TextField``); question ``label`` (``LabelQuestion``, or ``MultiLabelQuestion`` with
  multi-label) whose options are the candidate labels, in the order given at creation;
* float metadata ``confidence`` (top score), ``margin`` (top minus second) and ``entropy`` (normalised, see
  :mod:`pool.uncertainty`), visible to everyone so reviewers can filter and sort on them;
* float metadata ``teacher_score_<i>`` per label ``i`` of the question (titled ``P(<label>)``), hidden from
  annotators: the teacher's full score vector. Per-label float metadata is typed, range-filterable in the UI,
  and round-trips exactly through the SDK; a JSON string would need a ``TermsMetadataProperty`` (an indexed
  keyword no one can filter on usefully). Names use the label's index because metadata names only allow
  ``[a-z0-9_-]`` and labels such as ``Sci/Tech`` do not;
* each record's suggestion: value (top label, or every label scoring >= the threshold with multi-label),
  score(s), and agent ``<model id>@<engine>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from annotate.tools import record_id  # noqa: F401  (the loop's content id; pushes and exports name records by it)

FIELD = "text"
QUESTION = "label"
UNCERTAINTY = ("confidence", "margin", "entropy")
#: Vector field of the text's sentence embedding (datasets pushed with embeddings).
VECTOR = "embedding"
#: Integer metadata (0/1, visible): the record belongs to the random audit sample (:func:`audit_flags`).
AUDIT = "audit"
#: Float metadata (visible): a random number per record (:func:`audit_order`), the order the audit sample is shown in.
AUDIT_ORDER = "audit_order"
#: Bulk acceptance (:mod:`annotate.accept`): integer metadata (0/1, visible) on the records of the certification
#: sample, to review before pending suggestions can be accepted in bulk, and the suggestions it was drawn on (a
#: fingerprint, hidden).
CERTIFY = "certify"
CERTIFY_BASIS = "certify_basis"
#: Metadata of an auto-accepted record: who accepted it (the user :data:`AUTO_ACCEPT_USER`), the certified threshold
#: of its label and the head revision (or agent) of the suggestion accepted.
ACCEPTED_BY = "accepted_by"
ACCEPT_THRESHOLD = "accept_threshold"
ACCEPT_REVISION = "accept_revision"
ACCEPT_METADATA = (ACCEPTED_BY, ACCEPT_THRESHOLD, ACCEPT_REVISION)
#: The Argilla user (annotator role) whose responses are the auto-accepted suggestions.
AUTO_ACCEPT_USER = "auto-accept"
GUIDELINES = """Pre-annotated by a zero-shot NLI teacher ({agent}; template "{template}").
Confirm the suggested label when it is right; pick the right one when it is not; discard texts that fit no label
or cannot be judged. Records open lowest-confidence first (sort by the suggestion score, ascending):
those are where the model needs you most. Metadata: confidence = top score, margin = top minus second,
entropy = normalised uncertainty (1 = most uncertain)."""


class DatasetMismatch(ValueError):
    """An existing dataset does not match the requested labels, label mode or layout."""


def teacher_key(index: int) -> str:
    """Metadata name of the teacher's score for the label at ``index`` in the question's label order."""
    return f"teacher_score_{index}"


#: Longest question description Argilla 2.8 accepts (``QUESTION_CREATE_DESCRIPTION_MAX_LENGTH``).
QUESTION_DESCRIPTION_CHARS = 1000


def question_description(descriptions: dict[str, list[str]] | None = None) -> str:
    """The label question's description: what the suggestion is, then each described label's descriptions (so
    reviewers read what the zero-shot teacher was told each label means)."""
    text = "Suggestion from the zero-shot teacher; correct it if needed."
    for label, sentences in (descriptions or {}).items():
        text += f"\n{label}: " + " ".join(sentences)
    if len(text) > QUESTION_DESCRIPTION_CHARS:  # Argilla refuses longer question descriptions
        text = text[:QUESTION_DESCRIPTION_CHARS - 1] + "\u2026"
    return text


def build_settings(labels: Sequence[str], multi_label: bool, guidelines: str, vector_dim: int | None = None,
                   audit: bool = False, descriptions: dict[str, list[str]] | None = None):
    """Argilla ``Settings`` for a new pre-annotation dataset (see the module docstring for the layout).

    ``vector_dim``: add the vector field :data:`VECTOR` of that many dimensions (the sentence embedding of each
    text: Argilla's "find similar" for reviewers, and the adapted head's features). ``audit``: add the integer
    metadata :data:`AUDIT` (0/1, visible) marking the random audit sample. ``descriptions``: label descriptions,
    shown in the question's description (:func:`question_description`)."""
    import argilla as rg

    question_cls = rg.MultiLabelQuestion if multi_label else rg.LabelQuestion
    metadata = [
        rg.FloatMetadataProperty(name="confidence", title="confidence (top score)", min=0.0, max=1.0),
        rg.FloatMetadataProperty(name="margin", title="margin (top - second)", min=0.0, max=1.0),
        rg.FloatMetadataProperty(name="entropy", title="entropy (normalised)", min=0.0, max=1.0),
    ] + [rg.FloatMetadataProperty(name=teacher_key(i), title=f"P({label})", min=0.0, max=1.0,
                                  visible_for_annotators=False) for i, label in enumerate(labels)]
    if audit:
        metadata.append(rg.IntegerMetadataProperty(name=AUDIT, title="audit sample (1 = random sample)", min=0, max=1))
        metadata.append(rg.FloatMetadataProperty(name=AUDIT_ORDER, title="audit order (random)", min=0.0, max=1.0))
    return rg.Settings(
        guidelines=guidelines,
        fields=[rg.TextField(name=FIELD, title="Text", use_markdown=False)],
        questions=[question_cls(name=QUESTION, title="Which label fits this text?", labels=list(labels),
                                description=question_description(descriptions))],
        metadata=metadata,
        vectors=[rg.VectorField(name=VECTOR, title="Sentence embedding", dimensions=int(vector_dim))]
        if vector_dim else [],
        allow_extra_metadata=False,
    )


def question_labels(dataset) -> tuple[list[str], bool]:
    """The ``label`` question's labels in order and whether it is multi-label.

    Raises:
        DatasetMismatch: the dataset has no ``label`` question of a label type.
    """
    import argilla as rg

    question = next((q for q in dataset.settings.questions if q.name == QUESTION), None)
    if not isinstance(question, (rg.LabelQuestion, rg.MultiLabelQuestion)):
        raise DatasetMismatch(f"dataset {dataset.name!r} has no label question named {QUESTION!r}: "
                              "it was not created by `python -m annotate push`")
    return list(question.labels), isinstance(question, rg.MultiLabelQuestion)


def check_compatible(dataset, labels: Sequence[str], multi_label: bool) -> None:
    """Raise :class:`DatasetMismatch` unless ``dataset`` has exactly these labels (same order), label mode,
    text field and metadata."""
    existing, existing_multi = question_labels(dataset)
    if existing != list(labels):
        raise DatasetMismatch(f"labels {list(labels)} do not match dataset {dataset.name!r}, whose question has "
                              f"{existing}: pass the same labels in the same order, or use another --dataset")
    if existing_multi != multi_label:
        mode = "multi-label" if existing_multi else "single-label"
        raise DatasetMismatch(f"dataset {dataset.name!r} is {mode}: {'add' if existing_multi else 'drop'} "
                              "--multi-label, or use another --dataset")
    names = {m.name for m in dataset.settings.metadata}
    wanted = set(UNCERTAINTY) | {teacher_key(i) for i in range(len(labels))}
    if FIELD not in {f.name for f in dataset.settings.fields} or not wanted <= names:
        raise DatasetMismatch(f"dataset {dataset.name!r} lacks the {FIELD!r} field or the teacher metadata: "
                              "it was not created by `python -m annotate push`")


def suggestion_value(scores: np.ndarray, labels: Sequence[str], multi_label: bool,
                     threshold=0.5) -> tuple[str | list[str], float | list[float]]:
    """The suggestion for one score row ``(n_labels,)``: ``(label, score)``, or with multi-label
    ``(labels >= threshold, their scores)`` sorted by descending score (the top label when none passes).
    ``threshold``: one for every label, or ``(n_labels,)`` per-label thresholds (the one-vs-rest head's; when none
    passes, the label closest to its threshold, :func:`service.head.decide`)."""
    from service.head import decide

    order = np.argsort(-scores, kind="stable")
    if not multi_label:
        return labels[order[0]], float(scores[order[0]])
    passes = decide(np.asarray(scores, dtype=np.float64)[None, :], threshold)[0]
    chosen = [i for i in order if passes[i]]
    return [labels[i] for i in chosen], [float(scores[i]) for i in chosen]


def build_records(ids: Sequence[str], texts: Sequence[str], scores: np.ndarray, labels: Sequence[str],
                  multi_label: bool, agent: str, threshold: float = 0.5, vectors: np.ndarray | None = None,
                  extra_metadata: dict[str, Sequence] | None = None) -> list:
    """Argilla records, one per text: ``scores`` has shape ``(len(texts), len(labels))`` in label order;
    ``threshold`` (multi-label): a scalar or per-label ``(len(labels),)`` (:func:`suggestion_value`).

    ``vectors``: ``(len(texts), dim)`` sentence embeddings for the :data:`VECTOR` field; ``extra_metadata``:
    more metadata values by name, one per text (the dataset must define them)."""
    import argilla as rg

    from pool.uncertainty import summarize

    stats = summarize(scores, multi_label)
    records = []
    for row, (rid, text) in enumerate(zip(ids, texts)):
        value, score = suggestion_value(scores[row], labels, multi_label, threshold)
        metadata = {name: round(float(stats[name][row]), 6) for name in UNCERTAINTY}
        metadata.update({teacher_key(i): float(scores[row, i]) for i in range(len(labels))})
        for name, values in (extra_metadata or {}).items():
            metadata[name] = values[row]
        kwargs = {"vectors": {VECTOR: [float(x) for x in vectors[row]]}} if vectors is not None else {}
        records.append(rg.Record(id=rid, fields={FIELD: text}, metadata=metadata, **kwargs,
                                 suggestions=[rg.Suggestion(question_name=QUESTION, value=value, score=score,
                                                            agent=agent)]))
    return records


def teacher_scores(metadata: dict, labels: Sequence[str]) -> dict[str, float | None]:
    """``{label: probability}`` for every label, in question order, from a record's metadata."""
    return {label: metadata.get(teacher_key(i)) for i, label in enumerate(labels)}


def audit_flags(ids: Sequence[str], fraction: float) -> list[int]:
    """1 for the records of the random audit sample, else 0: a record is in it when a hash of its id falls below
    ``fraction`` (so ~``fraction`` of any set of records, the same records on every run, independent of the review
    order). Their reviews estimate the accuracy of pending suggestions without the bias of lowest-score-first review.
    """
    bound = fraction * 2 ** 32
    return [int(int(hashlib.sha256(f"audit:{rid}".encode()).hexdigest()[:8], 16) < bound) for rid in ids]


def audit_order(ids: Sequence[str]) -> list[float]:
    """A random number in [0, 1) per record, from a hash of its id (independent of :func:`audit_flags`' hash and of
    any score): sorting the audit sample by it shows it in random order, so whoever stops part-way has reviewed a
    random part of it, not its least confident records."""
    return [int(hashlib.sha256(f"audit-order:{rid}".encode()).hexdigest()[:8], 16) / 2 ** 32 for rid in ids]


def audit_metadata(ids: Sequence[str], fraction: float, ordered: bool) -> dict[str, list]:
    """The audit metadata of records: :data:`AUDIT` flags, and :data:`AUDIT_ORDER` when ``ordered`` (datasets
    created before it existed have no such property)."""
    out: dict[str, list] = {AUDIT: audit_flags(ids, fraction)}
    if ordered:
        out[AUDIT_ORDER] = audit_order(ids)
    return out


def has_vectors(dataset) -> bool:
    """Whether ``dataset`` has the :data:`VECTOR` field (datasets pushed before adaptation existed do not)."""
    return any(v.name == VECTOR for v in dataset.settings.vectors)


def has_metadata(dataset, name: str) -> bool:
    return any(m.name == name for m in dataset.settings.metadata)


def margin_link(api_url: str, dataset_id) -> str:
    """URL of the dataset in Argilla's UI, smallest margin (top minus second score) first: "breaking ties"."""
    return f"{api_url.rstrip('/')}/dataset/{dataset_id}/annotation-mode?sort=metadata.margin.asc"


def audit_link(api_url: str, dataset_id, ordered: bool = True) -> str:
    """URL of the dataset in Argilla's UI filtered to the audit sample (metadata ``audit`` in [1, 1]), in random
    order (:data:`AUDIT_ORDER` ascending; ``ordered=False`` for datasets without it: Argilla's insertion order). Never
    by score: reviewing the least confident audit records first would bias the estimate made from them."""
    link = f"{api_url.rstrip('/')}/dataset/{dataset_id}/annotation-mode?metadata={AUDIT}.ge1.le1"
    return link + (f"&sort=metadata.{AUDIT_ORDER}.asc" if ordered else "")


def certify_link(api_url: str, dataset_id, question: str = QUESTION) -> str:
    """URL of the dataset in Argilla's UI filtered to the certification sample of bulk acceptance (metadata
    ``certify`` in [1, 1]), pending records lowest suggestion score first."""
    return (f"{api_url.rstrip('/')}/dataset/{dataset_id}/annotation-mode?metadata={CERTIFY}.ge1.le1"
            f"&sort=suggestion.{question}.score.asc")


def deep_link(api_url: str, dataset_id, question: str = QUESTION) -> str:
    """URL of the dataset in Argilla's UI, lowest suggestion score first (pending records by default)."""
    return f"{api_url.rstrip('/')}/dataset/{dataset_id}/annotation-mode?sort=suggestion.{question}.score.asc"


def suspect_link(api_url: str, dataset_id, name: str = "suspect") -> str:
    """URL of the dataset in Argilla's UI showing the submitted records, most suspect first (metadata ``suspect``
    descending, written by ``python -m annotate suspects``): the labels to check again."""
    return f"{api_url.rstrip('/')}/dataset/{dataset_id}/annotation-mode?status=submitted&sort=metadata.{name}.desc"
