"""PNG plots of one or several results (matplotlib, Agg backend, no display).

Conventions shared by every plot: one colour per tier (``TIER_COLORS``), one colour per
run (matplotlib's default cycle), titles that say what is plotted and axes that give
units. Series with few points are drawn as markers only, never joined by lines
(``is_dense``); dense series are lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

from load.report import MIN_SAMPLES  # noqa: E402
from load.stats import percentile  # noqa: E402

Labelled = list[tuple[str, dict[str, Any]]]

TIER_COLORS = {"hbm": "#2a9d8f", "ddr": "#457b9d", "flash": "#e9a23b", "computed": "#c8c8c8"}
TIER_LABELS = {"hbm": "HBM hit", "ddr": "DDR hit", "flash": "flash hit", "computed": "computed"}
CACHED_COLOR = "#264653"
HIT_COLOR, MISS_COLOR = "#2a9d8f", "#d1495b"
DENSE_POINTS = 20
STYLE: Any = {  # Any: matplotlib types rcParams keys as literals
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 9,
    "legend.frameon": False,
}


def is_dense(num_points: int) -> bool:
    """Lines for series with at least ``DENSE_POINTS`` points, markers below that."""
    return num_points >= DENSE_POINTS


def line_style(num_points: int) -> dict[str, Any]:
    """Keyword arguments for ``ax.plot``: a line with small dots, or markers only."""
    if is_dense(num_points):
        return {"linestyle": "-", "marker": ".", "markersize": 3, "linewidth": 1.4}
    return {"linestyle": "none", "marker": "o", "markersize": 5}


def plain_number(value: float, _pos: int | None = None) -> str:
    """Tick labels without scientific notation on log axes: 20, 200, 2k, 20k."""
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def short_count(value: float) -> str:
    """Counts for labels, three significant digits: 950, 10.1k, 119k, 1.2M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def log_axis(ax: Any, which: str) -> None:
    """Make ``ax``'s x or y axis logarithmic with plain labels at 1-2-5 steps (no 10^x,
    no minor labels)."""
    if which == "x":
        ax.set_xscale("log")
        axis = ax.xaxis
    else:
        ax.set_yscale("log")
        axis = ax.yaxis
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_formatter(FuncFormatter(lambda v, p: ""))


def write_plots(results: Labelled, out_dir: Path) -> list[Path]:
    """Write ttft_cdf.png, tier_hits.png, timeline.png and, when some result has
    /metrics samples, server_timeline.png; return their paths in that order."""
    from load.plots_server import has_server_timeline, server_timeline_plot

    out_dir.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(STYLE):
        paths = [
            _ttft_cdf(results, out_dir / "ttft_cdf.png"),
            _tier_hits(results, out_dir / "tier_hits.png"),
            _timeline(results, out_dir / "timeline.png"),
        ]
        if any(has_server_timeline(r) for _, r in results):
            paths.append(server_timeline_plot(results, out_dir / "server_timeline.png"))
    return paths


