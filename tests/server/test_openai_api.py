"""The official `openai` client against a live server."""

from __future__ import annotations

import openai
import pytest

from tests.server.live import LiveServer


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_models(client: openai.OpenAI):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-llama"]


def test_chat_non_stream(client: openai.OpenAI):
    r = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    # ignore_eos keeps going past EOS/END_OF_TURN; those specials produce no text.
    assert 0 < len(choice.message.content) <= 12 and choice.message.content.isprintable()
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert r.usage.prompt_tokens_details.cached_tokens == 0


def test_chat_stream_matches_non_stream(client: openai.OpenAI):
    content = "Count to ten, slowly, one number per line please."
    kwargs = dict(
        model="tiny-llama",
        messages=[{"role": "user", "content": content}],
        max_completion_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    # The prompt was just served: its full blocks come from the cache.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0


def test_seeded_sampling_is_reproducible(client: openai.OpenAI):
    kwargs = dict(
        model="tiny-llama",
        prompt="Once upon a time",
        max_tokens=16,
        temperature=0.9,
        top_p=0.9,
        seed=1234,
        extra_body={"ignore_eos": True},
    )
    a = client.completions.create(**kwargs).choices[0].text
    b = client.completions.create(**kwargs).choices[0].text
    assert a == b


def test_completions_and_stop_strings(client: openai.OpenAI):
    base = client.completions.create(
        model="tiny-llama",
        prompt="abc",
        max_tokens=20,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    text = base.choices[0].text
    assert base.object == "text_completion" and len(text) >= 8
    stop = text[5:7]
    cut = text[: text.index(stop)]
    stopped = client.completions.create(
        model="tiny-llama",
        prompt="abc",
        max_tokens=20,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert stopped.choices[0].text == cut
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="tiny-llama",
        prompt="abc",
        max_tokens=20,
        temperature=0,
        stop=stop,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    parts = list(streamed)
    assert "".join(p.choices[0].text for p in parts) == cut
    assert parts[-1].choices[0].finish_reason == "stop"


def test_token_id_prompt(client: openai.OpenAI):
    ids = [256, *b"hello"]
    by_ids = client.completions.create(
        model="tiny-llama", prompt=ids, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    by_text = client.completions.create(
        model="tiny-llama",
        prompt="hello",
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert by_ids.choices[0].text == by_text.choices[0].text
