"""HTTP routes: they parse, pick the handler, and return. Logic lives in `serving`."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
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


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, raw: Request, serving: Serving) -> Any:
    return await serving.chat(body, raw)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, raw: Request, serving: Serving) -> Any:
    return await serving.completion(body, raw)


@router.get("/v1/models")
async def models(raw: Request, serving: Serving) -> dict[str, Any]:
    created = int(raw.app.state.started_at)
    return {
        "object": "list",
        "data": [_model_card(serving, n, created) for n in serving.served_model_names],
    }


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, raw: Request, serving: Serving) -> dict[str, Any]:
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


@router.post("/tokenize")
async def tokenize(
    body: TokenizeChatRequest | TokenizeCompletionRequest, serving: Serving, tok: Tokenizers
) -> dict[str, Any]:
    serving.check_model(body.model)
    return tok.tokenize(body)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, serving: Serving, tok: Tokenizers) -> dict[str, Any]:
    serving.check_model(body.model)
    return tok.detokenize(body)


@router.get("/v1/tokenizer.json")
async def tokenizer_json(tok: Tokenizers) -> Response:
    """The served tokenizer as a HuggingFace tokenizer.json (see server/tokenize.py)."""
    return Response(tok.hf_json, media_type="application/json")


@router.get("/v1/tokenizer_config.json")
async def tokenizer_config_json(tok: Tokenizers) -> dict[str, Any]:
    return tok.hf_config


@router.get("/health")
async def health(engine: Engine) -> JSONResponse:
    """200 while the engine runs, even with a tier degraded (traffic still flows, the
    cache falls back to recompute); 503 only when the engine thread is dead."""
    if not engine.is_healthy:
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
        "role": request.app.state.settings.role.value,  # P/D disaggregation (server/pd.py)
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
