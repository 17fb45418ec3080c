"""HTTP protections in front of the endpoints: an optional API key, a bound on a request's body (size and time), a
bound on concurrent requests; and the one check of the limits on texts and labels that every endpoint taking texts
runs (:func:`check_limits`).

The protections are plain ASGI middlewares (Starlette's ``app.add_middleware``) answering before a request reaches
its route. (FastAPI's own ``max_body_size`` answers a too-long ``Content-Length`` with a fixed plain "Content Too
Large" that no handler can replace; the operator needs the limit's name and value.) Their order, outermost first:
the key (:class:`BearerAuth`), the body (:class:`BodyLimit`: read whole, within its size and deadline), then a
concurrency slot (:class:`ConcurrencyLimit`), so a slow upload never holds a slot that others wait for.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Probes answer without a key and whatever the load: orchestrators must see liveness and readiness.
OPEN_PATHS = frozenset({"/health", "/ready"})


class BearerAuth:
    """Require ``Authorization: Bearer <api_key>`` on every path but :data:`OPEN_PATHS` (RFC 6750).

    The key is compared with :func:`hmac.compare_digest` (time independent of where the keys differ). A request
    without a valid key gets 401 with a ``WWW-Authenticate: Bearer`` header and a message saying what to send.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key:
            raise ValueError("api_key is empty")
        self.app, self._key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = Headers(scope=scope).get("authorization")
        scheme, _, token = (header or "").partition(" ")
        if header is None or scheme.lower() != "bearer":
            detail = ("this service needs an API key: send the header 'Authorization: Bearer <key>' "
                      "(the key is the service's ZSC_API_KEY)")
            challenge = 'Bearer realm="zeroshot-preannotate"'
        elif not hmac.compare_digest(token.strip().encode(), self._key):
            detail = "the API key in 'Authorization: Bearer <key>' is not this service's ZSC_API_KEY"
            challenge = 'Bearer realm="zeroshot-preannotate", error="invalid_token"'
        else:
            return await self.app(scope, receive, send)
        response = JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)


