"""The simulator's engine loop: the server's scheduler and cache manager on a virtual clock.

Discrete events, no sleeping. Each iteration does what the server's engine thread does
(`server.engine.async_engine.AsyncEngine._run`) at the virtual time `now`:

1. requests that have arrived by `now` are handed to `Scheduler.add`;
2. `Scheduler.update_from_loads` moves requests whose loads have arrived (on the
   modelled lanes, see `server.simulate.cache`) to running;
3. `Scheduler.schedule` plans a step; the step lasts `npu_sim.cost_model.step_cost` of
   its chunks on the device (as `Executor.step` charges it, with no model forward), the
   clock moves to its end, and `Scheduler.update_from_output` gets one token for every
   chunk that reached the end of its tokens (as with `ignore_eos`, output lengths are
   exactly `max_tokens`).

When nothing can run (no work, or the scheduler planned nothing), the clock jumps to
the next arrival or load arrival. The clock never goes back (`VirtualClock`).

With a `FrontEndModel` (default off, `server.simulate.front_end`), an arrived request
first passes the modelled front end (HTTP parsing and tokenization on the event loop)
and reaches `Scheduler.add` when that is done.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from cache.block_hash import root_hash
from cache.layout import LAYOUT_VERSION
from cache.stats import CacheStats, Tier
from npu_sim.cost_model import step_cost
from npu_sim.device import get_device
from npu_sim.sampling import Sampler, SamplingParams
from npu_sim.tokenizers import ByteTokenizer
from server.config import Settings
from server.engine.request import EngineRequest
from server.engine.scheduler import Scheduler
from server.simulate.cache import VirtualTimeCache
from server.simulate.clock import LaneTotals, VirtualClock, VirtualLanes
from server.simulate.front_end import FrontEnd, FrontEndModel
from server.simulate.memory_tier import MemoryTier
from server.simulate.sizing import SimSizing, sim_sizing
from server.stack import ConfigError, load_planner, model_shape, scheduler_config, transfer_clock


class SimulationStuckError(RuntimeError):
    """Requests are left but no event can ever run them (e.g. a prompt HBM cannot hold)."""


@dataclass(slots=True)
class SimRequest:
    """One request as the client sends it: arrival time (virtual s) and prompt tokens."""

    index: int
    arrival_s: float
    prompt_token_ids: list[int]
    max_tokens: int


@dataclass(slots=True)
class SimRecord:
    """What a client would have seen of one request; times in virtual seconds."""

    index: int
    arrival_s: float
    prompt_tokens: int
    max_tokens: int
    first_token_s: float | None = None
    end_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    cached_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None  # set for a request the server would refuse (400)


@dataclass(slots=True)
class SimSample:
    """The engine's gauges and cumulative counters at one virtual time (for timelines)."""

    t_s: float
    running: int
    waiting: int
    loading_kv: int
    kv_usage: float
    query_tokens: int
    hit_tokens: dict[str, int]
    busy_s: float


@dataclass(slots=True)
class SimTotals:
    """Engine and cache totals of a run (the simulated server's /metrics)."""

    steps: int
    busy_s: float
    preemptions: int
    prompt_tokens: int
    generation_tokens: int
    cache: CacheStats
    lanes: dict[str, LaneTotals]
    num_blocks: dict[str, int]
    logical_block_bytes: int


