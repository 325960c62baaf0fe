"""The router in front of two live replicas: pass-through (JSON, SSE, errors) and
cache-aware placement learned from KV events."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cache.event_subscriber import KVEventSubscriber
from load.bench._servers import free_port
from npu_sim.tokenizers.byte import ByteTokenizer
from server.config import Settings
from server.router.app import build_router_app
from server.router.config import RouterConfig
from server.router.policy import Router, RouteRequest
from server.router.replica import Replica
from tests.server.live import LiveServer, run_server

TIMEOUT = 60.0


def _settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir, pace="none", hbm_gb=0.05, ddr_gb=0.05, flash_gb=0.1,
        max_model_len=2048, verify_wide_context=True, kv_events_endpoint="tcp://127.0.0.1:*",
        kv_events_replay_endpoint="tcp://127.0.0.1:*",
    )  # fmt: skip


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[LiveServer]]:
    root = Path(tempfile.mkdtemp(prefix="tkv-r-"))
    try:
        with ExitStack() as stack:
            yield [stack.enter_context(run_server(_settings(root / f"d{i}"))) for i in range(2)]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _router(replicas: list[LiveServer], policy: str) -> TestClient:
    config = RouterConfig(replicas=tuple(r.url for r in replicas), policy=policy)
    return TestClient(build_router_app(config))


def _wait_events(router: TestClient, predicate: Any) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        stats = router.get("/router/stats").json()
        if predicate(stats):
            return stats
        assert time.monotonic() < deadline, stats
        time.sleep(0.01)


def _hbm_blocks(stats: dict[str, Any]) -> int:
    return sum(r["blocks"]["hbm"] for r in stats["replicas"])


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghij ") for _ in range(n))


def _second_turn_hits(router: TestClient, rng: random.Random) -> list[int]:
    """Six first turns, then their second turns in another order: cached tokens of each."""
    firsts = [_text(rng, 300) for _ in range(6)]
    for prompt in firsts:
        before = _hbm_blocks(router.get("/router/stats").json())
        body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 2, "temperature": 0}
        assert router.post("/v1/completions", json=body).status_code == 200
        _wait_events(router, lambda s, b=before: _hbm_blocks(s) > b)
    hits = []
    for prompt in firsts[1:] + firsts[:1]:
        body = {"model": "tiny-llama", "prompt": prompt + _text(rng, 40), "max_tokens": 2}
        r = router.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        hits.append(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
    return hits


def test_cache_aware_sends_each_conversation_back_to_its_replica(
    replicas: list[LiveServer],
) -> None:
    with _router(replicas, "cache-aware") as router:
        stats = router.get("/router/stats").json()
        assert all(r["cache_aware"] for r in stats["replicas"]), stats
        hits = _second_turn_hits(router, random.Random(3))
        assert hits == [288] * 6  # 300-token first turns: 18 full blocks
        routed = [r["routed"] for r in router.get("/router/stats").json()["replicas"]]
        assert min(routed) > 0, routed  # ties between idle replicas spread conversations


def test_round_robin_misses_what_cache_aware_hits(replicas: list[LiveServer]) -> None:
    with _router(replicas, "round-robin") as router:
        hits = _second_turn_hits(router, random.Random(4))
        assert hits.count(0) >= 3, hits


def test_streams_and_errors_pass_through(replicas: list[LiveServer]) -> None:
    with _router(replicas, "round-robin") as router:
        body = {
            "model": "tiny-llama", "stream": True, "max_tokens": 4, "ignore_eos": True,
            "messages": [{"role": "user", "content": "hello"}],
        }  # fmt: skip
        with router.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert chunks[0]["object"] == "chat.completion.chunk"
        r = router.post("/v1/completions", json={"model": "nope", "prompt": "x"})
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"
        r = router.post(
            "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        models = router.get("/v1/models").json()
        assert models["data"][0]["id"] == "tiny-llama"


def test_round_robin_alternates(replicas: list[LiveServer]) -> None:
    with _router(replicas, "round-robin") as router:
        for _ in range(4):
            body = {"model": "tiny-llama", "prompt": "same prompt", "max_tokens": 1}
            assert router.post("/v1/completions", json=body).status_code == 200
        assert [r["routed"] for r in router.get("/router/stats").json()["replicas"]] == [2, 2]


def test_wildcard_event_endpoints_resolve_to_the_replica_host() -> None:
    from server.router.replica import events_endpoint

    assert events_endpoint("tcp://0.0.0.0:5557", "http://replica1:8000") == "tcp://replica1:5557"
    assert events_endpoint("tcp://*:5558", "http://10.0.0.2:8000") == "tcp://10.0.0.2:5558"
    assert events_endpoint("tcp://127.0.0.1:5557", "http://x:1") == "tcp://127.0.0.1:5557"


def test_chat_turns_follow_their_conversation(replicas: list[LiveServer]) -> None:
    """The router hashes chat prompts through the replica's chat template: a second turn
    goes where the first one's blocks are, whichever replica that was."""
    rng = random.Random(5)
    with _router(replicas, "cache-aware") as router:
        chats = []
        for _ in range(4):
            before = _hbm_blocks(router.get("/router/stats").json())
            messages = [
                {"role": "system", "content": _text(rng, 64)},
                {"role": "user", "content": _text(rng, 256)},
            ]
            body = {"model": "tiny-llama", "messages": messages, "max_tokens": 8}
            r = router.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            answer = r.json()["choices"][0]["message"]["content"]
            chats.append([*messages, {"role": "assistant", "content": answer}])
            _wait_events(router, lambda s, b=before: _hbm_blocks(s) > b)
        for messages in chats[1:] + chats[:1]:
            body = {
                "model": "tiny-llama", "max_tokens": 2,
                "messages": [*messages, {"role": "user", "content": _text(rng, 64)}],
            }  # fmt: skip
            r = router.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 320


def test_a_replica_that_went_away_is_skipped(replicas: list[LiveServer]) -> None:
    root = Path(tempfile.mkdtemp(prefix="tkv-g-"))
    try:
        with ExitStack() as replica_stack:
            gone = replica_stack.enter_context(run_server(_settings(root / "d")))
            config = RouterConfig(
                replicas=(gone.url, replicas[0].url), policy="round-robin", startup_timeout_s=30
            )
            with TestClient(build_router_app(config)) as router:
                replica_stack.close()  # the replica stops; the router keeps running
                for _ in range(4):
                    body = {"model": "tiny-llama", "prompt": "still served", "max_tokens": 1}
                    r = router.post("/v1/completions", json=body)
                    assert r.status_code == 200, r.text
                routed = [r["routed"] for r in router.get("/router/stats").json()["replicas"]]
                assert routed == [0, 4], routed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_prompt_is_hashed_once_for_replicas_of_one_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replicas that share numerics and block size share the prompt's block hashes."""
    calls: list[str] = []
    original = Replica.block_hashes

    def counted(self: Replica, token_ids: list[int], cache_salt: str | None) -> list[bytes]:
        calls.append(self.url)
        return original(self, token_ids, cache_salt)

    monkeypatch.setattr(Replica, "block_hashes", counted)
    replicas = [
        Replica(
            f"http://r{i}",
            numerics_id="same",
            block_size=16,
            tokenizer=ByteTokenizer(),
            events=KVEventSubscriber(f"tcp://127.0.0.1:{free_port()}", None),
        )
        for i in range(3)
    ]
    try:
        router = Router(replicas, "cache-aware", overlap_weight=1.0)
        router.pick(RouteRequest(list(range(64)), None, 16))
        assert len(calls) == 1
    finally:
        for replica in replicas:
            replica.close()