class ConcurrencyLimit:
    """Answer 429 with ``Retry-After`` when ``limit`` requests are already in progress.

    ``exempt`` paths (probes, metrics) are neither counted nor refused. The counter lives on the event loop (ASGI
    calls are coroutines on one thread), so it needs no lock. Placed inside :class:`BodyLimit`, a request takes its
    slot once its body has arrived whole.
    """

    def __init__(self, app: ASGIApp, limit: int, exempt: frozenset[str] = OPEN_PATHS | {"/metrics"},
                 retry_after_s: int = 1) -> None:
        self.app, self.limit, self.exempt, self.retry_after_s = app, limit, exempt, retry_after_s
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            response = JSONResponse(
                {"detail": f"too many requests in progress: {self.active} (limit {self.limit}, "
                           f"ZSC_MAX_CONCURRENT_REQUESTS); retry after {self.retry_after_s} s"},
                status_code=429, headers={"Retry-After": str(self.retry_after_s)})
            return await response(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class BodyLimit:
    """Read each request's whole body before the app sees it: at most ``max_bytes`` bytes, within ``timeout_s``.

    - A ``Content-Length`` over ``max_bytes`` gets 413 at once, unread; a body that passes ``max_bytes`` as it
      arrives (chunked, or longer than announced) gets 413 as soon as it does, so no more than ``max_bytes`` (plus
      one network read) is ever held.
    - A body not complete ``timeout_s`` seconds after the request's head arrived gets 408 Request Timeout (RFC 9110
      section 15.5.9), however slowly it trickles: a slow upload ties up its connection, never a concurrency slot
      or the app.
    - A client that disconnects while sending gets no answer (there is no one to read it).

    A 408 closes the connection (``Connection: close``, as RFC 9110 asks); a 413 keeps it, so the server discards
    the rest of the body as it arrives and a client that sends the whole body before it reads (most do) gets the
    413 rather than a reset connection. The app receives the body as one ``http.request`` message; later
    ``receive`` calls go to the server (a disconnect).

    Raises:
        ValueError: ``max_bytes`` < 1 or ``timeout_s`` <= 0.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        if max_bytes < 1 or timeout_s <= 0:
            raise ValueError(f"max_bytes must be >= 1 and timeout_s > 0, got {max_bytes} and {timeout_s}")
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.too_large = (f"the request body is over the limit of {max_bytes} bytes (ZSC_MAX_BODY_BYTES): send fewer "
                          "or shorter texts per request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(413, self.too_large, scope, receive, send)
        chunks: list[bytes] = []
        try:
            received = await asyncio.wait_for(self._read(receive, chunks), self.timeout_s)
        except TimeoutError:
            got = sum(map(len, chunks))
            announced = f" of {length} announced" if length is not None and length.isdigit() else ""
            return await self._refuse(408, f"the request body was not complete {self.timeout_s:g} s after the request "
                                      f"began ({got} bytes{announced} received; ZSC_BODY_TIMEOUT_S): send the "
                                      "whole body at once", scope, receive, send)
        if received is None:  # the client left
            return None
        if received > self.max_bytes:
            return await self._refuse(413, self.too_large, scope, receive, send)
        body, replayed = b"".join(chunks), False
        chunks.clear()

        async def replay() -> Message:
            nonlocal replayed, body
            if replayed:
                return await receive()
            replayed, message = True, {"type": "http.request", "body": body, "more_body": False}
            body = b""
            return message

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive, chunks: list[bytes]) -> int | None:
        """Append the body's parts to ``chunks`` until it is complete or over the limit; its size, or None when the
        client disconnected."""
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            part = message.get("body", b"")
            size += len(part)
            if size > self.max_bytes:
                return size
            if part:
                chunks.append(part)
            if not message.get("more_body", False):
                return size

    @staticmethod
    async def _refuse(status: int, detail: str, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": detail}, status_code=status,
                                headers={"Connection": "close"} if status == 408 else None)
        await response(scope, receive, send)


def limit_problems(settings, texts: Sequence[str], *, labels: Sequence[str] | None = None,
                   method: str | None = None, descriptions: int = 0) -> list[dict]:
    """The request limits a request breaks, as pydantic-shaped 422 errors (``type`` ``limit_exceeded``, ``loc``,
    ``msg`` naming the setting and what to do); empty when it breaks none.

    The one check of every endpoint that takes texts (``/zero-shot``, ``/embed``, ``/classify``): at most
    ``settings.max_texts`` texts, none over ``settings.max_text_chars`` characters, and with ``labels`` at most
    ``settings.max_labels`` (``method`` nli or ensemble) or ``settings.max_labels_embedding`` (embedding) labels.

    Args:
        settings: the service's :class:`service.config.Settings`.
        texts: the request's texts.
        labels: the request's candidate labels, for endpoints that take them.
        method: the method serving the request (resolved, not ``auto``), when ``labels`` is given.
        descriptions: label descriptions of the request: each is one more hypothesis and counts as a label.
    """
    problems = []
    if len(texts) > settings.max_texts:
        problems.append((["body", "texts"], f"{len(texts)} texts exceed the limit of {settings.max_texts} per request "
                         "(ZSC_MAX_TEXTS): split them into several requests"))
    if labels is not None:
        max_labels = settings.max_labels_embedding if method == "embedding" else settings.max_labels
        hint = (" (ZSC_MAX_LABELS_EMBEDDING)" if method == "embedding" else f" with the {method} method "
                f"(ZSC_MAX_LABELS; the embedding method takes up to {settings.max_labels_embedding})")
        if len(labels) + descriptions > max_labels:
            counted = (f"{len(labels)} labels and {descriptions} label descriptions (each counts as a label)"
                       if descriptions else f"{len(labels)} labels")
            problems.append((["body", "labels"], f"{counted} exceed the limit of {max_labels} per request{hint}"))
    too_long = next((i for i, text in enumerate(texts) if len(text) > settings.max_text_chars), None)
    if too_long is not None:
        problems.append((["body", "texts", too_long], f"texts[{too_long}] has {len(texts[too_long])} characters, over "
                         f"the limit of {settings.max_text_chars} (ZSC_MAX_TEXT_CHARS): send the part to classify, "
                         "or split it into several texts"))
    return [{"type": "limit_exceeded", "loc": loc, "msg": msg} for loc, msg in problems]


def check_limits(settings, texts: Sequence[str], *, labels: Sequence[str] | None = None,
                 method: str | None = None, descriptions: int = 0) -> None:
    """:func:`limit_problems`, raised as one 422 listing them all.

    Raises:
        HTTPException: 422, ``detail`` the list of problems, when there is any.
    """
    problems = limit_problems(settings, texts, labels=labels, method=method, descriptions=descriptions)
    if problems:
        raise HTTPException(422, detail=problems)
