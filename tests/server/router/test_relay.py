"""The router's relay: a request counts as prefilling (its uncached blocks weigh on the
replica's cache-aware cost) until its first output token comes back, not until the
first byte: a chat stream opens with a role-only event sent before the prefill."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from server.router.app import FirstTokenWatch, Proxy
from server.router.config import RouterConfig
from server.router.replica import InFlight


def _event(delta: dict[str, str]) -> bytes:
    return f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta}]})}\n\n".encode()


async def _relay_states(path: str, chunks: list[bytes], content_type: str) -> list[bool]:
    """`is_prefilling` of the in-flight request after each relayed chunk."""
    proxy = Proxy(RouterConfig(replicas=("http://127.0.0.1:1",)))
    try:
        replica = proxy.replicas[0]
        replica.in_flight[7] = InFlight(num_blocks=20, num_prefill_blocks=16)

        async def upstream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        response = httpx.Response(200, headers={"content-type": content_type}, content=upstream())
        relayed = proxy._relay(response, replica, 7, path)
        states = []
        async for _ in relayed.body_iterator:
            flight = replica.in_flight.get(7)
            assert flight is not None
            states.append(flight.is_prefilling)
        assert 7 not in replica.in_flight  # the finished request is forgotten
        return states
    finally:
        await proxy.client.aclose()


def test_a_chat_stream_is_prefilling_until_its_first_token() -> None:
    chunks = [
        _event({"role": "assistant", "content": ""}),
        _event({"content": "a"}),
        b"data: [DONE]\n\n",
    ]
    states = asyncio.run(_relay_states("v1/chat/completions", chunks, "text/event-stream"))
    assert states == [True, False, False]


def test_a_completion_stream_ends_prefill_at_its_first_event() -> None:
    chunks = [b'data: {"choices": [{"text": "a"}]}\n\n', b"data: [DONE]\n\n"]
    states = asyncio.run(_relay_states("v1/completions", chunks, "text/event-stream"))
    assert states == [False, False]


@pytest.mark.parametrize("cut", range(1, 5))
def test_an_event_marker_split_across_chunks_is_counted_once(cut: int) -> None:
    watch = FirstTokenWatch.for_response("v1/chat/completions", "text/event-stream")
    role, token = _event({"role": "assistant"}), _event({"content": "x"})
    assert not watch.feed(role + token[:cut])
    assert watch.feed(token[cut:])


def test_a_json_answer_arrives_whole() -> None:
    watch = FirstTokenWatch.for_response("v1/chat/completions", "application/json")
    assert watch.feed(b"{")
