"""Parsing /metrics and computing per-tier deltas."""

import pytest

from load.metrics_scrape import metrics_url, parse_metrics, server_deltas

BEFORE = """\
# HELP tierkv:prefix_cache_queries_total Prompt tokens looked up.
# TYPE tierkv:prefix_cache_queries_total counter
tierkv:prefix_cache_queries_total 1000.0
# TYPE tierkv:prefix_cache_hits_total counter
tierkv:prefix_cache_hits_total{tier="hbm"} 100.0
tierkv:prefix_cache_hits_total{tier="ddr"} 10.0
# TYPE tierkv:tier_read_bytes_total counter
tierkv:tier_read_bytes_total{tier="ddr"} 4096.0
# TYPE tierkv:num_preemptions_total counter
tierkv:num_preemptions_total 2.0
# TYPE tierkv:tier_used_bytes gauge
tierkv:tier_used_bytes{tier="hbm"} 1000.0
# TYPE tierkv:time_to_first_token_seconds histogram
tierkv:time_to_first_token_seconds_bucket{le="0.1"} 1.0
tierkv:time_to_first_token_seconds_bucket{le="+Inf"} 2.0
tierkv:time_to_first_token_seconds_sum 0.3
tierkv:time_to_first_token_seconds_count 2.0
"""

AFTER = """\
# TYPE tierkv:prefix_cache_queries_total counter
tierkv:prefix_cache_queries_total 3000.0
# TYPE tierkv:prefix_cache_hits_total counter
tierkv:prefix_cache_hits_total{tier="hbm"} 600.0
tierkv:prefix_cache_hits_total{tier="ddr"} 210.0
tierkv:prefix_cache_hits_total{tier="flash"} 200.0
# TYPE tierkv:tier_read_bytes_total counter
tierkv:tier_read_bytes_total{tier="ddr"} 8192.0
tierkv:tier_read_bytes_total{tier="flash"} 1024.0
# TYPE tierkv:num_preemptions_total counter
tierkv:num_preemptions_total 5.0
# TYPE tierkv:tier_used_bytes gauge
tierkv:tier_used_bytes{tier="hbm"} 2000.0
tierkv:tier_used_bytes{tier="ddr"} 500.0
"""


def test_deltas_per_tier():
    d = server_deltas(parse_metrics(BEFORE), parse_metrics(AFTER))
    assert d["prefix_cache_queries"] == 2000.0
    assert d["prefix_cache_hits"] == {"hbm": 500.0, "ddr": 200.0, "flash": 200.0}
    assert d["hit_rate"] == pytest.approx(0.45)
    assert d["read_bytes"] == {"ddr": 4096.0, "flash": 1024.0}
    assert d["preemptions"] == 3.0
    assert d["used_bytes"] == {"hbm": 2000.0, "ddr": 500.0}
    assert d["prompt_tokens"] is None  # missing metric: empty, no crash
    assert d["write_bytes"] == {}
    assert d["scrape_error"] is None


def test_other_servers_and_garbage_give_empty_deltas():
    empty = server_deltas(parse_metrics("# nothing\n"), parse_metrics("# nothing\n"))
    assert empty["prefix_cache_hits"] == {} and empty["hit_rate"] is None
    bad = parse_metrics("<html>not found</html>")
    assert bad.error is not None and bad.samples == {}
    failed = server_deltas(bad, parse_metrics(AFTER))
    assert failed["prefix_cache_hits"] == {} and failed["prefix_cache_queries"] is None


def test_vllm_names_are_read_as_hbm():
    before = parse_metrics(
        "# TYPE vllm:prefix_cache_hits_total counter\n"
        'vllm:prefix_cache_hits_total{model_name="m"} 5.0\n'
    )
    after = parse_metrics(
        "# TYPE vllm:prefix_cache_hits_total counter\n"
        'vllm:prefix_cache_hits_total{model_name="m"} 15.0\n'
    )
    assert server_deltas(before, after)["prefix_cache_hits"] == {"hbm": 10.0}


def test_metrics_url_is_at_the_root():
    assert metrics_url("http://h:1/v1") == "http://h:1/metrics"
    assert metrics_url("http://h:1/") == "http://h:1/metrics"


def test_scalar_counters_are_summed_over_labels_like_vllms_model_name():
    text = """# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{model_name="m"} 3.0
"""
    before = parse_metrics(text.replace("3.0", "1.0"))
    after = parse_metrics(text)
    assert after.total("num_preemptions_total") == 3.0  # prefixes are stripped
    assert server_deltas(before, after)["preemptions"] == 2.0
    assert before.total("nothing_total") is None


def test_a_counter_that_went_down_was_reset():
    before = parse_metrics(
        "# TYPE tierkv:num_preemptions counter\ntierkv:num_preemptions_total 10.0\n"
    )
    after = parse_metrics(
        "# TYPE tierkv:num_preemptions counter\ntierkv:num_preemptions_total 4.0\n"
    )
    assert server_deltas(before, after)["preemptions"] == 4.0


def test_a_name_served_under_both_prefixes_counts_once():
    # tierkv serves vLLM's names too: the tierkv: series (with tiers) win, nothing is
    # summed twice, and names only vLLM has are still read.
    text = """\
# TYPE tierkv:prefix_cache_queries counter
tierkv:prefix_cache_queries_total 100.0
# TYPE tierkv:prefix_cache_hits counter
tierkv:prefix_cache_hits_total{tier="hbm"} 30.0
tierkv:prefix_cache_hits_total{tier="ddr"} 10.0
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{model_name="m"} 100.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{model_name="m"} 40.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.25
"""
    snap = parse_metrics(text)
    assert snap.total("prefix_cache_queries_total") == 100.0
    assert snap.by_tier("prefix_cache_hits_total") == {"hbm": 30.0, "ddr": 10.0}
    assert snap.total("kv_cache_usage_perc") == 0.25
    d = server_deltas(parse_metrics(""), snap)
    assert d["hit_rate"] == pytest.approx(0.4)
