"""HTTP routes: they parse, pick the handler, and return. Logic lives in `serving`."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cache.events import KVEventPublisher
from cache.stats import CacheStats, Tier
from server.engine.async_engine import AsyncEngine, engine_summary
from server.errors import APIError
from server.metrics import ServerMetrics
from server.middleware import OffloadedJSONRoute
from server.protocol import ChatCompletionRequest, CompletionRequest, OffloadRequest
from server.serving import OpenAIServing
from server.tokenize import (
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizerService,
)
from server.vnpu.telemetry import npu_status_json, npu_status_text

# Large JSON bodies are parsed off the event loop (see server.middleware).
router = APIRouter(route_class=OffloadedJSONRoute)


def _serving(request: Request) -> OpenAIServing:
    return request.app.state.serving


def _engine(request: Request) -> AsyncEngine:
    return request.app.state.engine


def _metrics(request: Request) -> ServerMetrics:
    return request.app.state.metrics


def _tokenizer(request: Request) -> TokenizerService:
    return request.app.state.tokenizer_service


Serving = Annotated[OpenAIServing, Depends(_serving)]
Tokenizers = Annotated[TokenizerService, Depends(_tokenizer)]
Engine = Annotated[AsyncEngine, Depends(_engine)]
Metrics = Annotated[ServerMetrics, Depends(_metrics)]


def _servings(request: Request) -> list[OpenAIServing]:
    """Every engine's serving: one per vNPU with --vnpu, else the one."""
    vnpus = getattr(request.app.state, "vnpus", None)
    return [request.app.state.serving] if vnpus is None else vnpus.servings


def _route(request: Request, model: str | None) -> OpenAIServing:
    """The serving of `model`: the one engine, or the vNPU serving it (404 if none)."""
    vnpus = getattr(request.app.state, "vnpus", None)
    return request.app.state.serving if vnpus is None else vnpus.serving_for(model)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, raw: Request) -> Any:
    return await _route(raw, body.model).chat(body, raw)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, raw: Request) -> Any:
    return await _route(raw, body.model).completion(body, raw)


@router.get("/v1/models")
async def models(raw: Request) -> dict[str, Any]:
    created = int(raw.app.state.started_at)
    return {
        "object": "list",
        "data": [
            _model_card(serving, n, created)
            for serving in _servings(raw)
            for n in serving.served_model_names
        ],
    }


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, raw: Request) -> dict[str, Any]:
    serving = _route(raw, model_id)
    serving.check_model(model_id)
    return _model_card(serving, model_id, int(raw.app.state.started_at))


def _model_card(serving: OpenAIServing, name: str, created: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "tierkv",
        "root": serving.served_model_names[0],
        "parent": None,
        "max_model_len": serving.max_model_len,
    }


def _tokenizer_for(request: Request, model: str | None) -> TokenizerService:
    """The tokenizer of `model`'s engine (404 for an unknown model)."""
    serving = _route(request, model)
    serving.check_model(model)
    vnpus = getattr(request.app.state, "vnpus", None)
    if vnpus is None:
        return request.app.state.tokenizer_service
    return vnpus.tokenizers[vnpus.servings.index(serving)]


@router.post("/tokenize")
async def tokenize(
    body: TokenizeChatRequest | TokenizeCompletionRequest, raw: Request
) -> dict[str, Any]:
    return _tokenizer_for(raw, body.model).tokenize(body)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, raw: Request) -> dict[str, Any]:
    return _tokenizer_for(raw, body.model).detokenize(body)


@router.get("/v1/tokenizer.json")
async def tokenizer_json(tok: Tokenizers) -> Response:
    """The served tokenizer as a HuggingFace tokenizer.json (see server/tokenize.py)."""
    return Response(tok.hf_json, media_type="application/json")


@router.get("/v1/tokenizer_config.json")
async def tokenizer_config_json(tok: Tokenizers) -> dict[str, Any]:
    return tok.hf_config


