"""service/atomic.py: files and folders replaced whole or not at all."""

from __future__ import annotations

import pytest

from service.atomic import atomic_directory, atomic_write_text, remove_stale_staging


def test_atomic_write_text_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_atomic_directory_swaps_in_a_complete_folder(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "x").write_text("1")
        assert not target.exists()  # nothing visible until the block ends
    with atomic_directory(target) as staging:
        (staging / "y").write_text("2")
        assert (target / "x").read_text() == "1"  # the old folder stays whole while the new one is written
    assert sorted(p.name for p in target.iterdir()) == ["y"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failed_write_keeps_the_old_folder_and_removes_the_staging(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "x").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "half").write_text("?")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["x"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_remove_stale_staging_cleans_what_a_killed_writer_left(tmp_path):
    (tmp_path / ".model.staging-abc").mkdir()
    (tmp_path / ".model.old-def").mkdir()
    (tmp_path / "model").mkdir()
    assert remove_stale_staging(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
