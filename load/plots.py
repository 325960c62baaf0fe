"""PNG plots of one or several results (matplotlib, Agg backend, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

Labelled = list[tuple[str, dict[str, Any]]]


def write_plots(results: Labelled, out_dir: Path) -> list[Path]:
    """Write ttft_cdf.png, tier_hits.png and timeline.png; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        _ttft_cdf(results, out_dir / "ttft_cdf.png"),
        _tier_hits(results, out_dir / "tier_hits.png"),
        _timeline(results, out_dir / "timeline.png"),
    ]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ttft_cdf(results: Labelled, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, r in results:
        ttfts = sorted(q["ttft_ms"] for q in r.get("requests", []) if q.get("ttft_ms") is not None)
        if ttfts:
            ys = [(i + 1) / len(ttfts) for i in range(len(ttfts))]
            ax.step(ttfts, ys, where="post", label=label)
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("TTFT CDF")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if len(results) > 1:
        ax.legend()
    return _save(fig, path)


def _tier_hits(results: Labelled, path: Path) -> Path:
    """Prompt tokens served from each tier vs recomputed, as fractions of the looked-up
    tokens (server counters), with the client-side cached fraction for reference."""
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    parts = ("hbm", "ddr", "flash", "miss")
    colors = {"hbm": "tab:green", "ddr": "tab:blue", "flash": "tab:orange", "miss": "tab:gray"}
    have_server = have_server_labels = False
    for i, (_, r) in enumerate(results):
        server = r.get("server") or {}
        hits = server.get("prefix_cache_hits") or {}
        queries = server.get("prefix_cache_queries")
        if not queries:
            continue
        have_server = True
        shares = {t: hits.get(t, 0.0) / queries for t in parts[:3]}
        shares["miss"] = max(0.0, 1.0 - sum(shares.values()))
        bottom = 0.0
        for part in parts:
            ax.bar(i, shares[part], bottom=bottom, color=colors[part],
                   label=None if have_server_labels else part)
            bottom += shares[part]
        have_server_labels = True
    for i, (_, r) in enumerate(results):
        if r.get("cached_fraction") is not None:
            ax.plot(i, r["cached_fraction"], "k_", markersize=30,
                    label="client cached_tokens" if i == 0 else None)
    ax.set_xticks(range(len(results)), [label for label, _ in results], rotation=15)
    ax.set_ylabel("share of prompt tokens")
    ax.set_ylim(0, 1.05)
    ax.set_title("prefix-cache hits by tier" + ("" if have_server else " (no server metrics)"))
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _timeline(results: Labelled, path: Path) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for label, r in results:
        tl = r.get("timeline") or {}
        ts = tl.get("t_s") or []
        if not ts:
            continue
        top.plot(ts, tl["output_tokens_per_s"], label=label)
        pts = [(t, v) for t, v in zip(ts, tl["ttft_ms_mean"], strict=False) if v is not None]
        if pts:
            bottom.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
    top.set_ylabel("output tokens/s")
    top.set_title("throughput and latency over time")
    bottom.set_ylabel("mean TTFT (ms), by send time")
    bottom.set_xlabel("time since start (s)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    if len(results) > 1:
        top.legend()
    return _save(fig, path)
