"""Bad bodies: lone UTF-16 surrogates and oversized bodies get a 4xx, never a 500."""

from __future__ import annotations

import json

import pytest

from tests.server.live import LiveServer
from tests.server.test_errors import assert_error

CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"
SURROGATE = "a\\ud800b"  # JSON escape of a lone high surrogate: valid JSON, invalid text


def _post_raw(server: LiveServer, path: str, body: str):
    return server.client.post(path, content=body.encode(),
                              headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("path", "template", "param"),
    [
        (CMPL, '{"model": "tiny-llama", "prompt": "%s", "max_tokens": 2}', "prompt"),
        (CMPL, '{"model": "tiny-llama", "prompt": ["%s"], "max_tokens": 2}', "prompt"),
        (CHAT, '{"model": "tiny-llama", "max_tokens": 2, '
               '"messages": [{"role": "user", "content": "%s"}]}', "messages.0.content"),
        (CHAT, '{"model": "tiny-llama", "max_tokens": 2, "messages": [{"role": "user", '
               '"content": [{"type": "text", "text": "%s"}]}]}', "messages.0.content"),
        (CHAT, '{"model": "tiny-llama", "max_tokens": 2, '
               '"messages": [{"role": "user", "content": "hi", "name": "%s"}]}',
         "messages.0.name"),
        (CMPL, '{"model": "%s", "prompt": "hi", "max_tokens": 2}', "model"),
        (CMPL, '{"model": "tiny-llama", "prompt": "hi", "max_tokens": 2, "stop": "%s"}', "stop"),
        (CMPL, '{"model": "tiny-llama", "prompt": "hi", "max_tokens": 2, "stop": ["%s"]}',
         "stop"),
        (CMPL, '{"model": "tiny-llama", "prompt": "hi", "max_tokens": 2, "cache_salt": "%s"}',
         "cache_salt"),
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
