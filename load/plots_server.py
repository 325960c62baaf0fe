"""The server's state over a run, from the ``/metrics`` samples in ``server_timeline``
(see ``metrics_sampler``): requests running and waiting, KV-cache usage, prefix hit
rate by tier, and modelled vs wall NPU busy time. Panels whose series the server does
not expose say so instead of being left blank."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from load.plots import TIER_COLORS, TIER_LABELS, Labelled, is_dense, line_style, save

# A step's busy time is counted when the step ends, so one sampling interval can hold
# more than its length of busy time (a 0.7 s step in a 0.5 s interval): the NPU panel
# shows busy time averaged over this window instead.
NPU_WINDOW_S = 5.0


def rolling_mean(values: list[float | None], window: int) -> list[float | None]:
    """Mean of each value and the ``window - 1`` before it (Nones skipped; None where
    the window holds none)."""
    out: list[float | None] = []
    for i in range(len(values)):
        seen = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None]
        out.append(sum(seen) / len(seen) if seen else None)
    return out


def has_server_timeline(result: dict[str, Any]) -> bool:
    tl = result.get("server_timeline") or {}
    return bool(tl.get("num_samples"))


def _points(ts: list[float], values: list[Any]) -> tuple[list[float], list[float]]:
    pairs = [(t, v) for t, v in zip(ts, values, strict=False) if v is not None]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def _series(
    ax: Any,
    ts: list[float],
    values: list[Any],
    scale: float = 1.0,
    markers_only: bool = False,
    **kw: Any,
) -> bool:
    """Plot a series; a None (no sample, or nothing to measure) breaks the line
    instead of being bridged. False when every value is None."""
    num = sum(v is not None for v in values)
    if not num:
        return False
    ys = [math.nan if v is None else float(v) * scale for v in values]
    style = line_style(0 if markers_only else num)
    ax.plot(ts[: len(ys)], ys, **{**style, **kw})
    return True


def _absent(ax: Any, what: str) -> None:
    ax.text(
        0.5,
        0.5,
        f"{what}: not exposed by this server",
        ha="center",
        va="center",
        transform=ax.transAxes,
        color="gray",
    )


def _hit_rates(ax: Any, tl: dict[str, Any]) -> bool:
    """Stacked bars, one per sampling interval: the share of looked-up tokens served
    from each tier in that interval. Intervals without lookups have no bar."""
    ends = tl.get("interval_end_s") or []
    rates = tl.get("hit_rate_by_tier") or {}
    if not ends or not rates:
        return False
    # each interval starts at the previous sample (the first one at the first sample)
    starts = [*(tl.get("t_s") or [0.0])[:1], *ends[:-1]]
    widths = [e - s for s, e in zip(starts, ends, strict=True)]
    bottoms = [0.0] * len(ends)
    drawn = False
    for tier, values in rates.items():
        heights = [100 * (v or 0.0) for v in values]
        if not any(heights):
            continue
        drawn = True
        ax.bar(
            starts,
            heights,
            width=widths,
            bottom=bottoms,
            align="edge",
            color=TIER_COLORS.get(tier, "#8d6a9f"),
            label=TIER_LABELS.get(tier, tier),
            edgecolor="white",
            linewidth=0.3,
        )
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    if not drawn and any(v is not None for vs in rates.values() for v in vs):
        ax.text(0.5, 0.5, "no prefix-cache hits", ha="center", transform=ax.transAxes)
    return True


def server_timeline_plot(results: Labelled, path: Path) -> Path:
    """Four panels sharing the time axis. Several runs are overlaid, one colour each
    (the hit-rate panel then shows each run's total hit rate)."""
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    q_ax, kv_ax, hit_ax, npu_ax = axes
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    single = len(results) == 1
    found = {"queue": False, "kv": False, "hits": False, "npu": False}
    kv_sources = set()
    for i, (label, r) in enumerate(results):
        tl = r.get("server_timeline") or {}
        if not tl.get("num_samples"):
            continue
        ts = tl["t_s"]
        color = colors[i % len(colors)]
        prefix = "" if single else f"{label}: "
        for key, name, c, dash in (
            ("num_requests_running", "running", "#2a9d8f", "-"),
            ("num_requests_waiting", "waiting", "#d1495b", "--"),
            ("num_requests_loading_kv", "loading KV", "#e9a23b", ":"),
        ):
            kw: dict[str, Any] = {"drawstyle": "steps-post"} if is_dense(len(ts)) else {}
            if not single and is_dense(len(ts)):
                kw["linestyle"] = dash  # one colour per run: tell the series apart
            found["queue"] |= _series(
                q_ax,
                ts,
                tl.get(key) or [],
                color=c if single else color,
                label=prefix + name,
                **kw,
            )
        if _series(
            kv_ax,
            ts,
            tl.get("kv_cache_usage") or [],
            scale=100.0,
            color=color,
            label=None if single else label,
        ):
            found["kv"] = True
            kv_sources.add(tl.get("kv_usage_source"))
        ends = tl.get("interval_end_s") or []
        if single:
            found["hits"] |= _hit_rates(hit_ax, tl)
        else:
            rates = tl.get("hit_rate_by_tier") or {}
            totals = [
                None
                if all(v[k] is None for v in rates.values())
                else sum(v[k] or 0.0 for v in rates.values())
                for k in range(len(ends))
            ]
            # lookups come in bursts: markers, not lines across idle intervals
            found["hits"] |= _series(
                hit_ax, ends, totals, scale=100.0, markers_only=True, color=color, label=label
            )
        for key, name, style in (
            ("npu_modelled_busy", "modelled (roofline)", "-"),
            ("npu_wall_busy", "wall (this CPU)", "--"),
        ):
            window = max(1, round(NPU_WINDOW_S / (tl.get("interval_s") or NPU_WINDOW_S)))
            xs, ys = _points(ends, rolling_mean(tl.get(key) or [], window))
            if xs:
                found["npu"] = True
                kw = line_style(len(xs))
                if is_dense(len(xs)):
                    kw["linestyle"] = style
                npu_ax.plot(
                    xs,
                    [100 * y for y in ys],
                    color=color if not single else ("#264653" if style == "-" else "#e76f51"),
                    label=prefix + name,
                    **kw,
                )
        vnpu_styles = itertools.cycle([":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1))])
        for j, (name, values) in enumerate((tl.get("vnpu_modelled_busy") or {}).items()):
            window = max(1, round(NPU_WINDOW_S / (tl.get("interval_s") or NPU_WINDOW_S)))
            xs, ys = _points(ends, rolling_mean(values, window))
            if xs:
                found["npu"] = True
                kw = line_style(len(xs))
                if is_dense(len(xs)):
                    kw["linestyle"] = next(vnpu_styles)
                c = colors[(j + 2) % len(colors)] if single else color
                npu_ax.plot(xs, [100 * y for y in ys], color=c, label=f"{prefix}vNPU {name}", **kw)
    q_ax.set_ylabel("requests")
    q_ax.set_title("server state over the run (sampled from /metrics)")
    kv_ax.set_ylabel("KV cache usage (%)")
    hit_ax.set_ylabel("prefix hit rate (%)")
    npu_ax.set_ylabel("NPU busy (% of time)")
    npu_ax.set_xlabel("time since start (s)")
    source = ", ".join(sorted(s for s in kv_sources if s))
    titles = {
        "queue": (q_ax, "running / waiting requests"),
        "kv": (kv_ax, f"KV cache usage: blocks held by requests ({source or 'n/a'})"),
        "hits": (
            hit_ax,
            "prefix-cache hit rate per sampling interval, "
            + ("by tier" if single else "all tiers"),
        ),
        "npu": (
            npu_ax,
            f"NPU busy time per second ({NPU_WINDOW_S:g} s mean): modelled device vs wall clock",
        ),
    }
    for key, (ax, title) in titles.items():
        if key != "queue":
            ax.set_title(title, fontsize=10, fontweight="normal", loc="left")
        if not found[key]:
            _absent(ax, title.split(":")[0])
        elif ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    kv_ax.set_ylim(bottom=0)
    hit_ax.set_ylim(0, 100)
    npu_ax.set_ylim(bottom=0)
    q_ax.set_ylim(bottom=0)
    return save(fig, path)
