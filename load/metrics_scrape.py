"""Server-side counters from ``GET /metrics``, as deltas over a run.

Names are tierkv's (``tierkv:...``); vLLM's ``vllm:`` twins of the same names are read
too, so a run against vLLM still reports its prefix-cache hits (vLLM's hits carry no
tier label and are reported as ``hbm``). A server that serves a name under both
prefixes is read under ``tierkv:`` only (its series carry the tier label), never
summed twice. A server without ``/metrics`` or without a metric gives empty deltas,
never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from load.client import root_url

PREFIXES = ("tierkv:", "vllm:")
TIERS = ("hbm", "ddr", "flash")

# result key -> sample name without prefix
_SCALAR_COUNTERS = {
    "prefix_cache_queries": "prefix_cache_queries_total",
    "preemptions": "num_preemptions_total",
    "prompt_tokens": "prompt_tokens_total",
    "generation_tokens": "generation_tokens_total",
    "npu_busy_s": "npu_modelled_busy_seconds_total",
    # not in the documented contract; None when absent
    "npu_wall_busy_s": "npu_wall_busy_seconds_total",
    "engine_steps": "engine_steps_total",
}
_TIER_COUNTERS = {
    "prefix_cache_hits": "prefix_cache_hits_total",
    "read_bytes": "tier_read_bytes_total",
    "write_bytes": "tier_write_bytes_total",
    "evictions": "tier_evictions_total",
    "checksum_failures": "tier_checksum_failures_total",
}
_TIER_GAUGES = {
    "used_bytes": "tier_used_bytes",
    "capacity_bytes": "tier_capacity_bytes",
}

Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True, frozen=True)
class MetricsSnapshot:
    """Sample values keyed by (name without prefix, sorted labels); empty when the
    server exposed nothing readable. ``error`` says why a scrape gave nothing."""

    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)
    error: str | None = None

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def total(self, name: str) -> float | None:
        """Sum of `name` over all its label sets (vLLM labels series by model_name)."""
        values = [v for (sample, _), v in self.samples.items() if sample == name]
        return sum(values) if values else None

    def by_tier(self, name: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (sample, labels), v in self.samples.items():
            if sample != name:
                continue
            tier = dict(labels).get("tier", "hbm")
            out[tier] = out.get(tier, 0.0) + v
        return out


def parse_metrics(text: str) -> MetricsSnapshot:
    """Parse Prometheus text; unreadable text gives an empty snapshot with an error.

    Each sample name (without its prefix) is taken from the first prefix of
    ``PREFIXES`` that has it, so a name served as both ``tierkv:`` and ``vllm:`` counts
    once.
    """
    by_prefix: dict[str, dict[tuple[str, Labels], float]] = {p: {} for p in PREFIXES}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                for prefix in PREFIXES:
                    if s.name.startswith(prefix):
                        found = by_prefix[prefix]
                        key = (s.name[len(prefix) :], tuple(sorted(s.labels.items())))
                        found[key] = found.get(key, 0.0) + float(s.value)
                        break
    except (ValueError, TypeError, IndexError) as exc:
        return MetricsSnapshot({}, f"unparsable /metrics: {exc}")
    samples: dict[tuple[str, Labels], float] = {}
    taken: set[str] = set()
    for prefix in PREFIXES:
        names = {name for name, _ in by_prefix[prefix]} - taken
        samples.update((k, v) for k, v in by_prefix[prefix].items() if k[0] in names)
        taken |= names
    return MetricsSnapshot(samples)


async def scrape(client: httpx.AsyncClient, base_url: str) -> MetricsSnapshot:
    """GET ``/metrics`` (at the server root, not under /v1); never raises."""
    url = metrics_url(base_url)
    try:
        resp = await client.get(url, timeout=10.0)
    except httpx.HTTPError as exc:
        return MetricsSnapshot({}, f"GET {url}: {exc!r}")
    if resp.status_code != 200:
        return MetricsSnapshot({}, f"GET {url}: HTTP {resp.status_code}")
    return parse_metrics(resp.text)


def metrics_url(base_url: str) -> str:
    return root_url(base_url) + "/metrics"


def server_deltas(before: MetricsSnapshot, after: MetricsSnapshot) -> dict[str, Any]:
    """Counter increases between two snapshots plus the final gauges, per tier.

    Always returns every key: scalars are None and per-tier maps empty when the metric
    is missing afterwards or either scrape failed. A series missing only before counts
    from zero (labelled counters often appear on first use).
    """
    if before.error is not None:
        after = MetricsSnapshot({}, before.error)
    out: dict[str, Any] = {}
    for key, name in _SCALAR_COUNTERS.items():
        b = after.total(name)
        out[key] = None if b is None else _increase(before.total(name) or 0.0, b)
    for key, name in _TIER_COUNTERS.items():
        a_t, b_t = before.by_tier(name), after.by_tier(name)
        out[key] = {t: _increase(a_t.get(t, 0.0), b_t[t]) for t in _tier_order(b_t)}
    for key, name in _TIER_GAUGES.items():
        b_t = after.by_tier(name)
        out[key] = {t: b_t[t] for t in _tier_order(b_t)}
    hits = sum(out["prefix_cache_hits"].values())
    queries = out["prefix_cache_queries"]
    out["hit_rate"] = hits / queries if queries else None
    out["scrape_error"] = before.error or after.error
    return out


def _increase(before: float, after: float) -> float:
    """A counter's increase; a counter that went down was reset (server restart)."""
    return after - before if after >= before else after


def _tier_order(d: dict[str, float]) -> list[str]:
    return [t for t in TIERS if t in d] + sorted(t for t in d if t not in TIERS)
