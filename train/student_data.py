"""Training data of a student classifier: curated exports, teacher-scored unlabeled texts, an evaluation file.

Three sources, merged by text:

- **exports** of ``python -m annotate export`` (JSONL, Parquet, or a ``datasets.save_to_disk`` folder): the
  human label (``label``, or ``labels`` for multi-label; ``None`` for discarded records, which are dropped) and
  the teacher's score vector (``teacher_scores`` over ``labels_order``); rows whose ``source`` is
  ``auto-accept`` (suggestions accepted in bulk, ``python -m annotate accept``) count as labelled too, unless
  ``humans_only``;
- an **unlabeled** file (``.txt``/``.csv``/``.jsonl``/``.parquet``) scored by the zero-shot teacher on the fly
  (soft labels only), as in Hugging Face's zero-shot distillation example (``distill_classifier.py``);
- an **evaluation** file (JSONL with the text field(s) and a gold ``label`` / ``labels``), never trained on.

Everything is checked before any training starts (:class:`StudentDataError`): empty exports, a single class,
teacher score vectors of another width or label order, evaluation labels the training data never had.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class StudentDataError(ValueError):
    """Training input that cannot make a student (the CLI prints it on one line and exits 2)."""


@dataclass
class Example:
    """One training text: its human label(s) when reviewed, the teacher's scores when scored.

    Attributes:
        text: the input text.
        label: class index of the human label (single-label), or ``None``.
        labels: multi-hot human labels ``(K,)`` (multi-label), or ``None``.
        soft: the teacher's probabilities ``(K,)`` in the student's label order, or ``None``.
    """

    text: str
    label: int | None = None
    labels: np.ndarray | None = None
    soft: np.ndarray | None = None

    @property
    def has_hard(self) -> bool:
        return self.label is not None or self.labels is not None


@dataclass
class StudentData:
    """The merged training examples, the label set (index = class id) and the label mode."""

    labels: list[str]
    multi_label: bool
    examples: list[Example] = field(default_factory=list)

    def counts(self) -> dict:
        hard = sum(e.has_hard for e in self.examples)
        soft = sum(e.soft is not None for e in self.examples)
        both = sum(e.has_hard and e.soft is not None for e in self.examples)
        return {"examples": len(self.examples), "with_human_label": hard, "with_teacher_scores": soft, "both": both}

    def split(self, fraction: float, seed: int) -> tuple["StudentData", "StudentData"]:
        """``(train, validation)``: a random ``fraction`` held out for early stopping (stratified by the hard
        label where there is one, so every class stays in both)."""
        rng = random.Random(seed)
        groups: dict = {}
        for e in self.examples:
            key = e.label if e.label is not None else (tuple(e.labels) if e.labels is not None else "soft")
            groups.setdefault(key, []).append(e)
        train, valid = [], []
        for key in sorted(groups, key=str):
            group = groups[key]
            rng.shuffle(group)
            n = int(round(fraction * len(group)))
            valid += group[:n]
            train += group[n:]
        rng.shuffle(train)
        return (StudentData(self.labels, self.multi_label, train), StudentData(self.labels, self.multi_label, valid))


def _read_table(path: Path) -> list[dict]:
    """Rows of a JSONL file, a Parquet file, or a ``datasets`` folder."""
    path = Path(path)
    if not path.exists():
        raise StudentDataError(f"file not found: {path}")
    if path.is_dir():
        try:
            from datasets import load_from_disk

            return [dict(r) for r in load_from_disk(str(path))]
        except Exception as exc:
            raise StudentDataError(f"{path} is not a datasets folder (save_to_disk): {exc}") from None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise StudentDataError(f"{path}:{number}: not JSON ({exc.msg})") from None
    return rows


#: ``source`` of an export row accepted in bulk, not labelled by a person (annotate/export.py).
AUTO_SOURCE = "auto-accept"


def read_exports(paths: Sequence[Path], humans_only: bool = False) -> StudentData:
    """Merge ``annotate export`` files into :class:`StudentData` (labels and mode from ``labels_order``).

    ``humans_only``: skip rows whose ``source`` is ``auto-accept`` (accepted suggestions; exports made before the
    field existed have no such rows).

    Raises:
        StudentDataError: no rows, rows without ``text``/``labels_order``, files that disagree on the label
            set, teacher score vectors whose labels differ from ``labels_order``, labels outside the set.
    """
    labels: list[str] | None = None
    multi_label: bool | None = None
    examples: list[Example] = []
    for path in paths:
        rows = _read_table(path)
        if not rows:
            raise StudentDataError(f"{path} holds no records: export some reviewed records first "
                                   "(python -m annotate export)")
        for number, row in enumerate(rows, 1):
            where = f"{path}:{number}"
            if not row.get("text"):
                raise StudentDataError(f"{where}: no text")
            order = row.get("labels_order")
            if not order:
                raise StudentDataError(f"{where}: no labels_order; is this a file of python -m annotate export?")
            row_multi = "labels" in row and "label" not in row
            if labels is None:
                labels, multi_label = list(order), row_multi
            elif list(order) != labels:
                raise StudentDataError(f"{where}: labels_order {list(order)} differs from {labels} of the rows before")
            elif row_multi != multi_label:
                raise StudentDataError(f"{where}: mixes single-label and multi-label records")
            soft = None
            scores = row.get("teacher_scores")
            if scores:
                if isinstance(scores, dict):
                    if sorted(scores) != sorted(labels):
                        raise StudentDataError(f"{where}: teacher_scores has {len(scores)} labels {sorted(scores)}, "
                                               f"but labels_order has {len(labels)}: {labels}")
                    soft = np.array([float(scores[label]) for label in labels])
                else:
                    if len(scores) != len(labels):
                        raise StudentDataError(f"{where}: teacher_scores has width {len(scores)}, labels_order "
                                               f"{len(labels)}")
                    soft = np.asarray(scores, dtype=float)
            example = Example(row["text"], soft=soft)
            if row.get("status", "submitted") == "discarded":
                continue  # the reviewers said the record is not usable
            if humans_only and row.get("source") == AUTO_SOURCE:
                continue
            value = row.get("labels" if multi_label else "label")
            if value is not None:
                _set_hard(example, value, labels, multi_label, where)
            examples.append(example)
    if labels is None or not examples:
        raise StudentDataError("the export files hold no usable records")
    return StudentData(labels, bool(multi_label), examples)


def _set_hard(example: Example, value, labels: list[str], multi_label: bool, where: str) -> None:
    index = {label: i for i, label in enumerate(labels)}
    if multi_label:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        unknown = [v for v in values if v not in index]
        if unknown:
            raise StudentDataError(f"{where}: label {unknown[0]!r} is not one of {labels}")
        hot = np.zeros(len(labels))
        hot[[index[v] for v in values]] = 1
        example.labels = hot
    else:
        if value not in index:
            raise StudentDataError(f"{where}: label {value!r} is not one of {labels}")
        example.label = index[value]


def add_teacher_scored(data: StudentData, texts: Iterable[str], scores: np.ndarray) -> int:
    """Attach teacher scores ``(n, K)`` (label order of ``data``) to texts: existing examples with the same text
    get their missing soft label, new texts become soft-only examples. Returns how many examples were added."""
    if scores.ndim != 2 or scores.shape[1] != len(data.labels):
        raise StudentDataError(f"teacher scores have shape {scores.shape}; expected (n, {len(data.labels)})")
    by_text = {e.text: e for e in data.examples}
    added = 0
    for text, row in zip(texts, scores):
        if text in by_text:
            if by_text[text].soft is None:
                by_text[text].soft = row
        else:
            example = Example(text, soft=row)
            data.examples.append(example)
            by_text[text] = example
            added += 1
    return added


def read_eval(path: Path, labels: list[str], multi_label: bool, text_fields: Sequence[str] = ("text",),
              limit: int | None = None) -> tuple[list[str], list]:
    """Texts and gold labels (indices, or multi-hot rows) of an evaluation JSONL file.

    Raises:
        StudentDataError: missing file, no rows, a text field missing, or a gold label the training data
            never had (the student cannot predict it).
    """
    rows = _read_table(path)[:limit]
    if not rows:
        raise StudentDataError(f"evaluation file {path} holds no rows")
    index = {label: i for i, label in enumerate(labels)}
    texts, gold = [], []
    unseen: Counter = Counter()
    for number, row in enumerate(rows, 1):
        parts = [str(row[f]).strip() for f in text_fields if row.get(f)]
        if not parts:
            raise StudentDataError(f"{path}:{number}: none of the text fields {list(text_fields)} is present")
        texts.append(" ".join(parts))
        value = row.get("labels" if multi_label else "label")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v not in index:
                unseen[v] += 1
        if multi_label:
            hot = np.zeros(len(labels))
            hot[[index[v] for v in values if v in index]] = 1
            gold.append(hot)
        else:
            gold.append(index.get(value, -1))
    if unseen:
        raise StudentDataError(f"evaluation labels unseen in training: {', '.join(f'{k!r} ({n})' for k, n in unseen.items())}; "
                               f"the student knows only {labels}")
    return texts, gold


def check_trainable(data: StudentData, objective: str) -> None:
    """Refuse data an ``objective`` cannot learn from, before any training starts.

    Raises:
        StudentDataError: fewer than two classes, no human labels for ``hard``, no teacher scores for ``soft`` /
            ``mse``, no example at all.
    """
    if len(data.labels) < 2:
        raise StudentDataError(f"a classifier needs at least two labels; the data has {data.labels}")
    counts = data.counts()
    if counts["examples"] == 0:
        raise StudentDataError("no training examples")
    if objective == "hard" and counts["with_human_label"] == 0:
        raise StudentDataError("objective 'hard' needs human labels, and no record has one (use --objective soft)")
    if objective in ("soft", "mse") and counts["with_teacher_scores"] == 0:
        raise StudentDataError(f"objective {objective!r} needs teacher scores: give exports with teacher_scores "
                               "or --unlabeled texts for the teacher")
    if objective == "mixed" and counts["with_human_label"] == 0 and counts["with_teacher_scores"] == 0:
        raise StudentDataError("objective 'mixed' needs human labels or teacher scores")
    if not data.multi_label:
        hard = Counter(e.label for e in data.examples if e.label is not None)
        soft_top = Counter(int(np.argmax(e.soft)) for e in data.examples if e.soft is not None and e.label is None)
        classes = set(hard) | set(soft_top)
        if len(classes) < 2:
            only = data.labels[next(iter(classes))] if classes else "none"
            raise StudentDataError(f"every training example has the same class ({only!r}): a classifier needs at "
                                   "least two classes in its training data")
