"""The one place that turns texts into teacher score vectors: over HTTP or in-process.

* :class:`HttpScorer` calls a running zero-shot service (``POST /zero-shot``) with httpx, retrying
  transient failures (connection errors, 5xx, 503 while the model loads) with exponential backoff (tenacity).
* :class:`LocalScorer` loads the same engine code and methods in this process (``service.loader.load_methods``).

Both return scores of shape ``(n_texts, n_labels)`` with columns in the order of the labels given at
construction (the service sorts each result by score; this module puts them back in label order), and
count ``seconds``: the time spent in scoring calls (HTTP round trips, or the in-process classifier).

:meth:`_Scorer.score_and_embed` returns the scores and the sentence embeddings of the same texts from one call a
chunk (``POST /zero-shot`` with ``return_embeddings``; in-process :func:`service.embedding.scores_and_embeddings`):
with the embedding and ensemble methods one encoder pass a text gives both.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)


class ScoringError(RuntimeError):
    """The scorer refused the input or could not be reached after retries."""


def _reorder(result_labels: Sequence[str], result_scores: Sequence[float], labels: Sequence[str]) -> list[float]:
    by_label = dict(zip(result_labels, result_scores))
    missing = [label for label in labels if label not in by_label]
    if missing:
        raise ScoringError(f"the scorer returned no score for {missing[0]!r}")
    return [float(by_label[label]) for label in labels]


class _Scorer:
    labels: list[str]
    model_id: str = "?"
    engine: str = "?"
    method: str | None = None
    #: The method that actually served the scores (the service's answer, or the in-process choice).
    served_method: str | None = None
    batch_size: int = 64

    def __init__(self) -> None:
        self.seconds = 0.0
        self.texts_scored = 0

    @property
    def agent(self) -> str:
        """What Argilla shows as the suggestion's agent: ``<model id>:<engine>:<method>``.

        The method is the one that served the scores (the service reports it in every answer, so a request
        that left it to the service's default still names it); before any scoring, the requested one.
        Characters Argilla does not allow in an agent (anything but letters, digits, ``-_:./`` and spaces)
        become ``-``."""
        method = self.served_method or self.method
        agent = f"{self.model_id}:{self.engine}" + (f":{method}" if method else "")
        return re.sub(r"[^a-zA-Z0-9\-_:./ ]", "-", agent)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Scores of shape ``(len(texts), len(labels))`` in label order; texts go out in chunks of ``batch_size``.

        Raises:
            ScoringError: the scorer refused a text or stayed unreachable.
        """
        out = []
        for chunk in self._chunks(texts):
            began = time.perf_counter()
            out.extend(self._score(chunk))
            self.seconds += time.perf_counter() - began
            self.texts_scored += len(chunk)
        return np.asarray(out, dtype=np.float64).reshape(len(texts), len(self.labels))

    def _score(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError

    def _chunks(self, texts: Sequence[str]) -> Iterator[list[str]]:
        """Consecutive chunks of ``texts`` sent together: ``batch_size`` texts (the HTTP scorer also keeps each
        request's body under the service's limit)."""
        for start in range(0, len(texts), self.batch_size):
            yield list(texts[start:start + self.batch_size])

    #: Chunks scored at once by :meth:`score_and_embed` (the HTTP scorer: requests in flight).
    in_flight: int = 1

    def score_and_embed(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(len(texts), len(labels))`` in label order and unit-length sentence embeddings
        ``(len(texts), dim)`` float32 of the same texts, from one call a chunk (``in_flight`` chunks at once, results
        in input order); equal to :meth:`score` and :meth:`embed` called apart. The time counts in ``seconds``.

        Raises:
            ScoringError: the scorer refused a text, stayed unreachable, or serves no sentence encoder.
        """
        chunks = list(self._chunks(texts))
        began = time.perf_counter()
        try:
            if self.in_flight > 1 and len(chunks) > 1:
                with ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="scorer") as pool:
                    answers = list(pool.map(self._score_and_embed, chunks))
            else:
                answers = [self._score_and_embed(chunk) for chunk in chunks]
        finally:
            self.seconds += time.perf_counter() - began
        self.texts_scored += len(texts)
        dim = (self.encoder or {}).get("dim") or 0
        scores = np.asarray([row for answer in answers for row in answer[0]], dtype=np.float64)
        vectors = (np.concatenate([np.asarray(answer[1], dtype=np.float32) for answer in answers]) if answers
                   else np.empty((0, dim), dtype=np.float32))
        return scores.reshape(len(texts), len(self.labels)), vectors

    def _score_and_embed(self, texts: list[str]) -> tuple[list[list[float]], np.ndarray]:
        return self._score(texts), self._embed(texts)

    #: The sentence encoder behind :meth:`embed`: ``{"model_id", "fingerprint", "dim"}`` (set on first use).
    encoder: dict | None = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length sentence embeddings ``(len(texts), dim)`` float32 from the served sentence encoder, in chunks
        of ``batch_size``; the time counts in ``seconds``.

        Raises:
            ScoringError: no sentence encoder is served, or it failed.
        """
        out = []
        for chunk in self._chunks(texts):
            began = time.perf_counter()
            out.append(np.asarray(self._embed(chunk), dtype=np.float32))
            self.seconds += time.perf_counter() - began
        dim = (self.encoder or {}).get("dim", 0)
        return np.concatenate(out) if out else np.empty((0, dim), dtype=np.float32)

    def _embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections or the model."""


class _Transient(Exception):
    """A failure worth retrying (5xx, 503 while loading, 429)."""


class _NoOneCall(ScoringError):
    """The service refused ``return_embeddings`` as an unknown field: it predates the option."""


def _json_bytes(value) -> bytes:
    """``value`` as the JSON bytes sent (httpx's own encoding: UTF-8, compact, no NaN)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


class HttpScorer(_Scorer):
    """Scores through a running service. ``method`` is sent only when given (else the service's default applies).

    Construction waits for ``GET /ready`` (retrying while it is 503 or unreachable) and reads the service's limits
    from ``GET /info`` to size requests: at most ``max_texts`` texts, and a JSON body of at most ``max_body_bytes``
    (the server answers 413 past it; long documents go in smaller requests, counted exactly in the bytes sent).
    :meth:`score_and_embed` keeps ``in_flight`` requests in flight (the service micro-batches concurrent requests,
    and one request's JSON and HTTP overlap another's encoder pass); a service without ``return_embeddings`` (older
    than this option) gets two requests a chunk, ``/zero-shot`` and ``/embed``.

    Raises:
        ScoringError: the service stays unreachable, failed to load its model, or refuses the request; a single
            text whose request alone exceeds ``max_body_bytes``.
    """

    def __init__(self, url: str, labels: Sequence[str], hypothesis_template: str, multi_label: bool = False,
                 method: str | None = None, timeout: float = 300.0, max_attempts: int = 6,
                 max_wait: float = 20.0, ready_timeout: float = 300.0, in_flight: int = 2,
                 api_key: str | None = None, label_descriptions: dict[str, list[str]] | None = None) -> None:
        import httpx
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential

        super().__init__()
        self.url = url.rstrip("/")
        self.labels, self.template, self.multi_label, self.method = list(labels), hypothesis_template, multi_label, method
        self.label_descriptions = label_descriptions or None
        self.in_flight = max(1, int(in_flight))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None  # a service with ZSC_API_KEY set
        self._client = httpx.Client(base_url=self.url, timeout=timeout, headers=headers,
                                    limits=httpx.Limits(max_connections=max(10, self.in_flight)))
        transient = retry_if_exception_type((httpx.TransportError, _Transient))
        self._retrying = Retrying(retry=transient, stop=stop_after_attempt(max_attempts), reraise=True,
                                  wait=wait_exponential(multiplier=0.5, max=max_wait),
                                  before_sleep=lambda state: logger.warning(
                                      "zero-shot service: %s; retry %d", state.outcome.exception(),
                                      state.attempt_number))
        self._ready = Retrying(retry=transient, stop=stop_after_delay(ready_timeout), reraise=True,
                               wait=wait_exponential(multiplier=0.2, max=5))
        try:
            ready = self._ready(self._get, "/ready")
            info = self._retrying(self._get, "/info")
        except (httpx.HTTPError, _Transient) as exc:
            raise ScoringError(f"zero-shot service at {self.url} is not usable: {exc}") from None
        models = ready.get("models", {})
        self.model_id = "+".join(models.values()) or "?"  # refined from the first answer (model, engine of the method)
        limits = info.get("limits", {})
        self.batch_size = int(limits.get("max_texts", 64))
        #: The service's largest request body (bytes); ``None`` when it does not say (older services).
        self.max_body_bytes: int | None = limits.get("max_body_bytes")
        #: Whether the service answers ``return_embeddings`` (found out on the first :meth:`score_and_embed`).
        self.one_call: bool | None = None

    def _body(self, texts: list[str], **extra) -> dict:
        body = {"texts": texts, "labels": self.labels, "hypothesis_template": self.template,
                "multi_label": self.multi_label}
        if self.method is not None:
            body["method"] = self.method
        if self.label_descriptions:
            body["label_descriptions"] = self.label_descriptions
        return {**body, **extra}

    def _chunks(self, texts: Sequence[str]) -> Iterator[list[str]]:
        """Chunks of at most ``batch_size`` texts whose ``/zero-shot`` body (with ``return_embeddings``, the largest
        this scorer sends) stays within ``max_body_bytes``."""
        if not self.max_body_bytes:
            yield from super()._chunks(texts)
            return
        overhead = len(_json_bytes(self._body([], return_embeddings=True)))
        chunk: list[str] = []
        size = overhead
        for i, text in enumerate(texts):
            cost = len(_json_bytes(text)) + 1  # the text and its comma
            if overhead + cost > self.max_body_bytes:
                raise ScoringError(f"text {i} takes {cost} bytes of JSON; the service at {self.url} accepts bodies of "
                                   f"at most {self.max_body_bytes} bytes (ZSC_MAX_BODY_BYTES): shorten or split it")
            if chunk and (len(chunk) == self.batch_size or size + cost > self.max_body_bytes):
                yield chunk
                chunk, size = [], overhead
            chunk.append(text)
            size += cost
        if chunk:
            yield chunk

    def _get(self, path: str) -> dict:
        response = self._client.get(path)
        if response.status_code in (429, 503) or response.status_code >= 502:
            raise _Transient(f"GET {path}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise ScoringError(f"zero-shot service GET {path}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def _post(self, body: dict, path: str = "/zero-shot") -> dict:
        response = self._client.post(path, content=_json_bytes(body), headers={"content-type": "application/json"})
        if response.status_code in (429, 503) or response.status_code >= 500:
            raise _Transient(f"POST {path}: HTTP {response.status_code}")
        if response.status_code == 404 and path == "/embed":
            raise ScoringError(f"the service at {self.url} has no POST /embed: update it")
        if response.status_code != 200:
            try:
                problems = response.json()["detail"]
                detail = "; ".join(d.get("msg", str(d)) for d in problems)
            except (ValueError, KeyError, TypeError, AttributeError):
                problems, detail = [], response.text[:300]
            if any(isinstance(d, dict) and d.get("type") == "extra_forbidden"
                   and list(d.get("loc", []))[-1:] == ["return_embeddings"] for d in problems):
                raise _NoOneCall(detail)
            raise ScoringError(f"zero-shot service refused POST {path} (HTTP {response.status_code}): {detail}")
        return response.json()

    def _call(self, body: dict, path: str = "/zero-shot") -> dict:
        import httpx

        try:
            return self._retrying(self._post, body, path)
        except (httpx.HTTPError, _Transient) as exc:
            raise ScoringError(f"zero-shot service at {self.url} failed after retries: {exc}") from None

    def _results(self, answer: dict) -> list[list[float]]:
        self.model_id, self.engine = answer.get("model", self.model_id), answer.get("engine", self.engine)
        self.served_method = answer.get("method", self.served_method)
        return [_reorder(r["labels"], r["scores"], self.labels) for r in answer["results"]]

    def _score(self, texts: list[str]) -> list[list[float]]:
        return self._results(self._call(self._body(texts)))

    def _embed(self, texts: list[str]) -> np.ndarray:
        answer = self._call({"texts": texts}, "/embed")
        self.encoder = {"model_id": answer["model"], "fingerprint": answer["fingerprint"], "dim": answer["dim"]}
        return np.asarray(answer["embeddings"], dtype=np.float32)

    def _score_and_embed(self, texts: list[str]) -> tuple[list[list[float]], np.ndarray]:
        if self.one_call is False:
            return super()._score_and_embed(texts)
        try:
            answer = self._call(self._body(texts, return_embeddings=True))
        except _NoOneCall:
            logger.warning("the service at %s has no return_embeddings (an older version): scores and embeddings in "
                           "two requests a chunk", self.url)
            self.one_call = False
            return super()._score_and_embed(texts)
        self.one_call = True
        encoder = answer["encoder"]
        self.encoder = {"model_id": encoder["model"], "fingerprint": encoder["fingerprint"], "dim": encoder["dim"]}
        return self._results(answer), np.asarray(answer["embeddings"], dtype=np.float32)

    def close(self) -> None:
        self._client.close()


class LocalScorer(_Scorer):
    """Scores in this process with the service's engine code and methods (no HTTP).

    ``method`` (``nli``, ``embedding``, ``ensemble``, or ``auto``/``None``: the service's default policy,
    :meth:`service.config.Settings.resolve_method`) loads only the models it needs, plus the sentence encoder
    when ``embeddings`` is true (for :meth:`embed`; the embedding and ensemble methods share it).

    ``label_descriptions`` (``{label: [sentence, ...]}``) adds hypotheses to those labels
    (:func:`service.zeroshot.label_hypotheses`), as the service's ``label_descriptions`` field does.

    Raises:
        ScoringError: the model cannot be loaded.
    """

    def __init__(self, labels: Sequence[str], hypothesis_template: str, multi_label: bool = False,
                 model: str = "default", engine: str = "onnxruntime", method: str | None = None,
                 batch_size: int = 64, embeddings: bool = True,
                 label_descriptions: dict[str, list[str]] | None = None) -> None:
        super().__init__()
        from service.config import Settings
        from service.loader import load_methods

        self.labels, self.template, self.multi_label, self.method = list(labels), hypothesis_template, multi_label, method
        self.label_descriptions = label_descriptions or None
        self._options = {"label_descriptions": self.label_descriptions} if self.label_descriptions else {}
        self.batch_size = batch_size
        chosen = method or "auto"
        try:
            chosen = Settings(model=model, engine=engine).resolve_method(method, multi_label or len(self.labels) == 1)
            settings = Settings(model=model if chosen != "embedding" else "none", method=chosen, engine=engine,
                                embedding_model="default" if (chosen != "nli" or embeddings) else "none")
            self._served = load_methods(settings, embedded=True)  # not the service: its own memory budget
        except Exception as exc:  # model source, engine and config errors all end the run the same way
            raise ScoringError(f"cannot load the {chosen} method ({model!r} on {engine}): {exc}") from None
        self._method = self._served.methods[chosen]
        self.served_method = chosen
        self.model_id, self.engine = self._served.model_id(chosen), self._served.engine_name(chosen)
        encoder_model = self._served.models.get("embedding")
        if encoder_model is not None:
            self.encoder = {"model_id": encoder_model.source.model_id, "fingerprint": encoder_model.info["fingerprint"],
                            "dim": None}

    def _score(self, texts: list[str]) -> list[list[float]]:
        results = self._method(texts, self.labels, hypothesis_template=self.template, multi_label=self.multi_label,
                               **self._options)
        return [_reorder(r.labels, r.scores, self.labels) for r in results]

    def _embed(self, texts: list[str]) -> np.ndarray:
        model = self._served.models.get("embedding")
        if model is None:
            raise ScoringError("no sentence encoder loaded: build the LocalScorer with embeddings=True")
        from service.embedding import embed_texts

        vectors = embed_texts(model.classifier.encoder, texts)  # type: ignore[attr-defined]
        self.encoder = {**(self.encoder or {}), "dim": int(vectors.shape[1])}
        return vectors

    def _score_and_embed(self, texts: list[str]) -> tuple[list[list[float]], np.ndarray]:
        """One pass: :func:`service.embedding.scores_and_embeddings` (the embedding/ensemble methods' own text
        embeddings; the NLI method adds an encoder pass)."""
        from service.embedding import scores_and_embeddings

        model = self._served.models.get("embedding")
        if model is None:
            raise ScoringError("no sentence encoder loaded: build the LocalScorer with embeddings=True")
        results, vectors, _ = scores_and_embeddings(self._method, model.classifier.encoder, texts,  # type: ignore[attr-defined]
                                                    self.labels, hypothesis_template=self.template,
                                                    multi_label=self.multi_label, **self._options)
        self.encoder = {**(self.encoder or {}), "dim": int(vectors.shape[1])}
        return [_reorder(r.labels, r.scores, self.labels) for r in results], vectors

    def close(self) -> None:
        self._served.close()


def teacher_scores(texts: list[str], labels: list[str], *, template: str, multi_label: bool, url: str | None,
                   model: str, method: str | None, engine: str) -> tuple[np.ndarray, str, float]:
    """Scores of the zero-shot teacher for ``texts`` (label order of ``labels``), its agent string, and the seconds
    it spent scoring (this module: a running service over HTTP, or in-process)."""
    scorer = (HttpScorer(url, labels, template, multi_label, method=method) if url else
              LocalScorer(labels, template, multi_label, model=model, engine=engine, method=method))
    try:
        scores = scorer.score(texts)
        return scores, scorer.agent, scorer.seconds
    finally:
        scorer.close()
