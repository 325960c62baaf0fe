"""Latency and throughput maths over finished requests (pure functions).

Definitions follow vLLM's benchmark: TTFT is send to first content chunk; TPOT is
``(e2e - ttft) / (output_tokens - 1)``; inter-token latencies are the gaps between
consecutive content chunks; goodput counts requests meeting every given SLO per second.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestRecord:
    """What the client saw of one request; times are seconds since the run started.

    ``status`` is the HTTP status (0 when no response arrived) and ``error`` is set
    for every failed request, including a 200 whose stream broke off.
    """

    index: int
    start_s: float
    end_s: float = 0.0
    ttft_s: float | None = None
    chunk_times_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    status: int = 0
    error: str | None = None
    text: str = ""

    @property
    def is_ok(self) -> bool:
        return self.error is None

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(slots=True, frozen=True)
class LatencySummary:
    """Mean and percentiles in milliseconds; all None when there was no sample."""

    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    count: int = 0


@dataclass(slots=True, frozen=True)
class Slo:
    """Service-level objectives in ms; None means not constrained."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None


@dataclass(slots=True, frozen=True)
class Timeline:
    """Per-bucket series: ``t_s`` is each bucket's start."""

    bucket_s: float
    t_s: list[float]
    output_tokens_per_s: list[float]
    requests_per_s: list[float]
    ttft_ms_mean: list[float | None]


@dataclass(slots=True, frozen=True)
class RunStats:
    ttft_ms: LatencySummary
    tpot_ms: LatencySummary
    itl_ms: LatencySummary
    e2e_ms: LatencySummary
    duration_s: float
    num_requests: int
    num_errors: int
    errors_by_status: dict[str, int]
    requests_per_s: float
    output_tokens_per_s: float
    goodput_requests_per_s: float
    good_fraction: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    timeline: Timeline


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize_ms(values_s: Sequence[float]) -> LatencySummary:
    """Summarise latencies given in seconds as milliseconds."""
    if not values_s:
        return LatencySummary(None, None, None, None, 0)
    ms = [v * 1000.0 for v in values_s]
    return LatencySummary(
        mean=sum(ms) / len(ms),
        p50=percentile(ms, 50),
        p90=percentile(ms, 90),
        p99=percentile(ms, 99),
        count=len(ms),
    )


def tpot_s(e2e_s: float, ttft_s: float, output_tokens: int) -> float | None:
    """Time per output token after the first; None with fewer than two tokens."""
    if output_tokens < 2:
        return None
    return (e2e_s - ttft_s) / (output_tokens - 1)


def inter_token_latencies(chunk_times_s: Sequence[float]) -> list[float]:
    """Gaps between consecutive content chunks (one per token on our server)."""
    return [b - a for a, b in zip(chunk_times_s, chunk_times_s[1:], strict=False)]


def meets_slo(ttft_s: float | None, tpot: float | None, slo: Slo) -> bool:
    """A request is good if it produced a token and every given SLO holds; a request
    with a single token has no TPOT and only the TTFT SLO applies to it."""
    if ttft_s is None:
        return False
    if slo.ttft_ms is not None and ttft_s * 1000.0 > slo.ttft_ms:
        return False
    return not (slo.tpot_ms is not None and tpot is not None and tpot * 1000.0 > slo.tpot_ms)


def errors_by_status(records: Iterable[RequestRecord]) -> dict[str, int]:
    """Failed requests counted by HTTP status ("0" = no response, e.g. refused)."""
    counts = Counter(str(r.status) for r in records if not r.is_ok)
    return dict(sorted(counts.items()))


def build_timeline(
    records: Sequence[RequestRecord], duration_s: float, bucket_s: float | None = None
) -> Timeline:
    """Output tokens/s (by chunk time), completed requests/s (by end time) and mean
    TTFT (by send time) per bucket. The default bucket gives about 60 buckets."""
    if bucket_s is None:
        bucket_s = max(0.1, duration_s / 60.0)
    n = max(1, math.ceil(duration_s / bucket_s))
    tokens = [0.0] * n
    done = [0.0] * n
    ttft_sum = [0.0] * n
    ttft_num = [0] * n

    def slot(t: float) -> int:
        return min(n - 1, max(0, int(t / bucket_s)))

    for r in records:
        if not r.is_ok:
            continue
        # Chunks may carry several tokens on other servers: spread them evenly.
        per_chunk = r.output_tokens / len(r.chunk_times_s) if r.chunk_times_s else 0.0
        for t in r.chunk_times_s:
            tokens[slot(t)] += per_chunk
        done[slot(r.end_s)] += 1
        if r.ttft_s is not None:
            i = slot(r.start_s)
            ttft_sum[i] += r.ttft_s * 1000.0
            ttft_num[i] += 1
    return Timeline(
        bucket_s=bucket_s,
        t_s=[i * bucket_s for i in range(n)],
        output_tokens_per_s=[x / bucket_s for x in tokens],
        requests_per_s=[x / bucket_s for x in done],
        ttft_ms_mean=[s / k if k else None for s, k in zip(ttft_sum, ttft_num, strict=True)],
    )


def aggregate(records: Sequence[RequestRecord], slo: Slo) -> RunStats:
    """Summarise a run. Latencies use successful requests only; the duration runs
    from the run start to the last request's end."""
    ok = [r for r in records if r.is_ok]
    duration = max((r.end_s for r in records), default=0.0)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpots = []
    itls: list[float] = []
    num_good = 0
    for r in ok:
        tpot = tpot_s(r.e2e_s, r.ttft_s, r.output_tokens) if r.ttft_s is not None else None
        if tpot is not None:
            tpots.append(tpot)
        itls.extend(inter_token_latencies(r.chunk_times_s))
        num_good += meets_slo(r.ttft_s, tpot, slo)
    output_tokens = sum(r.output_tokens for r in ok)

    def per_s(x: float) -> float:
        return x / duration if duration > 0 else 0.0

    return RunStats(
        ttft_ms=summarize_ms(ttfts),
        tpot_ms=summarize_ms(tpots),
        itl_ms=summarize_ms(itls),
        e2e_ms=summarize_ms([r.e2e_s for r in ok]),
        duration_s=duration,
        num_requests=len(records),
        num_errors=len(records) - len(ok),
        errors_by_status=errors_by_status(records),
        requests_per_s=per_s(len(ok)),
        output_tokens_per_s=per_s(output_tokens),
        goodput_requests_per_s=per_s(num_good),
        good_fraction=num_good / len(records) if records else 0.0,
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        cached_tokens=sum(r.cached_tokens for r in ok),
        output_tokens=output_tokens,
        timeline=build_timeline(records, duration),
    )
