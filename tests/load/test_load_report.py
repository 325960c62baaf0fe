"""Plots and report.html from hand-made results (no server): every image exists, the
page links only existing images, series a server does not expose degrade quietly."""

import re

from load.html_report import write_html_report
from load.metrics_sampler import ServerPoint, server_timeline
from load.plots import short_count, write_plots
from load.plots_server import rolling_mean
from load.report import percentile_warnings, summary_rows


def result(num_requests: int, with_tiers: bool = True) -> dict:
    requests = [
        {
            "index": i,
            "start_s": 0.1 * i,
            "ttft_ms": 50.0 + 10 * i,
            "e2e_ms": 500.0,
            "output_tokens": 8,
            "prompt_tokens": 100,
            "cached_tokens": 64 if i % 2 else 0,
            "status": 200,
            "error": None,
        }
        for i in range(num_requests)
    ]
    points = [
        ServerPoint(
            t_s=0.5 * k,
            running=float(k % 3),
            waiting=float(k),
            loading_kv=None,
            kv_usage=0.1 * k,
            kv_usage_source="kv_cache_usage_perc",
            queries=100.0 * k,
            hits={"hbm": 30.0 * k, "ddr": 10.0 * k} if with_tiers else {"hbm": 40.0 * k},
            npu_modelled_s=0.1 * k,
            npu_wall_s=0.4 * k,
            vnpu_busy_s={"a": 0.05 * k, "b": 0.2 * k} if with_tiers else {},
        )
        for k in range(30)
    ]
    latency = {"mean": 60.0, "p50": 55.0, "p90": 80.0, "p99": 90.0, "count": num_requests}
    return {
        "workload": "multiturn",
        "base_url": "http://h:1",
        "model": "m",
        "started_at": "2026-11-24T23:00:00.123+00:00",
        "duration_s": 15.0,
        "arrival": {"mode": "closed", "concurrency": 4},
        "options": {"num_users": 4},
        **{k: latency for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")},
        "requests_per_s": 1.0,
        "output_tokens_per_s": 8.0,
        "goodput_requests_per_s": 1.0,
        "num_requests": num_requests,
        "num_errors": 0,
        "errors_by_status": {},
        "error_examples": [],
        "prompt_tokens": 100 * num_requests,
        "cached_tokens": 32 * num_requests,
        "server": {
            "prefix_cache_queries": 2900.0,
            "prefix_cache_hits": points[-1].hits,
            "npu_busy_s": 3.0,
            "npu_wall_busy_s": 12.0,
        },
        "timeline": {
            "bucket_s": 1.0,
            "t_s": [0.0, 1.0, 2.0],
            "output_tokens_per_s": [8.0, 9.0, 7.0],
            "requests_per_s": [1, 1, 1],
            "ttft_ms_mean": [50.0, None, 70.0],
        },
        "server_timeline": server_timeline(points, 0.5),
        "requests": requests,
    }


def linked_images(out_dir):
    page = (out_dir / "report.html").read_text()
    return page, re.findall(r'<img src="([^"]+)"', page)


def test_one_run_gets_four_plots_and_a_page_linking_them(tmp_path):
    r = result(12)
    paths = write_plots([("run", r)], tmp_path)
    assert [p.name for p in paths] == [
        "ttft_cdf.png",
        "tier_hits.png",
        "timeline.png",
        "server_timeline.png",
    ]
    assert all(p.stat().st_size > 10_000 for p in paths)
    write_html_report([("run", r)], tmp_path, paths)
    page, images = linked_images(tmp_path)
    assert images == [p.name for p in paths]  # relative links to files that exist
    assert "p99 rest on only 12 samples" in page  # the warning is on the page
    assert "num-users" in page and "2026-11-24 23:00:00 UTC" in page


def test_compare_without_server_samples_or_tiers(tmp_path):
    vllm_like = result(150, with_tiers=False)
    no_metrics = result(3)
    no_metrics["server"] = {}
    no_metrics["server_timeline"] = None
    labelled = [("a", vllm_like), ("b", no_metrics)]
    paths = write_plots(labelled, tmp_path)
    assert len(paths) == 4  # one run has samples: the server plot is drawn
    write_html_report(labelled, tmp_path, paths)
    page, images = linked_images(tmp_path)
    assert len(images) == 4 and all((tmp_path / i).is_file() for i in images)
    only_bare = write_plots([("b", no_metrics)], tmp_path / "bare")
    assert [p.name for p in only_bare] == ["ttft_cdf.png", "tier_hits.png", "timeline.png"]


def test_percentile_warnings_need_100_samples_for_p99():
    assert percentile_warnings(result(150)) == []
    warnings = percentile_warnings(result(12))
    assert len(warnings) == 4 and all("p99 rest on only 12" in w for w in warnings)
    assert "p90/p99" in percentile_warnings(result(5))[0]
    rows = dict(summary_rows(result(12)))
    assert rows["NPU busy modelled / wall"] == "20% / 80%"
    assert rows["peak waiting (sampled)"] == "29"


def test_helpers():
    assert [short_count(v) for v in (950, 10_120, 119_408, 1_234_567)] == [
        "950",
        "10.1k",
        "119k",
        "1.23M",
    ]
    assert rolling_mean([1.0, None, 3.0, 5.0], 2) == [1.0, 1.0, 3.0, 4.0]
    assert rolling_mean([None], 3) == [None]