class Simulator:
    """One simulated `tierkv serve --emulate MODEL` replica. Not thread-safe.

    Drive it with `submit` (requests, in any order of arrival time at or after the
    clock) and `run` (process events). `tokenize_*` turn text into the prompt tokens the
    server would feed its engine for the same HTTP request.
    """

    def __init__(
        self,
        settings: Settings,
        sample_interval_s: float | None = None,
        front_end: FrontEndModel | None = None,
    ) -> None:
        """`front_end`: host time before the engine (None: none, as by default)."""
        if settings.emulate is None:
            raise ConfigError("the simulator models an --emulate MODEL replica: set emulate")
        self.settings = settings
        self.clock = VirtualClock()
        self.sizing: SimSizing = sim_sizing(settings)
        self._cost_config = model_shape(settings)
        self._device = get_device(settings.device)
        clock = transfer_clock(settings)
        self.lanes = VirtualLanes(self.clock, clock.paths, self.sizing.logical_per_stored)
        config = self.sizing.config
        self.cache = VirtualTimeCache(
            self.sizing.layout,
            config,
            self.lanes,
            ddr=MemoryTier("ddr") if config.ddr_capacity_bytes > 0 else None,
            flash=MemoryTier("flash") if config.flash_capacity_bytes > 0 else None,
            reload_timeout_s=settings.reload_timeout_ms / 1000,
        )
        self.scheduler = Scheduler(
            scheduler_config(settings, config.hbm_num_blocks),
            self.cache,
            load_planner(settings, self._cost_config, clock),
        )
        self.tokenizer = ByteTokenizer()
        self._token = self.tokenizer.encode("x")[0]  # every sampled token (never a stop)
        self._sampler = Sampler(SamplingParams(), self.tokenizer.sampleable_mask)  # unused
        self._root = root_hash(f"sim:{self._cost_config.name}", LAYOUT_VERSION)
        self._arrivals: list[tuple[float, float, SimRequest]] = []
        model = front_end or FrontEndModel()
        self._seq = model.tie_breakers()  # orders same-instant arrivals
        self._front_end = FrontEnd(model) if model.has_service_time else None
        self._handed_over: list[tuple[float, float, SimRequest]] = []  # front end -> engine
        self._live: dict[str, SimRecord] = {}
        self._done: list[SimRecord] = []
        self._blocked = False  # the last step planned nothing: wait for an event
        self._steps = 0
        self._busy_s = 0.0
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self.num_finished = 0
        self.samples: list[SimSample] = []
        self._sample_interval = sample_interval_s
        self._next_sample = 0.0

    # -- tokens as the server makes them -----------------------------------------------

    def tokenize_completion(self, prompt: str) -> list[int]:
        """`/v1/completions` with a text prompt: BOS, then the text's tokens."""
        bos = [] if self.tokenizer.bos_id is None else [self.tokenizer.bos_id]
        return [*bos, *self.tokenizer.encode(prompt)]

    def tokenize_chat(self, messages: list[tuple[str, str]]) -> list[int]:
        """`/v1/chat/completions`: the chat template over (role, content) pairs."""
        return self.tokenizer.apply_chat_template(messages)

    def output_text(self, num_tokens: int) -> str:
        """The text of a request's `num_tokens` simulated output tokens."""
        return self.tokenizer.decode([self._token] * num_tokens)

    # -- driving -------------------------------------------------------------------------

    def submit(self, request: SimRequest) -> None:
        """Queue `request` to arrive at its `arrival_s` (a past time means: now)."""
        n = len(request.prompt_token_ids)
        limit = self.settings.max_model_len
        if n == 0 or n + request.max_tokens > limit:
            record = SimRecord(request.index, request.arrival_s, n, request.max_tokens)
            record.end_s = max(request.arrival_s, self.clock.now)
            record.error = (
                f"400: {n} prompt + {request.max_tokens} output tokens exceed max-model-len {limit}"
                if n
                else "400: empty prompt"
            )
            self._done.append(record)
            return
        heapq.heappush(self._arrivals, (request.arrival_s, next(self._seq), request))

    def run(self, until: float = math.inf, stop_on_finish: bool = False) -> list[SimRecord]:
        """Process events before virtual time `until` (or until a request finishes, with
        `stop_on_finish`); return the requests finished meanwhile. A step that starts
        before `until` may end after it. `SimulationStuckError` if requests are left
        that no event can run."""
        while not (stop_on_finish and self._done):
            t = self._next_event()
            if t is None or t >= until:
                break
            self.clock.advance_to(max(t, self.clock.now))
            self._iterate()
        done, self._done = self._done, []
        return done

    @property
    def num_in_flight(self) -> int:
        return len(self._arrivals) + len(self._handed_over) + len(self._live)

    def totals(self) -> SimTotals:
        stats = self.cache.snapshot_stats()
        return SimTotals(
            steps=self._steps,
            busy_s=self._busy_s,
            preemptions=self.scheduler.num_preemptions,
            prompt_tokens=self._prompt_tokens,
            generation_tokens=self._generation_tokens,
            cache=stats,
            lanes={t.value: v for t, v in self.lanes.totals.items()},
            num_blocks=dict(self.sizing.num_blocks),
            logical_block_bytes=self.sizing.logical_block_bytes,
        )

    # -- internals -----------------------------------------------------------------------

    def _next_event(self) -> float | None:
        candidates = []
        if self._arrivals:
            candidates.append(self._arrivals[0][0])
        if self._handed_over:
            candidates.append(self._handed_over[0][0])
        load = self.cache.next_load_arrival()
        if load is not None:
            candidates.append(load)
        if self.scheduler.has_schedulable_work() and not self._blocked:
            candidates.append(self.clock.now)
        if not candidates:
            if self.scheduler.requests:
                raise SimulationStuckError(
                    f"{len(self.scheduler.requests)} requests left at t={self.clock.now:.3f} s "
                    "and nothing can run them (a prompt larger than HBM?)"
                )
            return None
        return min(candidates)

    def _iterate(self) -> None:
        now = self.clock.now
        self._sample(now)
        while self._arrivals and self._arrivals[0][0] <= now:
            _, tie, request = heapq.heappop(self._arrivals)
            if self._front_end is None:
                self._add(request)
                self._blocked = False
            else:
                n = len(request.prompt_token_ids)
                at = self._front_end.enter(request.arrival_s, n)
                heapq.heappush(self._handed_over, (at, tie, request))
        while self._handed_over and self._handed_over[0][0] <= now:
            self._add(heapq.heappop(self._handed_over)[2])
            self._blocked = False
        num_loading = self.scheduler.num_loading
        self.scheduler.update_from_loads()
        if self.scheduler.num_loading != num_loading:
            self._blocked = False
        if not self.scheduler.has_schedulable_work():
            return
        plan = self.scheduler.schedule()
        self.cache.wait_transfers()  # spills are charged while the clock reads `now`
        if not plan.chunks:
            self._blocked = True
            return
        chunks: list[tuple[int, int]] = []
        sampled: dict[str, int] = {}
        for chunk in plan.chunks:
            req, n = chunk.request, chunk.num_new_tokens
            end = req.num_computed_tokens + n
            chunks.append((n, end))
            self._prompt_tokens += max(0, min(end, len(req.prompt_token_ids)) - (end - n))
            if end == req.num_tokens:
                sampled[req.request_id] = self._token
        seconds = step_cost(self._cost_config, self._device, chunks).seconds
        self._steps += 1
        self._busy_s += seconds
        self.clock.advance_to(now + seconds)
        end_time = self.clock.now
        for out in self.scheduler.update_from_output(plan, sampled):
            record = self._live[out.request_id]
            if out.new_token_ids:
                self._generation_tokens += len(out.new_token_ids)
                record.token_times_s.append(end_time)
                if record.first_token_s is None:
                    record.first_token_s = end_time
            record.cached_tokens = out.num_cached_tokens
            record.output_tokens = out.num_output_tokens
            if out.is_finished:
                record.end_s = end_time
                del self._live[out.request_id]
                self._done.append(record)
                self.num_finished += 1
        self.scheduler.take_finished()  # the simulator keeps its own records

    def _add(self, request: SimRequest) -> None:
        request_id = f"sim-{request.index}"
        self.scheduler.add(
            EngineRequest(
                request_id=request_id,
                prompt_token_ids=request.prompt_token_ids,
                sampler=self._sampler,
                max_tokens=request.max_tokens,
                root_hash=self._root,
                token_bytes=self.tokenizer.token_bytes,
                arrival_time=request.arrival_s,
            )
        )
        self._live[request_id] = SimRecord(
            request.index,
            request.arrival_s,
            len(request.prompt_token_ids),
            request.max_tokens,
        )

    def _sample(self, now: float) -> None:
        if self._sample_interval is None or now < self._next_sample:
            return
        pool = self.cache.pool
        stats = self.cache.stats
        self.samples.append(
            SimSample(
                t_s=now,
                running=len(self.scheduler.running),
                waiting=len(self.scheduler.waiting),
                loading_kv=self.scheduler.num_loading,
                kv_usage=pool.num_active_blocks / max(1, self.sizing.config.hbm_num_blocks),
                query_tokens=stats.query_tokens,
                hit_tokens={t.value: stats.hit_tokens[t] for t in Tier},
                busy_s=self._busy_s,
            )
        )
        # Samples fall on event times, at most one per interval.
        self._next_sample = now + self._sample_interval
