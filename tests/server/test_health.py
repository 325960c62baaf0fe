"""/health: 200 with per-tier state (degraded still 200), 503 only when the engine is dead."""

from __future__ import annotations

import time
from types import SimpleNamespace

from cache.stats import CacheStats, Tier
from server.routes import overall_status, tier_health
from tests.server.live import LiveServer, run_server


def _stats(**health: str) -> CacheStats:
    # A cache layer that reports tier health (TierStats.health / health_detail).
    stats = CacheStats()
    stats.tiers = {  # type: ignore[assignment]
        t: SimpleNamespace(health=health.get(t.value, "ok"), health_detail=f"{t.value} note")
        for t in Tier
    }
    return stats


def test_tier_health_without_health_fields_is_ok():
    tiers = tier_health(CacheStats())
    assert tiers == {t.value: {"health": "ok", "detail": ""} for t in Tier}
    assert overall_status(tiers) == "ok"


def test_any_unhealthy_tier_makes_the_server_degraded():
    assert overall_status(tier_health(_stats(ddr="disabled"))) == "ok"
    for state in ("degraded", "down", "quarantined"):
        tiers = tier_health(_stats(flash=state))
        assert tiers["flash"] == {"health": state, "detail": "flash note"}
        assert overall_status(tiers) == "degraded"


def test_health_reports_tiers_and_engine(server: LiveServer):
    r = server.client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert set(body["tiers"]) == {"hbm", "ddr", "flash"}
    assert {"running", "waiting", "loading_kv"} <= set(body)


def _crash() -> None:
    raise RuntimeError("injected engine bug")


def test_dead_engine_is_503(make_settings):
    with run_server(make_settings()) as server:
        assert server.app is not None
        engine = server.app.state.engine
        engine._submit(_crash)  # a command that raises kills the engine thread for real
        deadline = time.monotonic() + 30
        while engine.is_healthy and time.monotonic() < deadline:
            time.sleep(0.01)  # poll interval, not a stand-in for work
        r = server.client.get("/health")
        assert r.status_code == 503
        assert r.json()["status"] == "dead"
        chat = {
            "model": "tiny-llama",
            "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}],
        }
        r = server.client.post("/v1/chat/completions", json=chat)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
        assert server.metric("tierkv:request_rejected_total", reason="engine_dead") == 1
