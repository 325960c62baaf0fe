"""Result files (``result.json``) and terminal tables for runs and comparisons."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from load.runner import RunOutcome

RESULT_FILE = "result.json"
LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
# Fewest samples for a percentile to say more than the largest sample does: with fewer
# than 100 values p99 is (an interpolation towards) the maximum.
MIN_SAMPLES = {"p90": 10, "p99": 100}


def run_warnings(result: dict[str, Any]) -> list[str]:
    """The warnings stored with a run, or recomputed for a result.json older than them."""
    return result["warnings"] if "warnings" in result else percentile_warnings(result)


def percentile_warnings(result: dict[str, Any]) -> list[str]:
    """One line per latency whose reported percentiles rest on too few samples."""
    out = []
    for name in LATENCIES:
        count = (result.get(name) or {}).get("count") or 0
        weak = [q for q, need in MIN_SAMPLES.items() if 0 < count < need]
        if weak:
            label = name.removesuffix("_ms").upper()
            out.append(
                f"{label} {'/'.join(weak)} rest on only {count} samples "
                f"(p99 needs >= {MIN_SAMPLES['p99']}, p90 >= {MIN_SAMPLES['p90']}): "
                "read them as the maximum; send more requests (--num-requests, "
                "--num-users, ...)"
            )
    return out


def make_console() -> Console:
    """A console for tables: the terminal's width, or 160 columns when output is not a
    terminal (rich would otherwise cut tables to 80 columns in logs and pipes)."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def build_result(outcome: RunOutcome, meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready result: ``meta`` (workload, options) plus every measurement and a
    compact per-request list (texts are dropped)."""
    s = outcome.stats
    result: dict[str, Any] = dict(meta)
    result.update(
        {
            "model": outcome.model,
            "started_at": dt.datetime.fromtimestamp(outcome.started_at, dt.UTC).isoformat(),
            "duration_s": s.duration_s,
        }
    )
    for name in LATENCIES:
        result[name] = dataclasses.asdict(getattr(s, name))
    result.update(
        {
            "requests_per_s": s.requests_per_s,
            "output_tokens_per_s": s.output_tokens_per_s,
            "goodput_requests_per_s": s.goodput_requests_per_s,
            "good_fraction": s.good_fraction,
            "num_requests": s.num_requests,
            "num_errors": s.num_errors,
            "errors_by_status": s.errors_by_status,
            "error_examples": sorted({r.error for r in outcome.records if r.error})[:5],
            "prompt_tokens": s.prompt_tokens,
            "cached_tokens": s.cached_tokens,
            "cached_fraction": s.cached_tokens / s.prompt_tokens if s.prompt_tokens else None,
            "output_tokens": s.output_tokens,
            "server": outcome.server,
            "timeline": dataclasses.asdict(s.timeline),
            "server_timeline": outcome.server_timeline,
            "requests": [
                {
                    "index": r.index,
                    "start_s": round(r.start_s, 6),
                    "ttft_ms": None if r.ttft_s is None else round(r.ttft_s * 1000, 3),
                    "e2e_ms": round(r.e2e_s * 1000, 3),
                    "output_tokens": r.output_tokens,
                    "prompt_tokens": r.prompt_tokens,
                    "cached_tokens": r.cached_tokens,
                    "status": r.status,
                    "error": r.error,
                }
                for r in outcome.records
            ],
        }
    )
    result["warnings"] = percentile_warnings(result)
    return result


def write_result(result: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULT_FILE
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def read_result(path: str | Path) -> dict[str, Any]:
    """Load a result file (or ``DIR/result.json`` when given a directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULT_FILE
    with open(p, encoding="utf-8") as f:
        result = json.load(f)
    if not isinstance(result, dict) or "ttft_ms" not in result:
        raise ValueError(f"{p} is not a tierkv-load result file")
    return result


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows shown for a run and side by side by ``compare``."""
    rows = [
        ("requests (errors)", f"{result['num_requests']} ({result['num_errors']})"),
        ("duration s", _fmt(result.get("duration_s"), 2)),
        ("requests/s", _fmt(result["requests_per_s"], 2)),
        ("output tokens/s", _fmt(result["output_tokens_per_s"], 1)),
        ("goodput req/s", _fmt(result.get("goodput_requests_per_s"), 2)),
    ]
    for name in LATENCIES:
        lat = result[name]
        label = name.removesuffix("_ms").upper()
        rows.append(
            (f"{label} mean/p50/p99 ms", " / ".join(_fmt(lat[k]) for k in ("mean", "p50", "p99")))
        )
    rows.append(
        (
            "cached/prompt tokens",
            f"{_fmt(result['cached_tokens'])} / {_fmt(result['prompt_tokens'])}",
        )
    )
    server = result.get("server") or {}
    hits = server.get("prefix_cache_hits") or {}
    if hits:
        rows.append(
            ("server hits by tier (tok)", ", ".join(f"{t}={_fmt(v, 0)}" for t, v in hits.items()))
        )
    if server.get("hit_rate") is not None:
        rows.append(("server hit rate", f"{server['hit_rate']:.1%}"))
    for key, label in (("read_bytes", "tier read MB"), ("write_bytes", "tier write MB")):
        per_tier = server.get(key) or {}
        if per_tier:
            rows.append((label, ", ".join(f"{t}={v / 1e6:,.1f}" for t, v in per_tier.items())))
    duration = result.get("duration_s") or 0.0
    busy = [server.get(k) for k in ("npu_busy_s", "npu_wall_busy_s")]
    if duration > 0 and busy[0] is not None:
        wall = "" if busy[1] is None else f" / {busy[1] / duration:.0%}"
        rows.append(("NPU busy modelled / wall", f"{busy[0] / duration:.0%}{wall}"))
    tl = result.get("server_timeline") or {}
    for key, label, scale, fmt in (
        ("num_requests_running", "peak running (sampled)", 1.0, "{:,.0f}"),
        ("num_requests_waiting", "peak waiting (sampled)", 1.0, "{:,.0f}"),
        ("kv_cache_usage", "peak KV usage (sampled)", 100.0, "{:.1f}%"),
    ):
        values = [v for v in tl.get(key) or [] if v is not None]
        if values:
            rows.append((label, fmt.format(max(values) * scale)))
    if server.get("preemptions") is not None:
        rows.append(("preemptions", _fmt(server["preemptions"], 0)))
    if result.get("errors_by_status"):
        rows.append(
            (
                "errors by status",
                ", ".join(f"{k}: {v}" for k, v in result["errors_by_status"].items()),
            )
        )
    return rows


def print_summary(result: dict[str, Any], console: Console | None = None) -> None:
    table = Table(title=f"tierkv-load {result.get('workload', '')} @ {result.get('base_url', '')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in summary_rows(result):
        table.add_row(metric, value)
    console = console or Console()
    console.print(table)
    for warning in run_warnings(result):
        console.print(f"[yellow]warning:[/] {warning}")


def print_comparison(
    results: list[tuple[str, dict[str, Any]]], console: Console | None = None
) -> None:
    table = Table(title="tierkv-load compare")
    table.add_column("metric")
    for label, _ in results:
        table.add_column(label, justify="right")
    rows = [dict(summary_rows(r)) for _, r in results]
    metrics: list[str] = []
    for r in rows:
        metrics += [m for m in r if m not in metrics]
    for metric in metrics:
        table.add_row(metric, *(r.get(metric, "-") for r in rows))
    (console or Console()).print(table)
