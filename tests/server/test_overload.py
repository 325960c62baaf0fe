"""Overload: a full queue answers 503 with Retry-After, counted, and /health keeps answering."""

from __future__ import annotations

import asyncio

import httpx

from tests.server.live import run_server

CHAT = "/v1/chat/completions"
NUM_CLIENTS = 24


async def _load(url: str) -> tuple[list[httpx.Response], list[int]]:
    """NUM_CLIENTS concurrent requests (half streaming) and /health polled meanwhile."""
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 48,
        "ignore_eos": True,
    }
    health: list[int] = []
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)
    ) as client:

        async def one(i: int) -> httpx.Response:
            if i % 2:
                async with client.stream("POST", CHAT, json={**body, "stream": True}) as r:
                    await r.aread()
                    return r
            return await client.post(CHAT, json=body)

        async def probe(done: asyncio.Event) -> None:
            # A bounded client timeout: /health must answer, the test makes no speed claim.
            async with httpx.AsyncClient(base_url=url, timeout=10) as c:
                while not done.is_set():
                    health.append((await c.get("/health")).status_code)

        done = asyncio.Event()
        prober = asyncio.create_task(probe(done))
        responses = await asyncio.gather(*(one(i) for i in range(NUM_CLIENTS)))
        done.set()
        await prober
    return list(responses), health


def test_full_queue_answers_503_while_health_stays_up(make_settings):
    with run_server(make_settings(max_num_seqs=2, max_waiting=1)) as server:
        responses, health = asyncio.run(_load(server.url))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        busy = [r for r in responses if r.status_code == 503]
        assert busy and statuses.count(200) >= 3, statuses
        for r in busy:
            assert r.headers["retry-after"] == "1"
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["code"] == "queue_full"
        assert health and set(health) == {200}
        rejected = server.metric("tierkv:request_rejected_total", reason="queue_full")
        assert rejected == len(busy)
        # After the burst the server serves again.
        assert (
            server.client.post(
                CHAT,
                json={
                    "model": "tiny-llama",
                    "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            ).status_code
            == 200
        )
