"""annotate.finetune_job: a real background fine-tune of the packaged MiniLM encoder, in a real child process, on a
real SST-2 slice embedded and scored by the same encoder (embedding method). Nothing is mocked; jobs are killed
with real signals. Kept short: 48 reviews, 32 tokens, a 12 s training budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from annotate.finetune_job import (
    BUSY_EXIT,
    JOB_LOCK,
    RESULT,
    BackgroundFinetune,
    FinetuneResult,
    FinetuneSettings,
    agent_of,
    run_job,
    snapshot_revision,
    write_snapshot,
)

from .conftest import REPO

LABELS = ["negative", "positive"]
SETTINGS = FinetuneSettings(min_reviews=40, every=20, time_budget=12, max_length=32, pool_limit=64, epochs=1.0)


@pytest.fixture(scope="module")
def pool(data_dir):
    from pool.scorers import LocalScorer

    path = data_dir / "classification" / "sst2" / "train.jsonl"
    if not path.is_file():
        pytest.skip(f"SST-2 not found at {path}")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:160]]
    texts = [r["text"] for r in rows]
    scorer = LocalScorer(LABELS, "The sentiment of this review is {}.", method="embedding", batch_size=64)
    try:
        x, p0 = scorer.embed(texts), scorer.score(texts)
    finally:
        scorer.close()
    return {"ids": [f"r{i:03d}" for i in range(len(texts))], "texts": texts, "x": x, "p0": p0,
            "y": np.array([LABELS.index(r["label"]) for r in rows])}


def _snapshot(pool, directory, reviewed_n: int, settings=SETTINGS):
    reviewed = {i: int(pool["y"][i]) for i in range(reviewed_n)}
    pending = list(range(reviewed_n + 2, len(pool["ids"])))  # rows reviewed_n, reviewed_n + 1: discarded
    write_snapshot(directory, ids=pool["ids"], texts=pool["texts"], embeddings=pool["x"], zero_shot=pool["p0"],
                   labels=LABELS, reviewed=reviewed, discarded=[reviewed_n, reviewed_n + 1], pending=pending,
                   settings=settings, encoder={"model_id": "packaged:all-MiniLM-L6-v2"})
    return json.loads((directory / "job.json").read_text())["revision"], pending


def test_job_measures_both_on_the_same_held_out_reviews_scores_pending_and_is_servable(pool, tmp_path, cache_dir):
    from service.classify import load_classifier

    revision, pending = _snapshot(pool, tmp_path / "snap", 48)
    result = run_job(tmp_path / "snap", tmp_path / "jobs" / revision)
    assert result.revision == revision and result.labels == LABELS and result.reviewed == 48
    assert result.holdout == 10  # 20% of each class, stratified
    assert 0.0 <= result.accuracy <= 1.0 and 0.0 <= result.head_accuracy <= 1.0
    assert result.ids == [pool["ids"][i] for i in pending] and result.scores.shape == (len(pending), 2)
    np.testing.assert_allclose(result.scores.sum(axis=1), 1.0, atol=1e-6)
    accuracy = float((result.scores.argmax(1) == pool["y"][pending]).mean())
    majority = float((pool["y"][pending] == np.bincount(pool["y"][:48]).argmax()).mean())
    assert accuracy > majority, (accuracy, majority)
    assert result.info["history"]["objective"] == "mixed" and result.train_seconds > 0
    assert not (tmp_path / "jobs" / f".{revision}.work").exists()
    classifier = load_classifier("tuned", result.model_dir, engine="onnxruntime", cache_dir=cache_dir)
    try:
        served = classifier.probabilities([pool["texts"][i] for i in pending[:16]])
    finally:
        classifier.close()
    np.testing.assert_allclose(served, result.scores[:16], atol=1e-4)  # what refresh suggests is what /classify serves
    again = FinetuneResult.load(tmp_path / "jobs" / revision)
    assert again.accuracy == result.accuracy and np.array_equal(again.scores, result.scores)
    assert agent_of(result, {"model_id": "packaged:all-MiniLM-L6-v2"}) == (
        f"packaged:all-MiniLM-L6-v2:encoder-finetune:{revision}")


def test_swap_rule_needs_held_out_evidence_beyond_the_margin():
    def result(accuracy, head, holdout=10, margin=0.0):
        return FinetuneResult("r", LABELS, 50, holdout, accuracy, head, margin, [], np.zeros((0, 2)), "m")

    assert result(0.8, 0.7).wins() and not result(0.7, 0.7).wins() and not result(0.6, 0.7).wins()
    assert not result(0.75, 0.7, margin=0.1).wins() and result(0.6, 0.7, margin=-1).wins()
    assert not result(0.9, None).wins() and not result(0.9, 0.1, holdout=0).wins()


def test_revision_depends_on_reviews_labels_and_settings():
    base = snapshot_revision(LABELS, {"a": 0, "b": 1}, SETTINGS)
    assert base == snapshot_revision(LABELS, {"b": 1, "a": 0}, SETTINGS)
    assert base != snapshot_revision(LABELS, {"a": 1, "b": 1}, SETTINGS)
    assert base != snapshot_revision(LABELS[::-1], {"a": 0, "b": 1}, SETTINGS)
    assert base != snapshot_revision(LABELS, {"a": 0, "b": 1}, FinetuneSettings(time_budget=1))


def _wait(background, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done = background.poll()
        if done or background.process is None:
            return done
        time.sleep(0.5)
    raise AssertionError(f"the background fine-tune did not end within {seconds} s")


def test_background_job_starts_when_due_finishes_in_a_child_and_a_stopped_one_leaves_nothing(pool, tmp_path):
    lines = []
    background = BackgroundFinetune(tmp_path, SETTINGS, echo=lines.append)
    write = lambda n: (lambda d: _snapshot(pool, d, n)[0])  # noqa: E731
    assert not background.maybe_start(39, write(39))  # under min_reviews
    assert background.maybe_start(40, write(40)) and background.running
    assert not background.maybe_start(60, write(60))  # one job at a time
    revision = background.running
    assert _wait(background, 300) == revision, lines
    assert "finished" in lines[-1] and ("swapped in" in lines[-1] or "kept the head" in lines[-1])
    latest = background.latest(LABELS)
    assert latest.revision == revision and latest.reviewed == 40
    assert background.latest(LABELS[::-1]) is None  # another label set: not this dataset's job
    assert not (tmp_path / "finetune" / f".{revision}.snapshot").exists()
    assert not background.maybe_start(59, write(59))  # fewer than `every` new reviews since the last start

    # a job stopped midway (Ctrl-C of --watch) is never read
    assert background.maybe_start(60, write(60))
    stopped = background.running
    background.stop()
    assert background.process is None and "stopped before it finished" in lines[-1]
    assert not (tmp_path / "finetune" / stopped / RESULT).exists()
    assert background.latest(LABELS).revision == revision
    assert sorted(p.name for p in (tmp_path / "finetune").iterdir()) == [revision]


def test_a_job_that_cannot_fine_tune_reports_why_and_nothing_is_kept(pool, tmp_path):
    lines = []
    background = BackgroundFinetune(tmp_path, FinetuneSettings(min_reviews=2), echo=lines.append)
    one_class = [i for i in range(len(pool["ids"])) if pool["y"][i] == 0][:6]

    def write(directory):
        write_snapshot(directory, ids=pool["ids"], texts=pool["texts"], embeddings=pool["x"], zero_shot=pool["p0"],
                       labels=LABELS, reviewed={i: 0 for i in one_class}, discarded=[], pending=[100, 101],
                       settings=background.settings)
        return json.loads((directory / "job.json").read_text())["revision"]

    assert background.maybe_start(6, write)
    assert _wait(background, 120) is None
    assert "failed (exit 2)" in lines[-1] and "at least two" in lines[-1]
    assert background.latest(LABELS) is None and list((tmp_path / "finetune").iterdir()) == []


def _until(condition, seconds: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(step)
    raise AssertionError(f"{what} did not happen within {seconds} s")


def test_a_job_killed_mid_save_leaves_nothing_read_and_a_second_watcher_never_runs_it_twice(pool, tmp_path):
    """Watcher A starts a job and is gone (as if SIGKILLed: its object is never polled again); the job lowers its
    own priority and holds the job lock. Watcher B does not start a second job while it runs, and a second job
    process on the same lock exits 3 naming the holder. The job is SIGKILLed while it writes its results (its
    temporary results folder exists): nothing of it is read, and B then runs the same snapshot to the end, leaving
    only the finished job behind."""
    a_lines, b_lines = [], []
    a = BackgroundFinetune(tmp_path, SETTINGS, echo=a_lines.append)
    b = BackgroundFinetune(tmp_path, SETTINGS, echo=b_lines.append)
    write = lambda n: (lambda d: _snapshot(pool, d, n)[0])  # noqa: E731
    jobs = tmp_path / "finetune"
    assert a.maybe_start(40, write(40))
    revision, pid = a.running, a.process.pid
    try:
        # no preexec_fn: the child lowers its own priority, by 10 (BackgroundFinetune's default)
        _until(lambda: os.getpriority(os.PRIO_PROCESS, pid) >= os.getpriority(os.PRIO_PROCESS, 0) + 10, 60,
               "the child's os.nice(10)")
        assert os.getsid(pid) == pid  # its own session: the watcher's Ctrl-C does not reach it
        holder = _until(lambda: (tmp_path / f"{JOB_LOCK}.json").is_file()
                        and json.loads((tmp_path / f"{JOB_LOCK}.json").read_text()), 60, "the job lock")
        assert holder["pid"] == pid and holder["what"] == f"fine-tune {revision}"

        assert not b.maybe_start(40, write(40)) and b.process is None
        assert b_lines == [f"fine-tune not started: fine-tune {revision} (pid {pid} on {holder['host']}, since "
                           f"{holder['since']}) is still running on this cache"]
        assert not b.maybe_start(60, write(60)) and len(b_lines) == 1  # said once while the same job runs
        second = subprocess.run([sys.executable, "-m", "annotate.finetune_job", "--lock", str(tmp_path / JOB_LOCK),
                                 str(jobs / f".{revision}.snapshot"), str(tmp_path / "elsewhere")], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == BUSY_EXIT and not (tmp_path / "elsewhere").exists()
        assert len(second.stderr.strip().splitlines()) == 1 and f"pid {pid}" in second.stderr, second.stderr

        writing = _until(lambda: [p for p in jobs.iterdir() if p.name.startswith(f".{revision}.staging-")], 600,
                         "the job's results being written")
        os.killpg(pid, signal.SIGKILL)  # mid-save: its results folder is half-written
    finally:
        if a.process.poll() is None:
            os.killpg(pid, signal.SIGKILL)
        a.process.wait()
    assert a.process.returncode == -signal.SIGKILL
    assert writing[0].exists() and not (jobs / revision).exists()  # left half-written, under a name never read
    assert a.latest(LABELS) is None and b.latest(LABELS) is None

    assert b.maybe_start(40, write(40)) and b.running == revision  # the lock is free: B runs it, from a clean slate
    assert not writing[0].exists()
    assert _wait(b, 300) == revision, b_lines
    assert b.latest(LABELS).revision == revision and (jobs / revision / "model" / "model.onnx").is_file()
    assert sorted(p.name for p in jobs.iterdir()) == [revision]
    assert not (tmp_path / f"{JOB_LOCK}.json").exists()  # released


def test_prune_keeps_the_newest_jobs_and_the_newest_that_beat_the_head(tmp_path):
    """Finished jobs as their result.json say (written here): pruning orders them by the time they finished, not by
    folder mtime (which the file system may change), and keeps the newest job that beat the head, whose model an
    earlier summary said to serve, however old."""
    background = BackgroundFinetune(tmp_path, SETTINGS, keep=2)
    jobs = tmp_path / "finetune"
    finished = {"won": (100.0, 0.9), "lost1": (200.0, 0.5), "lost2": (300.0, 0.5), "lost3": (400.0, 0.5),
                "older_win": (50.0, 0.9)}
    for name, (created, accuracy) in finished.items():
        (jobs / name).mkdir(parents=True)
        (jobs / name / RESULT).write_text(json.dumps({"created": created, "accuracy": accuracy, "head_accuracy": 0.6,
                                                      "holdout": 10}))
        os.utime(jobs / name, (1000 - created, 1000 - created))  # mtimes in the opposite order
    assert [d.name for d, _ in background.finished()] == ["lost3", "lost2", "lost1", "won", "older_win"]
    assert background.protected() == {"lost3", "won"}
    background._prune()
    assert sorted(p.name for p in jobs.iterdir()) == ["lost2", "lost3", "won"]
