"""Every sampling and request parameter against a live server, for its effect."""

from __future__ import annotations

import json
from typing import Any

import pytest

from npu_sim.tokenizer import EOS
from tests.server.live import LiveServer

PROMPT = "The quick brown fox"


def _complete(server: LiveServer, **body: Any) -> dict[str, Any]:
    payload = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 12, "temperature": 0, **body}
    r = server.client.post("/v1/completions", json=payload)
    assert r.status_code == 200, r.text
    return r.json()


def _text(server: LiveServer, **body: Any) -> str:
    return _complete(server, **body)["choices"][0]["text"]


def test_logit_bias_forces_a_token(server: LiveServer):
    assert _text(server, ignore_eos=True, logit_bias={str(ord("x")): 100}) == "x" * 12


def test_min_tokens_suppresses_eos(server: LiveServer):
    eos_first = _complete(server, logit_bias={str(EOS): 100})
    assert eos_first["usage"]["completion_tokens"] == 1
    assert eos_first["choices"][0]["finish_reason"] == "stop"
    held = _complete(server, logit_bias={str(EOS): 100}, min_tokens=5)
    # 5 tokens with EOS banned, then EOS (counted, as vLLM does, but never printed).
    assert held["usage"]["completion_tokens"] == 6
    assert held["choices"][0]["finish_reason"] == "stop"


def test_stop_token_ids_end_the_request_and_include_stop_str_keeps_its_text(server: LiveServer):
    full = _text(server, ignore_eos=True)
    stop_char = full[4]
    cut = full.index(stop_char)
    body = dict(ignore_eos=True, stop_token_ids=[ord(stop_char)])
    r = _complete(server, **body)
    assert r["choices"][0]["text"] == full[:cut]
    assert r["choices"][0]["finish_reason"] == "stop"
    assert _text(server, include_stop_str_in_output=True, **body) == full[: cut + 1]
    # The same for a stop string.
    stop = full[5:7]
    assert (
        _text(server, ignore_eos=True, stop=[stop], include_stop_str_in_output=True)
        == (full[: full.index(stop) + 2])
    )


def test_top_k_one_and_min_p_one_equal_greedy(server: LiveServer):
    greedy = _text(server, ignore_eos=True)
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        assert _text(server, ignore_eos=True, temperature=1.5, seed=9, **extra) == greedy
    # And at that temperature without truncation the text differs.
    assert _text(server, ignore_eos=True, temperature=1.5, seed=9) != greedy


@pytest.mark.parametrize(
    "penalty", [{"repetition_penalty": 1.8}, {"frequency_penalty": 2.0}, {"presence_penalty": 2.0}]
)
def test_penalties_change_greedy_output(server: LiveServer, penalty: dict):
    greedy = _text(server, ignore_eos=True, max_tokens=32)
    assert _text(server, ignore_eos=True, max_tokens=32, **penalty) != greedy


def test_frequency_penalty_reduces_repetition(server: LiveServer):
    plain = _text(server, ignore_eos=True, max_tokens=32)
    penalised = _text(server, ignore_eos=True, max_tokens=32, frequency_penalty=2.0)
    assert len(set(penalised)) > len(set(plain))


def test_bad_words_are_never_generated(server: LiveServer):
    full = _text(server, ignore_eos=True, max_tokens=24)
    banned = sorted(set(full))[:3]
    text = _text(server, ignore_eos=True, max_tokens=24, bad_words=banned)
    assert text and not set(text) & set(banned)


def test_truncate_prompt_tokens_keeps_the_last_tokens(server: LiveServer):
    r = _complete(server, ignore_eos=True, truncate_prompt_tokens=5)
    assert r["usage"]["prompt_tokens"] == 5
    same = _complete(server, ignore_eos=True, prompt=[ord(c) for c in PROMPT[-5:]])
    assert r["choices"][0]["text"] == same["choices"][0]["text"]


def test_continuous_usage_stats_puts_usage_in_every_chunk(server: LiveServer):
    body = {
        "model": "tiny-llama",
        "prompt": PROMPT,
        "max_tokens": 5,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    with server.client.stream("POST", "/v1/completions", json=body) as r:
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(x) for x in lines if x != "[DONE]"]
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 5
    assert all(c["usage"]["prompt_tokens"] == len(PROMPT) + 1 for c in chunks)  # + BOS


