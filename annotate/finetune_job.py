"""The encoder fine-tune that ``refresh --watch`` runs in the background, and the rule that swaps it in.

The adapted head refits in seconds but plateaus on frozen embeddings (docs/adaptive.md). Once ``min_reviews``
records are reviewed, :class:`BackgroundFinetune` snapshots the pool and its reviews into the dataset's cache and
starts ``python -m annotate.finetune_job SNAPSHOT OUTPUT`` as a child process in its own session, which lowers its
own priority (``os.nice``, ``--nice``) and runs ``threads`` torch threads, so the head keeps refreshing meanwhile.
The child holds the cache's job lock (``<cache root>/.finetune.lock``, :func:`annotate.cache.hold`) while it runs:
one job per dataset cache, even when the watcher that started it was killed and another one started. The child
(:func:`run_job`):

1. holds out a stratified share of the reviewed records (:func:`annotate.encoder_finetune.holdout_split`);
2. fits the adapted head without them (:func:`annotate.adaptive.adapt`, the very fit ``refresh`` makes) and
   measures it on them: the reference;
3. fine-tunes the encoder on the other reviews, plus pending pool texts with that head's probabilities as soft
   labels (:func:`annotate.encoder_finetune.finetune_on_reviews`, ``lpft`` recipe, ``mixed`` objective), within
   ``time_budget`` seconds, and measures it on the same held-out records;
4. scores every record that was pending at the snapshot, and saves the model as a directory that
   ``python -m service --classifier NAME=DIR`` serves at ``POST /classify``;
5. writes its results as one directory (:func:`service.atomic.atomic_directory`: a staging sibling swapped into
   place last), so a job killed at any point leaves nothing a refresh would read.

Each refresh round then reads the newest finished job (:meth:`BackgroundFinetune.latest`): when the fine-tuned
model beat the head on the held-out reviews by a paired test (:meth:`FinetuneResult.wins`: McNemar's exact test on
the reviews one of them got right and the other wrong, ``statsmodels.stats.contingency_tables.mcnemar``, McNemar
1947), the pending records it scored take its suggestions (agent ``<encoder>:encoder-finetune:<revision>``);
records it did not score (pushed later) keep the head's. A job expires once the reviews grew by more than
``every`` past its snapshot (:meth:`FinetuneResult.expired`): the head, refitted on every review since, serves
again until a newer job, which measures again on a larger holdout, finishes.

Layout under ``<cache root>/finetune/``: ``<revision>/`` (finished: ``result.json``, ``scores.npz``, ``model/``,
``job.log``), ``.<revision>.snapshot/`` (inputs of a job, removed when it finishes), ``.<revision>.staging-<pid>-*/``
(results being written), ``.writing-*.snapshot/`` (a snapshot being written). Finished jobs are pruned to the ``keep`` newest,
but never the newest one that beat the head (whose model a summary told people to serve) nor the newest one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)
JOBS = "finetune"
RESULT = "result.json"
SCORES = "scores.npz"
MODEL = "model"
AGENT_KIND = "encoder-finetune"
#: The job lock, in the dataset's cache folder (next to ``finetune/``).
JOB_LOCK = ".finetune.lock"
#: Exit status of a job that found another job holding the lock.
BUSY_EXIT = 3


@dataclass
class FinetuneSettings:
    """When and how the background fine-tune runs (``refresh --finetune-*`` options).

    Attributes:
        min_reviews: submitted records before the first job.
        every: further submitted records before the next job (one job at a time).
        time_budget: seconds of the child's training (model load and linear probe included; scoring the pending
            records comes after it).
        threads: torch threads of the child (the head's refits use one BLAS thread).
        margin: the fine-tuned model is swapped in only when its held-out accuracy also beats the head's by more
            than this; negative: on the held-out accuracies alone, without the paired test, even when it does not
            beat the head (for trials and tests).
        alpha: level of the paired test of the swap: McNemar's exact two-sided p-value must be below it (and the
            fine-tuned model right on more of the discordant reviews); 0.1 two-sided is a one-sided 5% test that
            the fine-tuned model is the more accurate.
        holdout_fraction: share of the reviews held out for that comparison.
        pool_limit: pending texts with the head's soft labels in training (``0``: reviews only).
        max_length, batch_size, lr, epochs, seed: of :func:`annotate.encoder_finetune.finetune_on_reviews`.
        base_model: the encoder to start from (the served one).
    """

    min_reviews: int = 200
    every: int = 200
    time_budget: float = 600.0
    threads: int = 1
    margin: float = 0.0
    alpha: float = 0.1
    holdout_fraction: float = 0.2
    pool_limit: int = 1000
    max_length: int = 64
    batch_size: int = 16
    lr: float = 5e-5
    epochs: float = 3.0
    seed: int = 0
    base_model: str = "packaged:all-MiniLM-L6-v2"


@dataclass
class FinetuneResult:
    """A finished job (read from ``<cache root>/finetune/<revision>``).

    Attributes:
        revision: hash of the snapshot's labels, reviews and settings (16 hex chars).
        labels: class names (column order of ``scores``).
        reviewed: submitted records at the snapshot; holdout: how many of them were held out.
        accuracy: the fine-tuned model's accuracy on the held-out reviews.
        head_accuracy: the adapted head's (fitted without them) on the same records.
        margin: the swap margin the job was started with; alpha: the level of its paired test.
        paired: ``{"both", "finetuned_only", "head_only", "neither"}`` counts of the held-out reviews each got
            right (empty for jobs that predate it: they never swap).
        ids: ``m`` record ids it scored (pending at the snapshot); scores: ``(m, K)`` its probabilities.
        model_dir: the servable classifier directory.
        train_seconds, score_seconds: wall times in the child; created: UNIX time it finished.
    """

    revision: str
    labels: list[str]
    reviewed: int
    holdout: int
    accuracy: float | None
    head_accuracy: float | None
    margin: float
    ids: list[str]
    scores: np.ndarray
    model_dir: str
    train_seconds: float = 0.0
    score_seconds: float = 0.0
    created: float = 0.0
    info: dict = field(default_factory=dict)
    alpha: float = 0.1
    paired: dict = field(default_factory=dict)

    def p_value(self) -> float | None:
        """McNemar's exact two-sided p-value (``statsmodels.stats.contingency_tables.mcnemar(exact=True)``: a binomial
        test on the discordant held-out reviews) of "the fine-tuned model and the head are equally accurate";
        ``None`` without paired outcomes."""
        from statsmodels.stats.contingency_tables import mcnemar

        if not self.paired:
            return None
        table = [[self.paired["both"], self.paired["finetuned_only"]],
                 [self.paired["head_only"], self.paired["neither"]]]
        return float(mcnemar(table, exact=True).pvalue)

    def wins(self, margin: float | None = None, alpha: float | None = None) -> bool:
        """True when the fine-tuned model beat the head on the held-out reviews: right on more of the reviews where
        they disagree, with McNemar's p-value below ``alpha``, and more accurate by more than ``margin`` (defaults:
        the job's). Without paired held-out outcomes nothing can be shown, so False. A negative ``margin`` (trials)
        compares the held-out accuracies alone."""
        margin = self.margin if margin is None else margin
        alpha = self.alpha if alpha is None else alpha
        if self.accuracy is None or self.head_accuracy is None or not self.holdout:
            return False
        if margin < 0:  # trials and tests: swap on the held-out accuracies alone, whatever they say
            return self.accuracy > self.head_accuracy + margin
        if not self.paired or self.paired["finetuned_only"] <= self.paired["head_only"]:
            return False
        return self.p_value() < alpha and self.accuracy > self.head_accuracy + margin

    def expired(self, reviewed_now: int, every: int) -> bool:
        """True once the submitted reviews grew by more than ``every`` past the job's snapshot: the head has been
        refitted on many reviews the fine-tune never saw, so its comparison no longer holds."""
        return reviewed_now - self.reviewed > every

    def summary(self, margin: float | None = None, alpha: float | None = None) -> dict:
        """What a refresh summary reports of it."""
        return {"revision": self.revision, "reviewed": self.reviewed, "holdout": self.holdout,
                "accuracy": self.accuracy, "head_accuracy": self.head_accuracy, "in_use": self.wins(margin, alpha),
                "p_value": self.p_value(), "paired": dict(self.paired),
                "scored": len(self.ids), "model_dir": self.model_dir, "train_seconds": round(self.train_seconds, 1),
                "score_seconds": round(self.score_seconds, 1)}

    @classmethod
    def load(cls, directory: str | Path) -> "FinetuneResult":
        """Read a finished job directory.

        Raises:
            FileNotFoundError: not a finished job.
        """
        directory = Path(directory)
        info = json.loads((directory / RESULT).read_text(encoding="utf-8"))
        with np.load(directory / SCORES, allow_pickle=False) as data:
            ids, scores = [str(i) for i in data["ids"]], np.asarray(data["scores"], dtype=np.float64)
        return cls(info["revision"], list(info["labels"]), int(info["reviewed"]), int(info["holdout"]),
                   info.get("accuracy"), info.get("head_accuracy"), float(info.get("margin", 0.0)), ids, scores,
                   str(directory / MODEL), float(info.get("train_seconds", 0.0)),
                   float(info.get("score_seconds", 0.0)), float(info.get("created", 0.0)), info,
                   float(info.get("alpha", 0.1)), dict(info.get("paired") or {}))


def snapshot_revision(labels: Sequence[str], reviewed: dict[str, int], settings: FinetuneSettings) -> str:
    """Content hash of a job's inputs: labels, reviewed ids with their labels, settings (16 hex chars)."""
    digest = hashlib.sha256(json.dumps([list(labels), asdict(settings)], sort_keys=True).encode())
    for rid in sorted(reviewed):
        digest.update(f"{rid}={reviewed[rid]};".encode())
    return digest.hexdigest()[:16]


