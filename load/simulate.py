"""`tierkv-load simulate` / `tierkv simulate`: a workload through the server's own
scheduler and cache manager on a virtual clock (`server.simulate`), with no server.

The workload is built exactly as `tierkv-load run` builds it (same generators, trace
reader, slicing and arrival modes), each request is tokenized as the server would
tokenize its HTTP body, and the outcome is written in `run`'s `result.json` schema, so
`compare`, the plots and `report.html` read a simulated run like a measured one. Times
are virtual: a request's TTFT is from its arrival to the end of the step that made its
first token. `server` holds the simulated replica's counters under the names
`server_deltas` uses; byte counts there are *logical* (the emulated model's full block
size), since the simulator stores no KV bytes.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from load.metrics_sampler import ServerPoint, server_timeline
from load.runner import Arrival, RunOutcome, poisson_arrivals
from load.stats import RequestRecord, Slo, aggregate
from load.workloads import Api, RequestSpec
from server.config import Settings
from server.simulate.engine import SimRecord, SimRequest, SimSample, SimTotals, Simulator
from server.simulate.front_end import FrontEndModel

# Requests are tokenized when their arrival comes within this many virtual seconds, not
# all at once: an hour of the Mooncake trace is ~145M prompt tokens.
LOOKAHEAD_S = 10.0

OnDone = Callable[[RequestRecord, float], None]  # (record, virtual now)


@dataclass(slots=True)
class SimOutcome:
    outcome: RunOutcome
    totals: SimTotals
    wall_s: float


class _Client:
    """The client side of `load.runner`, on the simulator: chat histories, turns that
    wait for the previous one, and the records."""

    def __init__(self, sim: Simulator, specs: list[RequestSpec], on_done: OnDone | None) -> None:
        self.sim = sim
        self.specs = {s.index: s for s in specs}
        self.history: dict[int, list[tuple[str, str]]] = {}
        self.records: dict[int, RequestRecord] = {}
        self.waiting_for: dict[int, list[RequestSpec]] = {}  # previous index -> specs
        self.on_done = on_done

    def submit(self, spec: RequestSpec, at: float) -> None:
        if spec.api is Api.COMPLETIONS:
            tokens = self.sim.tokenize_completion(spec.prompt)
        else:
            messages = [("system", spec.system)] if spec.system else []
            messages += self.history.get(spec.session, [])
            messages.append(("user", spec.prompt))
            tokens = self.sim.tokenize_chat(messages)
        self.sim.submit(SimRequest(spec.index, at, tokens, spec.max_tokens))

    def finish(self, done: SimRecord) -> list[RequestSpec]:
        """Record a finished request; return the turns that were waiting for it."""
        spec = self.specs[done.index]
        record = _request_record(done)
        self.records[done.index] = record
        if spec.api is Api.CHAT:
            text = self.sim.output_text(record.output_tokens)
            self.history.setdefault(spec.session, []).extend(
                [("user", spec.prompt), ("assistant", text)]
            )
        if self.on_done is not None:
            self.on_done(record, self.sim.clock.now)
        return self.waiting_for.pop(done.index, [])


def _request_record(done: SimRecord) -> RequestRecord:
    end = done.end_s if done.end_s is not None else done.arrival_s
    ttft = None if done.first_token_s is None else done.first_token_s - done.arrival_s
    return RequestRecord(
        index=done.index,
        start_s=done.arrival_s,
        end_s=end,
        ttft_s=ttft,
        chunk_times_s=list(done.token_times_s),
        output_tokens=done.output_tokens,
        prompt_tokens=done.prompt_tokens,
        cached_tokens=done.cached_tokens,
        status=400 if done.error else 200,
        error=done.error,
    )


def _open_loop(client: _Client, specs: list[RequestSpec], times: list[float]) -> None:
    sim = client.sim
    ready: list[tuple[float, int, RequestSpec]] = []
    for spec, t in zip(specs, times, strict=True):
        if spec.previous is None:
            heapq.heappush(ready, (t, spec.index, spec))
        else:
            client.waiting_for.setdefault(spec.previous, []).append(spec)
    arrival = dict(zip((s.index for s in specs), times, strict=True))
    idle_until = -math.inf  # the simulator has no event before this time
    while ready or sim.num_in_flight or client.waiting_for:
        # Submit what arrives within the lookahead, or by the time the simulator has
        # nothing to do before (else a lull longer than the lookahead, with requests in
        # flight that wait for the next arrivals, spins here forever).
        horizon = max(sim.clock.now + LOOKAHEAD_S, idle_until)
        while ready and (ready[0][0] <= horizon or not sim.num_in_flight):
            t, _, spec = heapq.heappop(ready)
            client.submit(spec, t)
        until = ready[0][0] if ready else math.inf
        finished = sim.run(until=until, stop_on_finish=bool(client.waiting_for))
        # With nothing finished, `run` stopped because its next event is at `until` or
        # later (or it has none): the arrivals at `until` come next.
        idle_until = until if not finished else -math.inf
        for done in finished:
            for spec in client.finish(done):
                # A turn is sent at its arrival time, or when its previous turn ended.
                at = max(arrival[spec.index], done.end_s or 0.0)
                heapq.heappush(ready, (at, spec.index, spec))
        if not finished and not ready and not sim.num_in_flight and client.waiting_for:
            raise RuntimeError("turns wait for requests that never ran")


def _closed_loop(client: _Client, specs: list[RequestSpec], concurrency: int) -> None:
    sim = client.sim
    pending = list(specs)
    finished_ids: set[int] = set()
    in_flight = 0

    def dispatch() -> None:
        nonlocal in_flight
        while in_flight < concurrency:
            spec = next(
                (s for s in pending if s.previous is None or s.previous in finished_ids), None
            )
            if spec is None:
                return
            pending.remove(spec)
            client.submit(spec, sim.clock.now)
            in_flight += 1

    dispatch()
    while in_flight:
        for done in sim.run(stop_on_finish=True):
            in_flight -= 1
            finished_ids.add(done.index)
            client.finish(done)
        dispatch()


def simulate_workload(
    settings: Settings,
    specs: list[RequestSpec],
    arrival: Arrival,
    slo: Slo,
    on_done: OnDone | None = None,
    sample_interval_s: float | None = 1.0,
    front_end: FrontEndModel | None = None,
) -> SimOutcome:
    """Run `specs` through a simulated replica configured by `settings` (which must
    set `emulate`); records in spec order, as `run_workload` returns them. `front_end`:
    the optional host-overhead model (`server.simulate.front_end`)."""
    started_at = time.time()
    wall = time.perf_counter()
    sim = Simulator(settings, sample_interval_s, front_end)
    client = _Client(sim, specs, on_done)
    if arrival.concurrency is not None:
        _closed_loop(client, specs, arrival.concurrency)
    else:
        if arrival.trace_times:
            times = [s.arrival_s or 0.0 for s in specs]
        else:
            times = poisson_arrivals(len(specs), arrival.rate or 0.0, arrival.seed)
        _open_loop(client, specs, times)
    records = [client.records[s.index] for s in specs]
    totals = sim.totals()
    outcome = RunOutcome(
        model=settings.served_model,
        records=records,
        stats=aggregate(records, slo),
        server=server_counters(totals),
        started_at=started_at,
        server_timeline=timeline(sim.samples, sample_interval_s) if sim.samples else None,
    )
    return SimOutcome(outcome, totals, time.perf_counter() - wall)


def server_counters(totals: SimTotals) -> dict[str, Any]:
    """The simulated replica's counters under `load.metrics_scrape.server_deltas`' keys."""
    stats = totals.cache
    tiers = list(totals.num_blocks)  # every tier, as /metrics labels them (0 when off)
    block = totals.logical_block_bytes
    hits = {t.value: float(v) for t, v in stats.hit_tokens.items()}
    lanes = totals.lanes
    tier_stats = {t.value: s for t, s in stats.tiers.items()}
    queries = float(stats.query_tokens)
    return {
        "prefix_cache_queries": queries,
        "preemptions": float(totals.preemptions),
        "prompt_tokens": float(totals.prompt_tokens),
        "generation_tokens": float(totals.generation_tokens),
        "npu_busy_s": totals.busy_s,
        "npu_wall_busy_s": None,
        "engine_steps": float(totals.steps),
        "prefix_cache_hits": hits,
        "read_bytes": {t: lanes[t].read_bytes if t in lanes else 0.0 for t in tiers},
        "write_bytes": {t: lanes[t].write_bytes if t in lanes else 0.0 for t in tiers},
        "evictions": {t: float(s.evictions) for t, s in tier_stats.items()},
        "checksum_failures": {t: float(s.checksum_failures) for t, s in tier_stats.items()},
        "used_bytes": {t: float(s.num_blocks * block) for t, s in tier_stats.items()},
        "capacity_bytes": {t: float(totals.num_blocks[t] * block) for t in tiers},
        "hit_rate": sum(hits.values()) / queries if queries else None,
        "scrape_error": None,
    }


def timeline(samples: list[SimSample], interval_s: float | None) -> dict[str, Any]:
    """The simulated replica's gauges over virtual time, as `run` samples /metrics."""
    points = [
        ServerPoint(
            t_s=s.t_s,
            running=float(s.running),
            waiting=float(s.waiting),
            loading_kv=float(s.loading_kv),
            kv_usage=s.kv_usage,
            kv_usage_source="simulated",
            queries=float(s.query_tokens),
            hits={t: float(v) for t, v in s.hit_tokens.items()},
            npu_modelled_s=s.busy_s,
            npu_wall_s=None,
        )
        for s in samples
    ]
    return server_timeline(points, interval_s or 0.0)
