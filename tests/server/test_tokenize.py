"""Model cards, /tokenize, /detokenize, the exported HF tokenizer and served names."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer as HFTokenizer

from npu_sim.tokenizer import EOS
from server.config import Settings
from tests.server.live import LiveServer, run_server

PROMPT = "Tokens, counted the server's way."


def test_model_card_and_unknown_model(server: LiveServer):
    card = server.client.get("/v1/models/tiny-llama").json()
    assert card["id"] == "tiny-llama" and card["object"] == "model"
    assert card["max_model_len"] == server.settings.max_model_len
    r = server.client.get("/v1/models/gpt-9")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_tokenize_counts_what_usage_reports(server: LiveServer):
    r = server.client.post("/tokenize", json={"model": "tiny-llama", "prompt": PROMPT})
    assert r.status_code == 200, r.text
    body = r.json()
    usage = server.complete(PROMPT, 4)["usage"]
    assert body["count"] == len(body["tokens"]) == usage["prompt_tokens"]
    assert body["max_model_len"] == server.settings.max_model_len and body["token_strs"] is None
    messages = [{"role": "user", "content": PROMPT}]
    chat = server.client.post("/tokenize", json={"messages": messages}).json()
    done = server.client.post(
        "/v1/chat/completions",
        json={"model": "tiny-llama", "messages": messages, "max_tokens": 2},
    ).json()
    assert chat["count"] == done["usage"]["prompt_tokens"]
    strs = server.client.post("/tokenize", json={"prompt": "ab", "return_token_strs": True})
    assert strs.json()["token_strs"] == ["<|bos|>", "a", "b"]
    raw = server.client.post("/tokenize", json={"prompt": "ab", "add_special_tokens": False})
    assert raw.json()["tokens"] == [ord("a"), ord("b")]


def test_add_special_tokens_as_vllm(server: LiveServer):
    """vLLM's `add_special_tokens`: completions default true (BOS before a text prompt),
    false sends the text's ids alone; chat defaults false (the template has its own) and
    true puts a BOS before the template. /tokenize counts the same way."""
    tok = server.client.post
    text_ids = len(PROMPT.encode())
    with_bos = server.complete(PROMPT, 2)["usage"]["prompt_tokens"]
    without = server.complete(PROMPT, 2, add_special_tokens=False)["usage"]["prompt_tokens"]
    assert (with_bos, without) == (text_ids + 1, text_ids)
    counted = tok("/tokenize", json={"prompt": PROMPT, "add_special_tokens": False}).json()
    assert counted["count"] == without
    messages = [{"role": "user", "content": PROMPT}]
    counts = []
    for add in (False, True):
        body = {"model": "tiny-llama", "messages": messages, "max_tokens": 2}
        r = tok("/v1/chat/completions", json={**body, "add_special_tokens": add})
        assert r.status_code == 200, r.text
        counts.append(r.json()["usage"]["prompt_tokens"])
        counted = tok("/tokenize", json={"messages": messages, "add_special_tokens": add})
        assert counted.json()["count"] == counts[-1]
    assert counts[1] == counts[0] + 1


def test_detokenize_round_trips_and_rejects_bad_ids(server: LiveServer):
    ids = server.client.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    r = server.client.post("/detokenize", json={"model": "tiny-llama", "tokens": ids})
    assert r.json() == {"prompt": PROMPT}
    r = server.client.post("/detokenize", json={"tokens": [1, 10**6]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    r = server.client.post("/detokenize", json={"model": "other", "tokens": [1]})
    assert r.status_code == 404


def test_exported_tokenizer_counts_prompt_and_output_tokens_as_the_server(
    server: LiveServer, tmp_path: Path
):
    text = server.client.get("/v1/tokenizer.json").text
    hf = HFTokenizer.from_str(text)
    config = server.client.get("/v1/tokenizer_config.json").json()
    assert config["eos_token"] == "<|eos|>" and config["bos_token"] == "<|bos|>"
    # EOS strongly preferred, but ignore_eos: it is never sampled, so every output token
    # has text and a tool that counts the text's tokens agrees with usage.
    r = server.complete(PROMPT, 24, logit_bias={str(EOS): 50}, temperature=0.8, seed=1)
    output = r["choices"][0]["text"]
    assert len(hf.encode(PROMPT).ids) == r["usage"]["prompt_tokens"]
    assert len(hf.encode(output, add_special_tokens=False).ids) == 24
    assert r["usage"]["completion_tokens"] == 24
    # The command writes the same files.
    out = tmp_path / "tok"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "export-tokenizer",
            "--out",
            str(out),
            "--max-model-len",
            str(server.settings.max_model_len),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "tokenizer.json").read_text() == text
    assert json.loads((out / "tokenizer_config.json").read_text()) == config


def test_served_model_names_are_aliases(make_settings: Callable[..., Settings]):
    with run_server(make_settings(served_model_name=["my-llm", "alias"])) as live:
        listed = [m["id"] for m in live.client.get("/v1/models").json()["data"]]
        assert listed == ["my-llm", "alias"]
        assert live.client.get("/v1/models/alias").status_code == 200
        for name in ("my-llm", "alias"):
            r = live.client.post(
                "/v1/completions", json={"model": name, "prompt": "hi", "max_tokens": 2}
            )
            assert r.status_code == 200 and r.json()["model"] == "my-llm"
        r = live.client.post(
            "/v1/completions", json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 2}
        )
        assert r.status_code == 404
        families = text_string_to_metric_families(live.client.get("/metrics").text)
        labels = {
            s.labels.get("model_name")
            for f in families
            if f.name.startswith("vllm:")
            for s in f.samples
        }
        assert labels == {"my-llm"}
