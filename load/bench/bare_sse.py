"""A bare OpenAI-style SSE server: the floor for ``bench overhead``.

It streams ``max_tokens`` one-character chunks per request with no model, no engine
and no validation beyond reading the JSON body, in the same chunk format as tierkv
(including the usage chunk), so the load client treats it like any server. Start it
with ``uvicorn --factory load.bench.bare_sse:build_app``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

MODEL_ID = "bare-sse"


def _chunks(kind: str, body: dict[str, Any]) -> AsyncIterator[str]:
    max_tokens = int(body.get("max_tokens") or 16)
    if kind == "chat":
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
    else:
        prompt_tokens = len(str(body.get("prompt", "")))
    created = int(time.time())
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        payload: dict[str, Any] = {
            "id": "bare",
            "object": obj,
            "created": created,
            "model": MODEL_ID,
            "choices": choices,
        }
        if usage is not None:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    async def gen() -> AsyncIterator[str]:
        for i in range(max_tokens):
            finish = "length" if i == max_tokens - 1 else None
            if kind == "chat":
                choice = {"index": 0, "delta": {"content": "a"}, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": "a", "finish_reason": finish}
            yield event([choice])
        yield event(
            [],
            {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": max_tokens,
                "total_tokens": prompt_tokens + max_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        )
        yield "data: [DONE]\n\n"

    return gen()


def build_app() -> FastAPI:
    app = FastAPI(title="bare SSE")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> StreamingResponse:
        return StreamingResponse(
            _chunks("completions", await request.json()), media_type="text/event-stream"
        )

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        return StreamingResponse(
            _chunks("chat", await request.json()), media_type="text/event-stream"
        )

    return app
