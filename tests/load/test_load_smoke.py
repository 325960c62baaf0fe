"""Short runs of every workload against a live tierkv server (--pace none)."""

import json

import pytest

from load.cli import main
from load.trace import default_trace_path

REAL_TRACE = str(default_trace_path())

WORKLOAD_ARGS = {
    "multiturn": [
        "--num-users",
        "2",
        "--num-turns",
        "3",
        "--system-len",
        "100",
        "--user-len",
        "20",
        "--max-tokens",
        "4",
        "--concurrency",
        "2",
    ],
    "shared-prefix": [
        "--num-docs",
        "2",
        "--questions-per-doc",
        "3",
        "--doc-len",
        "256",
        "--question-len",
        "16",
        "--max-tokens",
        "4",
        "--rate",
        "20",
    ],
    # the trace's first requests share hash id 0: a 51-token block at this scale, more
    # than one 16-token KV block; one at a time so that each sees the previous one cached
    "trace": [
        "--trace",
        REAL_TRACE,
        "--num-requests",
        "6",
        "--length-scale",
        "0.1",
        "--max-tokens",
        "4",
        "--concurrency",
        "1",
    ],
    "random": ["--num-requests", "4", "--input-len", "64", "--max-tokens", "4"],
}


@pytest.mark.parametrize("workload", sorted(WORKLOAD_ARGS))
def test_workload_smoke(tierkv, tmp_path, workload):
    out = tmp_path / workload
    code = main(
        [
            "run",
            "--base-url",
            tierkv.base_url,
            "--workload",
            workload,
            "--seed",
            "11",
            "--metrics-interval",
            "0.05",
            "--out",
            str(out),
            *WORKLOAD_ARGS[workload],
        ]
    )
    assert code == 0, tierkv.log_tail()
    result = json.loads((out / "result.json").read_text())
    assert result["num_errors"] == 0, result["error_examples"]
    assert result["model"] == "tiny-llama"
    # ignore_eos: exactly max_tokens (the trace's own lengths may be shorter)
    expected = {1, 2, 3, 4} if workload == "trace" else {4}
    assert {r["output_tokens"] for r in result["requests"]} <= expected
    assert result["ttft_ms"]["p50"] > 0 and result["output_tokens_per_s"] > 0
    server = result["server"]
    assert server["prefix_cache_queries"] > 0
    assert set(server["prefix_cache_hits"]) == {"hbm", "ddr", "flash"}
    if workload in ("multiturn", "shared-prefix", "trace"):
        # prompts share prefixes: the client-side usage and the server agree on hits
        assert result["cached_tokens"] > 0
        assert sum(server["prefix_cache_hits"].values()) > 0
    if workload == "random":
        assert result["cached_tokens"] == 0
    # /metrics sampled during the run (every 50 ms here; at least a first and last)
    tl = result["server_timeline"]
    assert tl["num_samples"] >= 2 and tl["num_failed_scrapes"] == 0
    assert len(tl["t_s"]) == len(tl["num_requests_running"]) == tl["num_samples"]
    assert all(v is not None for v in tl["num_requests_running"] + tl["num_requests_waiting"])
    assert all(0.0 <= v <= 1.0 for v in tl["kv_cache_usage"])
    assert set(tl["hit_rate_by_tier"]) == {"hbm", "ddr", "flash"}
    assert len(tl["npu_modelled_busy"]) == len(tl["interval_end_s"]) == tl["num_samples"] - 1
    pngs = {"ttft_cdf.png", "tier_hits.png", "timeline.png", "server_timeline.png"}
    assert {p.name for p in out.glob("*.png")} == pngs
    page = (out / "report.html").read_text()
    assert all(f'src="{name}"' in page for name in pngs)
