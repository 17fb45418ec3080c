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
    # both accuracies are counts on exactly the 10 held-out reviews (not on the pending records, not on training rows)
    assert round(result.accuracy * 10, 6) == int(round(result.accuracy * 10))
    assert round(result.head_accuracy * 10, 6) == int(round(result.head_accuracy * 10))
    assert sum(result.paired.values()) == 10  # each held-out review: right or wrong for each of the two
    assert (result.paired["both"] + result.paired["finetuned_only"]) / 10 == pytest.approx(result.accuracy)
    assert (result.paired["both"] + result.paired["head_only"]) / 10 == pytest.approx(result.head_accuracy)
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


def test_swap_is_a_paired_mcnemar_test_not_one_held_out_accuracy():
    from statsmodels.stats.contingency_tables import mcnemar

    def result(both, tuned_only, head_only, neither, margin=0.0, alpha=0.1):
        holdout = both + tuned_only + head_only + neither
        paired = {"both": both, "finetuned_only": tuned_only, "head_only": head_only, "neither": neither}
        return FinetuneResult("r", LABELS, 300, holdout, (both + tuned_only) / holdout, (both + head_only) / holdout,
                              margin, [], np.zeros((0, 2)), "m", alpha=alpha, paired=paired)

    # SST-2's case of docs/adaptive.md: 60 held-out reviews, the fine-tune one discordant review ahead. One
    # held-out accuracy would swap (0.817 > 0.800); the paired test sees 3 against 2 discordant reviews.
    close = result(46, 3, 2, 9)
    assert close.accuracy > close.head_accuracy and not close.wins()
    assert close.p_value() == pytest.approx(mcnemar([[46, 3], [2, 9]], exact=True).pvalue) and close.p_value() > 0.9
    # emotion's: 59 reviews, the fine-tune right on 10 the head got wrong, the head on 2 the fine-tune got wrong
    clear = result(27, 10, 2, 20)
    assert clear.p_value() < 0.05 and clear.wins()
    assert not clear.wins(alpha=0.01)  # p = 0.039: not below a stricter level
    assert not clear.wins(margin=0.2)  # 0.627 - 0.492 is not more than 0.2
    assert not result(27, 2, 10, 20).wins(alpha=1.0)  # the head ahead on the discordant reviews never swaps
    legacy = FinetuneResult("r", LABELS, 50, 10, 0.9, 0.1, 0.0, [], np.zeros((0, 2)), "m")  # no paired outcomes
    assert legacy.p_value() is None and not legacy.wins()
    assert legacy.summary()["in_use"] is False
    assert result(27, 2, 10, 20, margin=-1).wins()  # a negative margin (trials): the accuracies alone decide


def test_a_finished_fine_tune_expires_once_the_reviews_grew_past_every():
    done = FinetuneResult("r", LABELS, 300, 60, 0.9, 0.5, 0.0, [], np.zeros((0, 2)), "m",
                          paired={"both": 28, "finetuned_only": 26, "head_only": 2, "neither": 4})
    assert done.wins()
    assert not done.expired(300, every=200) and not done.expired(500, every=200)
    assert done.expired(501, every=200) and done.expired(1000, every=200)


def test_refresh_serves_a_winning_fine_tune_until_it_expires(tmp_path):
    """refresh's use of a finished job (annotate.refresh._apply_finetune) on a job directory as run_job writes it."""
    from annotate.finetune_job import JOBS, MODEL, SCORES
    from annotate.refresh import RefreshSummary, _apply_finetune

    job = tmp_path / JOBS / "abc"
    (job / MODEL).mkdir(parents=True)
    np.savez(job / SCORES, ids=np.asarray(["p0", "p1"]), scores=np.array([[0.9, 0.1], [0.2, 0.8]]))
    info = {"revision": "abc", "labels": LABELS, "reviewed": 300, "holdout": 60, "accuracy": 0.9,
            "head_accuracy": 0.5, "margin": 0.0, "alpha": 0.1, "created": 1.0,
            "paired": {"both": 28, "finetuned_only": 26, "head_only": 2, "neither": 4}}
    (job / RESULT).write_text(json.dumps(info))
    background = BackgroundFinetune(tmp_path, FinetuneSettings(every=200), start_jobs=False)
    head = np.array([[0.5, 0.5], [0.5, 0.5], [0.6, 0.4]])
    args = (LABELS, ["p0", "p1", "r"], {"p0": 0, "p1": 1, "r": 2}, [0, 1], head, ["head"] * 3, {"encoder": None})
    served = RefreshSummary("d")
    scores, agents = _apply_finetune(background, *args, served, 450)
    assert served.finetune["in_use"] and served.finetune["applied"] == 2 and agents[:2] != ["head"] * 2
    np.testing.assert_allclose(scores[:2], [[0.9, 0.1], [0.2, 0.8]])
    assert "paired test" in served.render()
    expired = RefreshSummary("d")
    scores, agents = _apply_finetune(background, *args, expired, 501)
    assert expired.finetune["expired"] and not expired.finetune["in_use"] and agents == ["head"] * 3
    np.testing.assert_array_equal(scores, head)
    assert "expired: 501 reviews now" in expired.render()


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
        _until(lambda: os.getpriority(os.PRIO_PROCESS, pid) >= os.getpriority(os.PRIO_PROCESS, 0) + 10, 240,
               "the child's os.nice(10)")  # generous: a loaded machine starts the child's Python slowly
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
    # 60 held-out reviews; the winners beat the head on McNemar's paired test (20 against 2 discordant reviews)
    paired = {0.9: {"both": 34, "finetuned_only": 20, "head_only": 2, "neither": 4},
              0.5: {"both": 30, "finetuned_only": 0, "head_only": 6, "neither": 24}}
    for name, (created, accuracy) in finished.items():
        (jobs / name).mkdir(parents=True)
        (jobs / name / RESULT).write_text(json.dumps({"created": created, "accuracy": accuracy, "head_accuracy": 0.6,
                                                      "holdout": 60, "paired": paired[accuracy]}))
        os.utime(jobs / name, (1000 - created, 1000 - created))  # mtimes in the opposite order
    assert [d.name for d, _ in background.finished()] == ["lost3", "lost2", "lost1", "won", "older_win"]
    assert background.protected() == {"lost3", "won"}
    background._prune()
    assert sorted(p.name for p in jobs.iterdir()) == ["lost2", "lost3", "won"]
