"""Dynamic padding and micro-batching: run tokenized sequences through an engine in length-sorted batches.

Sequences are sorted by length, so each batch is padded only to its own longest member and a
batch never pays for padding that it does not need; results come back in input order.
:class:`MicroBatcher` does the same across concurrent requests (a bounded queue with a maximum wait).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class BatchEngine(Protocol):
    """What batching needs of an engine (see :class:`service.engines.base.Engine`)."""

    input_names: tuple[str, ...]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class BatchObserver(Protocol):
    """Receives what a runner measures (:class:`service.metrics.ModelObserver` turns it into Prometheus metrics).

    Durations are in seconds; ``tokens`` count real (unpadded) tokens.
    """

    def tokenized(self, seconds: float) -> None: ...  # one tokenizer call of the method in front of the runner

    def waited(self, seconds: float) -> None: ...  # one request's time in the micro-batching queue

    def ran(self, seconds: float, rows: int, tokens: int, lengths: Sequence[int]) -> None: ...  # one engine call


def plan_batches(lengths: Sequence[int], *, batch_size: int, max_batch_tokens: int | None = None) -> list[np.ndarray]:
    """The engine calls for sequences of ``lengths`` tokens: indices sorted by length (dynamic padding), cut every
    ``batch_size`` sequences and, with ``max_batch_tokens``, before a batch's padded size (rows x its longest
    sequence) would pass ``max_batch_tokens``. A sequence longer than ``max_batch_tokens`` runs alone.

    The token cap bounds each call's activation memory, which grows with rows x width (and width squared in
    attention): it is text-embeddings-inference's ``--max-batch-tokens``. Long sequences run in smaller batches at
    about the same rows/s (the cost per row is already dominated by its length), short ones are unaffected.

    Returns:
        index arrays into ``lengths``, in execution order, together covering each index once.
    """
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        stop = min(start + batch_size, len(order))
        if max_batch_tokens is not None:  # sorted ascending: the row added last is the batch's widest
            last, stop = stop, start + 1
            while stop < last and (stop + 1 - start) * lengths[order[stop]] <= max_batch_tokens:
                stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


#: Engines that run static (batch, length) buckets compiled ahead: their memory is fixed by the buckets, and a call cut
#: below their smallest row bucket is padded back up to it (DeepSparse's 8 rows: a 2 x 512 call would run as 8 x 512).
STATIC_SHAPE_ENGINES = ("deepsparse",)


def engine_token_cap(max_batch_tokens: int | None, engine_name: str) -> int | None:
    """The token cap (:func:`plan_batches`) for an engine: ``max_batch_tokens`` (0 or ``None``: no cap) for engines
    with dynamic shapes (ONNX Runtime, torch), none for :data:`STATIC_SHAPE_ENGINES`, where it saves no memory and
    costs padded rows."""
    if not max_batch_tokens or engine_name in STATIC_SHAPE_ENGINES:
        return None
    return max_batch_tokens


def run_sorted_batches(engine: BatchEngine, input_ids: Sequence[Sequence[int]], *, batch_size: int, pad_id: int,
                       token_type_ids: Sequence[Sequence[int]] | None = None,
                       postprocess: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray] | None = None,
                       observer: BatchObserver | None = None, max_batch_tokens: int | None = None) -> np.ndarray:
    """Engine outputs for tokenized sequences, one row per sequence, in input order.

    Args:
        engine: maps a dict of int64 ``(batch, width)`` arrays (``input_ids``, ``attention_mask``,
            ``token_type_ids``, whichever it takes) to a float array with ``batch`` rows.
        input_ids: token ids of each sequence (unpadded, already truncated).
        batch_size: sequences per engine call.
        pad_id: the tokenizer's padding id.
        max_batch_tokens: most padded tokens (rows x width) per engine call (:func:`plan_batches`); ``None``: no cap.
        token_type_ids: segment ids aligned with ``input_ids`` (zeros when ``None``).
        postprocess: applied to each batch's output with that batch's inputs (e.g. pooling token
            states with the attention mask); must return ``(batch, ...)``.
        observer: told the duration, rows, tokens and sequence lengths of every engine call.

    Returns:
        ``(len(input_ids), ...)`` float32; an empty ``(0, 0)`` array for no sequences.
    """
    out: np.ndarray | None = None
    for idx in plan_batches([len(x) for x in input_ids], batch_size=batch_size, max_batch_tokens=max_batch_tokens):
        width = max(len(input_ids[i]) for i in idx)
        ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        attention = np.zeros((len(idx), width), dtype=np.int64)
        types = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            n = len(input_ids[i])
            ids[row, :n] = input_ids[i]
            attention[row, :n] = 1
            if token_type_ids is not None:
                types[row, :n] = token_type_ids[i]
        batch = {"input_ids": ids, "attention_mask": attention, "token_type_ids": types}
        started = time.perf_counter()
        result = engine({k: v for k, v in batch.items() if k in engine.input_names})
        if postprocess is not None:
            result = postprocess(result, batch)
        if observer is not None:
            lengths = [len(input_ids[i]) for i in idx]
            observer.ran(time.perf_counter() - started, len(idx), sum(lengths), lengths)
        if out is None:
            out = np.empty((len(input_ids), *result.shape[1:]), dtype=np.float32)
        out[idx] = result
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


class SequenceRunner:
    """Tokenized sequences -> engine outputs in input order, through :func:`run_sorted_batches` (no coalescing).

    Args:
        engine: see :class:`BatchEngine`.
        batch_size: sequences per engine call.
        pad_id: the tokenizer's padding id.
        postprocess: per-batch transform of the engine output (see :func:`run_sorted_batches`).
        max_batch_tokens: most padded tokens per engine call (:func:`plan_batches`); ``None``: no cap.

    ``observer`` (none by default) receives the measurements (:class:`BatchObserver`); the service sets it.
    """

    observer: BatchObserver | None = None

    def __init__(self, engine: BatchEngine, *, batch_size: int, pad_id: int,
                 postprocess: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray] | None = None,
                 max_batch_tokens: int | None = None):
        self.engine, self.batch_size, self.pad_id, self.postprocess = engine, batch_size, pad_id, postprocess
        self.max_batch_tokens = max_batch_tokens

    def __call__(self, input_ids: Sequence[Sequence[int]],
                 token_type_ids: Sequence[Sequence[int]] | None = None) -> np.ndarray:
        """``(len(input_ids), ...)`` float32 outputs, row ``i`` for sequence ``i``."""
        return run_sorted_batches(self.engine, input_ids, batch_size=self.batch_size, pad_id=self.pad_id,
                                  token_type_ids=token_type_ids, postprocess=self.postprocess, observer=self.observer,
                                  max_batch_tokens=self.max_batch_tokens)

    def tokenized(self, seconds: float) -> None:
        """Report one tokenizer call of the method in front of this runner to the observer, if any."""
        if self.observer is not None:
            self.observer.tokenized(seconds)

    @property
    def queued(self) -> int:
        """Sequences waiting for the engine (always 0 without micro-batching)."""
        return 0

    def describe(self) -> dict:
        return {"micro_batching": False, "max_batch_tokens": self.max_batch_tokens}

    def close(self) -> None:
        """Nothing to release."""


class QueueFull(RuntimeError):
    """The micro-batching queue holds ``max_queue`` sequences already: the caller should retry later."""


@dataclass
class _Job:
    input_ids: Sequence[Sequence[int]]
    token_type_ids: Sequence[Sequence[int]] | None
    arrived: float
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class MicroBatcher(SequenceRunner):
    """A :class:`SequenceRunner` that coalesces the sequences of concurrent callers into shared batches.

    Each call enqueues its sequences and blocks. One worker thread takes everything queued once the queue
    holds ``batch_size`` sequences or the oldest job has waited ``max_wait_ms``, sorts all of it by length
    (dynamic padding across requests), runs it through the engine and hands each caller its rows. Many small
    requests (1 text x 4 labels each) thus fill batches instead of running a forward pass each. The worker is
    the only thread that calls the engine, so engines need not be thread-safe.

    Args:
        max_wait_ms: longest time a job waits for company before its batch runs.
        max_queue: most sequences queued; a call that would exceed it raises :class:`QueueFull` (the service
            answers 503 with Retry-After) instead of growing memory without bound.

    Raises (from a call):
        QueueFull: the queue is full.
        RuntimeError: the batcher is closed.
        whatever the engine raised while running the batch holding this call's sequences.
    """

    def __init__(self, engine: BatchEngine, *, batch_size: int, pad_id: int,
                 postprocess: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray] | None = None,
                 max_wait_ms: float = 2.0, max_queue: int = 16384, name: str = "micro-batcher",
                 max_batch_tokens: int | None = None):
        super().__init__(engine, batch_size=batch_size, pad_id=pad_id, postprocess=postprocess,
                         max_batch_tokens=max_batch_tokens)
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: list[_Job] = []
        self._queued = 0
        self._closed = False
        self._cond = threading.Condition()
        self.stats = {"batches": 0, "jobs": 0, "sequences": 0, "max_jobs_per_round": 0, "rejected": 0}
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    def __call__(self, input_ids: Sequence[Sequence[int]],
                 token_type_ids: Sequence[Sequence[int]] | None = None) -> np.ndarray:
        if not len(input_ids):
            return np.empty((0, 0), dtype=np.float32)
        job = _Job(input_ids, token_type_ids, time.monotonic())
        with self._cond:
            if self._closed:
                raise RuntimeError("the micro-batcher is closed")
            if self._queued and self._queued + len(input_ids) > self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"{self._queued} sequences are queued (limit {self.max_queue}); retry shortly")
            self._queue.append(job)
            self._queued += len(input_ids)
            self._cond.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].arrived + self.max_wait
            while self._queued < self.batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs, self._queue, self._queued = self._queue, [], 0
        if self.observer is not None:
            taken = time.monotonic()
            for job in jobs:
                self.observer.waited(taken - job.arrived)
        return jobs

    @property
    def queued(self) -> int:
        """Sequences waiting for the engine now."""
        return self._queued

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            ids = [seq for job in jobs for seq in job.input_ids]
            types = None
            if any(job.token_type_ids is not None for job in jobs):
                types = [t for job in jobs for t in (job.token_type_ids if job.token_type_ids is not None
                                                     else [[0] * len(s) for s in job.input_ids])]
            try:
                out = super().__call__(ids, types)
            except BaseException as exc:  # every waiting caller gets the engine's error
                for job in jobs:
                    job.error = exc
                    job.done.set()
                continue
            start = 0
            for job in jobs:
                job.result = out[start:start + len(job.input_ids)]
                start += len(job.input_ids)
                job.done.set()
            self.stats["batches"] += len(plan_batches([len(x) for x in ids], batch_size=self.batch_size,
                                                      max_batch_tokens=self.max_batch_tokens))
            self.stats["jobs"] += len(jobs)
            self.stats["sequences"] += len(ids)
            self.stats["max_jobs_per_round"] = max(self.stats["max_jobs_per_round"], len(jobs))

    def describe(self) -> dict:
        return {"micro_batching": True, "max_wait_ms": self.max_wait * 1000, "max_queue": self.max_queue,
                "max_batch_tokens": self.max_batch_tokens,
                **self.stats}

    def close(self) -> None:
        """Stop the worker after the jobs already queued have run."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout=60)
