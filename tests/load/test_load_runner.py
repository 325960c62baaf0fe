"""Client, runner and CLI against the bare SSE server (a real HTTP server)."""

import asyncio
import json
import re

import pytest

from load import workloads
from load.bench._servers import free_port
from load.cli import main
from load.client import ServerUnreachableError
from load.runner import Arrival, poisson_arrivals, run_workload
from load.stats import Slo


def run(base_url, specs, arrival, **kw):
    return asyncio.run(run_workload(base_url, specs, arrival, Slo(), **kw))


def test_poisson_arrivals_are_seeded():
    a = poisson_arrivals(100, rate=10.0, seed=1)
    assert a == poisson_arrivals(100, 10.0, 1) and a != poisson_arrivals(100, 10.0, 2)
    assert a[0] == 0.0 and all(x < y for x, y in zip(a, a[1:], strict=False))
    assert 5 < a[-1] < 15  # about 99 gaps of 0.1 s
    assert poisson_arrivals(3, float("inf"), 0) == [0.0, 0.0, 0.0]


def test_arrival_needs_exactly_one_mode():
    with pytest.raises(ValueError):
        Arrival()
    with pytest.raises(ValueError):
        Arrival(rate=1.0, concurrency=2)


def test_closed_loop_multiturn_carries_the_history(bare_server):
    specs = workloads.multiturn(2, 3, 20, 10, max_tokens=5, seed=0)
    out = run(bare_server.base_url, specs, Arrival(concurrency=2))
    assert out.model == "bare-sse"
    assert out.stats.num_errors == 0 and out.stats.num_requests == 6
    assert all(r.output_tokens == 5 and len(r.chunk_times_s) == 5 for r in out.records)
    # the bare server reports the characters of all messages as prompt tokens:
    # system 20 + turns * (10 + 5) ...
    assert [r.prompt_tokens for r in out.records] == [30, 30, 45, 45, 60, 60]
    r = out.records[0]
    assert 0 < r.ttft_s <= r.e2e_s
    # Closed loop with concurrency 2: never more than 2 requests in flight.
    events = sorted([(x.start_s, 1) for x in out.records] + [(x.end_s, -1) for x in out.records])
    in_flight = max_in_flight = 0
    for _, delta in events:
        in_flight += delta
        max_in_flight = max(max_in_flight, in_flight)
    assert max_in_flight <= 2
    assert out.server["prefix_cache_hits"] == {}  # no /metrics: empty, no crash
    assert out.server["scrape_error"]


def test_open_loop_poisson_and_trace_times(bare_server):
    specs = workloads.random_prompts(6, 32, 4, seed=0)
    out = run(bare_server.base_url, specs, Arrival(rate=50.0, seed=0))
    assert out.stats.num_errors == 0 and out.stats.output_tokens == 24
    trace_specs = [
        workloads.RequestSpec(
            index=i,
            api=workloads.Api.COMPLETIONS,
            prompt="x",
            max_tokens=2,
            input_tokens=1,
            arrival_s=0.1 * i,
        )
        for i in range(3)
    ]
    out = run(bare_server.base_url, trace_specs, Arrival(trace_times=True))
    starts = [r.start_s for r in out.records]
    assert starts[2] >= 0.2 and starts[1] >= 0.1
    # ... and not scaled wrongly: 0.2 s apart, not 2 s (generous bound for a busy box).
    assert starts[2] - starts[0] < 1.0


def test_failed_requests_are_recorded_by_status(bare_server, monkeypatch):
    from load import client as client_mod

    original = client_mod.api_url
    monkeypatch.setattr(
        client_mod,
        "api_url",
        lambda base, path: original(base, path) if path == "models" else original(base, "missing"),
    )
    specs = workloads.random_prompts(3, 8, 2, seed=0)
    out = run(bare_server.base_url, specs, Arrival(concurrency=2))
    assert out.stats.num_errors == 3
    assert out.stats.errors_by_status == {"404": 3}
    assert all(r.error for r in out.records)


