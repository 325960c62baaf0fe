"""Bad input gets an OpenAI-style 4xx error, never a 500 or a trace."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.server.live import LiveServer, run_server

CHAT = "/v1/chat/completions"
GOOD = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_malformed_json(server: LiveServer):
    r = server.client.post(
        CHAT,
        content=b'{"model": "tiny-llama", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert "JSON" in assert_error(r, 400)["message"]


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"max_tokens": "lots"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, None),
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 2}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_bad_fields(server: LiveServer, patch: dict, param: str | None):
    assert_error(server.client.post(CHAT, json={**GOOD, **patch}), 400, param)


def test_missing_model_field(server: LiveServer):
    body = {k: v for k, v in GOOD.items() if k != "model"}
    assert_error(server.client.post(CHAT, json=body), 400, "model")


def test_unknown_model_is_404(server: LiveServer):
    error = assert_error(server.client.post(CHAT, json={**GOOD, "model": "gpt-9"}), 404, "model")
    assert error["code"] == "model_not_found"


def test_prompt_over_max_model_len(server: LiveServer):
    long = {**GOOD, "messages": [{"role": "user", "content": "x" * 3000}]}
    error = assert_error(server.client.post(CHAT, json=long), 400)
    assert error["code"] == "context_length_exceeded"
    too_many = {**GOOD, "max_tokens": 5000}
    assert_error(server.client.post(CHAT, json=too_many), 400)


def test_completion_prompt_errors(server: LiveServer):
    base = {"model": "tiny-llama", "max_tokens": 2}
    assert_error(
        server.client.post("/v1/completions", json={**base, "prompt": [1, 99999]}), 400, "prompt"
    )
    assert_error(
        server.client.post("/v1/completions", json={**base, "prompt": ["a", "b"]}), 400, "prompt"
    )
    assert_error(server.client.post("/v1/completions", json={**base, "prompt": []}), 400, "prompt")


def test_unknown_route_and_bad_offload(server: LiveServer):
    assert_error(server.client.get("/v1/nothing"), 404)
    assert_error(server.client.post("/cache/offload", json={"tier": "flash"}), 400)


def test_full_queue_is_503(make_settings):
    with run_server(make_settings(max_num_seqs=1, max_waiting=0)) as server:
        slow = {**GOOD, "max_tokens": 400, "ignore_eos": True, "stream": True}
        with server.client.stream("POST", CHAT, json=slow) as first:
            lines = first.iter_lines()  # keep a reference: dropping it closes the stream
            next(lines)  # the first request holds the only slot
            r = server.client.post(CHAT, json=GOOD)
            assert_error(r, 503)
            assert r.headers["retry-after"] == "1"
        # Once it is gone the server takes requests again: as soon as the engine has seen
        # the disconnect (a request sent before that still gets a clean 503).
        deadline = time.monotonic() + 30
        while (r := server.client.post(CHAT, json=GOOD)).status_code != 200:
            assert_error(r, 503)
            assert time.monotonic() < deadline, "the slot was never given back"
            time.sleep(0.05)  # poll interval


def test_negative_seed_is_served_not_a_500(server: LiveServer):
    r = server.client.post(CHAT, json={**GOOD, "seed": -1, "temperature": 0.7})
    assert r.status_code == 200, r.text


def test_tiny_temperature_does_not_kill_the_engine(server: LiveServer):
    r = server.client.post(CHAT, json={**GOOD, "temperature": 1e-320})
    assert r.status_code == 200, r.text
    assert server.client.get("/health").status_code == 200
