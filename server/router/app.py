"""The router app: OpenAI pass-through to the replica a `Router` policy picks.

Requests are forwarded unchanged (body, headers but hop-by-hop ones); responses come back
unchanged, status and errors included, and streams are relayed chunk by chunk. The
router parses a request only to route it: if it cannot (bad JSON, a schema error), the
request still goes to a replica (by load) and the replica's error comes back. A replica
that refuses the connection is skipped for the next best one; when none answers, the
client gets a 502 in OpenAI's error shape.

With replicas of `--role prefill` and `--role decode` (server/pd.py), a completion goes
first to a prefill replica as a one-token, non-streamed call, then unchanged to a decode
replica, whose answer the client gets; a failed prefill call only means the decode
replica computes the prompt itself.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server.prompt import chat_prompt_ids, completion_prompt_ids
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.router.config import RouterConfig
from server.router.policy import Decision, Router, RouteRequest
from server.router.replica import InFlight, Replica, discover

logger = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailers", "transfer-encoding", "upgrade", "host", "content-length",
        "content-encoding",
    }
)  # fmt: skip


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def route_request(path: str, body: bytes, replica: Replica) -> RouteRequest:
    """The routing view of a request (token_ids None when it cannot be tokenized)."""
    try:
        data = json.loads(body)
        tok = replica.tokenizer
        if tok is None:
            raise ValueError("no tokenizer")
        if path.endswith("chat/completions"):
            chat = ChatCompletionRequest.model_validate(data)
            ids = chat_prompt_ids(tok, chat.messages, chat.add_special_tokens)
            salt, max_tokens = chat.cache_salt, chat.requested_max_tokens()
        else:
            cmpl = CompletionRequest.model_validate(data)
            ids = completion_prompt_ids(tok, cmpl.prompt, cmpl.add_special_tokens)
            salt, max_tokens = cmpl.cache_salt, cmpl.requested_max_tokens()
        return RouteRequest(list(ids), salt, max_tokens or 16)
    except Exception:  # anything unroutable goes by load; the replica judges it
        return RouteRequest(None, None, 16)


def prefill_request_body(body: bytes) -> bytes | None:
    """`body` made a prefill call: one output token, no stream (None: not a JSON object;
    the decode replica will answer with the error)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    data["max_tokens"] = 1
    if data.get("max_completion_tokens") is not None:
        data["max_completion_tokens"] = 1
    data["stream"] = False
    for name in ("stream_options", "min_tokens"):
        data.pop(name, None)
    return json.dumps(data).encode()


@dataclass(slots=True)
class FirstTokenWatch:
    """Tells, chunk by chunk, whether a relayed response has reached its first output
    token, the end of the replica's prefill for that request.

    A chat stream opens with a role-only event that a replica may send before its
    prefill (tierkv does), so there the first token is the second SSE event; in a
    completion stream it is the first. Any other response (JSON) arrives whole.
    """

    token_event: int  # the SSE event (1-based) that carries the first token; 0: not SSE
    _seen: int = 0
    _tail: bytes = b""

    @classmethod
    def for_response(cls, path: str, content_type: str | None) -> FirstTokenWatch:
        if not (content_type or "").startswith("text/event-stream"):
            return cls(0)
        return cls(2 if path.endswith("chat/completions") else 1)

    def feed(self, chunk: bytes) -> bool:
        """Take the next raw chunk; True once the first token has arrived."""
        if self.token_event == 0:
            return True
        # "data:" may straddle two chunks: count over the previous chunk's last 4 bytes
        # (too short to hold one) plus this one.
        data = self._tail + chunk
        self._seen += data.count(b"data:")
        self._tail = data[-4:]
        return self._seen >= self.token_event


