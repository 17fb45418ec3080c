"""``export``: reviewed records out of Argilla into a training file, with the agreement of the suggestions.

One row per record with a submitted response (and, with ``include_discarded``, per discarded record):

``{"id", "text", "label" | "labels", "status", "source", "annotator", "suggestion", "suggestion_score",
"teacher_scores": {label: prob, ...}, "labels_order": [...], "agent"}``

``source`` is ``human`` for a person's response and ``auto-accept`` for a suggestion accepted in bulk
(``python -m annotate accept --apply``: the response of the user ``auto-accept``, no person's); ``humans_only``
leaves the latter out. Students train on both or on human labels alone (``python -m train.finetune
--humans-only``). The agreement and the confusion matrix are measured on human responses only: an accepted
suggestion agrees with itself.

``label`` (single-label) or ``labels`` (multi-label) is the human decision (``None`` for discarded records);
``teacher_scores`` holds the teacher's probability for every candidate label, in the question's label order,
so training can use both the hard human label and the soft teacher label. When several people answered a
record, the row takes the first submitted response (the first discarded one for a discarded record).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from annotate import client as argilla_client
from annotate.dataset import AUTO_ACCEPT_USER, QUESTION, question_labels, teacher_scores

logger = logging.getLogger(__name__)
FORMATS = ("jsonl", "parquet", "hf")
#: ``source`` of a row: a person's response, or a suggestion accepted in bulk (annotate/accept.py).
HUMAN, AUTO = "human", "auto-accept"


@dataclass
class ExportSummary:
    """Counts by review status over the whole dataset, and how the suggestions fared on reviewed records."""

    dataset: str
    output: str
    format: str
    multi_label: bool
    labels: list[str]
    status_counts: dict = field(default_factory=dict)
    exported: int = 0
    sources: dict = field(default_factory=dict)
    compared: int = 0
    accuracy: float | None = None
    confusion: list[list[int]] = field(default_factory=list)
    confusion_png: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def render(self) -> str:
        """Human-readable summary with the confusion matrix (rows: human label, columns: suggestion)."""
        import pandas as pd

        counts = ", ".join(f"{k}: {v}" for k, v in self.status_counts.items())
        sources = ", ".join(f"{k} {v}" for k, v in self.sources.items())
        lines = [f"dataset     {self.dataset}", f"records     {counts}",
                 f"exported    {self.exported} rows -> {self.output} ({self.format}; source: {sources or '-'})"]
        if self.accuracy is None:
            lines.append("agreement   - (no submitted record to compare)")
        else:
            kind = "exact-set accuracy" if self.multi_label else "accuracy"
            lines.append(f"agreement   suggestion {kind} on {self.compared} reviewed records: {self.accuracy:.4f}")
            frame = pd.DataFrame(self.confusion, index=[f"human {x}" for x in self.labels],
                                 columns=[f"sugg. {x}" for x in self.labels])
            lines += ["confusion (rows: human, columns: suggestion)", frame.to_string()]
        if self.confusion_png:
            lines.append(f"confusion matrix PNG: {self.confusion_png}")
        return "\n".join(lines)


STATUSES = ("submitted", "discarded", "draft")
#: Ids of the auto-accept users met so far (one per server): :func:`_first_response` prefers a person's response.
_AUTO_USERS: set[str] = set()


def auto_accept_user_id(dataset) -> str | None:
    """Id of the user ``auto-accept`` (annotate/accept.py) on ``dataset``'s server, ``None`` when there is none."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        user = argilla_client.call(dataset._client.users, AUTO_ACCEPT_USER, what="user lookup")
    if user is None:
        return None
    _AUTO_USERS.add(str(user.id))
    return str(user.id)


