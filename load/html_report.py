"""``report.html``: one self-contained page per run (or comparison) gathering the
summary table, percentile warnings, latency percentiles, the run's configuration and
every plot. Plots are linked relatively (``<img src="ttft_cdf.png">``), so the page
works when its directory is moved or served as static files."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from load.report import LATENCIES, run_warnings, summary_rows

REPORT_FILE = "report.html"

CAPTIONS = {
    "ttft_cdf.png": "TTFT distribution: every request, and prefix hits vs misses "
    "(by the client's cached_tokens); p50 and p99 marked.",
    "tier_hits.png": "Where prompt tokens came from: the server's hits per tier and the "
    "client's cached_tokens, against tokens computed.",
    "timeline.png": "Output throughput per time bucket, and each request's TTFT at the "
    "time it was sent.",
    "server_timeline.png": "The server's state, sampled from /metrics during the run.",
}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       background: #f6f7f9; color: #1d2733; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 10px; border-bottom: 1px solid #d7dce2;
     padding-bottom: 4px; }
.sub { color: #5b6673; margin: 0 0 16px; }
table { border-collapse: collapse; background: white; font-size: 14px;
        box-shadow: 0 1px 2px rgba(0,0,0,.06); }
th, td { padding: 5px 12px; border-bottom: 1px solid #e6e9ed; text-align: left;
         vertical-align: top; }
th { background: #eef1f4; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.warn { background: #fff6e0; border-left: 4px solid #e9a23b; padding: 8px 12px;
        margin: 6px 0; font-size: 14px; }
figure { margin: 18px 0; background: white; padding: 12px;
         box-shadow: 0 1px 2px rgba(0,0,0,.06); }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #5b6673; font-size: 13px; margin-top: 6px; }
.grid { display: grid; grid-template-columns: 1.1fr 1fr; gap: 24px; align-items: start; }
td:first-child, th:first-child { white-space: nowrap; }
code { font-size: 13px; }
"""


def _esc(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _when(iso: Any) -> str:
    """``2026-11-24T22:59:15.617+00:00`` as ``2026-11-24 22:59:15 UTC``."""
    text = str(iso or "")
    return text[:19].replace("T", " ") + " UTC" if len(text) >= 19 else text or "-"


def _table(header: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_esc(c)}</td>' if i >= numeric_from else f"<td>{_esc(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _latency_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    rows = []
    for label, r in results:
        for name in LATENCIES:
            lat = r.get(name) or {}
            cells = [
                f"{lat[k]:,.1f}" if lat.get(k) is not None else "-"
                for k in ("mean", "p50", "p90", "p99")
            ]
            first = [label] if len(results) > 1 else []
            rows.append([*first, name.removesuffix("_ms").upper(), *cells, lat.get("count", 0)])
    header = ["run"] if len(results) > 1 else []
    header += ["latency (ms)", "mean", "p50", "p90", "p99", "samples"]
    return _table(header, rows, numeric_from=len(header) - 5)


def _summary_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    # latencies have their own table
    per_run = [{m: v for m, v in summary_rows(r) if not m.endswith(" ms")} for _, r in results]
    metrics: list[str] = []
    for rows in per_run:
        metrics += [m for m in rows if m not in metrics]
    header = (
        ["metric", *(label for label, _ in results)] if len(results) > 1 else ["metric", "value"]
    )
    return _table(header, [[m, *(rows.get(m, "-") for rows in per_run)] for m in metrics])


def _config_table(result: dict[str, Any]) -> str:
    options = dict(result.get("options") or {})
    rows: list[list[Any]] = [
        ["server", result.get("base_url")],
        ["model", result.get("model")],
        ["workload", result.get("workload")],
        ["arrival", ", ".join(f"{k}={v}" for k, v in (result.get("arrival") or {}).items())],
        ["started", _when(result.get("started_at"))],
    ]
    rows += [
        [k.replace("_", "-"), v]
        for k, v in sorted(options.items())
        if v is not None and k not in ("base_url", "workload", "out")
    ]
    return _table(["option", "value"], rows, numeric_from=99)


def write_html_report(
    results: list[tuple[str, dict[str, Any]]], out_dir: Path, images: list[Path]
) -> Path:
    """Write ``out_dir/report.html`` for one run (or several side by side) and return
    its path. ``images`` are the plots, referenced by their path relative to out_dir;
    missing ones are left out."""
    out_dir.mkdir(parents=True, exist_ok=True)
    first = results[0][1]
    if len(results) == 1:
        title = f"tierkv-load: {first.get('workload', '')} run"
        sub = (
            f"{_esc(first.get('model'))} at {_esc(first.get('base_url'))}, started "
            f"{_esc(_when(first.get('started_at')))}, {first.get('duration_s') or 0:.1f} s, "
            f"{first.get('num_requests', 0)} requests"
        )
    else:
        title = "tierkv-load: comparison"
        sub = "runs: " + ", ".join(_esc(label) for label, _ in results)
    parts = [f"<h1>{_esc(title)}</h1>", f'<p class="sub">{sub}</p>']
    warnings = [(label, w) for label, r in results for w in run_warnings(r)]
    for label, w in warnings:
        prefix = f"{label}: " if len(results) > 1 else ""
        parts.append(f'<div class="warn">{_esc(prefix + w)}</div>')
    errors = [e for _, r in results for e in (r.get("error_examples") or [])]
    if errors:
        parts.append(f'<div class="warn">errors, e.g.: {_esc("; ".join(errors[:3]))}</div>')
    # one run: summary and latency side by side; several: one above the other
    layout = "grid" if len(results) == 1 else "stack"
    parts.append(
        f'<div class="{layout}"><section><h2>Summary</h2>'
        + _summary_table(results)
        + "</section><section><h2>Latency</h2>"
        + _latency_table(results)
        + "</section></div>"
    )
    parts.append("<h2>Plots</h2>")
    for image in images:
        rel = Path(os.path.relpath(image, out_dir))
        if not (out_dir / rel).exists():
            continue
        caption = CAPTIONS.get(rel.name, rel.stem)
        parts.append(
            f'<figure><img src="{_esc(rel.as_posix())}" alt="{_esc(rel.stem)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )
    if len(results) == 1:
        parts.append("<h2>Configuration</h2>" + _config_table(first))
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )
    path = out_dir / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path
