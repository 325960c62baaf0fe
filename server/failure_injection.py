"""HTTP failure injection, after llm-d-inference-sim's `--failure-injection-rate` and
`--failure-types`: a share of completion requests get an OpenAI-shaped error instead of
an answer, so gateways can test their retries and fallbacks against a real server.

Only `POST /v1/chat/completions` and `POST /v1/completions` are affected; the draw is
made before the body is read (so a failure costs no parsing and no engine time), from a
`random.Random` seeded by `--failure-injection-seed` for repeatable tests. Every injected
answer carries `X-Tierkv-Injected-Failure: <type>` and is counted in
`tierkv:injected_failures_total{type}`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import APIError, error_response
from server.metrics import ServerMetrics

COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass(frozen=True, slots=True)
class InjectedFailure:
    """One kind of injected error: its HTTP status and OpenAI error fields."""

    status: int
    type: str
    code: str | None
    message: str
    param: str | None = None


def failure_catalogue(model: str, max_model_len: int) -> dict[str, InjectedFailure]:
    """The errors `--failure-types` names, shaped as OpenAI's API answers them."""
    return {
        "rate_limit": InjectedFailure(
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            f"Rate limit reached for {model}. Please try again in 1s.",
        ),
        "invalid_api_key": InjectedFailure(
            401,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided.",
        ),
        "context_length": InjectedFailure(
            400,
            "invalid_request_error",
            "context_length_exceeded",
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            "messages resulted in more tokens. Please reduce the length of the messages.",
            param="messages",
        ),
        "server_error": InjectedFailure(
            500,
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        ),
        "invalid_request": InjectedFailure(
            400,
            "invalid_request_error",
            "invalid_request",
            "Invalid request: the server could not process it.",
        ),
        "model_not_found": InjectedFailure(
            404,
            "not_found_error",
            "model_not_found",
            "The model does not exist or you do not have access to it.",
            param="model",
        ),
    }


class FailureInjector:
    """Decides, request by request, whether to fail and how. Event-loop only."""

    def __init__(
        self,
        rate_percent: float,
        types: Sequence[str],
        catalogue: dict[str, InjectedFailure],
        seed: int | None = None,
    ) -> None:
        if not 0 <= rate_percent <= 100:
            raise ValueError(f"rate_percent must be in [0, 100], got {rate_percent}")
        unknown = [t for t in types if t not in catalogue]
        if unknown or not types:
            raise ValueError(f"unknown or no failure types: {unknown}")
        self.rate = rate_percent / 100
        self.types = tuple(types)
        self.catalogue = catalogue
        self._rng = random.Random(seed)

    def draw(self) -> str | None:
        """The failure type to answer this request with, or None to serve it."""
        if self.rate <= 0 or self._rng.random() >= self.rate:
            return None
        return self._rng.choice(self.types)


class FailureInjectionMiddleware:
    """ASGI middleware answering a share of completion requests with injected errors."""

    def __init__(self, app: ASGIApp, injector: FailureInjector) -> None:
        self.app = app
        self.injector = injector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in COMPLETION_PATHS
            or (kind := self.injector.draw()) is None
        ):
            await self.app(scope, receive, send)
            return
        failure = self.injector.catalogue[kind]
        metrics: ServerMetrics | None = getattr(scope["app"].state, "metrics", None)
        if metrics is not None:
            metrics.injected_failures.labels(kind).inc()
        headers = {"X-Tierkv-Injected-Failure": kind}
        if failure.status == 429:
            headers["Retry-After"] = "1"
        error = APIError(
            failure.status,
            failure.message,
            type=failure.type,
            param=failure.param,
            code=failure.code,
            headers=headers,
        )
        await error_response(error)(scope, receive, send)
