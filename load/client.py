"""Streaming OpenAI-compatible requests, timed chunk by chunk.

``stream_request`` never raises for a failed request: the returned record carries the
HTTP status (0 if no response arrived) and an error message.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from load.stats import RequestRecord
from load.workloads import Api


class ServerUnreachableError(RuntimeError):
    """The server did not answer at all (refused, DNS, timeout) or answered nonsense."""


@dataclass(slots=True, frozen=True)
class ClientOptions:
    base_url: str
    model: str
    ignore_eos: bool = True
    temperature: float = 0.0
    timeout_s: float = 600.0
    api_key: str | None = None


def root_url(base_url: str) -> str:
    """The server root of ``http://h:p`` or ``http://h:p/v1`` (for /metrics, /cache/...)."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def api_url(base_url: str, path: str) -> str:
    """``http://h:p`` and ``http://h:p/v1`` both address ``http://h:p/v1/<path>``."""
    return f"{root_url(base_url)}/v1/{path.lstrip('/')}"


def make_client(timeout_s: float = 600.0, api_key: str | None = None) -> httpx.AsyncClient:
    """An async client without a connection cap: open-loop arrivals must not queue in
    the pool, or the client's own queueing would show up as TTFT."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        headers=headers,
    )


async def first_model_id(client: httpx.AsyncClient, base_url: str) -> str:
    """The first id listed by ``GET /v1/models``; ServerUnreachableError otherwise."""
    url = api_url(base_url, "models")
    try:
        resp = await client.get(url, timeout=10.0)
    except httpx.HTTPError as exc:
        raise ServerUnreachableError(f"cannot reach {url}: {exc!r}") from exc
    if resp.status_code != 200:
        raise ServerUnreachableError(f"GET {url} returned HTTP {resp.status_code}")
    try:
        return str(resp.json()["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ServerUnreachableError(f"GET {url}: no model listed ({resp.text[:200]!r})") from exc


def request_body(
    opts: ClientOptions, api: Api, prompt_or_messages: str | list[dict[str, str]], max_tokens: int
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": opts.model,
        "max_tokens": max_tokens,
        "temperature": opts.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if api is Api.CHAT:
        body["messages"] = prompt_or_messages
    else:
        body["prompt"] = prompt_or_messages
    if opts.ignore_eos:
        body["ignore_eos"] = True
    return body


async def stream_request(
    client: httpx.AsyncClient,
    opts: ClientOptions,
    api: Api,
    prompt_or_messages: str | list[dict[str, str]],
    max_tokens: int,
    index: int,
    t0: float,
) -> RequestRecord:
    """Send one streaming request; times in the record are relative to ``t0``
    (a ``time.perf_counter()`` value)."""
    path = "chat/completions" if api is Api.CHAT else "completions"
    body = request_body(opts, api, prompt_or_messages, max_tokens)
    record = RequestRecord(index=index, start_s=time.perf_counter() - t0)
    pieces: list[str] = []
    try:
        async with client.stream("POST", api_url(opts.base_url, path), json=body) as resp:
            record.status = resp.status_code
            if resp.status_code != 200:
                raw = await resp.aread()
                record.error = _error_message(raw.decode(errors="replace"))
            else:
                await _consume_stream(resp, record, pieces, t0)
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # malformed chunk
        record.error = f"bad stream chunk: {exc!r}"
    record.end_s = time.perf_counter() - t0
    record.text = "".join(pieces)
    if record.is_ok and not record.output_tokens:
        record.output_tokens = len(record.chunk_times_s)
    return record


async def _consume_stream(
    resp: httpx.Response, record: RequestRecord, pieces: list[str], t0: float
) -> None:
    finished = False
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            finished = True
            break
        chunk = json.loads(data)
        if "error" in chunk:
            record.error = f"error in stream: {_error_message(json.dumps(chunk))}"
            return
        now = time.perf_counter() - t0
        for choice in chunk.get("choices") or ():
            text = choice.get("text")
            if text is None:
                text = (choice.get("delta") or {}).get("content")
            if text:
                if record.ttft_s is None:
                    record.ttft_s = now - record.start_s
                record.chunk_times_s.append(now)
                pieces.append(text)
        usage = chunk.get("usage")
        if usage:
            record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            record.output_tokens = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            record.cached_tokens = int(details.get("cached_tokens") or 0)
    if not finished:
        record.error = "stream ended without [DONE]"
    elif record.ttft_s is None:
        record.error = "stream finished without any content"


def _error_message(raw: str) -> str:
    """The ``message`` of an OpenAI error body, else the start of the raw text."""
    try:
        obj = json.loads(raw)
        err = obj.get("error", obj)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)[:500]
        return str(obj.get("detail") or err)[:500]
    except (ValueError, AttributeError):
        return raw[:500]
