"""`X-Request-Id`: echo the client's (or make one) on every response.

A pure ASGI middleware (streams pass through untouched): it reads the request's
`X-Request-Id` header, or makes a random hex id, keeps it in the request's state for the
handlers (`request_id_of`) and adds it to the response headers. Completion ids are built
from it (`chatcmpl-<id>`, `cmpl-<id>`), as vLLM does.
"""

from __future__ import annotations

import uuid

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
MAX_LENGTH = 256  # longer client ids are replaced (they end up in every log and id)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope.get("headers", ()):
            if name == HEADER.encode():
                request_id = value.decode("latin-1").strip()
                break
        if not request_id or len(request_id) > MAX_LENGTH or not request_id.isprintable():
            request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != HEADER.encode()]
                headers.append((HEADER.encode(), request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_id_of(request: Request) -> str:
    """The request's id (set by the middleware; a fresh one if it did not run)."""
    return str(getattr(request.state, "request_id", None) or uuid.uuid4().hex)
