"""vLLM's metric names and meanings, scraped from /metrics after a known run."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.server.live import LiveServer
from tests.server.test_request_metrics import wait_for_metric

MODEL = {"model_name": "tiny-llama", "engine": "0"}


def scrape(server: LiveServer) -> dict[tuple[str, frozenset], float]:
    text = server.client.get("/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset({**MODEL, **labels}.items()))]


def test_vllm_metrics_after_a_known_run(server: LiveServer):
    samples = scrape(server)
    assert value(samples, "vllm:num_requests_running") == 0
    assert value(samples, "vllm:kv_cache_usage_perc") == 0.0
    assert not any(name.endswith("_created") for name, _ in samples)
    info = [labels for name, labels in samples if name == "vllm:cache_config_info"]
    assert dict(info[0])["block_size"] == "16" and int(dict(info[0])["num_gpu_blocks"]) > 0

    prompts = [list(range(40, 40 + n)) for n in (20, 33, 7)]  # token-id prompts
    outputs = []
    for prompt in prompts:
        outputs.append(server.complete(prompt, 6))  # type: ignore[arg-type]
    # The same prompt again: its 2 full blocks come from the cache.
    again = server.complete(prompts[1], 6)  # type: ignore[arg-type]
    text = outputs[0]["choices"][0]["text"]
    stopped = server.complete(prompts[0], 6, stop=[text[2:4]])  # type: ignore[arg-type]
    assert stopped["choices"][0]["finish_reason"] == "stop"
    sent = [*prompts, prompts[1], prompts[0]]
    generated = [6, 6, 6, 6, stopped["usage"]["completion_tokens"]]

    samples = scrape(server)
    assert value(samples, "vllm:prompt_tokens_total") == sum(len(p) for p in sent)
    assert value(samples, "vllm:generation_tokens_total") == sum(generated)
    assert value(samples, "vllm:request_success_total", finished_reason="length") == 4
    assert value(samples, "vllm:request_success_total", finished_reason="stop") == 1
    assert value(samples, "vllm:request_success_total", finished_reason="abort") == 0
    assert value(samples, "vllm:prefix_cache_queries_total") == sum(len(p) for p in sent)
    # Every prompt starts with the same tokens: each later one hits earlier full blocks.
    cached = sum(
        r["usage"]["prompt_tokens_details"]["cached_tokens"] for r in [*outputs, again, stopped]
    )
    assert cached == 16 + 0 + 32 + 16
    assert value(samples, "vllm:prefix_cache_hits_total") == cached
    assert value(samples, "vllm:num_preemptions_total") == 0
    for name in (
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "vllm:request_inference_time_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:time_to_first_token_seconds",
        "vllm:request_time_per_output_token_seconds",
    ):
        assert value(samples, f"{name}_count") == 5, name
    assert value(samples, "vllm:request_prompt_tokens_sum") == sum(len(p) for p in sent)
    assert value(samples, "vllm:request_generation_tokens_sum") == sum(generated)
    # One gap between each two consecutive tokens of a request.
    gaps = sum(n - 1 for n in generated)
    assert value(samples, "vllm:inter_token_latency_seconds_count") == gaps
    assert value(samples, "vllm:time_per_output_token_seconds_count") == gaps
    # Phases add up: queue + inference <= e2e, prefill + decode == inference.
    e2e = value(samples, "vllm:e2e_request_latency_seconds_sum")
    queue = value(samples, "vllm:request_queue_time_seconds_sum")
    prefill = value(samples, "vllm:request_prefill_time_seconds_sum")
    decode = value(samples, "vllm:request_decode_time_seconds_sum")
    inference = value(samples, "vllm:request_inference_time_seconds_sum")
    assert abs(prefill + decode - inference) < 1e-6
    assert queue + inference <= e2e + 1e-6
    # The tierkv: names are still served.
    assert server.metric("tierkv:request_success_total", finished_reason="length") == 4
    assert server.metric("tierkv:npu_wall_busy_seconds_total") > 0
    assert "tierkv:npu_modelled_busy_seconds_total" in server.client.get("/metrics").text


def test_abort_is_counted_and_kv_usage_tracks_running_requests(server: LiveServer):
    body = {
        "model": "tiny-llama",
        "prompt": "x" * 40,
        "max_tokens": 500,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with server.client.stream("POST", "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        samples = scrape(server)
        assert value(samples, "vllm:num_requests_running") == 1
        usage = value(samples, "vllm:kv_cache_usage_perc")
        info = next(dict(lb) for name, lb in samples if name == "vllm:cache_config_info")
        assert usage >= 3 / int(info["num_gpu_blocks"])  # >= 41 tokens of 16-token blocks
    wait_for_metric(server, "vllm:request_success_total", 1, finished_reason="abort", **MODEL)
    samples = scrape(server)
    assert value(samples, "vllm:kv_cache_usage_perc") == 0.0
    assert value(samples, "vllm:num_requests_running") == 0
