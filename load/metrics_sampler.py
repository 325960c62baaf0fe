"""Sampling ``GET /metrics`` during a run: a time series of the server's state.

A ``MetricsSampler`` runs as one task in the run's own event loop and scrapes every
``interval_s`` (one small GET and a parse: about a millisecond of client CPU). Each
scrape is reduced at once to a ``ServerPoint`` (a few numbers), and ``server_timeline``
turns the points into the series stored as ``server_timeline`` in result.json.

Names are read as ``metrics_scrape`` reads them (``tierkv:`` or ``vllm:``, vLLM's
``model_name`` label summed over). A series the server does not expose is ``None`` at
every point; a failed scrape is counted and skipped, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from load.metrics_scrape import TIERS, MetricsSnapshot, scrape

DEFAULT_INTERVAL_S = 0.5


@dataclass(slots=True, frozen=True)
class ServerPoint:
    """One scrape: gauges as read, counters cumulative (deltas are taken later)."""

    t_s: float
    running: float | None
    waiting: float | None
    loading_kv: float | None
    kv_usage: float | None  # 0-1
    kv_usage_source: str | None
    queries: float | None
    hits: dict[str, float]
    npu_modelled_s: float | None
    npu_wall_s: float | None
    # vNPU name -> its modelled busy seconds (servers started with --vnpu; else empty)
    vnpu_busy_s: dict[str, float] = field(default_factory=dict)


def kv_usage(snap: MetricsSnapshot) -> tuple[float | None, str | None]:
    """KV-cache usage 0-1 and the series it came from.

    vLLM's ``kv_cache_usage_perc`` (0-1 despite its name) first, then vLLM's older
    ``gpu_cache_usage_perc``, then tierkv's HBM blocks held by requests over the pool
    (``tier_active_blocks`` x block bytes / ``tier_capacity_bytes``).
    """
    for name in ("kv_cache_usage_perc", "gpu_cache_usage_perc"):
        value = snap.total(name)
        if value is not None:
            return value, name
    active = snap.value("tier_active_blocks", tier="hbm")
    blocks = snap.value("tier_blocks", tier="hbm")
    used = snap.value("tier_used_bytes", tier="hbm")
    capacity = snap.value("tier_capacity_bytes", tier="hbm")
    if active is None or blocks is None or used is None or not capacity:
        return None, None
    if not blocks:  # nothing cached, so nothing held
        return 0.0, "tier_active_blocks"
    return active * (used / blocks) / capacity, "tier_active_blocks"


def reduce_snapshot(t_s: float, snap: MetricsSnapshot) -> ServerPoint:
    usage, source = kv_usage(snap)
    return ServerPoint(
        t_s=t_s,
        running=snap.total("num_requests_running"),
        waiting=snap.total("num_requests_waiting"),
        loading_kv=snap.total("num_requests_loading_kv"),
        kv_usage=usage,
        kv_usage_source=source,
        queries=snap.total("prefix_cache_queries_total"),
        hits=snap.by_tier("prefix_cache_hits_total"),
        npu_modelled_s=snap.total("npu_modelled_busy_seconds_total"),
        npu_wall_s=snap.total("npu_wall_busy_seconds_total"),
        vnpu_busy_s={
            dict(labels)["vnpu"]: v
            for (name, labels), v in snap.samples.items()
            if name == "vnpu_modelled_busy_seconds_total" and "vnpu" in dict(labels)
        },
    )


@dataclass(slots=True)
class MetricsSampler:
    """Scrapes ``base_url``'s /metrics every ``interval_s``; times are seconds since
    ``t0`` (a ``time.perf_counter()`` value shared with the request records).

    ``start()`` takes the first sample at once; ``stop()`` takes a last one, so even a
    run shorter than the interval has two points.
    """

    client: httpx.AsyncClient
    base_url: str
    t0: float
    interval_s: float = DEFAULT_INTERVAL_S
    points: list[ServerPoint] = field(default_factory=list)
    num_failed: int = 0
    last_error: str | None = None
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")

    async def sample_once(self) -> None:
        snap = await scrape(self.client, self.base_url)
        if snap.error is not None:
            self.num_failed += 1
            self.last_error = snap.error
            return
        self.points.append(reduce_snapshot(time.perf_counter() - self.t0, snap))

    async def _loop(self) -> None:
        next_at = time.perf_counter()
        while True:
            await self.sample_once()
            next_at += self.interval_s
            # A slow scrape skips ticks instead of bunching them up.
            now = time.perf_counter()
            while next_at <= now:
                next_at += self.interval_s
            await asyncio.sleep(next_at - now)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.sample_once()


def _delta(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return b - a if b >= a else b  # a counter that went down was reset


def server_timeline(
    points: list[ServerPoint], interval_s: float, num_failed: int = 0, last_error: str | None = None
) -> dict[str, Any]:
    """The JSON-ready series.

    Gauges are given at each point (``t_s``). Rates are per interval between two
    consecutive points, stamped at the interval's end (``interval_end_s``):
    ``hit_rate_by_tier[tier]`` is hit tokens / looked-up tokens in that interval (None
    when nothing was looked up), ``npu_*_busy`` the device's busy seconds per second.
    """
    vnpus = sorted({v for p in points for v in p.vnpu_busy_s})
    tiers = [t for t in TIERS if any(t in p.hits for p in points)]
    tiers += sorted({t for p in points for t in p.hits} - set(tiers))
    out: dict[str, Any] = {
        "interval_s": interval_s,
        "num_samples": len(points),
        "num_failed_scrapes": num_failed,
        "last_scrape_error": last_error,
        "kv_usage_source": next((p.kv_usage_source for p in points if p.kv_usage_source), None),
        "t_s": [round(p.t_s, 4) for p in points],
        "num_requests_running": [p.running for p in points],
        "num_requests_waiting": [p.waiting for p in points],
        "num_requests_loading_kv": [p.loading_kv for p in points],
        "kv_cache_usage": [p.kv_usage for p in points],
        "interval_end_s": [],
        "prefix_cache_queries_per_s": [],
        "hit_rate_by_tier": {t: [] for t in tiers},
        "npu_modelled_busy": [],
        "npu_wall_busy": [],
        "vnpu_modelled_busy": {v: [] for v in vnpus},
    }
    for a, b in zip(points, points[1:], strict=False):
        dt = b.t_s - a.t_s
        if dt <= 0:
            continue
        out["interval_end_s"].append(round(b.t_s, 4))
        queries = _delta(a.queries, b.queries)
        out["prefix_cache_queries_per_s"].append(None if queries is None else queries / dt)
        for t in tiers:
            hits = _delta(a.hits.get(t, 0.0), b.hits.get(t)) if t in b.hits else None
            rate = hits / queries if hits is not None and queries else None
            out["hit_rate_by_tier"][t].append(rate)
        for key, attr in (("npu_modelled_busy", "npu_modelled_s"), ("npu_wall_busy", "npu_wall_s")):
            busy = _delta(getattr(a, attr), getattr(b, attr))
            out[key].append(None if busy is None else busy / dt)
        for v in vnpus:
            busy = _delta(a.vnpu_busy_s.get(v), b.vnpu_busy_s.get(v))
            out["vnpu_modelled_busy"][v].append(None if busy is None else busy / dt)
    return out