@router.get("/health")
async def health(engine: Engine, raw: Request) -> JSONResponse:
    """200 while the engine runs, even with a tier degraded (traffic still flows, the
    cache falls back to recompute); 503 only when the engine thread is dead (with
    --vnpu: any vNPU's)."""
    vnpus = getattr(raw.app.state, "vnpus", None)
    if not engine.is_healthy or (vnpus is not None and not vnpus.is_healthy):
        return JSONResponse({"status": "dead", "detail": "engine stopped"}, status_code=503)
    tiers = tier_health(engine.cache_stats)
    return JSONResponse({"status": overall_status(tiers), "tiers": tiers, **engine_summary(engine)})


# Tier states that still mean "working as configured".
HEALTHY_TIER_STATES = frozenset({"ok", "disabled"})


def tier_health(stats: CacheStats) -> dict[str, dict[str, str]]:
    """Per-tier state from the cache's `TierStats.health` / `health_detail`, read with
    defaults so that a cache layer without them reports every tier "ok"."""
    return {
        tier.value: {
            "health": s.health,
            "detail": s.health_detail,
        }
        for tier, s in stats.tiers.items()
    }


def overall_status(tiers: dict[str, dict[str, str]]) -> str:
    """ "ok" when every tier is ok or disabled, else "degraded"."""
    healthy = all(t["health"] in HEALTHY_TIER_STATES for t in tiers.values())
    return "ok" if healthy else "degraded"


@router.get("/metrics")
async def metrics(m: Metrics) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/cache/stats")
async def cache_stats(engine: Engine, serving: Serving, request: Request) -> dict[str, Any]:
    stats = engine.cache_stats
    return {
        # Replicas can share KV blocks only if these match (see Model.numerics_id).
        "numerics_id": serving.numerics_id,
        "query_tokens": stats.query_tokens,
        "hit_tokens": {t.value: n for t, n in stats.hit_tokens.items()},
        "tiers": {
            t.value: {
                "blocks": s.num_blocks,
                "active_blocks": s.active_blocks,
                "used_bytes": s.used_bytes,
                "capacity_bytes": s.capacity_bytes,
                "hit_blocks": s.hit_blocks,
                "miss_blocks": s.miss_blocks,
                "read_bytes": s.read_bytes,
                "write_bytes": s.write_bytes,
                "evictions": s.evictions,
                "checksum_failures": s.checksum_failures,
                "io_errors": s.io_errors,
            }
            for t, s in stats.tiers.items()
        },
        "engine": engine_summary(engine),
        "block_size": request.app.state.settings.block_size,
        "kv_events": kv_events_info(request.app.state.stack.events),
    }


def kv_events_info(events: KVEventPublisher | None) -> dict[str, Any] | None:
    """Where this server publishes KV events (None: it does not), for routers."""
    if events is None:
        return None
    return {"endpoint": events.endpoint, "replay_endpoint": events.replay_endpoint}


@router.post("/cache/offload")
async def cache_offload(body: OffloadRequest, engine: Engine) -> dict[str, Any]:
    """Push every movable block of a tier one tier down (HBM -> DDR, DDR -> flash)."""
    tier = Tier(body.tier)
    start = time.perf_counter()
    try:
        moved = await engine.call(lambda core: core.cache.offload(tier))
    except ValueError as exc:
        raise APIError(400, str(exc), param="tier") from exc
    return {
        "tier": tier.value,
        "moved_blocks": moved,
        "seconds": round(time.perf_counter() - start, 6),
    }


@router.get("/npu")
async def npu(raw: Request) -> Response:
    """npu-smi-style status of the (partitioned) device: JSON, or a text table when the
    client asks for `text/plain`. 404 without --vnpu."""
    telemetry = getattr(raw.app.state, "npu_telemetry", None)
    if telemetry is None:
        raise APIError(
            404, "No vNPU partitions: start the server with --vnpu.", type="not_found_error"
        )
    if "text/plain" in raw.headers.get("accept", ""):
        return PlainTextResponse(npu_status_text(telemetry))
    return JSONResponse(npu_status_json(telemetry))
