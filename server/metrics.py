"""Prometheus metrics, named after vLLM's (`vllm:` -> `tierkv:`).

Latency histograms are observed on the event loop as outputs arrive; finishes (and their
end-to-end latency) as the engine reports them, once per request. Engine and cache
counters are not mirrored into prometheus objects on every change: a collector reads
the latest stats snapshot the engine thread published, at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cache.stats import LATENCY_BUCKETS, CacheStats, Tier, TierOp
from npu_sim.links import TransferTotals
from server.engine.core import EngineStats
from server.metrics_common import counter, gauge, histogram
from server.vllm_metrics import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS

# The same buckets as the vllm: series (vLLM's loggers.py), so both read alike.
E2E_BUCKETS = REQUEST_LATENCY_BUCKETS

StatsSource = Callable[[], tuple[EngineStats, CacheStats]]


class ServerMetrics:
    """All metrics of one app instance, in their own registry (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.time_to_first_token = histogram(
            self.registry,
            "tierkv:time_to_first_token_seconds",
            "Time to first token.",
            TTFT_BUCKETS,
        )
        self.inter_token_latency = histogram(
            self.registry,
            "tierkv:inter_token_latency_seconds",
            "Time between consecutive output tokens.",
            ITL_BUCKETS,
        )
        self.e2e_latency = histogram(
            self.registry,
            "tierkv:e2e_request_latency_seconds",
            "End-to-end latency of every finished request (aborts included).",
            E2E_BUCKETS,
        )
        self.request_success = Counter(
            "tierkv:request_success",
            "Finished requests by finish reason (stop, length, abort), each counted once.",
            ["finished_reason"],
            registry=self.registry,
        )
        # Refused before reaching the engine: queue_full, engine_dead, body_too_large,
        # unauthorized. vLLM has no such counter; the name is ours.
        self.request_rejected = Counter(
            "tierkv:request_rejected",
            "Requests refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.injected_failures = Counter(
            "tierkv:injected_failures",
            "Errors injected by --failure-injection-rate, by type.",
            ["type"],
            registry=self.registry,
        )

    def attach(self, source: StatsSource) -> None:
        """Export the engine's and cache manager's counters, read from `source` per scrape."""
        self.registry.register(_StatsCollector(source))

    def attach_transfer_clock(self, totals: Callable[[], dict[str, TransferTotals]]) -> None:
        """Export the modelled vs real seconds of tier transfers (npu_sim.links)."""
        self.registry.register(_TransferCollector(totals))


class _TransferCollector(Collector):
    def __init__(self, totals: Callable[[], dict[str, TransferTotals]]) -> None:
        self._totals = totals

    def collect(self) -> Iterator[Metric]:
        totals = self._totals()
        for name, doc, attr in (
            (
                "tier_transfer_modelled_seconds",
                "Modelled time of transfers to and from each tier (media + host link).",
                "modelled_seconds",
            ),
            (
                "tier_transfer_wall_seconds",
                "Real time of the same transfers on this host.",
                "wall_seconds",
            ),
            (
                "tier_transfer_logical_bytes",
                "Logical KV bytes moved (the modelled model's).",
                "logical_bytes",
            ),
        ):
            family = CounterMetricFamily(f"tierkv:{name}", doc, labels=["tier"])
            for tier in ("ddr", "flash"):
                family.add_metric([tier], getattr(totals.get(tier, TransferTotals()), attr))
            yield family


class _StatsCollector(Collector):
    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        engine, cache = self._source()
        yield gauge(
            "tierkv:num_requests_running", "Requests in the running batch.", engine.num_running
        )
        yield gauge(
            "tierkv:num_requests_waiting", "Requests waiting to be scheduled.", engine.num_waiting
        )
        yield gauge(
            "tierkv:num_requests_loading_kv", "Requests waiting for KV reloads.", engine.num_loading
        )
        yield counter(
            "tierkv:num_preemptions", "Requests preempted for lack of HBM.", engine.num_preemptions
        )
        yield counter(
            "tierkv:prompt_tokens",
            "Prompt tokens computed (prefill, not cached).",
            engine.num_prompt_tokens_computed,
        )
        yield counter("tierkv:generation_tokens", "Generated tokens.", engine.num_generated_tokens)
        yield counter(
            "tierkv:npu_modelled_busy_seconds",
            "Modelled device time of all steps.",
            engine.modelled_busy_seconds,
        )
        yield counter(
            "tierkv:npu_wall_busy_seconds",
            "Wall time of all steps on this host.",
            engine.wall_busy_seconds,
        )
        yield counter("tierkv:engine_steps", "Engine steps run.", engine.num_steps)
        yield counter(
            "tierkv:prefetched_blocks",
            "Lower-tier blocks whose reload started while their request was queued.",
            engine.num_prefetched_blocks,
        )
        yield counter(
            "tierkv:tier_load_inflight_seconds",
            "Time with at least one KV reload (admitted or prefetched) in flight.",
            engine.load_inflight_seconds,
        )
        yield counter(
            "tierkv:tier_transfer_exposed_seconds",
            "Of that time, the part the NPU sat idle waiting (1 - exposed/inflight is the "
            "share of reload time hidden behind compute).",
            engine.load_exposed_seconds,
        )
        yield counter(
            "tierkv:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            cache.query_tokens,
        )

        per_tier: dict[str, tuple[str, Callable[[Tier], float]]] = {
            "prefix_cache_hits": (
                "Prompt tokens served from each tier.",
                lambda t: cache.hit_tokens[t],
            ),
            "tier_hit_blocks": ("Blocks found in each tier.", lambda t: cache.tiers[t].hit_blocks),
            "tier_miss_blocks": (
                "Lookups that missed in each tier.",
                lambda t: cache.tiers[t].miss_blocks,
            ),
            "tier_read_bytes": ("Bytes read from each tier.", lambda t: cache.tiers[t].read_bytes),
            "tier_write_bytes": (
                "Bytes written to each tier.",
                lambda t: cache.tiers[t].write_bytes,
            ),
            "tier_evictions": (
                "Blocks evicted from each tier.",
                lambda t: cache.tiers[t].evictions,
            ),
            "tier_checksum_failures": (
                "Blocks that failed their checksum on reload.",
                lambda t: cache.tiers[t].checksum_failures,
            ),
            "tier_index_repairs": (
                "Index entries dropped because the tier had lost the block.",
                lambda t: cache.tiers[t].index_repairs,
            ),
            "tier_reload_timeouts": (
                "Reloads abandoned at --reload-timeout-ms (recomputed).",
                lambda t: cache.tiers[t].reload_timeouts,
            ),
            "tier_wrong_size_blocks": (
                "Wrong-sized entries found and deleted at start-up.",
                lambda t: cache.tiers[t].wrong_size_blocks,
            ),
        }
        for name, (doc, value) in per_tier.items():
            family = CounterMetricFamily(f"tierkv:{name}", doc, labels=["tier"])
            for tier in Tier:
                family.add_metric([tier.value], value(tier))
            yield family
        io_errors = CounterMetricFamily(
            "tierkv:tier_io_errors",
            "Failed tier operations, by tier and operation.",
            labels=["tier", "op"],
        )
        faults = CounterMetricFamily(
            "tierkv:tier_faults_injected",
            "Faults injected by --tier-faults, by kind.",
            labels=["tier", "kind"],
        )
        up = GaugeMetricFamily(
            "tierkv:tier_up", "1 when the tier's health is ok or degraded.", labels=["tier"]
        )
        for tier in Tier:
            stats = cache.tiers[tier]
            for op in TierOp:
                io_errors.add_metric([tier.value, op.value], stats.io_errors_by_op[op])
            for kind, n in sorted(stats.faults_injected.items()):
                faults.add_metric([tier.value, kind], n)
            up.add_metric([tier.value], 1.0 if stats.is_up else 0.0)
        yield io_errors
        yield faults
        yield up
        for name, doc, attr in (
            ("tier_used_bytes", "Bytes held in each tier.", "used_bytes"),
            ("tier_capacity_bytes", "Capacity of each tier (0: disabled).", "capacity_bytes"),
            ("tier_blocks", "Blocks held in each tier.", "num_blocks"),
            ("tier_active_blocks", "Blocks referenced by requests (HBM).", "active_blocks"),
        ):
            g = GaugeMetricFamily(f"tierkv:{name}", doc, labels=["tier"])
            for tier in Tier:
                g.add_metric([tier.value], getattr(cache.tiers[tier], attr))
            yield g
        hist = HistogramMetricFamily(
            "tierkv:tier_reload_latency_seconds",
            "Latency of one reload batch per tier.",
            labels=["tier"],
        )
        for tier in (Tier.DDR, Tier.FLASH):
            h = cache.tiers[tier].reload_latency
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), h.bucket_counts, strict=True):
                cumulative += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            hist.add_metric([tier.value], buckets, h.total_seconds)
        yield hist