def reviewed_records(dataset, statuses=STATUSES, batch_size: int = 500, auto_accepted: bool = False):
    """Yield ``(status, record)`` for every record with a response, by precedence submitted > discarded > draft.

    Statuses come from server-side filters (``response.status``), not from ``record.responses``: the SDK drops
    responses without a value, as a discard made without picking a label is, so a discarded record can come
    back with no response at all.

    Records whose only response is the ``auto-accept`` user's (suggestions accepted in bulk, annotate/accept.py)
    are no one's review: they are left out unless ``auto_accepted`` (``refresh`` fits on what this yields, and
    judges the accepted records against its new head instead, :func:`annotate.accept.revoke_disagreeing`). The
    auto-accept user only ever submits, so a discarded or draft match is always a person's.
    """
    import argilla as rg

    auto = auto_accept_user_id(dataset)
    seen: set[str] = set()
    for status in statuses:
        query = rg.Query(filter=rg.Filter(("response.status", "==", status)))
        for record in dataset.records(query=query, batch_size=batch_size, with_suggestions=True,
                                      with_responses=True):
            if str(record.id) in seen:
                continue
            if status == "submitted" and auto is not None and not auto_accepted and is_auto_accepted(record, auto):
                continue
            seen.add(str(record.id))
            yield status, record


def is_auto_accepted(record, auto_user_id: str | None) -> bool:
    """Whether every response of ``record`` (an SDK record read with its responses) is the auto-accept user's."""
    users = {str(response.user_id) for response in record.responses}
    return auto_user_id is not None and users == {str(auto_user_id)}


def _first_response(record, status: str):
    """The record's first response of ``status`` to the label question, a person's before the auto-accept user's."""
    matching = [response for response in record.responses
                if str(getattr(response.status, "value", response.status)) == status and response.question_name == QUESTION]
    human = [response for response in matching if str(response.user_id) not in _AUTO_USERS]
    return (human or matching or [None])[0]