class Proxy:
    """Forwards requests; owns the HTTP client and the in-flight bookkeeping."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.replicas = [Replica(url.rstrip("/")) for url in config.replicas]
        self.router = Router(self.replicas, config.policy, config.overlap_weight, config.seed)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.request_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )
        self._ids = itertools.count()
        # P/D: prefill calls made, failed, and the time spent waiting for them.
        self.num_prefills = 0
        self.num_prefill_failures = 0
        self.prefill_seconds = 0.0

    async def start(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        for replica in self.replicas:
            while True:
                try:
                    if (await self.client.get(f"{replica.url}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {replica.url} did not become healthy")
                await asyncio.sleep(0.2)
            await discover(self.client, replica, self.config.model_cache_dir)

    async def close(self) -> None:
        await self.client.aclose()
        for replica in self.replicas:
            await asyncio.to_thread(replica.close)

    async def forward(self, request: Request, path: str) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        # Tokenize with the first replica's tokenizer: the policy compares replicas that
        # share a model (a replica with another numerics id just shows no overlap).
        probe = next((r for r in self.replicas if r.tokenizer is not None), self.replicas[0])
        # Parsing, validating and tokenizing take milliseconds for a long prompt: off the
        # event loop, so other requests' streams keep flowing.
        routed = await asyncio.to_thread(route_request, path, body, probe)
        prefill = self._urls("prefill")
        decode = self._urls("decode")
        if prefill and decode and request.method == "POST" and path.endswith("completions"):
            # P/D disaggregation (server/pd.py): the prompt's KV reaches the shared pool
            # through a prefill replica, then a decode replica generates.
            await self._prefill(path, body, headers, routed, prefill)
            allowed = decode
        else:
            allowed = self._urls("both", "decode") or self._urls("both", "decode", "prefill")
        tried = {r.url for r in self.replicas if r.url not in allowed}
        while True:
            decision = self.router.pick(routed, frozenset(tried))
            replica = decision.replica
            tried.add(replica.url)
            key = next(self._ids)
            replica.in_flight[key] = _in_flight(decision, routed)
            replica.num_routed += 1
            upstream = self.client.build_request(
                request.method,
                f"{replica.url}/{path}",
                content=body,
                headers=headers,
                params=request.query_params,
            )
            try:
                response = await self.client.send(upstream, stream=True)
            except httpx.TransportError as exc:
                replica.in_flight.pop(key, None)
                replica.num_routed -= 1
                logger.warning("replica %s failed: %s", replica.url, exc)
                if allowed <= tried:
                    return _error(502, f"no replica answered: {exc}", "bad_gateway")
                continue
            return self._relay(response, replica, key, path)

    def _urls(self, *roles: str) -> set[str]:
        return {r.url for r in self.replicas if r.role in roles}

    async def _prefill(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        routed: RouteRequest,
        urls: set[str],
    ) -> None:
        """Run the prompt on a prefill replica (`max_tokens` 1) and wait for its answer,
        which comes once its KV is in the shared pool. Failures are only logged: the
        decode replica then computes what it does not find."""
        prefill_body = prefill_request_body(body)
        if prefill_body is None:
            return
        exclude = frozenset(r.url for r in self.replicas if r.url not in urls)
        decision = self.router.pick(routed, exclude)
        replica = decision.replica
        key = next(self._ids)
        one = RouteRequest(routed.token_ids, routed.cache_salt, 1)
        replica.in_flight[key] = _in_flight(decision, one)
        replica.num_routed += 1
        started = time.perf_counter()
        ok = False
        try:
            response = await self.client.post(
                f"{replica.url}/{path}", content=prefill_body, headers=headers
            )
            ok = response.status_code == 200
            if not ok:
                logger.info("prefill on %s answered %d", replica.url, response.status_code)
        except httpx.HTTPError as exc:
            # No answer: not routed there (as `forward` does for a refused connection).
            replica.num_routed -= 1
            logger.warning("prefill on %s failed: %s", replica.url, exc)
        finally:
            replica.in_flight.pop(key, None)
        self.num_prefills += 1
        self.num_prefill_failures += 0 if ok else 1
        self.prefill_seconds += time.perf_counter() - started

    def _relay(
        self, response: httpx.Response, replica: Replica, key: int, path: str
    ) -> StreamingResponse:
        headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
        watch = FirstTokenWatch.for_response(path, response.headers.get("content-type"))

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    flight = replica.in_flight.get(key)
                    if flight is not None and flight.is_prefilling and watch.feed(chunk):
                        flight.is_prefilling = False
                    yield chunk
            finally:
                replica.in_flight.pop(key, None)
                await response.aclose()

        return StreamingResponse(
            body(),
            status_code=response.status_code,
            headers=headers,
            media_type=response.headers.get("content-type"),
        )

    def stats(self) -> dict[str, Any]:
        return {
            "policy": self.router.policy,
            "pd": {
                "prefills": self.num_prefills,
                "prefill_failures": self.num_prefill_failures,
                "prefill_seconds_total": round(self.prefill_seconds, 6),
            },
            "replicas": [
                {
                    "url": r.url,
                    "role": r.role,
                    "cache_aware": r.is_cache_aware,
                    "routed": r.num_routed,
                    "in_flight": len(r.in_flight),
                    "events_last_seq": None if r.events is None else r.events.last_seq,
                    "blocks": None
                    if r.events is None
                    else {t.value: n for t, n in r.events.counts().items()},
                }
                for r in self.replicas
            ],
        }


def _in_flight(decision: Decision, routed: RouteRequest) -> InFlight:
    size = decision.replica.block_size or 16
    num_blocks = decision.num_prompt_blocks + -(-routed.max_tokens // size)
    return InFlight(num_blocks, decision.num_prompt_blocks - decision.num_cached_blocks)


def build_router_app(config: RouterConfig) -> FastAPI:
    """A new router app for `config`; the proxy lives on `app.state.proxy`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        proxy = Proxy(config)
        app.state.proxy = proxy
        try:
            await proxy.start()
            yield
        finally:
            await proxy.close()

    app = FastAPI(title="tierkv router", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/router/stats")
    async def router_stats(request: Request) -> dict[str, Any]:
        return request.app.state.proxy.stats()

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST"])
    async def openai(rest: str, request: Request) -> Response:
        return await request.app.state.proxy.forward(request, f"v1/{rest}")

    return app
