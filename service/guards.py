"""HTTP protections in front of the endpoints: an optional API key, a bound on concurrent requests, a body limit.

All are plain ASGI middlewares (Starlette's ``app.add_middleware``) answering before a request reaches its route
or its body is read. (FastAPI's own ``max_body_size`` answers a too-long ``Content-Length`` with a fixed plain
"Content Too Large" that no handler can replace; the operator needs the limit's name and value.)
"""

from __future__ import annotations

import hmac

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
    calls are coroutines on one thread), so it needs no lock.
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
    """Answer 413 to a request whose body is over ``max_bytes``: at once when its ``Content-Length`` says so, and
    otherwise as soon as the bytes received pass the limit (a chunked body, or one longer than announced), so no
    more than ``max_bytes`` (plus one network read) is ever held.

    The count happens in ``receive``: the route's body read raises an :class:`HTTPException` 413 there, which
    FastAPI answers with its ``detail``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.detail = (f"the request body is over the limit of {max_bytes} bytes (ZSC_MAX_BODY_BYTES): send fewer "
                       "or shorter texts per request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, detail=self.detail)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except HTTPException as exc:  # raised where no exception handler answers it
            if exc.status_code != 413 or started:
                raise
            await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
