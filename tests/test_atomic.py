"""service/atomic.py: files and folders replaced whole or not at all, on the real file system, with real processes
killed by SIGKILL while they write (the kill lands between two files of one folder: a fault placed by the child
itself, so every run tests the same moment; and at random moments of a writer that never stops)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service import atomic
from service.atomic import (
    atomic_directory,
    atomic_write_text,
    check_target,
    exchange,
    remove_stale_staging,
)

from .conftest import REPO


def test_refuses_to_replace_a_folder_of_other_files(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="non-empty directory of other files"):
        with atomic_directory(home, replaceable=lambda d: (d / "head.json").is_file()):
            pytest.fail("must not start")
    assert (home / "thesis.tex").read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="not a directory"):
        check_target(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty, replaceable=lambda d: False) as tmp:  # an empty folder is fine
        (tmp / "x").write_text("")
    assert (empty / "x").exists()


def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").write_text("")
    if not exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here: atomic_directory uses two renames")
    assert [p.name for p in b.iterdir()] == ["from_a"] and list(a.iterdir()) == []


def test_without_renameat2_the_two_rename_fallback_replaces_too(tmp_path, monkeypatch):
    """The fallback for systems without renameat2 (macOS, old kernels, some file systems), run here by hiding the
    call (the only thing replaced in this file)."""
    monkeypatch.setattr(atomic, "_renameat2", None)
    assert exchange(tmp_path, tmp_path) is False
    target = tmp_path / "head"
    for version in ("1", "2"):
        with atomic_directory(target) as tmp:
            (tmp / "v").write_text(version)
    assert (target / "v").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["head"]


HEAD_WRITER = """
import os, signal, sys
import numpy as np
from service.head import AdaptiveHead

target, kill_at = sys.argv[1], int(sys.argv[2])
real, saves = np.savez, [0]

def savez(*args, **kwargs):  # the fault: SIGKILL right after weights.npz, before head.json, of save number kill_at
    real(*args, **kwargs)
    saves[0] += 1
    if saves[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

np.savez = savez  # service.head calls np.savez
for revision in range(1, kill_at + 1):
    AdaptiveHead(["a", "b"], np.full((2, 8), revision), np.zeros(2), revision=str(revision)).save(target)
"""


@pytest.mark.parametrize("kill_at", [1, 3])
def test_a_head_save_killed_between_its_two_files_leaves_the_previous_head(tmp_path, kill_at):
    """AdaptiveHead.save (service.head) killed by SIGKILL after weights.npz and before head.json: what a reader
    finds is the previous head, whole (or no head at all for a first save), never new weights under an old
    head.json; the next save removes the dead writer's temporary folder."""
    from service.head import AdaptError, AdaptiveHead

    target = tmp_path / "head"
    out = subprocess.run([sys.executable, "-c", HEAD_WRITER, str(target), str(kill_at)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "head"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".head.staging-")  # the dead writer's, never read
    if kill_at == 1:
        assert not target.exists()
        with pytest.raises(AdaptError, match="not a head directory"):
            AdaptiveHead.load(target)
    else:
        head = AdaptiveHead.load(target)
        assert head.revision == str(kill_at - 1) and np.all(head.coef == kill_at - 1)
    AdaptiveHead(["a", "b"], np.full((2, 8), 9.0), np.zeros(2), revision="9").save(target)
    assert AdaptiveHead.load(target).revision == "9" and sorted(p.name for p in tmp_path.iterdir()) == ["head"]


DIR_WRITER = """
import json, sys, time
import numpy as np
from service.atomic import atomic_directory

target = sys.argv[1]
version = 0
while True:
    version += 1
    with atomic_directory(target) as tmp:
        np.save(tmp / "data.npy", np.full(200_000, version, dtype=np.int64))  # 1.6 MB: takes a while to write
        time.sleep(0.002)
        (tmp / "meta.json").write_text(json.dumps({"version": version}))
"""


def _read_consistent(target: Path) -> int | None:
    """The version of the directory at ``target``, both files read through one directory descriptor, so they come
    from the same version even if a writer swaps in a new one meanwhile (when the writer is deleting the version
    being read, a file can be missing: read again); None when there is none yet. Fails on a partial one."""
    while True:
        try:
            fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return None
        try:
            opener = lambda path, flags: os.open(path, flags, dir_fd=fd)  # noqa: E731
            with open("meta.json", encoding="utf-8", opener=opener) as f:
                version = json.load(f)["version"]
            with open("data.npy", "rb", opener=opener) as f:
                data = np.load(f)
        except FileNotFoundError:
            try:
                live = os.stat(target).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                live = False
            if live:  # still the version at `target`, yet a file is missing: a partial directory
                raise
            continue  # swapped out and being deleted while read: read the new one
        finally:
            os.close(fd)
        assert data.shape == (200_000,) and np.all(data == version), f"version {version} with other data"
        return version


def test_a_writer_killed_at_random_moments_never_leaves_a_partial_directory(tmp_path):
    """A writer rewriting one directory in a loop, SIGKILLed at 6 random moments and restarted: a reader polling
    meanwhile, and after each kill, always finds a whole version."""
    target = tmp_path / "data"
    rng = random.Random(0)
    seen = []
    for _ in range(6):
        writer = subprocess.Popen([sys.executable, "-c", DIR_WRITER, str(target)], cwd=REPO)
        try:
            deadline = time.monotonic() + 60
            while _read_consistent(target) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            stop = time.monotonic() + rng.uniform(0.05, 0.4)
            while time.monotonic() < stop:
                version = _read_consistent(target)
                assert version is not None
                seen.append(version)
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        assert _read_consistent(target) is not None  # what the killed writer leaves: a whole version
    assert len(seen) > 6
    remove_stale_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # the dead writers' temporaries are gone


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
