"""The engine under pressure: disconnects, many concurrent streams, preemption."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai

from tests.server.live import LiveServer, hbm_gb_for_blocks, run_server

CHAT = "/v1/chat/completions"


def wait_for(predicate, timeout: float = 20.0) -> None:
    """Poll a server-side condition (the engine frees blocks on its own thread)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def engine_idle(server: LiveServer) -> bool:
    stats = server.cache_stats()
    return stats["engine"]["running"] == 0 and stats["tiers"]["hbm"]["active_blocks"] == 0


def test_disconnected_stream_is_aborted_and_frees_its_blocks(server: LiveServer):
    body = {
        "model": "tiny-llama",
        "stream": True,
        "ignore_eos": True,
        "max_tokens": 1500,
        "messages": [{"role": "user", "content": "a long story " * 20}],
    }
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", CHAT, json=body) as response:
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
            assert server.cache_stats()["tiers"]["hbm"]["active_blocks"] > 0
        # Leaving the block closes the connection mid-stream.
    wait_for(lambda: engine_idle(server))
    assert server.metric("tierkv:generation_tokens_total") < 1500  # it stopped generating


def test_32_concurrent_streams_complete(server: LiveServer):
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, str | None]:
        stream = await client.chat.completions.create(
            model="tiny-llama",
            stream=True,
            max_tokens=24,
            temperature=0,
            messages=[{"role": "user", "content": f"request number {i}: tell me something"}],
            extra_body={"ignore_eos": True},
        )
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def main() -> list[tuple[str, str | None]]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        async with client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    results = asyncio.run(main())
    assert len(results) == 32
    assert all(finish == "length" and text for text, finish in results)
    wait_for(lambda: engine_idle(server))


def test_preemption_under_tiny_hbm_keeps_outputs_correct(make_settings):
    prompts = [f"Request {i}: " + "all work and no play makes a dull model. " * 6 for i in range(6)]

    def complete_all(server: LiveServer) -> list[str]:
        async def one(client: httpx.AsyncClient, prompt: str) -> str:
            r = await client.post(
                "/v1/completions",
                json={
                    "model": "tiny-llama",
                    "prompt": prompt,
                    "max_tokens": 120,
                    "temperature": 0,
                    "ignore_eos": True,
                },
            )
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        async def main() -> list[str]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                return await asyncio.gather(*(one(client, p) for p in prompts))

        return asyncio.run(main())

    with run_server(make_settings()) as roomy:
        expected = [roomy.complete(p, 120)["choices"][0]["text"] for p in prompts]
    # 6 requests x ~24 blocks each do not fit in 40 blocks: some must be preempted.
    tiny = make_settings(hbm_gb=hbm_gb_for_blocks(40), max_model_len=512, flash_gb=0)
    with run_server(tiny) as server:
        assert complete_all(server) == expected
        assert server.metric("tierkv:num_preemptions_total") > 0
        assert server.metric("tierkv:tier_write_bytes_total", tier="ddr") > 0  # spilled
        wait_for(lambda: engine_idle(server))
