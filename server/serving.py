"""Chat and text completions: validation, request building, JSON and SSE responses."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from cache.block_hash import root_hash
from cache.layout import LAYOUT_VERSION
from npu_sim.sampling import Sampler
from npu_sim.tokenizers import Tokenizer
from server.config import TenantIsolation
from server.engine.async_engine import (
    AsyncEngine,
    EngineDeadError,
    QueueFullError,
    RequestStream,
)
from server.engine.request import EngineRequest
from server.errors import APIError
from server.metrics import ServerMetrics
from server.middleware import bearer_token
from server.prompt import chat_prompt_ids, completion_prompt_ids
from server.protocol import ChatCompletionRequest, CompletionRequest, _Sampling
from server.request_id import request_id_of
from server.sampling_params import build_sampling_params, check_supported, truncate_prompt
from server.tenancy import cache_salt_for

# How often a non-streaming request checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.5


@dataclass(slots=True)
class _Result:
    text: str = ""
    finish_reason: str = "length"
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    num_prompt_tokens: int = 0


class OpenAIServing:
    """The logic behind /v1/chat/completions and /v1/completions."""

    def __init__(
        self,
        engine: AsyncEngine,
        model_name: str,
        max_model_len: int,
        numerics_id: str,
        tokenizer: Tokenizer,
        metrics: ServerMetrics,
        isolation: TenantIsolation = TenantIsolation.NONE,
        tenant_secret: bytes = b"",
        served_model_names: list[str] | None = None,
    ) -> None:
        """`served_model_names`: the names requests may use (the first is reported in
        responses); None: just `model_name`."""
        self.engine = engine
        self.tokenizer = tokenizer
        self.served_model_names = list(served_model_names or [model_name])
        self.model_name = self.served_model_names[0]
        self.max_model_len = max_model_len
        self.numerics_id = numerics_id  # block hashes are only valid for these numerics
        self.metrics = metrics
        self.isolation = isolation
        self._tenant_secret = tenant_secret

    # -- endpoints -----------------------------------------------------------------------

    async def chat(self, body: ChatCompletionRequest, raw: Request) -> Any:
        self._check_common(body)
        for i, m in enumerate(body.messages):
            for j, part in enumerate(m.content if isinstance(m.content, list) else []):
                if part.type != "text" or part.text is None:
                    raise APIError(
                        400,
                        f"Content part type {part.type!r} (messages.{i}.content.{j}) is "
                        "not supported: this server accepts text parts only.",
                        param=f"messages.{i}.content.{j}.type",
                    )
        prompt = chat_prompt_ids(self.tokenizer, body.messages, body.add_special_tokens)
        request = self._engine_request(
            "chatcmpl", body, prompt, body.requested_max_tokens(), self._salt(body, raw)
        )
        response_id = f"chatcmpl-{request_id_of(raw)}"
        if body.stream:
            return self._stream(request, response_id, body, chat=True)
        return await self._respond(request, response_id, body, raw, chat=True)

    async def completion(self, body: CompletionRequest, raw: Request) -> Any:
        self._check_common(body)
        prompt = completion_prompt_ids(
            self.tokenizer, body.prompt, body.add_special_tokens, self.max_model_len
        )
        request = self._engine_request(
            "cmpl", body, prompt, body.requested_max_tokens(), self._salt(body, raw)
        )
        response_id = f"cmpl-{request_id_of(raw)}"
        if body.stream:
            return self._stream(request, response_id, body, chat=False)
        return await self._respond(request, response_id, body, raw, chat=False)

    # -- request building ----------------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        """404 unless `model` is None or one of the served names."""
        if model is not None and model not in self.served_model_names:
            names = ", ".join(f"`{n}`" for n in self.served_model_names)
            raise APIError(
                404,
                f"The model `{model}` does not exist. This server serves {names}.",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )

    def _check_common(self, body: _Sampling) -> None:
        self.check_model(body.model)
        if body.n != 1:
            raise APIError(400, "Only n=1 is supported.", param="n")
        check_supported(body)
        if len(body.stop_strings()) > 4:
            raise APIError(400, "At most 4 stop sequences are allowed.", param="stop")

    def _salt(self, body: _Sampling, raw: Request) -> str | None:
        return cache_salt_for(
            self.isolation, bearer_token(raw.scope), body.cache_salt, self._tenant_secret
        )

    def _engine_request(
        self,
        prefix: str,
        body: _Sampling,
        prompt: list[int],
        max_tokens: int | None,
        salt: str | None,
    ) -> EngineRequest:
        prompt = truncate_prompt(prompt, body, self.max_model_len)
        room = self.max_model_len - len(prompt)
        if room < 1 or (max_tokens is not None and max_tokens > room):
            wanted = len(prompt) + (max_tokens or 1)
            raise APIError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {wanted} tokens ({len(prompt)} in the prompt, "
                f"{max_tokens or 1} for the completion). Please reduce the length.",
                param="messages" if prefix == "chatcmpl" else "prompt",
                code="context_length_exceeded",
            )
        params = build_sampling_params(body, self.tokenizer)
        return EngineRequest(
            # Unique in the engine even when clients reuse an X-Request-Id.
            request_id=f"{prefix}-{uuid.uuid4().hex}",
            prompt_token_ids=prompt,
            sampler=Sampler(
                params.sampling, self.tokenizer.sampleable_mask, prompt, params.constraint
            ),
            max_tokens=max_tokens or room,
            root_hash=root_hash(self.numerics_id, LAYOUT_VERSION, salt),
            stop_token_ids=params.stop_token_ids,
            stop=tuple(body.stop_strings()),
            token_bytes=self.tokenizer.token_bytes,
            min_tokens=params.min_tokens,
            include_stop_str_in_output=body.include_stop_str_in_output,
            priority=body.priority,
        )

    # -- responses -----------------------------------------------------------------------

    def _open(self, request: EngineRequest) -> RequestStream:
        try:
            return self.engine.add(request)
        except (QueueFullError, EngineDeadError) as exc:
            reason = "queue_full" if isinstance(exc, QueueFullError) else "engine_dead"
            self.metrics.request_rejected.labels(reason).inc()
            raise _unavailable(exc) from exc

    async def _generate_text(self, stream: RequestStream, result: _Result) -> AsyncIterator[str]:
        """Yield text deltas of one request until it finishes.

        The engine decides every finish (stop strings included) and holds back text that
        may be the start of a stop string. Ending early (client gone) closes the stream,
        which aborts the request.
        """
        parts: list[str] = []
        try:
            async for out in stream:
                result.num_cached_tokens = out.num_cached_tokens
                result.num_output_tokens = out.num_output_tokens
                if out.is_finished:
                    result.finish_reason = str(out.finish_reason)
                if out.new_text:
                    parts.append(out.new_text)
                    yield out.new_text
                if out.is_finished:
                    break
        except EngineDeadError as exc:
            raise _unavailable(exc) from exc
        finally:
            stream.close()
            result.text = "".join(parts)

    async def _respond(
        self, request: EngineRequest, response_id: str, body: _Sampling, raw: Request, chat: bool
    ) -> JSONResponse:
        result = _Result(num_prompt_tokens=len(request.prompt_token_ids))
        stream = self._open(request)

        async def drain() -> None:
            async for _ in self._generate_text(stream, result):
                pass

        task = asyncio.create_task(drain())
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                task.result()  # re-raises APIError (busy, engine dead)
                break
            if await raw.is_disconnected():
                task.cancel()  # closes the output stream, which aborts the request
                raise APIError(499, "Client disconnected.")
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": result.text,
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
            obj = "text_completion"
        return JSONResponse(
            {
                "id": response_id,
                "object": obj,
                "created": int(time.time()),
                "model": self.model_name,
                "choices": [choice],
                "usage": _usage(result),
            }
        )

    def _stream(
        self, request: EngineRequest, response_id: str, body: _Sampling, chat: bool
    ) -> StreamingResponse:
        stream = self._open(request)  # a 503 goes out now, not inside a 200 stream
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # vLLM: continuous_usage_stats puts the usage so far into every chunk.
        continuous = bool(body.stream_options and body.stream_options.continuous_usage_stats)
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        result = _Result(num_prompt_tokens=len(request.prompt_token_ids))

        def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
            payload: dict[str, Any] = {
                "id": response_id,
                "object": obj,
                "created": created,
                "model": self.model_name,
                "choices": choices,
            }
            if continuous and choices:
                payload["usage"] = _usage(result)
            elif include_usage or continuous:
                payload["usage"] = usage
            return f"data: {json.dumps(payload)}\n\n"

        def choice(text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

        async def events() -> AsyncIterator[str]:
            if chat:
                yield event([choice(None, None, role=True)])
            try:
                async for text in self._generate_text(stream, result):
                    yield event([choice(text, None)])
            except APIError as exc:
                yield f"data: {json.dumps(_error_payload(exc))}\n\n"
                yield "data: [DONE]\n\n"
                return
            finally:
                stream.close()
            yield event([choice(None, result.finish_reason)])
            if include_usage:
                yield event([], _usage(result))
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )


def _usage(result: _Result) -> dict[str, Any]:
    return {
        "prompt_tokens": result.num_prompt_tokens,
        "completion_tokens": result.num_output_tokens,
        "total_tokens": result.num_prompt_tokens + result.num_output_tokens,
        "prompt_tokens_details": {"cached_tokens": result.num_cached_tokens},
    }


def _unavailable(exc: Exception) -> APIError:
    if isinstance(exc, QueueFullError):
        return APIError(
            503,
            f"Server is busy ({exc}); retry later.",
            type="server_busy",
            code="queue_full",
            headers={"Retry-After": "1"},
        )
    return APIError(503, str(exc), type="server_error", code="engine_dead")


def _error_payload(exc: APIError) -> dict[str, Any]:
    return {
        "error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    }
