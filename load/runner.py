"""Dispatching a workload's requests: open loop (Poisson or the trace's timestamps)
or closed loop (a fixed number of requests in flight).

A request whose ``previous`` turn has not finished waits for it in both modes; its
TTFT is measured from when it is actually sent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from load.client import ClientOptions, first_model_id, make_client, stream_request
from load.metrics_sampler import DEFAULT_INTERVAL_S, MetricsSampler, server_timeline
from load.metrics_scrape import scrape, server_deltas
from load.stats import RequestRecord, RunStats, Slo, aggregate
from load.workloads import Api, RequestSpec


@dataclass(slots=True, frozen=True)
class Arrival:
    """Exactly one mode: ``rate`` (Poisson requests/s; ``inf`` sends all at once),
    ``concurrency`` (closed loop) or ``trace_times`` (each spec's ``arrival_s``)."""

    rate: float | None = None
    concurrency: int | None = None
    trace_times: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        modes = (self.rate is not None) + (self.concurrency is not None) + self.trace_times
        if modes != 1:
            raise ValueError("choose exactly one of rate, concurrency, trace_times")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")

    def describe(self) -> dict[str, object]:
        if self.concurrency is not None:
            return {"mode": "closed", "concurrency": self.concurrency}
        if self.trace_times:
            return {"mode": "trace-timestamps"}
        return {"mode": "poisson", "rate": self.rate}


def poisson_arrivals(num: int, rate: float, seed: int) -> list[float]:
    """Send times (s) of a Poisson process at ``rate``/s starting at 0."""
    if rate == float("inf"):
        return [0.0] * num
    rng = random.Random(seed)
    t = 0.0
    out = []
    for _ in range(num):
        out.append(t)
        t += rng.expovariate(rate)
    return out


OnDone = Callable[[RequestRecord], None]


class _Conversations:
    """Chat histories per session and completion events per request."""

    def __init__(self, specs: list[RequestSpec]) -> None:
        self._history: dict[int, list[dict[str, str]]] = {}
        self._done = {s.index: asyncio.Event() for s in specs}

    def is_ready(self, spec: RequestSpec) -> bool:
        return spec.previous is None or self._done[spec.previous].is_set()

    async def wait_ready(self, spec: RequestSpec) -> None:
        if spec.previous is not None:
            await self._done[spec.previous].wait()

    def payload(self, spec: RequestSpec) -> str | list[dict[str, str]]:
        if spec.api is Api.COMPLETIONS:
            return spec.prompt
        messages = [{"role": "system", "content": spec.system}] if spec.system else []
        messages += self._history.get(spec.session, [])
        messages.append({"role": "user", "content": spec.prompt})
        return messages

    def finish(self, spec: RequestSpec, record: RequestRecord) -> None:
        if spec.api is Api.CHAT:
            # A failed turn leaves an empty answer; the conversation goes on.
            self._history.setdefault(spec.session, []).extend(
                [
                    {"role": "user", "content": spec.prompt},
                    {"role": "assistant", "content": record.text},
                ]
            )
        self._done[spec.index].set()


async def run_requests(
    client: httpx.AsyncClient,
    opts: ClientOptions,
    specs: list[RequestSpec],
    arrival: Arrival,
    on_done: OnDone | None = None,
    t0: float | None = None,
) -> list[RequestRecord]:
    """Send every spec; return one record per spec in spec order. Failed requests are
    recorded, never raised. Times are relative to ``t0`` (a ``time.perf_counter()``
    value; default: now)."""
    convs = _Conversations(specs)
    records: dict[int, RequestRecord] = {}
    if t0 is None:
        t0 = time.perf_counter()

    async def send(spec: RequestSpec) -> None:
        try:
            record = await stream_request(
                client, opts, spec.api, convs.payload(spec), spec.max_tokens, spec.index, t0
            )
        except Exception as exc:  # noqa: BLE001 - a bug in one request must not end the run
            now = time.perf_counter() - t0
            record = RequestRecord(
                index=spec.index, start_s=now, end_s=now, error=f"client error: {exc!r}"
            )
        records[spec.index] = record
        convs.finish(spec, record)
        if on_done is not None:
            on_done(record)

    if arrival.concurrency is not None:
        await _closed_loop(specs, arrival.concurrency, convs, send)
    else:
        if arrival.trace_times:
            times = [s.arrival_s or 0.0 for s in specs]
        else:
            times = poisson_arrivals(len(specs), arrival.rate or 0.0, arrival.seed)

        async def open_one(spec: RequestSpec, at: float) -> None:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await convs.wait_ready(spec)
            await send(spec)

        await asyncio.gather(*(open_one(s, t) for s, t in zip(specs, times, strict=True)))
    return [records[s.index] for s in specs]


async def _closed_loop(
    specs: list[RequestSpec],
    concurrency: int,
    convs: _Conversations,
    send: Callable[[RequestSpec], Awaitable[None]],
) -> None:
    """``concurrency`` workers; each takes the first pending spec in order whose
    previous turn is done, or waits for a request to finish."""
    pending = list(specs)
    changed = asyncio.Condition()

    async def worker() -> None:
        while True:
            async with changed:
                while True:
                    if not pending:
                        return
                    spec = next((s for s in pending if convs.is_ready(s)), None)
                    if spec is not None:
                        pending.remove(spec)
                        break
                    await changed.wait()
            await send(spec)
            async with changed:
                changed.notify_all()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


@dataclass(slots=True)
class RunOutcome:
    model: str
    records: list[RequestRecord]
    stats: RunStats
    server: dict[str, Any]
    started_at: float  # unix time
    server_timeline: dict[str, Any] | None = None  # see metrics_sampler.server_timeline


async def run_workload(
    base_url: str,
    specs: list[RequestSpec],
    arrival: Arrival,
    slo: Slo,
    model: str | None = None,
    ignore_eos: bool = True,
    timeout_s: float = 600.0,
    api_key: str | None = None,
    on_done: OnDone | None = None,
    sample_interval_s: float | None = DEFAULT_INTERVAL_S,
) -> RunOutcome:
    """Resolve the model (first of GET /v1/models unless given), scrape /metrics, send
    the workload while sampling /metrics every ``sample_interval_s`` (None: no
    sampling), scrape again. Raises ServerUnreachableError if the server does not
    answer GET /v1/models; individual request failures are recorded instead."""
    async with make_client(timeout_s, api_key) as client:
        resolved = await first_model_id(client, base_url)
        opts = ClientOptions(
            base_url=base_url,
            model=model or resolved,
            ignore_eos=ignore_eos,
            timeout_s=timeout_s,
            api_key=api_key,
        )
        before = await scrape(client, base_url)
        started_at = time.time()
        t0 = time.perf_counter()
        sampler = None
        if sample_interval_s is not None and before.error is None:
            sampler = MetricsSampler(client, base_url, t0, sample_interval_s)
            sampler.start()
        try:
            records = await run_requests(client, opts, specs, arrival, on_done, t0)
        finally:
            if sampler is not None:
                await sampler.stop()
        after = await scrape(client, base_url)
    return RunOutcome(
        model=opts.model,
        records=records,
        stats=aggregate(records, slo),
        server=server_deltas(before, after),
        started_at=started_at,
        server_timeline=None
        if sampler is None
        else server_timeline(
            sampler.points, sampler.interval_s, sampler.num_failed, sampler.last_error
        ),
    )
