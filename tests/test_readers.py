"""pool/readers.py: every input format, read in order, one chunk at a time, texts as given. Real files written
here."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pool import readers

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


def test_texts_are_stored_as_given_unless_stripping_is_asked(tmp_path):
    texts = ["  leading spaces", "trailing tab\t", "inner  double  space", "   "]
    frame = pd.DataFrame({"text": texts})
    frame.to_json(tmp_path / "ws.jsonl", orient="records", lines=True)
    (tmp_path / "ws.txt").write_text("\n".join(texts) + "\r\n", encoding="utf-8")
    for path in (tmp_path / "ws.jsonl", tmp_path / "ws.txt"):
        as_given = [r.text for r in readers.iter_rows(path)]
        assert as_given[:3] == texts[:3], path
        stripped = [r.text for r in readers.iter_rows(path, strip=True)]
        assert stripped[:3] == ["leading spaces", "trailing tab", "inner  double  space"], path
    assert [r.text for r in readers.iter_rows(tmp_path / "ws.jsonl")][3] == ""  # blank: nothing to label
