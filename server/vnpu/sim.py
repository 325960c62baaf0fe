"""Drives several vNPU engines on one modelled clock (for the isolation and preemption
benchmarks, `server.vnpu.bench`).

Each vNPU is a real `EngineCore` (scheduler, cache manager with its real tiers, emulated
or numpy model; `Pace.NONE`). The driver plans a step, asks the cost model how long it
takes on the vNPU's `DeviceSpec`, submits that to the vNPU's `CoreGroup` and executes the
step (tokens appear) when the group says the step ends. Events (request arrivals, step
ends) and turns are handled in modelled-time order, so the figures are exact for the
model and independent of this host's load. Tier transfers are not on this clock: the
driver waits for every transfer to land before planning (they cost no modelled time).

Preemption: a request arriving on a vNPU whose running step holds only requests of a
worse priority cuts that step at the next kernel boundary (`KERNELS_PER_LAYER` kernels
per layer, the step's device time divided evenly); the cut step is dropped unexecuted
(its work is lost) and the vNPU plans again at the cut, with the new request in.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from npu_sim.arbiter import CoreGroup
from npu_sim.device import DeviceSpec
from npu_sim.executor import batch_cost
from npu_sim.model_config import ModelConfig
from server.engine.core import EngineCore, PlannedStep
from server.engine.request import EngineRequest

# Ascend preempts at AI-core task (kernel) boundaries. A llama layer is ~8 kernels (QKV,
# attention, O, gate/up, down, two norms, residual adds fused): an assumption.
KERNELS_PER_LAYER = 8


@dataclass(slots=True)
class SimVnpu:
    """One vNPU in the driver: its engine, what steps cost on it, and its core group."""

    name: str
    core: EngineCore
    cost_config: ModelConfig
    device: DeviceSpec
    group: CoreGroup
    # Called with (vnpu, request, modelled time) when a request finishes.
    on_finish: Callable[[SimVnpu, EngineRequest, float], None] | None = None
    planned: PlannedStep | None = None
    generation: int = 0  # bumped when a step is cut: its end event is then stale
    token_times: dict[str, list[float]] = field(default_factory=dict)
    arrivals: dict[str, float] = field(default_factory=dict)
    first_step_start: dict[str, float] = field(default_factory=dict)
    requests: dict[str, EngineRequest] = field(default_factory=dict)
    num_cuts: int = 0
    cut_for: set[str] = field(default_factory=set)  # requests whose arrival cut a step
    busy_seconds: float = 0.0

    def step_seconds(self, planned: PlannedStep) -> float:
        """Device time of `planned` on this vNPU's device (what its executor would charge
        on that device: the same `batch_cost`)."""
        return batch_cost(self.cost_config, self.device, planned.seqs).seconds

    def itls(self, since: float = 0.0, until: float = math.inf) -> list[float]:
        """Gaps between consecutive tokens of each request, for tokens in [since, until)."""
        gaps = []
        for times in self.token_times.values():
            for a, b in itertools.pairwise(times):
                if since <= a and b < until:
                    gaps.append(b - a)
        return gaps


class ModelledDriver:
    """Runs `vnpus` to completion on the modelled clock (see module doc)."""

    def __init__(self, vnpus: list[SimVnpu], preempt: bool = False) -> None:
        self.vnpus = {v.name: v for v in vnpus}
        self.groups = list({id(v.group): v.group for v in vnpus}.values())
        self.preempt = preempt
        self.now = 0.0
        self._events: list[tuple[float, int, int, str, object]] = []
        self._seq = itertools.count()

    # -- inputs --------------------------------------------------------------------------

    def arrive(self, vnpu: str, request: EngineRequest, at: float) -> None:
        """`request` reaches `vnpu` at modelled time `at` (>= now)."""
        self._push(at, 0, vnpu, request)

    # -- the loop ------------------------------------------------------------------------

    def run(self, until: float = math.inf) -> None:
        """Handle events and turns in time order until none is left (or `until`)."""
        while True:
            t_event = self._events[0][0] if self._events else math.inf
            starts = [(g.next_start(), i) for i, g in enumerate(self.groups)]
            t_turn, gi = min(((t, i) for t, i in starts if t is not None), default=(math.inf, -1))
            t = min(t_event, t_turn)
            if t == math.inf or t > until:
                return
            self.now = t
            if t_event <= t_turn:
                _, kind, _, name, payload = heapq.heappop(self._events)
                if kind == 0:
                    assert isinstance(payload, EngineRequest)
                    self._on_arrival(self.vnpus[name], payload)
                elif kind == 1:
                    self._on_step_end(self.vnpus[name], payload)
                else:
                    self._start(self.vnpus[name])
            else:
                self._on_turn(self.groups[gi])

    def _push(self, at: float, kind: int, vnpu: str, payload: object) -> None:
        # kind orders events at one instant: arrivals, step ends, re-plans after a cut.
        heapq.heappush(self._events, (at, kind, next(self._seq), vnpu, payload))

    def _on_arrival(self, v: SimVnpu, request: EngineRequest) -> None:
        v.core.add(request)
        v.requests[request.request_id] = request
        v.arrivals[request.request_id] = self.now
        v.token_times[request.request_id] = []
        if v.planned is None:
            self._start(v)
            return
        # Cut only for a request more urgent than everything in the running step.
        best = min(s_priority(v, s.seq_id) for s in v.planned.seqs)
        if self.preempt and request.priority < best:
            v.cut_for.add(request.request_id)
            self._cut(v)

    def _cut(self, v: SimVnpu) -> None:
        """Stop `v`'s step at its next kernel boundary and plan again there."""
        turn = v.group.current
        at = self.now
        if turn is not None and turn.member == v.name and turn.start <= self.now < turn.end:
            assert v.planned is not None
            total = v.step_seconds(v.planned)
            kernel = total / (v.cost_config.num_layers * KERNELS_PER_LAYER)
            at = turn.start + math.ceil((self.now - turn.start) / kernel - 1e-9) * kernel
            at = min(at, turn.end)
            v.busy_seconds -= turn.end - at
        v.group.preempt(v.name, at)
        v.planned = None
        v.generation += 1
        v.num_cuts += 1
        self._push(at, 2, v.name, None)

    def _start(self, v: SimVnpu) -> None:
        if v.planned is not None:
            return
        # Reloads cost no modelled time here: wait for every transfer, so each step sees
        # the same finished loads whatever this host's speed (the run is repeatable).
        v.core.cache.wait_transfers()
        v.core.poll_transfers()
        planned = v.core.plan()
        if planned is None:
            return
        v.planned = planned
        v.group.submit(v.name, self.now, v.step_seconds(planned))

    def _on_turn(self, group: CoreGroup) -> None:
        turn = group.grant()
        v = self.vnpus[turn.member]
        v.busy_seconds += turn.end - turn.start
        if v.planned is not None:
            for s in v.planned.seqs:
                v.first_step_start.setdefault(s.seq_id, turn.start)
        if turn.finishes_step:
            self._push(turn.end, 1, v.name, v.generation)

    def _on_step_end(self, v: SimVnpu, generation: object) -> None:
        if generation != v.generation or v.planned is None:
            return  # the step was cut
        planned, v.planned = v.planned, None
        for out in v.core.execute(planned):
            if out.new_token_ids:
                v.token_times[out.request_id].append(self.now)
            if out.is_finished and v.on_finish is not None:
                v.on_finish(v, v.requests.pop(out.request_id), self.now)
        for done in v.core.take_finished():  # aborts included; tokens are counted above
            v.requests.pop(done.request_id, None)
        self._start(v)


def s_priority(v: SimVnpu, seq_id: str) -> int:
    request = v.requests.get(seq_id)
    return request.priority if request is not None else 0