def test_unreachable_server_is_a_clear_error(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachableError, match="cannot reach"):
        run(url, workloads.random_prompts(1, 8, 2, 0), Arrival(concurrency=1))
    code = main(["run", "--base-url", url, "--workload", "random", "--out", str(tmp_path)])
    assert code == 2
    assert "unreachable" in capsys.readouterr().out


def test_run_and_compare_commands_write_results_and_plots(bare_server, tmp_path):
    for name in ("a", "b"):
        code = main(
            [
                "run",
                "--base-url",
                bare_server.base_url,
                "--workload",
                "random",
                "--num-requests",
                "4",
                "--input-len",
                "16",
                "--max-tokens",
                "3",
                "--rate",
                "100",
                "--slo-ttft",
                "1000",
                "--out",
                str(tmp_path / name),
            ]
        )
        assert code == 0
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(result[key]) >= {"mean", "p50", "p90", "p99"}
    for key in (
        "requests_per_s",
        "output_tokens_per_s",
        "num_requests",
        "num_errors",
        "cached_tokens",
        "prompt_tokens",
        "server",
    ):
        assert key in result
    assert result["num_requests"] == 4 and result["prompt_tokens"] == 64
    assert result["good_fraction"] == 1.0
    # the bare server has no /metrics: no samples, no server plot, no crash
    assert result["server_timeline"] is None
    assert {p.name for p in (tmp_path / "a").glob("*.png")} == {
        "ttft_cdf.png",
        "tier_hits.png",
        "timeline.png",
    }
    assert_report_links_existing_images(tmp_path / "a", 3)
    code = main(
        [
            "compare",
            str(tmp_path / "a"),
            str(tmp_path / "b" / "result.json"),
            "--out",
            str(tmp_path / "cmp"),
        ]
    )
    assert code == 0
    assert len(list((tmp_path / "cmp").glob("*.png"))) == 3
    assert_report_links_existing_images(tmp_path / "cmp", 3)


def assert_report_links_existing_images(run_dir, num_images):
    page = (run_dir / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == num_images, sources
    assert all((run_dir / src).is_file() and not src.startswith("/") for src in sources)
    assert "<table>" in page and "TTFT" in page


def test_bad_arguments_are_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--base-url", "http://x", "--workload", "nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(
            [
                "run",
                "--base-url",
                "http://x",
                "--workload",
                "random",
                "--rate",
                "1",
                "--concurrency",
                "2",
                "--out",
                str(tmp_path),
            ]
        )
    capsys.readouterr()
    missing = tmp_path / "no" / "such.jsonl"
    assert (
        main(
            [
                "run",
                "--base-url",
                "http://x",
                "--workload",
                "trace",
                "--trace",
                str(missing),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    out = capsys.readouterr().out.replace("\n", "")
    assert str(missing) in out and "kvcache-ai/Mooncake" in out


def test_a_bad_value_gets_one_line_naming_the_allowed_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--base-url", "http://x", "--workload", "nope", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for name in ("multiturn", "shared-prefix", "trace", "random"):
        assert name in err
    with pytest.raises(SystemExit):
        main(["bench", "nope"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "capacity" in err and "overhead" in err
    with pytest.raises(SystemExit):
        main(
            [
                "run",
                "--base-url",
                "http://x",
                "--workload",
                "random",
                "--num-requests",
                "many",
                "--out",
                str(tmp_path),
            ]
        )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'many'" in err


def test_help_lists_every_choice(capsys):
    from load.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # the subcommand parsers
    run_help = commands["run"].format_help()
    for name in ("multiturn", "shared-prefix", "trace", "random"):
        assert name in run_help
    policy = commands["policy"].format_help()
    for name in ("lru", "fifo", "lfu", "belady"):
        assert name in policy


def test_run_defaults_give_enough_requests_for_a_p99():
    from load.cli import build_parser
    from load.workload_args import build_specs

    for workload in ("multiturn", "shared-prefix", "random"):
        args = build_parser().parse_args(
            ["run", "--base-url", "http://x", "--workload", workload, "--out", "x"]
        )
        assert len(build_specs(args)) >= 100, workload
