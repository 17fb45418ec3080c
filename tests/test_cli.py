"""annotate/cli.py: the options and helpers every command shares, and every --help readable in 80 columns."""

from __future__ import annotations

import pytest

from annotate.cli import read_descriptions, read_labels


def test_labels_from_options_or_file(tmp_path):
    assert read_labels(["World", " Sports "], None) == ["World", "Sports"]
    (tmp_path / "labels.txt").write_text("World\n\nSci/Tech\n")
    assert read_labels(None, tmp_path / "labels.txt") == ["World", "Sci/Tech"]
    for bad, message in [((None, None), "no candidate labels"), ((["a", "a"], None), "repeated: 'a'"),
                         ((["a"], tmp_path / "labels.txt"), "not both"), ((None, tmp_path / "no.txt"), "cannot read")]:
        with pytest.raises(ValueError, match=message):
            read_labels(*bad)


def test_label_descriptions_from_options_or_a_json_file(tmp_path):
    labels = ["positive", "negative"]
    assert read_descriptions(None, None, labels) is None
    assert read_descriptions(["positive=Loved it.", "positive= Great. ", "negative=Awful."], None, labels) == {
        "positive": ["Loved it.", "Great."], "negative": ["Awful."]}
    (tmp_path / "d.json").write_text('{"negative": ["Bad service."]}')
    assert read_descriptions(None, tmp_path / "d.json", labels) == {"negative": ["Bad service."]}
    (tmp_path / "bad.json").write_text('{"negative": "not a list"}')
    for values, path, message in [(["positive Loved it."], None, "write LABEL=TEXT"),
                                  (["neutral=Meh."], None, "'neutral', which is not among the labels"),
                                  (["positive="], None, "is empty or whitespace"),
                                  (["positive=x"], tmp_path / "d.json", "not both"),
                                  (None, tmp_path / "bad.json", "must hold an object of string lists"),
                                  (None, tmp_path / "none.json", "cannot read")]:
        with pytest.raises(ValueError, match=message):
            read_descriptions(values, path, labels)


COMMAND_LINES = [
    ("annotate.cli", "cli", []), *[("annotate.cli", "cli", [c]) for c in
                                   ("push", "refresh", "export", "score", "simulate", "adapt", "stack", "stack up")],
    ("service.__main__", "cli", []), ("train.finetune", "app", []), ("train.build_teacher", "app", []),
    ("train.sparsify", "app", []), ("train.quantize", "app", []), ("train.evaluate", "app", []),
    ("train.calibrate", "app", []), ("train.student_report", "app", ["speed"]),
]


@pytest.mark.parametrize(("module", "attribute", "words"), COMMAND_LINES,
                         ids=[" ".join([m, *w]) for m, _, w in COMMAND_LINES])
def test_every_help_reads_in_80_columns(module, attribute, words):
    """Each command line's --help in an 80-column terminal: no line wider, no option name cut short ("...")."""
    import importlib

    from typer.testing import CliRunner

    if module == "annotate.cli":
        importlib.import_module("annotate.commands")
    app = getattr(importlib.import_module(module), attribute)
    words = [w for word in words for w in word.split()]
    result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"},
                                terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) > 3 and "Usage:" in result.output
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert "…" not in result.output
