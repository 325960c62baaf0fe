"""Issue #7, defect 11: every finished request is counted once, with vLLM's reason."""

from __future__ import annotations

import time

from tests.server.live import LiveServer

SUCCESS = "tierkv:request_success_total"
E2E_COUNT = "tierkv:e2e_request_latency_seconds_count"
POLL_TIMEOUT_S = 30.0


def wait_for_metric(server: LiveServer, name: str, value: float, **labels: str) -> None:
    """Poll /metrics until `name` reaches `value` (an abort is counted asynchronously)."""
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while server.metric(name, **labels) != value:
        assert time.monotonic() < deadline, f"{name}{labels} stuck at {server.metric(name)}"
        time.sleep(0.02)  # poll interval, not a stand-in for work


def test_length_stop_string_and_abort_finishes_are_each_counted_once(server: LiveServer):
    prompt = "Count me once, whatever ends me."
    text = server.complete(prompt, 20)["choices"][0]["text"]
    assert server.metric(SUCCESS, finished_reason="length") == 1

    stop = text[5:7]
    stopped = server.complete(prompt, 20, stop=[stop])["choices"][0]
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == text[: text.index(stop)]
    # Before the fix the front end cut the request at the stop string and aborted it:
    # neither the success counter nor the e2e histogram saw it.
    assert server.metric(SUCCESS, finished_reason="stop") == 1
    assert server.metric(E2E_COUNT) == 2

    body = {
        "model": server.settings.model,
        "prompt": prompt,
        "max_tokens": 400,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with server.client.stream("POST", "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    # The client went away after its first chunk: counted as an abort, once.
    wait_for_metric(server, SUCCESS, 1, finished_reason="abort")
    wait_for_metric(server, E2E_COUNT, 3)
    assert server.metric(SUCCESS, finished_reason="length") == 1
    assert server.metric(SUCCESS, finished_reason="stop") == 1
    assert server.cache_stats()["tiers"]["hbm"]["active_blocks"] == 0
