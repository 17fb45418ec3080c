"""Bulk upserts into Argilla at the server's own speed: batched, a bounded number in flight, retried, exactly once.

:class:`Upserter` is the one writer of records::

    with Upserter(dataset, batch_size=256, concurrency=2, on_written=bar.update) as upserter:
        for records in produce():          # e.g. build_records() of each scored batch
            upserter.submit(records)       # buffers to batch_size; blocks while `concurrency` batches are in flight
    upserter.stats.written                 # records the server acknowledged

* Batching: ``submit`` buffers records and sends them ``batch_size`` at a time (Argilla takes at most 500 a
  request, ``PUT /api/v1/datasets/{id}/records/bulk``); ``flush``/``close`` send the rest.
* Overlap: batches go out on ``concurrency`` worker threads, so the caller keeps producing (scoring the next batch)
  while upserts are in flight; ``submit`` blocks while ``concurrency`` batches are in flight (back-pressure:
  memory holds at most ``concurrency + 1`` batches).
* Exactly once: a record's id is its content hash (:func:`annotate.dataset.record_id`) and the bulk endpoint
  upserts by id, so a batch retried after a timeout or 5xx (:func:`annotate.client.call`, exponential backoff), or
  a whole run repeated after a kill, writes each record once.
* Failure: the first failed batch (after its retries) stops the upserter: later ``submit`` calls and ``close``
  raise :class:`UpsertFailed` with the number of records written before; batches still queued are not sent.

Requests go through the Argilla SDK's API layer (``client.api.records.bulk_upsert``: the SDK's record models and
error types, without ``dataset.records.log``'s per-call progress bar, which is not thread-safe to silence).
Defaults come from ``benchmarks/argilla_ceiling.py`` on the local stack (docs/scale.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from annotate import client as argilla_client

logger = logging.getLogger(__name__)

#: Argilla's limit of records in one bulk request (``argilla`` SDK ``MAX_RECORDS_PER_UPSERT_BULK``).
MAX_BATCH = 500
#: Defaults measured with benchmarks/argilla_ceiling.py on the local stack (docs/scale.md, "Argilla's ceiling").
DEFAULT_BATCH_SIZE = 256
DEFAULT_CONCURRENCY = 2


class UpsertFailed(RuntimeError):
    """A batch failed after its retries; ``written`` records had been acknowledged before, ``cause`` is the error
    (:class:`annotate.client.ArgillaRefused` or :class:`annotate.client.ArgillaUnavailable`)."""

    def __init__(self, message: str, written: int, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.written = written
        self.cause = cause


@dataclass
class UpsertStats:
    """What an :class:`Upserter` did. ``request_seconds`` sums the time of every request (they overlap), so it can
    exceed ``wall_seconds`` (from construction to ``close``)."""

    written: int = 0
    batches: int = 0
    request_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def records_per_second(self) -> float:
        return self.written / self.wall_seconds if self.wall_seconds else 0.0


class Upserter:
    """Bounded, concurrent bulk upserts of ``argilla.Record`` objects into one dataset (see the module docstring).

    Args:
        dataset: an existing ``argilla.Dataset`` (created on the server) whose settings the records fit.
        batch_size: records a request, 1..500.
        concurrency: requests in flight at once (worker threads), >= 1.
        attempts, max_wait: retries of one batch (:func:`annotate.client.call`: connection errors and 5xx,
            exponential backoff up to ``max_wait`` seconds).
        on_written: called with the number of records of each acknowledged batch (from a worker thread, one call
            at a time): progress bars.
        client: the ``argilla.Argilla`` client to send with; default: the one ``dataset`` was built with.

    Raises:
        ValueError: ``batch_size`` or ``concurrency`` out of range.
    """

    def __init__(self, dataset, *, batch_size: int = DEFAULT_BATCH_SIZE, concurrency: int = DEFAULT_CONCURRENCY,
                 attempts: int = 6, max_wait: float = 20.0, on_written: Callable[[int], None] | None = None,
                 client=None) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size {batch_size} out of range: Argilla takes 1..{MAX_BATCH} records a request")
        if concurrency < 1:
            raise ValueError(f"concurrency {concurrency} out of range: at least 1")
        self.dataset, self.batch_size, self.concurrency = dataset, batch_size, concurrency
        self.attempts, self.max_wait, self.on_written = attempts, max_wait, on_written
        self.stats = UpsertStats()
        # The SDK's API layer; a Dataset keeps its client in `_client` (the SDK has no public accessor).
        self._api = (client if client is not None else dataset._client).api.records
        self._buffer: list = []
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="argilla-upsert")
        self._futures: list[Future] = []
        self._error: BaseException | None = None
        self._closed = False
        self._started = time.perf_counter()

    # producer side --------------------------------------------------------------------------------------------
    def submit(self, records: Sequence) -> None:
        """Queue ``records`` (``argilla.Record`` with ids); full batches are sent, the rest waits for more.

        Blocks while ``concurrency`` batches are in flight.

        Raises:
            UpsertFailed: an earlier batch failed (nothing more is sent).
            RuntimeError: the upserter is closed.
        """
        if self._closed:
            raise RuntimeError("submit() after close()")
        self._raise_if_failed()
        self._buffer.extend(records)
        while len(self._buffer) >= self.batch_size:
            batch, self._buffer = self._buffer[:self.batch_size], self._buffer[self.batch_size:]
            self._send(batch)

    def flush(self) -> None:
        """Send the buffered records now (a batch smaller than ``batch_size``); does not wait for it."""
        self._raise_if_failed()
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._send(batch)

    def close(self) -> UpsertStats:
        """Send what is buffered, wait for every batch in flight, stop the threads.

        Returns:
            the :class:`UpsertStats`.

        Raises:
            UpsertFailed: a batch failed (``written`` counts the records acknowledged before and after it).
        """
        if not self._closed:
            try:
                if self._error is None:
                    self.flush()
            except UpsertFailed:
                pass
            finally:
                self._closed = True
                self._pool.shutdown(wait=True)
                self.stats.wall_seconds = round(time.perf_counter() - self._started, 3)
        self._raise_if_failed()
        return self.stats

    def __enter__(self) -> "Upserter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # The caller failed: stop sending what is queued, wait for what is in flight, keep the caller's error.
        self._error = self._error or exc
        for future in self._futures:
            future.cancel()
        self._closed = True
        self._pool.shutdown(wait=True)
        self.stats.wall_seconds = round(time.perf_counter() - self._started, 3)

    # worker side ----------------------------------------------------------------------------------------------
    def _send(self, batch: list) -> None:
        self._slots.acquire()
        if self._error is not None:
            self._slots.release()
            self._raise_if_failed()
        try:
            future = self._pool.submit(self._upsert, batch)
        except BaseException:
            self._slots.release()
            raise
        self._futures = [f for f in self._futures if not f.done()] + [future]

    def _upsert(self, batch: list) -> None:
        try:
            if self._error is not None:
                return
            models = []
            for record in batch:
                record.dataset = self.dataset  # as dataset.records.log does: questions/vectors resolve by name
                models.append(record.api_model())
            began = time.perf_counter()
            argilla_client.call(self._api.bulk_upsert, self.dataset.id, models, attempts=self.attempts,
                                max_wait=self.max_wait, what=f"upsert of {len(models)} records")
            with self._lock:
                self.stats.written += len(models)
                self.stats.batches += 1
                self.stats.request_seconds += time.perf_counter() - began
                if self.on_written is not None:
                    self.on_written(len(models))
        except BaseException as exc:  # noqa: BLE001 - handed to the producer by _raise_if_failed
            with self._lock:
                if self._error is None:
                    self._error = exc
        finally:
            self._slots.release()

    def _raise_if_failed(self) -> None:
        error = self._error
        if error is None:
            return
        if isinstance(error, UpsertFailed):
            raise error
        failed = UpsertFailed(f"{error} ({self.stats.written} records written before it stopped)",
                              self.stats.written, error)
        raise failed from None
