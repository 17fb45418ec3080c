"""The one place that turns texts into teacher score vectors: over HTTP or in-process.

* :class:`HttpScorer` calls a running zero-shot service (``POST /zero-shot``) with httpx, retrying
  transient failures (connection errors, 5xx, 503 while the model loads) with exponential backoff (tenacity).
* :class:`LocalScorer` loads the same engine code and methods in this process (``service.loader.load_methods``).

Both return scores of shape ``(n_texts, n_labels)`` with columns in the order of the labels given at
construction (the service sorts each result by score; this module puts them back in label order), and
count ``seconds``: the time spent in scoring calls (HTTP round trips, or the in-process classifier).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

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
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            began = time.perf_counter()
            out.extend(self._score(chunk))
            self.seconds += time.perf_counter() - began
            self.texts_scored += len(chunk)
        return np.asarray(out, dtype=np.float64).reshape(len(texts), len(self.labels))

    def _score(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError

    #: The sentence encoder behind :meth:`embed`: ``{"model_id", "fingerprint", "dim"}`` (set on first use).
    encoder: dict | None = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length sentence embeddings ``(len(texts), dim)`` float32 from the served sentence encoder, in chunks
        of ``batch_size``; the time counts in ``seconds``.

        Raises:
            ScoringError: no sentence encoder is served, or it failed.
        """
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
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


class HttpScorer(_Scorer):
    """Scores through a running service. ``method`` is sent only when given (else the service's default applies).

    Construction waits for ``GET /ready`` (retrying while it is 503 or unreachable) and reads the service's
    ``max_texts`` limit from ``GET /info`` to size requests.

    Raises:
        ScoringError: the service stays unreachable, failed to load its model, or refuses the request.
    """

    def __init__(self, url: str, labels: Sequence[str], hypothesis_template: str, multi_label: bool = False,
                 method: str | None = None, timeout: float = 300.0, max_attempts: int = 6,
                 max_wait: float = 20.0, ready_timeout: float = 300.0) -> None:
        import httpx
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential

        super().__init__()
        self.url = url.rstrip("/")
        self.labels, self.template, self.multi_label, self.method = list(labels), hypothesis_template, multi_label, method
        self._client = httpx.Client(base_url=self.url, timeout=timeout)
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
        self.batch_size = int(info.get("limits", {}).get("max_texts", 64))

    def _get(self, path: str) -> dict:
        response = self._client.get(path)
        if response.status_code in (429, 503) or response.status_code >= 502:
            raise _Transient(f"GET {path}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise ScoringError(f"zero-shot service GET {path}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def _post(self, body: dict) -> dict:
        response = self._client.post("/zero-shot", json=body)
        if response.status_code in (429, 503) or response.status_code >= 500:
            raise _Transient(f"POST /zero-shot: HTTP {response.status_code}")
        if response.status_code != 200:
            try:
                detail = "; ".join(d.get("msg", str(d)) for d in response.json()["detail"])
            except (ValueError, KeyError, TypeError, AttributeError):
                detail = response.text[:300]
            raise ScoringError(f"zero-shot service refused the request (HTTP {response.status_code}): {detail}")
        return response.json()

    def _score(self, texts: list[str]) -> list[list[float]]:
        import httpx

        body = {"texts": texts, "labels": self.labels, "hypothesis_template": self.template,
                "multi_label": self.multi_label}
        if self.method is not None:
            body["method"] = self.method
        try:
            answer = self._retrying(self._post, body)
        except (httpx.HTTPError, _Transient) as exc:
            raise ScoringError(f"zero-shot service at {self.url} failed after retries: {exc}") from None
        self.model_id, self.engine = answer.get("model", self.model_id), answer.get("engine", self.engine)
        self.served_method = answer.get("method", self.served_method)
        return [_reorder(r["labels"], r["scores"], self.labels) for r in answer["results"]]

    def _post_embed(self, body: dict) -> dict:
        response = self._client.post("/embed", json=body)
        if response.status_code in (429, 503) or response.status_code >= 500:
            raise _Transient(f"POST /embed: HTTP {response.status_code}")
        if response.status_code == 404:
            raise ScoringError(f"the service at {self.url} has no POST /embed: update it")
        if response.status_code != 200:
            raise ScoringError(f"zero-shot service refused POST /embed (HTTP {response.status_code}): "
                               f"{response.text[:300]}")
        return response.json()

    def _embed(self, texts: list[str]) -> np.ndarray:
        import httpx

        try:
            answer = self._retrying(self._post_embed, {"texts": texts})
        except (httpx.HTTPError, _Transient) as exc:
            raise ScoringError(f"zero-shot service at {self.url} failed after retries: {exc}") from None
        self.encoder = {"model_id": answer["model"], "fingerprint": answer["fingerprint"], "dim": answer["dim"]}
        return np.asarray(answer["embeddings"], dtype=np.float32)

    def close(self) -> None:
        self._client.close()


class LocalScorer(_Scorer):
    """Scores in this process with the service's engine code and methods (no HTTP).

    ``method`` (``nli``, ``embedding``, ``ensemble``, or ``auto``/``None``: the service's default policy,
    :meth:`service.config.Settings.resolve_method`) loads only the models it needs, plus the sentence encoder
    when ``embeddings`` is true (for :meth:`embed`; the embedding and ensemble methods share it).

    Raises:
        ScoringError: the model cannot be loaded.
    """

    def __init__(self, labels: Sequence[str], hypothesis_template: str, multi_label: bool = False,
                 model: str = "default", engine: str = "onnxruntime", method: str | None = None,
                 batch_size: int = 64, embeddings: bool = True) -> None:
        super().__init__()
        from service.config import Settings
        from service.loader import load_methods

        self.labels, self.template, self.multi_label, self.method = list(labels), hypothesis_template, multi_label, method
        self.batch_size = batch_size
        chosen = method or "auto"
        try:
            chosen = Settings(model=model, engine=engine).resolve_method(method, multi_label or len(self.labels) == 1)
            settings = Settings(model=model if chosen != "embedding" else "none", method=chosen, engine=engine,
                                embedding_model="default" if (chosen != "nli" or embeddings) else "none")
            self._served = load_methods(settings)
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
        results = self._method(texts, self.labels, hypothesis_template=self.template, multi_label=self.multi_label)
        return [_reorder(r.labels, r.scores, self.labels) for r in results]

    def _embed(self, texts: list[str]) -> np.ndarray:
        model = self._served.models.get("embedding")
        if model is None:
            raise ScoringError("no sentence encoder loaded: build the LocalScorer with embeddings=True")
        vectors = model.classifier.encoder.encode(texts)  # type: ignore[attr-defined]
        self.encoder = {**(self.encoder or {}), "dim": int(vectors.shape[1])}
        return vectors

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