def export(client, dataset_name: str, workspace: str, output: str | Path, fmt: str = "jsonl",
           include_discarded: bool = False, confusion_png: str | Path | None = None,
           progress: bool = True, humans_only: bool = False) -> ExportSummary:
    """Write the reviewed records of ``workspace/dataset_name`` to ``output`` and measure the suggestions.

    The file is written to a temporary path next to ``output`` and renamed at the end, so a failed export
    leaves no partial file. ``fmt``: ``jsonl``, ``parquet`` or ``hf`` (a ``datasets.save_to_disk`` folder).
    ``humans_only``: leave out the records accepted in bulk (``source`` ``auto-accept``).

    Raises:
        annotate.client.ArgillaRefused: the dataset does not exist, or Argilla refused the read.
        annotate.dataset.DatasetMismatch: the dataset was not made by ``push``.
        ValueError: unknown ``fmt``.
    """
    from tqdm import tqdm

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    dataset = argilla_client.find_dataset(client, dataset_name, workspace)
    if dataset is None:
        raise argilla_client.ArgillaRefused(f"dataset {dataset_name!r} not found in workspace {workspace!r}")
    labels, multi_label = question_labels(dataset)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(dataset=f"{workspace}/{dataset_name}", output=str(output), format=fmt,
                            multi_label=multi_label, labels=labels)
    users: dict[str, str] = {}
    statuses: Counter = Counter()
    sources: Counter = Counter()
    human, suggested = [], []
    key = "labels" if multi_label else "label"
    fd, tmp_jsonl = tempfile.mkstemp(prefix=".export-", suffix=".jsonl", dir=output.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            records = reviewed_records(dataset, auto_accepted=True)
            auto = auto_accept_user_id(dataset)
            for status, record in tqdm(records, unit="rec", desc="export", disable=not progress):
                source = AUTO if status == "submitted" and is_auto_accepted(record, auto) else HUMAN
                statuses["auto-accepted" if source == AUTO else status] += 1
                if status == "draft" or (status == "discarded" and not include_discarded):
                    continue
                if source == AUTO and humans_only:
                    continue
                response = _first_response(record, status)
                value = response.value if (response is not None and status == "submitted") else None
                suggestion = record.suggestions[QUESTION] if QUESTION in _suggestion_names(record) else None
                row = {
                    "id": str(record.id), "text": record.fields["text"], key: value, "status": status, "source": source,
                    "annotator": _username(client, users, response.user_id) if response is not None else None,
                    "suggestion": suggestion.value if suggestion else None,
                    "suggestion_score": suggestion.score if suggestion else None,
                    "teacher_scores": teacher_scores(record.metadata or {}, labels),
                    "labels_order": labels, "agent": suggestion.agent if suggestion else None,
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                summary.exported += 1
                sources[source] += 1
                if status == "submitted" and source == HUMAN and value is not None and suggestion is not None:
                    human.append(value)
                    suggested.append(suggestion.value)
        os.chmod(tmp_jsonl, 0o644)  # mkstemp makes it private; the training file is an ordinary output
        _finalize(Path(tmp_jsonl), output, fmt)
    finally:
        if os.path.exists(tmp_jsonl):
            os.unlink(tmp_jsonl)
    total = argilla_client.call(dataset.progress, what="dataset progress")["total"]
    summary.status_counts = {s: statuses.get(s, 0) for s in (*STATUSES, "auto-accepted")}
    summary.sources = {s: sources.get(s, 0) for s in (HUMAN, AUTO)}
    summary.status_counts["pending"] = total - sum(summary.status_counts.values())
    summary.compared = len(human)
    if human:
        summary.accuracy, summary.confusion = agreement(human, suggested, labels, multi_label)
        if confusion_png:
            summary.confusion_png = str(save_confusion_png(summary.confusion, labels, confusion_png,
                                                           f"{dataset_name}: suggestion vs human ({len(human)})"))
    return summary


def _suggestion_names(record) -> set[str]:
    return {s.question_name for s in record.suggestions}


def _username(client, cache: dict, user_id) -> str:
    key = str(user_id)
    if key not in cache:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            user = client.users(id=user_id)
        cache[key] = user.username if user is not None else key
    return cache[key]


def agreement(human: list, suggested: list, labels: list[str], multi_label: bool) -> tuple[float, list[list[int]]]:
    """Accuracy of the suggestions against the human labels, and a ``(n_labels, n_labels)`` count matrix.

    Single-label: scikit-learn's accuracy and confusion matrix (rows: human, columns: suggestion).
    Multi-label: exact-set accuracy; cell ``[i][j]`` counts records where a human chose label ``i`` and the
    suggestion contained label ``j``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix

    if not multi_label:
        return float(accuracy_score(human, suggested)), confusion_matrix(human, suggested, labels=labels).tolist()
    exact = sum(set(h) == set(s) for h, s in zip(human, suggested)) / len(human)
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for h, s in zip(human, suggested):
        for a in h:
            for b in s:
                if a in index and b in index:
                    matrix[index[a]][index[b]] += 1
    return float(exact), matrix


def save_confusion_png(matrix: list[list[int]], labels: list[str], path: str | Path, title: str) -> Path:
    """Draw the matrix with scikit-learn's ``ConfusionMatrixDisplay`` (matplotlib, Agg) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(labels), 1.2 + 1.0 * len(labels)), dpi=110)
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=labels).plot(ax=ax, cmap="Blues", colorbar=False,
                                                                            xticks_rotation=30)
    ax.set_xlabel("suggestion (teacher)")
    ax.set_ylabel("human label")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _finalize(jsonl: Path, output: Path, fmt: str) -> None:
    """Move the finished JSONL into place, or convert it (Parquet via pandas/pyarrow, HF via ``datasets``).

    Conversion holds the exported rows in memory: they are the human-reviewed records, not the whole pool."""
    if fmt == "jsonl":
        os.replace(jsonl, output)
        return
    tmp = output.parent / f".{output.name}.tmp"
    if fmt == "parquet":
        import pandas as pd

        rows = [json.loads(line) for line in jsonl.open(encoding="utf-8")]
        pd.DataFrame(rows).to_parquet(tmp, index=False)  # teacher_scores: a struct column, one float per label
        os.replace(tmp, output)
        return
    import datasets

    shutil.rmtree(tmp, ignore_errors=True)
    rows = [json.loads(line) for line in jsonl.open(encoding="utf-8")]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
    if output.exists():
        shutil.rmtree(output) if output.is_dir() else output.unlink()
    os.replace(tmp, output)
