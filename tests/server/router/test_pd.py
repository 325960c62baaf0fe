"""P/D disaggregation through the shared DDR pool (server/pd.py): a prefill replica and a
decode replica on one real Redis, behind the router. The oracle: the tokens are those of
a cold single replica, and the decode replica's prompt came from the pool."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cache.embedded_redis import EmbeddedRedis
from server.config import DdrPool, Role, Settings
from server.router.app import build_router_app, prefill_request_body
from server.router.config import RouterConfig
from tests.server.live import LiveServer, run_server


def _settings(data_dir: Path, **extra: Any) -> Settings:
    return Settings(
        data_dir=data_dir, pace="none", hbm_gb=0.05, ddr_gb=0.05, flash_gb=0,
        max_model_len=2048, verify_wide_context=True, **extra,
    )  # fmt: skip


@pytest.fixture(scope="module", params=[DdrPool.PRIVATE, DdrPool.SHARED], ids=lambda p: p.value)
def fleet(request: pytest.FixtureRequest) -> Iterator[dict[str, LiveServer]]:
    """A cold single replica (own embedded Redis), and prefill + decode on one Redis,
    each with its own DDR index (`--ddr-pool private`) or following the pool's
    (`shared`)."""
    root = Path(tempfile.mkdtemp(prefix="tkv-pd-"))
    try:
        with ExitStack() as stack:
            redis = EmbeddedRedis(root / "pool", 256 * 1024**2).start()
            stack.callback(redis.stop)
            shared = {"redis_url": redis.url, "ddr_pool": request.param}
            yield {
                "single": stack.enter_context(run_server(_settings(root / "single"))),
                "prefill": stack.enter_context(
                    run_server(_settings(root / "p", role=Role.PREFILL, **shared))
                ),
                "decode": stack.enter_context(
                    run_server(_settings(root / "d", role=Role.DECODE, **shared))
                ),
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _router(fleet: dict[str, LiveServer]) -> TestClient:
    urls = (fleet["prefill"].url, fleet["decode"].url)
    return TestClient(build_router_app(RouterConfig(replicas=urls)))


def _prompts() -> list[str]:
    rng = random.Random(12)
    return ["".join(rng.choice("abcdefgh ") for _ in range(n)) for n in (40, 300, 517)]


def test_tokens_match_a_cold_single_replica_and_decode_loads_from_the_pool(
    fleet: dict[str, LiveServer],
) -> None:
    prompts = _prompts()
    expected = [fleet["single"].complete(p, max_tokens=12)["choices"][0]["text"] for p in prompts]
    with _router(fleet) as router:
        roles = {r["role"] for r in router.get("/router/stats").json()["replicas"]}
        assert roles == {"prefill", "decode"}
        for prompt, text in zip(prompts, expected, strict=True):
            body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 12,
                    "temperature": 0, "ignore_eos": True}  # fmt: skip
            r = router.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["choices"][0]["text"] == text
            assert out["usage"]["completion_tokens"] == 12
            # Every full prompt block (BOS + prompt, the last token always computed) came
            # from the pool: the decode replica computed none of them.
            full = (len(prompt) + 1 - 1) // 16 * 16
            assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == full
        stats = router.get("/router/stats").json()
        assert stats["pd"]["prefills"] == 3 and stats["pd"]["prefill_failures"] == 0
    decode, prefill = fleet["decode"], fleet["prefill"]
    assert decode.cache_stats()["hit_tokens"]["ddr"] == sum(len(p) // 16 * 16 for p in prompts)
    assert decode.metric("tierkv:pd_blocks_found_total") == sum((len(p) + 1) // 16 for p in prompts)
    assert prefill.metric("tierkv:pd_blocks_handed_over_total") > 0
    # Decode generated; prefill computed one token per request.
    assert prefill.metric("vllm:generation_tokens_total", model_name="tiny-llama") == 3


def test_streamed_chat_through_prefill_and_decode(fleet: dict[str, LiveServer]) -> None:
    messages = [{"role": "user", "content": "tell me about tiers " * 20}]
    body = {"model": "tiny-llama", "messages": messages, "max_tokens": 8, "temperature": 0}
    single = fleet["single"].client.post("/v1/chat/completions", json=body).json()
    with _router(fleet) as router:
        chunks = []
        with router.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            chunks = [line for line in r.iter_lines() if line.startswith("data: {")]
    text = "".join(json.loads(c[6:])["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == single["choices"][0]["message"]["content"]


def test_prefill_body_asks_for_one_token_without_stream() -> None:
    body = b'{"prompt": "x", "max_tokens": 50, "stream": true, "min_tokens": 5, '
    body += b'"stream_options": {"include_usage": true}, "max_completion_tokens": 9}'
    out = prefill_request_body(body)
    assert out is not None
    data = json.loads(out)
    assert data == {"prompt": "x", "max_tokens": 1, "stream": False, "max_completion_tokens": 1}
    assert prefill_request_body(b"not json") is None
    assert prefill_request_body(b"[1, 2]") is None


def test_roles_other_than_both_need_a_shared_redis(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="redis-url"):
        Settings(data_dir=tmp_path, role=Role.DECODE)
    with pytest.raises(ValueError, match="ddr-gb"):
        Settings(data_dir=tmp_path, role=Role.PREFILL, redis_url="redis://x:1", ddr_gb=0)


def test_a_prefill_replica_that_went_away_degrades_to_decode_computing(
    fleet: dict[str, LiveServer], tmp_path: Path
) -> None:
    prompt = "".join(random.Random(99).choice("ijklmnop ") for _ in range(200))  # unseen
    expected = fleet["single"].complete(prompt, max_tokens=6)["choices"][0]["text"]
    url, pool = fleet["prefill"].settings.redis_url, fleet["prefill"].settings.ddr_pool
    gone_settings = _settings(tmp_path / "p2", role=Role.PREFILL, redis_url=url, ddr_pool=pool)
    with run_server(gone_settings) as gone:
        config = RouterConfig(replicas=(gone.url, fleet["decode"].url))
        router = TestClient(build_router_app(config))
        router.__enter__()
    try:  # the prefill replica is stopped now: its call fails, decode computes
        body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 6,
                "temperature": 0, "ignore_eos": True}  # fmt: skip
        r = router.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == expected
        assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        stats = router.get("/router/stats").json()
        assert stats["pd"]["prefills"] == 1 and stats["pd"]["prefill_failures"] == 1
        # The failed prefill call is not counted as routed to the replica that failed it.
        routed = {r["role"]: r["routed"] for r in stats["replicas"]}
        assert routed == {"prefill": 0, "decode": 1}
    finally:
        router.__exit__(None, None, None)
