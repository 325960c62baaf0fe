"""Cache stats: snapshots are independent copies; the histogram buckets are right."""

from __future__ import annotations

from cache.stats import LATENCY_BUCKETS, CacheStats, LatencyHistogram, Tier


def test_snapshot_is_independent():
    stats = CacheStats()
    stats.tiers[Tier.DDR].reload_latency.observe(0.01)
    snap = stats.snapshot()
    stats.query_tokens += 7
    stats.hit_tokens[Tier.HBM] += 16
    stats.tiers[Tier.DDR].read_bytes += 100
    stats.tiers[Tier.DDR].reload_latency.observe(0.02)
    assert snap.query_tokens == 0 and snap.hit_tokens[Tier.HBM] == 0
    assert snap.tiers[Tier.DDR].read_bytes == 0
    assert snap.tiers[Tier.DDR].reload_latency.count == 1


def test_histogram_buckets():
    h = LatencyHistogram()
    for seconds in (LATENCY_BUCKETS[0], LATENCY_BUCKETS[0] * 1.5, 1e9):
        h.observe(seconds)
    assert h.bucket_counts[0] == 1 and h.bucket_counts[1] == 1 and h.bucket_counts[-1] == 1
    assert h.count == 3
