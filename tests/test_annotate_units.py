"""Pieces of the pre-annotation loop that need no server: readers, uncertainty, ids, suggestions, labels,
agreement. Real files of every input format (written here), real numpy and scikit-learn."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from annotate.cli import read_labels
from annotate.dataset import record_id, suggestion_value
from annotate.export import agreement, save_confusion_png
from pool import readers
from pool.uncertainty import confidence, entropy, margin, summarize

TEXTS = ["Stocks rallied.", "The match ended 2-1.", "A probe reached Europa."]


@pytest.fixture
def files(tmp_path):
    frame = pd.DataFrame({"body": TEXTS, "uid": [10, 11, 12]})
    (tmp_path / "in.txt").write_text("\n".join(TEXTS[:2]) + "\n\n  \n" + TEXTS[2] + "\n")
    frame.to_csv(tmp_path / "in.csv", index=False)
    frame.to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    return tmp_path


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_readers_stream_a_named_column_with_ids_in_order(files, suffix):
    rows = list(readers.iter_rows(files / f"in.{suffix}", text_column="body", id_column="uid", chunk_size=2))
    assert [r.text for r in rows] == TEXTS and [r.source_id for r in rows] == ["10", "11", "12"]
    assert readers.count_rows(files / f"in.{suffix}") in (3, None)
    with pytest.raises(readers.InputError, match="column 'text' not found .*columns: body, uid"):
        list(readers.iter_rows(files / f"in.{suffix}"))


def test_txt_reader_skips_blank_lines_and_bad_paths_are_named(files, tmp_path):
    assert [r.text for r in readers.iter_rows(files / "in.txt")] == TEXTS
    assert readers.count_rows(files / "in.txt") == 3
    with pytest.raises(readers.InputError, match="not found"):
        list(readers.iter_rows(tmp_path / "nope.csv"))
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(readers.InputError, match="unsupported input format '.xlsx'"):
        list(readers.iter_rows(tmp_path / "x.xlsx"))
    (tmp_path / "empty.csv").write_text("")
    assert list(readers.iter_rows(tmp_path / "empty.csv")) == []


def test_reader_holds_one_chunk_at_a_time(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(2500)))
    rows = readers.iter_rows(path, chunk_size=1000)
    assert next(rows).text == "text 0"  # a generator: nothing past the first chunk was parsed yet
    assert sum(1 for _ in rows) == 2499


def test_uncertainty_matches_hand_computed_values():
    scores = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    assert confidence(scores).tolist() == [0.7, 1 / 3, 1.0]
    assert margin(scores) == pytest.approx([0.5, 0.0, 1.0])
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3)
    assert entropy(scores) == pytest.approx([h, 1.0, 0.0], abs=1e-9)
    multi = np.array([[0.5, 0.5], [0.9, 0.1]])
    hb = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    assert entropy(multi, multi_label=True) == pytest.approx([1.0, hb])
    assert set(summarize(scores)) == {"confidence", "margin", "entropy"}
    with pytest.raises(ValueError, match="shape"):
        confidence(np.array([0.1, 0.9]))


def test_record_ids_depend_on_content_and_id_column_only():
    assert record_id("a text") == record_id("a text") != record_id("a text", "7")
    assert record_id("a text", "7") != record_id("a text", "8") and len(record_id("x")) == 32


def test_suggestions_single_and_multi_label():
    labels = ["a", "b", "c"]
    assert suggestion_value(np.array([0.2, 0.5, 0.3]), labels, False) == ("b", 0.5)
    value, score = suggestion_value(np.array([0.6, 0.9, 0.1]), labels, True, threshold=0.5)
    assert value == ["b", "a"] and score == [0.9, 0.6]
    assert suggestion_value(np.array([0.1, 0.2, 0.3]), labels, True) == (["c"], [0.3])


def test_labels_from_options_or_file(tmp_path):
    assert read_labels(["World", " Sports "], None) == ["World", "Sports"]
    (tmp_path / "labels.txt").write_text("World\n\nSci/Tech\n")
    assert read_labels(None, tmp_path / "labels.txt") == ["World", "Sci/Tech"]
    for bad, message in [((None, None), "no candidate labels"), ((["a", "a"], None), "repeated: 'a'"),
                         ((["a"], tmp_path / "labels.txt"), "not both"), ((None, tmp_path / "no.txt"), "cannot read")]:
        with pytest.raises(ValueError, match=message):
            read_labels(*bad)


def test_agreement_and_confusion_png(tmp_path):
    accuracy, matrix = agreement(["a", "b", "b", "c"], ["a", "b", "c", "c"], ["a", "b", "c"], False)
    assert accuracy == 0.75 and matrix == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    exact, multi = agreement([["a", "b"], ["c"]], [["a", "b"], ["a"]], ["a", "b", "c"], True)
    assert exact == 0.5 and multi == [[1, 1, 0], [1, 1, 0], [1, 0, 0]]
    png = save_confusion_png(matrix, ["a", "b", "c"], tmp_path / "cm.png", "test")
    assert png.read_bytes()[:4] == b"\x89PNG"
