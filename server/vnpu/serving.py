"""The vNPU front end: one `AsyncEngine` and `OpenAIServing` per vNPU, picked by model.

`start_vnpus` is the `--vnpu` branch of the app's lifespan. It sets on `app.state`:
`vnpus` (a `VnpuRouter`), `npu_telemetry`, and, so that the single-engine routes keep
working, `engine`/`stack`/`serving`/`tokenizer_service` of the *first* vNPU (`/health`
checks every engine; `/tokenize` and `/detokenize` route by model; `/cache/*` and
`/v1/tokenizer.json` act on the first vNPU).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from server.config import Settings
from server.engine.async_engine import AsyncEngine
from server.errors import APIError
from server.metrics import ServerMetrics
from server.serving import OpenAIServing
from server.tokenize import TokenizerService
from server.vnpu.partition import VnpuDevice, build_vnpu_device
from server.vnpu.telemetry import VnpuCollector, VnpuTelemetry


@dataclass(slots=True)
class VnpuRouter:
    """Model name -> the vNPU serving it."""

    servings: list[OpenAIServing]
    engines: list[AsyncEngine]
    tokenizers: list[TokenizerService]

    @property
    def model_names(self) -> list[str]:
        return [s.model_name for s in self.servings]

    @property
    def is_healthy(self) -> bool:
        return all(e.is_healthy for e in self.engines)

    def serving_for(self, model: str | None) -> OpenAIServing:
        """The vNPU serving `model` (None: the first); 404 naming every model if none."""
        if model is None:
            return self.servings[0]
        for serving in self.servings:
            if model in serving.served_model_names:
                return serving
        names = ", ".join(f"`{n}`" for n in self.model_names)
        raise APIError(
            404,
            f"The model `{model}` does not exist. This server serves {names}.",
            type="not_found_error",
            param="model",
            code="model_not_found",
        )


@asynccontextmanager
async def start_vnpus(app: FastAPI, settings: Settings) -> AsyncIterator[None]:
    """Build every vNPU, start its engine thread, and stop them all on exit."""
    wakeups: dict[str, threading.Event] = {}

    def wakeup_for(name: str) -> threading.Event:
        return wakeups.setdefault(name, threading.Event())

    device: VnpuDevice = await asyncio.to_thread(
        build_vnpu_device, settings, lambda name: wakeup_for(name).set
    )
    engines: list[AsyncEngine] = []
    try:
        app.state.vnpus = _serve_vnpus(app, settings, device, wakeup_for, engines)
        for engine in engines:
            engine.start()
        yield
    finally:
        # Also after a failure part-way: the device's Redis and stacks are not leaked.
        for engine in engines:
            await asyncio.to_thread(engine.shutdown)
        await asyncio.to_thread(device.close)


def _serve_vnpus(
    app: FastAPI,
    settings: Settings,
    device: VnpuDevice,
    wakeup_for: Callable[[str], threading.Event],
    engines: list[AsyncEngine],
) -> VnpuRouter:
    """Build each vNPU's engine (appended to `engines`, not started) and front end, and
    set the app state that single-engine routes read; returns the model router."""
    # One registry: TTFT/ITL/e2e histograms aggregate over vNPUs; the engine and tier
    # figures are per vNPU (tierkv:vnpu_*), the unlabelled ones are not exported.
    metrics = ServerMetrics()
    servings: list[OpenAIServing] = []
    for v in device.vnpus:
        engine = AsyncEngine(
            v.stack.core, settings.max_num_seqs + settings.max_waiting, metrics, wakeup_for(v.name)
        )
        engines.append(engine)
        servings.append(
            OpenAIServing(
                engine,
                v.model_name,
                settings.max_model_len,
                v.stack.numerics_id,
                v.stack.tokenizer,
                metrics,
                settings.isolate_tenants,
                settings.tenant_secret.get_secret_value().encode()
                if settings.tenant_secret
                else b"",
            )
        )
    telemetry = VnpuTelemetry(device, engines)
    metrics.registry.register(VnpuCollector(telemetry))
    first = device.vnpus[0]
    app.state.metrics = metrics
    tokenizers = [
        TokenizerService(v.stack.tokenizer, serving.model_name, settings.max_model_len)
        for v, serving in zip(device.vnpus, servings, strict=True)
    ]
    router = VnpuRouter(servings, engines, tokenizers)
    app.state.npu_telemetry = telemetry
    app.state.vnpu_device = device
    app.state.engine = engines[0]
    app.state.stack = first.stack
    app.state.serving = servings[0]
    app.state.tokenizer_service = tokenizers[0]
    return router