def save(fig: Any, path: Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ttfts_ms(result: dict[str, Any], hit: bool | None = None) -> list[float]:
    """TTFTs of a result's successful requests; ``hit`` True keeps requests with
    ``cached_tokens > 0``, False those without, None all."""
    out = []
    for q in result.get("requests", []):
        if q.get("ttft_ms") is None:
            continue
        if hit is None or (q.get("cached_tokens", 0) > 0) == hit:
            out.append(float(q["ttft_ms"]))
    return sorted(out)


def _cdf(
    ax: Any,
    values: list[float],
    color: str,
    label: str,
    linestyle: str = "-",
    annotate: bool = False,
    width: float = 1.6,
) -> None:
    """One CDF with p50 marked, and p99 when ``MIN_SAMPLES["p99"]`` back it (written next
    to the marks if ``annotate``; an annotated p99 on fewer samples says it is about
    the maximum)."""
    n = len(values)
    ys = [(i + 1) / n for i in range(n)]
    ax.step(
        values,
        ys,
        where="post",
        color=color,
        linestyle=linestyle,
        linewidth=width,
        label=f"{label} (n={n})",
    )
    if not is_dense(n):
        ax.plot(values, ys, "o", color=color, markersize=4)
    for q, marker in ((50, "o"), (99, "D")):
        if not annotate and (n < 5 or (q == 99 and n < MIN_SAMPLES["p99"])):
            continue
        x = percentile(values, q)
        ax.plot(
            [x],
            [q / 100],
            marker=marker,
            color=color,
            markersize=9 if annotate else 6,
            markeredgecolor="black",
            zorder=6 if annotate else 5,
        )
        if annotate:
            weak = q == 99 and n < MIN_SAMPLES["p99"]
            ax.annotate(
                f"p{q} {x:,.0f} ms" + (f"\n(n={n}: ~max)" if weak else ""),
                (x, q / 100),
                xytext=(8, -14 if q == 99 else 6),
                textcoords="offset points",
                fontsize=9,
                color="black",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": color},
            )


def _ttft_cdf(results: Labelled, path: Path) -> Path:
    """TTFT CDF on a log axis. One run: all requests, prefix hits and misses (by the
    client's ``cached_tokens``). Several runs: one curve each. p50 (circle) and p99
    (diamond) are marked and labelled on the main curves; hit and miss curves get
    unlabelled marks when they have enough samples."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    if len(results) == 1:
        r = results[0][1]
        everything = ttfts_ms(r)
        if everything:
            _cdf(ax, everything, "black", "all requests", annotate=True, width=2.4)
            drawn = True
        for hit, color, label in (
            (True, HIT_COLOR, "prefix hits (cached_tokens > 0)"),
            (False, MISS_COLOR, "misses (cached_tokens = 0)"),
        ):
            values = ttfts_ms(r, hit)
            if values and len(values) < len(everything):
                _cdf(ax, values, color, label, linestyle="--")
    else:
        for i, (label, r) in enumerate(results):
            values = ttfts_ms(r)
            if values:
                _cdf(ax, values, colors[i % len(colors)], label, annotate=True)
                drawn = True
    if drawn:
        log_axis(ax, "x")
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no successful requests", ha="center", transform=ax.transAxes)
    ax.set_xlabel("time to first token (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.03)
    ax.set_title("TTFT distribution  (● p50   ◆ p99)")
    return save(fig, path)


def _segments(result: dict[str, Any]) -> list[tuple[str, list[tuple[str, float]]]]:
    """(bar label, [(part, tokens)]) for the server's and the client's view of a run."""
    bars = []
    server = result.get("server") or {}
    queries = server.get("prefix_cache_queries")
    if queries:
        hits = server.get("prefix_cache_hits") or {}
        parts = [(t, float(hits.get(t, 0.0))) for t in ("hbm", "ddr", "flash") if t in hits]
        parts += [(t, float(v)) for t, v in hits.items() if t not in TIER_COLORS]
        parts.append(("computed", max(0.0, queries - sum(v for _, v in parts))))
        bars.append(("server /metrics\n(looked-up tokens)", parts))
    prompt = result.get("prompt_tokens") or 0
    if prompt:
        cached = float(result.get("cached_tokens") or 0)
        bars.append(
            (
                "client usage\n(cached_tokens)",
                [("cached", cached), ("computed", max(0.0, prompt - cached))],
            )
        )
    return bars


def _tier_hits(results: Labelled, path: Path) -> Path:
    """Horizontal stacked bars of prompt tokens: per tier as the server counted them,
    and cached vs computed as the client's usage reported them."""
    rows: list[tuple[str, list[tuple[str, float]]]] = []
    for label, r in results:
        for bar, parts in _segments(r):
            rows.append((bar if len(results) == 1 else f"{label}: {bar}", parts))
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.9 * max(1, len(rows))))
    colors = {**TIER_COLORS, "cached": CACHED_COLOR}
    labels = {**TIER_LABELS, "cached": "cached (client)"}
    seen: set[str] = set()
    for y, (_, parts) in enumerate(rows):
        total = sum(v for _, v in parts) or 1.0
        left = 0.0
        for part, tokens in parts:
            color = colors.get(part, "#8d6a9f")
            ax.barh(
                y,
                tokens,
                left=left,
                color=color,
                height=0.6,
                edgecolor="white",
                label=None if part in seen else labels.get(part, part),
            )
            seen.add(part)
            share = tokens / total
            if share >= 0.07:
                dark = part in ("cached", "ddr", "hbm")
                ax.text(
                    left + tokens / 2,
                    y,
                    f"{share:.0%}\n{short_count(tokens)}",
                    ha="center",
                    va="center",
                    fontsize=8.5,
                    color="white" if dark else "black",
                )
            left += tokens
        ax.text(left, y, f"  {short_count(total)} tok", va="center", fontsize=9)
    ax.set_yticks(range(len(rows)), [bar for bar, _ in rows])
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(FuncFormatter(plain_number))
    ax.set_xlabel("prompt tokens")
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.12)
    ax.set_title("where prompt tokens came from: prefix-cache hits by tier vs computed")
    if not rows:
        ax.text(0.5, 0.5, "no prompt tokens reported", ha="center", transform=ax.transAxes)
        return save(fig, path)
    fig.legend(loc="lower center", ncol=6)
    legend_h = 0.35 / fig.get_figheight()  # the legend row, as a fraction of the figure
    return save(fig, path, rect=(0.0, legend_h, 1.0, 1.0))


def _timeline(results: Labelled, path: Path) -> Path:
    """Output tokens/s per time bucket, and every request's TTFT at its send time
    (hits and misses apart for a single run)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    single = len(results) == 1
    any_ttft = False
    for i, (label, r) in enumerate(results):
        color = "black" if single else colors[i % len(colors)]
        tl = r.get("timeline") or {}
        ts = tl.get("t_s") or []
        if ts:
            top.plot(
                ts,
                tl["output_tokens_per_s"],
                color=color,
                label=label,
                drawstyle="steps-post" if is_dense(len(ts)) else "default",
                **line_style(len(ts)),
            )
        reqs = [q for q in r.get("requests", []) if q.get("ttft_ms") is not None]
        groups = (
            [(True, HIT_COLOR, "hit"), (False, MISS_COLOR, "miss")]
            if single
            else [(None, color, label)]
        )
        for hit, c, name in groups:
            pts = [
                (q["start_s"], q["ttft_ms"])
                for q in reqs
                if hit is None or (q.get("cached_tokens", 0) > 0) == hit
            ]
            if pts:
                any_ttft = True
                bottom.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    "o",
                    color=c,
                    markersize=4,
                    alpha=0.75,
                    label=f"{name} (n={len(pts)})",
                )
    top.set_ylabel("output tokens/s")
    top.set_title("throughput and TTFT over the run")
    if any_ttft:
        log_axis(bottom, "y")
        bottom.legend(loc="upper right")
    bottom.set_ylabel("TTFT (ms, log), at send time")
    bottom.set_xlabel("time since start (s)")
    if not single:
        top.legend(loc="upper right")
    return save(fig, path)
