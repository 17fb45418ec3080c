"""train.student_data: reading exports, merging teacher scores, and refusing bad input before any training."""

import json

import numpy as np
import pytest

from train.student_data import (
    StudentData,
    StudentDataError,
    add_teacher_scored,
    check_trainable,
    read_eval,
    read_exports,
)

LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def export_row(text, label, scores=None, status="submitted", order=LABELS):
    scores = scores if scores is not None else dict(zip(order, [0.1, 0.2, 0.3, 0.4]))
    return {"id": text[:8], "text": text, "label": label, "status": status, "teacher_scores": scores,
            "labels_order": order, "agent": "test"}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_exports_give_hard_and_soft_labels_in_label_order(tmp_path):
    path = write(tmp_path / "e.jsonl", [export_row("a b c", "Sports"), export_row("d e f", "World"),
                                        export_row("g h i", None, status="discarded")])
    data = read_exports([path])
    assert data.labels == LABELS and not data.multi_label
    assert [e.label for e in data.examples] == [1, 0]  # the discarded record is dropped
    np.testing.assert_allclose(data.examples[0].soft, [0.1, 0.2, 0.3, 0.4])
    added = add_teacher_scored(data, ["a b c", "new text"], np.full((2, 4), 0.25))
    assert added == 1 and data.counts() == {"examples": 3, "with_human_label": 2, "with_teacher_scores": 3, "both": 2}


def test_humans_only_skips_the_rows_accepted_in_bulk(tmp_path):
    auto = {**export_row("j k l", "Business"), "source": "auto-accept", "annotator": "auto-accept"}
    path = write(tmp_path / "e.jsonl", [{**export_row("a b c", "Sports"), "source": "human"}, auto,
                                        export_row("d e f", "World")])  # an export made before the source field
    assert [e.label for e in read_exports([path]).examples] == [1, 2, 0]
    assert [e.label for e in read_exports([path], humans_only=True).examples] == [1, 0]


def test_parquet_and_datasets_exports_read_the_same(tmp_path):
    import pandas as pd
    from datasets import Dataset

    rows = [export_row("a b c", "Sports"), export_row("d e f", "World")]
    pd.DataFrame(rows).to_parquet(tmp_path / "e.parquet")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    for path in (tmp_path / "e.parquet", tmp_path / "hf"):
        data = read_exports([path])
        assert [e.label for e in data.examples] == [1, 0]


def test_empty_export_is_refused(tmp_path):
    with pytest.raises(StudentDataError, match="holds no records"):
        read_exports([write(tmp_path / "empty.jsonl", [])])


def test_teacher_scores_of_another_width_are_refused(tmp_path):
    bad = export_row("x y z", "World", scores={"World": 0.5, "Sports": 0.5})
    with pytest.raises(StudentDataError, match="teacher_scores has 2 labels"):
        read_exports([write(tmp_path / "e.jsonl", [export_row("a b", "World"), bad])])
    with pytest.raises(StudentDataError, match="width 3"):
        read_exports([write(tmp_path / "f.jsonl", [export_row("a b", "World", scores=[0.2, 0.3, 0.5])])])


def test_files_that_disagree_on_labels_are_refused(tmp_path):
    first = write(tmp_path / "a.jsonl", [export_row("a b", "World")])
    other = ["World", "Sports"]
    second = write(tmp_path / "b.jsonl", [export_row("c d", "World", scores={"World": 1, "Sports": 0}, order=other)])
    with pytest.raises(StudentDataError, match="labels_order"):
        read_exports([first, second])


def test_single_class_is_refused(tmp_path):
    data = read_exports([write(tmp_path / "e.jsonl", [export_row("a", "World"), export_row("b", "World")])])
    with pytest.raises(StudentDataError, match="same class"):
        check_trainable(data, "hard")
    with pytest.raises(StudentDataError, match="at least two labels"):
        check_trainable(StudentData(["only"], False, data.examples), "hard")


def test_objectives_need_their_targets(tmp_path):
    no_soft = [dict(export_row("a", "World"), teacher_scores=None), dict(export_row("b", "Sports"), teacher_scores=None)]
    data = read_exports([write(tmp_path / "e.jsonl", no_soft)])
    check_trainable(data, "hard")
    with pytest.raises(StudentDataError, match="needs teacher scores"):
        check_trainable(data, "soft")


def test_eval_labels_unseen_in_training_are_refused(tmp_path):
    path = write(tmp_path / "test.jsonl", [{"text": "a", "label": "World"}, {"text": "b", "label": "Weather"}])
    with pytest.raises(StudentDataError, match="unseen in training: 'Weather'"):
        read_eval(path, LABELS, False)
    texts, gold = read_eval(write(tmp_path / "ok.jsonl", [{"title": "T", "description": "D", "label": "Sports"}]),
                            LABELS, False, ("title", "description"))
    assert texts == ["T D"] and gold == [1]
