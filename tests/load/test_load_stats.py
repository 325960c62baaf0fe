"""Metric maths on hand-computed examples."""

import pytest

from load.stats import (
    RequestRecord,
    Slo,
    aggregate,
    build_timeline,
    errors_by_status,
    inter_token_latencies,
    meets_slo,
    percentile,
    summarize_ms,
    tpot_s,
)


def test_percentile_interpolates_linearly():
    values = [4.0, 1.0, 3.0, 2.0]  # sorted 1 2 3 4
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)  # pos 2.7
    assert percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize_in_ms():
    s = summarize_ms([0.1, 0.2, 0.3, 0.4, 1.0])
    assert s.mean == pytest.approx(400.0)
    assert s.p50 == pytest.approx(300.0)
    assert s.p90 == pytest.approx(760.0)  # pos 3.6: 400 + 0.6 * 600
    assert s.p99 == pytest.approx(976.0)  # pos 3.96
    assert s.count == 5
    empty = summarize_ms([])
    assert empty.mean is None and empty.p99 is None and empty.count == 0


def test_tpot_and_itl():
    assert tpot_s(e2e_s=1.0, ttft_s=0.1, output_tokens=10) == pytest.approx(0.1)
    assert tpot_s(1.0, 0.1, 1) is None
    assert inter_token_latencies([1.0, 1.5, 1.75]) == [0.5, 0.25]
    assert inter_token_latencies([1.0]) == []


def test_meets_slo():
    assert meets_slo(0.1, 0.01, Slo())
    assert meets_slo(0.1, 0.01, Slo(ttft_ms=100, tpot_ms=10))
    assert not meets_slo(0.1001, 0.01, Slo(ttft_ms=100))
    assert not meets_slo(0.05, 0.011, Slo(tpot_ms=10))
    assert meets_slo(0.05, None, Slo(tpot_ms=10))  # one token: no TPOT
    assert not meets_slo(None, None, Slo())


def rec(index, start, ttft, chunks, end, out, **kw):
    return RequestRecord(
        index=index,
        start_s=start,
        end_s=end,
        ttft_s=ttft,
        chunk_times_s=chunks,
        output_tokens=out,
        status=200,
        **kw,
    )


def test_aggregate_hand_computed():
    records = [
        # TTFT 100 ms, TPOT (1.0-0.1)/2 = 450 ms, ITL 400, 500
        rec(0, 0.0, 0.1, [0.1, 0.5, 1.0], 1.0, 3, prompt_tokens=100, cached_tokens=40),
        # TTFT 200 ms, TPOT 300 ms, ITL 300
        rec(1, 1.0, 0.2, [1.2, 1.5], 1.5, 2, prompt_tokens=50, cached_tokens=0),
        RequestRecord(index=2, start_s=0.5, end_s=2.0, status=503, error="busy"),
        RequestRecord(index=3, start_s=0.5, end_s=0.6, status=0, error="refused"),
    ]
    s = aggregate(records, Slo(ttft_ms=150))
    assert s.duration_s == 2.0
    assert s.num_requests == 4 and s.num_errors == 2
    assert s.errors_by_status == {"0": 1, "503": 1}
    assert s.ttft_ms.mean == pytest.approx(150.0)
    assert s.tpot_ms.mean == pytest.approx(375.0)
    assert s.itl_ms.mean == pytest.approx(400.0)
    assert s.itl_ms.p50 == pytest.approx(400.0)
    assert s.e2e_ms.mean == pytest.approx(750.0)
    assert s.requests_per_s == pytest.approx(1.0)
    assert s.output_tokens_per_s == pytest.approx(2.5)
    assert s.goodput_requests_per_s == pytest.approx(0.5)  # only request 0 meets TTFT
    assert s.good_fraction == pytest.approx(0.25)
    assert (s.prompt_tokens, s.cached_tokens, s.output_tokens) == (150, 40, 5)


def test_timeline_buckets():
    records = [rec(0, 0.0, 0.1, [0.1, 0.5, 1.5], 1.5, 3), rec(1, 1.2, 0.3, [1.5], 1.9, 1)]
    tl = build_timeline(records, duration_s=2.0, bucket_s=1.0)
    assert tl.t_s == [0.0, 1.0]
    assert tl.output_tokens_per_s == [2.0, 2.0]
    assert tl.requests_per_s == [0.0, 2.0]
    assert tl.ttft_ms_mean == [pytest.approx(100.0), pytest.approx(300.0)]


def test_errors_by_status_ignores_successes():
    assert errors_by_status([rec(0, 0, 0.1, [0.1], 0.1, 1)]) == {}
