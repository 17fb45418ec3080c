"""The FastAPI application: ``uvicorn service.app:app`` or ``python -m service``.

Lifecycle (as in LitServe's setup/predict split): at start-up the models load in a background
thread, so ``GET /health`` answers at once and ``GET /ready`` turns 200 when they are loaded
(503 before, or 500 with the reason if loading failed). ``POST /zero-shot`` answers 503 until then.
Requests run concurrently (FastAPI's thread pool); each model's micro-batcher
(:class:`service.batching.MicroBatcher`) merges their pairs into shared, length-sorted batches, and answers
503 with ``Retry-After`` when its bounded queue is full.

In front of the routes (:mod:`service.guards`, :mod:`service.metrics`): every request is counted and timed for
``GET /metrics``; with ``ZSC_API_KEY`` set, every path but ``/health`` and ``/ready`` needs
``Authorization: Bearer <key>`` (401); a body over ``ZSC_MAX_BODY_BYTES`` gets 413, one not whole within
``ZSC_BODY_TIMEOUT_S`` 408; then, beyond ``ZSC_MAX_CONCURRENT_REQUESTS`` requests in progress, 429 with
``Retry-After``. Every endpoint that takes texts checks the same limits (:func:`service.guards.check_limits`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service import __doc__ as service_doc
from service.allocator import set_mmap_threshold
from service.batching import QueueFull
from service.config import Settings
from service.embedding import scores_and_embeddings
from service.guards import BearerAuth, BodyLimit, ConcurrencyLimit, check_limits, limit_problems
from service.loader import ServedMethods, load_methods
from service.long_text import cut_to_budget, special_tokens
from service.metrics import Metrics, MetricsMiddleware
from service.schemas import (
    BiasInfo,
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    EncoderInfo,
    ZeroShotItem,
    ZeroShotRequest,
    ZeroShotResponse,
)
from service.zeroshot import InputError, ZeroShotResult, rank

logger = logging.getLogger(__name__)


def correct_results(results: list[ZeroShotResult], labels: list[str], method: str
                    ) -> tuple[list[ZeroShotResult], BiasInfo]:
    """The results with their label bias removed over these texts (:func:`service.bias.estimate_bias`), re-ranked,
    and what was done."""
    import numpy as np

    from service.bias import estimate_bias

    index = {label: i for i, label in enumerate(labels)}
    scores = np.zeros((len(results), len(labels)))
    for row, result in enumerate(results):
        for label, score in zip(result.labels, result.scores):
            scores[row, index[label]] = score
    estimate = estimate_bias(scores, method)
    corrected = rank([r.text for r in results], labels, estimate.apply(scores), [r.truncated for r in results])

    def by_label(values) -> dict[str, float]:
        return {label: round(float(v), 6) for label, v in zip(labels, values)}

    note = estimate.note
    for i in estimate.raised:
        note = note.replace(f"#{i} ", f"{labels[i]!r} ")
    return corrected, BiasInfo(method=method, shift=by_label(estimate.shift), shares_before=by_label(
        estimate.shares_before), shares_after=by_label(estimate.shares_after), note=note)


class ModelSlot:
    """Holds the served methods once the background load finishes, or the error that stopped it."""

    def __init__(self) -> None:
        self.model: ServedMethods | None = None
        self.error: str | None = None
        self.lock = threading.Lock()  # without micro-batching: one inference at a time (engines use every core)
        self._thread: threading.Thread | None = None

    def start(self, settings: Settings, on_loaded: Callable[[ServedMethods], None] | None = None) -> None:
        """Load in a background thread; ``on_loaded`` sees the models before they serve (e.g. to attach metrics)."""
        self._thread = threading.Thread(target=self._load, args=(settings, on_loaded), name="model-loader",
                                        daemon=True)
        self._thread.start()

    def _load(self, settings: Settings, on_loaded: Callable[[ServedMethods], None] | None) -> None:
        try:
            served = load_methods(settings)
            if on_loaded is not None:
                on_loaded(served)
            self.model = served
        except Exception as exc:  # reported by /ready; the process stays up to say why
            logger.exception("model failed to load")
            self.error = f"{type(exc).__name__}: {exc}"

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.model is not None


def create_app(settings: Settings | None = None, *, load_before_serving: bool = False) -> FastAPI:
    """Build the app for ``settings`` (default: from the environment, ``ZSC_*``).

    ``load_before_serving``: the lifespan's start-up waits for the models (and fails, with the loader's error, when
    they cannot load) instead of loading them in the background, so whatever runs the app routes requests to it
    only once it is ready (Ray Serve replicas: :mod:`service.ray_serve`)."""
    settings = settings or Settings()
    slot = ModelSlot()
    metrics = Metrics(lambda: slot.model)

    allocator: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        allocator.update(set_mmap_threshold(settings.malloc_mmap_threshold_kib))  # before any model allocates
        slot.start(settings, metrics.observe_models)
        if load_before_serving and not await asyncio.to_thread(slot.wait):
            raise RuntimeError(f"the models failed to load: {slot.error}")
        yield
        if slot.wait(0) and slot.model is not None:
            slot.model.close()

    app = FastAPI(title="Zero-shot pre-annotation service", description=service_doc, version="0.1.0", lifespan=lifespan)
    app.state.settings, app.state.slot, app.state.metrics = settings, slot, metrics
    # Outermost last: metrics count every answer (401, 413, 408, 429 included); the key is checked, then the body is
    # read whole (within its size and deadline), and only then is a concurrency slot taken.
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent_requests)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    if settings.api_key is not None:
        app.add_middleware(BearerAuth, api_key=settings.api_key.get_secret_value())
    paths: set[str] = set()

    def route_paths() -> set[str]:  # read on the first request, once every route is declared
        if not paths:
            paths.update(getattr(route, "path", "") for route in app.routes)
        return paths

    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=route_paths)

    def ready_model() -> ServedMethods:
        if slot.model is None:
            raise HTTPException(503, detail=slot.error or "the model is still loading; retry when GET /ready is 200")
        return slot.model

    @app.get("/health")
    def health() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        """Readiness: 200 once the models are loaded; 503 while loading; 500 if loading failed."""
        if slot.model is not None:
            served = slot.model
            return JSONResponse({"status": "ready", "default_method": served.default_method,
                                 "methods": list(served.methods),
                                 "models": {role: m.source.model_id for role, m in served.models.items()},
                                 "classifiers": list(served.classifiers)})
        if slot.error:
            return JSONResponse({"status": "failed", "error": slot.error}, status_code=500)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/info")
    def info() -> dict:
        """Methods and models loaded: ids, engines, max lengths, calibration, sparsity, quantization; limits."""
        served = ready_model()
        limits = {"max_texts": settings.max_texts, "max_labels": settings.max_labels,
                  "max_labels_embedding": settings.max_labels_embedding, "max_text_chars": settings.max_text_chars,
                  "max_body_bytes": settings.max_body_bytes, "max_chunks": settings.max_chunks,
                  "max_concurrent_requests": settings.max_concurrent_requests,
                  "body_timeout_s": settings.body_timeout_s}
        return {**served.info(), "limits": limits, "allocator": allocator,
                "default_hypothesis_template": settings.hypothesis_template}

    @app.post("/zero-shot", response_model=ZeroShotResponse)
    def zero_shot(request: ZeroShotRequest) -> ZeroShotResponse:
        """Score every (text, label) pair; labels of each result sorted by descending score."""
        if not settings.methods():
            raise HTTPException(422, detail=[{"type": "method_not_loaded", "loc": ["body"], "msg": "this service "
                                              "loads no zero-shot model, only classifiers: use POST /classify"}])
        method = settings.resolve_method(request.method, request.multi_label or len(request.labels) == 1)
        check_limits(settings, request.texts, labels=request.labels, method=method,
                     descriptions=sum(map(len, (request.label_descriptions or {}).values())))
        served = ready_model()
        if method not in served.methods:
            raise HTTPException(422, detail=[{"type": "method_not_loaded", "loc": ["body", "method"],
                                              "msg": f"method {method!r} is not loaded by this service; "
                                                     f"choose one of {', '.join(served.methods)}"}])
        template = request.hypothesis_template or settings.hypothesis_template
        run = served.methods[method]
        options = dict(hypothesis_template=template, multi_label=request.multi_label, long_text=request.long_text,
                       max_windows=settings.max_chunks, max_sequences=settings.max_queue)
        if request.label_descriptions:
            options["label_descriptions"] = request.label_descriptions
        encoder_model = served.models.get("embedding")
        if request.return_embeddings:
            if encoder_model is None:
                raise HTTPException(422, detail=[{"type": "method_not_loaded", "loc": ["body", "return_embeddings"],
                                                  "msg": "this service loads no sentence encoder "
                                                         "(ZSC_EMBEDDING_MODEL=none): drop return_embeddings or "
                                                         "start it with one"}])
            # the same call, keeping the text embeddings (one encoder pass with the embedding/ensemble methods)
            run = functools.partial(scores_and_embeddings, run, encoder_model.classifier.encoder)  # type: ignore[attr-defined]
        if settings.batch_wait_ms > 0:  # micro-batchers serialize engine calls and coalesce concurrent requests
            answer = run(request.texts, request.labels, **options)
        else:
            with slot.lock:
                answer = run(request.texts, request.labels, **options)
        embeddings = encoder_info = None
        if request.return_embeddings:
            answer, vectors, shared = answer
            embeddings = vectors.tolist()
            encoder_info = EncoderInfo(model=encoder_model.source.model_id, fingerprint=encoder_model.info["fingerprint"],
                                       dim=int(vectors.shape[1]), engine=encoder_model.engine.name, shared_pass=shared)
        bias_info = None
        if request.bias_correction != "none":
            answer, bias_info = correct_results(answer, request.labels, request.bias_correction)
        return ZeroShotResponse(
            results=[ZeroShotItem(text=r.text, labels=r.labels, scores=r.scores, truncated=r.truncated)
                     for r in answer],
            method=method, model=served.model_id(method), engine=served.engine_name(method),
            hypothesis_template=template, multi_label=request.multi_label or len(request.labels) == 1,
            embeddings=embeddings, encoder=encoder_info, bias=bias_info)

    @app.post("/embed", response_model=EmbedResponse)
    def embed(request: EmbedRequest) -> EmbedResponse:
        """Unit-length sentence embeddings of the texts from the served sentence encoder (one pass a text).

        The annotation loop keeps them to fit and refresh its adapted head without running the encoder again."""
        check_limits(settings, request.texts)
        served = ready_model()
        model = served.models.get("embedding")
        if model is None:
            raise HTTPException(422, detail=[{"type": "method_not_loaded", "loc": ["body"],
                                              "msg": "this service loads no sentence encoder "
                                                     "(ZSC_EMBEDDING_MODEL=none): start it with one"}])
        encoder = model.classifier.encoder  # type: ignore[attr-defined]
        # cut a little past the window first: the encoder's tokenizer reads the same tokens, never a whole long text
        texts, _ = cut_to_budget(encoder.tokenizer, request.texts,
                                 encoder.max_length - special_tokens(encoder.tokenizer, pair=False))
        if settings.batch_wait_ms > 0:
            vectors = encoder.encode(texts)
        else:
            with slot.lock:
                vectors = encoder.encode(texts)
        return EmbedResponse(embeddings=vectors.tolist(), model=model.source.model_id,
                             fingerprint=model.info["fingerprint"], dim=int(vectors.shape[1]), engine=model.engine.name)

    @app.post("/classify", response_model=ClassifyResponse)
    def classify(request: ClassifyRequest) -> ClassifyResponse:
        """Label distribution of each text from a fine-tuned classifier (``train/finetune.py``)."""
        problems = limit_problems(settings, request.texts)
        served = ready_model()
        names = list(served.classifiers)
        if request.model is None and len(names) != 1:
            problems.append({"type": "invalid", "loc": ["body", "model"], "msg": "name the classifier: " + (
                ", ".join(names) if names else "none is loaded (start the service with --classifier NAME=DIR)")})
        elif request.model is not None and request.model not in served.classifiers:
            problems.append({"type": "invalid", "loc": ["body", "model"], "msg": f"no classifier named "
                             f"{request.model!r}; loaded: "
                             f"{', '.join(names) or 'none (start the service with --classifier NAME=DIR)'}"})
        if problems:
            raise HTTPException(422, detail=problems)
        classifier = served.classifiers[request.model or names[0]]
        if settings.batch_wait_ms > 0:
            results = classifier(request.texts)
        else:
            with slot.lock:
                results = classifier(request.texts)
        return ClassifyResponse(results=[ZeroShotItem(text=r.text, labels=r.labels, scores=r.scores,
                                                      truncated=r.truncated) for r in results],
                                model=classifier.name, engine=classifier.engine.name, multi_label=classifier.multi_label)

    @app.get("/metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        """Prometheus metrics (text format): requests, durations, queue, batches, label cache, engines."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": f"the service is saturated: {exc}"}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": [{"type": "input_error", "loc": ["body"], "msg": str(exc)}]}, status_code=422)

    return app


def __getattr__(name: str):
    """``service.app:app`` for uvicorn, built on first access so importing this module loads nothing."""
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
