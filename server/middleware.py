"""HTTP guards in front of the routes: API-key authentication, a request body limit, and
JSON parsing of large bodies off the event loop.

Both middlewares are plain ASGI (no `BaseHTTPMiddleware`, which would buffer streamed
responses) and answer in OpenAI's error form. Order, outermost first: authentication
(an unauthenticated client's body is never read), then the body limit.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError, error_response
from server.metrics import ServerMetrics

# Bodies above this are parsed in a worker thread (see _parse_json_off_loop).
JSON_THREAD_THRESHOLD_BYTES = 256 * 1024

# Paths that need the API key when one is set. /health and /metrics stay open (as in vLLM).
PROTECTED_PREFIXES = ("/v1/", "/cache/")


def count_rejection(scope: Scope, reason: str) -> None:
    """Count a refused request in `tierkv:request_rejected_total{reason}`."""
    metrics: ServerMetrics | None = getattr(scope["app"].state, "metrics", None)
    if metrics is not None:
        metrics.request_rejected.labels(reason).inc()


class ApiKeyMiddleware:
    """Requires `Authorization: Bearer <key>` with one of `keys` on protected paths.

    A missing or wrong key gets a 401 (`invalid_api_key`). Keys are compared in constant
    time and never logged or echoed back.
    """

    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        self._keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is not None and any(hmac.compare_digest(token, k) for k in self._keys):
            await self.app(scope, receive, send)
            return
        count_rejection(scope, "unauthorized")
        message = (
            "Incorrect API key provided."
            if token is not None
            else "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        )
        error = APIError(
            401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
        await error_response(error)(scope, receive, send)


def bearer_token(scope: Scope) -> bytes | None:
    """The bearer token of a request, as sent (bytes), or None if there is none."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with a 413, before the app sees them.

    A declared Content-Length over the limit is refused without buffering a byte; a
    chunked body is refused as soon as it passes the limit. Most clients write their
    whole body before reading the answer, so the rest of a refused body is read and
    discarded (never stored) up to `DISCARD_LIMIT_BYTES` first, letting them see the 413
    instead of a reset connection; beyond that, or with `Expect: 100-continue`, the 413
    goes out at once and the connection closes. Accepted bodies are buffered and replayed
    to the app in one message (the routes read whole bodies anyway); later `receive()`
    calls (disconnect detection) go to the server as usual.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header_int(scope, b"content-length")
        if declared is not None and declared > self.max_bytes:
            if declared <= DISCARD_LIMIT_BYTES and not _header(scope, b"expect"):
                await _discard(receive, DISCARD_LIMIT_BYTES)
            await self._refuse(scope, receive, send, f"{declared} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its whole body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    chunks.clear()
                    await _discard(receive, DISCARD_LIMIT_BYTES - size)
                await self._refuse(scope, receive, send, "more than that")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, got: str) -> None:
        count_rejection(scope, "body_too_large")
        error = APIError(
            413,
            f"Request body too large: the limit is {self.max_bytes} bytes "
            f"(--max-request-body-bytes), got {got}.",
            code="request_too_large",
            headers={"Connection": "close"},
        )
        await error_response(error)(scope, receive, send)


# How much of a refused body is read (and dropped) so that the client gets to read the 413.
DISCARD_LIMIT_BYTES = 64 * 1024**2


async def _discard(receive: Receive, budget: int) -> None:
    """Read and drop body messages until the body ends, the client leaves, or `budget`
    bytes have been dropped."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _header_int(scope: Scope, name: bytes) -> int | None:
    value = _header(scope, name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # the server rejects a malformed length itself


def _parse_json_off_loop(body: bytes) -> Any:
    """json.loads for a worker thread, parsing numbers through a Python function.

    A plain json.loads is one C call that holds the GIL throughout, so a thread alone
    does not free the loop (7 MiB of token ids: the loop stalled 268 ms of a 277 ms
    parse). Calling back into Python per number lets the interpreter hand the GIL to the
    loop every switch interval: the same parse took 1.08 s, but the loop never waited
    more than 13 ms. Strings are still scanned in C; the body limit bounds them.
    """
    return json.loads(body, parse_int=_int, parse_float=_float)


def _int(text: str) -> int:
    return int(text)


def _float(text: str) -> float:
    return float(text)


class _OffloadedJSONRequest(Request):
    """A request whose JSON body is parsed in a worker thread when it is large."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) > JSON_THREAD_THRESHOLD_BYTES:
                self._json = await asyncio.to_thread(_parse_json_off_loop, body)
            else:
                self._json = json.loads(body)
        return self._json


class OffloadedJSONRoute(APIRoute):
    """FastAPI route class that hands its handler an `_OffloadedJSONRequest`.

    FastAPI parses the body with `await request.json()`, so this is where parsing moves
    off the loop; validation and error handling stay FastAPI's.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def offloaded(request: Request) -> Response:
            return await handler(_OffloadedJSONRequest(request.scope, request.receive))

        return offloaded
