"""HTTP failure injection (`--failure-injection-rate`, `--failure-types`, seedable)."""

from __future__ import annotations

import pytest

from server.config import FAILURE_TYPES, Settings
from server.failure_injection import FailureInjector, failure_catalogue
from tests.server.live import LiveServer, run_server
from tests.server.test_errors import assert_error

CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"
GOOD = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
EXPECTED_STATUS = {
    "rate_limit": 429,
    "invalid_api_key": 401,
    "context_length": 400,
    "server_error": 500,
    "invalid_request": 400,
    "model_not_found": 404,
}


def _injector(rate: float, types=FAILURE_TYPES, seed: int | None = 7) -> FailureInjector:
    return FailureInjector(rate, types, failure_catalogue("tiny-llama", 2048), seed)


def test_draws_are_reproducible_with_a_seed():
    one, two = _injector(30), _injector(30)
    seq = [one.draw() for _ in range(500)]
    assert seq == [two.draw() for _ in range(500)]
    failed = [t for t in seq if t is not None]
    assert 100 < len(failed) < 200  # 30% of 500, loosely
    assert set(failed) == set(FAILURE_TYPES)


def test_rate_bounds_and_types():
    assert all(_injector(0).draw() is None for _ in range(200))
    assert all(_injector(100, ["rate_limit"]).draw() == "rate_limit" for _ in range(200))
    with pytest.raises(ValueError):
        _injector(101)
    with pytest.raises(ValueError):
        _injector(50, ["teapot"])
    with pytest.raises(ValueError, match="unknown failure types"):
        Settings(failure_types="rate_limit,teapot")
    assert Settings().failure_type_list == FAILURE_TYPES  # unset: every type


@pytest.mark.parametrize("kind", FAILURE_TYPES)
def test_each_failure_type_answers_in_openai_form(make_settings, kind: str):
    settings = make_settings(failure_injection_rate=100, failure_types=kind)
    with run_server(settings) as server:
        for path, body in ((CHAT, GOOD), (CMPL, {"model": "tiny-llama", "prompt": "hi"})):
            r = server.client.post(path, json=body)
            error = assert_error(r, EXPECTED_STATUS[kind])
            expected = failure_catalogue("tiny-llama", 2048)[kind]
            assert (error["type"], error["code"], error["param"]) == (
                expected.type,
                expected.code,
                expected.param,
            )
            assert r.headers["x-tierkv-injected-failure"] == kind
        if kind == "rate_limit":
            assert r.headers["retry-after"] == "1"
        assert server.metric("tierkv:injected_failures_total", type=kind) == 2


def test_only_completion_endpoints_are_affected(make_settings):
    with run_server(make_settings(failure_injection_rate=100)) as server:
        assert server.client.get("/health").status_code == 200
        assert server.client.get("/v1/models").status_code == 200
        assert server.client.get("/metrics").status_code == 200
        assert server.client.get("/cache/stats").status_code == 200


def _statuses(server: LiveServer, n: int) -> list[int]:
    return [server.client.post(CHAT, json=GOOD).status_code for _ in range(n)]


def test_seeded_servers_fail_the_same_requests(make_settings):
    settings = make_settings(failure_injection_rate=50, failure_injection_seed=42)
    with run_server(settings) as server:
        first = _statuses(server, 30)
        total = sum(server.metric("tierkv:injected_failures_total", type=t) for t in FAILURE_TYPES)
    with run_server(settings) as server:
        assert _statuses(server, 30) == first
    assert 200 in first and any(s != 200 for s in first)
    assert total == sum(s != 200 for s in first)