def write_snapshot(directory: str | Path, *, ids: Sequence[str], texts: Sequence[str], embeddings: np.ndarray,
                   zero_shot: np.ndarray, labels: Sequence[str], reviewed: dict[int, int], discarded: Sequence[int],
                   pending: Sequence[int], settings: FinetuneSettings, head_config=None, encoder: dict | None = None,
                   revision: str | None = None) -> Path:
    """Write the inputs of one job (what :func:`run_job` reads) into ``directory``.

    Args:
        ids, texts: the ``n`` pool records. embeddings: ``(n, d)``; zero_shot: ``(n, K)`` (as :func:`adapt` takes).
        reviewed: ``{row: label index}`` of submitted records; discarded: their rows; pending: rows to score.
        head_config: the :class:`annotate.adaptive.HeadConfig` the refresh fits with.
    """
    from annotate.adaptive import HeadConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = np.fromiter(reviewed.keys(), dtype=np.int64, count=len(reviewed))
    np.savez(directory / "inputs.npz", embeddings=np.asarray(embeddings, dtype=np.float32),
             zero_shot=np.asarray(zero_shot, dtype=np.float64), reviewed_rows=rows,
             reviewed_labels=np.fromiter(reviewed.values(), dtype=np.int64, count=len(reviewed)),
             discarded_rows=np.asarray(list(discarded), dtype=np.int64),
             pending_rows=np.asarray(list(pending), dtype=np.int64))
    revision = revision or snapshot_revision(labels, {ids[r]: v for r, v in reviewed.items()}, settings)
    job = {"revision": revision, "labels": list(labels), "ids": list(ids), "texts": list(texts),
           "settings": asdict(settings), "head_config": asdict(head_config or HeadConfig()), "encoder": encoder}
    (directory / "job.json").write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
    return directory