def test_explicit_nulls_mean_defaults(server: LiveServer):
    nulls = {
        k: None
        for k in (
            "temperature",
            "top_p",
            "n",
            "stream",
            "echo",
            "seed",
            "stop",
            "stream_options",
            "top_k",
            "logit_bias",
        )
    }
    r = server.client.post(
        "/v1/completions", json={"model": "tiny-llama", "prompt": "hi", **nulls, "max_tokens": None}
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 16  # OpenAI's default max_tokens
    r = server.client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "temperature": None,
            "top_p": None,
            "n": None,
            "stream": None,
            "max_completion_tokens": None,
            "presence_penalty": None,
        },
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "field, value",
    [
        ("best_of", 2),
        ("tool_choice", "auto"),
        ("kv_transfer_params", {"do_remote": True}),
        ("chat_template_kwargs", {"enable_thinking": True}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
        ("guided_json", {"type": "object"}),
        ("use_beam_search", True),
        ("top_logprobs", 2),
        ("logprobs", True),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ],
)
def test_parameters_not_honoured_are_rejected(server: LiveServer, field: str, value: Any):
    r = server.client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            field: value,
        },
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field


@pytest.mark.parametrize(
    "body, param",
    [
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logit_bias": {"99999": 1}}, "logit_bias"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"top_k": -2}, "top_k"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"bad_words": ["ok", "\ud800"]}, "bad_words"),
    ],
)
def test_bad_values_get_a_400_naming_the_field(server: LiveServer, body: dict, param: str):
    payload = {"model": "tiny-llama", "prompt": "hi", "max_tokens": 2, **body}
    # json.dumps escapes a lone surrogate as \ud800 (httpx's json= cannot encode it).
    r = server.client.post(
        "/v1/completions",
        content=json.dumps(payload),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_response_format_text_is_accepted(server: LiveServer):
    assert _complete(server, response_format={"type": "text"})


def test_priority_is_accepted_and_non_integer_is_rejected(server: LiveServer):
    assert _complete(server, priority=-5)
    r = server.client.post(
        "/v1/completions", json={"model": "tiny-llama", "prompt": "hi", "priority": "high"}
    )
    assert r.status_code == 400


def test_image_part_gets_a_400_naming_the_part_type(server: LiveServer):
    r = server.client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny-llama",
            "max_tokens": 2,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                    ],
                }
            ],
        },
    )
    assert r.status_code == 400, r.text
    assert "image_url" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "messages.0.content.1.type"


def test_x_request_id_is_echoed_and_names_the_completion(server: LiveServer):
    r = server.client.post(
        "/v1/completions",
        headers={"X-Request-Id": "abc-123"},
        json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 2},
    )
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["id"] == "cmpl-abc-123"
    r2 = server.client.post(
        "/v1/completions",
        headers={"X-Request-Id": "abc-123"},
        json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 2},
    )
    assert r2.status_code == 200  # a reused id is fine
    made = server.client.get("/health").headers["x-request-id"]
    assert len(made) == 32 and made != server.client.get("/health").headers["x-request-id"]


def test_response_format_json_object_constrains_the_output(server: LiveServer):
    # Biases that make the automaton's choices deterministic: '"' opens and closes an
    # empty key and an empty string value, then '}' beats ','; ':' and EOS are forced.
    bias = {str(ord('"')): 100, str(ord("}")): 50}
    body = {"response_format": {"type": "json_object"}, "logit_bias": bias}
    r = _complete(server, max_tokens=50, **body)
    assert r["choices"][0]["text"] == '{"":""}'
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] == 8  # 7 characters and EOS
    # Sampled: still one JSON object, ended by EOS.
    loose = {str(ord('"')): 3, str(ord("}")): 3, str(ord("]")): 3}
    for seed in (1, 2):
        r = _complete(
            server,
            max_tokens=1500,
            temperature=1.0,
            seed=seed,
            response_format={"type": "json_object"},
            logit_bias=loose,
        )
        assert r["choices"][0]["finish_reason"] == "stop"
        assert isinstance(json.loads(r["choices"][0]["text"]), dict)
    r = server.client.post(
        "/v1/completions",
        json={
            "model": "tiny-llama",
            "prompt": "hi",
            "ignore_eos": True,
            "response_format": {"type": "json_object"},
        },
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "ignore_eos"
