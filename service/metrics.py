"""Prometheus metrics of the service (``GET /metrics``), with the ``prometheus-client`` library.

Named after Hugging Face text-embeddings-inference's (``te_request_duration``, ``te_queue_duration``, ...), with
this service's prefix ``zsc_``:

- ``zsc_requests_total{endpoint, status}``: HTTP requests answered, by route (``other`` for unknown paths) and
  status code (401, 413, 429 included: they are counted before the request reaches the route);
- ``zsc_request_duration_seconds{endpoint}``: histogram of the time to answer;
- ``zsc_requests_in_progress``: requests being answered now;
- per model (``model``: ``nli``, ``embedding`` or ``classifier:<name>``): ``zsc_queue_duration_seconds`` (a
  request's wait in the micro-batching queue), ``zsc_tokenization_duration_seconds`` (one tokenizer call),
  ``zsc_inference_duration_seconds`` (one engine call), ``zsc_batch_size_rows`` / ``zsc_batch_size_tokens``
  (per engine call; tokens unpadded), ``zsc_input_length_tokens`` (per sequence, after truncation), and the gauge
  ``zsc_queue_size`` (sequences waiting);
- ``zsc_label_cache_hits_total`` / ``zsc_label_cache_misses_total``: the embedding method's hypothesis cache;
- ``zsc_model_info{role, model, engine}``: the model and engine each role runs (value 1).

Each app has its own :class:`~prometheus_client.CollectorRegistry`, so several apps can live in one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Seconds: 1 ms to 2 min, roughly x2.5 apart.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class ModelObserver:
    """A :class:`service.batching.BatchObserver` that records one model's measurements in :class:`Metrics`."""

    def __init__(self, metrics: "Metrics", model: str) -> None:
        self._tokenization = metrics.tokenization_duration.labels(model)
        self._queue = metrics.queue_duration.labels(model)
        self._inference = metrics.inference_duration.labels(model)
        self._rows = metrics.batch_rows.labels(model)
        self._tokens = metrics.batch_tokens.labels(model)
        self._lengths = metrics.input_tokens.labels(model)

    def tokenized(self, seconds: float) -> None:
        self._tokenization.observe(seconds)

    def waited(self, seconds: float) -> None:
        self._queue.observe(seconds)

    def ran(self, seconds: float, rows: int, tokens: int, lengths: Sequence[int]) -> None:
        self._inference.observe(seconds)
        self._rows.observe(rows)
        self._tokens.observe(tokens)
        for length in lengths:
            self._lengths.observe(length)


class _ServedState:
    """Collector of values read at scrape time from the loaded models: queue sizes, label cache, model info."""

    def __init__(self, served: Callable[[], Any]) -> None:
        self._served = served

    def collect(self):
        served = self._served()
        queue = GaugeMetricFamily("zsc_queue_size", "Sequences waiting in the micro-batching queue", labels=["model"])
        hits = CounterMetricFamily("zsc_label_cache_hits", "Hypothesis embeddings found in the label cache",
                                   labels=["model"])
        misses = CounterMetricFamily("zsc_label_cache_misses", "Hypothesis embeddings encoded (not in the cache)",
                                     labels=["model"])
        info = InfoMetricFamily("zsc_model", "The model and engine each role runs", labels=["role"])
        if served is not None:
            for role, model in served.models.items():
                queue.add_metric([role], model.runner.queued)
                info.add_metric([role], {"model": model.source.model_id, "engine": model.engine.name})
            shared = {id(model.runner) for model in served.models.values()}
            for name, classifier in served.classifiers.items():
                if id(classifier.runner) not in shared:  # an adapted head queues in the embedding model's runner
                    queue.add_metric([f"classifier:{name}"], classifier.runner.queued)
                info.add_metric([f"classifier:{name}"], {"model": classifier.info.get("model_id", name),
                                                         "engine": classifier.engine.name})
            embedding = served.models.get("embedding")
            if embedding is not None:
                hits.add_metric(["embedding"], embedding.classifier.cache_hits)
                misses.add_metric(["embedding"], embedding.classifier.cache_misses)
        yield from (queue, hits, misses, info)


class Metrics:
    """The service's metrics in their own registry; :meth:`observe_models` hooks the loaded models' runners in.

    Args:
        served: returns the loaded :class:`~service.loader.ServedMethods`, or ``None`` while loading.
    """

    def __init__(self, served: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("zsc_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.request_duration = Histogram("zsc_request_duration_seconds", "Time to answer an HTTP request",
                                          ["endpoint"], buckets=DURATION_BUCKETS, registry=r)
        self.in_progress = Gauge("zsc_requests_in_progress", "HTTP requests being answered", registry=r)
        self.queue_duration = Histogram("zsc_queue_duration_seconds", "A request's wait in the micro-batching queue",
                                        ["model"], buckets=DURATION_BUCKETS, registry=r)
        self.tokenization_duration = Histogram("zsc_tokenization_duration_seconds", "One tokenizer call",
                                               ["model"], buckets=DURATION_BUCKETS, registry=r)
        self.inference_duration = Histogram("zsc_inference_duration_seconds", "One engine call (a batch)",
                                            ["model"], buckets=DURATION_BUCKETS, registry=r)
        self.batch_rows = Histogram("zsc_batch_size_rows", "Sequences per engine call", ["model"],
                                    buckets=ROW_BUCKETS, registry=r)
        self.batch_tokens = Histogram("zsc_batch_size_tokens", "Tokens per engine call (unpadded)", ["model"],
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.input_tokens = Histogram("zsc_input_length_tokens", "Tokens per sequence the model reads", ["model"],
                                      buckets=TOKEN_BUCKETS, registry=r)
        r.register(_ServedState(served))

    def observe_models(self, served: Any) -> None:
        """Attach a :class:`ModelObserver` to the runner of every loaded model and classifier."""
        for role, model in served.models.items():
            model.runner.observer = ModelObserver(self, role)
        for name, classifier in served.classifiers.items():
            if classifier.runner.observer is None:  # an adapted head shares the embedding model's runner
                classifier.runner.observer = ModelObserver(self, f"classifier:{name}")

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware counting and timing every HTTP request by endpoint and status.

    Args:
        endpoints: returns the app's route paths; any other path is counted as ``other`` (bounded label values).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: Callable[[], set[str]]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.endpoints() else "other"
        status = 500  # an exception that escapes every handler becomes a 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_progress.dec()
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_duration.labels(endpoint).observe(time.perf_counter() - started)