def paired_outcomes(finetuned_right, head_right) -> dict:
    """Counts of the held-out reviews both, only the fine-tuned model, only the head, or neither got right (the 2x2
    table of McNemar's test), from two ``(h,)`` boolean arrays."""
    a, b = np.asarray(finetuned_right, dtype=bool), np.asarray(head_right, dtype=bool)
    return {"both": int((a & b).sum()), "finetuned_only": int((a & ~b).sum()), "head_only": int((~a & b).sum()),
            "neither": int((~a & ~b).sum())}


def run_job(snapshot: str | Path, output: str | Path) -> FinetuneResult:
    """Run one job on a snapshot (see the module docstring) and move its results to ``output``.

    Raises:
        annotate.encoder_finetune.FineTuneError: the reviews cannot fine-tune (a single class among them).
    """
    from annotate.adaptive import HeadConfig, adapt
    from annotate.encoder_finetune import finetune_on_reviews, holdout_split

    started = time.perf_counter()
    snapshot, output = Path(snapshot), Path(output)
    job = json.loads((snapshot / "job.json").read_text(encoding="utf-8"))
    settings = FinetuneSettings(**job["settings"])
    labels, ids, texts = job["labels"], job["ids"], job["texts"]
    with np.load(snapshot / "inputs.npz", allow_pickle=False) as data:
        inputs = {name: data[name] for name in data.files}
    rows, y = inputs["reviewed_rows"], inputs["reviewed_labels"]
    pending = inputs["pending_rows"]
    train_rows, held_rows = holdout_split(y, settings.holdout_fraction, settings.seed)

    # The reference: the head refresh would fit, without the held-out reviews, measured on them.
    head = adapt(inputs["embeddings"], inputs["zero_shot"], labels, ids=ids,
                 reviewed={int(rows[i]): int(y[i]) for i in train_rows}, discarded=inputs["discarded_rows"].tolist(),
                 config=HeadConfig(**job["head_config"]))
    head_accuracy = (float((head.scores[rows[held_rows]].argmax(axis=1) == y[held_rows]).mean())
                     if len(held_rows) else None)
    soft = {}
    if settings.pool_limit > 0 and len(pending):
        soft = dict(pool_texts=[texts[i] for i in pending], pool_soft_labels=head.scores[pending],
                    pool_limit=settings.pool_limit)
    tuned = finetune_on_reviews([texts[i] for i in rows], y, labels, embeddings_reviewed=inputs["embeddings"][rows],
                                recipe="lpft", base_model=settings.base_model, epochs=settings.epochs,
                                max_length=settings.max_length, batch_size=settings.batch_size, lr=settings.lr,
                                seed=settings.seed, time_budget_seconds=settings.time_budget,
                                holdout_fraction=settings.holdout_fraction, num_threads=settings.threads, **soft)
    if not np.array_equal(tuned.holdout_rows, held_rows):  # same split by construction; say so if that ever changes
        raise RuntimeError("the fine-tune held out other reviews than the head's reference")
    paired = {}
    if len(held_rows):
        tuned_right = tuned.predict_proba([texts[i] for i in rows[held_rows]]).argmax(axis=1) == y[held_rows]
        head_right = head.scores[rows[held_rows]].argmax(axis=1) == y[held_rows]
        paired = paired_outcomes(tuned_right, head_right)
    logger.info("held-out accuracy on %d reviews: fine-tuned %.4f, head %s; paired %s", len(held_rows),
                tuned.holdout_accuracy or float("nan"), head_accuracy, paired)
    began = time.perf_counter()
    scores = tuned.predict_proba([texts[i] for i in pending]) if len(pending) else np.zeros((0, len(labels)))
    score_seconds = time.perf_counter() - began
    logger.info("scored %d pending records in %.1f s (%.1f texts/s)", len(pending), score_seconds,
                len(pending) / max(score_seconds, 1e-9))

    from service.atomic import atomic_directory

    # the last step, whole or not at all: a refresh reads only complete jobs (a previous run of the same snapshot
    # is replaced in one step)
    with atomic_directory(output, replaceable=lambda d: (d / RESULT).is_file()) as work:
        tuned.save(work / MODEL)
        np.savez(work / SCORES, ids=np.asarray([ids[i] for i in pending], dtype=str), scores=scores)
        info = {"revision": job["revision"], "labels": labels, "reviewed": int(len(rows)),
                "holdout": int(len(held_rows)), "accuracy": tuned.holdout_accuracy, "head_accuracy": head_accuracy,
                "probe_accuracy": tuned.holdout_accuracy_probe, "head_mode": head.report.mode,
                "margin": settings.margin, "alpha": settings.alpha, "paired": paired,
                "train_seconds": tuned.train_seconds, "score_seconds": score_seconds,
                "seconds": time.perf_counter() - started, "history": tuned.history, "settings": asdict(settings),
                "encoder": job.get("encoder"), "created": time.time()}
        (work / RESULT).write_text(json.dumps(info, indent=2, default=float) + "\n", encoding="utf-8")
        log = snapshot / "job.log"
        if log.exists():
            shutil.copy(log, work / "job.log")
    return FinetuneResult.load(output)


