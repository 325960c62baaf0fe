"""Bad bodies: lone UTF-16 surrogates and oversized bodies get a 4xx, never a 500."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from server.middleware import JSON_THREAD_THRESHOLD_BYTES
from tests.server.live import LiveServer, run_server
from tests.server.test_errors import assert_error

CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"
SURROGATE = "a\\ud800b"  # JSON escape of a lone high surrogate: valid JSON, invalid text


def _post_raw(server: LiveServer, path: str, body: str):
    return server.client.post(
        path, content=body.encode(), headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize(
    ("path", "template", "param"),
    [
        (CMPL, '{"model": "tiny-llama", "prompt": "%s", "max_tokens": 2}', "prompt"),
        (CMPL, '{"model": "tiny-llama", "prompt": ["%s"], "max_tokens": 2}', "prompt"),
        (
            CHAT,
            '{"model": "tiny-llama", "max_tokens": 2, '
            '"messages": [{"role": "user", "content": "%s"}]}',
            "messages.0.content",
        ),
        (
            CHAT,
            '{"model": "tiny-llama", "max_tokens": 2, "messages": [{"role": "user", '
            '"content": [{"type": "text", "text": "%s"}]}]}',
            "messages.0.content",
        ),
        (
            CHAT,
            '{"model": "tiny-llama", "max_tokens": 2, '
            '"messages": [{"role": "user", "content": "hi", "name": "%s"}]}',
            "messages.0.name",
        ),
        (CMPL, '{"model": "%s", "prompt": "hi", "max_tokens": 2}', "model"),
        (CMPL, '{"model": "tiny-llama", "prompt": "hi", "max_tokens": 2, "stop": "%s"}', "stop"),
        (CMPL, '{"model": "tiny-llama", "prompt": "hi", "max_tokens": 2, "stop": ["%s"]}', "stop"),
        (
            CMPL,
            '{"model": "tiny-llama", "prompt": "hi", "max_tokens": 2, "cache_salt": "%s"}',
            "cache_salt",
        ),
        (CMPL, '{"model": "tiny-llama", "prompt": "hi", "max_tokens": 2, "user": "%s"}', "user"),
    ],
)
def test_lone_surrogate_is_400(server: LiveServer, path: str, template: str, param: str):
    r = _post_raw(server, path, template % SURROGATE)
    error = assert_error(r, 400)
    assert error["param"] is not None and error["param"].startswith(param), error
    assert "surrogate" in error["message"]
    # The server is still fine afterwards.
    assert server.client.get("/health").status_code == 200


def test_valid_surrogate_pair_is_served(server: LiveServer):
    # A proper pair (an emoji) is valid text and must not be rejected.
    body = json.dumps({"model": "tiny-llama", "prompt": "hi \U0001f600", "max_tokens": 2})
    r = _post_raw(server, CMPL, body)
    assert r.status_code == 200, r.text


# -- body size -------------------------------------------------------------------------

LIMIT = 1024 * 1024  # a small limit keeps these tests light


@pytest.fixture
def limited(make_settings):
    with run_server(make_settings(max_request_body_bytes=LIMIT)) as live:
        yield live


def _body_of_size(size: int) -> bytes:
    """A completion body of exactly `size` bytes (a long text prompt)."""
    head, tail = b'{"model": "tiny-llama", "max_tokens": 2, "prompt": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_declared_body_over_the_limit_is_413(limited: LiveServer):
    r = limited.client.post(
        CMPL, content=_body_of_size(LIMIT + 1), headers={"content-type": "application/json"}
    )
    error = assert_error(r, 413)
    assert error["code"] == "request_too_large"
    assert str(LIMIT) in error["message"]
    assert limited.metric("tierkv:request_rejected_total", reason="body_too_large") == 1


def test_chunked_body_over_the_limit_is_413(limited: LiveServer):
    def chunks():  # no Content-Length: httpx sends it chunked
        body = _body_of_size(3 * LIMIT)
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    r = limited.client.post(CMPL, content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413)
    assert limited.client.get("/health").status_code == 200


def test_body_at_the_limit_is_served(limited: LiveServer):
    # Exactly at the limit is accepted: the prompt is then too long for the model (a 400
    # from the serving layer, not a 413 from the limit).
    r = limited.client.post(
        CMPL, content=_body_of_size(LIMIT), headers={"content-type": "application/json"}
    )
    assert assert_error(r, 400)["code"] == "context_length_exceeded"


def test_large_json_parsed_off_the_loop_is_correct(limited: LiveServer):
    # Over JSON_THREAD_THRESHOLD_BYTES: parsed in a worker thread, same answers as inline.
    ids = [65] * 100_000  # ~400 KB of token ids
    body = json.dumps({"model": "tiny-llama", "max_tokens": 2, "prompt": ids}).encode()
    assert len(body) > JSON_THREAD_THRESHOLD_BYTES
    r = limited.client.post(CMPL, content=body, headers={"content-type": "application/json"})
    assert assert_error(r, 400)["code"] == "context_length_exceeded"
    r = limited.client.post(CMPL, content=body[:-1], headers={"content-type": "application/json"})
    assert "JSON" in assert_error(r, 400)["message"]
    ok = json.dumps(
        {
            "model": "tiny-llama",
            "max_tokens": 2,
            "prompt": "hi",
            "user": "u" * (JSON_THREAD_THRESHOLD_BYTES + 1),
        }
    ).encode()
    r = limited.client.post(CMPL, content=ok, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_health_answers_while_a_60mb_body_is_refused(server: LiveServer):
    """Defect 7: a 60 MB body used to block the event loop for seconds. Now it is
    refused from its Content-Length (or after the limit, when chunked) and /health keeps
    answering throughout. The 5 s client timeout bounds the test; it is not a speed claim."""
    big = _body_of_size(60 * 1024 * 1024)
    outcomes: list[object] = []

    def upload(chunked: bool) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            content = (
                iter([big[i : i + (1 << 20)] for i in range(0, len(big), 1 << 20)])
                if chunked
                else big
            )
            try:
                r = c.post(CMPL, content=content, headers={"content-type": "application/json"})
                outcomes.append(r.status_code)
            except httpx.TransportError as exc:  # the server may close mid-upload
                outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=upload, args=(chunked,)) for chunked in (False, True)]
    health: list[int] = []
    with httpx.Client(base_url=server.url, timeout=5) as probe:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            health.append(probe.get("/health").status_code)
        for t in threads:
            t.join()
    assert health and set(health) == {200}
    assert outcomes == [413, 413], outcomes
