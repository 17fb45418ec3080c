"""annotate/export.py: agreement of suggestions with responses, and the confusion-matrix picture."""

from __future__ import annotations

from annotate.export import agreement, save_confusion_png


def test_agreement_and_confusion_png(tmp_path):
    accuracy, matrix = agreement(["a", "b", "b", "c"], ["a", "b", "c", "c"], ["a", "b", "c"], False)
    assert accuracy == 0.75 and matrix == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    exact, multi = agreement([["a", "b"], ["c"]], [["a", "b"], ["a"]], ["a", "b", "c"], True)
    assert exact == 0.5 and multi == [[1, 1, 0], [1, 1, 0], [1, 0, 0]]
    png = save_confusion_png(matrix, ["a", "b", "c"], tmp_path / "cm.png", "test")
    assert png.read_bytes()[:4] == b"\x89PNG"
