"""The app factory: `build_app(settings)` wires the engine stack into a FastAPI app."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import disable_created_metrics

from server.config import Settings
from server.engine.async_engine import AsyncEngine
from server.errors import install_error_handlers
from server.failure_injection import (
    FailureInjectionMiddleware,
    FailureInjector,
    failure_catalogue,
)
from server.metrics import ServerMetrics
from server.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from server.request_id import RequestIdMiddleware
from server.routes import router
from server.serving import OpenAIServing
from server.stack import build_stack
from server.tokenize import TokenizerService
from server.vllm_metrics import VllmMetrics
from server.vnpu.serving import start_vnpus


def build_app(settings: Settings) -> FastAPI:
    """A new app for `settings`. Resources live in the lifespan, kept on `app.state`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.started_at = time.time()
        if settings.vnpu:  # one engine per vNPU (server/vnpu/)
            async with start_vnpus(app, settings):
                yield
            return
        wakeup = threading.Event()
        stack = await asyncio.to_thread(build_stack, settings, wakeup.set)
        metrics = ServerMetrics()
        engine = AsyncEngine(
            stack.core, settings.max_num_seqs + settings.max_waiting, metrics, wakeup
        )
        metrics.attach(lambda: (engine.engine_stats, engine.cache_stats))
        if stack.transfer_clock is not None:
            metrics.attach_transfer_clock(stack.transfer_clock.totals)
        engine.vllm_metrics = VllmMetrics(
            metrics.registry,
            model_name=(settings.served_model_name or [settings.served_model])[0],
            max_model_len=settings.max_model_len,
            block_size=settings.block_size,
            num_gpu_blocks=stack.cache.pool.num_blocks,
            source=lambda: (engine.engine_stats, engine.cache_stats),
        )
        app.state.settings = settings
        app.state.metrics = metrics
        app.state.engine = engine
        app.state.stack = stack
        app.state.serving = OpenAIServing(
            engine,
            settings.served_model,
            settings.max_model_len,
            stack.numerics_id,
            stack.tokenizer,
            metrics,
            settings.isolate_tenants,
            settings.tenant_secret.get_secret_value().encode() if settings.tenant_secret else b"",
            served_model_names=settings.served_model_name,
        )
        app.state.tokenizer_service = TokenizerService(
            stack.tokenizer, app.state.serving.model_name, settings.max_model_len
        )
        app.state.started_at = time.time()
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.shutdown)
            await asyncio.to_thread(stack.close)

    disable_created_metrics()  # no `_created` series (as vLLM); process-wide, idempotent
    app = FastAPI(title="tierkv", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(router)
    # Added innermost first: requests pass API key -> failure injection -> body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    if settings.failure_injection_rate > 0:
        injector = FailureInjector(
            settings.failure_injection_rate,
            settings.failure_type_list,
            failure_catalogue(settings.served_model, settings.max_model_len),
            settings.failure_injection_seed,
        )
        app.add_middleware(FailureInjectionMiddleware, injector=injector)
    if settings.api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    # Outermost: every response (401, 413, injected errors included) carries X-Request-Id.
    app.add_middleware(RequestIdMiddleware)
    return app