class BackgroundFinetune:
    """Starts, watches and reads the background fine-tunes of one dataset (see the module docstring).

    Starting jobs (``start_jobs``) is for the one process that holds the cache's lock
    (:meth:`annotate.cache.DatasetCache.lock`, taken by ``refresh --watch``); the jobs themselves hold the job lock
    ``root/.finetune.lock``, so a job left running by a killed watcher is waited for, never run twice.

    Args:
        root: the dataset's cache folder (``DatasetCache.root``); jobs go to ``root/finetune``.
        settings: :class:`FinetuneSettings`.
        start_jobs: ``False`` (a one-off ``refresh``): only read finished jobs, never start one.
        echo: where one-line progress messages go.
        keep: finished jobs kept (at least 1); the newest one that beat the head is kept besides.
        nice: niceness the child adds to its own (``os.nice``; ``0``: none).
    """

    def __init__(self, root: str | Path, settings: FinetuneSettings | None = None, *, start_jobs: bool = True,
                 echo: Callable[[str], None] = print, keep: int = 2, nice: int = 10) -> None:
        self.root = Path(root) / JOBS
        self.lock_path = Path(root) / JOB_LOCK
        self.settings = settings or FinetuneSettings()
        self.start_jobs = start_jobs
        self.echo = echo
        self.keep = max(1, keep)
        self.nice = nice
        self.process: subprocess.Popen | None = None
        self.running: str | None = None
        self.started_at_reviews: int | None = None
        self._waiting_for: int | None = None

    # reading ------------------------------------------------------------------------------------------------
    def latest(self, labels: Sequence[str]) -> FinetuneResult | None:
        """The newest finished job for these labels (``None`` if there is none)."""
        if not self.root.is_dir():
            return None
        found = []
        for directory in self.root.iterdir():
            if directory.name.startswith(".") or not (directory / RESULT).is_file():
                continue
            try:
                result = FinetuneResult.load(directory)
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("ignoring the unreadable fine-tune %s: %s", directory, exc)
                continue
            if result.labels == list(labels):
                found.append(result)
        return max(found, key=lambda r: r.created) if found else None

    # the child process --------------------------------------------------------------------------------------
    def poll(self) -> str | None:
        """The revision of a job that finished since the last call (``None``: none did). A failed job is
        reported through ``echo`` and its snapshot removed."""
        if self.process is None or self.process.poll() is None:
            return None
        code, revision = self.process.returncode, self.running
        self.process, self.running = None, None
        snapshot = self.root / f".{revision}.snapshot"
        self._remove_stale(revision)
        if code == 0 and (self.root / revision / RESULT).is_file():
            shutil.rmtree(snapshot, ignore_errors=True)
            self._prune()
            result = FinetuneResult.load(self.root / revision)
            verdict = "swapped in" if result.wins(self.settings.margin, self.settings.alpha) else "kept the head"
            p = result.p_value()
            verdict += f" (McNemar p {p:.3g})" if p is not None else " (no paired outcomes)"
            self.echo(f"fine-tune {revision} finished in {result.info.get('seconds', 0):.0f} s: held-out accuracy "
                      f"{_fmt(result.accuracy)} vs head {_fmt(result.head_accuracy)} on {result.holdout} reviews: "
                      f"{verdict}")
            return revision
        tail = _tail(snapshot / "job.log")
        self.echo(f"fine-tune {revision} failed (exit {code}): {tail}")
        shutil.rmtree(snapshot, ignore_errors=True)
        return None

    def maybe_start(self, reviewed_count: int, write: Callable[[Path], str]) -> bool:
        """Start a job when none runs and enough reviews arrived since the last one; ``write(snapshot_dir)``
        writes its inputs and returns their revision. Returns True when a job was started."""
        from annotate.cache import describe, holder

        if not self.start_jobs or self.process is not None:
            return False
        if reviewed_count < self.settings.min_reviews:
            return False
        if self.started_at_reviews is not None and reviewed_count - self.started_at_reviews < self.settings.every:
            return False
        other = holder(self.lock_path)
        if other is not None:  # a job a killed watcher left running: its result is read once it has finished
            if other.get("pid") != self._waiting_for:
                self._waiting_for = other.get("pid")
                self.echo(f"fine-tune not started: {describe(other)} is still running on this cache")
            return False
        self._waiting_for = None
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        staging = Path(tempfile.mkdtemp(prefix=".writing-", suffix=".snapshot", dir=self.root))
        try:
            revision = write(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.started_at_reviews = reviewed_count
        if (self.root / revision / RESULT).is_file():  # this very snapshot was fine-tuned before
            shutil.rmtree(staging, ignore_errors=True)
            return False
        snapshot = self.root / f".{revision}.snapshot"
        shutil.rmtree(snapshot, ignore_errors=True)
        os.replace(staging, snapshot)
        threads = str(self.settings.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
        log = open(snapshot / "job.log", "w", encoding="utf-8")
        try:
            # its own session (Ctrl-C of the watcher's terminal does not reach it: stop() ends it), no preexec_fn
            # (unsafe in a threaded parent): the child lowers its own priority
            self.process = subprocess.Popen(
                [sys.executable, "-m", "annotate.finetune_job", "--nice", str(self.nice), "--lock",
                 str(self.lock_path), str(snapshot), str(self.root / revision)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd(),
                start_new_session=True)
        finally:
            log.close()
        self.running = revision
        self.echo(f"fine-tune {revision} started in the background on {reviewed_count} reviews (pid "
                  f"{self.process.pid}, {threads} thread(s), {self.settings.time_budget:.0f} s training budget; log "
                  f"{snapshot / 'job.log'})")
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """End a running job (SIGTERM, then SIGKILL); what it wrote is never read (it had not finished)."""
        if self.process is None or self.process.poll() is not None:
            self.poll()
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.echo(f"fine-tune {self.running} stopped before it finished")
        shutil.rmtree(self.root / f".{self.running}.snapshot", ignore_errors=True)
        self._remove_stale(self.running)
        self.process, self.running = None, None

    def _remove_stale(self, revision: str) -> None:
        """What a job that ended (killed or failed) left half-written: its results' temporary folder."""
        from service.atomic import remove_stale_staging

        remove_stale_staging(self.root, name=revision)

    def _remove_leftovers(self) -> None:
        """Snapshots, staging and half-written results of jobs that are no longer running (called with the job lock
        free, so no job runs on this cache)."""
        from service.atomic import remove_stale_staging

        for entry in self.root.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".snapshot"):  # .<revision>. or .writing-*.
                shutil.rmtree(entry, ignore_errors=True)
        remove_stale_staging(self.root)

    def finished(self) -> list[tuple[Path, dict]]:
        """``(directory, result.json)`` of every finished job, newest first (by the time each finished)."""
        found = []
        if not self.root.is_dir():
            return found
        for directory in self.root.iterdir():
            if directory.name.startswith(".") or not (directory / RESULT).is_file():
                continue
            try:
                found.append((directory, json.loads((directory / RESULT).read_text(encoding="utf-8"))))
            except (OSError, ValueError) as exc:
                logger.warning("ignoring the unreadable fine-tune %s: %s", directory, exc)
        return sorted(found, key=lambda item: float(item[1].get("created", 0.0)), reverse=True)

    def protected(self) -> set[str]:
        """Names of the finished jobs :meth:`_prune` never deletes: the newest (what a refresh reads and names in
        its summary) and the newest that beat the head (its model is the one a summary said to serve)."""
        finished = self.finished()
        keep = {directory.name for directory, _ in finished[:1]}
        for directory, info in finished:
            if _wins(info, self.settings.margin, self.settings.alpha):
                keep.add(directory.name)
                break
        return keep

    def _prune(self) -> None:
        """Keep the ``keep`` newest finished jobs (by the time they finished, as :meth:`latest` reads them) and the
        :meth:`protected` ones."""
        finished = self.finished()
        keep = {directory.name for directory, _ in finished[:self.keep]} | self.protected()
        for directory, _ in finished:
            if directory.name not in keep:
                shutil.rmtree(directory, ignore_errors=True)


def agent_of(result: FinetuneResult, encoder: dict | None) -> str:
    """The agent of the fine-tuned model's suggestions: ``<encoder model id>:encoder-finetune:<revision>``."""
    import re

    base = (encoder or {}).get("model_id", "encoder")
    return re.sub(r"[^a-zA-Z0-9\-_:./ ]", "-", f"{base}:{AGENT_KIND}:{result.revision}")


def _wins(info: dict, margin: float, alpha: float) -> bool:
    """:meth:`FinetuneResult.wins` from a job's ``result.json`` alone (no scores loaded)."""
    result = FinetuneResult(str(info.get("revision")), list(info.get("labels") or []), int(info.get("reviewed", 0)),
                            int(info.get("holdout") or 0), info.get("accuracy"), info.get("head_accuracy"),
                            float(info.get("margin", 0.0)), [], np.zeros((0, 0)), "",
                            alpha=float(info.get("alpha", 0.1)), paired=dict(info.get("paired") or {}))
    return result.wins(margin, alpha)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "no log"
    return " | ".join(text[-lines:]) or "empty log"


def main(argv: list[str] | None = None) -> int:
    """``python -m annotate.finetune_job [--nice N] [--lock PATH] SNAPSHOT OUTPUT``: the background child.

    Exit status: 0 finished; 2 the reviews cannot fine-tune; 3 (:data:`BUSY_EXIT`) another job holds ``--lock``.
    """
    parser = argparse.ArgumentParser(prog="python -m annotate.finetune_job")
    parser.add_argument("--nice", type=int, default=0, help="niceness to add to this process first (os.nice)")
    parser.add_argument("--lock", type=Path, default=None, help="job lock to hold while running (one job at a time)")
    parser.add_argument("snapshot", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    if args.nice and hasattr(os, "nice"):
        os.nice(args.nice)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from contextlib import nullcontext

    from annotate.cache import CacheBusy, hold
    from annotate.encoder_finetune import FineTuneError

    try:
        with (hold(args.lock, f"fine-tune {args.output.name}", where="the fine-tunes of this dataset cache")
              if args.lock else nullcontext()):
            result = run_job(args.snapshot, args.output)
    except CacheBusy as exc:
        print(f"fine-tune not run: {exc}", file=sys.stderr)
        return BUSY_EXIT
    except FineTuneError as exc:
        print(f"fine-tune refused: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
